//! The checks every store passes, run on SQLite and on a throwaway PostgreSQL; SQLite's query
//! plans and schema upgrades.

use super::sql::{alerts_query, QueryArg};
use super::*;
use picket_proto::{
    AlertCounters, AlertKind, Details, PolicyOutcome, Presence, ProcessContext, SensorCounters,
    Severity,
};

fn alert(seq: u64) -> Alert {
    Alert {
        seq,
        boot_id: "boot".into(),
        time_ms: 1000 + seq,
        kind: if seq.is_multiple_of(2) {
            AlertKind::UnknownExecutable
        } else {
            AlertKind::UnexpectedConnection
        },
        severity: if seq.is_multiple_of(2) {
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
    // An executable that could not be verified: kind, severity and details survive, and it is
    // found by its kind.
    let unverified = Alert {
        kind: AlertKind::UnverifiedExecutable,
        severity: Severity::Medium,
        path: Some("/usr/bin/awk".into()),
        details: Details(serde_json::json!({
            "expected": "ab12", "reason": "larger than 268435456 bytes, not hashed"
        })),
        ..alert(2)
    };
    assert!(s.insert_alert("gw-3", &unverified, "json", 13).unwrap());
    let rows = s
        .alerts(&AlertFilter {
            kind: Some("unverified_executable".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        (row.kind.as_str(), row.severity.as_str()),
        ("unverified_executable", "medium")
    );
    assert_eq!(row.details["expected"], "ab12");
    assert_eq!(
        row.details["reason"],
        "larger than 268435456 bytes, not hashed"
    );
    assert_eq!(row.path.as_deref(), Some("/usr/bin/awk"));
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

/// Alerts received at the same time come newest stored first (by id).
fn ties_are_ordered_by_id_descending(s: &mut dyn Store) {
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
            ("gw-1".into(), 2),
            ("gw-2".into(), 1),
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
        exec_unverified: None,
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
                reset: false,
                rate_limited: 0,
            },
            Gap {
                device_id: "gw-1".into(),
                first_missing: 9,
                last_missing: 9,
                missing: 1,
                restart: false,
                reset: false,
                rate_limited: 0,
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
    // The device's state was lost: a new counter far away, and one just short of that far.
    let reset = 129 + picket_proto::SEQ_RESET_JUMP;
    for seq in [reset, reset + picket_proto::SEQ_RESET_JUMP - 1] {
        s.insert_alert("gw-1", &alert(seq), "postcard", 4).unwrap();
    }
    let gaps = s.gaps(Some("gw-1")).unwrap();
    assert_eq!(gaps.len(), 5);
    assert_eq!(
        (gaps[3].first_missing, gaps[3].last_missing, gaps[3].missing),
        (130, reset - 1, 0)
    );
    assert!(gaps[3].reset && !gaps[3].restart);
    assert_eq!(gaps[4].missing, picket_proto::SEQ_RESET_JUMP - 2);
    assert!(!gaps[4].reset);
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
        exec_unverified: Some(7),
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
    assert_eq!(c["exec_unverified"], 7);
    // An older agent does not count unverified execs: unknown, not zero.
    s.record_heartbeat(
        "gw-1",
        &Heartbeat {
            time_ms: 10,
            exec_unverified: None,
            ..hb
        },
        50_001,
    )
    .unwrap();
    let d = &s.devices(100_000, timeout).unwrap()[0];
    let c = d.counters.as_ref().unwrap();
    assert_eq!(c["time_ms"], 10);
    assert!(c["exec_unverified"].is_null());
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
    // A device sending results of its own invention keeps its newest only.
    for i in 0..MAX_POLICY_RESULTS_PER_DEVICE + 5 {
        let result = PolicyResult {
            time_ms: 100 + i,
            bundle_sha256: format!("{i:x}"),
            outcome: PolicyOutcome::Refused {
                reason: "forged".into(),
            },
        };
        assert!(s.insert_policy_result("gw-2", &result, 10 + i).unwrap());
    }
    let rows = s.policy_results(Some("gw-2")).unwrap();
    assert_eq!(rows.len() as u64, MAX_POLICY_RESULTS_PER_DEVICE);
    assert_eq!(rows.last().unwrap().time_ms, 105, "the 5 oldest went");
    assert_eq!(s.policy_results(Some("gw-1")).unwrap().len(), 1);
    // What the live events read: from a time received on, oldest first.
    let since = s.policy_results_since(7, 3).unwrap();
    let got: Vec<(&str, u64)> = since
        .iter()
        .map(|r| (r.device_id.as_str(), r.received_ms))
        .collect();
    assert_eq!(got, [("gw-1", 7), ("gw-2", 15), ("gw-2", 16)]);
    let last = s.policy_results_since(1014, 10).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].time_ms, 100 + MAX_POLICY_RESULTS_PER_DEVICE + 4);
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
            "alerts_severity_received (severity=?)",
        ),
        (
            AlertFilter {
                triage: text("open"),
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
    // The overview reads the hours' counts from the first hour asked for, not the alerts.
    let plan = |sql: &str, args: &[i64]| -> String {
        let mut stmt = s
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.join("; ")
    };
    let hours = plan(super::accounts::ALERT_COUNTS, &[1]);
    assert!(
        hours.contains("alert_hours USING INDEX sqlite_autoindex_alert_hours_1 (hour_ms>?)"),
        "{hours}"
    );
    let totals = plan(super::accounts::SEVERITY_COUNTS, &[]);
    assert!(
        totals.contains("alert_totals") && !totals.contains("alerts "),
        "{totals}"
    );
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
            "alerts_received",
            "alerts_severity_received"
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

/// The quota removes a device's oldest alerts beyond the bound, once; retention keeps the
/// count the quota works from.
fn the_quota_removes_the_oldest_beyond_its_bound(s: &mut dyn Store) {
    for seq in 1..=5 {
        s.insert_alert("gw-1", &alert(seq), "postcard", 10 * seq)
            .unwrap();
    }
    s.insert_alert("gw-2", &alert(1), "postcard", 10).unwrap();
    assert_eq!(s.enforce_quota("gw-1", 5).unwrap(), 0, "at the bound");
    assert_eq!(s.enforce_quota("gw-1", 3).unwrap(), 2);
    assert_eq!(s.enforce_quota("gw-1", 3).unwrap(), 0);
    assert_eq!(s.gaps(None).unwrap(), [], "the oldest went: no gap");
    let seqs = |s: &mut dyn Store| -> Vec<u64> {
        let mut v: Vec<u64> = s
            .alerts(&AlertFilter {
                device: Some("gw-1".into()),
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|a| a.seq)
            .collect();
        v.sort();
        v
    };
    assert_eq!(seqs(s), [3, 4, 5]);
    // Retention deletes seq 3 (received at 30): the count follows.
    assert_eq!(s.delete_before(35).unwrap(), 2, "gw-1's 3 and gw-2's 1");
    assert!(s.insert_alert("gw-1", &alert(6), "postcard", 60).unwrap());
    assert_eq!(s.enforce_quota("gw-1", 3).unwrap(), 0, "4, 5, 6");
    assert!(s.insert_alert("gw-1", &alert(7), "postcard", 70).unwrap());
    assert_eq!(s.enforce_quota("gw-1", 3).unwrap(), 1);
    assert_eq!(seqs(s), [5, 6, 7]);
    let devices = s.devices(100, Duration::from_secs(60)).unwrap();
    let figures: Vec<_> = devices
        .iter()
        .map(|d| {
            (
                d.device_id.as_str(),
                d.alerts,
                d.quota_removed,
                d.rate_limited,
            )
        })
        .collect();
    assert_eq!(figures, [("gw-1", 3, 3, 0), ("gw-2", 0, 0, 0)]);
}

type Counts = (Vec<(String, u64)>, Vec<(u64, String, String, u64)>);

/// The overview's counts, as the store keeps them: by severity, and by hour, severity and kind.
fn overview_counts(s: &mut dyn Store) -> Counts {
    let hours = s.alert_counts(0).unwrap();
    (
        s.severity_counts().unwrap(),
        hours
            .into_iter()
            .map(|c| (c.bucket_ms, c.severity, c.kind, c.count))
            .collect(),
    )
}

/// The same counts, made from every alert stored.
fn counted_from_alerts(s: &mut dyn Store) -> Counts {
    let mut severities = std::collections::BTreeMap::new();
    let mut hours = std::collections::BTreeMap::new();
    for a in s.stored_alerts(&AlertFilter::default()).unwrap() {
        let a = a.alert;
        *severities.entry(a.severity.clone()).or_insert(0) += 1;
        let hour = a.received_ms - a.received_ms % 3_600_000;
        *hours.entry((hour, a.severity, a.kind)).or_insert(0) += 1;
    }
    (
        severities.into_iter().collect(),
        hours
            .into_iter()
            .map(|((h, s, k), n)| (h, s, k, n))
            .collect(),
    )
}

/// The overview's counts are kept as alerts are stored (once: not a copy), removed by the
/// quota and by retention, and stay those of the alerts stored; the devices' counts too.
fn overview_counts_follow_the_quota_and_retention(s: &mut dyn Store) {
    const HOUR: u64 = 3_600_000;
    let severities = [Severity::Medium, Severity::High, Severity::Critical];
    let kinds = [
        AlertKind::SuspiciousExec,
        AlertKind::AgentTamper,
        AlertKind::IntegrityDrift,
        AlertKind::UnknownExecutable,
    ];
    let mut stored = 0;
    for seq in 1..=60u64 {
        for device in ["gw-1", "gw-2"] {
            let mut a = alert(seq);
            a.severity = severities[(seq % 3) as usize];
            a.kind = kinds[(seq % 4) as usize];
            // Over 6 hours, a few per hour, the two devices' in other hours.
            let received = (seq / 10) * HOUR + seq * 1000 + u64::from(device == "gw-2") * HOUR / 2;
            assert!(s.insert_alert(device, &a, "postcard", received).unwrap());
            stored += 1;
            // A copy is not counted.
            assert!(!s
                .insert_alert(device, &a, "postcard", received + 1)
                .unwrap());
        }
    }
    let check = |s: &mut dyn Store, total: u64| {
        let counts = overview_counts(s);
        assert_eq!(counts, counted_from_alerts(s));
        assert_eq!(counts.0.iter().map(|(_, n)| n).sum::<u64>(), total);
        let devices = s.devices(0, Duration::from_secs(60)).unwrap();
        let per_device: Vec<u64> = devices.iter().map(|d| d.alerts).collect();
        assert_eq!(
            per_device,
            [count(s, "gw-1") as u64, count(s, "gw-2") as u64]
        );
        counts
    };
    let full = check(s, stored);
    assert_eq!(full.0.len(), 3);
    assert_eq!(full.1.first().unwrap().0, 0);
    // The quota removes gw-1's oldest 25: its first hours.
    assert_eq!(s.enforce_quota("gw-1", 35).unwrap(), 25);
    let after_quota = check(s, stored - 25);
    assert_ne!(after_quota, full);
    // Retention removes both devices' alerts of the first three hours and a half.
    let removed = s.delete_before(3 * HOUR + HOUR / 2).unwrap();
    assert!(removed > 0);
    let after_retention = check(s, stored - 25 - removed);
    assert!(after_retention.1.iter().all(|(h, ..)| *h >= 3 * HOUR));
    // The hours since a time: those that start at it or later.
    let late = s.alert_counts(5 * HOUR).unwrap();
    assert!(!late.is_empty() && late.iter().all(|c| c.bucket_ms >= 5 * HOUR));
    // Everything removed: nothing is counted.
    s.delete_before(u64::MAX / 2).unwrap();
    assert_eq!(check(s, 0), (vec![], vec![]));
}

/// The numbers of alerts not stored over the rate limit are told in the gaps they leave, as
/// ranges, at most [`MAX_LIMITED_RANGES`] per device.
fn rate_limited_numbers_are_told_in_the_gaps(s: &mut dyn Store) {
    for seq in [1, 10, 20] {
        s.insert_alert("gw-1", &alert(seq), "postcard", 1).unwrap();
    }
    for seq in [1, 5] {
        s.insert_alert("gw-2", &alert(seq), "postcard", 1).unwrap();
    }
    // Out of order and twice too; 25 is after the last stored alert: in no gap.
    for seq in [2, 3, 4, 5, 3, 7, 9, 8, 12, 13, 14, 15, 16, 17, 18, 19, 25] {
        assert!(s.note_rate_limited("gw-1", seq).unwrap());
    }
    assert!(s.note_rate_limited("gw-2", 3).unwrap());
    // A copy of a stored alert over the limit is not a limited one.
    assert!(!s.note_rate_limited("gw-1", 10).unwrap());
    let figures = |s: &mut dyn Store| -> Vec<(String, u64, u64, u64)> {
        s.gaps(None)
            .unwrap()
            .into_iter()
            .map(|g| (g.device_id, g.first_missing, g.missing, g.rate_limited))
            .collect()
    };
    assert_eq!(
        figures(s),
        [
            ("gw-1".into(), 2, 8, 7),
            ("gw-1".into(), 11, 9, 8),
            ("gw-2".into(), 2, 3, 1),
        ]
    );
    // A device sending scattered numbers keeps the latest ranges only.
    let last = 2 * (MAX_LIMITED_RANGES + 1) + 1;
    for seq in [1, last] {
        s.insert_alert("gw-3", &alert(seq), "postcard", 1).unwrap();
    }
    for k in 1..=MAX_LIMITED_RANGES + 1 {
        s.note_rate_limited("gw-3", 2 * k).unwrap();
    }
    let gaps = s.gaps(Some("gw-3")).unwrap();
    assert_eq!(
        (gaps[0].missing, gaps[0].rate_limited),
        (last - 2, MAX_LIMITED_RANGES)
    );
}

fn count(s: &mut dyn Store, device: &str) -> usize {
    s.alerts(&AlertFilter {
        device: Some(device.into()),
        ..Default::default()
    })
    .unwrap()
    .len()
}

/// Users, sessions, tokens, triage and the audit log; the alert filters of the HTTP API and
/// keyset pages.
fn accounts_triage_and_alert_filters(s: &mut dyn Store) {
    assert!(s.add_user("ann", "admin", "hash-a", 1).unwrap());
    assert!(!s.add_user("ann", "viewer", "hash-b", 2).unwrap());
    assert!(s.add_user("bob", "viewer", "hash-b", 2).unwrap());
    assert_eq!(s.user("ann").unwrap().unwrap().password_hash, "hash-a");
    s.add_token("t1", "bob", 3).unwrap();
    assert_eq!(
        s.token_user("t1").unwrap(),
        Some(("bob".into(), "viewer".into()))
    );
    s.add_session("s1", "bob", "csrf", 10).unwrap();
    s.add_session("s2", "ann", "csrf2", 10).unwrap();
    s.touch_session("s1", 50).unwrap();
    let session = s.session("s1").unwrap().unwrap();
    assert_eq!((session.created_ms, session.last_ms), (10, 50));
    assert_eq!(s.expire_sessions(20, 0).unwrap(), 1);
    assert!(s.session("s2").unwrap().is_none());
    assert!(s.remove_user("bob").unwrap());
    assert!(s.session("s1").unwrap().is_none());
    assert!(s.token_user("t1").unwrap().is_none());
    assert_eq!(s.users().unwrap().len(), 1);

    for seq in 1..=6 {
        s.insert_alert("gw-1", &alert(seq), "json", 100 + seq)
            .unwrap();
    }
    let ids = |s: &mut dyn Store, f: AlertFilter| -> Vec<u64> {
        s.stored_alerts(&f)
            .unwrap()
            .into_iter()
            .map(|a| a.alert.seq)
            .collect()
    };
    let all = s.stored_alerts(&AlertFilter::default()).unwrap();
    let id_of = |seq: u64| all.iter().find(|a| a.alert.seq == seq).unwrap().id;
    assert!(s
        .set_triage(id_of(4), "resolved", "fine", "ann", 7)
        .unwrap()
        .is_some());
    assert!(s
        .set_triage(id_of(5), "open", "", "ann", 8)
        .unwrap()
        .is_some());
    assert!(s.set_triage(9999, "open", "", "ann", 8).unwrap().is_none());
    let filter = |triage: &str| AlertFilter {
        triage: Some(triage.into()),
        ..Default::default()
    };
    assert_eq!(ids(s, filter("resolved")), [4]);
    assert_eq!(ids(s, filter("open")), [6, 5, 3, 2, 1]);
    assert_eq!(ids(s, filter("acknowledged")), Vec::<u64>::new());
    let text = |q: &str| AlertFilter {
        text: Some(q.into()),
        ..Default::default()
    };
    assert_eq!(ids(s, text("/TMP/X3")), [3]);
    assert_eq!(ids(s, text("\"n\":5")), [5]);
    // `_` is a character, not a wildcard (`x3` does not match).
    assert_eq!(ids(s, text("x_")), Vec::<u64>::new());
    assert_eq!(ids(s, text("connection")), [5, 3, 1]);
    let page = AlertFilter {
        before: Some(id_of(4)),
        until_ms: Some(105),
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(ids(s, page), [3, 2]);
    let changes = s.triage_changes(0, 10).unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].alert_id, id_of(4));
    assert_eq!(changes[1].triage.state, "open");
    assert_eq!(s.triage_changes(changes[0].audit_id, 10).unwrap().len(), 1);
    assert_eq!(s.last_audit_id().unwrap(), changes[1].audit_id);
    let log = s.audit_log(10).unwrap();
    assert_eq!(log[0].detail, "open");
    assert_eq!(log[1].detail, "resolved: fine");
    // The triage of an alert goes with it.
    assert_eq!(s.delete_before(105).unwrap(), 4);
    assert!(s
        .triage_changes(0, 10)
        .unwrap()
        .iter()
        .all(|c| c.alert_id != id_of(4)));
    assert_eq!(
        s.severity_counts().unwrap(),
        [("high".to_string(), 1), ("medium".to_string(), 1)]
    );
    let counts = s.alert_counts(0).unwrap();
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 2);
    assert_eq!(counts[0].bucket_ms, 0);
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
        "ties_are_ordered_by_id_descending",
        ties_are_ordered_by_id_descending,
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
    (
        "the_quota_removes_the_oldest_beyond_its_bound",
        the_quota_removes_the_oldest_beyond_its_bound,
    ),
    (
        "rate_limited_numbers_are_told_in_the_gaps",
        rate_limited_numbers_are_told_in_the_gaps,
    ),
    (
        "accounts_triage_and_alert_filters",
        accounts_triage_and_alert_filters,
    ),
    (
        "overview_counts_follow_the_quota_and_retention",
        overview_counts_follow_the_quota_and_retention,
    ),
];

/// A store of schema version 1 (before the quota's counts): 3 alerts of gw-1 and one of gw-2.
fn version_1_contents(s: &mut dyn Store) {
    for seq in 1..=3 {
        s.insert_alert("gw-1", &alert(seq), "postcard", seq)
            .unwrap();
    }
    s.insert_alert("gw-2", &alert(1), "postcard", 1).unwrap();
}

/// After the upgrade from version 1, the counts are those of the stored alerts.
fn check_upgraded_from_version_1(s: &mut dyn Store) {
    assert_eq!(overview_counts(s), counted_from_alerts(s));
    assert_eq!(
        overview_counts(s).0,
        [("high".into(), 1), ("medium".into(), 3)]
    );
    assert_eq!(s.enforce_quota("gw-1", 3).unwrap(), 0);
    assert_eq!(s.enforce_quota("gw-1", 1).unwrap(), 2);
    assert_eq!(s.enforce_quota("gw-2", 1).unwrap(), 0);
    assert_eq!(count(s, "gw-1"), 1);
    assert_eq!(count(s, "gw-2"), 1);
}

#[test]
fn a_sqlite_store_of_version_1_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let mut s = SqliteStore::open(&path).unwrap();
    version_1_contents(&mut s);
    sqlite_back_to_version_2(&s.conn);
    let mut s = sqlite_upgraded(
        s,
        &path,
        "ALTER TABLE devices DROP COLUMN stored_alerts;
         ALTER TABLE devices DROP COLUMN quota_removed;
         PRAGMA user_version = 1;",
    );
    check_upgraded_from_version_1(&mut s);
    // A newer one is refused.
    s.conn.pragma_update(None, "user_version", 7).unwrap();
    drop(s);
    let error = SqliteStore::open_existing(&path).err().unwrap();
    assert!(
        format!("{error:#}").contains("schema version 7 is newer"),
        "{error:#}"
    );
}

/// Turns a database of this version back into one of version 2: alerts keyed by
/// `(device_id, seq)` alone, without `id`, and none of the HTTP API's tables.
fn sqlite_back_to_version_2(conn: &rusqlite::Connection) {
    conn.execute_batch(
        "CREATE TABLE alerts_v2 (
             device_id TEXT NOT NULL, seq INTEGER NOT NULL, boot_id TEXT NOT NULL,
             time_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, kind TEXT NOT NULL,
             severity TEXT NOT NULL, rule TEXT NOT NULL, path TEXT, details TEXT NOT NULL,
             count INTEGER NOT NULL, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
             process TEXT, format TEXT NOT NULL, PRIMARY KEY (device_id, seq)) WITHOUT ROWID;
         INSERT INTO alerts_v2 SELECT device_id, seq, boot_id, time_ms, received_ms, kind,
             severity, rule, path, details, count, first_ms, last_ms, process, format
             FROM alerts;
         DROP TABLE alerts;
         ALTER TABLE alerts_v2 RENAME TO alerts;
         CREATE INDEX alerts_received ON alerts (received_ms);
         CREATE INDEX alerts_device_received ON alerts (device_id, received_ms);
         CREATE INDEX alerts_kind_received ON alerts (kind, received_ms);
         DROP TABLE users; DROP TABLE sessions; DROP TABLE api_tokens; DROP TABLE triage;
         DROP TABLE audit; DROP TABLE alert_totals; DROP TABLE alert_hours;
         DROP TABLE forward_cursors; DROP INDEX policy_results_received;
         PRAGMA user_version = 2;",
    )
    .unwrap();
}

/// A store of version 2: alerts received in another order than their devices' and numbers'.
fn version_2_contents(s: &mut dyn Store) {
    for (device, seq, received) in [("gw-2", 5, 30), ("gw-1", 1, 20), ("gw-1", 2, 10)] {
        s.insert_alert(device, &alert(seq), "postcard", received)
            .unwrap();
    }
}

/// After the upgrade from version 2, the alerts are kept with ids in the order received, the
/// next one stored gets a higher id, and the HTTP API's tables are there.
fn check_upgraded_from_version_2(s: &mut dyn Store) {
    assert_eq!(overview_counts(s), counted_from_alerts(s));
    assert!(!overview_counts(s).1.is_empty());
    let rows: Vec<(u64, String, u64)> = s
        .stored_alerts(&AlertFilter::default())
        .unwrap()
        .into_iter()
        .map(|a| (a.id, a.alert.device_id, a.alert.seq))
        .collect();
    assert_eq!(
        rows,
        [
            (3, "gw-2".into(), 5),
            (2, "gw-1".into(), 1),
            (1, "gw-1".into(), 2)
        ]
    );
    assert_eq!(s.alert(2).unwrap().unwrap().alert.received_ms, 20);
    assert!(s.insert_alert("gw-1", &alert(3), "json", 5).unwrap());
    assert_eq!(s.last_alert_id().unwrap(), 4);
    assert_eq!(s.alerts_after(3, 10).unwrap()[0].alert.seq, 3);
    assert!(s.add_user("ann", "admin", "hash", 1).unwrap());
    let t = s.set_triage(1, "resolved", "", "ann", 7).unwrap().unwrap();
    assert_eq!(s.alert(1).unwrap().unwrap().triage, Some(t));
    assert_eq!(s.enforce_quota("gw-1", 3).unwrap(), 0);
    assert_eq!(s.enforce_quota("gw-2", 1).unwrap(), 0);
}

#[test]
fn a_sqlite_store_of_version_2_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let mut s = SqliteStore::open(&path).unwrap();
    version_2_contents(&mut s);
    sqlite_back_to_version_2(&s.conn);
    let mut s = sqlite_upgraded(s, &path, "");
    check_upgraded_from_version_2(&mut s);
    let indexed: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'policy_results_received'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexed, 1, "the index of version 5");
    drop(s);
    // Opened again: nothing more to do, the ids stay.
    let mut s = SqliteStore::open_existing(&path).unwrap();
    assert_eq!(s.last_alert_id().unwrap(), 4);
}

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
        check(&mut PgStore::connect(&params).unwrap());
    }
    // A second connection finds the schema in place.
    let params = pg.database("check0");
    let mut again = PgStore::connect(&params).unwrap();
    assert_eq!(count(&mut again, "gw-1"), 1);

    // A store of version 2 is upgraded.
    let params = pg.database("upgrade2");
    let mut s = PgStore::connect(&params).unwrap();
    version_2_contents(&mut s);
    s.client().batch_execute(PG_BACK_TO_2).unwrap();
    drop(s);
    let mut s = PgStore::connect(&params).unwrap();
    check_upgraded_from_version_2(&mut s);
    drop(s);

    // A store of version 1 is upgraded.
    let params = pg.database("upgrade");
    let mut s = PgStore::connect(&params).unwrap();
    version_1_contents(&mut s);
    s.client().batch_execute(PG_BACK_TO_2).unwrap();
    let mut s = pg_upgraded(
        s,
        &params,
        "ALTER TABLE devices DROP COLUMN stored_alerts;
         ALTER TABLE devices DROP COLUMN quota_removed;
         UPDATE picket_schema SET version = 1;",
    );
    check_upgraded_from_version_1(&mut s);
    let indexed: i64 = s
        .client()
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'policy_results_received'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(indexed, 1, "the index of version 5");
}

/// A PostgreSQL store of this version back to version 2 (see [`sqlite_back_to_version_2`]).
const PG_BACK_TO_2: &str = "
ALTER TABLE alerts DROP COLUMN id;
CREATE INDEX alerts_received ON alerts (received_ms);
CREATE INDEX alerts_device_received ON alerts (device_id, received_ms);
CREATE INDEX alerts_kind_received ON alerts (kind, received_ms);
DROP TABLE users; DROP TABLE sessions; DROP TABLE api_tokens; DROP TABLE triage; DROP TABLE audit;
DROP TABLE alert_totals; DROP TABLE alert_hours; DROP TABLE forward_cursors;
DROP INDEX policy_results_received;
UPDATE picket_schema SET version = 2;
";

/// Runs `back` on `s` (SQL taking the store at `path` back to an older schema, its
/// `user_version` included), then opens it again and checks that the opening upgraded it to
/// the current version.
pub(super) fn sqlite_upgraded(s: SqliteStore, path: &std::path::Path, back: &str) -> SqliteStore {
    s.conn.execute_batch(back).unwrap();
    drop(s);
    let s = SqliteStore::open_existing(path).unwrap();
    let version: i64 = s
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, super::sqlite::SCHEMA_VERSION);
    s
}

/// [`sqlite_upgraded`] for the PostgreSQL store at `params` (`back` sets `picket_schema`).
pub(super) fn pg_upgraded(mut s: PgStore, params: &str, back: &str) -> PgStore {
    s.client().batch_execute(back).unwrap();
    drop(s);
    let mut s = PgStore::connect(params).unwrap();
    let version: i64 = s
        .client()
        .query_one("SELECT max(version) FROM picket_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, super::postgres::SCHEMA_VERSION);
    s
}
