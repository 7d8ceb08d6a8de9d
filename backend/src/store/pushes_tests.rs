//! The bundles pushed to each device, on SQLite and on a throwaway PostgreSQL; the upgrade of a
//! store of version 5.

use super::tests::{pg_upgraded, sqlite_upgraded};
use super::*;
use picket_proto::PolicyOutcome;

fn result(sha: &str, time_ms: u64) -> PolicyResult {
    PolicyResult {
        time_ms,
        bundle_sha256: sha.into(),
        outcome: PolicyOutcome::Unchanged { serial: 4 },
    }
}

/// A push is recorded for each of its devices, and only for them and that bundle.
fn check_pushes(s: &mut dyn Store) {
    let devices = ["gw-1".to_string(), "gw-2".to_string()];
    assert!(!s.policy_pushed("gw-1", "aa").unwrap());
    s.record_push(&devices, "aa", Some(("base", 4)), 10)
        .unwrap();
    assert!(s.policy_pushed("gw-1", "aa").unwrap());
    assert!(s.policy_pushed("gw-2", "aa").unwrap());
    assert!(!s.policy_pushed("gw-3", "aa").unwrap());
    assert!(!s.policy_pushed("gw-1", "bb").unwrap());
    // A bundle that does not read as one (no name, no serial), and the same pushed again.
    s.record_push(&devices[..1], "bb", None, 20).unwrap();
    s.record_push(&devices[..1], "bb", None, 30).unwrap();
    assert!(s.policy_pushed("gw-1", "bb").unwrap());
    assert!(!s.policy_pushed("gw-2", "bb").unwrap());
    // Retention leaves them: the bundle retained for a device may be old.
    s.delete_before(1_000_000).unwrap();
    assert!(s.policy_pushed("gw-1", "aa").unwrap());
}

#[test]
fn sqlite_records_the_pushes_within_their_bound() {
    let mut s = SqliteStore::memory().unwrap();
    check_pushes(&mut s);
    // Beyond the bound, the device's oldest are forgotten; the newest stays.
    let gw = ["gw-9".to_string()];
    for i in 0..=pushes::MAX_PUSHES_PER_DEVICE {
        s.record_push(&gw, &format!("{i:064x}"), None, 100 + i)
            .unwrap();
    }
    assert!(!s.policy_pushed("gw-9", &format!("{:064x}", 0)).unwrap());
    assert!(s.policy_pushed("gw-9", &format!("{:064x}", 1)).unwrap());
    let newest = format!("{:064x}", pushes::MAX_PUSHES_PER_DEVICE);
    assert!(s.policy_pushed("gw-9", &newest).unwrap());
    // Another device's are untouched.
    assert!(s.policy_pushed("gw-1", "aa").unwrap());
}

/// A store of version 5: gw-1 answered two bundles, gw-2 one.
fn version_5_contents(s: &mut dyn Store) {
    s.insert_policy_result("gw-1", &result("aa", 1), 1_000)
        .unwrap();
    s.insert_policy_result("gw-1", &result("aa", 2), 2_000)
        .unwrap();
    s.insert_policy_result("gw-1", &result("bb", 3), 3_000)
        .unwrap();
    s.insert_policy_result("gw-2", &result("cc", 1), 1_000)
        .unwrap();
}

const BACK_TO_5: &str = "DROP TABLE policy_pushes;";

/// After the upgrade: the bundles of the results stored are taken as pushed to their devices,
/// no other; pushes are recorded from there.
fn check_upgraded_from_version_5(s: &mut dyn Store) {
    assert!(s.policy_pushed("gw-1", "aa").unwrap());
    assert!(s.policy_pushed("gw-1", "bb").unwrap());
    assert!(s.policy_pushed("gw-2", "cc").unwrap());
    assert!(!s.policy_pushed("gw-2", "aa").unwrap());
    assert!(!s.policy_pushed("gw-1", "cc").unwrap());
    s.record_push(&["gw-2".to_string()], "aa", None, 5_000)
        .unwrap();
    assert!(s.policy_pushed("gw-2", "aa").unwrap());
}

#[test]
fn a_sqlite_store_of_version_5_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.db");
    let mut s = SqliteStore::open(&path).unwrap();
    version_5_contents(&mut s);
    let mut s = sqlite_upgraded(s, &path, &format!("{BACK_TO_5} PRAGMA user_version = 5;"));
    check_upgraded_from_version_5(&mut s);
}

#[test]
fn postgres_records_the_pushes_and_upgrades_version_5() {
    let pg = picket_test_support::postgres::Postgres::start();
    check_pushes(&mut PgStore::connect(&pg.database("pushes")).unwrap());
    let params = pg.database("upgrade5");
    let mut s = PgStore::connect(&params).unwrap();
    version_5_contents(&mut s);
    let mut s = pg_upgraded(
        s,
        &params,
        &format!("{BACK_TO_5} UPDATE picket_schema SET version = 5;"),
    );
    check_upgraded_from_version_5(&mut s);
}
