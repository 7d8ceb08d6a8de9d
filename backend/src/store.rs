//! Where the backend keeps what devices sent: the [`Store`] trait and its SQLite
//! implementation ([`SqliteStore`], the default).
//!
//! Alerts are keyed by `(device_id, seq)`: a message the broker delivers twice is stored once.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use picket_proto::{Alert, Heartbeat, PolicyOutcome, PolicyResult, Presence, Status};
use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use serde_json::Value;

/// The schema this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// A device as the registry knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRow {
    pub device_id: String,
    /// `online`, `offline` (it said so, or its last will did), `timed_out` (it said it was
    /// online but nothing came for longer than the heartbeat timeout) or `unknown` (no
    /// status received yet).
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
    /// The latest heartbeat's counters (rss, sensors, alerts, spool).
    pub counters: Option<Value>,
    pub alerts: u64,
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
    /// The wire format it arrived in (`postcard` or `json`).
    pub format: String,
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
}

/// The agent reserves alert sequence numbers in blocks of this many (1-64, 65-128, ...).
pub const AGENT_SEQ_BLOCK: u64 = 64;

pub(crate) fn restart_gap(first_missing: u64, last_missing: u64) -> bool {
    first_missing >= 1
        && last_missing % AGENT_SEQ_BLOCK == 0
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

/// Which alerts a query wants; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub device: Option<String>,
    /// Received at or after this time (ms since the epoch, backend clock).
    pub since_ms: Option<u64>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub limit: Option<u64>,
}

/// A value bound to a query built by [`alerts_query`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QueryArg {
    Text(String),
    Int(i64),
}

/// The alerts query for `filter`, with a `WHERE` clause of only the filters given (so that an
/// index bounds what is read: `(device_id, received_ms)`, `(kind, received_ms)` or
/// `(received_ms)`) and an order every one of these indexes gives when read backwards (ties
/// on `received_ms` by device id, then sequence number: the primary key's columns, which end
/// every index entry). `placeholder(n)` writes the n-th parameter (1-based): `?n` or `$n`.
pub(crate) fn alerts_query(
    filter: &AlertFilter,
    placeholder: fn(usize) -> String,
) -> (String, Vec<QueryArg>) {
    let mut clauses = Vec::new();
    let mut args = Vec::new();
    let mut bind = |column: &str, op: &str, arg: QueryArg| {
        args.push(arg);
        clauses.push(format!("{column} {op} {}", placeholder(args.len())));
    };
    if let Some(device) = &filter.device {
        bind("device_id", "=", QueryArg::Text(device.clone()));
    }
    if let Some(since) = filter.since_ms {
        bind(
            "received_ms",
            ">=",
            QueryArg::Int(i64::try_from(since).unwrap_or(i64::MAX)),
        );
    }
    if let Some(kind) = &filter.kind {
        bind("kind", "=", QueryArg::Text(kind.clone()));
    }
    if let Some(severity) = &filter.severity {
        bind("severity", "=", QueryArg::Text(severity.clone()));
    }
    let mut sql = String::from(
        "SELECT device_id, seq, boot_id, time_ms, received_ms, kind, severity, rule, path,
                details, count, first_ms, last_ms, process, format
         FROM alerts",
    );
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(" ORDER BY received_ms DESC, device_id DESC, seq DESC");
    if let Some(limit) = filter.limit {
        args.push(QueryArg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT {}", placeholder(args.len())));
    }
    (sql, args)
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
    /// Stores a policy result; `false` when it was already stored.
    fn insert_policy_result(
        &mut self,
        device_id: &str,
        result: &PolicyResult,
        received_ms: u64,
    ) -> anyhow::Result<bool>;
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

    fn devices(
        &mut self,
        now_ms: u64,
        heartbeat_timeout: Duration,
    ) -> anyhow::Result<Vec<DeviceRow>>;
    /// Newest first: by `received_ms`, then device id and sequence number, all descending
    /// (the order of the indexes that serve the filters).
    fn alerts(&mut self, filter: &AlertFilter) -> anyhow::Result<Vec<AlertRow>>;
    fn gaps(&mut self, device: Option<&str>) -> anyhow::Result<Vec<Gap>>;
    fn refused(&mut self) -> anyhow::Result<Vec<RefusedRow>>;
    /// Newest first.
    fn policy_results(&mut self, device: Option<&str>) -> anyhow::Result<Vec<PolicyResultRow>>;
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
    })
}

/// A device's state from its latest status and when it was last heard of.
pub(crate) fn presence(
    status: Option<&str>,
    last_seen_ms: u64,
    now_ms: u64,
    heartbeat_timeout: Duration,
) -> &'static str {
    match status {
        Some("online")
            if now_ms.saturating_sub(last_seen_ms) > heartbeat_timeout.as_millis() as u64 =>
        {
            "timed_out"
        }
        Some("online") => "online",
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
        (Some(params), None) => Ok(Box::new(crate::pgstore::PgStore::connect(params)?)),
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

/// The SQLite store (WAL mode, so readers do not block the ingest).
pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    status TEXT,
    status_ms INTEGER,
    agent_version TEXT,
    policy_serial INTEGER,
    policy_name TEXT,
    boot_id TEXT,
    heartbeat_ms INTEGER,
    uptime_s INTEGER,
    counters TEXT
);
CREATE TABLE alerts (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    rule TEXT NOT NULL,
    path TEXT,
    details TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    process TEXT,
    format TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX alerts_received ON alerts (received_ms);
CREATE INDEX alerts_device_received ON alerts (device_id, received_ms);
CREATE INDEX alerts_kind_received ON alerts (kind, received_ms);
CREATE TABLE refused (
    reason TEXT NOT NULL,
    device_id TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    last_topic TEXT NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (reason, device_id)
);
CREATE TABLE policy_results (
    device_id TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    name TEXT,
    serial INTEGER,
    reason TEXT,
    PRIMARY KEY (device_id, bundle_sha256, time_ms)
);
";

/// Indexes added after the first schema: created when a database is opened (a no-op once they
/// exist; the first open of a large store built without them takes a while).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS alerts_device_received ON alerts (device_id, received_ms);
CREATE INDEX IF NOT EXISTS alerts_kind_received ON alerts (kind, received_ms);
";

/// SQLite integers are signed: values above `i64::MAX` (never produced by a sane device, but
/// possible on the wire) are clamped rather than wrapped.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Opens the database, creating it (and its directory) if needed.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        Self::init(conn).with_context(|| format!("database {}", path.display()))
    }

    /// Opens an existing database (for queries): a missing file is an error, not a new
    /// empty database.
    pub fn open_existing(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| {
            format!(
                "opening the database {} (does it exist? `picket-backend serve` creates it)",
                path.display()
            )
        })?;
        Self::init(conn).with_context(|| format!("database {}", path.display()))
    }

    /// An in-memory database (tests).
    #[cfg(test)]
    pub fn memory() -> anyhow::Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> anyhow::Result<Self> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0 => {
                conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .or_else(|e| {
                    // Another process may have created it between the check and the write.
                    let _ = conn.execute_batch("ROLLBACK");
                    let now: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
                    if now == SCHEMA_VERSION {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .context("creating the schema")?;
            }
            SCHEMA_VERSION => {
                conn.execute_batch(INDEXES)
                    .context("creating the indexes")?;
            }
            other => anyhow::bail!(
                "schema version {other} is newer than this backend's ({SCHEMA_VERSION})"
            ),
        }
        Ok(SqliteStore { conn })
    }

    fn touch_device(&self, device_id: &str, received_ms: u64) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO devices (device_id, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?2)
             ON CONFLICT (device_id) DO UPDATE SET last_seen_ms = max(last_seen_ms, ?2)",
            params![device_id, int(received_ms)],
        )?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn insert_alert(
        &mut self,
        device_id: &str,
        alert: &Alert,
        format: &str,
        received_ms: u64,
    ) -> anyhow::Result<bool> {
        let tx = self.conn.savepoint()?;
        let process = alert
            .process
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO alerts (device_id, seq, boot_id, time_ms, received_ms, kind,
                 severity, rule, path, details, count, first_ms, last_ms, process, format)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                device_id,
                int(alert.seq),
                alert.boot_id,
                int(alert.time_ms),
                int(received_ms),
                alert.kind.name(),
                alert.severity.name(),
                alert.rule,
                alert.path,
                alert.details.0.to_string(),
                int(alert.count),
                int(alert.first_ms),
                int(alert.last_ms),
                process,
                format,
            ],
        )? == 1;
        tx.execute(
            "INSERT INTO devices (device_id, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?2)
             ON CONFLICT (device_id) DO UPDATE SET last_seen_ms = max(last_seen_ms, ?2)",
            params![device_id, int(received_ms)],
        )?;
        tx.commit()?;
        Ok(inserted)
    }

    fn record_heartbeat(
        &mut self,
        device_id: &str,
        hb: &Heartbeat,
        received_ms: u64,
    ) -> anyhow::Result<()> {
        let counters = heartbeat_counters(hb);
        self.touch_device(device_id, received_ms)?;
        self.conn.execute(
            "UPDATE devices SET heartbeat_ms = ?2, uptime_s = ?3, agent_version = ?4,
                 policy_serial = ?5, counters = ?6
             WHERE device_id = ?1 AND (heartbeat_ms IS NULL OR heartbeat_ms <= ?2)",
            params![
                device_id,
                int(received_ms),
                int(hb.uptime_s),
                hb.agent_version,
                int(hb.policy_serial),
                counters.to_string(),
            ],
        )?;
        Ok(())
    }

    fn record_status(
        &mut self,
        device_id: &str,
        status: &Status,
        received_ms: u64,
    ) -> anyhow::Result<()> {
        let state = match status.state {
            Presence::Online => "online",
            Presence::Offline => "offline",
        };
        self.touch_device(device_id, received_ms)?;
        // A status is applied in the order received: a last will carries the time of the
        // connection it belongs to, not of the disconnection.
        self.conn.execute(
            "UPDATE devices SET status = ?2, status_ms = ?3, agent_version = ?4,
                 policy_serial = ?5, policy_name = ?6, boot_id = ?7
             WHERE device_id = ?1",
            params![
                device_id,
                state,
                int(received_ms),
                status.agent_version,
                int(status.policy_serial),
                status.policy_name,
                status.boot_id,
            ],
        )?;
        Ok(())
    }

    fn insert_policy_result(
        &mut self,
        device_id: &str,
        result: &PolicyResult,
        received_ms: u64,
    ) -> anyhow::Result<bool> {
        let (outcome, name, serial, reason) = match &result.outcome {
            PolicyOutcome::Applied { name, serial } => {
                ("applied", Some(name.as_str()), Some(*serial), None)
            }
            PolicyOutcome::Unchanged { serial } => ("unchanged", None, Some(*serial), None),
            PolicyOutcome::Refused { reason } => ("refused", None, None, Some(reason.as_str())),
        };
        let tx = self.conn.savepoint()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO policy_results (device_id, bundle_sha256, time_ms,
                 received_ms, outcome, name, serial, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                device_id,
                result.bundle_sha256,
                int(result.time_ms),
                int(received_ms),
                outcome,
                name,
                serial.map(int),
                reason,
            ],
        )? == 1;
        tx.execute(
            "INSERT INTO devices (device_id, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?2)
             ON CONFLICT (device_id) DO UPDATE SET last_seen_ms = max(last_seen_ms, ?2)",
            params![device_id, int(received_ms)],
        )?;
        if let PolicyOutcome::Applied { name, serial } = &result.outcome {
            tx.execute(
                "UPDATE devices SET policy_serial = ?2, policy_name = ?3 WHERE device_id = ?1",
                params![device_id, int(*serial), name],
            )?;
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn count_refused(
        &mut self,
        reason: &str,
        device_id: Option<&str>,
        topic: &str,
        error: &str,
        received_ms: u64,
    ) -> anyhow::Result<()> {
        let topic: String = topic.chars().take(200).collect();
        let error: String = error.chars().take(500).collect();
        self.conn.execute(
            "INSERT INTO refused (reason, device_id, count, first_ms, last_ms, last_topic, last_error)
             VALUES (?1, ?2, 1, ?3, ?3, ?4, ?5)
             ON CONFLICT (reason, device_id) DO UPDATE SET count = count + 1,
                 last_ms = ?3, last_topic = ?4, last_error = ?5",
            params![reason, device_id.unwrap_or(""), int(received_ms), topic, error],
        )?;
        Ok(())
    }

    fn delete_before(&mut self, before_ms: u64) -> anyhow::Result<u64> {
        let tx = self.conn.savepoint()?;
        let alerts = tx.execute(
            "DELETE FROM alerts WHERE received_ms < ?1",
            params![int(before_ms)],
        )?;
        tx.execute(
            "DELETE FROM policy_results WHERE received_ms < ?1",
            params![int(before_ms)],
        )?;
        tx.commit()?;
        Ok(alerts as u64)
    }

    fn in_transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Store) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        // IMMEDIATE: take the write lock now (waiting up to the busy timeout) rather than fail
        // to upgrade a read transaction later. The methods use savepoints, which nest in it.
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(()) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    fn devices(
        &mut self,
        now_ms: u64,
        heartbeat_timeout: Duration,
    ) -> anyhow::Result<Vec<DeviceRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT d.device_id, d.first_seen_ms, d.last_seen_ms, d.status, d.status_ms,
                    d.agent_version, d.policy_serial, d.policy_name, d.boot_id, d.heartbeat_ms,
                    d.uptime_s, d.counters,
                    (SELECT count(*) FROM alerts a WHERE a.device_id = d.device_id)
             FROM devices d ORDER BY d.device_id",
        )?;
        let rows = stmt.query_map([], |r| {
            let last_seen_ms = uint(r.get(2)?);
            let status: Option<String> = r.get(3)?;
            let state = presence(status.as_deref(), last_seen_ms, now_ms, heartbeat_timeout);
            let counters: Option<String> = r.get(11)?;
            Ok(DeviceRow {
                device_id: r.get(0)?,
                state,
                online: state == "online",
                first_seen_ms: uint(r.get(1)?),
                last_seen_ms,
                status_ms: r.get::<_, Option<i64>>(4)?.map(uint),
                agent_version: r.get(5)?,
                policy_serial: r.get::<_, Option<i64>>(6)?.map(uint),
                policy_name: r.get(7)?,
                boot_id: r.get(8)?,
                heartbeat_ms: r.get::<_, Option<i64>>(9)?.map(uint),
                uptime_s: r.get::<_, Option<i64>>(10)?.map(uint),
                counters: counters.and_then(|c| serde_json::from_str(&c).ok()),
                alerts: uint(r.get(12)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn alerts(&mut self, filter: &AlertFilter) -> anyhow::Result<Vec<AlertRow>> {
        let (sql, args) = alerts_query(filter, |n| format!("?{n}"));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let args = args.into_iter().map(|a| match a {
            QueryArg::Text(t) => rusqlite::types::Value::Text(t),
            QueryArg::Int(i) => rusqlite::types::Value::Integer(i),
        });
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            let details: String = r.get(9)?;
            let process: Option<String> = r.get(13)?;
            Ok(AlertRow {
                device_id: r.get(0)?,
                seq: uint(r.get(1)?),
                boot_id: r.get(2)?,
                time_ms: uint(r.get(3)?),
                received_ms: uint(r.get(4)?),
                kind: r.get(5)?,
                severity: r.get(6)?,
                rule: r.get(7)?,
                path: r.get(8)?,
                details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
                count: uint(r.get(10)?),
                first_ms: uint(r.get(11)?),
                last_ms: uint(r.get(12)?),
                process: process.map(|p| serde_json::from_str(&p).unwrap_or(Value::String(p))),
                format: r.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn gaps(&mut self, device: Option<&str>) -> anyhow::Result<Vec<Gap>> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, seq + 1, next - 1 FROM (
                 SELECT device_id, seq,
                        lead(seq) OVER (PARTITION BY device_id ORDER BY seq) AS next
                 FROM alerts WHERE ?1 IS NULL OR device_id = ?1)
             WHERE next > seq + 1 ORDER BY device_id, seq",
        )?;
        let rows = stmt.query_map(params![device], |r| {
            let first = uint(r.get(1)?);
            let last = uint(r.get(2)?);
            Ok(Gap {
                device_id: r.get(0)?,
                first_missing: first,
                last_missing: last,
                missing: last - first + 1,
                restart: restart_gap(first, last),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn refused(&mut self) -> anyhow::Result<Vec<RefusedRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT reason, device_id, count, first_ms, last_ms, last_topic, last_error
             FROM refused ORDER BY reason, device_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RefusedRow {
                reason: r.get(0)?,
                device_id: r.get(1)?,
                count: uint(r.get(2)?),
                first_ms: uint(r.get(3)?),
                last_ms: uint(r.get(4)?),
                last_topic: r.get(5)?,
                last_error: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn policy_results(&mut self, device: Option<&str>) -> anyhow::Result<Vec<PolicyResultRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT device_id, bundle_sha256, time_ms, received_ms, outcome, name, serial, reason
             FROM policy_results WHERE ?1 IS NULL OR device_id = ?1
             ORDER BY received_ms DESC, device_id",
        )?;
        let rows = stmt.query_map(params![device], |r| {
            Ok(PolicyResultRow {
                device_id: r.get(0)?,
                bundle_sha256: r.get(1)?,
                time_ms: uint(r.get(2)?),
                received_ms: uint(r.get(3)?),
                outcome: r.get(4)?,
                name: r.get(5)?,
                serial: r.get::<_, Option<i64>>(6)?.map(uint),
                reason: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_proto::{
        AlertCounters, AlertKind, Details, ProcessContext, SensorCounters, Severity,
    };

    fn alert(seq: u64) -> Alert {
        Alert {
            seq,
            boot_id: "boot".into(),
            time_ms: 1000 + seq,
            kind: if seq % 2 == 0 {
                AlertKind::UnknownExecutable
            } else {
                AlertKind::UnexpectedConnection
            },
            severity: if seq % 2 == 0 {
                Severity::High
            } else {
                Severity::Medium
            },
            rule: "executables".into(),
            path: Some(format!("/tmp/x{seq}")),
            details: Details(serde_json::json!({"n": seq})),
            count: 1,
            first_ms: 1,
            last_ms: 2,
            process: Some(ProcessContext {
                pid: Some(7),
                exe: Some("/bin/sh".into()),
                argv: vec!["sh".into(), "-c".into()],
                ..Default::default()
            }),
        }
    }

    fn status(state: Presence) -> Status {
        Status {
            state,
            time_ms: 5,
            agent_version: "0.1.0".into(),
            policy_serial: 3,
            policy_name: "base".into(),
            boot_id: "boot".into(),
        }
    }

    fn alerts_are_stored_once_with_their_context(s: &mut dyn Store) {
        assert!(s.insert_alert("gw-1", &alert(1), "postcard", 10).unwrap());
        assert!(!s.insert_alert("gw-1", &alert(1), "postcard", 11).unwrap());
        assert!(s.insert_alert("gw-2", &alert(1), "json", 12).unwrap());
        assert_eq!(count(s, "gw-1"), 1);
        let rows = s
            .alerts(&AlertFilter {
                device: Some("gw-1".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.received_ms, 10, "the first copy is kept");
        assert_eq!(row.kind, "unexpected_connection");
        assert_eq!(row.details["n"], 1);
        let process = row.process.as_ref().unwrap();
        assert_eq!(process["exe"], "/bin/sh");
        assert_eq!(process["argv"][1], "-c");
        assert_eq!(row.format, "postcard");
    }

    fn queries_filter_and_order(s: &mut dyn Store) {
        for seq in 1..=6 {
            s.insert_alert("gw-1", &alert(seq), "postcard", 100 * seq)
                .unwrap();
        }
        s.insert_alert("gw-2", &alert(2), "postcard", 250).unwrap();
        let mut q = |f: AlertFilter| -> Vec<(String, u64)> {
            s.alerts(&f)
                .unwrap()
                .into_iter()
                .map(|a| (a.device_id, a.seq))
                .collect()
        };
        assert_eq!(q(AlertFilter::default()).len(), 7);
        assert_eq!(
            q(AlertFilter {
                since_ms: Some(400),
                ..Default::default()
            }),
            [("gw-1".into(), 6), ("gw-1".into(), 5), ("gw-1".into(), 4)]
        );
        assert_eq!(
            q(AlertFilter {
                kind: Some("unknown_executable".into()),
                device: Some("gw-1".into()),
                ..Default::default()
            }),
            [("gw-1".into(), 6), ("gw-1".into(), 4), ("gw-1".into(), 2)]
        );
        assert_eq!(
            q(AlertFilter {
                severity: Some("high".into()),
                limit: Some(2),
                ..Default::default()
            }),
            [("gw-1".into(), 6), ("gw-1".into(), 4)]
        );
    }

    fn ties_are_ordered_by_device_then_sequence_descending(s: &mut dyn Store) {
        for (device, seq) in [("gw-1", 1), ("gw-2", 1), ("gw-1", 2), ("gw-3", 9)] {
            s.insert_alert(device, &alert(seq), "postcard", 5).unwrap();
        }
        s.insert_alert("gw-1", &alert(3), "postcard", 4).unwrap();
        let order: Vec<(String, u64)> = s
            .alerts(&AlertFilter::default())
            .unwrap()
            .into_iter()
            .map(|a| (a.device_id, a.seq))
            .collect();
        assert_eq!(
            order,
            [
                ("gw-3".into(), 9),
                ("gw-2".into(), 1),
                ("gw-1".into(), 2),
                ("gw-1".into(), 1),
                ("gw-1".into(), 3)
            ]
        );
    }

    fn a_transaction_commits_all_or_nothing(s: &mut dyn Store) {
        let hb = Heartbeat {
            time_ms: 1,
            uptime_s: 1,
            agent_version: "0.1.0".into(),
            policy_serial: 1,
            rss_bytes: 1,
            sensors: Vec::new(),
            alerts: AlertCounters::default(),
            spool_pending: 0,
            spool_bytes: 0,
        };
        // A failure after some writes: none of them stays.
        let failed = s.in_transaction(&mut |t| {
            assert!(t.insert_alert("gw-1", &alert(1), "postcard", 10)?);
            t.record_heartbeat("gw-2", &hb, 10)?;
            t.record_status("gw-3", &status(Presence::Online), 10)?;
            t.count_refused("malformed", Some("gw-1"), "picket/v1/gw-1/alert", "bad", 10)?;
            anyhow::bail!("the store failed")
        });
        assert_eq!(failed.unwrap_err().to_string(), "the store failed");
        assert!(s.alerts(&AlertFilter::default()).unwrap().is_empty());
        assert!(s.devices(10, Duration::from_secs(60)).unwrap().is_empty());
        assert!(s.refused().unwrap().is_empty());
        // The same again, committed; then a duplicate in a second transaction.
        let mut new = Vec::new();
        s.in_transaction(&mut |t| {
            for seq in 1..=3 {
                new.push(t.insert_alert("gw-1", &alert(seq), "postcard", 10 + seq)?);
            }
            t.record_heartbeat("gw-2", &hb, 10)?;
            t.count_refused("malformed", Some("gw-1"), "picket/v1/gw-1/alert", "bad", 10)?;
            Ok(())
        })
        .unwrap();
        assert_eq!(new, [true, true, true]);
        s.in_transaction(&mut |t| {
            new.push(t.insert_alert("gw-1", &alert(2), "postcard", 20)?);
            Ok(())
        })
        .unwrap();
        assert_eq!(new.last(), Some(&false));
        assert_eq!(count(s, "gw-1"), 3);
        assert_eq!(s.devices(10, Duration::from_secs(60)).unwrap().len(), 2);
        assert_eq!(s.refused().unwrap()[0].count, 1);
        // Writes outside a transaction still commit on their own.
        assert!(s.insert_alert("gw-1", &alert(4), "postcard", 30).unwrap());
        assert_eq!(count(s, "gw-1"), 4);
    }

    fn gaps_are_computed_per_device(s: &mut dyn Store) {
        for seq in [1, 2, 3, 7, 8, 10] {
            s.insert_alert("gw-1", &alert(seq), "postcard", 1).unwrap();
        }
        for seq in [4, 5] {
            s.insert_alert("gw-2", &alert(seq), "postcard", 1).unwrap();
        }
        let gaps = s.gaps(None).unwrap();
        assert_eq!(
            gaps,
            [
                Gap {
                    device_id: "gw-1".into(),
                    first_missing: 4,
                    last_missing: 6,
                    missing: 3,
                    restart: false,
                },
                Gap {
                    device_id: "gw-1".into(),
                    first_missing: 9,
                    last_missing: 9,
                    missing: 1,
                    restart: false,
                },
            ]
        );
        assert!(s.gaps(Some("gw-2")).unwrap().is_empty());
        // The missing one arrives late: the gap closes.
        s.insert_alert("gw-1", &alert(9), "postcard", 2).unwrap();
        assert_eq!(s.gaps(Some("gw-1")).unwrap().len(), 1);
        // The agent restarted after 70 and resumed at 129: the rest of its block is skipped.
        for seq in [70, 129] {
            s.insert_alert("gw-1", &alert(seq), "postcard", 3).unwrap();
        }
        let gaps = s.gaps(Some("gw-1")).unwrap();
        assert_eq!(gaps.len(), 3);
        // 11..=69 spans two blocks: not explained by a restart alone.
        assert_eq!((gaps[1].first_missing, gaps[1].restart), (11, false));
        assert_eq!((gaps[2].first_missing, gaps[2].last_missing), (71, 128));
        assert!(gaps[2].restart);
        assert!(restart_gap(64, 64));
        assert!(restart_gap(1, 64));
        assert!(!restart_gap(64, 65));
        assert!(!restart_gap(60, 127));
    }

    fn retention_deletes_old_alerts_only(s: &mut dyn Store) {
        for seq in 1..=5 {
            s.insert_alert("gw-1", &alert(seq), "postcard", seq * 1000)
                .unwrap();
        }
        assert_eq!(s.delete_before(3000).unwrap(), 2);
        let left: Vec<u64> = s
            .alerts(&AlertFilter::default())
            .unwrap()
            .iter()
            .map(|a| a.seq)
            .collect();
        assert_eq!(left, [5, 4, 3]);
        assert_eq!(s.delete_before(3000).unwrap(), 0);
        assert_eq!(s.devices(5000, Duration::from_secs(60)).unwrap().len(), 1);
    }

    fn registry_follows_status_heartbeats_and_timeout(s: &mut dyn Store) {
        let timeout = Duration::from_secs(60);
        s.record_status("gw-1", &status(Presence::Online), 1_000)
            .unwrap();
        let d = &s.devices(2_000, timeout).unwrap()[0];
        assert_eq!((d.state, d.online), ("online", true));
        assert_eq!(d.policy_name.as_deref(), Some("base"));
        let hb = Heartbeat {
            time_ms: 9,
            uptime_s: 120,
            agent_version: "0.2.0".into(),
            policy_serial: 4,
            rss_bytes: 4 << 20,
            sensors: vec![SensorCounters {
                sensor: "process".into(),
                seen: 10,
                lost: 1,
            }],
            alerts: AlertCounters {
                raised: 3,
                ..Default::default()
            },
            spool_pending: 2,
            spool_bytes: 300,
        };
        s.record_heartbeat("gw-1", &hb, 50_000).unwrap();
        let d = &s.devices(100_000, timeout).unwrap()[0];
        assert_eq!(d.state, "online");
        assert_eq!(d.agent_version.as_deref(), Some("0.2.0"));
        assert_eq!(d.policy_serial, Some(4));
        assert_eq!(d.uptime_s, Some(120));
        let c = d.counters.as_ref().unwrap();
        assert_eq!(c["sensors"][0]["lost"], 1);
        assert_eq!(c["alerts"]["raised"], 3);
        assert_eq!(c["spool_pending"], 2);
        // Silent for longer than the timeout.
        assert_eq!(s.devices(111_000, timeout).unwrap()[0].state, "timed_out");
        // The last will.
        s.record_status("gw-1", &status(Presence::Offline), 112_000)
            .unwrap();
        let d = &s.devices(112_000, timeout).unwrap()[0];
        assert_eq!((d.state, d.online), ("offline", false));
        assert_eq!(d.first_seen_ms, 1_000);
        assert_eq!(d.last_seen_ms, 112_000);
    }

    fn refusals_and_policy_results_are_counted(s: &mut dyn Store) {
        for _ in 0..3 {
            s.count_refused("malformed", Some("gw-1"), "picket/v1/gw-1/alert", "bad", 5)
                .unwrap();
        }
        s.count_refused("foreign_topic", None, "x/y", "not ours", 6)
            .unwrap();
        let r = s.refused().unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[1].reason.as_str(), r[1].count), ("malformed", 3));
        assert_eq!(r[0].device_id, "");
        let result = PolicyResult {
            time_ms: 1,
            bundle_sha256: "ab".into(),
            outcome: PolicyOutcome::Applied {
                name: "p2".into(),
                serial: 9,
            },
        };
        assert!(s.insert_policy_result("gw-1", &result, 7).unwrap());
        assert!(!s.insert_policy_result("gw-1", &result, 8).unwrap());
        let rows = s.policy_results(Some("gw-1")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, "applied");
        let d = &s.devices(8, Duration::from_secs(1)).unwrap()[0];
        assert_eq!(d.policy_serial, Some(9));
        assert_eq!(d.policy_name.as_deref(), Some("p2"));
    }

    /// Each combination of filters reads through an index that bounds it and gives the order
    /// asked for: no full scan, no sort.
    #[test]
    fn alert_queries_use_an_index_for_their_filters_and_order() {
        let mut s = SqliteStore::memory().unwrap();
        for seq in 1..=20 {
            s.insert_alert(&format!("gw-{}", seq % 3), &alert(seq), "json", seq)
                .unwrap();
        }
        let text = |v: &str| Some(v.to_string());
        let cases = [
            (AlertFilter::default(), "alerts_received"),
            (
                AlertFilter {
                    since_ms: Some(5),
                    ..Default::default()
                },
                "alerts_received (received_ms>?)",
            ),
            (
                AlertFilter {
                    device: text("gw-1"),
                    ..Default::default()
                },
                "alerts_device_received (device_id=?)",
            ),
            (
                AlertFilter {
                    device: text("gw-1"),
                    since_ms: Some(5),
                    ..Default::default()
                },
                "alerts_device_received (device_id=? AND received_ms>?)",
            ),
            (
                AlertFilter {
                    kind: text("agent_tamper"),
                    since_ms: Some(5),
                    ..Default::default()
                },
                "alerts_kind_received (kind=? AND received_ms>?)",
            ),
            (
                AlertFilter {
                    kind: text("agent_tamper"),
                    limit: Some(3),
                    ..Default::default()
                },
                "alerts_kind_received (kind=?)",
            ),
            (
                AlertFilter {
                    severity: text("high"),
                    limit: Some(3),
                    ..Default::default()
                },
                "alerts_received",
            ),
        ];
        for (filter, index) in cases {
            let (sql, args) = alerts_query(&filter, |n| format!("?{n}"));
            let args = args.into_iter().map(|a| match a {
                QueryArg::Text(t) => rusqlite::types::Value::Text(t),
                QueryArg::Int(i) => rusqlite::types::Value::Integer(i),
            });
            let mut stmt = s
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(
                plan.contains(&format!("USING INDEX {index}")) && !plan.contains("TEMP B-TREE"),
                "{filter:?}: {plan}"
            );
        }
    }

    #[test]
    fn the_indexes_are_added_to_an_existing_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let s = SqliteStore::open(&path).unwrap();
        s.conn
            .execute_batch("DROP INDEX alerts_device_received; DROP INDEX alerts_kind_received")
            .unwrap();
        drop(s);
        let s = SqliteStore::open_existing(&path).unwrap();
        let indexes: Vec<String> = s
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'alerts' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                "alerts_device_received",
                "alerts_kind_received",
                "alerts_received"
            ]
        );
    }

    #[test]
    fn a_file_database_is_reopened_and_a_missing_one_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/picket.db");
        assert!(SqliteStore::open_existing(&path).is_err());
        let mut s = SqliteStore::open(&path).unwrap();
        s.insert_alert("gw-1", &alert(1), "json", 1).unwrap();
        drop(s);
        let mut s = SqliteStore::open_existing(&path).unwrap();
        assert_eq!(count(&mut s, "gw-1"), 1);
    }

    fn count(s: &mut dyn Store, device: &str) -> usize {
        s.alerts(&AlertFilter {
            device: Some(device.into()),
            ..Default::default()
        })
        .unwrap()
        .len()
    }

    /// What every store must do, run on each implementation.
    type Check = fn(&mut dyn Store);
    const CHECKS: &[(&str, Check)] = &[
        (
            "alerts_are_stored_once_with_their_context",
            alerts_are_stored_once_with_their_context,
        ),
        ("queries_filter_and_order", queries_filter_and_order),
        (
            "ties_are_ordered_by_device_then_sequence_descending",
            ties_are_ordered_by_device_then_sequence_descending,
        ),
        (
            "a_transaction_commits_all_or_nothing",
            a_transaction_commits_all_or_nothing,
        ),
        ("gaps_are_computed_per_device", gaps_are_computed_per_device),
        (
            "retention_deletes_old_alerts_only",
            retention_deletes_old_alerts_only,
        ),
        (
            "registry_follows_status_heartbeats_and_timeout",
            registry_follows_status_heartbeats_and_timeout,
        ),
        (
            "refusals_and_policy_results_are_counted",
            refusals_and_policy_results_are_counted,
        ),
    ];

    #[test]
    fn sqlite_store_passes_the_checks() {
        for (name, check) in CHECKS {
            eprintln!("sqlite: {name}");
            check(&mut SqliteStore::memory().unwrap());
        }
    }

    #[test]
    fn postgres_store_passes_the_same_checks() {
        let pg = picket_test_support::postgres::Postgres::start();
        for (i, (name, check)) in CHECKS.iter().enumerate() {
            eprintln!("postgres: {name}");
            let params = pg.database(&format!("check{i}"));
            check(&mut crate::pgstore::PgStore::connect(&params).unwrap());
        }
        // A second connection finds the schema in place.
        let params = pg.database("check0");
        let mut again = crate::pgstore::PgStore::connect(&params).unwrap();
        assert_eq!(count(&mut again, "gw-1"), 1);
    }
}
