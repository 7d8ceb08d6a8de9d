//! The SQLite store (the default): one file, in WAL mode so that readers do not block the
//! ingest. Its statements are those of [`super::sql`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use super::forward::FORWARD_TABLES;
use super::presence;
use super::pushes;
use super::sql::{self, Arg, Columns, Database, Db};
use super::Store;

/// The schema this code reads and writes (`PRAGMA user_version`). 2 added the devices'
/// `stored_alerts` and `quota_removed` ([`UPGRADE_FROM_1`]); 3 the alerts' `id` and the
/// tables of the HTTP API's accounts, triage and audit ([`UPGRADE_FROM_2`]); 4 the counts of
/// the overview ([`sql::COUNT_TABLES`], filled from the alerts stored); 5 the delivery state
/// of the integrations ([`FORWARD_TABLES`]) and the devices' presence and its changes
/// ([`presence::TABLES`]); 6 the bundles pushed to each device ([`pushes::TABLES`], filled from
/// the policy results stored). An older database is upgraded when opened.
pub(super) const SCHEMA_VERSION: i64 = 6;

/// The SQLite store (WAL mode, so readers do not block the ingest).
pub struct SqliteStore {
    pub(super) conn: Connection,
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
    counters TEXT,
    stored_alerts INTEGER NOT NULL DEFAULT 0,
    quota_removed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    UNIQUE (device_id, seq)
);
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

/// From version 1: the per-device counts of the quota, from the alerts already stored.
const UPGRADE_FROM_1: &str = "
ALTER TABLE devices ADD COLUMN stored_alerts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN quota_removed INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET stored_alerts =
    (SELECT count(*) FROM alerts a WHERE a.device_id = devices.device_id);
PRAGMA user_version = 2;
";

/// From version 2: the alerts get an `id` (a rowid that is never reused), given in the order
/// they were received; the tables of the HTTP API are created (by [`INDEXES`]).
const UPGRADE_FROM_2: &str = "
CREATE TABLE alerts_v3 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    UNIQUE (device_id, seq)
);
INSERT INTO alerts_v3 (device_id, seq, boot_id, time_ms, received_ms, kind, severity, rule,
        path, details, count, first_ms, last_ms, process, format)
    SELECT device_id, seq, boot_id, time_ms, received_ms, kind, severity, rule, path, details,
        count, first_ms, last_ms, process, format
    FROM alerts ORDER BY received_ms, device_id, seq;
DROP TABLE alerts;
ALTER TABLE alerts_v3 RENAME TO alerts;
PRAGMA user_version = 3;
";

/// Indexes and tables added after the first schema: created when a database is opened (a
/// no-op once they exist; the first open of a large store built without the indexes takes a
/// while). `limited`: ranges of alert sequence numbers not stored, over the device's rate
/// limit. The alert indexes end with the rowid (`id`): the order of the alert queries.
/// `users`, `sessions` and `api_tokens` (SHA-256 of the session cookies and tokens, never
/// the secrets), `triage` (one row per alert triaged) and `audit` serve the HTTP API.
const INDEXES: &str = "
CREATE TABLE IF NOT EXISTS limited (
    device_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, first_seq)
);
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received_ms);
CREATE INDEX IF NOT EXISTS alerts_device_received ON alerts (device_id, received_ms);
CREATE INDEX IF NOT EXISTS alerts_kind_received ON alerts (kind, received_ms);
CREATE INDEX IF NOT EXISTS alerts_severity_received ON alerts (severity, received_ms);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_name);
CREATE TABLE IF NOT EXISTS api_tokens (
    sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS triage (
    alert_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    note TEXT NOT NULL,
    by_user TEXT NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    user_name TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    alert_id INTEGER
);
";

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
                    "BEGIN IMMEDIATE; {SCHEMA} {INDEXES} {} {FORWARD_TABLES} {} {} {} \
                     PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
                    sql::COUNT_TABLES,
                    presence::TABLES,
                    sql::INDEXES_5,
                    pushes::TABLES,
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
            1..=5 => {
                upgrade(&conn, version).context("upgrading the schema")?;
                conn.execute_batch(INDEXES)
                    .context("creating the indexes")?;
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
}

/// Upgrades a database of version 1 to 5 in one transaction, unless another process did it
/// first (checked again once the write lock is held).
fn upgrade(conn: &Connection, from: i64) -> anyhow::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = (|| -> anyhow::Result<()> {
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 1 {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS limited (device_id TEXT NOT NULL,
                     first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                     PRIMARY KEY (device_id, first_seq));",
            )?;
            conn.execute_batch(UPGRADE_FROM_1)
                .context("from version 1")?;
        }
        if version == 1 || version == 2 {
            conn.execute_batch(UPGRADE_FROM_2)
                .with_context(|| format!("from version {from}"))?;
        }
        if (1..=3).contains(&version) {
            conn.execute_batch(&format!(
                "{} {} PRAGMA user_version = 4;",
                sql::COUNT_TABLES,
                sql::FILL_COUNTS
            ))
            .with_context(|| format!("counting the alerts of version {from}"))?;
        }
        if (1..=4).contains(&version) {
            conn.execute_batch(&format!(
                "{FORWARD_TABLES} {} {} {} PRAGMA user_version = 5;",
                presence::TABLES,
                presence::FILL,
                sql::INDEXES_5
            ))
            .with_context(|| {
                format!(
                    "adding the integrations' cursors and the presence tables to version {from}"
                )
            })?;
        }
        if (1..=5).contains(&version) {
            conn.execute_batch(&format!(
                "{} {} PRAGMA user_version = 6;",
                pushes::TABLES,
                pushes::FILL
            ))
            .with_context(|| format!("adding the policy pushes to version {from}"))?;
        }
        Ok(conn.execute_batch("COMMIT")?)
    })();
    if upgraded.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    upgraded
}

/// A connection running the statements of [`sql`].
struct Sqlite<'a>(&'a Connection);

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Arg::Text(t) => t.to_sql(),
            Arg::Int(i) => i.to_sql(),
        }
    }
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> anyhow::Result<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> anyhow::Result<Option<String>> {
        Ok(self.get(i)?)
    }
}

impl Db for Sqlite<'_> {
    fn execute(&mut self, sql: &str, args: &[Arg]) -> anyhow::Result<u64> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(args))? as u64)
    }

    fn query(
        &mut self,
        sql: &str,
        args: &[Arg],
        row: &mut dyn FnMut(&dyn Columns) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            row(r)?;
        }
        Ok(())
    }
}

impl Database for SqliteStore {
    /// Runs `f` in a savepoint (which nests in [`Store::in_transaction`]'s transaction),
    /// released when it succeeds.
    fn atomic<T>(&mut self, f: impl FnOnce(&mut dyn Db) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let tx = self.conn.savepoint()?;
        let value = f(&mut Sqlite(&tx))?;
        tx.commit()?;
        Ok(value)
    }

    fn read<T>(&mut self, f: impl FnOnce(&mut dyn Db) -> anyhow::Result<T>) -> anyhow::Result<T> {
        f(&mut Sqlite(&self.conn))
    }

    fn batch(
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
    fn abandon(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}
