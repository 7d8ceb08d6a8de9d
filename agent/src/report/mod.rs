//! Reporting to the fleet over MQTT: alerts from the spool, heartbeats, the retained status, and
//! signed policy updates received on the device's policy topic.
//!
//! Delivery: an alert goes into the spool (and is made durable) before it is published, and
//! leaves the spool only when the broker acknowledges it (PUBACK). At most [`WINDOW`] alerts are
//! in flight. After a reconnection, everything unacknowledged is published again from the spool
//! in order: duplicates on the wire are possible, the sequence numbers tell; loss is not.
//!
//! Mapping acknowledgements to alerts: the client library reports each publish as it goes out,
//! in the order publishes were queued, with its packet id; the reporter queues publishes only
//! while connected and keeps the same order in `queued`, so the n-th "sent" is the n-th queued,
//! and a PUBACK's packet id names the alert. Should a report not fit (a packet id where a QoS 0
//! message was queued, an acknowledgement nothing awaits), the connection is dropped and
//! everything unacknowledged goes out again on the next.

pub mod mqtt;
pub mod tls;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use picket_common::Sensor;
use picket_policy::{
    bundle::Verified,
    keys::TrustStore,
    store::{Accepted, PolicyStore},
};
use picket_proto::{
    topic::{topic, Channel},
    AlertCounters, Format, Heartbeat, PolicyOutcome, PolicyResult, Presence, SensorCounters,
    Status,
};
use tokio::sync::{mpsc, Notify};

use crate::{
    alert::{self, AlertSink},
    counters::Counters,
    spool::Spool,
};
use mqtt::{Ev, Protocol};

/// Alerts published and not yet acknowledged, at most.
pub const WINDOW: usize = 32;

/// The shortest wait for an acknowledgement before a connection is deemed stuck; twice the
/// keep-alive when that is longer.
const STALL_MIN: Duration = Duration::from_secs(30);

/// State shared by the detection loop (which raises alerts), the spool writer (which makes
/// them durable) and the reporter (which sends them).
pub struct Shared {
    pub counters: Arc<Counters>,
    pub spool: Mutex<Spool>,
    /// Signalled when new alerts are durable in the spool.
    pub wake: Notify,
    /// Name and serial of the policy in force.
    pub policy: Mutex<(String, u64)>,
    /// Alerts the spool dropped to make room, not yet reported by an `alerts_dropped` alert.
    dropped: AtomicU64,
    /// The reporter took acknowledged alerts out of the spool since the writer's last flush.
    acked: AtomicBool,
}

impl Shared {
    pub fn new(counters: Arc<Counters>, spool: Spool, policy: (String, u64)) -> Arc<Self> {
        Arc::new(Self {
            counters,
            spool: Mutex::new(spool),
            wake: Notify::new(),
            policy: Mutex::new(policy),
            dropped: AtomicU64::new(0),
            acked: AtomicBool::new(false),
        })
    }

    /// The spool, waiting for it if the writer holds it.
    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        // A panic while holding the lock would already have ended the agent (panics abort the
        // runtime's only thread); the data is still consistent on disk.
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spool if it is free now: the event loop's thread never waits for the writer's
    /// `fdatasync`.
    fn try_spool(&self) -> Option<std::sync::MutexGuard<'_, Spool>> {
        match self.spool.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn policy(&self) -> (String, u64) {
        self.policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// An alert on its way to the spool.
struct Spooled {
    seq: u64,
    severity: u8,
    body: Vec<u8>,
}

/// What the detection loop hands to the spool writer.
enum ToWriter {
    /// Alerts to spool and make durable, in sequence order.
    Alerts(Vec<Spooled>),
    /// Make everything durable, then answer.
    Sync(std::sync::mpsc::SyncSender<()>),
}

/// How often the writer makes acknowledgements durable (tombstones) when no alert comes, and
/// tries again after a failed write.
const WRITER_IDLE: Duration = Duration::from_secs(1);

/// The spool writer: a thread that pushes alerts into the spool and makes them durable (one
/// write and one `fdatasync` for all that arrived meanwhile), so that the event loop, which
/// reads the sensors' ring buffer, never waits for the disk. Ends when its sender is dropped,
/// after a last flush.
fn spool_writer(shared: Arc<Shared>, from_loop: std::sync::mpsc::Receiver<ToWriter>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut failures: u64 = 0;
    loop {
        let mut alerts = Vec::new();
        let mut syncs = Vec::new();
        let mut take = |m: ToWriter| match m {
            ToWriter::Alerts(mut a) => alerts.append(&mut a),
            ToWriter::Sync(answer) => syncs.push(answer),
        };
        let last = match from_loop.recv_timeout(WRITER_IDLE) {
            Ok(m) => {
                take(m);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        while let Ok(m) = from_loop.try_recv() {
            take(m);
        }
        let acked = shared.acked.swap(false, Relaxed);
        if alerts.is_empty() && syncs.is_empty() && !acked && failures == 0 && !last {
            // Nothing to write: an idle agent does not touch the spool.
            continue;
        }
        let flushed = {
            let mut spool = shared.spool();
            for a in alerts {
                match spool.push(a.seq, a.severity, &a.body) {
                    Ok(()) => Counters::add(&shared.counters.spooled, 1),
                    Err(e) => {
                        log::error!("alert #{} cannot be spooled: {e:#}", a.seq);
                        Counters::add(&shared.counters.dropped, 1);
                    }
                }
            }
            shared.dropped.fetch_add(spool.take_dropped(), Relaxed);
            // Also what the reporter acknowledged meanwhile (a no-op when there is nothing).
            spool.flush()
        };
        match flushed {
            Ok(()) => {
                if failures > 0 {
                    log::info!("the spool is written to disk again");
                }
                failures = 0;
            }
            // A full or failing disk: the batch stays buffered in the spool and the next round
            // tries again. Nothing unflushed is ever published.
            Err(e) => {
                if failures % 60 == 0 {
                    log::error!("writing the spool to disk: {e:#}");
                }
                failures += 1;
            }
        }
        // New alerts to send; and the reporter, which does not wait for the spool while this
        // thread holds it, may have skipped sending meanwhile.
        shared.wake.notify_one();
        for answer in syncs {
            let _ = answer.send(());
        }
        if last {
            return;
        }
    }
}

/// The alert sink that spools: alerts go to the spool writer's thread with each flush, and
/// are durable when `sync` returns.
pub struct SpoolSink {
    shared: Arc<Shared>,
    batch: Vec<Spooled>,
    max_payload: usize,
    writer: std::sync::mpsc::Sender<ToWriter>,
}

impl SpoolSink {
    /// Starts the spool writer's thread.
    pub fn new(shared: Arc<Shared>) -> anyhow::Result<Self> {
        let (writer, from_loop) = std::sync::mpsc::channel();
        let max_payload = shared.spool().max_payload();
        let for_writer = shared.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || spool_writer(for_writer, from_loop))
            .context("starting the spool writer's thread")?;
        Ok(Self {
            shared,
            batch: Vec::new(),
            max_payload,
            writer,
        })
    }
}

impl AlertSink for SpoolSink {
    /// Never fails the detection loop: an alert that cannot be spooled is logged and counted
    /// as dropped (the heartbeat shows it).
    fn send(&mut self, alert: &alert::Alert) -> anyhow::Result<()> {
        match fit(alert.to_wire(), self.max_payload) {
            Ok(body) => self.batch.push(Spooled {
                seq: alert.seq,
                severity: alert.severity.rank(),
                body,
            }),
            Err(e) => {
                log::error!("alert #{} cannot be spooled: {e:#}", alert.seq);
                Counters::add(&self.shared.counters.dropped, 1);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            let n = batch.len() as u64;
            if self.writer.send(ToWriter::Alerts(batch)).is_err() {
                log::error!("the spool writer is gone: {n} alert(s) not spooled");
                Counters::add(&self.shared.counters.dropped, n);
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        let (answer, done) = std::sync::mpsc::sync_channel(1);
        if self.writer.send(ToWriter::Sync(answer)).is_ok()
            && done.recv_timeout(Duration::from_secs(10)).is_err()
        {
            log::warn!("the spool writer did not finish in 10 s");
        }
        Ok(())
    }

    fn take_dropped(&mut self) -> u64 {
        let n = self.shared.dropped.swap(0, Relaxed);
        Counters::add(&self.shared.counters.dropped, n);
        n
    }
}

/// The alert's postcard body, made to fit in `max` bytes if it does not: long strings are cut
/// (argv, ancestry, paths, details), and `details` says so.
fn fit(mut wire: picket_proto::Alert, max: usize) -> anyhow::Result<Vec<u8>> {
    let body = postcard::to_allocvec(&wire).context("encoding an alert")?;
    if body.len() <= max {
        return Ok(body);
    }
    let cut = |s: &mut String, n: usize| {
        if s.len() > n {
            let mut end = n;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
    };
    for limit in [1024, 256, 64] {
        if let Some(p) = wire.process.as_mut() {
            p.ancestry.truncate(4);
            for a in &mut p.ancestry {
                if let Some(exe) = a.exe.as_mut() {
                    cut(exe, limit);
                }
            }
            for arg in &mut p.argv {
                cut(arg, limit);
            }
            if let Some(exe) = p.exe.as_mut() {
                cut(exe, limit);
            }
        }
        if let Some(path) = wire.path.as_mut() {
            cut(path, limit);
        }
        let details = wire.details.0.to_string();
        if details.len() > limit {
            let mut text = details;
            cut(&mut text, limit);
            wire.details = picket_proto::Details(serde_json::json!({ "truncated": text }));
        }
        let body = postcard::to_allocvec(&wire).context("encoding an alert")?;
        if body.len() <= max {
            return Ok(body);
        }
    }
    anyhow::bail!(
        "{} bytes even cut down, over the spool's record limit of {max}",
        body.len()
    )
}

/// What the reporter tells the detection loop about policies received over MQTT.
pub enum PolicyEvent {
    /// Verified, persisted, and to be put in force.
    Installed(Box<Verified>),
    /// Refused: the policy in force stays; the loop raises an alert.
    Refused { reason: String, sha256: String },
}

/// How to reach the broker and what to send.
pub struct ReporterConfig {
    pub options: mqtt::Options,
    pub protocol: Protocol,
    pub format: Format,
    pub heartbeat: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub boot_id: String,
}

/// The reporter task.
pub struct Reporter {
    config: ReporterConfig,
    device_id: String,
    shared: Arc<Shared>,
    store: PolicyStore,
    trust: TrustStore,
    policies: mpsc::UnboundedSender<PolicyEvent>,
    started: Instant,
    /// Alerts the broker acknowledged, to take out of the spool when it is free.
    acked: Mutex<Vec<u64>>,
    /// The spool's waiting records and bytes when last read, for heartbeats.
    last_stats: Mutex<(u64, u64)>,
}

/// What went out on the current connection and awaits its packet id or acknowledgement.
struct Link {
    connected: bool,
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
    last: Option<u64>,
    /// The broker refused an alert on this connection (it waits for the next one).
    refused: bool,
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
    fn connected() -> Self {
        Self {
            connected: true,
            ..Self::default()
        }
    }

    /// Whether [`Link::passed_over`] is worth asking: alerts were sent, none is in flight,
    /// none was refused.
    fn may_have_passed_over(&self) -> bool {
        self.last.is_some() && !self.refused && self.alerts_in_flight() == 0
    }

    /// Whether `oldest`, the oldest alert still spooled, is one this connection went past.
    fn passed_over(&self, oldest: Option<u64>) -> bool {
        match (self.last, oldest) {
            (Some(last), Some(oldest)) => self.may_have_passed_over() && oldest <= last,
            _ => false,
        }
    }

    /// Alert `seq` was handed to the client library.
    fn queue_alert(&mut self, seq: u64) {
        if self.alerts_in_flight() == 0 {
            self.progress = Instant::now();
        }
        self.queued.push_back(Queued::Alert(seq));
        self.last = Some(seq);
    }

    fn alerts_in_flight(&self) -> usize {
        self.inflight.len()
            + self
                .queued
                .iter()
                .filter(|q| matches!(q, Queued::Alert(_)))
                .count()
    }

    /// A publish went out with `pkid`: it is the oldest queued. `Err` when what the library
    /// reports does not fit what was queued (acknowledgements could then not be matched to
    /// alerts).
    fn sent(&mut self, pkid: u16) -> Result<(), String> {
        match (self.queued.pop_front(), pkid) {
            (Some(Queued::Alert(seq)), 1..) => {
                self.inflight.insert(pkid, seq);
            }
            (Some(Queued::Qos1), 1..) => {
                self.others.insert(pkid);
            }
            (Some(Queued::Qos0), 0) => {}
            (queued, _) => {
                return Err(format!(
                    "a publish went out with packet id {pkid} where {queued:?} was expected"
                ))
            }
        }
        Ok(())
    }

    /// The broker acknowledged `pkid`: the alert it carried, if it was one. `Err` for a
    /// packet id nothing sent on this connection awaits.
    fn acknowledged(&mut self, pkid: u16) -> Result<Option<u64>, String> {
        if let Some(seq) = self.inflight.remove(&pkid) {
            self.progress = Instant::now();
            return Ok(Some(seq));
        }
        if self.others.remove(&pkid) {
            self.progress = Instant::now();
            return Ok(None);
        }
        Err(format!(
            "an acknowledgement for packet id {pkid}, which nothing sent awaits"
        ))
    }
}

/// A publish queued on the connection, as the reporter knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    Alert(u64),
    /// A QoS 1 message other than an alert (status, policy result).
    Qos1,
    /// A QoS 0 message (heartbeat).
    Qos0,
}

/// How long to wait before the next connection attempt: doubling, capped, with jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay to wait now: between half and all of the current step (so that a fleet cut
    /// off at once does not come back at once), then the step doubles.
    fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut b = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        let fraction = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        step.mul_f64(0.5 + fraction / 2.0)
    }
}

impl Reporter {
    pub fn new(
        config: ReporterConfig,
        shared: Arc<Shared>,
        store: PolicyStore,
        trust: TrustStore,
        policies: mpsc::UnboundedSender<PolicyEvent>,
    ) -> Self {
        Self {
            device_id: config.options.client_id.clone(),
            config,
            shared,
            store,
            trust,
            policies,
            started: Instant::now(),
            acked: Mutex::new(Vec::new()),
            last_stats: Mutex::new((0, 0)),
        }
    }

    /// The offline status, also the last will.
    pub fn offline_status(
        device_id: &str,
        format: Format,
        policy: (String, u64),
        boot_id: &str,
    ) -> Vec<u8> {
        status_payload(device_id, format, Presence::Offline, policy, boot_id)
    }

    /// Runs until `stop` is notified: then says goodbye (offline status) and returns.
    ///
    /// Each connection attempt gets a client of its own: nothing queued on a connection that
    /// failed is replayed on the next one, so the order of "sent" reports on a connection is
    /// the order of what this reporter queued on it (see [`Link`]).
    pub async fn run(self, stop: Arc<Notify>) {
        let mut v5 = self.config.protocol != Protocol::V311;
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = false;
        let mut ever_connected = false;
        loop {
            // Capacity: the window of alerts plus the few other messages around them.
            let (client, mut events) = mqtt::connect(&self.config.options, v5, WINDOW + 16);
            let mut link = Link::default();
            let failure = loop {
                let result = {
                    let next = events.next();
                    tokio::pin!(next);
                    // The connection's future is never dropped half-way: other work happens
                    // while it waits, between its polls.
                    loop {
                        let stalled = link.progress + self.stall_timeout();
                        tokio::select! {
                            biased;
                            r = &mut next => break Some(r),
                            _ = stop.notified() => break None,
                            _ = self.shared.wake.notified(), if link.connected => {
                                self.fill(&client, &mut link);
                            }
                            _ = heartbeat.tick(), if link.connected => {
                                self.heartbeat(&client, &mut link);
                                if self.passed_over(&link) {
                                    link.last = None;
                                }
                                // Also alerts no wake-up announced: none waits longer than a
                                // heartbeat for a chance to go out.
                                let idle = link.alerts_in_flight() == 0;
                                let queued = self.fill(&client, &mut link);
                                if idle && queued > 0 {
                                    log::debug!("{queued} spooled alert(s) sent with the heartbeat");
                                }
                            }
                            _ = tokio::time::sleep_until(stalled.into()),
                                if link.connected && link.alerts_in_flight() > 0 =>
                            {
                                break Some(Err(mqtt::Failure {
                                    message: format!(
                                        "{} alert(s) published and not acknowledged for {}s",
                                        link.alerts_in_flight(),
                                        self.stall_timeout().as_secs()
                                    ),
                                    protocol: false,
                                }));
                            }
                        }
                    }
                };
                let Some(result) = result else {
                    self.goodbye(&client, &mut events, link).await;
                    return;
                };
                match result {
                    Ok(Ev::Connected) => {
                        link = Link::connected();
                        backoff.reset();
                        ever_connected = true;
                        if !was_connected {
                            log::info!(
                                "connected to the broker {}:{} (MQTT {}) as `{}`",
                                self.config.options.host,
                                self.config.options.port,
                                if v5 { "v5" } else { "3.1.1" },
                                self.device_id
                            );
                        }
                        was_connected = true;
                        let policy_topic = topic(&self.device_id, Channel::Policy);
                        if let Err(e) = client.subscribe(&policy_topic) {
                            log::error!("subscribing to {policy_topic}: {e}");
                        }
                        self.status(&client, &mut link, Presence::Online);
                        self.fill(&client, &mut link);
                    }
                    Ok(Ev::Sent { pkid }) => {
                        if let Err(message) = link.sent(pkid) {
                            // Never expected; starting over on a new connection re-sends
                            // whatever was not acknowledged.
                            break mqtt::Failure {
                                message,
                                protocol: false,
                            };
                        }
                    }
                    Ok(Ev::PubAck { pkid, refused }) => {
                        let acknowledged = match link.acknowledged(pkid) {
                            Ok(acknowledged) => acknowledged,
                            Err(message) => {
                                break mqtt::Failure {
                                    message,
                                    protocol: false,
                                }
                            }
                        };
                        if let Some(seq) = acknowledged {
                            match refused {
                                None => self.delivered(seq),
                                Some(reason) => {
                                    link.refused = true;
                                    log::error!(
                                        "the broker refused alert #{seq} ({reason}); it stays in \
                                         the spool and is sent again after the next reconnection"
                                    );
                                }
                            }
                        }
                        self.fill(&client, &mut link);
                    }
                    Ok(Ev::Message { topic: t, payload }) => {
                        self.policy_message(&client, &mut link, &t, &payload);
                    }
                    Ok(Ev::Other | Ev::Disconnected) => {}
                    Err(failure) => break failure,
                }
            };
            // This connection is over: what it did not get acknowledged is still in the spool
            // and goes out again, from the oldest, on the next one.
            drop(link);
            if was_connected || !ever_connected && backoff.next == backoff.min {
                log::warn!(
                    "broker {}:{} unreachable: {}; alerts are kept in the spool",
                    self.config.options.host,
                    self.config.options.port,
                    failure.message
                );
            } else {
                log::debug!("reconnecting failed: {}", failure.message);
            }
            was_connected = false;
            let switch =
                self.config.protocol == Protocol::Auto && failure.protocol && !ever_connected;
            let delay = backoff.delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.notified() => return,
            }
            if switch {
                v5 = !v5;
                log::info!(
                    "the broker refused MQTT {}; trying {}",
                    if v5 { "3.1.1" } else { "v5" },
                    if v5 { "v5" } else { "3.1.1" }
                );
            }
        }
    }

    /// Whether, with nothing in flight, the spool still holds an alert this connection went
    /// past without sending (it would otherwise wait for the next reconnection). Never
    /// expected; checked with each heartbeat so that no such alert can stay behind.
    fn passed_over(&self, link: &Link) -> bool {
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

    /// How long alerts may wait for their acknowledgement before the connection is deemed
    /// broken and replaced (everything unacknowledged then goes out again).
    fn stall_timeout(&self) -> Duration {
        (self.config.options.keep_alive * 2).max(STALL_MIN)
    }

    /// Publishes spooled alerts until the window is full; returns how many it queued.
    fn fill(&self, client: &mqtt::Client, link: &mut Link) -> usize {
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
    fn delivered(&self, seq: u64) {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seq);
    }

    /// Takes the alerts the broker acknowledged out of the spool (durable with its next write).
    fn take_acked(&self, spool: &mut Spool) {
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

    fn publish_other(
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
            Ok(()) => link
                .queued
                .push_back(if qos1 { Queued::Qos1 } else { Queued::Qos0 }),
            Err(e) => log::warn!("cannot publish on {t}: {e}"),
        }
    }

    fn status(&self, client: &mqtt::Client, link: &mut Link, presence: Presence) {
        let payload = status_payload(
            &self.device_id,
            self.config.format,
            presence,
            self.shared.policy(),
            &self.config.boot_id,
        );
        self.publish_other(client, link, Channel::Status, true, true, payload);
    }

    fn heartbeat(&self, client: &mqtt::Client, link: &mut Link) {
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
        let hb = Heartbeat {
            time_ms: alert::now_ms(),
            uptime_s: self.started.elapsed().as_secs(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            policy_serial: self.shared.policy().1,
            rss_bytes: rss_bytes(),
            sensors: [Sensor::Process, Sensor::Network, Sensor::File]
                .iter()
                .enumerate()
                .map(|(i, s)| SensorCounters {
                    sensor: s.name().into(),
                    seen: c.seen[i].load(Relaxed),
                    lost: c.lost[i].load(Relaxed),
                })
                .collect(),
            alerts: AlertCounters {
                raised: c.raised.load(Relaxed),
                aggregated: c.aggregated.load(Relaxed),
                spooled: c.spooled.load(Relaxed),
                sent: c.sent.load(Relaxed),
                dropped: c.dropped.load(Relaxed),
            },
            spool_pending: pending,
            spool_bytes: bytes,
        };
        match picket_proto::encode(self.config.format, &self.device_id, &hb) {
            Ok(payload) => {
                self.publish_other(client, link, Channel::Heartbeat, false, false, payload)
            }
            Err(e) => log::error!("encoding a heartbeat: {e}"),
        }
    }

    /// A message on the policy topic: a signed bundle, checked like one on disk.
    fn policy_message(&self, client: &mqtt::Client, link: &mut Link, t: &str, payload: &[u8]) {
        if t != topic(&self.device_id, Channel::Policy) {
            log::warn!("ignoring a message on {t}, a topic this device did not subscribe to");
            return;
        }
        if payload.is_empty() {
            // The backend cleared the retained bundle: nothing to apply.
            return;
        }
        let sha256 =
            crate::paths::hex(ring::digest::digest(&ring::digest::SHA256, payload).as_ref());
        let outcome = if payload.len() > picket_proto::MAX_POLICY_BYTES {
            Err(format!(
                "the bundle is {} bytes, over the limit of {}",
                payload.len(),
                picket_proto::MAX_POLICY_BYTES
            ))
        } else {
            self.store
                .accept(payload, &self.trust)
                .map_err(|e| format!("{e:#}"))
        };
        let outcome = match outcome {
            Ok(Accepted::Installed(v)) => {
                let (name, serial) = (v.policy.metadata.name.clone(), v.policy.metadata.serial);
                log::info!("policy `{name}` serial {serial} received over MQTT and installed");
                *self.shared.policy.lock().unwrap_or_else(|e| e.into_inner()) =
                    (name.clone(), serial);
                let _ = self.policies.send(PolicyEvent::Installed(Box::new(v)));
                self.status(client, link, Presence::Online);
                PolicyOutcome::Applied { name, serial }
            }
            Ok(Accepted::Unchanged(v)) => PolicyOutcome::Unchanged {
                serial: v.policy.metadata.serial,
            },
            Err(reason) => {
                log::error!("policy received over MQTT refused: {reason}");
                let _ = self.policies.send(PolicyEvent::Refused {
                    reason: reason.clone(),
                    sha256: sha256.clone(),
                });
                PolicyOutcome::Refused { reason }
            }
        };
        let result = PolicyResult {
            time_ms: alert::now_ms(),
            bundle_sha256: sha256,
            outcome,
        };
        match picket_proto::encode(self.config.format, &self.device_id, &result) {
            Ok(p) => self.publish_other(client, link, Channel::PolicyResult, true, false, p),
            Err(e) => log::error!("encoding a policy result: {e}"),
        }
    }

    /// On shutdown: a last chance for spooled alerts (two seconds), then the offline status
    /// (so the broker need not send the last will) and a clean disconnection. What is not
    /// acknowledged by then stays in the spool for the next start.
    async fn goodbye(&self, client: &mqtt::Client, events: &mut mqtt::Events, mut link: Link) {
        if !link.connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut said_goodbye = false;
        loop {
            if !said_goodbye {
                self.fill(client, &mut link);
                let idle = link.alerts_in_flight() == 0 && {
                    let mut spool = self.shared.spool();
                    self.take_acked(&mut spool);
                    spool.peek(link.last, 1).map_or(true, |e| e.is_empty())
                };
                if idle || tokio::time::Instant::now() >= deadline {
                    self.status(client, &mut link, Presence::Offline);
                    client.disconnect();
                    said_goodbye = true;
                }
            }
            let next = tokio::time::timeout_at(deadline + Duration::from_secs(1), events.next());
            match next.await {
                Ok(Ok(Ev::Sent { pkid })) => {
                    let _ = link.sent(pkid);
                }
                Ok(Ok(Ev::PubAck {
                    pkid,
                    refused: None,
                })) => {
                    if let Ok(Some(seq)) = link.acknowledged(pkid) {
                        self.delivered(seq);
                    }
                }
                Ok(Ok(Ev::Disconnected)) | Ok(Err(_)) | Err(_) => {
                    let mut spool = self.shared.spool();
                    self.take_acked(&mut spool);
                    return;
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn status_payload(
    device_id: &str,
    format: Format,
    state: Presence,
    (policy_name, policy_serial): (String, u64),
    boot_id: &str,
) -> Vec<u8> {
    let status = Status {
        state,
        time_ms: alert::now_ms(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        policy_serial,
        policy_name,
        boot_id: boot_id.into(),
    };
    // Encoding a status cannot fail: plain strings and numbers.
    picket_proto::encode(format, device_id, &status).unwrap_or_default()
}

/// The agent's resident memory, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let pages = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Where the spool lives by default.
pub fn default_spool_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("spool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let steps: Vec<u64> = [1, 2, 4, 8, 8, 8].to_vec();
        for step in steps {
            let d = b.delay();
            let step = Duration::from_secs(step);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.delay() <= Duration::from_secs(1));
        // Jitter: a fleet does not come back in step.
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(60), Duration::from_secs(60)).delay())
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn oversized_alerts_are_cut_to_fit() {
        let long = "x".repeat(5000);
        let wire = picket_proto::Alert {
            seq: 1,
            boot_id: "b".into(),
            time_ms: 0,
            kind: picket_proto::AlertKind::UnknownExecutable,
            severity: picket_proto::Severity::High,
            rule: "executables".into(),
            path: Some(long.clone()),
            details: picket_proto::Details(serde_json::json!({ "sha256": long })),
            count: 1,
            first_ms: 0,
            last_ms: 0,
            process: Some(picket_proto::ProcessContext {
                exe: Some(long.clone()),
                argv: vec![long.clone(); 16],
                ancestry: vec![
                    picket_proto::Ancestor {
                        pid: 1,
                        exe: Some(long.clone())
                    };
                    8
                ],
                ..Default::default()
            }),
        };
        let small = postcard::to_allocvec(&wire).unwrap().len();
        assert!(small > 100_000);
        let body = fit(wire.clone(), 4096).unwrap();
        assert!(body.len() <= 4096);
        let back: picket_proto::Alert = postcard::from_bytes(&body).unwrap();
        assert_eq!(back.seq, 1);
        assert!(back.path.unwrap().ends_with('…'));
        assert!(back.details.0["truncated"].is_string());
        // What fits is left alone.
        let mut fine = wire;
        fine.path = Some("/tmp/x".into());
        fine.details = picket_proto::Details(serde_json::json!({}));
        fine.process = None;
        let body = fit(fine.clone(), 4096).unwrap();
        assert_eq!(
            postcard::from_bytes::<picket_proto::Alert>(&body).unwrap(),
            fine
        );
        assert!(fit(fine, 10).is_err());
    }

    fn alert(seq: u64, severity: alert::Severity, path: &str) -> alert::Alert {
        alert::Alert {
            alert: alert::Kind::UnknownExecutable,
            severity,
            seq,
            boot_id: "b".into(),
            time_ms: 0,
            device_id: "gw".into(),
            rule: "executables".into(),
            path: Some(path.into()),
            details: serde_json::json!({}),
            count: 1,
            first_ms: 0,
            last_ms: 0,
            process: None,
        }
    }

    #[test]
    fn the_spool_writer_makes_alerts_durable_in_order_and_reports_drops() {
        let dir = std::env::temp_dir().join(format!("picket-writer-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let limits = crate::spool::SpoolLimits {
            max_bytes: crate::spool::MIN_MAX_BYTES,
        };
        let (spool, _) = Spool::open(&dir, limits).unwrap();
        let counters = Arc::new(Counters::default());
        let shared = Shared::new(counters.clone(), spool, ("p".into(), 1));
        let mut sink = SpoolSink::new(shared.clone()).unwrap();
        for seq in 1..=10 {
            sink.send(&alert(seq, alert::Severity::High, "/tmp/x"))
                .unwrap();
        }
        // Handed over, not waited for; durable once `sync` returns.
        sink.flush().unwrap();
        sink.sync().unwrap();
        let seqs: Vec<u64> = shared
            .spool()
            .peek(None, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(counters.spooled.load(Relaxed), 10);
        assert_eq!(sink.take_dropped(), 0);

        // Past its bound the spool drops the least severe first; the sink reports how many.
        let long = "p".repeat(1000);
        for seq in 11..=60 {
            sink.send(&alert(seq, alert::Severity::Medium, &long))
                .unwrap();
        }
        sink.sync().unwrap();
        let dropped = sink.take_dropped();
        assert!(dropped > 0, "16 KiB cannot hold 50 alerts of 1 KiB");
        assert_eq!(counters.dropped.load(Relaxed), dropped);
        let kept = shared.spool().peek(None, 100).unwrap();
        assert_eq!(kept.len() as u64, 60 - dropped);
        assert!(kept.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            kept.iter()
                .filter(|e| e.severity == alert::Severity::High.rank())
                .count(),
            10,
            "the severe alerts stay"
        );

        // Durable: a new spool on the same directory finds them (the writer has let go of it
        // once its sender is gone).
        drop(sink);
        let mut shared = shared;
        let spool = loop {
            match Arc::try_unwrap(shared) {
                Ok(s) => break s.spool.into_inner().unwrap(),
                Err(again) => {
                    shared = again;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        drop(spool);
        let (mut spool, recovered) = Spool::open(&dir, limits).unwrap();
        assert_eq!(recovered.torn, 0);
        assert_eq!(spool.peek(None, 100).unwrap().len() as u64, 60 - dropped);
        drop(spool);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_alert_left_behind_is_noticed_only_when_nothing_is_in_flight() {
        let mut link = Link::connected();
        assert!(!link.passed_over(Some(1)), "nothing sent yet");
        link.last = Some(10);
        assert!(link.passed_over(Some(7)));
        assert!(link.passed_over(Some(10)));
        assert!(!link.passed_over(Some(11)), "a new alert, not sent yet");
        assert!(!link.passed_over(None), "the spool is empty");
        link.queued.push_back(Queued::Alert(10));
        assert!(!link.passed_over(Some(7)), "still in flight");
        link.queued.clear();
        link.inflight.insert(3, 10);
        assert!(!link.passed_over(Some(7)), "still in flight");
        link.inflight.clear();
        link.refused = true;
        assert!(
            !link.passed_over(Some(7)),
            "refused: waits for the next connection"
        );
    }

    #[test]
    fn a_link_matches_acknowledgements_to_alerts_or_says_it_cannot() {
        let mut link = Link::connected();
        link.queued.extend([
            Queued::Qos1,
            Queued::Qos0,
            Queued::Alert(7),
            Queued::Alert(8),
        ]);
        link.sent(1).unwrap();
        link.sent(0).unwrap();
        link.sent(2).unwrap();
        link.sent(3).unwrap();
        assert_eq!(link.acknowledged(2), Ok(Some(7)));
        assert_eq!(link.acknowledged(1), Ok(None));
        assert!(link.acknowledged(2).is_err(), "acknowledged twice");
        assert!(link.acknowledged(9).is_err(), "never sent");
        assert_eq!(link.acknowledged(3), Ok(Some(8)));
        // What the library reports must fit what was queued.
        assert!(link.sent(4).is_err(), "nothing queued");
        link.queued.push_back(Queued::Qos0);
        assert!(link.sent(5).is_err(), "a QoS 0 message has no packet id");
        link.queued.push_back(Queued::Alert(9));
        assert!(link.sent(0).is_err(), "an alert goes out with a packet id");
    }

    #[test]
    fn alerts_wait_since_the_first_was_queued_or_the_last_acknowledgement() {
        let pause = || std::thread::sleep(Duration::from_millis(5));
        let mut link = Link::connected();
        let connected = link.progress;
        pause();
        link.queue_alert(1);
        let first = link.progress;
        assert!(first > connected, "alerts wait from the first queued");
        pause();
        link.queue_alert(2);
        link.queued.push_back(Queued::Qos0);
        link.sent(1).unwrap();
        link.sent(2).unwrap();
        link.sent(0).unwrap();
        assert_eq!(link.progress, first, "what goes out is no progress");
        pause();
        assert_eq!(link.acknowledged(1), Ok(Some(1)));
        let acked = link.progress;
        assert!(acked > first, "an acknowledgement is");
        pause();
        link.queue_alert(3);
        assert_eq!(link.progress, acked, "alert 2 still waits since then");
    }

    #[test]
    fn link_counts_alerts_in_flight_not_other_messages() {
        let mut link = Link::default();
        link.queued
            .extend([Queued::Alert(1), Queued::Qos1, Queued::Alert(2)]);
        link.inflight.insert(7, 0);
        assert_eq!(link.alerts_in_flight(), 3);
    }
}
