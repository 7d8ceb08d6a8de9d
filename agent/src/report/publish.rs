//! What the reporter publishes on a connection: alerts from the spool (as many as the window
//! has room for), the status, heartbeats; and what it takes out of the spool once acknowledged.

use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context as _;
use picket_proto::{
    topic::{topic, Channel},
    Presence,
};

use super::{link::Link, mqtt, status, Reporter, WINDOW};
use crate::{counters::Counters, spool::Spool};

impl Reporter {
    /// Whether, with nothing in flight, the spool still holds an alert this connection went
    /// past without sending (it would otherwise wait for the next reconnection). Never
    /// expected; checked with each heartbeat so that no such alert can stay behind.
    pub(super) fn passed_over(&self, link: &Link) -> bool {
        if !link.may_have_passed_over() {
            return false;
        }
        let Some(mut spool) = self.shared.try_spool() else {
            return false;
        };
        // Acknowledged alerts waiting to leave the spool are not behind.
        self.take_acked(&mut spool);
        let oldest = match spool.peek(None, 1) {
            Ok(oldest) => oldest.first().map(|e| e.seq),
            Err(_) => return false,
        };
        drop(spool);
        let passed = link.passed_over(oldest);
        if let (true, Some(seq)) = (passed, oldest) {
            log::warn!(
                "alert #{seq} is still spooled behind #{}; sending again from the oldest",
                link.last.unwrap_or_default()
            );
        }
        passed
    }

    /// Publishes spooled alerts until the window is full; returns how many it queued.
    pub(super) fn fill(&self, client: &mqtt::Client, link: &mut Link) -> usize {
        let room = WINDOW.saturating_sub(link.alerts_in_flight());
        if room == 0 {
            return 0;
        }
        // Busy writing: the writer wakes this reporter when it is done.
        let Some(mut spool) = self.shared.try_spool() else {
            return 0;
        };
        self.take_acked(&mut spool);
        let entries = match spool.peek(link.last, room) {
            Ok(entries) => entries,
            Err(e) => {
                log::error!("reading the spool: {e:#}");
                return 0;
            }
        };
        drop(spool);
        let alert_topic = topic(&self.device_id, Channel::Alert);
        let mut queued = 0;
        for entry in entries {
            let payload = match self.wire(&entry.payload) {
                Ok(p) => p,
                Err(e) => {
                    // Cannot happen with records this agent wrote; never block the queue on it.
                    log::error!("spooled alert #{} is unreadable, dropped: {e:#}", entry.seq);
                    let _ = self.shared.spool().ack(entry.seq);
                    Counters::add(&self.shared.counters.dropped, 1);
                    link.last = Some(entry.seq);
                    continue;
                }
            };
            if let Err(e) = client.publish(&alert_topic, true, false, payload) {
                log::debug!("publish queue full ({e}); alert #{} waits", entry.seq);
                break;
            }
            link.queue_alert(entry.seq);
            queued += 1;
        }
        queued
    }

    /// The alert's message in the configured format, from its spooled postcard body.
    fn wire(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let alert: picket_proto::Alert =
            postcard::from_bytes(body).context("decoding a spooled alert")?;
        Ok(picket_proto::encode(
            self.config.format,
            &self.device_id,
            &alert,
        )?)
    }

    /// The broker has `seq`: it leaves the spool with the next [`Reporter::take_acked`] (the
    /// `fill` that follows every acknowledgement, or the end of `goodbye`).
    pub(super) fn delivered(&self, seq: u64) {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seq);
    }

    /// Takes the alerts the broker acknowledged out of the spool (durable with its next write).
    pub(super) fn take_acked(&self, spool: &mut Spool) {
        let acked = std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()));
        if !acked.is_empty() {
            self.shared.acked.store(true, Relaxed);
        }
        for seq in acked {
            match spool.ack(seq) {
                Ok(true) => Counters::add(&self.shared.counters.sent, 1),
                Ok(false) => {}
                Err(e) => log::error!("removing alert #{seq} from the spool: {e:#}"),
            }
        }
    }

    pub(super) fn publish_other(
        &self,
        client: &mqtt::Client,
        link: &mut Link,
        channel: Channel,
        qos1: bool,
        retain: bool,
        payload: Vec<u8>,
    ) {
        let t = topic(&self.device_id, channel);
        match client.publish(&t, qos1, retain, payload) {
            Ok(()) => link.queue_other(qos1),
            Err(e) => log::warn!("cannot publish on {t}: {e}"),
        }
    }

    pub(super) fn status(&self, client: &mqtt::Client, link: &mut Link, presence: Presence) {
        let payload = status::status_payload(
            &self.device_id,
            self.config.format,
            presence,
            self.shared.policy(),
            &self.config.boot_id,
        );
        self.publish_other(client, link, Channel::Status, true, true, payload);
    }

    pub(super) fn heartbeat(&self, client: &mqtt::Client, link: &mut Link) {
        let c = &self.shared.counters;
        let (pending, bytes) = {
            let mut last = self.last_stats.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut spool) = self.shared.try_spool() {
                self.take_acked(&mut spool);
                let stats = spool.stats();
                *last = (stats.pending as u64, stats.disk_bytes);
            }
            *last
        };
        let hb = status::heartbeat(
            c,
            self.started.elapsed(),
            self.shared.policy().1,
            (pending, bytes),
        );
        match picket_proto::encode(self.config.format, &self.device_id, &hb) {
            Ok(payload) => {
                self.publish_other(client, link, Channel::Heartbeat, false, false, payload)
            }
            Err(e) => log::error!("encoding a heartbeat: {e}"),
        }
    }
}
