//! The checks of each message, the subscriptions and the batches.

use super::*;
use crate::config::LimitsConfig;
use crate::store::{AlertFilter, SqliteStore};
use picket_proto::{Alert, AlertCounters, AlertKind, Details, Format, Heartbeat, Severity};

/// [`super::handle`] with the default limits, none of which these messages reach.
fn handle(s: &mut dyn Store, t: &str, p: &[u8], now_ms: u64) -> anyhow::Result<Outcome> {
    let mut limits = Limits::new(&LimitsConfig::default());
    super::handle(s, &mut limits, t, p, now_ms, now_ms)
}

fn limits(alerts_per_second: u32, alert_burst: u32, max_alerts_per_device: u64) -> Limits {
    Limits::new(&LimitsConfig {
        alerts_per_second,
        alert_burst,
        max_alerts_per_device,
        ..LimitsConfig::default()
    })
}

fn alert(seq: u64) -> Alert {
    Alert {
        seq,
        boot_id: "b".into(),
        time_ms: 1,
        kind: AlertKind::SuspiciousExec,
        severity: Severity::Critical,
        rule: "r".into(),
        path: None,
        details: Details(serde_json::json!({})),
        count: 1,
        first_ms: 1,
        last_ms: 1,
        process: None,
    }
}

#[test]
fn checks_every_message() {
    let mut s = SqliteStore::memory().unwrap();
    let t = topic::topic("gw-1", Channel::Alert);
    let ok = picket_proto::encode(Format::Postcard, "gw-1", &alert(1)).unwrap();
    assert_eq!(handle(&mut s, &t, &ok, 1).unwrap(), Outcome::Stored);
    assert_eq!(handle(&mut s, &t, &ok, 2).unwrap(), Outcome::Duplicate);
    let json = picket_proto::encode(Format::Json, "gw-1", &alert(2)).unwrap();
    assert_eq!(handle(&mut s, &t, &json, 3).unwrap(), Outcome::Stored);
    let other = picket_proto::encode(Format::Json, "gw-2", &alert(3)).unwrap();
    let refused = |r| Ok::<_, ()>(Outcome::Refused(r));
    let mut check = |t: &str, p: &[u8], r| {
        assert_eq!(handle(&mut s, t, p, 4).map_err(|_| ()), refused(r), "{t}");
    };
    check(&t, &other, Refusal::DeviceMismatch);
    check(&t, b"garbage", Refusal::Malformed);
    check(&t, b"", Refusal::Malformed);
    check(&t, &ok[..ok.len() - 1], Refusal::Malformed);
    let mut huge = alert(1);
    huge.seq = u64::MAX;
    let huge = picket_proto::encode(Format::Postcard, "gw-1", &huge).unwrap();
    check(&t, &huge, Refusal::Malformed);
    check(&t, &vec![b'{'; MAX_MESSAGE_BYTES + 1], Refusal::Oversized);
    check(
        &t,
        br#"{"v": 2, "device_id": "gw-1", "body": {}}"#,
        Refusal::Version,
    );
    check("elsewhere/x", &ok, Refusal::ForeignTopic);
    check(
        &topic::topic("gw-1", Channel::Policy),
        &ok,
        Refusal::UnexpectedChannel,
    );
    // A heartbeat's payload on the alert topic does not decode as an alert.
    check(
        &topic::topic("gw-1", Channel::Status),
        &ok,
        Refusal::Malformed,
    );
    assert_eq!(s.alerts(&AlertFilter::default()).unwrap().len(), 2);
    let refused = s.refused().unwrap();
    let count = |reason: &str| {
        refused
            .iter()
            .filter(|r| r.reason == reason)
            .map(|r| r.count)
            .sum::<u64>()
    };
    assert_eq!(count("malformed"), 5);
    assert_eq!(count("device_mismatch"), 1);
    assert_eq!(count("oversized"), 1);
    assert_eq!(count("foreign_topic"), 1);
}

#[test]
fn heartbeats_of_this_and_older_agents_are_stored() {
    let mut s = SqliteStore::memory().unwrap();
    let t = topic::topic("gw-1", Channel::Heartbeat);
    let hb = Heartbeat {
        time_ms: 1,
        uptime_s: 2,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        rss_bytes: 4,
        sensors: Vec::new(),
        alerts: AlertCounters::default(),
        spool_pending: 0,
        spool_bytes: 0,
        exec_unverified: Some(6),
    };
    let unverified = |s: &mut SqliteStore| {
        let devices = s.devices(10, std::time::Duration::from_secs(60)).unwrap();
        devices[0].counters.as_ref().unwrap()["exec_unverified"].clone()
    };
    for format in [Format::Postcard, Format::Json] {
        let current = picket_proto::encode(format, "gw-1", &hb).unwrap();
        assert_eq!(handle(&mut s, &t, &current, 5).unwrap(), Outcome::Stored);
        assert_eq!(unverified(&mut s), 6);
    }
    // An older agent's heartbeat ends before the count (postcard: `Some(6)` is the bytes 1, 6).
    let current = picket_proto::encode(Format::Postcard, "gw-1", &hb).unwrap();
    let older = &current[..current.len() - 2];
    assert_eq!(handle(&mut s, &t, older, 6).unwrap(), Outcome::Stored);
    assert!(unverified(&mut s).is_null());
    // Cut anywhere else, or from another device, it is refused.
    let cut = &current[..current.len() - 3];
    assert_eq!(
        handle(&mut s, &t, cut, 7).unwrap(),
        Outcome::Refused(Refusal::Malformed)
    );
    let other = topic::topic("gw-2", Channel::Heartbeat);
    assert_eq!(
        handle(&mut s, &other, older, 7).unwrap(),
        Outcome::Refused(Refusal::DeviceMismatch)
    );
}

/// A batch is stored in one transaction: all of it, or (when the store fails part way)
/// none of it, refusals included, so that the broker's redelivery counts nothing twice.
#[test]
fn a_batch_is_stored_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let store: Mutex<Box<dyn Store>> = Mutex::new(Box::new(SqliteStore::open(&path).unwrap()));
    // The store fails on the third alert of gw-2, after writing others.
    let admin = rusqlite::Connection::open(&path).unwrap();
    admin
        .execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON alerts
             WHEN NEW.device_id = 'gw-2' AND NEW.seq = 3
             BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
        )
        .unwrap();
    let publish = |device: &str, payload: Vec<u8>| {
        Publish::new(
            topic::topic(device, Channel::Alert),
            QoS::AtLeastOnce,
            payload,
            None,
        )
    };
    let mut batch = Vec::new();
    for seq in 1..=3 {
        for device in ["gw-2", "gw-1"] {
            let alert = picket_proto::encode(Format::Postcard, device, &alert(seq)).unwrap();
            batch.push(publish(device, alert));
        }
    }
    batch.push(publish("gw-1", b"garbage".to_vec()));
    let stored = |store: &Mutex<Box<dyn Store>>| {
        let mut s = store.lock().unwrap();
        let refused: u64 = s.refused().unwrap().iter().map(|r| r.count).sum();
        (s.alerts(&AlertFilter::default()).unwrap().len(), refused)
    };
    let mut limits = limits(1, 4, 100);
    let error = store_batch_at(&store, &mut limits, &batch, 0).unwrap_err();
    assert!(format!("{error:#}").contains("disk on fire"), "{error:#}");
    assert_eq!(stored(&store), (0, 0), "nothing of the failed batch");
    // Delivered again once the store works: all of it, once; then a duplicate.
    admin.execute_batch("DROP TRIGGER fail").unwrap();
    // The failed batch took no tokens: each device's 3 alerts are within its burst of 4.
    store_batch_at(&store, &mut limits, &batch, 0).unwrap();
    assert_eq!(stored(&store), (6, 1));
    // A duplicate takes a token (each device has 1 left), and is stored once.
    store_batch_at(&store, &mut limits, &batch[..2], 0).unwrap();
    assert_eq!(stored(&store), (6, 1));
}

/// A device over its rate limit has its alerts refused as `rate_limited` (counted, shown in
/// the device's row), while another device's alerts, its own heartbeats and statuses go on
/// being stored; once its bucket refilled, its alerts are stored again.
#[test]
fn a_device_over_its_rate_limit_does_not_starve_the_others() {
    let mut s = SqliteStore::memory().unwrap();
    let mut limits = limits(2, 5, 1000);
    let mut send = |s: &mut SqliteStore, device: &str, channel, bytes: &[u8], clock_ms| {
        let t = topic::topic(device, channel);
        super::handle(s, &mut limits, &t, bytes, 100 + clock_ms, clock_ms).unwrap()
    };
    let alert_of =
        |device: &str, seq| picket_proto::encode(Format::Postcard, device, &alert(seq)).unwrap();
    let mut flood = Vec::new();
    for seq in 1..=20 {
        flood.push(send(
            &mut s,
            "flood",
            Channel::Alert,
            &alert_of("flood", seq),
            0,
        ));
        let quiet = send(
            &mut s,
            "quiet",
            Channel::Alert,
            &alert_of("quiet", seq),
            seq * 500,
        );
        assert_eq!(quiet, Outcome::Stored, "quiet alert {seq}");
    }
    let limited = Outcome::Refused(Refusal::RateLimited);
    assert_eq!(flood[..5], [Outcome::Stored; 5]);
    assert_eq!(flood[5..], [limited; 15]);
    // The broker delivers stored alert 3 again while the device is over its limit: a copy,
    // not an alert lost to the limit (the counts below do not change).
    assert_eq!(
        send(&mut s, "flood", Channel::Alert, &alert_of("flood", 3), 0),
        Outcome::Duplicate
    );
    // Heartbeats are not limited.
    let hb = Heartbeat {
        time_ms: 1,
        uptime_s: 2,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        rss_bytes: 4,
        sensors: Vec::new(),
        alerts: AlertCounters::default(),
        spool_pending: 0,
        spool_bytes: 0,
        exec_unverified: None,
    };
    let hb = picket_proto::encode(Format::Postcard, "flood", &hb).unwrap();
    assert_eq!(
        send(&mut s, "flood", Channel::Heartbeat, &hb, 0),
        Outcome::Stored
    );
    // 2 per second: 499 ms later, still nothing; at 500 ms, one.
    assert_eq!(
        send(&mut s, "flood", Channel::Alert, &alert_of("flood", 21), 499),
        limited
    );
    let one = send(&mut s, "flood", Channel::Alert, &alert_of("flood", 22), 500);
    assert_eq!(one, Outcome::Stored);
    let refused = s.refused().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let r = &refused[0];
    assert_eq!(
        (r.reason.as_str(), r.device_id.as_str(), r.count),
        ("rate_limited", "flood", 16)
    );
    assert_eq!(
        r.last_error,
        "alert 21 is over the device's rate limit (2/s, burst 5): not stored"
    );
    let devices = s.devices(1000, std::time::Duration::from_secs(60)).unwrap();
    let figures: Vec<_> = devices
        .iter()
        .map(|d| {
            (
                d.device_id.as_str(),
                d.alerts,
                d.rate_limited,
                d.heartbeat_ms.is_some(),
            )
        })
        .collect();
    assert_eq!(figures, [("flood", 6, 16, true), ("quiet", 20, 0, false)]);
    // The gap the limited alerts leave.
    let gaps = s.gaps(Some("flood")).unwrap();
    let gap = &gaps[0];
    assert_eq!(
        (gap.first_missing, gap.last_missing, gap.rate_limited),
        (6, 21, 16)
    );
}

/// The quota keeps exactly `max_alerts_per_device` alerts of a device, its newest (last
/// received), and counts what it removed; other devices keep theirs.
#[test]
fn the_quota_keeps_a_device_s_newest_alerts_at_its_bound() {
    let mut s = SqliteStore::memory().unwrap();
    let mut limits = limits(1000, 1000, 10);
    let mut send = |s: &mut SqliteStore, device: &str, seq| {
        let t = topic::topic(device, Channel::Alert);
        let bytes = picket_proto::encode(Format::Postcard, device, &alert(seq)).unwrap();
        super::handle(s, &mut limits, &t, &bytes, 1, 1).unwrap()
    };
    let stored = |s: &mut SqliteStore, device: &str| -> (Vec<u64>, u64) {
        let mut seqs: Vec<u64> = s
            .alerts(&AlertFilter {
                device: Some(device.into()),
                ..Default::default()
            })
            .unwrap()
            .iter()
            .map(|a| a.seq)
            .collect();
        seqs.sort();
        let devices = s.devices(1, std::time::Duration::from_secs(60)).unwrap();
        let removed = devices
            .iter()
            .find(|d| d.device_id == device)
            .unwrap()
            .quota_removed;
        (seqs, removed)
    };
    for seq in 1..=10 {
        assert_eq!(send(&mut s, "gw-1", seq), Outcome::Stored);
    }
    assert_eq!(
        stored(&mut s, "gw-1"),
        ((1..=10).collect(), 0),
        "at the bound"
    );
    assert_eq!(send(&mut s, "gw-1", 11), Outcome::Stored);
    assert_eq!(stored(&mut s, "gw-1"), ((2..=11).collect(), 1), "one over");
    // A duplicate removes nothing.
    assert_eq!(send(&mut s, "gw-1", 11), Outcome::Duplicate);
    for seq in 12..=25 {
        send(&mut s, "gw-1", seq);
    }
    send(&mut s, "gw-2", 1);
    assert_eq!(stored(&mut s, "gw-1"), ((16..=25).collect(), 15));
    assert_eq!(stored(&mut s, "gw-2"), (vec![1], 0));
    // gw-1 lost its state: a new counter, whose numbers happen to be lower, received later.
    // What goes is what was received first, not the lowest numbers.
    for seq in [3, 4] {
        let t = topic::topic("gw-1", Channel::Alert);
        let bytes = picket_proto::encode(Format::Postcard, "gw-1", &alert(seq)).unwrap();
        let outcome = super::handle(&mut s, &mut limits, &t, &bytes, 2, 2).unwrap();
        assert_eq!(outcome, Outcome::Stored);
    }
    let kept = [3, 4].into_iter().chain(18..=25).collect();
    assert_eq!(stored(&mut s, "gw-1"), (kept, 17));
}

#[test]
fn subscribes_shared_except_to_statuses() {
    assert_eq!(
        filters("g"),
        [
            "$share/g/picket/v1/+/alert",
            "$share/g/picket/v1/+/heartbeat",
            "$share/g/picket/v1/+/policy/result",
            "picket/v1/+/status"
        ]
    );
    assert_eq!(filters("")[0], "picket/v1/+/alert");
}

/// A store that failed (here a lost PostgreSQL connection) is said to be the store's failure,
/// not the MQTT connection's; the connection's own failures still name the broker.
#[test]
fn a_store_failure_is_logged_as_the_store_s() {
    let config = crate::config::Config::parse(
        "[mqtt]\nhost = \"broker.example\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
    )
    .unwrap();
    let mqtt = config.mqtt().unwrap();
    let lost = anyhow::anyhow!("connection closed").context("storing a message from `t`");
    let store = anyhow::Error::new(StoreFailed(lost));
    let said = session_end(&store, mqtt, Duration::from_secs(2));
    assert_eq!(
        said,
        "the store failed: storing a message from `t`: connection closed; nothing of that \
         batch was acknowledged; reconnecting in 2s to the broker broker.example:8883, which \
         delivers it again"
    );
    let broker = anyhow::anyhow!("connection closed");
    assert_eq!(
        session_end(&broker, mqtt, Duration::from_secs(4)),
        "MQTT broker.example:8883: connection closed; reconnecting in 4s"
    );
}

fn encode<T: serde::Serialize>(device: &str, body: &T) -> Vec<u8> {
    picket_proto::encode(Format::Postcard, device, body).unwrap()
}

fn heartbeat(uptime_s: u64) -> Heartbeat {
    Heartbeat {
        time_ms: uptime_s,
        uptime_s,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        rss_bytes: 4,
        sensors: Vec::new(),
        alerts: AlertCounters::default(),
        spool_pending: 0,
        spool_bytes: 0,
        exec_unverified: None,
    }
}

fn status(state: picket_proto::Presence) -> picket_proto::Status {
    picket_proto::Status {
        state,
        time_ms: 1,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        policy_name: "base".into(),
        boot_id: "b".into(),
    }
}

/// `flood` loops heartbeats and statuses, far over its limit (60 a minute, burst 5): its burst
/// is stored, the rest refused as `presence_limited` (counted, in its row), except a status
/// that changes its presence; `quiet`, a heartbeat a second, loses none. Then policy results:
/// one for a bundle never pushed to its device is refused as `unknown_policy`, one for a
/// pushed bundle stored.
fn check_presence_limit_and_unknown_policies(s: &mut dyn Store) {
    use picket_proto::{PolicyOutcome, PolicyResult, Presence};
    let mut limits = Limits::new(&LimitsConfig {
        presence_per_minute: 60,
        presence_burst: 5,
        ..LimitsConfig::default()
    });
    let mut send = |s: &mut dyn Store, device: &str, channel, bytes: &[u8], clock_ms| {
        let t = topic::topic(device, channel);
        super::handle(s, &mut limits, &t, bytes, 1_000 + clock_ms, clock_ms).unwrap()
    };
    let limited = Outcome::Refused(Refusal::PresenceLimited);
    let mut outcomes = Vec::new();
    for n in 1..=1000 {
        let hb = encode("flood", &heartbeat(n));
        outcomes.push(send(s, "flood", Channel::Heartbeat, &hb, 0));
    }
    assert_eq!(outcomes[..5], [Outcome::Stored; 5]);
    assert!(outcomes[5..].iter().all(|o| *o == limited));
    let online = encode("flood", &status(Presence::Online));
    // Its first status is a change (none before): stored; its repeats are not.
    assert_eq!(
        send(s, "flood", Channel::Status, &online, 0),
        Outcome::Stored
    );
    for _ in 0..99 {
        assert_eq!(send(s, "flood", Channel::Status, &online, 0), limited);
    }
    // A heartbeat a second for 100 s, and a status, from another device: all stored.
    let quiet_online = encode("quiet", &status(Presence::Online));
    assert_eq!(
        send(s, "quiet", Channel::Status, &quiet_online, 0),
        Outcome::Stored
    );
    for n in 1..=100 {
        let hb = encode("quiet", &heartbeat(n));
        assert_eq!(
            send(s, "quiet", Channel::Heartbeat, &hb, n * 1000),
            Outcome::Stored,
            "quiet heartbeat {n}"
        );
    }
    // flood stops, over its limit: the change of its presence is stored all the same.
    let offline = encode("flood", &status(Presence::Offline));
    assert_eq!(
        send(s, "flood", Channel::Status, &offline, 0),
        Outcome::Stored
    );
    let devices = s
        .devices(102_000, std::time::Duration::from_secs(600))
        .unwrap();
    let figures: Vec<_> = devices
        .iter()
        .map(|d| {
            (
                d.device_id.as_str(),
                d.state,
                d.uptime_s,
                d.presence_limited,
            )
        })
        .collect();
    assert_eq!(
        figures,
        [
            ("flood", "offline", Some(5), 995 + 99),
            ("quiet", "online", Some(100), 0)
        ]
    );
    let refused = s.refused().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        (refused[0].reason.as_str(), refused[0].device_id.as_str()),
        ("presence_limited", "flood")
    );
    assert_eq!(
        refused[0].last_error,
        "status online over the device's limit of heartbeats and statuses (60/min, burst 5): \
         not stored"
    );

    // Policy results.
    let result = |time_ms| PolicyResult {
        time_ms,
        bundle_sha256: "ab".repeat(32),
        outcome: PolicyOutcome::Applied {
            name: "made-up".into(),
            serial: 99,
        },
    };
    let unknown = Outcome::Refused(Refusal::UnknownPolicy);
    let made_up = encode("quiet", &result(1));
    assert_eq!(
        send(s, "quiet", Channel::PolicyResult, &made_up, 200_000),
        unknown
    );
    s.record_push(&["quiet".to_string()], &"ab".repeat(32), None, 1)
        .unwrap();
    assert_eq!(
        send(s, "quiet", Channel::PolicyResult, &made_up, 200_000),
        Outcome::Stored
    );
    // Pushed to quiet, not to flood.
    let other = encode("flood", &result(2));
    assert_eq!(
        send(s, "flood", Channel::PolicyResult, &other, 200_000),
        unknown
    );
    let results = s.policy_results(None).unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].device_id, "quiet");
    let refused = s.refused().unwrap();
    let unknown: Vec<_> = refused
        .iter()
        .filter(|r| r.reason == "unknown_policy")
        .map(|r| (r.device_id.as_str(), r.count))
        .collect();
    assert_eq!(unknown, [("flood", 1), ("quiet", 1)]);
    assert!(
        refused[1].last_error.starts_with(&format!(
            "a result (applied) for bundle {}, which was never pushed",
            "ab".repeat(32)
        )),
        "{refused:?}"
    );
    // The made-up serial did not become the device's policy.
    let devices = s
        .devices(102_000, std::time::Duration::from_secs(600))
        .unwrap();
    assert_eq!(devices[0].policy_serial, Some(3));
}

#[test]
fn sqlite_limits_presence_and_refuses_unknown_policies() {
    check_presence_limit_and_unknown_policies(&mut SqliteStore::memory().unwrap());
}

#[test]
fn postgres_limits_presence_and_refuses_unknown_policies() {
    let pg = picket_test_support::postgres::Postgres::start();
    let params = pg.database("ingest");
    check_presence_limit_and_unknown_policies(
        &mut crate::store::PgStore::connect(&params).unwrap(),
    );
}
