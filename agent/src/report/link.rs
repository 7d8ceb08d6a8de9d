//! The reporter's deciding state, without I/O: what went out on the current connection and
//! awaits its packet id or acknowledgement ([`Link`]), when the connection is deemed stuck, and
//! how the next connection attempt is made ([`Attempts`], [`Backoff`]). The event loop in
//! [`super`] feeds it what the client library reports and does what it says.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use super::mqtt::Protocol;

/// What the client library reported that does not fit what was queued on the connection:
/// acknowledgements could then not be matched to alerts. Never expected; the connection is
/// dropped and everything unacknowledged goes out again on the next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// A publish went out with a packet id that does not fit the oldest queued.
    #[error("a publish went out with packet id {pkid} where {queued:?} was expected")]
    Sent { pkid: u16, queued: Option<Queued> },
    /// An acknowledgement for a packet id nothing sent on this connection awaits.
    #[error("an acknowledgement for packet id {pkid}, which nothing sent awaits")]
    Acknowledged { pkid: u16 },
}

/// What went out on the current connection and awaits its packet id or acknowledgement.
pub(super) struct Link {
    pub(super) connected: bool,
    /// Since when the alerts in flight wait: the last acknowledgement, or when alerts were
    /// queued with none in flight. Other messages going out (heartbeats) are no progress.
    progress: Instant,
    /// Publishes queued and not yet reported sent, in order.
    queued: VecDeque<Queued>,
    /// Packet id → alert sequence number, for alerts sent and not yet acknowledged.
    inflight: HashMap<u16, u64>,
    /// Packet ids of the other QoS 1 messages sent and not yet acknowledged.
    others: HashSet<u16>,
    /// The highest alert sequence number queued on this connection.
    pub(super) last: Option<u64>,
    /// The broker refused an alert on this connection (it waits for the next one).
    pub(super) refused: bool,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            connected: false,
            progress: Instant::now(),
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            others: HashSet::new(),
            last: None,
            refused: false,
        }
    }
}

impl Link {
    pub(super) fn connected() -> Self {
        Self {
            connected: true,
            ..Self::default()
        }
    }

    /// Whether [`Link::passed_over`] is worth asking: alerts were sent, none is in flight,
    /// none was refused.
    pub(super) fn may_have_passed_over(&self) -> bool {
        self.last.is_some() && !self.refused && self.alerts_in_flight() == 0
    }

    /// Whether `oldest`, the oldest alert still spooled, is one this connection went past.
    pub(super) fn passed_over(&self, oldest: Option<u64>) -> bool {
        match (self.last, oldest) {
            (Some(last), Some(oldest)) => self.may_have_passed_over() && oldest <= last,
            _ => false,
        }
    }

    /// Alert `seq` was handed to the client library.
    pub(super) fn queue_alert(&mut self, seq: u64) {
        if self.alerts_in_flight() == 0 {
            self.progress = Instant::now();
        }
        self.queued.push_back(Queued::Alert(seq));
        self.last = Some(seq);
    }

    /// A message other than an alert was handed to the client library: QoS 1 (status, policy
    /// result) or QoS 0 (heartbeat).
    pub(super) fn queue_other(&mut self, qos1: bool) {
        self.queued
            .push_back(if qos1 { Queued::Qos1 } else { Queued::Qos0 });
    }

    pub(super) fn alerts_in_flight(&self) -> usize {
        self.inflight.len()
            + self
                .queued
                .iter()
                .filter(|q| matches!(q, Queued::Alert(_)))
                .count()
    }

    /// When the alerts in flight have waited `timeout` for an acknowledgement and the
    /// connection is deemed stuck; `None` when no alert is in flight on a connection (other
    /// messages awaiting theirs do not count).
    pub(super) fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.connected && self.alerts_in_flight() > 0).then(|| self.progress + timeout)
    }

    /// A publish went out with `pkid`: it is the oldest queued. `Err` when what the library
    /// reports does not fit what was queued (acknowledgements could then not be matched to
    /// alerts).
    pub(super) fn sent(&mut self, pkid: u16) -> Result<(), Mismatch> {
        match (self.queued.pop_front(), pkid) {
            (Some(Queued::Alert(seq)), 1..) => {
                self.inflight.insert(pkid, seq);
            }
            (Some(Queued::Qos1), 1..) => {
                self.others.insert(pkid);
            }
            (Some(Queued::Qos0), 0) => {}
            (queued, _) => return Err(Mismatch::Sent { pkid, queued }),
        }
        Ok(())
    }

    /// The broker acknowledged `pkid`: the alert it carried, if it was one. `Err` for a
    /// packet id nothing sent on this connection awaits.
    pub(super) fn acknowledged(&mut self, pkid: u16) -> Result<Option<u64>, Mismatch> {
        if let Some(seq) = self.inflight.remove(&pkid) {
            self.progress = Instant::now();
            return Ok(Some(seq));
        }
        if self.others.remove(&pkid) {
            self.progress = Instant::now();
            return Ok(None);
        }
        Err(Mismatch::Acknowledged { pkid })
    }
}

/// A publish queued on the connection, as the reporter knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Alert(u64),
    /// A QoS 1 message other than an alert (status, policy result).
    Qos1,
    /// A QoS 0 message (heartbeat).
    Qos0,
}

/// How long to wait before the next connection attempt: doubling, capped, with jitter.
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }

    /// Whether the next delay is the first step (nothing failed since the last reset).
    fn at_start(&self) -> bool {
        self.next == self.min
    }

    /// The delay to wait now: between half and all of the current step (so that a fleet cut
    /// off at once does not come back at once), then the step doubles.
    pub(super) fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut b = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        let fraction = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        step.mul_f64(0.5 + fraction / 2.0)
    }
}

/// Connection attempts: which MQTT version to speak, how long to wait after a failure, and
/// whether a failure is news worth a warning.
///
/// With [`Protocol::Auto`], v5 first. A v5 attempt the broker turns down for its protocol is
/// followed at once by a 3.1.1 attempt: a broker without v5 accepts it there and then, and the
/// agent stays on 3.1.1. If that attempt fails too, the v5 failure said nothing about the
/// version (a broker stopping, or a TLS front whose broker is down, also closes a connection
/// before any CONNACK): the next attempt, after the backoff, is v5 again. Once v5 connected,
/// the version stays.
pub(super) struct Attempts {
    protocol: Protocol,
    v5: bool,
    backoff: Backoff,
    /// The last attempt reached the broker: its failure is news.
    was_connected: bool,
    ever_connected: bool,
    /// A v5 connection succeeded: the broker speaks v5.
    v5_connected: bool,
    /// This attempt is the 3.1.1 one made at once after a v5 refusal.
    probing: bool,
}

/// What to do after a connection failed or was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retry {
    /// Worth a warning (the connection was up, or the very first attempt failed); otherwise
    /// a debug line.
    pub(super) loud: bool,
    /// How long to wait before the next attempt.
    pub(super) delay: Duration,
    /// Try the other MQTT version next (see [`Attempts::switch_protocol`]).
    pub(super) switch: bool,
}

impl Attempts {
    pub(super) fn new(
        protocol: Protocol,
        reconnect_min: Duration,
        reconnect_max: Duration,
    ) -> Self {
        Self {
            protocol,
            v5: protocol != Protocol::V311,
            backoff: Backoff::new(reconnect_min, reconnect_max),
            was_connected: false,
            ever_connected: false,
            v5_connected: false,
            probing: false,
        }
    }

    /// Whether the next attempt speaks MQTT v5 (else 3.1.1).
    pub(super) fn v5(&self) -> bool {
        self.v5
    }

    /// The broker accepted a connection: the backoff starts over. `true` when this is news
    /// (the first connection, or the first since one failed).
    pub(super) fn connected(&mut self) -> bool {
        self.backoff.reset();
        self.ever_connected = true;
        self.v5_connected |= self.v5;
        self.probing = false;
        let news = !self.was_connected;
        self.was_connected = true;
        news
    }

    /// A connection failed or was lost; `protocol` when the broker seems not to speak the
    /// version tried. Only with [`Protocol::Auto`] is the other version tried next: 3.1.1 at
    /// once after a v5 refusal (unless v5 connected before), and v5 again after that 3.1.1
    /// attempt failed, or after a 3.1.1 refusal.
    pub(super) fn failed(&mut self, protocol: bool) -> Retry {
        let loud = self.was_connected || !self.ever_connected && self.backoff.at_start();
        self.was_connected = false;
        let auto = self.protocol == Protocol::Auto;
        let probed = std::mem::take(&mut self.probing);
        if auto && self.v5 && protocol && !self.v5_connected {
            self.probing = true;
            return Retry {
                loud,
                delay: Duration::ZERO,
                switch: true,
            };
        }
        let switch = auto && !self.v5 && (protocol || probed);
        Retry {
            loud,
            delay: self.backoff.delay(),
            switch,
        }
    }

    /// Speaks the other MQTT version from the next attempt on (after a [`Retry`] said so).
    pub(super) fn switch_protocol(&mut self) {
        self.v5 = !self.v5;
    }
}

#[cfg(test)]
mod tests;
