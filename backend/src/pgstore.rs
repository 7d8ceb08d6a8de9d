//! The PostgreSQL store: the same tables and answers as the SQLite one, for a store shared by
//! several backend instances. Connection without TLS (a Unix socket or a trusted network).

use std::time::Duration;

use anyhow::Context;
use picket_proto::{Alert, Heartbeat, PolicyOutcome, PolicyResult, Presence, Status};
use postgres::{Client, NoTls, Row};
use serde_json::Value;

use crate::store::{
    alerts_query, restart_gap, AlertFilter, AlertRow, DeviceRow, Gap, PolicyResultRow, QueryArg,
    RefusedRow, Store,
};

const SCHEMA_VERSION: i64 = 1;

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
    counters TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
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
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received_ms);
CREATE INDEX IF NOT EXISTS alerts_device_received ON alerts (device_id, received_ms);
CREATE INDEX IF NOT EXISTS alerts_kind_received ON alerts (kind, received_ms);
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

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn opt_uint(v: Option<i64>) -> Option<u64> {
    v.map(uint)
}

pub struct PgStore {
    /// Always `Some` but in `drop`.
    client: Option<Client>,
    /// In [`Store::in_transaction`]: the writes run in its transaction, not in their own.
    in_batch: bool,
}

/// Runs `$body` (an `anyhow::Result`) with `$c` bound to a client in a transaction: the open
/// one of [`Store::in_transaction`], or one of its own, committed when `$body` succeeds.
macro_rules! write {
    ($self:ident, |$c:ident| $body:expr) => {{
        if $self.in_batch {
            let $c = $self.client();
            $body
        } else {
            let mut tx = $self.client().transaction()?;
            let result: anyhow::Result<_> = {
                let $c = &mut tx;
                $body
            };
            let result = result?;
            tx.commit()?;
            Ok(result)
        }
    }};
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a connection blocks on the client's own runtime, which tokio forbids on a
        // thread that drives async tasks: there, close it from a thread of its own.
        if let Some(client) = self.client.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::spawn(move || drop(client)).join();
            }
        }
    }
}

impl PgStore {
    /// Connects (`params` is a libpq-style connection string: `host=/run/postgresql
    /// dbname=picket user=picket`) and creates the tables if needed.
    pub fn connect(params: &str) -> anyhow::Result<Self> {
        let mut client = Client::connect(params, NoTls).context("connecting to PostgreSQL")?;
        let mut tx = client.transaction()?;
        // One backend at a time creates the schema.
        tx.execute("SELECT pg_advisory_xact_lock(7426163)", &[])?;
        tx.batch_execute(SCHEMA).context("creating the schema")?;
        let version: Option<i64> = tx
            .query_opt("SELECT max(version) FROM picket_schema", &[])?
            .and_then(|r| r.get(0));
        match version {
            None => {
                tx.execute(
                    "INSERT INTO picket_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => anyhow::bail!(
                "schema version {other} is newer than this backend's ({SCHEMA_VERSION})"
            ),
        }
        tx.commit()?;
        Ok(PgStore {
            client: Some(client),
            in_batch: false,
        })
    }
}

fn touch_device(
    tx: &mut impl postgres::GenericClient,
    device_id: &str,
    received_ms: u64,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO devices (device_id, first_seen_ms, last_seen_ms) VALUES ($1, $2, $2)
         ON CONFLICT (device_id) DO UPDATE
             SET last_seen_ms = GREATEST(devices.last_seen_ms, EXCLUDED.last_seen_ms)",
        &[&device_id, &int(received_ms)],
    )?;
    Ok(())
}

fn alert_row(r: &Row) -> AlertRow {
    let details: String = r.get(9);
    let process: Option<String> = r.get(13);
    AlertRow {
        device_id: r.get(0),
        seq: uint(r.get(1)),
        boot_id: r.get(2),
        time_ms: uint(r.get(3)),
        received_ms: uint(r.get(4)),
        kind: r.get(5),
        severity: r.get(6),
        rule: r.get(7),
        path: r.get(8),
        details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
        count: uint(r.get(10)),
        first_ms: uint(r.get(11)),
        last_ms: uint(r.get(12)),
        process: process.map(|p| serde_json::from_str(&p).unwrap_or(Value::String(p))),
        format: r.get(14),
    }
}

impl PgStore {
    fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("the client is only taken when dropped")
    }
}

impl Store for PgStore {
    fn insert_alert(
        &mut self,
        device_id: &str,
        alert: &Alert,
        format: &str,
        received_ms: u64,
    ) -> anyhow::Result<bool> {
        let process = alert
            .process
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        write!(self, |tx| {
            let inserted = tx.execute(
                "INSERT INTO alerts (device_id, seq, boot_id, time_ms, received_ms, kind, severity,
                 rule, path, details, count, first_ms, last_ms, process, format)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (device_id, seq) DO NOTHING",
                &[
                    &device_id,
                    &int(alert.seq),
                    &alert.boot_id,
                    &int(alert.time_ms),
                    &int(received_ms),
                    &alert.kind.name(),
                    &alert.severity.name(),
                    &alert.rule,
                    &alert.path,
                    &alert.details.0.to_string(),
                    &int(alert.count),
                    &int(alert.first_ms),
                    &int(alert.last_ms),
                    &process,
                    &format,
                ],
            )? == 1;
            touch_device(tx, device_id, received_ms)?;
            Ok(inserted)
        })
    }

    fn record_heartbeat(
        &mut self,
        device_id: &str,
        hb: &Heartbeat,
        received_ms: u64,
    ) -> anyhow::Result<()> {
        let counters = crate::store::heartbeat_counters(hb).to_string();
        write!(self, |tx| {
            touch_device(tx, device_id, received_ms)?;
            tx.execute(
                "UPDATE devices SET heartbeat_ms = $2, uptime_s = $3, agent_version = $4,
                 policy_serial = $5, counters = $6
             WHERE device_id = $1 AND (heartbeat_ms IS NULL OR heartbeat_ms <= $2)",
                &[
                    &device_id,
                    &int(received_ms),
                    &int(hb.uptime_s),
                    &hb.agent_version,
                    &int(hb.policy_serial),
                    &counters,
                ],
            )?;
            Ok(())
        })
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
        write!(self, |tx| {
            touch_device(tx, device_id, received_ms)?;
            tx.execute(
                "UPDATE devices SET status = $2, status_ms = $3, agent_version = $4,
                 policy_serial = $5, policy_name = $6, boot_id = $7
             WHERE device_id = $1",
                &[
                    &device_id,
                    &state,
                    &int(received_ms),
                    &status.agent_version,
                    &int(status.policy_serial),
                    &status.policy_name,
                    &status.boot_id,
                ],
            )?;
            Ok(())
        })
    }

    fn insert_policy_result(
        &mut self,
        device_id: &str,
        result: &PolicyResult,
        received_ms: u64,
    ) -> anyhow::Result<bool> {
        let (outcome, name, serial, reason) = match &result.outcome {
            PolicyOutcome::Applied { name, serial } => {
                ("applied", Some(name.as_str()), Some(int(*serial)), None)
            }
            PolicyOutcome::Unchanged { serial } => ("unchanged", None, Some(int(*serial)), None),
            PolicyOutcome::Refused { reason } => ("refused", None, None, Some(reason.as_str())),
        };
        write!(self, |tx| {
            let inserted = tx.execute(
                "INSERT INTO policy_results (device_id, bundle_sha256, time_ms, received_ms,
                 outcome, name, serial, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (device_id, bundle_sha256, time_ms) DO NOTHING",
                &[
                    &device_id,
                    &result.bundle_sha256,
                    &int(result.time_ms),
                    &int(received_ms),
                    &outcome,
                    &name,
                    &serial,
                    &reason,
                ],
            )? == 1;
            touch_device(tx, device_id, received_ms)?;
            if let PolicyOutcome::Applied { name, serial } = &result.outcome {
                tx.execute(
                    "UPDATE devices SET policy_serial = $2, policy_name = $3 WHERE device_id = $1",
                    &[&device_id, &int(*serial), name],
                )?;
            }
            Ok(inserted)
        })
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
        self.client().execute(
            "INSERT INTO refused (reason, device_id, count, first_ms, last_ms, last_topic, last_error)
             VALUES ($1, $2, 1, $3, $3, $4, $5)
             ON CONFLICT (reason, device_id) DO UPDATE SET count = refused.count + 1,
                 last_ms = EXCLUDED.last_ms, last_topic = EXCLUDED.last_topic,
                 last_error = EXCLUDED.last_error",
            &[&reason, &device_id.unwrap_or(""), &int(received_ms), &topic, &error],
        )?;
        Ok(())
    }

    fn delete_before(&mut self, before_ms: u64) -> anyhow::Result<u64> {
        write!(self, |tx| {
            let alerts = tx.execute(
                "DELETE FROM alerts WHERE received_ms < $1",
                &[&int(before_ms)],
            )?;
            tx.execute(
                "DELETE FROM policy_results WHERE received_ms < $1",
                &[&int(before_ms)],
            )?;
            Ok(alerts)
        })
    }

    fn in_transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Store) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(!self.in_batch, "transactions do not nest");
        self.client().batch_execute("BEGIN")?;
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

    fn devices(
        &mut self,
        now_ms: u64,
        heartbeat_timeout: Duration,
    ) -> anyhow::Result<Vec<DeviceRow>> {
        let rows = self.client().query(
            "SELECT d.device_id, d.first_seen_ms, d.last_seen_ms, d.status, d.status_ms,
                    d.agent_version, d.policy_serial, d.policy_name, d.boot_id, d.heartbeat_ms,
                    d.uptime_s, d.counters,
                    (SELECT count(*) FROM alerts a WHERE a.device_id = d.device_id)
             FROM devices d ORDER BY d.device_id",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let last_seen_ms = uint(r.get(2));
                let status: Option<String> = r.get(3);
                let counters: Option<String> = r.get(11);
                let state = crate::store::presence(
                    status.as_deref(),
                    last_seen_ms,
                    now_ms,
                    heartbeat_timeout,
                );
                DeviceRow {
                    device_id: r.get(0),
                    state,
                    online: state == "online",
                    first_seen_ms: uint(r.get(1)),
                    last_seen_ms,
                    status_ms: opt_uint(r.get(4)),
                    agent_version: r.get(5),
                    policy_serial: opt_uint(r.get(6)),
                    policy_name: r.get(7),
                    boot_id: r.get(8),
                    heartbeat_ms: opt_uint(r.get(9)),
                    uptime_s: opt_uint(r.get(10)),
                    counters: counters.and_then(|c| serde_json::from_str(&c).ok()),
                    alerts: uint(r.get(12)),
                }
            })
            .collect())
    }

    fn alerts(&mut self, filter: &AlertFilter) -> anyhow::Result<Vec<AlertRow>> {
        let (sql, args) = alerts_query(filter, |n| format!("${n}"));
        let args: Vec<Box<dyn postgres::types::ToSql + Sync>> = args
            .into_iter()
            .map(|a| -> Box<dyn postgres::types::ToSql + Sync> {
                match a {
                    QueryArg::Text(t) => Box::new(t),
                    QueryArg::Int(i) => Box::new(i),
                }
            })
            .collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a.as_ref()).collect();
        let rows = self.client().query(&sql, &refs)?;
        Ok(rows.iter().map(alert_row).collect())
    }

    fn gaps(&mut self, device: Option<&str>) -> anyhow::Result<Vec<Gap>> {
        let rows = self.client().query(
            "SELECT device_id, seq + 1, next - 1 FROM (
                 SELECT device_id, seq,
                        lead(seq) OVER (PARTITION BY device_id ORDER BY seq) AS next
                 FROM alerts WHERE $1::TEXT IS NULL OR device_id = $1) AS s
             WHERE next > seq + 1 ORDER BY device_id, seq",
            &[&device],
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let first = uint(r.get(1));
                let last = uint(r.get(2));
                Gap {
                    device_id: r.get(0),
                    first_missing: first,
                    last_missing: last,
                    missing: last - first + 1,
                    restart: restart_gap(first, last),
                }
            })
            .collect())
    }

    fn refused(&mut self) -> anyhow::Result<Vec<RefusedRow>> {
        let rows = self.client().query(
            "SELECT reason, device_id, count, first_ms, last_ms, last_topic, last_error
             FROM refused ORDER BY reason, device_id",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| RefusedRow {
                reason: r.get(0),
                device_id: r.get(1),
                count: uint(r.get(2)),
                first_ms: uint(r.get(3)),
                last_ms: uint(r.get(4)),
                last_topic: r.get(5),
                last_error: r.get(6),
            })
            .collect())
    }

    fn policy_results(&mut self, device: Option<&str>) -> anyhow::Result<Vec<PolicyResultRow>> {
        let rows = self.client().query(
            "SELECT device_id, bundle_sha256, time_ms, received_ms, outcome, name, serial, reason
             FROM policy_results WHERE $1::TEXT IS NULL OR device_id = $1
             ORDER BY received_ms DESC, device_id",
            &[&device],
        )?;
        Ok(rows
            .iter()
            .map(|r| PolicyResultRow {
                device_id: r.get(0),
                bundle_sha256: r.get(1),
                time_ms: uint(r.get(2)),
                received_ms: uint(r.get(3)),
                outcome: r.get(4),
                name: r.get(5),
                serial: opt_uint(r.get(6)),
                reason: r.get(7),
            })
            .collect())
    }
}
