//! The statements of both stores: one SQL text each, written with SQLite's numbered
//! placeholders (`?1`) and rewritten to PostgreSQL's (`$1`) by [`dollar`]; their arguments
//! ([`Arg`]) and the mapping of their rows ([`Columns`]), shared too. `sqlite.rs` and
//! `postgres.rs` only run them ([`Db`]) and keep their schemas.

use anyhow::Context;
use picket_proto::{Alert, Heartbeat, PolicyOutcome, PolicyResult, Status};
use serde_json::Value;

use super::{
    device_state, heartbeat_counters, restart_gap, AlertFilter, AlertRow, DeviceRow, Gap,
    PolicyResultRow, RefusedRow, StoredAlert, Triage, MAX_LIMITED_RANGES,
    MAX_POLICY_RESULTS_PER_DEVICE,
};

/// What each store says of itself: how a write is made atomic, how a read reaches the
/// connection, how a batch becomes one transaction. [`super::Store`] is implemented once, on
/// these, for both.
pub(crate) trait Database: Send {
    /// Runs `f` so that its writes are kept whole or not at all.
    fn atomic<T>(&mut self, f: impl FnOnce(&mut dyn Db) -> anyhow::Result<T>) -> anyhow::Result<T>;
    /// Runs the queries of `f`.
    fn read<T>(&mut self, f: impl FnOnce(&mut dyn Db) -> anyhow::Result<T>) -> anyhow::Result<T>;
    /// [`super::Store::in_transaction`].
    fn batch(
        &mut self,
        f: &mut dyn FnMut(&mut dyn super::Store) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// [`super::Store::abandon`].
    fn abandon(&mut self);
}

/// A value bound to a statement: text or a 64-bit integer, either possibly NULL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
}

/// A column value read from a row, whatever the database.
pub(crate) trait Columns {
    fn int(&self, i: usize) -> anyhow::Result<Option<i64>>;
    fn text(&self, i: usize) -> anyhow::Result<Option<String>>;
}

/// A connection (or transaction) of either database that runs the statements of this module.
pub(crate) trait Db {
    /// Runs a statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Arg]) -> anyhow::Result<u64>;
    /// Runs a query; calls `row` with each row.
    fn query(
        &mut self,
        sql: &str,
        args: &[Arg],
        row: &mut dyn FnMut(&dyn Columns) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
}

/// A statement of this module with PostgreSQL's placeholders (`$1` for `?1`).
pub(crate) fn dollar(sql: &str) -> String {
    sql.replace('?', "$")
}

/// Stores are signed: values above `i64::MAX` (never produced by a sane device, but possible on
/// the wire) are clamped rather than wrapped.
pub(crate) fn int(v: u64) -> Arg<'static> {
    Arg::Int(Some(i64::try_from(v).unwrap_or(i64::MAX)))
}

pub(super) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn text(v: &str) -> Arg<'_> {
    Arg::Text(Some(v))
}

/// A column that must not be NULL.
pub(super) fn some<T>(v: Option<T>, i: usize) -> anyhow::Result<T> {
    v.with_context(|| format!("column {i} is NULL"))
}

pub(super) fn get_uint(r: &dyn Columns, i: usize) -> anyhow::Result<u64> {
    Ok(uint(some(r.int(i)?, i)?))
}

pub(super) fn get_opt_uint(r: &dyn Columns, i: usize) -> anyhow::Result<Option<u64>> {
    Ok(r.int(i)?.map(uint))
}

pub(super) fn get_text(r: &dyn Columns, i: usize) -> anyhow::Result<String> {
    some(r.text(i)?, i)
}

/// JSON stored as text: the value, or the text itself if it is not JSON.
pub(super) fn json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The rows of a query, each mapped by `map`.
pub(super) fn rows<T>(
    db: &mut dyn Db,
    sql: &str,
    args: &[Arg],
    map: impl Fn(&dyn Columns) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    db.query(sql, args, &mut |r| {
        out.push(map(r)?);
        Ok(())
    })?;
    Ok(out)
}

const TOUCH_DEVICE: &str =
    "INSERT INTO devices (device_id, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?2)
     ON CONFLICT (device_id) DO UPDATE SET last_seen_ms = CASE
         WHEN devices.last_seen_ms > excluded.last_seen_ms THEN devices.last_seen_ms
         ELSE excluded.last_seen_ms END";

const INSERT_ALERT: &str =
    "INSERT INTO alerts (device_id, seq, boot_id, time_ms, received_ms, kind,
         severity, rule, path, details, count, first_ms, last_ms, process, format)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
     ON CONFLICT (device_id, seq) DO NOTHING";

const RECORD_HEARTBEAT: &str =
    "UPDATE devices SET heartbeat_ms = ?2, uptime_s = ?3, agent_version = ?4,
         policy_serial = ?5, counters = ?6
     WHERE device_id = ?1 AND (heartbeat_ms IS NULL OR heartbeat_ms <= ?2)";

const RECORD_STATUS: &str = "UPDATE devices SET status = ?2, status_ms = ?3, agent_version = ?4,
         policy_serial = ?5, policy_name = ?6, boot_id = ?7
     WHERE device_id = ?1";

/// A last will's: made at the agent's start, its policy may be older than the one in force.
const RECORD_WILL: &str = "UPDATE devices SET status = ?2, status_ms = ?3, agent_version = ?4,
         boot_id = ?5
     WHERE device_id = ?1";

const INSERT_POLICY_RESULT: &str =
    "INSERT INTO policy_results (device_id, bundle_sha256, time_ms, received_ms, outcome, name,
         serial, reason)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (device_id, bundle_sha256, time_ms) DO NOTHING";

const POLICY_RESULTS_OF: &str = "SELECT count(*) FROM policy_results WHERE device_id = ?1";

/// The device's `?2` oldest policy results (by time received, then device time).
const DELETE_OLDEST_POLICY_RESULTS: &str =
    "DELETE FROM policy_results WHERE device_id = ?1 AND (bundle_sha256, time_ms) IN (
         SELECT bundle_sha256, time_ms FROM policy_results WHERE device_id = ?1
         ORDER BY received_ms, time_ms, bundle_sha256 LIMIT ?2)";

const SET_POLICY: &str =
    "UPDATE devices SET policy_serial = ?2, policy_name = ?3 WHERE device_id = ?1";

const COUNT_REFUSED: &str =
    "INSERT INTO refused (reason, device_id, count, first_ms, last_ms, last_topic, last_error)
     VALUES (?1, ?2, 1, ?3, ?3, ?4, ?5)
     ON CONFLICT (reason, device_id) DO UPDATE SET count = refused.count + 1,
         last_ms = excluded.last_ms, last_topic = excluded.last_topic,
         last_error = excluded.last_error";

const ALERT_STORED: &str = "SELECT count(*) FROM alerts WHERE device_id = ?1 AND seq = ?2";

const COUNT_STORED: &str =
    "UPDATE devices SET stored_alerts = stored_alerts + 1 WHERE device_id = ?1";

const STORED: &str = "SELECT stored_alerts FROM devices WHERE device_id = ?1";

/// The counts the overview reads, kept as alerts are stored and removed (as
/// `devices.stored_alerts` is), so that it reads a few rows instead of every alert: per device
/// and severity, and per hour received (its start), device, severity and kind. Created with
/// the schema; a store of an older version gets them filled from its alerts by [`FILL_COUNTS`].
pub(crate) const COUNT_TABLES: &str = "
CREATE TABLE IF NOT EXISTS alert_totals (
    device_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    alerts BIGINT NOT NULL,
    PRIMARY KEY (device_id, severity)
);
CREATE TABLE IF NOT EXISTS alert_hours (
    hour_ms BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    severity TEXT NOT NULL,
    kind TEXT NOT NULL,
    alerts BIGINT NOT NULL,
    PRIMARY KEY (hour_ms, device_id, severity, kind)
);
";

/// The counts of [`COUNT_TABLES`] from the alerts stored.
pub(crate) const FILL_COUNTS: &str = "
DELETE FROM alert_totals;
DELETE FROM alert_hours;
INSERT INTO alert_totals (device_id, severity, alerts)
    SELECT device_id, severity, count(*) FROM alerts GROUP BY device_id, severity;
INSERT INTO alert_hours (hour_ms, device_id, severity, kind, alerts)
    SELECT received_ms - received_ms % 3600000, device_id, severity, kind, count(*)
    FROM alerts GROUP BY received_ms - received_ms % 3600000, device_id, severity, kind;
";

/// Adds ?3 (negative: removes) to the count of device ?1's alerts of severity ?2.
const ADD_TOTAL: &str = "INSERT INTO alert_totals (device_id, severity, alerts) VALUES (?1, ?2, ?3)
     ON CONFLICT (device_id, severity) DO UPDATE SET alerts = alert_totals.alerts + excluded.alerts";

/// Adds ?5 to the count of device ?2's alerts of severity ?3 and kind ?4 received in hour ?1.
const ADD_HOUR: &str = "INSERT INTO alert_hours (hour_ms, device_id, severity, kind, alerts)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (hour_ms, device_id, severity, kind)
     DO UPDATE SET alerts = alert_hours.alerts + excluded.alerts";

const FORGET_HOUR: &str = "DELETE FROM alert_hours
     WHERE hour_ms = ?1 AND device_id = ?2 AND severity = ?3 AND kind = ?4 AND alerts = 0";

/// The hours, severities and kinds of the alerts [`DELETE_OLDEST`] deletes.
const OLDEST_GROUPS: &str = "SELECT received_ms - received_ms % 3600000, severity, kind, count(*)
     FROM (SELECT received_ms, severity, kind FROM alerts WHERE device_id = ?1 AND seq >= 0
           ORDER BY received_ms, seq LIMIT ?2) AS o
     GROUP BY received_ms - received_ms % 3600000, severity, kind";

/// The device's `?2` alerts received first (of the lowest sequence numbers among those
/// received in the same millisecond). Not simply the lowest numbers: a device whose state was
/// lost numbers from a random point, which may be below its older alerts'. The backend's own
/// alerts (negative numbers) are not the device's: the quota leaves them.
const DELETE_OLDEST: &str = "DELETE FROM alerts WHERE device_id = ?1 AND seq IN (
         SELECT seq FROM alerts WHERE device_id = ?1 AND seq >= 0
         ORDER BY received_ms, seq LIMIT ?2)";

const COUNT_REMOVED: &str = "UPDATE devices SET stored_alerts = stored_alerts - ?2,
         quota_removed = quota_removed + ?2
     WHERE device_id = ?1";

/// The devices with alerts received before ?1 (retention), in the order of their ids.
const DEVICES_EXPIRING: &str = "SELECT DISTINCT device_id FROM alerts WHERE received_ms < ?1
     ORDER BY device_id";

/// Locks a device's row (PostgreSQL) before its alerts are deleted: the order the ingest takes.
const LOCK_DEVICE: &str = "UPDATE devices SET stored_alerts = stored_alerts WHERE device_id = ?1";

/// The hours, severities and kinds of a device's alerts received before ?2.
const EXPIRING_GROUPS: &str = "SELECT received_ms - received_ms % 3600000, severity, kind, count(*)
     FROM alerts WHERE device_id = ?1 AND received_ms < ?2
     GROUP BY received_ms - received_ms % 3600000, severity, kind";

/// The device's own alerts (not the backend's) received before ?2.
const EXPIRING_OWN: &str =
    "SELECT count(*) FROM alerts WHERE device_id = ?1 AND received_ms < ?2 AND seq >= 0";

/// After retention deleted ?2 of a device's alerts.
const UNCOUNT_STORED: &str = "UPDATE devices SET stored_alerts = stored_alerts - ?2
     WHERE device_id = ?1";

const DELETE_ALERTS: &str = "DELETE FROM alerts WHERE received_ms < ?1";

// `CAST(?2 AS BIGINT)`: PostgreSQL would take `?2 - 1` for a 32-bit integer.
const LIMITED_COVERED: &str = "SELECT count(*) FROM limited
     WHERE device_id = ?1 AND first_seq <= ?2 AND last_seq >= ?2";

const EXTEND_LIMITED: &str = "UPDATE limited SET last_seq = ?2
     WHERE device_id = ?1 AND last_seq = CAST(?2 AS BIGINT) - 1";

const INSERT_LIMITED: &str = "INSERT INTO limited (device_id, first_seq, last_seq)
     VALUES (?1, ?2, ?2) ON CONFLICT (device_id, first_seq) DO NOTHING";

const LIMITED_RANGES: &str = "SELECT count(*) FROM limited WHERE device_id = ?1";

const FORGET_LIMITED: &str = "DELETE FROM limited WHERE device_id = ?1 AND first_seq IN (
         SELECT first_seq FROM limited WHERE device_id = ?1 ORDER BY first_seq LIMIT ?2)";

const LIMITED: &str = "SELECT device_id, first_seq, last_seq FROM limited
     WHERE CAST(?1 AS TEXT) IS NULL OR device_id = ?1 ORDER BY device_id, first_seq";

/// The triage of alerts no longer stored (removed by the quota or retention).
const DELETE_ORPHAN_TRIAGE: &str = "DELETE FROM triage
     WHERE NOT EXISTS (SELECT 1 FROM alerts a WHERE a.id = triage.alert_id)";

const DELETE_POLICY_RESULTS: &str = "DELETE FROM policy_results WHERE received_ms < ?1";

const DEVICES: &str = "SELECT d.device_id, d.first_seen_ms, d.last_seen_ms, d.status, d.status_ms,
            d.agent_version, d.policy_serial, d.policy_name, d.boot_id, d.heartbeat_ms,
            d.uptime_s, d.counters,
            d.stored_alerts,
            COALESCE((SELECT r.count FROM refused r
                      WHERE r.reason = 'rate_limited' AND r.device_id = d.device_id), 0),
            d.quota_removed,
            (SELECT p.state FROM presence p WHERE p.device_id = d.device_id),
            COALESCE((SELECT r.count FROM refused r
                      WHERE r.reason = 'presence_limited' AND r.device_id = d.device_id), 0)
     FROM devices d ORDER BY d.device_id";

// `CAST(?1 AS TEXT)`: PostgreSQL needs the type of a parameter that is only tested for NULL.
// The backend's own alerts (negative numbers) are in no device's sequence.
const GAPS: &str = "SELECT device_id, seq + 1, next - 1 FROM (
         SELECT device_id, seq, lead(seq) OVER (PARTITION BY device_id ORDER BY seq) AS next
         FROM alerts WHERE seq >= 0 AND (CAST(?1 AS TEXT) IS NULL OR device_id = ?1)) AS s
     WHERE next > seq + 1 ORDER BY device_id, seq";

const REFUSED: &str = "SELECT reason, device_id, count, first_ms, last_ms, last_topic, last_error
     FROM refused ORDER BY reason, device_id";

const POLICY_RESULTS: &str =
    "SELECT device_id, bundle_sha256, time_ms, received_ms, outcome, name, serial, reason
     FROM policy_results WHERE CAST(?1 AS TEXT) IS NULL OR device_id = ?1
     ORDER BY received_ms DESC, device_id";

/// The index of version 5 that the live events' poll of [`POLICY_RESULTS_SINCE`] reads by.
pub(crate) const INDEXES_5: &str =
    "CREATE INDEX IF NOT EXISTS policy_results_received ON policy_results (received_ms);";

const POLICY_RESULTS_SINCE: &str =
    "SELECT device_id, bundle_sha256, time_ms, received_ms, outcome, name, serial, reason
     FROM policy_results WHERE received_ms >= ?1
     ORDER BY received_ms, device_id, bundle_sha256, time_ms LIMIT ?2";

/// Notes that a device was heard of at `received_ms`.
fn touch_device(db: &mut dyn Db, device_id: &str, received_ms: u64) -> anyhow::Result<()> {
    db.execute(TOUCH_DEVICE, &[text(device_id), int(received_ms)])?;
    Ok(())
}

/// [`super::Store::insert_alert`].
pub(crate) fn insert_alert(
    db: &mut dyn Db,
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
    let details = alert.details.0.to_string();
    let inserted = db.execute(
        INSERT_ALERT,
        &[
            text(device_id),
            int(alert.seq),
            text(&alert.boot_id),
            int(alert.time_ms),
            int(received_ms),
            text(alert.kind.name()),
            text(alert.severity.name()),
            text(&alert.rule),
            Arg::Text(alert.path.as_deref()),
            text(&details),
            int(alert.count),
            int(alert.first_ms),
            int(alert.last_ms),
            Arg::Text(process.as_deref()),
            text(format),
        ],
    )? == 1;
    touch_device(db, device_id, received_ms)?;
    if inserted {
        db.execute(COUNT_STORED, &[text(device_id)])?;
        count_alert(
            db,
            device_id,
            received_ms,
            alert.severity.name(),
            alert.kind.name(),
        )?;
    }
    super::presence::heard(db, device_id, received_ms)?;
    Ok(inserted)
}

/// Counts a new alert in the overview's counts ([`COUNT_TABLES`]).
pub(super) fn count_alert(
    db: &mut dyn Db,
    device_id: &str,
    received_ms: u64,
    severity: &str,
    kind: &str,
) -> anyhow::Result<()> {
    let group = Group {
        hour_ms: received_ms - received_ms % HOUR_MS,
        severity: severity.into(),
        kind: kind.into(),
        alerts: 1,
    };
    add_counts(db, device_id, &[group], 1)
}

const HOUR_MS: u64 = 3_600_000;

/// Alerts of a device of one hour received, severity and kind.
struct Group {
    hour_ms: u64,
    severity: String,
    kind: String,
    alerts: u64,
}

/// The groups of a query of `(hour, severity, kind, count)`.
fn groups(db: &mut dyn Db, sql: &str, args: &[Arg]) -> anyhow::Result<Vec<Group>> {
    rows(db, sql, args, |r| {
        Ok(Group {
            hour_ms: get_uint(r, 0)?,
            severity: get_text(r, 1)?,
            kind: get_text(r, 2)?,
            alerts: get_uint(r, 3)?,
        })
    })
}

/// Adds (`sign` 1) or removes (-1) the alerts of `groups` of a device to or from the counts
/// of [`COUNT_TABLES`]; an hour's count that reaches 0 is deleted.
fn add_counts(db: &mut dyn Db, device_id: &str, groups: &[Group], sign: i64) -> anyhow::Result<()> {
    let mut totals: std::collections::BTreeMap<&str, i64> = Default::default();
    for g in groups {
        let n = sign * i64::try_from(g.alerts).unwrap_or(i64::MAX);
        *totals.entry(&g.severity).or_default() += n;
        let key = [
            int(g.hour_ms),
            text(device_id),
            text(&g.severity),
            text(&g.kind),
        ];
        db.execute(
            ADD_HOUR,
            &[key[0], key[1], key[2], key[3], Arg::Int(Some(n))],
        )?;
        if sign < 0 {
            db.execute(FORGET_HOUR, &key)?;
        }
    }
    for (severity, n) in totals {
        db.execute(
            ADD_TOTAL,
            &[text(device_id), text(severity), Arg::Int(Some(n))],
        )?;
    }
    Ok(())
}

/// [`super::Store::enforce_quota`].
pub(crate) fn enforce_quota(
    db: &mut dyn Db,
    device_id: &str,
    max_alerts: u64,
) -> anyhow::Result<u64> {
    let mut stored = 0;
    db.query(STORED, &[text(device_id)], &mut |r| {
        stored = get_uint(r, 0)?;
        Ok(())
    })?;
    if stored <= max_alerts {
        return Ok(0);
    }
    let args = [text(device_id), int(stored - max_alerts)];
    let oldest = groups(db, OLDEST_GROUPS, &args)?;
    let removed = db.execute(DELETE_OLDEST, &args)?;
    db.execute(COUNT_REMOVED, &[text(device_id), int(removed)])?;
    add_counts(db, device_id, &oldest, -1)?;
    if removed > 0 {
        db.execute(DELETE_ORPHAN_TRIAGE, &[])?;
    }
    Ok(removed)
}

/// The first integer of a one-row query (`count(*)`).
pub(super) fn count_of(db: &mut dyn Db, sql: &str, args: &[Arg]) -> anyhow::Result<u64> {
    let mut n = 0;
    db.query(sql, args, &mut |r| {
        n = get_uint(r, 0)?;
        Ok(())
    })?;
    Ok(n)
}

/// [`super::Store::note_rate_limited`]: the device's limited numbers are kept as disjoint
/// ranges; one that follows a range extends it.
pub(crate) fn note_rate_limited(
    db: &mut dyn Db,
    device_id: &str,
    seq: u64,
) -> anyhow::Result<bool> {
    let args = [text(device_id), int(seq)];
    if count_of(db, ALERT_STORED, &args)? > 0 {
        return Ok(false);
    }
    if count_of(db, LIMITED_COVERED, &args)? > 0 || db.execute(EXTEND_LIMITED, &args)? > 0 {
        return Ok(true);
    }
    db.execute(INSERT_LIMITED, &args)?;
    let ranges = count_of(db, LIMITED_RANGES, &args[..1])?;
    if ranges > MAX_LIMITED_RANGES {
        db.execute(
            FORGET_LIMITED,
            &[text(device_id), int(ranges - MAX_LIMITED_RANGES)],
        )?;
    }
    Ok(true)
}

/// [`super::Store::record_heartbeat`].
pub(crate) fn record_heartbeat(
    db: &mut dyn Db,
    device_id: &str,
    hb: &Heartbeat,
    received_ms: u64,
) -> anyhow::Result<()> {
    let counters = heartbeat_counters(hb).to_string();
    touch_device(db, device_id, received_ms)?;
    db.execute(
        RECORD_HEARTBEAT,
        &[
            text(device_id),
            int(received_ms),
            int(hb.uptime_s),
            text(&hb.agent_version),
            int(hb.policy_serial),
            text(&counters),
        ],
    )?;
    super::presence::heard(db, device_id, received_ms)?;
    Ok(())
}

/// [`super::Store::record_status`].
pub(crate) fn record_status(
    db: &mut dyn Db,
    device_id: &str,
    status: &Status,
    received_ms: u64,
) -> anyhow::Result<()> {
    let state = status.state.name();
    touch_device(db, device_id, received_ms)?;
    // A status is applied in the order received: a last will carries the time of the
    // agent's start, not of the disconnection, and the policy of then (not recorded).
    match status.state {
        picket_proto::Presence::Lost => db.execute(
            RECORD_WILL,
            &[
                text(device_id),
                text(state),
                int(received_ms),
                text(&status.agent_version),
                text(&status.boot_id),
            ],
        )?,
        _ => db.execute(
            RECORD_STATUS,
            &[
                text(device_id),
                text(state),
                int(received_ms),
                text(&status.agent_version),
                int(status.policy_serial),
                text(&status.policy_name),
                text(&status.boot_id),
            ],
        )?,
    };
    super::presence::status(
        db,
        device_id,
        state,
        (&status.boot_id, status.time_ms),
        received_ms,
    )?;
    Ok(())
}

/// [`super::Store::insert_policy_result`].
pub(crate) fn insert_policy_result(
    db: &mut dyn Db,
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
    let inserted = db.execute(
        INSERT_POLICY_RESULT,
        &[
            text(device_id),
            text(&result.bundle_sha256),
            int(result.time_ms),
            int(received_ms),
            text(outcome),
            Arg::Text(name),
            serial.map_or(Arg::Int(None), int),
            Arg::Text(reason),
        ],
    )? == 1;
    touch_device(db, device_id, received_ms)?;
    if inserted {
        let kept = count_of(db, POLICY_RESULTS_OF, &[text(device_id)])?;
        if kept > MAX_POLICY_RESULTS_PER_DEVICE {
            db.execute(
                DELETE_OLDEST_POLICY_RESULTS,
                &[text(device_id), int(kept - MAX_POLICY_RESULTS_PER_DEVICE)],
            )?;
        }
    }
    if let PolicyOutcome::Applied { name, serial } = &result.outcome {
        db.execute(SET_POLICY, &[text(device_id), int(*serial), text(name)])?;
    }
    super::presence::heard(db, device_id, received_ms)?;
    Ok(inserted)
}

/// [`super::Store::count_refused`].
pub(crate) fn count_refused(
    db: &mut dyn Db,
    reason: &str,
    device_id: Option<&str>,
    topic: &str,
    error: &str,
    received_ms: u64,
) -> anyhow::Result<()> {
    let topic: String = topic.chars().take(200).collect();
    let error: String = error.chars().take(500).collect();
    db.execute(
        COUNT_REFUSED,
        &[
            text(reason),
            text(device_id.unwrap_or("")),
            int(received_ms),
            text(&topic),
            text(&error),
        ],
    )?;
    Ok(())
}

/// [`super::Store::delete_before`].
pub(crate) fn delete_before(db: &mut dyn Db, before_ms: u64) -> anyhow::Result<u64> {
    // Only the devices with alerts to delete, each counted once its row is locked: the ingest
    // locks a device's row before it adds or removes that device's alerts, so the counts hold
    // until the deletion, and the two take their locks in the same order (no deadlock with a
    // second backend on the same PostgreSQL store). What this costs follows what is deleted,
    // not what is stored.
    let ids = rows(db, DEVICES_EXPIRING, &[int(before_ms)], |r| get_text(r, 0))?;
    let mut expiring = Vec::with_capacity(ids.len());
    for id in ids {
        db.execute(LOCK_DEVICE, &[text(&id)])?;
        let expired = groups(db, EXPIRING_GROUPS, &[text(&id), int(before_ms)])?;
        let own = count_of(db, EXPIRING_OWN, &[text(&id), int(before_ms)])?;
        expiring.push((id, expired, own));
    }
    let alerts = db.execute(DELETE_ALERTS, &[int(before_ms)])?;
    for (id, expired, own) in &expiring {
        db.execute(UNCOUNT_STORED, &[text(id), int(*own)])?;
        add_counts(db, id, expired, -1)?;
    }
    db.execute(DELETE_POLICY_RESULTS, &[int(before_ms)])?;
    super::presence::delete_before(db, before_ms)?;
    if alerts > 0 {
        db.execute(DELETE_ORPHAN_TRIAGE, &[])?;
    }
    Ok(alerts)
}

/// [`super::Store::devices`].
pub(crate) fn devices(
    db: &mut dyn Db,
    now_ms: u64,
    heartbeat_timeout: std::time::Duration,
) -> anyhow::Result<Vec<DeviceRow>> {
    rows(db, DEVICES, &[], |r| {
        let last_seen_ms = get_uint(r, 2)?;
        let status = r.text(3)?;
        let recorded = r.text(15)?;
        let state = device_state(
            status.as_deref(),
            last_seen_ms,
            recorded.as_deref(),
            now_ms,
            heartbeat_timeout,
        );
        Ok(DeviceRow {
            device_id: get_text(r, 0)?,
            state,
            online: state == "online",
            first_seen_ms: get_uint(r, 1)?,
            last_seen_ms,
            status_ms: get_opt_uint(r, 4)?,
            agent_version: r.text(5)?,
            policy_serial: get_opt_uint(r, 6)?,
            policy_name: r.text(7)?,
            boot_id: r.text(8)?,
            heartbeat_ms: get_opt_uint(r, 9)?,
            uptime_s: get_opt_uint(r, 10)?,
            counters: r.text(11)?.and_then(|c| serde_json::from_str(&c).ok()),
            alerts: get_uint(r, 12)?,
            rate_limited: get_uint(r, 13)?,
            quota_removed: get_uint(r, 14)?,
            presence_limited: get_uint(r, 16)?,
        })
    })
}

/// A value bound to a query built by [`alerts_query`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum QueryArg {
    Text(String),
    Int(i64),
}

/// The columns of a [`StoredAlert`] (read by [`stored_alert`]), of `alerts a` left-joined
/// with `triage t`.
pub(super) const ALERT_COLUMNS: &str =
    "SELECT a.device_id, a.seq, a.boot_id, a.time_ms, a.received_ms, a.kind, a.severity, a.rule,
            a.path, a.details, a.count, a.first_ms, a.last_ms, a.process, a.format, a.id,
            t.state, t.note, t.by_user, t.time_ms
     FROM alerts a LEFT JOIN triage t ON t.alert_id = a.id";

/// A row of [`ALERT_COLUMNS`].
pub(super) fn stored_alert(r: &dyn Columns) -> anyhow::Result<StoredAlert> {
    Ok(StoredAlert {
        id: get_uint(r, 15)?,
        alert: AlertRow {
            device_id: get_text(r, 0)?,
            // The backend's alerts: minus the number of the presence change that raised them.
            seq: some(r.int(1)?, 1)?.unsigned_abs(),
            boot_id: get_text(r, 2)?,
            time_ms: get_uint(r, 3)?,
            received_ms: get_uint(r, 4)?,
            kind: get_text(r, 5)?,
            severity: get_text(r, 6)?,
            rule: get_text(r, 7)?,
            path: r.text(8)?,
            details: json(get_text(r, 9)?),
            count: get_uint(r, 10)?,
            first_ms: get_uint(r, 11)?,
            last_ms: get_uint(r, 12)?,
            process: r.text(13)?.map(json),
            format: get_text(r, 14)?,
        },
        triage: match r.text(16)? {
            Some(state) => Some(Triage {
                state,
                note: get_text(r, 17)?,
                by: get_text(r, 18)?,
                time_ms: get_uint(r, 19)?,
            }),
            None => None,
        },
    })
}

/// A `LIKE` pattern finding `text` anywhere, case-insensitively (`\` escapes).
fn contains_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The alerts query for `filter`, with a `WHERE` clause of only the filters given (so that an
/// index bounds what is read: `(device_id, received_ms)`, `(kind, received_ms)` or
/// `(received_ms)`) and an order every one of these indexes gives when read backwards (ties
/// on `received_ms` by id, which ends every index entry). `before` is a keyset cursor: the
/// rows after that alert in this order (none when it is no longer stored).
/// `placeholder(n)` writes the n-th parameter (1-based): `?n` or `$n`.
pub(crate) fn alerts_query(
    filter: &AlertFilter,
    placeholder: fn(usize) -> String,
) -> (String, Vec<QueryArg>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut args = Vec::new();
    let int = |v: u64| QueryArg::Int(i64::try_from(v).unwrap_or(i64::MAX));
    // Binds `arg` and returns its placeholder.
    let mut param = |arg: QueryArg| {
        args.push(arg);
        placeholder(args.len())
    };
    let mut bind = |column: &str, op: &str, arg: QueryArg| {
        let p = param(arg);
        clauses.push(format!("{column} {op} {p}"));
    };
    if let Some(device) = &filter.device {
        bind("a.device_id", "=", QueryArg::Text(device.clone()));
    }
    if let Some(since) = filter.since_ms {
        bind("a.received_ms", ">=", int(since));
    }
    if let Some(until) = filter.until_ms {
        bind("a.received_ms", "<=", int(until));
    }
    if let Some(kind) = &filter.kind {
        bind("a.kind", "=", QueryArg::Text(kind.clone()));
    }
    if let Some(severity) = &filter.severity {
        bind("a.severity", "=", QueryArg::Text(severity.clone()));
    }
    if let Some(state) = filter.triage.as_deref().filter(|s| *s != "open") {
        bind("t.state", "=", QueryArg::Text(state.into()));
    }
    if filter.triage.as_deref() == Some("open") {
        // Not `t.state IS NULL OR ...`: PostgreSQL would join every alert before the limit.
        clauses.push(
            "NOT EXISTS (SELECT 1 FROM triage o WHERE o.alert_id = a.id AND o.state <> 'open')"
                .into(),
        );
    }
    if let Some(text) = &filter.text {
        let p = param(QueryArg::Text(contains_pattern(text)));
        clauses.push(format!(
            "(lower(a.rule) LIKE {p} ESCAPE '\\' OR lower(COALESCE(a.path, '')) LIKE {p} \
             ESCAPE '\\' OR lower(a.kind) LIKE {p} ESCAPE '\\' \
             OR lower(a.details) LIKE {p} ESCAPE '\\')"
        ));
    }
    if let Some(before) = filter.before {
        let p = param(int(before));
        clauses.push(format!(
            "(a.received_ms < (SELECT received_ms FROM alerts WHERE id = {p}) \
             OR (a.received_ms = (SELECT received_ms FROM alerts WHERE id = {p}) AND a.id < {p}))"
        ));
    }
    let mut sql = String::from(ALERT_COLUMNS);
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(" ORDER BY a.received_ms DESC, a.id DESC");
    if let Some(limit) = filter.limit {
        args.push(int(limit));
        sql.push_str(&format!(" LIMIT {}", placeholder(args.len())));
    }
    (sql, args)
}

/// [`super::Store::stored_alerts`]: the query of [`alerts_query`], with `?n` placeholders.
pub(crate) fn alerts(db: &mut dyn Db, filter: &AlertFilter) -> anyhow::Result<Vec<StoredAlert>> {
    let (sql, args) = alerts_query(filter, |n| format!("?{n}"));
    let args: Vec<Arg> = args
        .iter()
        .map(|a| match a {
            QueryArg::Text(t) => Arg::Text(Some(t)),
            QueryArg::Int(i) => Arg::Int(Some(*i)),
        })
        .collect();
    rows(db, &sql, &args, stored_alert)
}

/// [`super::Store::gaps`].
pub(crate) fn gaps(db: &mut dyn Db, device: Option<&str>) -> anyhow::Result<Vec<Gap>> {
    let limited = rows(db, LIMITED, &[Arg::Text(device)], |r| {
        Ok((get_text(r, 0)?, get_uint(r, 1)?, get_uint(r, 2)?))
    })?;
    let mut gaps = rows(db, GAPS, &[Arg::Text(device)], |r| {
        let first = get_uint(r, 1)?;
        let last = get_uint(r, 2)?;
        // A jump this far is a new counter of the device (its state was lost), not alerts.
        let reset = last - first + 1 >= picket_proto::SEQ_RESET_JUMP - 1;
        Ok(Gap {
            device_id: get_text(r, 0)?,
            first_missing: first,
            last_missing: last,
            missing: if reset { 0 } else { last - first + 1 },
            restart: !reset && restart_gap(first, last),
            reset,
            rate_limited: 0,
        })
    })?;
    // Both in the order of device, then number.
    let mut ranges = limited.iter().peekable();
    for gap in &mut gaps {
        while ranges.peek().is_some_and(|(d, _, last)| {
            (d.as_str(), *last) < (gap.device_id.as_str(), gap.first_missing)
        }) {
            ranges.next();
        }
        gap.rate_limited = ranges
            .clone()
            .take_while(|(d, first, _)| *d == gap.device_id && *first <= gap.last_missing)
            .filter(|(_, _, last)| *last >= gap.first_missing)
            .map(|(_, first, last)| {
                (*last).min(gap.last_missing) - (*first).max(gap.first_missing) + 1
            })
            .sum::<u64>()
            // Ranges written by two instances sharing a store at once may overlap.
            .min(gap.missing);
    }
    Ok(gaps)
}

/// [`super::Store::refused`].
pub(crate) fn refused(db: &mut dyn Db) -> anyhow::Result<Vec<RefusedRow>> {
    rows(db, REFUSED, &[], |r| {
        Ok(RefusedRow {
            reason: get_text(r, 0)?,
            device_id: get_text(r, 1)?,
            count: get_uint(r, 2)?,
            first_ms: get_uint(r, 3)?,
            last_ms: get_uint(r, 4)?,
            last_topic: get_text(r, 5)?,
            last_error: get_text(r, 6)?,
        })
    })
}

fn policy_result_row(r: &dyn Columns) -> anyhow::Result<PolicyResultRow> {
    Ok(PolicyResultRow {
        device_id: get_text(r, 0)?,
        bundle_sha256: get_text(r, 1)?,
        time_ms: get_uint(r, 2)?,
        received_ms: get_uint(r, 3)?,
        outcome: get_text(r, 4)?,
        name: r.text(5)?,
        serial: get_opt_uint(r, 6)?,
        reason: r.text(7)?,
    })
}

/// [`super::Store::policy_results`].
pub(crate) fn policy_results(
    db: &mut dyn Db,
    device: Option<&str>,
) -> anyhow::Result<Vec<PolicyResultRow>> {
    rows(db, POLICY_RESULTS, &[Arg::Text(device)], policy_result_row)
}

/// [`super::Store::policy_results_since`].
pub(crate) fn policy_results_since(
    db: &mut dyn Db,
    since_ms: u64,
    limit: u64,
) -> anyhow::Result<Vec<PolicyResultRow>> {
    rows(
        db,
        POLICY_RESULTS_SINCE,
        &[int(since_ms), int(limit)],
        policy_result_row,
    )
}
