//! Where the backend keeps what devices sent: the [`Store`] trait, what it stores and answers
//! (the rows), and its two implementations, [`SqliteStore`] (`sqlite.rs`, the default) and
//! [`PgStore`] (`postgres.rs`), which run the same statements (`sql.rs`). `filter.rs` turns
//! an alert query's textual parameters into an [`AlertFilter`].
//!
//! Alerts are keyed by `(device_id, seq)`: a message the broker delivers twice is stored once.
//! Each also has a store-wide `id`, increasing in the order stored. The accounts of the HTTP
//! API (users, sessions, API tokens), the alerts' triage and the audit log are kept here too
//! (`accounts.rs`), and the delivery state of the integrations (`forward.rs`).

mod accounts;
pub mod filter;
mod forward;
mod postgres;
pub mod presence;
#[cfg(test)]
mod presence_tests;
pub mod pushes;
#[cfg(test)]
mod pushes_tests;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pg_tls;

use std::path::Path;
use std::time::Duration;

use picket_proto::{Alert, Heartbeat, PolicyResult, Status};
use serde::Serialize;
use serde_json::Value;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A device as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRow {
    pub device_id: String,
    /// `online`, `offline` (it said so: a clean stop), `lost` (its last will: the connection
    /// ended without a clean stop), `timed_out` (it said it was online but nothing came for
    /// longer than the heartbeat timeout) or `unknown` (no status received yet).
    pub state: &'static str,
    pub online: bool,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub status_ms: Option<u64>,
    pub agent_version: Option<String>,
    pub policy_serial: Option<u64>,
    pub policy_name: Option<String>,
    pub boot_id: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub uptime_s: Option<u64>,
    /// The latest heartbeat's counters (rss, sensors, alerts, spool, unverified execs).
    pub counters: Option<Value>,
    /// Alerts stored.
    pub alerts: u64,
    /// Alerts not stored because they were over the device's rate limit (the `rate_limited`
    /// refusals of the device).
    pub rate_limited: u64,
    /// Alerts stored, then removed because the device was over its quota.
    pub quota_removed: u64,
    /// Heartbeats and statuses not stored because they were over the device's limit of those
    /// (the `presence_limited` refusals of the device).
    pub presence_limited: u64,
}

/// A change of a device's presence, as the backend recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceChange {
    pub device_id: String,
    /// The change's number, per device (1, 2, ...).
    pub n: u64,
    /// When it was recorded (backend clock).
    pub time_ms: u64,
    /// `online`, `offline`, `lost` or `timed_out`.
    pub state: String,
    /// The state before (`None`: the first recorded).
    pub previous: Option<String>,
    pub boot_id: Option<String>,
    pub agent_version: Option<String>,
    /// The alert the backend raised for it (`device_silent`, `device_returned`), if any.
    pub alert_id: Option<u64>,
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    pub device_id: String,
    pub seq: u64,
    pub boot_id: String,
    pub time_ms: u64,
    pub received_ms: u64,
    pub kind: String,
    pub severity: String,
    pub rule: String,
    pub path: Option<String>,
    pub details: Value,
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub process: Option<Value>,
    /// The wire format it arrived in (`postcard` or `json`), or `backend` for an alert the
    /// backend raised itself ([`presence`]); `seq` is then the number of the presence change
    /// that raised it, not one of the device's.
    pub format: String,
}

/// What an operator said of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Triage {
    /// `open`, `acknowledged` or `resolved`.
    pub state: String,
    pub note: String,
    /// The user who set it.
    pub by: String,
    pub time_ms: u64,
}

/// The triage states, in the order of their life.
pub const TRIAGE_STATES: [&str; 3] = ["open", "acknowledged", "resolved"];

/// A stored alert with its store-wide id (increasing in the order stored: the cursor of the
/// HTTP API's pages and live events) and its triage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredAlert {
    pub id: u64,
    #[serde(flatten)]
    pub alert: AlertRow,
    pub triage: Option<Triage>,
}

/// How many alerts of a severity and kind were received in an hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertCount {
    /// The start of the hour (ms since the epoch).
    pub bucket_ms: u64,
    pub severity: String,
    pub kind: String,
    pub count: u64,
}

/// A user of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRow {
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The Argon2id hash of the password (PHC string).
    #[serde(skip)]
    pub password_hash: String,
    pub created_ms: u64,
}

/// A session of the HTTP API, found by the SHA-256 of its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub user: String,
    pub role: String,
    pub csrf: String,
    pub created_ms: u64,
    pub last_ms: u64,
}

/// An entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub time_ms: u64,
    /// Who did it (for a failed login: the name given).
    pub user: String,
    /// `login`, `login_failed`, `logout`, `triage`, `policy_push`, `user_add`,
    /// `user_remove`, `token_add`.
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A triage change, as the live events tell it: the audit entry's id (the cursor) and the
/// alert's triage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriageChange {
    pub audit_id: u64,
    pub alert_id: u64,
    pub triage: Triage,
}

/// Sequence numbers missing between two stored alerts of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub device_id: String,
    /// The first and last missing sequence number.
    pub first_missing: u64,
    pub last_missing: u64,
    pub missing: u64,
    /// The gap is what an agent restart leaves: the agent reserves sequence numbers in blocks
    /// of [`AGENT_SEQ_BLOCK`] and resumes after the last reserved block, so a restart skips the
    /// rest of a block. Such a gap lies within one block and ends at its end.
    pub restart: bool,
    /// Not a gap in one counter but the end of one and the start of another: the numbers
    /// jump by [`picket_proto::SEQ_RESET_JUMP`] or more, which only a new counter does (the
    /// device's state directory was lost, or its counter was corrupt). `missing` is 0: how many
    /// alerts the old counter left undelivered is not known. Left out when false.
    #[serde(skip_serializing_if = "is_false")]
    pub reset: bool,
    /// How many of the missing numbers were alerts the backend received and did not store,
    /// over the device's rate limit. Left out when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub rate_limited: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The most policy results kept per device; beyond it the device's oldest are removed, so
/// that a device sending results of its own invention cannot fill the store. A device sends
/// one per bundle pushed to it.
pub const MAX_POLICY_RESULTS_PER_DEVICE: u64 = 1000;

/// The most ranges of rate-limited sequence numbers kept per device; beyond it the oldest
/// (lowest numbers) are forgotten, so that a device sending scattered numbers cannot grow
/// them without bound.
pub const MAX_LIMITED_RANGES: u64 = 1000;

/// The agent reserves alert sequence numbers in blocks of this many (1-64, 65-128, ...).
pub const AGENT_SEQ_BLOCK: u64 = 64;

pub(crate) fn restart_gap(first_missing: u64, last_missing: u64) -> bool {
    first_missing >= 1
        && last_missing.is_multiple_of(AGENT_SEQ_BLOCK)
        && (first_missing - 1) / AGENT_SEQ_BLOCK == (last_missing - 1) / AGENT_SEQ_BLOCK
}

/// Messages refused, by reason and by the device id their topic named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedRow {
    pub reason: String,
    /// Empty when the topic named no valid device.
    pub device_id: String,
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub last_topic: String,
    pub last_error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyResultRow {
    pub device_id: String,
    pub bundle_sha256: String,
    pub time_ms: u64,
    pub received_ms: u64,
    /// `applied`, `unchanged` or `refused`.
    pub outcome: String,
    pub name: Option<String>,
    pub serial: Option<u64>,
    pub reason: Option<String>,
}

/// The delivery state of an integration (a webhook or syslog receiver), by its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardRow {
    pub name: String,
    /// The id of the last alert the receiver acknowledged: the alerts of a higher id are
    /// still to deliver.
    pub last_id: u64,
    /// When it last acknowledged a batch.
    pub success_ms: Option<u64>,
    /// The last error, cleared by the next success.
    pub error: Option<String>,
    pub error_ms: Option<u64>,
}

/// Which alerts a query wants; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub device: Option<String>,
    /// Received at or after this time (ms since the epoch, backend clock).
    pub since_ms: Option<u64>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub limit: Option<u64>,
    /// Received at or before this time.
    pub until_ms: Option<u64>,
    /// Text found (case-insensitively) in the path, rule, kind or details.
    pub text: Option<String>,
    /// `open` (no triage, or set back to open), `acknowledged` or `resolved`.
    pub triage: Option<String>,
    /// The alerts after this one (by its id) in the order of the answer: the next page.
    pub before: Option<u64>,
}

/// The store behind `shared`, for one statement or transaction. After a query that panicked
/// while holding it (a bug), the transaction it left open is rolled back and the connection
/// goes on serving, with the panic logged once, rather than every later query failing for the
/// rest of the process.
pub fn lock(
    shared: &std::sync::Mutex<Box<dyn Store>>,
) -> std::sync::MutexGuard<'_, Box<dyn Store>> {
    shared.lock().unwrap_or_else(|poisoned| {
        log::error!("a store query panicked earlier: its transaction rolled back, going on");
        shared.clear_poison();
        let mut store = poisoned.into_inner();
        store.abandon();
        store
    })
}

/// The storage the backend needs; SQLite is the default implementation.
pub trait Store: Send {
    /// Stores an alert; `false` when `(device_id, seq)` was already stored.
    fn insert_alert(
        &mut self,
        device_id: &str,
        alert: &Alert,
        format: &str,
        received_ms: u64,
    ) -> anyhow::Result<bool>;
    fn record_heartbeat(
        &mut self,
        device_id: &str,
        heartbeat: &Heartbeat,
        received_ms: u64,
    ) -> anyhow::Result<()>;
    fn record_status(
        &mut self,
        device_id: &str,
        status: &Status,
        received_ms: u64,
    ) -> anyhow::Result<()>;
    /// Stores a policy result; `false` when it was already stored. Keeps the device's newest
    /// [`MAX_POLICY_RESULTS_PER_DEVICE`].
    fn insert_policy_result(
        &mut self,
        device_id: &str,
        result: &PolicyResult,
        received_ms: u64,
    ) -> anyhow::Result<bool>;
    /// Removes the device's oldest alerts (lowest sequence numbers) beyond `max_alerts`, and
    /// counts them in its `quota_removed`; returns how many.
    fn enforce_quota(&mut self, device_id: &str, max_alerts: u64) -> anyhow::Result<u64>;
    /// Notes that the alert `seq` of the device was not stored, over its rate limit (for
    /// [`Gap::rate_limited`]). `false` (and nothing noted) if that alert is stored already: a
    /// copy the broker delivered again is not an alert lost to the limit.
    fn note_rate_limited(&mut self, device_id: &str, seq: u64) -> anyhow::Result<bool>;
    /// Records as `timed_out` the devices whose status says online and from which nothing
    /// arrived for longer than `timeout`, once each (with its `device_silent` alert); returns
    /// the changes made.
    fn check_timeouts(
        &mut self,
        now_ms: u64,
        timeout: Duration,
    ) -> anyhow::Result<Vec<PresenceChange>>;
    /// The presence changes of a device (or of all), newest first, at most `limit`.
    fn presence_changes(
        &mut self,
        device: Option<&str>,
        limit: u64,
    ) -> anyhow::Result<Vec<PresenceChange>>;
    /// Records that the bundle of SHA-256 `bundle_sha256` (its policy's name and serial when
    /// known) is being pushed to `devices` at `now_ms`: their results for it are stored.
    fn record_push(
        &mut self,
        devices: &[String],
        bundle_sha256: &str,
        policy: Option<(&str, u64)>,
        now_ms: u64,
    ) -> anyhow::Result<()>;
    /// Whether the bundle of SHA-256 `bundle_sha256` was pushed to the device.
    fn policy_pushed(&mut self, device_id: &str, bundle_sha256: &str) -> anyhow::Result<bool>;
    /// Counts a refused message.
    fn count_refused(
        &mut self,
        reason: &str,
        device_id: Option<&str>,
        topic: &str,
        error: &str,
        received_ms: u64,
    ) -> anyhow::Result<()>;
    /// Deletes alerts and policy results received before `before_ms`; returns how many alerts.
    fn delete_before(&mut self, before_ms: u64) -> anyhow::Result<u64>;
    /// Runs `f` in one transaction: what it writes through the store it is given is committed
    /// together when it returns `Ok`, and rolled back (nothing written) when it returns `Err`.
    /// `f` must pass on every error of the store (a statement that failed may have aborted the
    /// transaction). The ingest stores each batch of messages this way.
    fn in_transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Store) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// Rolls back the transaction of [`Store::in_transaction`] that a panic left open, if any.
    fn abandon(&mut self);

    fn devices(
        &mut self,
        now_ms: u64,
        heartbeat_timeout: Duration,
    ) -> anyhow::Result<Vec<DeviceRow>>;
    /// Newest first: by `received_ms`, then id, both descending (the order of the indexes
    /// that serve the filters).
    fn alerts(&mut self, filter: &AlertFilter) -> anyhow::Result<Vec<AlertRow>> {
        Ok(self
            .stored_alerts(filter)?
            .into_iter()
            .map(|a| a.alert)
            .collect())
    }
    /// [`Store::alerts`] with their ids and triage.
    fn stored_alerts(&mut self, filter: &AlertFilter) -> anyhow::Result<Vec<StoredAlert>>;
    fn alert(&mut self, id: u64) -> anyhow::Result<Option<StoredAlert>>;
    /// At most `limit` alerts of an id above `after`, by id.
    fn alerts_after(&mut self, after: u64, limit: u64) -> anyhow::Result<Vec<StoredAlert>>;
    /// The highest alert id given so far (0 when none).
    fn last_alert_id(&mut self) -> anyhow::Result<u64>;
    /// Alerts received since `since_ms` (the start of an hour), counted by hour, severity and
    /// kind, from the counts kept as alerts are stored and removed.
    fn alert_counts(&mut self, since_ms: u64) -> anyhow::Result<Vec<AlertCount>>;
    /// All stored alerts, counted by severity.
    fn severity_counts(&mut self) -> anyhow::Result<Vec<(String, u64)>>;

    /// Adds a user; `false` when the name is taken.
    fn add_user(
        &mut self,
        name: &str,
        role: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> anyhow::Result<bool>;
    fn user(&mut self, name: &str) -> anyhow::Result<Option<UserRow>>;
    fn users(&mut self) -> anyhow::Result<Vec<UserRow>>;
    /// Removes a user with its sessions and API tokens; `false` when there was none.
    fn remove_user(&mut self, name: &str) -> anyhow::Result<bool>;
    /// Keeps an API token (its SHA-256, hex) of a user.
    fn add_token(&mut self, sha256: &str, user: &str, now_ms: u64) -> anyhow::Result<()>;
    /// The user and role an API token (its SHA-256) belongs to.
    fn token_user(&mut self, sha256: &str) -> anyhow::Result<Option<(String, String)>>;
    fn add_session(
        &mut self,
        sha256: &str,
        user: &str,
        csrf: &str,
        now_ms: u64,
    ) -> anyhow::Result<()>;
    fn session(&mut self, sha256: &str) -> anyhow::Result<Option<SessionRow>>;
    fn touch_session(&mut self, sha256: &str, now_ms: u64) -> anyhow::Result<()>;
    /// `false` when there was no such session.
    fn delete_session(&mut self, sha256: &str) -> anyhow::Result<bool>;
    /// Deletes the sessions idle since before `idle_before_ms` or created before
    /// `created_before_ms`.
    fn expire_sessions(
        &mut self,
        idle_before_ms: u64,
        created_before_ms: u64,
    ) -> anyhow::Result<u64>;
    /// Sets an alert's triage and audits it, together; `None` when the alert is not stored.
    fn set_triage(
        &mut self,
        alert_id: u64,
        state: &str,
        note: &str,
        by: &str,
        now_ms: u64,
    ) -> anyhow::Result<Option<Triage>>;
    fn audit(&mut self, entry: &AuditRow) -> anyhow::Result<()>;
    /// Newest first, at most `limit`.
    fn audit_log(&mut self, limit: u64) -> anyhow::Result<Vec<AuditRow>>;
    /// Triage changes audited after the audit entry `after`, oldest first.
    fn triage_changes(&mut self, after: u64, limit: u64) -> anyhow::Result<Vec<TriageChange>>;
    /// The highest audit entry id (0 when none).
    fn last_audit_id(&mut self) -> anyhow::Result<u64>;
    fn gaps(&mut self, device: Option<&str>) -> anyhow::Result<Vec<Gap>>;
    fn refused(&mut self) -> anyhow::Result<Vec<RefusedRow>>;
    /// Newest first.
    fn policy_results(&mut self, device: Option<&str>) -> anyhow::Result<Vec<PolicyResultRow>>;

    /// The cursor of the integration `name`, which starts at `from` if it has none yet.
    fn forward_start(&mut self, name: &str, from: u64) -> anyhow::Result<u64>;
    /// The integration `name` acknowledged the alerts up to `last_id`: its cursor moves there
    /// (never back) and its error is cleared.
    fn forward_acknowledged(&mut self, name: &str, last_id: u64, now_ms: u64)
        -> anyhow::Result<()>;
    /// Notes the last error of the integration `name`.
    fn forward_failed(&mut self, name: &str, error: &str, now_ms: u64) -> anyhow::Result<()>;
    /// Every integration's delivery state, by name.
    fn forward_rows(&mut self) -> anyhow::Result<Vec<ForwardRow>>;
    /// How many stored alerts have an id above `after`.
    fn alerts_behind(&mut self, after: u64) -> anyhow::Result<u64>;
    /// The policy results received at or after `since_ms` (backend clock), oldest first, at
    /// most `limit`: what the live events poll.
    fn policy_results_since(
        &mut self,
        since_ms: u64,
        limit: u64,
    ) -> anyhow::Result<Vec<PolicyResultRow>>;
}

/// Both stores: the shared statements of [`sql`], written atomically and read as each
/// database does it ([`sql::Database`]).
impl<D: sql::Database> Store for D {
    fn insert_alert(
        &mut self,
        device_id: &str,
        alert: &Alert,
        format: &str,
        received_ms: u64,
    ) -> anyhow::Result<bool> {
        self.atomic(|db| sql::insert_alert(db, device_id, alert, format, received_ms))
    }

    fn record_heartbeat(
        &mut self,
        device_id: &str,
        hb: &Heartbeat,
        received_ms: u64,
    ) -> anyhow::Result<()> {
        self.atomic(|db| sql::record_heartbeat(db, device_id, hb, received_ms))
    }

    fn record_status(
        &mut self,
        device_id: &str,
        status: &Status,
        received_ms: u64,
    ) -> anyhow::Result<()> {
        self.atomic(|db| sql::record_status(db, device_id, status, received_ms))
    }

    fn insert_policy_result(
        &mut self,
        device_id: &str,
        result: &PolicyResult,
        received_ms: u64,
    ) -> anyhow::Result<bool> {
        self.atomic(|db| sql::insert_policy_result(db, device_id, result, received_ms))
    }

    fn enforce_quota(&mut self, device_id: &str, max_alerts: u64) -> anyhow::Result<u64> {
        self.atomic(|db| sql::enforce_quota(db, device_id, max_alerts))
    }

    fn note_rate_limited(&mut self, device_id: &str, seq: u64) -> anyhow::Result<bool> {
        self.atomic(|db| sql::note_rate_limited(db, device_id, seq))
    }

    fn check_timeouts(
        &mut self,
        now_ms: u64,
        timeout: Duration,
    ) -> anyhow::Result<Vec<PresenceChange>> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.atomic(|db| presence::check_timeouts(db, now_ms, timeout_ms))
    }

    fn presence_changes(
        &mut self,
        device: Option<&str>,
        limit: u64,
    ) -> anyhow::Result<Vec<PresenceChange>> {
        self.read(|db| presence::changes(db, device, limit))
    }

    fn record_push(
        &mut self,
        devices: &[String],
        bundle_sha256: &str,
        policy: Option<(&str, u64)>,
        now_ms: u64,
    ) -> anyhow::Result<()> {
        self.atomic(|db| pushes::record(db, devices, bundle_sha256, policy, now_ms))
    }

    fn policy_pushed(&mut self, device_id: &str, bundle_sha256: &str) -> anyhow::Result<bool> {
        self.read(|db| pushes::pushed(db, device_id, bundle_sha256))
    }

    fn count_refused(
        &mut self,
        reason: &str,
        device_id: Option<&str>,
        topic: &str,
        error: &str,
        received_ms: u64,
    ) -> anyhow::Result<()> {
        self.atomic(|db| sql::count_refused(db, reason, device_id, topic, error, received_ms))
    }

    fn delete_before(&mut self, before_ms: u64) -> anyhow::Result<u64> {
        self.atomic(|db| sql::delete_before(db, before_ms))
    }

    fn in_transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Store) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.batch(f)
    }

    fn abandon(&mut self) {
        sql::Database::abandon(self)
    }

    fn devices(
        &mut self,
        now_ms: u64,
        heartbeat_timeout: Duration,
    ) -> anyhow::Result<Vec<DeviceRow>> {
        self.read(|db| sql::devices(db, now_ms, heartbeat_timeout))
    }

    fn stored_alerts(&mut self, filter: &AlertFilter) -> anyhow::Result<Vec<StoredAlert>> {
        self.read(|db| sql::alerts(db, filter))
    }

    fn alert(&mut self, id: u64) -> anyhow::Result<Option<StoredAlert>> {
        self.read(|db| accounts::alert(db, id))
    }

    fn alerts_after(&mut self, after: u64, limit: u64) -> anyhow::Result<Vec<StoredAlert>> {
        self.read(|db| accounts::alerts_after(db, after, limit))
    }

    fn last_alert_id(&mut self) -> anyhow::Result<u64> {
        self.read(accounts::last_alert_id)
    }

    fn alert_counts(&mut self, since_ms: u64) -> anyhow::Result<Vec<AlertCount>> {
        self.read(|db| accounts::alert_counts(db, since_ms))
    }

    fn severity_counts(&mut self) -> anyhow::Result<Vec<(String, u64)>> {
        self.read(accounts::severity_counts)
    }

    fn add_user(
        &mut self,
        name: &str,
        role: &str,
        password_hash: &str,
        now_ms: u64,
    ) -> anyhow::Result<bool> {
        self.atomic(|db| accounts::add_user(db, name, role, password_hash, now_ms))
    }

    fn user(&mut self, name: &str) -> anyhow::Result<Option<UserRow>> {
        self.read(|db| accounts::user(db, name))
    }

    fn users(&mut self) -> anyhow::Result<Vec<UserRow>> {
        self.read(accounts::users)
    }

    fn remove_user(&mut self, name: &str) -> anyhow::Result<bool> {
        self.atomic(|db| accounts::remove_user(db, name))
    }

    fn add_token(&mut self, sha256: &str, user: &str, now_ms: u64) -> anyhow::Result<()> {
        self.atomic(|db| accounts::add_token(db, sha256, user, now_ms))
    }

    fn token_user(&mut self, sha256: &str) -> anyhow::Result<Option<(String, String)>> {
        self.read(|db| accounts::token_user(db, sha256))
    }

    fn add_session(
        &mut self,
        sha256: &str,
        user: &str,
        csrf: &str,
        now_ms: u64,
    ) -> anyhow::Result<()> {
        self.atomic(|db| accounts::add_session(db, sha256, user, csrf, now_ms))
    }

    fn session(&mut self, sha256: &str) -> anyhow::Result<Option<SessionRow>> {
        self.read(|db| accounts::session(db, sha256))
    }

    fn touch_session(&mut self, sha256: &str, now_ms: u64) -> anyhow::Result<()> {
        self.atomic(|db| accounts::touch_session(db, sha256, now_ms))
    }

    fn delete_session(&mut self, sha256: &str) -> anyhow::Result<bool> {
        self.atomic(|db| accounts::delete_session(db, sha256))
    }

    fn expire_sessions(
        &mut self,
        idle_before_ms: u64,
        created_before_ms: u64,
    ) -> anyhow::Result<u64> {
        self.atomic(|db| accounts::expire_sessions(db, idle_before_ms, created_before_ms))
    }

    fn set_triage(
        &mut self,
        alert_id: u64,
        state: &str,
        note: &str,
        by: &str,
        now_ms: u64,
    ) -> anyhow::Result<Option<Triage>> {
        self.atomic(|db| accounts::set_triage(db, alert_id, state, note, by, now_ms))
    }

    fn audit(&mut self, entry: &AuditRow) -> anyhow::Result<()> {
        self.atomic(|db| accounts::audit(db, entry, None))
    }

    fn audit_log(&mut self, limit: u64) -> anyhow::Result<Vec<AuditRow>> {
        self.read(|db| accounts::audit_log(db, limit))
    }

    fn triage_changes(&mut self, after: u64, limit: u64) -> anyhow::Result<Vec<TriageChange>> {
        self.read(|db| accounts::triage_changes(db, after, limit))
    }

    fn last_audit_id(&mut self) -> anyhow::Result<u64> {
        self.read(accounts::last_audit_id)
    }

    fn gaps(&mut self, device: Option<&str>) -> anyhow::Result<Vec<Gap>> {
        self.read(|db| sql::gaps(db, device))
    }

    fn refused(&mut self) -> anyhow::Result<Vec<RefusedRow>> {
        self.read(sql::refused)
    }

    fn policy_results(&mut self, device: Option<&str>) -> anyhow::Result<Vec<PolicyResultRow>> {
        self.read(|db| sql::policy_results(db, device))
    }

    fn forward_start(&mut self, name: &str, from: u64) -> anyhow::Result<u64> {
        self.atomic(|db| forward::start(db, name, from))
    }

    fn forward_acknowledged(
        &mut self,
        name: &str,
        last_id: u64,
        now_ms: u64,
    ) -> anyhow::Result<()> {
        self.atomic(|db| forward::acknowledged(db, name, last_id, now_ms))
    }

    fn forward_failed(&mut self, name: &str, error: &str, now_ms: u64) -> anyhow::Result<()> {
        self.atomic(|db| forward::failed(db, name, error, now_ms))
    }

    fn forward_rows(&mut self) -> anyhow::Result<Vec<ForwardRow>> {
        self.read(forward::all)
    }

    fn alerts_behind(&mut self, after: u64) -> anyhow::Result<u64> {
        self.read(|db| forward::behind(db, after))
    }

    fn policy_results_since(
        &mut self,
        since_ms: u64,
        limit: u64,
    ) -> anyhow::Result<Vec<PolicyResultRow>> {
        self.read(|db| sql::policy_results_since(db, since_ms, limit))
    }
}

/// The counters of a heartbeat, as the registry keeps them.
pub(crate) fn heartbeat_counters(hb: &Heartbeat) -> Value {
    serde_json::json!({
        "time_ms": hb.time_ms,
        "rss_bytes": hb.rss_bytes,
        "sensors": hb.sensors.iter().map(|s| serde_json::json!({
            "sensor": s.sensor, "seen": s.seen, "lost": s.lost
        })).collect::<Vec<_>>(),
        "alerts": {
            "raised": hb.alerts.raised,
            "aggregated": hb.alerts.aggregated,
            "spooled": hb.alerts.spooled,
            "sent": hb.alerts.sent,
            "dropped": hb.alerts.dropped,
        },
        "spool_pending": hb.spool_pending,
        "spool_bytes": hb.spool_bytes,
        "exec_unverified": hb.exec_unverified,
    })
}

/// A device's state from its latest status, when it was last heard of, and the presence the
/// backend recorded (a device recorded as timed out stays so until something new arrives from
/// it, even if its retained status was delivered again).
pub(crate) fn device_state(
    status: Option<&str>,
    last_seen_ms: u64,
    recorded: Option<&str>,
    now_ms: u64,
    heartbeat_timeout: Duration,
) -> &'static str {
    match status {
        Some("online")
            if now_ms.saturating_sub(last_seen_ms) > heartbeat_timeout.as_millis() as u64
                || recorded == Some("timed_out") =>
        {
            "timed_out"
        }
        Some("online") => "online",
        Some("lost") => "lost",
        Some(_) => "offline",
        None => "unknown",
    }
}

/// Opens the store the configuration names: PostgreSQL when `store.postgres` is set, else
/// SQLite (`store.sqlite`, or `sqlite` when given). `create`: create a missing SQLite
/// database (for `serve`); queries refuse a missing one.
pub fn open(
    config: &crate::config::StoreConfig,
    sqlite: Option<&Path>,
    create: bool,
) -> anyhow::Result<Box<dyn Store>> {
    match (&config.postgres, sqlite) {
        (Some(params), None) => {
            let tls = match &config.postgres_ca {
                None => None,
                Some(ca) => Some(crate::tls::client_config_for(
                    ca,
                    config
                        .postgres_cert
                        .as_deref()
                        .zip(config.postgres_key.as_deref()),
                )?),
            };
            Ok(Box::new(PgStore::connect_with(params, tls)?))
        }
        (_, path) => {
            let path = path.map_or_else(|| config.sqlite(), Path::to_path_buf);
            Ok(Box::new(if create {
                SqliteStore::open(&path)?
            } else {
                SqliteStore::open_existing(&path)?
            }))
        }
    }
}
