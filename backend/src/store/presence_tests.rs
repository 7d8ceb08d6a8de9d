//! The presence history and the backend's own alerts, on SQLite and on a throwaway
//! PostgreSQL; the upgrade of a store of version 4.

use super::presence::{BACKEND_FORMAT, RETURNED, SILENT};
use super::tests::{pg_upgraded, sqlite_upgraded};
use super::*;
use picket_proto::{AlertKind, Details, Presence, Severity};

const TIMEOUT: Duration = Duration::from_secs(60);

fn status(state: Presence, boot: &str, time_ms: u64) -> Status {
    Status {
        state,
        time_ms,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        policy_name: "base".into(),
        boot_id: boot.into(),
    }
}

fn alert(seq: u64) -> Alert {
    Alert {
        seq,
        boot_id: "boot-a".into(),
        time_ms: seq,
        kind: AlertKind::UnknownExecutable,
        severity: Severity::High,
        rule: "executables".into(),
        path: Some(format!("/tmp/x{seq}")),
        details: Details(serde_json::json!({})),
        count: 1,
        first_ms: 1,
        last_ms: 1,
        process: None,
    }
}

fn state(s: &mut dyn Store, device: &str, now_ms: u64) -> &'static str {
    s.devices(now_ms, TIMEOUT)
        .unwrap()
        .into_iter()
        .find(|d| d.device_id == device)
        .unwrap()
        .state
}

/// The backend's alerts of a device, oldest first: (kind, severity, details).
fn backend_alerts(s: &mut dyn Store, device: &str) -> Vec<(String, String, Value)> {
    let mut rows: Vec<_> = s
        .stored_alerts(&AlertFilter {
            device: Some(device.into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .filter(|a| a.alert.format == BACKEND_FORMAT)
        .map(|a| (a.alert.kind, a.alert.severity, a.alert.details))
        .collect();
    rows.reverse();
    rows
}

/// (state, previous, raised an alert) of a device's changes, oldest first.
fn history(s: &mut dyn Store, device: &str) -> Vec<(String, Option<String>, bool)> {
    let mut h: Vec<_> = s
        .presence_changes(Some(device), 100)
        .unwrap()
        .into_iter()
        .map(|c| (c.state, c.previous, c.alert_id.is_some()))
        .collect();
    h.reverse();
    h
}

fn change(state: &str, previous: Option<&str>, alert: bool) -> (String, Option<String>, bool) {
    (state.into(), previous.map(str::to_string), alert)
}

fn a_kill_is_told_from_a_clean_stop(s: &mut dyn Store) {
    let d = "gw-1";
    s.record_status(d, &status(Presence::Online, "boot-a", 1), 1_000)
        .unwrap();
    assert_eq!(state(s, d, 1_000), "online");
    // A clean stop and a restart: offline, then online, and no alert.
    s.record_status(d, &status(Presence::Offline, "boot-a", 2), 2_000)
        .unwrap();
    assert_eq!(state(s, d, 2_000), "offline");
    s.record_status(d, &status(Presence::Online, "boot-a", 3), 3_000)
        .unwrap();
    assert!(backend_alerts(s, d).is_empty());
    // Killed: the last will says lost, and the backend raises its alert.
    s.record_status(d, &status(Presence::Lost, "boot-a", 3), 4_000)
        .unwrap();
    assert_eq!(state(s, d, 4_000), "lost");
    // The same will again (the broker hands retained statuses over at every subscription):
    // nothing more.
    s.record_status(d, &status(Presence::Lost, "boot-a", 3), 4_500)
        .unwrap();
    let alerts = backend_alerts(s, d);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (kind, severity, details) = &alerts[0];
    assert_eq!((kind.as_str(), severity.as_str()), (SILENT, "high"));
    assert_eq!(details["state"], "lost");
    assert_eq!(details["previous"], "online");
    assert_eq!(details["last_seen_ms"], 4_000);
    // Back, after a reboot (another boot id): the return says so.
    s.record_status(d, &status(Presence::Online, "boot-b", 5), 10_000)
        .unwrap();
    assert_eq!(state(s, d, 10_000), "online");
    let alerts = backend_alerts(s, d);
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let (kind, severity, details) = &alerts[1];
    assert_eq!((kind.as_str(), severity.as_str()), (RETURNED, "medium"));
    assert_eq!(details["previous"], "lost");
    assert_eq!(details["silent_ms"], 6_000);
    assert_eq!(details["previous_boot_id"], "boot-a");
    assert_eq!(details["rebooted"], true);
    assert_eq!(
        history(s, d),
        [
            change("online", None, false),
            change("offline", Some("online"), false),
            change("online", Some("offline"), false),
            change("lost", Some("online"), true),
            change("online", Some("lost"), true),
        ]
    );
    // The alert each change raised is the one stored, found by its id.
    let changes = s.presence_changes(Some(d), 10).unwrap();
    let returned = s.alert(changes[0].alert_id.unwrap()).unwrap().unwrap();
    assert_eq!(returned.alert.kind, RETURNED);
    assert_eq!(returned.alert.boot_id, "boot-b");
    assert_eq!(returned.alert.seq, changes[0].n);
    assert_eq!(returned.alert.received_ms, 10_000);
    // Found by the filters of every alert, counted in the overview, and triaged as any.
    let silent = s
        .stored_alerts(&AlertFilter {
            kind: Some(SILENT.into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(silent.len(), 1);
    assert_eq!(silent[0].alert.rule, "presence");
    assert_eq!(silent[0].alert.seq, changes[1].n);
    let counts: u64 = s.severity_counts().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(counts, 2);
    assert!(s
        .set_triage(silent[0].id, "acknowledged", "a test", "ann", 11_000)
        .unwrap()
        .is_some());
    // A killed agent whose restart is in the same boot.
    s.record_status(d, &status(Presence::Lost, "boot-b", 5), 12_000)
        .unwrap();
    s.record_status(d, &status(Presence::Online, "boot-b", 6), 13_000)
        .unwrap();
    let alerts = backend_alerts(s, d);
    assert_eq!(alerts.len(), 4);
    assert_eq!(alerts[3].2["rebooted"], false);
    // Another device is untouched.
    s.record_status("gw-2", &status(Presence::Online, "x", 1), 13_000)
        .unwrap();
    assert!(backend_alerts(s, "gw-2").is_empty());
}

fn a_timeout_is_raised_once_and_ends_with_what_arrives(s: &mut dyn Store) {
    let d = "gw-3";
    s.record_status(d, &status(Presence::Online, "boot-a", 7), 1_000)
        .unwrap();
    // Within the timeout: nothing.
    assert!(s.check_timeouts(61_000, TIMEOUT).unwrap().is_empty());
    // Beyond it: once, however often it is checked.
    let changes = s.check_timeouts(61_001, TIMEOUT).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].state.as_str(), changes[0].previous.as_deref()),
        ("timed_out", Some("online"))
    );
    assert!(changes[0].alert_id.is_some());
    for now in [62_000, 100_000, 500_000] {
        assert!(s.check_timeouts(now, TIMEOUT).unwrap().is_empty());
    }
    assert_eq!(state(s, d, 500_000), "timed_out");
    // The retained status delivered again to a backend that subscribes again is not the
    // device's return.
    s.record_status(d, &status(Presence::Online, "boot-a", 7), 501_000)
        .unwrap();
    assert_eq!(state(s, d, 501_000), "timed_out");
    assert_eq!(backend_alerts(s, d).len(), 1);
    // Then the broker gives up on the connection: lost, but no second alert for one silence.
    s.record_status(d, &status(Presence::Lost, "boot-a", 7), 502_000)
        .unwrap();
    assert_eq!(state(s, d, 502_000), "lost");
    assert_eq!(backend_alerts(s, d).len(), 1);
    // Back.
    s.record_status(d, &status(Presence::Online, "boot-a", 9), 503_000)
        .unwrap();
    let alerts = backend_alerts(s, d);
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[1].0, RETURNED);
    assert_eq!(alerts[1].2["previous"], "lost");
    // Timed out again, then a heartbeat (or any message) arrives: online, and said so.
    assert_eq!(s.check_timeouts(600_000, TIMEOUT).unwrap().len(), 1);
    s.insert_alert(d, &alert(1), "postcard", 601_000).unwrap();
    assert_eq!(state(s, d, 601_000), "online");
    let alerts = backend_alerts(s, d);
    assert_eq!(alerts.len(), 4);
    assert_eq!(alerts[2].2["state"], "timed_out");
    assert_eq!(alerts[3].2["previous"], "timed_out");
    assert_eq!(alerts[3].2["silent_ms"], 1_000);
    // A device that stopped cleanly does not time out.
    s.record_status("gw-4", &status(Presence::Offline, "b", 1), 1_000)
        .unwrap();
    assert!(s
        .check_timeouts(1_000_000, TIMEOUT)
        .unwrap()
        .iter()
        .all(|c| c.device_id != "gw-4"));
}

fn the_backend_alerts_are_in_no_gap_quota_or_count_of_the_device(s: &mut dyn Store) {
    let d = "gw-5";
    for seq in [1, 2] {
        s.insert_alert(d, &alert(seq), "postcard", 1_000 + seq)
            .unwrap();
    }
    s.record_status(d, &status(Presence::Lost, "b", 1), 2_000)
        .unwrap();
    s.record_status(d, &status(Presence::Online, "b", 2), 3_000)
        .unwrap();
    for seq in [3, 4] {
        s.insert_alert(d, &alert(seq), "postcard", 4_000 + seq)
            .unwrap();
    }
    assert_eq!(backend_alerts(s, d).len(), 2);
    assert!(s.gaps(Some(d)).unwrap().is_empty());
    let device = s.devices(5_000, TIMEOUT).unwrap();
    assert_eq!(device[0].alerts, 4, "the device's own alerts");
    // Over the quota: the device's oldest go, the backend's stay.
    assert_eq!(s.enforce_quota(d, 2).unwrap(), 2);
    let kept: Vec<(String, u64)> = s
        .alerts(&AlertFilter {
            device: Some(d.into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|a| (a.format, a.seq))
        .collect();
    assert_eq!(
        kept,
        [
            ("postcard".to_string(), 4),
            ("postcard".to_string(), 3),
            (BACKEND_FORMAT.to_string(), 2),
            (BACKEND_FORMAT.to_string(), 1),
        ]
    );
    assert_eq!(s.devices(5_000, TIMEOUT).unwrap()[0].alerts, 2);
    // Retention: the backend's alerts and the changes go with their time, the device's count
    // takes off only its own.
    assert_eq!(s.delete_before(2_500).unwrap(), 1);
    assert_eq!(s.devices(5_000, TIMEOUT).unwrap()[0].alerts, 2);
    assert_eq!(history(s, d), [change("online", Some("lost"), true)]);
    assert_eq!(s.delete_before(10_000).unwrap(), 3);
    assert_eq!(s.devices(10_000, TIMEOUT).unwrap()[0].alerts, 0);
    assert!(history(s, d).is_empty());
    assert!(s.severity_counts().unwrap().iter().all(|(_, n)| *n == 0));
}

fn changes_are_bounded_per_device(s: &mut dyn Store) {
    let d = "gw-6";
    let n = presence::MAX_CHANGES_PER_DEVICE + 10;
    for i in 0..n {
        let state = if i % 2 == 0 {
            Presence::Online
        } else {
            Presence::Offline
        };
        s.record_status(d, &status(state, "b", i), 1_000 + i)
            .unwrap();
    }
    let kept = s.presence_changes(Some(d), 10_000).unwrap();
    assert_eq!(kept.len() as u64, presence::MAX_CHANGES_PER_DEVICE);
    assert_eq!(kept[0].n, n, "the newest kept");
}

fn a_flapping_device_raises_a_bounded_number_of_alerts(s: &mut dyn Store) {
    let d = "gw-7";
    let hour = 3_600_000;
    // Lost and back 50 times in a minute: every change recorded, a dozen alerts.
    for i in 0..50 {
        let t = 1_000_000 + i * 1_000;
        s.record_status(d, &status(Presence::Online, "b", t), t)
            .unwrap();
        s.record_status(d, &status(Presence::Lost, "b", t), t + 500)
            .unwrap();
    }
    assert_eq!(s.presence_changes(Some(d), 1000).unwrap().len(), 100);
    let raised = backend_alerts(s, d);
    assert_eq!(raised.len() as u64, presence::MAX_RAISED_PER_HOUR);
    assert_eq!(raised[0].0, "device_silent");
    // An hour on, a new silence is raised again.
    let t = 1_000_000 + 50_000 + hour;
    s.record_status(d, &status(Presence::Online, "b", t), t)
        .unwrap();
    s.record_status(d, &status(Presence::Lost, "b", t), t + 500)
        .unwrap();
    let raised = backend_alerts(s, d);
    assert_eq!(raised.len() as u64, presence::MAX_RAISED_PER_HOUR + 2);
}

/// A last will is made at the agent's start: the policy it names may be older than the one
/// the device said it put in force since, which stays recorded.
fn a_last_will_does_not_take_the_policy_back(s: &mut dyn Store) {
    let d = "gw-8";
    s.record_status(d, &status(Presence::Online, "b", 1), 1_000)
        .unwrap();
    let newer = Status {
        policy_serial: 4,
        policy_name: "newer".into(),
        ..status(Presence::Online, "b", 2)
    };
    s.record_status(d, &newer, 2_000).unwrap();
    s.record_status(d, &status(Presence::Lost, "b", 1), 3_000)
        .unwrap();
    let row = s.devices(3_000, TIMEOUT).unwrap().remove(0);
    assert_eq!(row.state, "lost");
    assert_eq!(
        (row.policy_serial, row.policy_name.as_deref()),
        (Some(4), Some("newer"))
    );
}

type Check = (&'static str, fn(&mut dyn Store));

const CHECKS: &[Check] = &[
    (
        "a_kill_is_told_from_a_clean_stop",
        a_kill_is_told_from_a_clean_stop,
    ),
    (
        "a_timeout_is_raised_once_and_ends_with_what_arrives",
        a_timeout_is_raised_once_and_ends_with_what_arrives,
    ),
    (
        "the_backend_alerts_are_in_no_gap_quota_or_count_of_the_device",
        the_backend_alerts_are_in_no_gap_quota_or_count_of_the_device,
    ),
    (
        "changes_are_bounded_per_device",
        changes_are_bounded_per_device,
    ),
    (
        "a_flapping_device_raises_a_bounded_number_of_alerts",
        a_flapping_device_raises_a_bounded_number_of_alerts,
    ),
    (
        "a_last_will_does_not_take_the_policy_back",
        a_last_will_does_not_take_the_policy_back,
    ),
];

/// A store of version 4: one device online, one offline, one never heard a status from.
fn version_4_contents(s: &mut dyn Store) {
    s.record_status("gw-on", &status(Presence::Online, "b", 1), 1_000)
        .unwrap();
    s.record_status("gw-off", &status(Presence::Offline, "b", 1), 2_000)
        .unwrap();
    s.insert_alert("gw-none", &alert(1), "postcard", 3_000)
        .unwrap();
    s.record_status("gw-hung", &status(Presence::Online, "b", 1), 1_500)
        .unwrap();
}

/// Drops what version 5 added (the same statements on both databases).
const BACK_TO_4: &str = "DROP TABLE presence_changes; DROP TABLE presence;";

/// After the upgrade: each device's presence as its status says, no change recorded, and the
/// presence followed from there.
fn check_upgraded_from_version_4(s: &mut dyn Store) {
    assert!(s.presence_changes(None, 100).unwrap().is_empty());
    assert_eq!(state(s, "gw-on", 3_000), "online");
    assert_eq!(state(s, "gw-off", 3_000), "offline");
    assert_eq!(state(s, "gw-none", 3_000), "unknown");
    // The statuses delivered again change nothing.
    s.record_status("gw-on", &status(Presence::Online, "b", 1), 4_000)
        .unwrap();
    s.record_status("gw-off", &status(Presence::Offline, "b", 1), 4_000)
        .unwrap();
    assert!(s.presence_changes(None, 100).unwrap().is_empty());
    s.record_status("gw-on", &status(Presence::Lost, "b", 1), 5_000)
        .unwrap();
    assert_eq!(history(s, "gw-on"), [change("lost", Some("online"), true)]);
    // A device whose presence the upgrade took over (no status time recorded) times out; its
    // retained status, delivered again, is not its return.
    let timed_out = s.check_timeouts(200_000, TIMEOUT).unwrap();
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    s.record_status("gw-hung", &status(Presence::Online, "b", 1), 201_000)
        .unwrap();
    assert_eq!(
        history(s, "gw-hung"),
        [change("timed_out", Some("online"), true)]
    );
}

#[test]
fn sqlite_presence_checks() {
    for (name, check) in CHECKS {
        eprintln!("sqlite: {name}");
        check(&mut SqliteStore::memory().unwrap());
    }
}

#[test]
fn a_sqlite_store_of_version_4_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    let mut s = SqliteStore::open(&path).unwrap();
    version_4_contents(&mut s);
    let mut s = sqlite_upgraded(s, &path, &format!("{BACK_TO_4} PRAGMA user_version = 4;"));
    check_upgraded_from_version_4(&mut s);
}

#[test]
fn postgres_presence_checks_and_upgrade() {
    let pg = picket_test_support::postgres::Postgres::start();
    for (i, (name, check)) in CHECKS.iter().enumerate() {
        eprintln!("postgres: {name}");
        let params = pg.database(&format!("presence{i}"));
        check(&mut PgStore::connect(&params).unwrap());
    }
    let params = pg.database("upgrade4");
    let mut s = PgStore::connect(&params).unwrap();
    version_4_contents(&mut s);
    let mut s = pg_upgraded(
        s,
        &params,
        &format!("{BACK_TO_4} UPDATE picket_schema SET version = 4;"),
    );
    check_upgraded_from_version_4(&mut s);
}
