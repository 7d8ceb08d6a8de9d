//! The PostgreSQL store: the same tables and answers as the SQLite one, for a store shared by
//! several backend instances. The connection uses TLS, verifying the server's certificate, when
//! `store.postgres_ca` is set ([`PgStore::connect_with`]); otherwise none (a Unix socket or a
//! trusted network).
//! Its statements are those of [`super::sql`], with PostgreSQL's placeholders.

use anyhow::Context;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row};

use super::forward::FORWARD_TABLES;
use super::presence;
use super::pushes;
use super::sql::{self, dollar, Arg, Columns, Database, Db};
use super::Store;

/// 2 added the devices' `stored_alerts` and `quota_removed` ([`UPGRADE_FROM_1`]); 3 the
/// alerts' `id` and the tables of the HTTP API ([`UPGRADE_FROM_2`], [`TABLES_3`]); 4 the counts
/// of the overview ([`sql::COUNT_TABLES`], filled from the alerts stored); 5 the delivery state
/// of the integrations ([`FORWARD_TABLES`]) and the devices' presence and its changes
/// ([`presence::TABLES`]); 6 the bundles pushed to each device ([`pushes::TABLES`], filled from
/// the policy results stored).
pub(super) const SCHEMA_VERSION: i64 = 6;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS picket_schema (version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    status TEXT,
    status_ms BIGINT,
    agent_version TEXT,
    policy_serial BIGINT,
    policy_name TEXT,
    boot_id TEXT,
    heartbeat_ms BIGINT,
    uptime_s BIGINT,
    counters TEXT,
    stored_alerts BIGINT NOT NULL DEFAULT 0,
    quota_removed BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS alerts (
    id BIGSERIAL NOT NULL,
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    boot_id TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    rule TEXT NOT NULL,
    path TEXT,
    details TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    process TEXT,
    format TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE IF NOT EXISTS refused (
    reason TEXT NOT NULL,
    device_id TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    last_topic TEXT NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (reason, device_id)
);
CREATE TABLE IF NOT EXISTS limited (
    device_id TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    PRIMARY KEY (device_id, first_seq)
);
CREATE TABLE IF NOT EXISTS policy_results (
    device_id TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    name TEXT,
    serial BIGINT,
    reason TEXT,
    PRIMARY KEY (device_id, bundle_sha256, time_ms)
);
";

/// From version 1: the per-device counts of the quota, from the alerts already stored.
const UPGRADE_FROM_1: &str = "
ALTER TABLE devices ADD COLUMN IF NOT EXISTS stored_alerts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS quota_removed BIGINT NOT NULL DEFAULT 0;
UPDATE devices SET stored_alerts =
    (SELECT count(*) FROM alerts a WHERE a.device_id = devices.device_id);
UPDATE picket_schema SET version = 2;
";

/// From version 2: the alerts get an `id` from a sequence, the existing ones numbered in the
/// order they were received; the indexes are rebuilt to end with it (by [`TABLES_3`]).
const UPGRADE_FROM_2: &str = "
ALTER TABLE alerts ADD COLUMN id BIGINT;
UPDATE alerts SET id = n.rn FROM (
    SELECT device_id, seq, row_number() OVER (ORDER BY received_ms, device_id, seq) AS rn
    FROM alerts) AS n
WHERE alerts.device_id = n.device_id AND alerts.seq = n.seq;
CREATE SEQUENCE alerts_id_seq OWNED BY alerts.id;
SELECT setval('alerts_id_seq', (SELECT COALESCE(max(id), 0) + 1 FROM alerts), false);
ALTER TABLE alerts ALTER COLUMN id SET DEFAULT nextval('alerts_id_seq'),
    ALTER COLUMN id SET NOT NULL;
DROP INDEX IF EXISTS alerts_received;
DROP INDEX IF EXISTS alerts_device_received;
DROP INDEX IF EXISTS alerts_kind_received;
UPDATE picket_schema SET version = 3;
";

/// What version 3 adds, created once the alerts have their `id`: the alert indexes (ending
/// with it, the alert queries' order) and the tables of the HTTP API.
const TABLES_3: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS alerts_id ON alerts (id);
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received_ms, id);
CREATE INDEX IF NOT EXISTS alerts_device_received ON alerts (device_id, received_ms, id);
CREATE INDEX IF NOT EXISTS alerts_kind_received ON alerts (kind, received_ms, id);
CREATE INDEX IF NOT EXISTS alerts_severity_received ON alerts (severity, received_ms, id);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_name);
CREATE TABLE IF NOT EXISTS api_tokens (
    sha256 TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS triage (
    alert_id BIGINT PRIMARY KEY,
    state TEXT NOT NULL,
    note TEXT NOT NULL,
    by_user TEXT NOT NULL,
    time_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    user_name TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    alert_id BIGINT
);
";

/// A store in PostgreSQL.
pub struct PgStore {
    /// Always `Some` but in `drop`.
    client: Option<Client>,
    /// In [`Store::in_transaction`]: the writes run in its transaction, not in their own.
    in_batch: bool,
    /// How to connect again when the connection is lost (a restarted server).
    params: String,
    tls: Option<rustls::ClientConfig>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a connection blocks on the client's own runtime, which tokio forbids on a
        // thread that drives async tasks: there, close it from a thread of its own.
        if let Some(client) = self.client.take() {
            close(client);
        }
    }
}

/// Closes `client`: from a thread of its own on a thread that drives async tasks, where
/// closing it blocks on its runtime, which tokio forbids.
fn close(client: Client) {
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::spawn(move || drop(client)).join();
    } else {
        drop(client);
    }
}

impl PgStore {
    /// Connects (`params` is a libpq-style connection string: `host=/run/postgresql
    /// dbname=picket user=picket`) and creates the tables if needed.
    pub fn connect(params: &str) -> anyhow::Result<Self> {
        Self::connect_with(params, None)
    }

    /// As [`PgStore::connect`], over TLS when `tls` is given: TLS is then required, whatever
    /// `sslmode` says, and the server's certificate must chain to the configuration's roots and
    /// name the host connected to (libpq's `sslmode=verify-full`). A host that is a Unix socket
    /// is refused: TLS is for TCP.
    pub fn connect_with(params: &str, tls: Option<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let client = open(params, tls.clone())?;
        let mut store = PgStore {
            client: Some(client),
            in_batch: false,
            params: params.to_string(),
            tls,
        };
        create_schema(store.client())?;
        Ok(store)
    }

    /// The connection, connected again first if it was lost (the server restarted, or it
    /// ended the session): a write that failed with it was rolled back, and its caller tries
    /// again (the ingest: the broker delivers the batch again).
    fn live(&mut self) -> anyhow::Result<&mut Client> {
        if self.client().is_closed() {
            log::warn!("the connection to PostgreSQL was lost; connecting again");
            let client = open(&self.params, self.tls.clone())?;
            if let Some(old) = self.client.replace(client) {
                close(old);
            }
            log::info!("connected to PostgreSQL again");
        }
        Ok(self.client())
    }
}

/// A connection to `params`, over TLS when `tls` is given (see [`PgStore::connect_with`]).
fn open(params: &str, tls: Option<rustls::ClientConfig>) -> anyhow::Result<Client> {
    Ok(match tls {
        None => Client::connect(params, NoTls).context("connecting to PostgreSQL")?,
        Some(tls) => {
            let mut config: postgres::Config = params
                .parse()
                .context("store.postgres is not a valid connection string")?;
            if let Some(socket) = config.get_hosts().iter().find_map(|h| match h {
                postgres::config::Host::Unix(path) => Some(path.clone()),
                _ => None,
            }) {
                anyhow::bail!(
                    "store.postgres names the Unix socket {}, and store.postgres_ca asks for \
                         TLS, which PostgreSQL uses over TCP only: name a host (host=NAME)",
                    socket.display()
                );
            }
            config.ssl_mode(postgres::config::SslMode::Require);
            config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .context("connecting to PostgreSQL over TLS")?
        }
    })
}

/// Creates the tables (or brings them up to date), one backend at a time.
fn create_schema(client: &mut Client) -> anyhow::Result<()> {
    let mut tx = client.transaction()?;
    // One backend at a time creates the schema.
    tx.execute("SELECT pg_advisory_xact_lock(7426163)", &[])?;
    tx.batch_execute(SCHEMA).context("creating the schema")?;
    let version: Option<i64> = tx
        .query_opt("SELECT max(version) FROM picket_schema", &[])?
        .map(|r| r.try_get(0))
        .transpose()?
        .flatten();
    match version {
        None => {
            tx.execute(
                "INSERT INTO picket_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )?;
        }
        Some(1) => {
            tx.batch_execute(UPGRADE_FROM_1)
                .context("upgrading the schema from version 1")?;
            tx.batch_execute(UPGRADE_FROM_2)
                .context("upgrading the schema from version 2")?;
        }
        Some(2) => tx
            .batch_execute(UPGRADE_FROM_2)
            .context("upgrading the schema from version 2")?,
        Some(3..=SCHEMA_VERSION) => {}
        Some(other) => {
            anyhow::bail!("schema version {other} is newer than this backend's ({SCHEMA_VERSION})")
        }
    }
    tx.batch_execute(TABLES_3)
        .context("creating the indexes and tables")?;
    tx.batch_execute(sql::COUNT_TABLES)
        .context("creating the counts")?;
    if matches!(version, Some(1..=3)) {
        tx.batch_execute(sql::FILL_COUNTS)
            .context("counting the stored alerts")?;
    }
    tx.batch_execute(FORWARD_TABLES)
        .context("creating the integrations' cursors")?;
    tx.batch_execute(presence::TABLES)
        .context("creating the presence tables")?;
    tx.batch_execute(sql::INDEXES_5)
        .context("creating the indexes of version 5")?;
    if matches!(version, Some(1..=4)) {
        tx.batch_execute(presence::FILL)
            .context("recording the devices' presence")?;
    }
    tx.batch_execute(pushes::TABLES)
        .context("creating the policy pushes")?;
    if matches!(version, Some(1..=5)) {
        tx.batch_execute(&format!(
            "{} UPDATE picket_schema SET version = {SCHEMA_VERSION};",
            pushes::FILL
        ))
        .context("recording the bundles of the policy results stored")?;
    }
    tx.commit()?;
    Ok(())
}

impl PgStore {
    pub(super) fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("the client is only taken when dropped")
    }
}

/// A client or transaction running the statements of [`sql`].
struct Pg<'a, C>(&'a mut C);

fn bind<'a>(args: &'a [Arg]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter()
        .map(|a| -> &(dyn ToSql + Sync) {
            match a {
                Arg::Text(t) => t,
                Arg::Int(i) => i,
            }
        })
        .collect()
}

impl Columns for Row {
    // `try_get`: a column of another type is an error, not a panic.
    fn int(&self, i: usize) -> anyhow::Result<Option<i64>> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> anyhow::Result<Option<String>> {
        Ok(self.try_get(i)?)
    }
}

impl<C: GenericClient> Db for Pg<'_, C> {
    fn execute(&mut self, sql: &str, args: &[Arg]) -> anyhow::Result<u64> {
        Ok(self.0.execute(&dollar(sql), &bind(args))?)
    }

    fn query(
        &mut self,
        sql: &str,
        args: &[Arg],
        row: &mut dyn FnMut(&dyn Columns) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for r in self.0.query(&dollar(sql), &bind(args))? {
            row(&r)?;
        }
        Ok(())
    }
}

impl Database for PgStore {
    /// Runs `f` in a transaction: the open one of [`Store::in_transaction`], or one of its
    /// own, committed when `f` succeeds.
    fn atomic<T>(&mut self, f: impl FnOnce(&mut dyn Db) -> anyhow::Result<T>) -> anyhow::Result<T> {
        if self.in_batch {
            return f(&mut Pg(self.client()));
        }
        let mut tx = self.live()?.transaction()?;
        let value = f(&mut Pg(&mut tx))?;
        tx.commit()?;
        Ok(value)
    }

    fn read<T>(&mut self, f: impl FnOnce(&mut dyn Db) -> anyhow::Result<T>) -> anyhow::Result<T> {
        f(&mut Pg(self.live()?))
    }

    fn batch(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Store) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(!self.in_batch, "transactions do not nest");
        self.live()?.batch_execute("BEGIN")?;
        self.in_batch = true;
        let result = f(self);
        self.in_batch = false;
        match result {
            // A transaction in which a statement failed is rolled back by COMMIT without an
            // error: `f` passes every error on, so that this does not happen unnoticed.
            Ok(()) => Ok(self.client().batch_execute("COMMIT")?),
            Err(e) => {
                let _ = self.client().batch_execute("ROLLBACK");
                Err(e)
            }
        }
    }
    fn abandon(&mut self) {
        if std::mem::take(&mut self.in_batch) {
            let _ = self.client().batch_execute("ROLLBACK");
        }
    }
}
