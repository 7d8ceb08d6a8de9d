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
//! while connected and keeps the same order in its [`Link`], so the n-th "sent" is the n-th queued,
//! and a PUBACK's packet id names the alert. Should a report not fit (a packet id where a QoS 0
//! message was queued, an acknowledgement nothing awaits), the connection is dropped and
//! everything unacknowledged goes out again on the next.
//!
//! Layout: the state that decides (what was queued and acknowledged, when a connection is
//! stuck, when and how to reconnect) is a plain struct without I/O in `link`; this module is
//! the loop that does the I/O ([`Reporter::run`]), with what it publishes in `publish`, the
//! status and heartbeat payloads in `status`, policy updates in `policy`, and the spool writer's
//! thread ([`SpoolSink`]) in `writer`. [`mqtt`] wraps the client library, [`tls`] the identity.

mod link;
pub mod mqtt;
mod policy;
mod publish;
mod status;
pub mod tls;
mod writer;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use picket_policy::{bundle::Verified, keys::TrustStore, store::PolicyStore};
use picket_proto::{
    topic::{topic, Channel},
    Format, Presence,
};
use tokio::sync::{mpsc, Notify};

use crate::{counters::Counters, spool::Spool};
use link::{Attempts, Link, Mismatch};
use mqtt::{Ev, Protocol};
pub use writer::SpoolSink;

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

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Lost {
    /// The connection failed, or could not be made.
    #[error(transparent)]
    Mqtt(#[from] mqtt::Failure),
    /// What the client library reported did not fit what was queued.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// Alerts in flight were not acknowledged in time: the connection is deemed stuck.
    #[error("{alerts} alert(s) published and not acknowledged for {}s", .after.as_secs())]
    Stalled { alerts: usize, after: Duration },
}

impl Lost {
    /// Whether the broker seems not to speak the MQTT version tried.
    fn is_protocol(&self) -> bool {
        matches!(self, Lost::Mqtt(f) if f.is_protocol())
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

    /// The last will: the `lost` status, which the broker publishes when the connection ends
    /// without the goodbye (the `offline` status of a clean stop).
    pub fn will_status(
        device_id: &str,
        format: Format,
        policy: (String, u64),
        boot_id: &str,
    ) -> Vec<u8> {
        status::status_payload(device_id, format, Presence::Lost, policy, boot_id)
    }

    /// Runs until `stop` is notified: then says goodbye (offline status) and returns.
    ///
    /// Each connection attempt gets a client of its own: nothing queued on a connection that
    /// failed is replayed on the next one, so the order of "sent" reports on a connection is
    /// the order of what this reporter queued on it (see [`Link`]).
    pub async fn run(self, stop: Arc<Notify>) {
        let mut attempts = Attempts::new(
            self.config.protocol,
            self.config.reconnect_min,
            self.config.reconnect_max,
        );
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Capacity: the window of alerts plus the few other messages around them.
            let (client, mut events) =
                mqtt::connect(&self.config.options, attempts.v5(), WINDOW + 16);
            let mut link = Link::default();
            let served = self.serve(
                &client,
                &mut events,
                &mut link,
                &mut attempts,
                &mut heartbeat,
                &stop,
            );
            let Some(lost) = served.await else {
                self.goodbye(&client, &mut events, link).await;
                return;
            };
            // This connection is over: what it did not get acknowledged is still in the spool
            // and goes out again, from the oldest, on the next one.
            drop(link);
            if !self.back_off(&mut attempts, lost, &stop).await {
                return;
            }
        }
    }

    /// Serves one connection (from its first attempt) until it is lost, and why; `None` when
    /// `stop` is notified.
    async fn serve(
        &self,
        client: &mqtt::Client,
        events: &mut mqtt::Events,
        link: &mut Link,
        attempts: &mut Attempts,
        heartbeat: &mut tokio::time::Interval,
        stop: &Notify,
    ) -> Option<Lost> {
        loop {
            let event = match self
                .next_event(client, events, link, heartbeat, stop)
                .await?
            {
                Ok(event) => event,
                Err(lost) => return Some(lost),
            };
            if let Err(lost) = self.on_event(client, link, attempts, event) {
                return Some(lost);
            }
        }
    }

    /// The connection's next event; meanwhile, what is due: alerts the spool writer announces,
    /// heartbeats, and the watch for alerts that are never acknowledged (the connection is then
    /// lost). `None` when `stop` is notified.
    async fn next_event(
        &self,
        client: &mqtt::Client,
        events: &mut mqtt::Events,
        link: &mut Link,
        heartbeat: &mut tokio::time::Interval,
        stop: &Notify,
    ) -> Option<Result<Ev, Lost>> {
        let next = events.next();
        tokio::pin!(next);
        // The connection's future is never dropped half-way: other work happens while it
        // waits, between its polls.
        loop {
            let stalled = link.stall_deadline(self.stall_timeout());
            tokio::select! {
                biased;
                r = &mut next => return Some(r.map_err(Lost::from)),
                _ = stop.notified() => return None,
                _ = self.shared.wake.notified(), if link.connected => {
                    self.fill(client, link);
                }
                _ = heartbeat.tick(), if link.connected => self.on_tick(client, link),
                _ = tokio::time::sleep_until(stalled.unwrap_or_else(Instant::now).into()),
                    if stalled.is_some() =>
                {
                    return Some(Err(Lost::Stalled {
                        alerts: link.alerts_in_flight(),
                        after: self.stall_timeout(),
                    }));
                }
            }
        }
    }

    /// What the client library reported. `Err` when it does not fit what was queued: never
    /// expected; starting over on a new connection re-sends whatever was not acknowledged.
    fn on_event(
        &self,
        client: &mqtt::Client,
        link: &mut Link,
        attempts: &mut Attempts,
        event: Ev,
    ) -> Result<(), Lost> {
        match event {
            Ev::Connected => self.on_connected(client, link, attempts),
            Ev::Sent { pkid } => link.sent(pkid)?,
            Ev::PubAck { pkid, refused } => self.on_puback(client, link, pkid, refused)?,
            Ev::Message { topic: t, payload } => {
                self.policy_message(client, link, &t, &payload);
            }
            Ev::Other | Ev::Disconnected => {}
        }
        Ok(())
    }

    /// The broker accepted the connection (a fresh session): subscribe to the policy topic,
    /// say the device is online, send what is spooled.
    fn on_connected(&self, client: &mqtt::Client, link: &mut Link, attempts: &mut Attempts) {
        *link = Link::connected();
        if attempts.connected() {
            log::info!(
                "connected to the broker {}:{} (MQTT {}) as `{}`",
                self.config.options.host,
                self.config.options.port,
                if attempts.v5() { "v5" } else { "3.1.1" },
                self.device_id
            );
        }
        let policy_topic = topic(&self.device_id, Channel::Policy);
        if let Err(e) = client.subscribe(&policy_topic) {
            log::error!("subscribing to {policy_topic}: {e}");
        }
        self.status(client, link, Presence::Online);
        self.fill(client, link);
    }

    /// The broker acknowledged `pkid` (or refused it, MQTT v5): an alert it accepted leaves the
    /// spool; the window has room for more.
    fn on_puback(
        &self,
        client: &mqtt::Client,
        link: &mut Link,
        pkid: u16,
        refused: Option<String>,
    ) -> Result<(), Mismatch> {
        if let Some(seq) = link.acknowledged(pkid)? {
            match refused {
                None => self.delivered(seq),
                Some(reason) => {
                    link.refused = true;
                    log::error!(
                        "the broker refused alert #{seq} ({reason}); it stays in the spool and \
                         is sent again after the next reconnection"
                    );
                }
            }
        }
        self.fill(client, link);
        Ok(())
    }

    /// A heartbeat is due: send it, check that no alert was passed over, and send what is
    /// spooled.
    fn on_tick(&self, client: &mqtt::Client, link: &mut Link) {
        self.heartbeat(client, link);
        if self.passed_over(link) {
            link.last = None;
        }
        // Also alerts no wake-up announced: none waits longer than a heartbeat for a chance to
        // go out.
        let idle = link.alerts_in_flight() == 0;
        let queued = self.fill(client, link);
        if idle && queued > 0 {
            log::debug!("{queued} spooled alert(s) sent with the heartbeat");
        }
    }

    /// After a connection is lost (or could not be made): says so, waits, and switches the
    /// MQTT version if [`Attempts`] says so. `false` when `stop` is notified meanwhile.
    async fn back_off(&self, attempts: &mut Attempts, lost: Lost, stop: &Notify) -> bool {
        let refused = lost.is_protocol();
        let retry = attempts.failed(refused);
        if retry.loud {
            log::warn!(
                "broker {}:{} unreachable: {lost}; alerts are kept in the spool",
                self.config.options.host,
                self.config.options.port,
            );
        } else {
            log::debug!("reconnecting failed: {lost}");
        }
        drop(lost);
        tokio::select! {
            _ = tokio::time::sleep(retry.delay) => {}
            _ = stop.notified() => return false,
        }
        if retry.switch {
            attempts.switch_protocol();
            let v5 = attempts.v5();
            if refused {
                log::info!(
                    "the broker refused MQTT {}; trying {}",
                    if v5 { "3.1.1" } else { "v5" },
                    if v5 { "v5" } else { "3.1.1" }
                );
            } else {
                log::info!(
                    "MQTT 3.1.1 failed too, so the broker's closing of the v5 connection was not \
                     about the version; trying v5 again"
                );
            }
        }
        true
    }

    /// How long alerts may wait for their acknowledgement before the connection is deemed
    /// broken and replaced (everything unacknowledged then goes out again).
    fn stall_timeout(&self) -> Duration {
        (self.config.options.keep_alive * 2).max(STALL_MIN)
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
                // DISCONNECT written: read on until the broker closes the connection (or the
                // deadline). Closing it at once, with the offline status's PUBACK unread, makes
                // the kernel reset the connection, which may discard the DISCONNECT on its way:
                // the broker would then publish the last will (lost) over the goodbye.
                Ok(Ok(Ev::Disconnected)) => {}
                Ok(Err(_)) | Err(_) => {
                    let mut spool = self.shared.spool();
                    self.take_acked(&mut spool);
                    return;
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Where the spool lives by default.
pub fn default_spool_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("spool")
}
