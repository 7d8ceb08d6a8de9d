//! The delivery state of the integrations (`crate::forward`), for both stores: one row per
//! receiver, by its name: the id of the last alert it acknowledged (its cursor), when it last
//! acknowledged a batch, and its last error. Kept in the store, so that a cursor survives a
//! restart of `serve` and the HTTP API of any `serve` sharing the store shows it.

use super::sql::{count_of, get_opt_uint, get_text, get_uint, int, rows, text, Arg, Db};
use super::ForwardRow;

/// The table of version 5.
pub(crate) const FORWARD_TABLES: &str = "
CREATE TABLE IF NOT EXISTS forward_cursors (
    name TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL,
    success_ms BIGINT,
    error TEXT,
    error_ms BIGINT
);
";

const CURSOR: &str = "SELECT last_id FROM forward_cursors WHERE name = ?1";

/// Starts a receiver at ?2 unless it has a cursor already.
const START: &str = "INSERT INTO forward_cursors (name, last_id) VALUES (?1, ?2)
     ON CONFLICT (name) DO NOTHING";

/// Never moves a cursor back: a batch acknowledged twice (by two `serve` sharing the store)
/// leaves the higher.
const ACKNOWLEDGED: &str = "UPDATE forward_cursors SET
     last_id = CASE WHEN last_id > ?2 THEN last_id ELSE ?2 END,
     success_ms = ?3, error = NULL, error_ms = NULL
     WHERE name = ?1";

const FAILED: &str = "UPDATE forward_cursors SET error = ?2, error_ms = ?3 WHERE name = ?1";

const ALL: &str =
    "SELECT name, last_id, success_ms, error, error_ms FROM forward_cursors ORDER BY name";

const BEHIND: &str = "SELECT count(*) FROM alerts WHERE id > ?1";

/// [`super::Store::forward_start`].
pub(super) fn start(db: &mut dyn Db, name: &str, from: u64) -> anyhow::Result<u64> {
    db.execute(START, &[text(name), int(from)])?;
    count_of(db, CURSOR, &[text(name)])
}

pub(super) fn acknowledged(
    db: &mut dyn Db,
    name: &str,
    last_id: u64,
    now_ms: u64,
) -> anyhow::Result<()> {
    db.execute(ACKNOWLEDGED, &[text(name), int(last_id), int(now_ms)])?;
    Ok(())
}

pub(super) fn failed(db: &mut dyn Db, name: &str, error: &str, now_ms: u64) -> anyhow::Result<()> {
    db.execute(FAILED, &[text(name), text(error), int(now_ms)])?;
    Ok(())
}

pub(super) fn all(db: &mut dyn Db) -> anyhow::Result<Vec<ForwardRow>> {
    rows(db, ALL, &[], |r| {
        Ok(ForwardRow {
            name: get_text(r, 0)?,
            last_id: get_uint(r, 1)?,
            success_ms: get_opt_uint(r, 2)?,
            error: r.text(3)?,
            error_ms: get_opt_uint(r, 4)?,
        })
    })
}

pub(super) fn behind(db: &mut dyn Db, after: u64) -> anyhow::Result<u64> {
    let args: [Arg; 1] = [int(after)];
    count_of(db, BEHIND, &args)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{pg_upgraded, sqlite_upgraded};
    use super::super::{PgStore, SqliteStore, Store};
    use picket_proto::{Alert, AlertKind, Details, Severity};

    fn alert(seq: u64) -> Alert {
        Alert {
            seq,
            boot_id: "b".into(),
            time_ms: seq,
            kind: AlertKind::UnknownExecutable,
            severity: Severity::High,
            rule: "executables".into(),
            path: Some(format!("/tmp/x{seq}")),
            details: Details(serde_json::json!({})),
            count: 1,
            first_ms: seq,
            last_ms: seq,
            process: None,
        }
    }

    /// Cursors start where asked once, move forward only, and keep the last error until a
    /// success.
    fn check_cursors(s: &mut dyn Store) {
        for seq in 1..=5 {
            s.insert_alert("gw-1", &alert(seq), "json", seq).unwrap();
        }
        assert_eq!(s.forward_start("siem", 0).unwrap(), 0);
        assert_eq!(s.forward_start("late", 5).unwrap(), 5);
        assert_eq!(s.alerts_behind(0).unwrap(), 5);
        s.forward_failed("siem", "connection refused", 10).unwrap();
        s.forward_acknowledged("siem", 3, 20).unwrap();
        // Started again (a restart): the cursor stays.
        assert_eq!(s.forward_start("siem", 0).unwrap(), 3);
        s.forward_failed("siem", "HTTP 500", 30).unwrap();
        // A batch acknowledged late by another process does not move it back.
        s.forward_acknowledged("siem", 2, 40).unwrap();
        assert_eq!(s.forward_start("siem", 0).unwrap(), 3);
        s.forward_failed("siem", "HTTP 503", 50).unwrap();
        let rows = s.forward_rows().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "late");
        assert_eq!((rows[0].last_id, rows[0].success_ms), (5, None));
        let siem = &rows[1];
        assert_eq!((siem.last_id, siem.success_ms), (3, Some(40)));
        assert_eq!(
            (siem.error.as_deref(), siem.error_ms),
            (Some("HTTP 503"), Some(50))
        );
        assert_eq!(s.alerts_behind(siem.last_id).unwrap(), 2);
    }

    #[test]
    fn sqlite_keeps_the_cursors_and_upgrades_version_4() {
        check_cursors(&mut SqliteStore::memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        let s = SqliteStore::open(&path).unwrap();
        let mut s = sqlite_upgraded(
            s,
            &path,
            "DROP TABLE forward_cursors; PRAGMA user_version = 4;",
        );
        check_cursors(&mut s);
    }

    #[test]
    fn postgres_keeps_the_cursors_and_upgrades_version_4() {
        let pg = picket_test_support::postgres::Postgres::start();
        check_cursors(&mut PgStore::connect(&pg.database("cursors")).unwrap());
        let params = pg.database("v4");
        let s = PgStore::connect(&params).unwrap();
        let mut s = pg_upgraded(
            s,
            &params,
            "DROP TABLE forward_cursors; UPDATE picket_schema SET version = 4;",
        );
        check_cursors(&mut s);
    }
}
