//! The statements of the HTTP API's own tables (users, sessions, API tokens, triage, audit)
//! and of the alert reads by id, for both stores (see [`super::sql`]).

use super::sql::{
    count_of, get_opt_uint, get_text, get_uint, int, rows, stored_alert, Arg, Db, ALERT_COLUMNS,
};
use super::{AlertCount, AuditRow, SessionRow, StoredAlert, Triage, TriageChange, UserRow};

fn text(v: &str) -> Arg<'_> {
    Arg::Text(Some(v))
}

/// The hours' counts, from those kept per device (`hour_ms` is the start of the hour).
pub(super) const ALERT_COUNTS: &str = "SELECT hour_ms, severity, kind, CAST(sum(alerts) AS BIGINT)
     FROM alert_hours WHERE hour_ms >= ?1
     GROUP BY hour_ms, severity, kind HAVING sum(alerts) > 0
     ORDER BY hour_ms, severity, kind";

pub(super) const SEVERITY_COUNTS: &str =
    "SELECT severity, CAST(sum(alerts) AS BIGINT) FROM alert_totals
     GROUP BY severity HAVING sum(alerts) > 0 ORDER BY severity";

const LAST_ALERT_ID: &str = "SELECT COALESCE(max(id), 0) FROM alerts";

const ADD_USER: &str =
    "INSERT INTO users (name, role, password, created_ms) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (name) DO NOTHING";

const USER: &str = "SELECT name, role, password, created_ms FROM users WHERE name = ?1";

const USERS: &str = "SELECT name, role, password, created_ms FROM users ORDER BY name";

const REMOVE_USER: &str = "DELETE FROM users WHERE name = ?1";
const REMOVE_USER_SESSIONS: &str = "DELETE FROM sessions WHERE user_name = ?1";
const REMOVE_USER_TOKENS: &str = "DELETE FROM api_tokens WHERE user_name = ?1";

const ADD_TOKEN: &str =
    "INSERT INTO api_tokens (sha256, user_name, created_ms) VALUES (?1, ?2, ?3)";

const TOKEN_USER: &str = "SELECT u.name, u.role FROM api_tokens k
     JOIN users u ON u.name = k.user_name WHERE k.sha256 = ?1";

const ADD_SESSION: &str =
    "INSERT INTO sessions (sha256, user_name, csrf, created_ms, last_ms) VALUES (?1, ?2, ?3, ?4, ?4)";

const SESSION: &str = "SELECT u.name, u.role, s.csrf, s.created_ms, s.last_ms FROM sessions s
     JOIN users u ON u.name = s.user_name WHERE s.sha256 = ?1";

const TOUCH_SESSION: &str = "UPDATE sessions SET last_ms = ?2 WHERE sha256 = ?1 AND last_ms < ?2";

const DELETE_SESSION: &str = "DELETE FROM sessions WHERE sha256 = ?1";

const EXPIRE_SESSIONS: &str = "DELETE FROM sessions WHERE last_ms < ?1 OR created_ms < ?2";

const ALERT_EXISTS: &str = "SELECT count(*) FROM alerts WHERE id = ?1";

const SET_TRIAGE: &str = "INSERT INTO triage (alert_id, state, note, by_user, time_ms)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (alert_id) DO UPDATE SET state = excluded.state, note = excluded.note,
         by_user = excluded.by_user, time_ms = excluded.time_ms";

const AUDIT: &str = "INSERT INTO audit (time_ms, user_name, action, target, detail, alert_id)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const AUDIT_LOG: &str = "SELECT time_ms, user_name, action, target, detail FROM audit
     ORDER BY id DESC LIMIT ?1";

/// The alert's current triage, for each audited change after ?1.
const TRIAGE_CHANGES: &str = "SELECT au.id, t.alert_id, t.state, t.note, t.by_user, t.time_ms
     FROM audit au JOIN triage t ON t.alert_id = au.alert_id
     WHERE au.id > ?1 AND au.action = 'triage' ORDER BY au.id LIMIT ?2";

const LAST_AUDIT_ID: &str = "SELECT COALESCE(max(id), 0) FROM audit";

/// [`super::Store::alert`].
pub(super) fn alert(db: &mut dyn Db, id: u64) -> anyhow::Result<Option<StoredAlert>> {
    let sql = format!("{ALERT_COLUMNS} WHERE a.id = ?1");
    Ok(rows(db, &sql, &[int(id)], stored_alert)?.pop())
}

/// [`super::Store::alerts_after`].
pub(super) fn alerts_after(
    db: &mut dyn Db,
    after: u64,
    limit: u64,
) -> anyhow::Result<Vec<StoredAlert>> {
    let sql = format!("{ALERT_COLUMNS} WHERE a.id > ?1 ORDER BY a.id LIMIT ?2");
    rows(db, &sql, &[int(after), int(limit)], stored_alert)
}

pub(super) fn last_alert_id(db: &mut dyn Db) -> anyhow::Result<u64> {
    count_of(db, LAST_ALERT_ID, &[])
}

pub(super) fn alert_counts(db: &mut dyn Db, since_ms: u64) -> anyhow::Result<Vec<AlertCount>> {
    rows(db, ALERT_COUNTS, &[int(since_ms)], |r| {
        Ok(AlertCount {
            bucket_ms: get_uint(r, 0)?,
            severity: get_text(r, 1)?,
            kind: get_text(r, 2)?,
            count: get_uint(r, 3)?,
        })
    })
}

pub(super) fn severity_counts(db: &mut dyn Db) -> anyhow::Result<Vec<(String, u64)>> {
    rows(db, SEVERITY_COUNTS, &[], |r| {
        Ok((get_text(r, 0)?, get_uint(r, 1)?))
    })
}

pub(super) fn add_user(
    db: &mut dyn Db,
    name: &str,
    role: &str,
    password_hash: &str,
    now_ms: u64,
) -> anyhow::Result<bool> {
    Ok(db.execute(
        ADD_USER,
        &[text(name), text(role), text(password_hash), int(now_ms)],
    )? == 1)
}

fn user_row(r: &dyn super::sql::Columns) -> anyhow::Result<UserRow> {
    Ok(UserRow {
        name: get_text(r, 0)?,
        role: get_text(r, 1)?,
        password_hash: get_text(r, 2)?,
        created_ms: get_uint(r, 3)?,
    })
}

pub(super) fn user(db: &mut dyn Db, name: &str) -> anyhow::Result<Option<UserRow>> {
    Ok(rows(db, USER, &[text(name)], user_row)?.pop())
}

pub(super) fn users(db: &mut dyn Db) -> anyhow::Result<Vec<UserRow>> {
    rows(db, USERS, &[], user_row)
}

pub(super) fn remove_user(db: &mut dyn Db, name: &str) -> anyhow::Result<bool> {
    db.execute(REMOVE_USER_SESSIONS, &[text(name)])?;
    db.execute(REMOVE_USER_TOKENS, &[text(name)])?;
    Ok(db.execute(REMOVE_USER, &[text(name)])? == 1)
}

pub(super) fn add_token(
    db: &mut dyn Db,
    sha256: &str,
    user: &str,
    now_ms: u64,
) -> anyhow::Result<()> {
    db.execute(ADD_TOKEN, &[text(sha256), text(user), int(now_ms)])?;
    Ok(())
}

pub(super) fn token_user(
    db: &mut dyn Db,
    sha256: &str,
) -> anyhow::Result<Option<(String, String)>> {
    Ok(rows(db, TOKEN_USER, &[text(sha256)], |r| {
        Ok((get_text(r, 0)?, get_text(r, 1)?))
    })?
    .pop())
}

pub(super) fn add_session(
    db: &mut dyn Db,
    sha256: &str,
    user: &str,
    csrf: &str,
    now_ms: u64,
) -> anyhow::Result<()> {
    db.execute(
        ADD_SESSION,
        &[text(sha256), text(user), text(csrf), int(now_ms)],
    )?;
    Ok(())
}

pub(super) fn session(db: &mut dyn Db, sha256: &str) -> anyhow::Result<Option<SessionRow>> {
    Ok(rows(db, SESSION, &[text(sha256)], |r| {
        Ok(SessionRow {
            user: get_text(r, 0)?,
            role: get_text(r, 1)?,
            csrf: get_text(r, 2)?,
            created_ms: get_uint(r, 3)?,
            last_ms: get_uint(r, 4)?,
        })
    })?
    .pop())
}

pub(super) fn touch_session(db: &mut dyn Db, sha256: &str, now_ms: u64) -> anyhow::Result<()> {
    db.execute(TOUCH_SESSION, &[text(sha256), int(now_ms)])?;
    Ok(())
}

pub(super) fn delete_session(db: &mut dyn Db, sha256: &str) -> anyhow::Result<bool> {
    Ok(db.execute(DELETE_SESSION, &[text(sha256)])? == 1)
}

pub(super) fn expire_sessions(
    db: &mut dyn Db,
    idle_before_ms: u64,
    created_before_ms: u64,
) -> anyhow::Result<u64> {
    db.execute(
        EXPIRE_SESSIONS,
        &[int(idle_before_ms), int(created_before_ms)],
    )
}

pub(super) fn set_triage(
    db: &mut dyn Db,
    alert_id: u64,
    state: &str,
    note: &str,
    by: &str,
    now_ms: u64,
) -> anyhow::Result<Option<Triage>> {
    if count_of(db, ALERT_EXISTS, &[int(alert_id)])? == 0 {
        return Ok(None);
    }
    db.execute(
        SET_TRIAGE,
        &[
            int(alert_id),
            text(state),
            text(note),
            text(by),
            int(now_ms),
        ],
    )?;
    let entry = AuditRow {
        time_ms: now_ms,
        user: by.into(),
        action: "triage".into(),
        target: alert_id.to_string(),
        detail: if note.is_empty() {
            state.to_string()
        } else {
            format!("{state}: {note}")
        },
    };
    audit(db, &entry, Some(alert_id))?;
    Ok(Some(Triage {
        state: state.into(),
        note: note.into(),
        by: by.into(),
        time_ms: now_ms,
    }))
}

pub(super) fn audit(db: &mut dyn Db, e: &AuditRow, alert_id: Option<u64>) -> anyhow::Result<()> {
    db.execute(
        AUDIT,
        &[
            int(e.time_ms),
            text(&e.user),
            text(&e.action),
            text(&e.target),
            text(&e.detail),
            alert_id.map_or(Arg::Int(None), int),
        ],
    )?;
    Ok(())
}

pub(super) fn audit_log(db: &mut dyn Db, limit: u64) -> anyhow::Result<Vec<AuditRow>> {
    rows(db, AUDIT_LOG, &[int(limit)], |r| {
        Ok(AuditRow {
            time_ms: get_uint(r, 0)?,
            user: get_text(r, 1)?,
            action: get_text(r, 2)?,
            target: get_text(r, 3)?,
            detail: get_text(r, 4)?,
        })
    })
}

pub(super) fn triage_changes(
    db: &mut dyn Db,
    after: u64,
    limit: u64,
) -> anyhow::Result<Vec<TriageChange>> {
    rows(db, TRIAGE_CHANGES, &[int(after), int(limit)], |r| {
        Ok(TriageChange {
            audit_id: get_uint(r, 0)?,
            alert_id: get_uint(r, 1)?,
            triage: Triage {
                state: get_text(r, 2)?,
                note: get_text(r, 3)?,
                by: get_text(r, 4)?,
                time_ms: get_opt_uint(r, 5)?.unwrap_or(0),
            },
        })
    })
}

pub(super) fn last_audit_id(db: &mut dyn Db) -> anyhow::Result<u64> {
    count_of(db, LAST_AUDIT_ID, &[])
}
