//! Alerts, heartbeats and status stored once, bad messages refused, several instances, bursts.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_stored_once_with_their_context_and_gaps_reported() {
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "be", "");
    let mut device = Device::connect(&broker, "gw-1", None).await;
    publish_alerts_with_a_duplicate_and_a_gap(&mut device).await;

    check_each_alert_stored_once_with_its_context(&backend);
    // Filters.
    let none = backend.query(&[
        "alerts",
        "--device",
        "gw-1",
        "--kind",
        "agent_tamper",
        "--json",
    ]);
    assert_eq!(none.as_array().unwrap().len(), 0);
    let recent = backend.query(&["alerts", "--since", "1h", "--severity", "high", "--json"]);
    assert_eq!(recent.as_array().unwrap().len(), 4);

    let gaps = backend.query(&["gaps", "--json"]);
    assert_eq!(
        gaps,
        serde_json::json!([{"device_id": "gw-1", "first_missing": 4, "last_missing": 5, "missing": 2, "restart": false}])
    );

    // The HTTP API says the same, and exports OCSF.
    check_the_http_api_says_the_same(&backend, gaps);

    // The CLI's OCSF export matches.
    check_the_cli_export_and_table(&backend);

    // Another device's executable that could not be verified: stored and served as such.
    an_unverified_executable_is_stored_and_exported(&broker, &backend).await;
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}

/// gw-9 sends an `unverified_executable` alert: its kind, severity and details survive, the
/// kind filter finds it, and OCSF gives it as a Compliance Finding without a result.
async fn an_unverified_executable_is_stored_and_exported(broker: &Broker, backend: &Backend) {
    let mut device = Device::connect(broker, "gw-9", None).await;
    let mut unverified = alert(1);
    unverified.kind = AlertKind::UnverifiedExecutable;
    unverified.severity = Severity::Medium;
    unverified.path = Some("/usr/bin/awk".into());
    unverified.details = Details(serde_json::json!({
        "expected": "cd".repeat(32), "reason": "larger than 268435456 bytes, not hashed"
    }));
    if let Some(p) = unverified.process.as_mut() {
        p.exe = Some("/usr/bin/awk".into());
        p.sha256 = None;
    }
    device
        .publish(Channel::Alert, Format::Postcard, &unverified, false)
        .await;
    device.flush().await;
    let query = ["alerts", "--kind", "unverified_executable", "--json"];
    let alerts = backend.wait_for(&query, |v| v.as_array().is_some_and(|a| !a.is_empty()));
    let a = &alerts[0];
    assert_eq!(
        (a["device_id"].clone(), a["seq"].clone()),
        ("gw-9".into(), 1.into())
    );
    assert_eq!(a["kind"], "unverified_executable");
    assert_eq!(a["severity"], "medium");
    assert_eq!(a["details"]["expected"], "cd".repeat(32));
    assert_eq!(
        a["details"]["reason"],
        "larger than 268435456 bytes, not hashed"
    );
    assert!(a["process"]["sha256"].is_null());
    let (code, ocsf) = backend.get("/api/alerts?kind=unverified_executable&format=ocsf");
    assert_eq!(code, 200);
    let f = &ocsf[0];
    assert_eq!(
        (f["class_uid"].clone(), f["type_uid"].clone()),
        (2003.into(), 200301.into())
    );
    assert_eq!(f["severity_id"], 3);
    assert_eq!(f["compliance"]["status"], "Warning");
    assert_eq!(
        f["compliance"]["status_detail"],
        "larger than 268435456 bytes, not hashed"
    );
    assert!(f["evidences"][0]["file"].get("hashes").is_none());
}

/// Publishes alerts 1, 2, 3, 3 again (at-least-once delivery) and 6 (as JSON): 4 and 5 missing.
async fn publish_alerts_with_a_duplicate_and_a_gap(device: &mut Device) {
    for seq in [1, 2, 3] {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    // At-least-once delivery: the same alert again.
    device
        .publish(Channel::Alert, Format::Postcard, &alert(3), false)
        .await;
    device
        .publish(Channel::Alert, Format::Json, &alert(6), false)
        .await;
    device.flush().await;
}

/// Alerts 1, 2, 3 and 6 are stored once each; 6 with its format, kind, severity, process
/// context and details.
fn check_each_alert_stored_once_with_its_context(backend: &Backend) {
    let alerts = backend.wait_for(&["alerts", "--device", "gw-1", "--json"], |v| {
        seqs(v).contains(&6)
    });
    assert_eq!(seqs(&alerts), [1, 2, 3, 6], "each alert stored once");
    let a6 = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["seq"] == 6)
        .unwrap();
    assert_eq!(a6["format"], "json");
    assert_eq!(a6["kind"], "unknown_executable");
    assert_eq!(a6["severity"], "high");
    assert_eq!(a6["process"]["pid"], 4242);
    assert_eq!(a6["process"]["exe"], "/tmp/dropped-6");
    assert_eq!(a6["process"]["argv"][1], "--now");
    assert_eq!(a6["process"]["ancestry"][0]["exe"], "/sbin/init");
    assert_eq!(a6["details"]["sha256"], "ab".repeat(32));
}

/// The HTTP API lists the alerts, exports OCSF, reports the same `gaps`,
/// counts the device's alerts and refuses a bad severity.
fn check_the_http_api_says_the_same(backend: &Backend, gaps: Value) {
    let (code, api_alerts) = backend.get("/api/alerts?device=gw-1&limit=2");
    assert_eq!(code, 200);
    assert_eq!(api_alerts.as_array().unwrap().len(), 2);
    let (code, ocsf) = backend.get("/api/alerts?device=gw-1&format=ocsf");
    assert_eq!(code, 200);
    let ocsf = ocsf.as_array().unwrap();
    assert_eq!(ocsf.len(), 4);
    assert!(ocsf.iter().all(|f| f["class_uid"] == 2004));
    assert!(ocsf.iter().any(|f| f["finding_info"]["uid"] == "gw-1:6"
        && f["evidences"][0]["process"]["cmd_line"] == "dropped-6 --now"));
    let (code, api_gaps) = backend.get("/api/devices/gw-1/gaps");
    assert_eq!((code, api_gaps), (200, gaps));
    let (code, devices) = backend.get("/api/devices");
    assert_eq!(code, 200);
    assert_eq!(devices[0]["device_id"], "gw-1");
    assert_eq!(devices[0]["alerts"], 4);
    let (code, err) = backend.get("/api/alerts?severity=low");
    assert_eq!(code, 400);
    assert!(err["error"].as_str().unwrap().contains("low"), "{err}");
}

/// The CLI's OCSF export has the 4 alerts, and its table names them.
fn check_the_cli_export_and_table(backend: &Backend) {
    let cli_ocsf = backend.query(&["alerts", "--device", "gw-1", "--ocsf"]);
    assert_eq!(cli_ocsf.as_array().unwrap().len(), 4);
    // And its table names the alerts.
    let out = backend_bin()
        .arg("--db")
        .arg(backend.db.as_ref().unwrap())
        .args(["alerts", "--device", "gw-1"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("RECEIVED"), "{table}");
    assert!(table.contains("/tmp/dropped-6 [4242]"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_status_heartbeats_and_the_last_will() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "[devices]\nheartbeat_timeout = \"1h\"\n");
    let will = picket_proto::encode(Format::Postcard, "gw-7", &status(Presence::Offline)).unwrap();
    let mut device = Device::connect(&broker, "gw-7", Some(will)).await;
    device
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Online),
            true,
        )
        .await;
    device
        .publish(Channel::Heartbeat, Format::Postcard, &heartbeat(), false)
        .await;
    device.flush().await;
    check_online_with_the_heartbeat_counters(&backend);

    // The connection drops without DISCONNECT: the broker publishes the last will.
    device.vanish();
    let gw7 = backend.wait_device("gw-7", |d| d["state"] == "offline");
    assert_eq!(gw7["online"], false);

    // A backend started later learns the presence from the retained status.
    let late = Backend::start(&broker, "late", "");
    let gw7 = late.wait_device("gw-7", |_| true);
    assert_eq!(gw7["state"], "offline");

    // With a short heartbeat timeout, a device that said it is online but went silent is
    // shown as timed out.
    a_silent_device_is_shown_timed_out(&broker, &backend).await;
}

/// gw-7's heartbeat: version 0.1.1, serial 3, one sensor that lost 2 events, 9 alerts raised,
/// 4 execs that could not be verified.
fn heartbeat() -> Heartbeat {
    Heartbeat {
        time_ms: 2,
        uptime_s: 60,
        agent_version: "0.1.1".into(),
        policy_serial: 3,
        rss_bytes: 5 << 20,
        sensors: vec![SensorCounters {
            sensor: "process".into(),
            seen: 100,
            lost: 2,
        }],
        alerts: AlertCounters {
            raised: 9,
            sent: 8,
            ..Default::default()
        },
        spool_pending: 1,
        spool_bytes: 512,
        exec_unverified: Some(4),
    }
}

/// gw-7 is shown online, with its status and the counters of its heartbeat.
fn check_online_with_the_heartbeat_counters(backend: &Backend) {
    let d = backend.wait_device("gw-7", |d| d["online"] == true && d["counters"].is_object());
    assert_eq!(d["state"], "online");
    assert_eq!(d["agent_version"], "0.1.1");
    assert_eq!(d["policy_name"], "base");
    assert_eq!(d["counters"]["sensors"][0]["lost"], 2);
    assert_eq!(d["counters"]["alerts"]["raised"], 9);
    assert_eq!(d["counters"]["spool_pending"], 1);
    assert_eq!(d["counters"]["exec_unverified"], 4);
    // The table shows it too.
    let out = backend_bin()
        .arg("--db")
        .arg(backend.db.as_ref().unwrap())
        .arg("devices")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let (header, row) = (table.lines().next().unwrap(), table.lines().nth(1).unwrap());
    assert!(header.ends_with("UNVERIFIED EXECS"), "{table}");
    assert!(row.starts_with("gw-7") && row.ends_with("  4"), "{table}");
}

/// gw-8 says it is online, then nothing: with a 1 s heartbeat timeout it is timed out.
async fn a_silent_device_is_shown_timed_out(broker: &Broker, backend: &Backend) {
    let mut quiet = Device::connect(broker, "gw-8", None).await;
    quiet
        .publish(
            Channel::Status,
            Format::Json,
            &status(Presence::Online),
            false,
        )
        .await;
    quiet.flush().await;
    backend.wait_device("gw-8", |_| true);
    let short = broker.path("short.toml");
    std::fs::write(&short, "[devices]\nheartbeat_timeout = \"1s\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = backend_bin()
        .arg("--config")
        .arg(&short)
        .arg("--db")
        .arg(backend.db.as_ref().unwrap())
        .args(["devices", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let devices: Value = serde_json::from_slice(&out.stdout).unwrap();
    let gw8 = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "gw-8")
        .unwrap();
    assert_eq!(gw8["state"], "timed_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_and_counted_while_good_ones_are_stored() {
    let broker = Broker::start();
    let mut backend = Backend::with_http(&broker, "be", "");
    let mut device = Device::connect(&broker, "gw-1", None).await;
    device
        .publish_raw(Channel::Alert, b"\x07not a message".to_vec(), false)
        .await;
    device
        .publish_raw(Channel::Alert, b"{\"v\": 1}".to_vec(), false)
        .await;
    let mut big = picket_proto::encode(Format::Json, "gw-1", &alert(1)).unwrap();
    big.resize(picket_proto::MAX_MESSAGE_BYTES + 100, b' ');
    device.publish_raw(Channel::Alert, big, false).await;
    // Device gw-1's certificate, its own topic, but an envelope that claims gw-2.
    let forged = picket_proto::encode(Format::Postcard, "gw-2", &alert(2)).unwrap();
    device.publish_raw(Channel::Alert, forged, false).await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(3), false)
        .await;
    device.flush().await;

    let refused = backend.wait_for(&["refused", "--json"], |v| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>()
            >= 4
    });
    let count = |reason: &str| {
        refused
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["reason"] == reason && r["device_id"] == "gw-1")
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(count("malformed"), 2, "{refused:#}");
    assert_eq!(count("oversized"), 1, "{refused:#}");
    assert_eq!(count("device_mismatch"), 1, "{refused:#}");
    let alerts = backend.wait_for(&["alerts", "--json"], |v| !seqs(v).is_empty());
    assert_eq!(seqs(&alerts), [3]);
    let (code, api_refused) = backend.get("/api/refused");
    assert_eq!((code, &api_refused), (200, &refused));
    assert!(
        alerts[0]["device_id"] == "gw-1",
        "nothing is stored for the claimed device"
    );
    assert_eq!(
        backend
            .query(&["devices", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    backend.assert_running();

    // The broker goes away and comes back: the backend reconnects and goes on storing.
    drop(device);
    let mut broker = broker;
    broker.restart();
    backend.wait_log("subscribed to", 2);
    let mut device = Device::connect(&broker, "gw-1", None).await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(4), false)
        .await;
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| seqs(v) == [3, 4]);
    backend.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_alerts_and_store_each_once() {
    let broker = Broker::start();
    let a = Backend::start(&broker, "be-a", "");
    let b = Backend::start(&broker, "be-b", "");
    let mut devices = Vec::new();
    for id in ["gw-1", "gw-2"] {
        devices.push(Device::connect(&broker, id, None).await);
    }
    const N: u64 = 30;
    for seq in 1..=N {
        for d in &mut devices {
            d.publish(Channel::Alert, Format::Postcard, &alert(seq), false)
                .await;
        }
    }
    for d in &devices {
        d.flush().await;
    }
    let keys = |v: &Value| -> BTreeSet<(String, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["device_id"].as_str().unwrap().to_string(),
                    a["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let start = std::time::Instant::now();
    let (in_a, in_b) = loop {
        let in_a = keys(&a.query(&["alerts", "--json"]));
        let in_b = keys(&b.query(&["alerts", "--json"]));
        if in_a.len() + in_b.len() >= 2 * N as usize || start.elapsed() > TIMEOUT {
            break (in_a, in_b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        in_a.is_disjoint(&in_b),
        "an alert was stored by both instances"
    );
    assert_eq!(
        in_a.len() + in_b.len(),
        2 * N as usize,
        "every alert stored"
    );
    assert!(
        !in_a.is_empty() && !in_b.is_empty(),
        "both instances took a share ({} / {})",
        in_a.len(),
        in_b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_postgresql_store() {
    let (_pg, params) = tokio::task::spawn_blocking(|| {
        let pg = picket_test_support::postgres::Postgres::start();
        let params = pg.database("picket");
        (pg, params)
    })
    .await
    .unwrap();
    let broker = Broker::start();
    let store = format!("[store]\npostgres = \"{params}\"\n");
    let a = Backend::start(&broker, "be-a", &store);
    let b = Backend::start(&broker, "be-b", &store);
    let will = picket_proto::encode(Format::Json, "gw-1", &status(Presence::Offline)).unwrap();
    let mut device = Device::connect(&broker, "gw-1", Some(will)).await;
    device
        .publish(
            Channel::Status,
            Format::Json,
            &status(Presence::Online),
            true,
        )
        .await;
    const N: u64 = 20;
    for seq in (1..=N).filter(|s| *s != 7) {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    // Delivered again: still stored once.
    device
        .publish(Channel::Alert, Format::Postcard, &alert(3), false)
        .await;
    device.flush().await;
    let alerts = a.wait_for(&["alerts", "--json"], |v| seqs(v).len() == N as usize - 1);
    let mut expected: Vec<u64> = (1..=N).filter(|s| *s != 7).collect();
    expected.sort();
    assert_eq!(seqs(&alerts), expected);
    assert_eq!(alerts[0]["process"]["ancestry"][0]["exe"], "/sbin/init");
    let gaps = a.query(&["gaps", "--json"]);
    assert_eq!(gaps[0]["first_missing"], 7);
    assert_eq!(gaps.as_array().unwrap().len(), 1);
    a.wait_device("gw-1", |d| d["state"] == "online");
    device.vanish();
    a.wait_device("gw-1", |d| d["state"] == "offline");
    tokio::task::spawn_blocking(move || {
        a.stop();
        b.stop();
    })
    .await
    .unwrap();
}

/// A burst of QoS 1 alerts from several devices at once, far more than the ingest's receive
/// maximum: every one is stored exactly once, without the ingest losing its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_stored_once_without_reconnecting() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "");
    const DEVICES: usize = 4;
    const PER_DEVICE: u64 = 600;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        devices.push(Device::connect(&broker, &format!("burst-{i}"), None).await);
    }
    // All devices at once, each as fast as its client queues.
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|mut d| {
            tokio::spawn(async move {
                for seq in 1..=PER_DEVICE {
                    d.publish(Channel::Alert, Format::Postcard, &alert(seq), false)
                        .await;
                }
                d.flush().await;
                d
            })
        })
        .collect();
    let mut devices = Vec::new();
    for t in tasks {
        devices.push(t.await.unwrap());
    }
    let total = DEVICES * PER_DEVICE as usize;
    let start = std::time::Instant::now();
    let devices_json = loop {
        let v = backend.query(&["devices", "--json"]);
        let stored: u64 = v
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["alerts"].as_u64().unwrap())
            .sum();
        if stored as usize >= total || start.elapsed() > TIMEOUT {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for d in devices_json.as_array().unwrap() {
        assert_eq!(d["alerts"], PER_DEVICE, "{d}\nlog tail:\n{}", {
            let log = backend.log();
            log[log.len().saturating_sub(3000)..].to_string()
        });
    }
    assert_eq!(devices_json.as_array().unwrap().len(), DEVICES);
    // Exactly once: every (device, seq), no other.
    let alerts = backend.query(&["alerts", "--limit", "100000", "--json"]);
    let keys: BTreeSet<(String, u64)> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["device_id"].as_str().unwrap().to_string(),
                a["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(alerts.as_array().unwrap().len(), total);
    assert_eq!(keys.len(), total);
    assert!(keys.iter().all(|(_, seq)| (1..=PER_DEVICE).contains(seq)));
    let log = backend.log();
    assert_eq!(
        log.matches("connected to the broker").count(),
        1,
        "the ingest connected again:\n{}",
        log.lines()
            .filter(|l| !l.contains(" alert burst-"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!log.contains("reconnecting in"), "{log}");
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}
