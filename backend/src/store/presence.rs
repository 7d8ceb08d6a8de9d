//! Presence changes: each device's presence as the backend last recorded it (`presence`), the
//! history of its changes (`presence_changes`), and the alerts the backend raises itself when a
//! device goes silent without a clean stop and when it comes back.
//!
//! A device's status says `online`, `offline` (a clean stop) or `lost` (its last will: the
//! connection ended without a goodbye); `timed_out` is the backend's own finding, when a device
//! said it was online and nothing arrived for longer than `devices.heartbeat_timeout`
//! ([`check_timeouts`]). A change to `lost` or `timed_out` raises `device_silent` (high), a
//! change from either back to `online` raises `device_returned` (medium); a clean stop and its
//! restart raise nothing.
//!
//! The backend's alerts are stored in `alerts` with the device's id, so that every list, filter,
//! triage, count and live stream shows them as it shows the device's own, but with a negative
//! `seq` (minus the number of the change that raised it, per device: never a device's number,
//! which is at least 0) and the format `backend`. They are not the device's: the gaps, the
//! quota (`devices.stored_alerts`, the oldest removed) and the rate limit leave them out.

use super::sql::{
    count_alert, count_of, get_opt_uint, get_text, get_uint, int, rows, text, Arg, Db,
};
use super::PresenceChange;

/// The tables of schema version 5 (one SQL text for both databases), created with a new
/// store and by the upgrade from version 4: the presence each device was last recorded in,
/// with the number of its latest change, and the changes.
pub(crate) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS presence (
    device_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    boot_id TEXT,
    status_time_ms BIGINT,
    changes BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS presence_changes (
    device_id TEXT NOT NULL,
    n BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    previous TEXT,
    boot_id TEXT,
    agent_version TEXT,
    alert_id BIGINT,
    PRIMARY KEY (device_id, n)
);
CREATE INDEX IF NOT EXISTS presence_changes_time ON presence_changes (time_ms);
";

/// The upgrade from version 4: each device's presence from its latest status (no change
/// recorded: the history begins with the first change after the upgrade).
pub(crate) const FILL: &str = "
INSERT INTO presence (device_id, state, since_ms, boot_id, status_time_ms, changes)
    SELECT device_id, status, COALESCE(status_ms, last_seen_ms), boot_id, NULL, 0
    FROM devices WHERE status IS NOT NULL
    ON CONFLICT (device_id) DO NOTHING;
";

/// The kinds of the alerts the backend raises (not the devices' [`picket_proto::AlertKind`]).
pub const BACKEND_KINDS: [&str; 2] = [SILENT, RETURNED];

/// A device went silent without a clean stop: `lost` or `timed_out`.
pub const SILENT: &str = "device_silent";
/// A silent device is back online.
pub const RETURNED: &str = "device_returned";

/// The format of the backend's alerts in `alerts.format`.
pub const BACKEND_FORMAT: &str = "backend";

/// The most changes kept per device; beyond it its oldest are removed, so that a device that
/// connects and drops its connection without end cannot fill the store with them.
pub const MAX_CHANGES_PER_DEVICE: u64 = 1000;

const CURRENT: &str = "SELECT state, since_ms, boot_id, changes, status_time_ms FROM presence
     WHERE device_id = ?1";

const SET_CURRENT: &str =
    "INSERT INTO presence (device_id, state, since_ms, boot_id, changes, status_time_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (device_id) DO UPDATE SET state = excluded.state,
         since_ms = excluded.since_ms, boot_id = excluded.boot_id, changes = excluded.changes,
         status_time_ms = excluded.status_time_ms";

const INSERT_CHANGE: &str = "INSERT INTO presence_changes (device_id, n, time_ms, state, previous,
         boot_id, agent_version, alert_id)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const CHANGES_OF: &str = "SELECT count(*) FROM presence_changes WHERE device_id = ?1";

/// The backend's alerts about a device stored since ?2 (by the alerts' index of devices and
/// times received).
const RAISED_SINCE: &str =
    "SELECT count(*) FROM alerts WHERE device_id = ?1 AND received_ms >= ?2 AND seq < 0";

/// At most this many of the backend's alerts about one device in an hour: a device that makes
/// its presence flap (it publishes its own status, a link that comes and goes) has every change
/// recorded, but cannot fill the store and every receiver with alerts about it.
pub(crate) const MAX_RAISED_PER_HOUR: u64 = 12;

const DELETE_OLDEST_CHANGES: &str = "DELETE FROM presence_changes WHERE device_id = ?1 AND n IN (
         SELECT n FROM presence_changes WHERE device_id = ?1 ORDER BY n LIMIT ?2)";

const DEVICE: &str =
    "SELECT last_seen_ms, boot_id, agent_version FROM devices WHERE device_id = ?1";

const INSERT_BACKEND_ALERT: &str =
    "INSERT INTO alerts (device_id, seq, boot_id, time_ms, received_ms, kind,
         severity, rule, path, details, count, first_ms, last_ms, process, format)
     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, 'presence', NULL, ?7, 1, ?8, ?4, NULL, ?9)
     ON CONFLICT (device_id, seq) DO NOTHING";

const ALERT_ID: &str = "SELECT id FROM alerts WHERE device_id = ?1 AND seq = ?2";

/// Devices whose status says online and from which nothing arrived since ?1, not yet recorded
/// as timed out.
const TIMING_OUT: &str = "SELECT d.device_id FROM devices d
     LEFT JOIN presence p ON p.device_id = d.device_id
     WHERE d.status = 'online' AND d.last_seen_ms < ?1
         AND (p.state IS NULL OR p.state <> 'timed_out')
     ORDER BY d.device_id";

/// Locks the device's row (PostgreSQL) if it is still timed out: another instance sharing the
/// store may have heard from it meanwhile.
const LOCK_IF_TIMED_OUT: &str = "UPDATE devices SET last_seen_ms = last_seen_ms
     WHERE device_id = ?1 AND status = 'online' AND last_seen_ms < ?2";

const CHANGES: &str = "SELECT c.device_id, c.n, c.time_ms, c.state, c.previous, c.boot_id,
         c.agent_version, c.alert_id
     FROM presence_changes c WHERE CAST(?1 AS TEXT) IS NULL OR c.device_id = ?1
     ORDER BY c.time_ms DESC, c.device_id, c.n DESC LIMIT ?2";

const DELETE_CHANGES: &str = "DELETE FROM presence_changes WHERE time_ms < ?1";

/// What the registry knows of a device when its presence changes.
struct Known {
    last_seen_ms: u64,
    boot_id: Option<String>,
    agent_version: Option<String>,
}

fn known(db: &mut dyn Db, device_id: &str) -> anyhow::Result<Known> {
    let mut k = Known {
        last_seen_ms: 0,
        boot_id: None,
        agent_version: None,
    };
    db.query(DEVICE, &[text(device_id)], &mut |r| {
        k = Known {
            last_seen_ms: get_uint(r, 0)?,
            boot_id: r.text(1)?,
            agent_version: r.text(2)?,
        };
        Ok(())
    })?;
    Ok(k)
}

/// The presence last recorded for a device.
struct Current {
    state: String,
    since_ms: u64,
    boot_id: Option<String>,
    changes: u64,
    /// The device's time of the status that set it (`None` for a change the backend found).
    status_time_ms: Option<u64>,
}

fn current(db: &mut dyn Db, device_id: &str) -> anyhow::Result<Option<Current>> {
    let mut found = None;
    db.query(CURRENT, &[text(device_id)], &mut |r| {
        found = Some(Current {
            state: get_text(r, 0)?,
            since_ms: get_uint(r, 1)?,
            boot_id: r.text(2)?,
            changes: get_uint(r, 3)?,
            status_time_ms: get_opt_uint(r, 4)?,
        });
        Ok(())
    })?;
    Ok(found)
}

fn silent(state: &str) -> bool {
    state == "lost" || state == "timed_out"
}

/// Records that a status of `state` (`online`, `offline`, `lost`), sent by the device at
/// `status_time_ms` (its clock), arrived at `time_ms`. A status that repeats the recorded
/// presence changes nothing, and neither does the `online` status of a device recorded as
/// timed out since: the same status delivered again (the broker gives every retained status
/// to the backend when it subscribes again), not a new connection, which sends a new one.
pub(crate) fn status(
    db: &mut dyn Db,
    device_id: &str,
    state: &str,
    (boot_id, status_time_ms): (&str, u64),
    time_ms: u64,
) -> anyhow::Result<Option<PresenceChange>> {
    if let Some(c) = current(db, device_id)? {
        // A presence taken over by the upgrade to version 5 has no status time: the same boot
        // then stands for the same status (a new connection of that boot sends heartbeats,
        // which end the timeout).
        let same = match c.status_time_ms {
            Some(t) => t == status_time_ms,
            None => c.boot_id.as_deref() == Some(boot_id),
        };
        if c.state == "timed_out" && state == "online" && same {
            return Ok(None);
        }
    }
    change(
        db,
        device_id,
        state,
        (Some(boot_id), Some(status_time_ms)),
        time_ms,
    )
}

/// Something arrived from the device at `time_ms` (an alert, a heartbeat, a policy result): a
/// device recorded as timed out is online again.
pub(crate) fn heard(
    db: &mut dyn Db,
    device_id: &str,
    time_ms: u64,
) -> anyhow::Result<Option<PresenceChange>> {
    match current(db, device_id)? {
        Some(c) if c.state == "timed_out" => {
            change(db, device_id, "online", (None, c.status_time_ms), time_ms)
        }
        _ => Ok(None),
    }
}

/// [`super::Store::check_timeouts`]: records as timed out the devices that said they were
/// online and from which nothing arrived for longer than `timeout_ms`, once each.
pub(crate) fn check_timeouts(
    db: &mut dyn Db,
    now_ms: u64,
    timeout_ms: u64,
) -> anyhow::Result<Vec<PresenceChange>> {
    let before = now_ms.saturating_sub(timeout_ms);
    let ids = rows(db, TIMING_OUT, &[int(before)], |r| get_text(r, 0))?;
    let mut changes = Vec::new();
    for id in ids {
        if db.execute(LOCK_IF_TIMED_OUT, &[text(&id), int(before)])? == 0 {
            continue;
        }
        let status_time_ms = current(db, &id)?.and_then(|c| c.status_time_ms);
        if let Some(c) = change(db, &id, "timed_out", (None, status_time_ms), now_ms)? {
            changes.push(c);
        }
    }
    Ok(changes)
}

/// Moves the device to `state` if it is not in it already: records the change (with the boot
/// id and device time of the status that made it, if one did), and raises the backend's alert
/// it calls for.
fn change(
    db: &mut dyn Db,
    device_id: &str,
    state: &str,
    (boot_id, status_time_ms): (Option<&str>, Option<u64>),
    time_ms: u64,
) -> anyhow::Result<Option<PresenceChange>> {
    let before = current(db, device_id)?;
    let previous = before.as_ref().map(|c| c.state.as_str());
    if previous == Some(state) {
        return Ok(None);
    }
    let device = known(db, device_id)?;
    let boot_id = boot_id.map(str::to_string).or(device.boot_id.clone());
    let n = before.as_ref().map_or(0, |c| c.changes) + 1;
    let alert = match (previous, state) {
        // Silent, and not already: a second alert for one silence (timed out, then the broker
        // gave up on the connection) would say nothing new.
        (p, "lost" | "timed_out") if !p.is_some_and(silent) => {
            let reason = if state == "lost" {
                "the connection ended without a clean stop (the agent killed or crashed, its \
                 link cut, the device powered off or reset)"
            } else {
                "the device said it was online and nothing arrived from it for longer than \
                 devices.heartbeat_timeout"
            };
            let details = serde_json::json!({
                "state": state,
                "previous": previous,
                "last_seen_ms": device.last_seen_ms,
                "agent_version": device.agent_version,
                "reason": reason,
            });
            Some((SILENT, "high", details, device.last_seen_ms))
        }
        (Some(p), "online") if silent(p) => {
            let since_ms = before.as_ref().map_or(time_ms, |c| c.since_ms);
            let previous_boot = before.as_ref().and_then(|c| c.boot_id.clone());
            let rebooted = match (&previous_boot, &boot_id) {
                (Some(a), Some(b)) => Some(a != b),
                _ => None,
            };
            let details = serde_json::json!({
                "previous": p,
                "silent_ms": time_ms.saturating_sub(since_ms),
                "previous_boot_id": previous_boot,
                "rebooted": rebooted,
            });
            Some((RETURNED, "medium", details, since_ms))
        }
        _ => None,
    };
    let raised = count_of(
        db,
        RAISED_SINCE,
        &[text(device_id), int(time_ms.saturating_sub(3_600_000))],
    )?;
    let alert = match alert {
        Some((kind, ..)) if raised >= MAX_RAISED_PER_HOUR => {
            log::debug!(
                "{device_id} is {state}: {kind} not raised, {raised} alerts about it in the \
                 last hour already"
            );
            None
        }
        alert => alert,
    };
    let alert_id = match alert {
        Some((kind, severity, details, first_ms)) => {
            let seq = -i64::try_from(n).unwrap_or(i64::MAX);
            let details = details.to_string();
            let inserted = db.execute(
                INSERT_BACKEND_ALERT,
                &[
                    text(device_id),
                    Arg::Int(Some(seq)),
                    text(boot_id.as_deref().unwrap_or("")),
                    int(time_ms),
                    text(kind),
                    text(severity),
                    text(&details),
                    int(first_ms),
                    text(BACKEND_FORMAT),
                ],
            )? == 1;
            if inserted {
                count_alert(db, device_id, time_ms, severity, kind)?;
            }
            let mut id = None;
            db.query(
                ALERT_ID,
                &[text(device_id), Arg::Int(Some(seq))],
                &mut |r| {
                    id = get_opt_uint(r, 0)?;
                    Ok(())
                },
            )?;
            log::warn!(
                "{device_id} is {state} (was {}): {kind} raised",
                previous.unwrap_or("unknown")
            );
            id
        }
        None => None,
    };
    db.execute(
        SET_CURRENT,
        &[
            text(device_id),
            text(state),
            int(time_ms),
            Arg::Text(boot_id.as_deref()),
            int(n),
            status_time_ms.map_or(Arg::Int(None), int),
        ],
    )?;
    db.execute(
        INSERT_CHANGE,
        &[
            text(device_id),
            int(n),
            int(time_ms),
            text(state),
            Arg::Text(previous),
            Arg::Text(boot_id.as_deref()),
            Arg::Text(device.agent_version.as_deref()),
            alert_id.map_or(Arg::Int(None), int),
        ],
    )?;
    let kept = count_of(db, CHANGES_OF, &[text(device_id)])?;
    if kept > MAX_CHANGES_PER_DEVICE {
        db.execute(
            DELETE_OLDEST_CHANGES,
            &[text(device_id), int(kept - MAX_CHANGES_PER_DEVICE)],
        )?;
    }
    Ok(Some(PresenceChange {
        device_id: device_id.to_string(),
        n,
        time_ms,
        state: state.to_string(),
        previous: previous.map(str::to_string),
        boot_id,
        agent_version: device.agent_version,
        alert_id,
    }))
}

/// [`super::Store::presence_changes`].
pub(crate) fn changes(
    db: &mut dyn Db,
    device: Option<&str>,
    limit: u64,
) -> anyhow::Result<Vec<PresenceChange>> {
    rows(db, CHANGES, &[Arg::Text(device), int(limit)], |r| {
        Ok(PresenceChange {
            device_id: get_text(r, 0)?,
            n: get_uint(r, 1)?,
            time_ms: get_uint(r, 2)?,
            state: get_text(r, 3)?,
            previous: r.text(4)?,
            boot_id: r.text(5)?,
            agent_version: r.text(6)?,
            alert_id: get_opt_uint(r, 7)?,
        })
    })
}

/// Retention: the changes recorded before `before_ms`.
pub(crate) fn delete_before(db: &mut dyn Db, before_ms: u64) -> anyhow::Result<u64> {
    db.execute(DELETE_CHANGES, &[int(before_ms)])
}
