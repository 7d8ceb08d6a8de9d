//! Per-device limits: a device flooding alerts, or looping heartbeats and statuses, is limited
//! and reported while another device loses nothing and stays online; the quota keeps exactly a
//! device's newest alerts.

use super::*;

fn heartbeat(uptime_s: u64) -> Heartbeat {
    Heartbeat {
        time_ms: uptime_s,
        uptime_s,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        rss_bytes: 4 << 20,
        sensors: Vec::new(),
        alerts: AlertCounters::default(),
        spool_pending: 0,
        spool_bytes: 0,
        exec_unverified: Some(0),
    }
}

/// `flood` sends 2000 alerts as fast as it can, far over its limit (1 per second, burst 50);
/// `steady` sends 40 alerts and heartbeats among them. Every one of `steady`'s alerts is
/// stored and it stays online; `flood` has its burst and what its bucket refilled stored,
/// the rest counted as `rate_limited` (refusals, devices listing, API) and logged once, and
/// its heartbeat is stored too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_limited_while_another_loses_nothing() {
    let broker = Broker::start();
    let backend = Backend::with_http(
        &broker,
        "be",
        "[limits]\nalerts_per_second = 1\nalert_burst = 50\n",
    );
    let mut flood = Device::connect(&broker, "flood", None).await;
    let will =
        picket_proto::encode(Format::Postcard, "steady", &status(Presence::Offline)).unwrap();
    let mut steady = Device::connect(&broker, "steady", Some(will)).await;
    steady
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Online),
            true,
        )
        .await;
    const FLOOD: u64 = 2000;
    const STEADY: u64 = 40;
    let started = Instant::now();
    for seq in 1..=FLOOD {
        flood
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
        if seq % (FLOOD / STEADY) == 0 {
            let n = seq / (FLOOD / STEADY);
            steady
                .publish(Channel::Alert, Format::Postcard, &alert(n), false)
                .await;
            // At QoS 0, as the agent sends them.
            steady
                .publish_qos0(Channel::Heartbeat, Format::Postcard, &heartbeat(n))
                .await;
        }
    }
    flood
        .publish(Channel::Heartbeat, Format::Json, &heartbeat(7), false)
        .await;
    flood.flush().await;
    steady.flush().await;

    // Everything handled: each of flood's alerts stored or limited.
    let f = backend.wait_device("flood", |d| {
        d["alerts"].as_u64().unwrap() + d["rate_limited"].as_u64().unwrap() == FLOOD
            && d["uptime_s"] == 7
    });
    let s = backend.wait_device("steady", |d| {
        d["alerts"] == STEADY && d["uptime_s"] == STEADY
    });
    assert_eq!(
        backend
            .query(&["devices", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The bucket refilled 1 per second while the test ran: at most that many more than the
    // burst are stored.
    let elapsed = started.elapsed().as_secs() + 1;
    let stored = f["alerts"].as_u64().unwrap();
    assert!(
        (50..=50 + elapsed).contains(&stored),
        "{stored} of flood's alerts stored in {elapsed}s: {f:#}"
    );
    assert_eq!(
        (s["alerts"].clone(), s["rate_limited"].clone()),
        (STEADY.into(), 0.into()),
        "steady loses nothing"
    );
    assert_eq!(s["state"], "online");
    assert_eq!(f["quota_removed"], 0);
    let steady_alerts = backend.query(&["alerts", "--device", "steady", "--json"]);
    assert_eq!(seqs(&steady_alerts), (1..=STEADY).collect::<Vec<_>>());
    // The first 50 of flood are its burst; the gaps the rest leave are told rate limited.
    let flood_alerts = backend.query(&["alerts", "--device", "flood", "--json"]);
    let flood_seqs = seqs(&flood_alerts);
    assert_eq!(flood_seqs[..50], (1..=50).collect::<Vec<_>>());
    let gaps = backend.query(&["gaps", "--device", "flood", "--json"]);
    let gaps = gaps.as_array().unwrap();
    let last = *flood_seqs.last().unwrap();
    assert_eq!(
        gaps.iter()
            .map(|g| g["missing"].as_u64().unwrap())
            .sum::<u64>(),
        last - stored,
        "{gaps:#?}"
    );
    assert!(
        gaps.iter().all(|g| g["rate_limited"] == g["missing"]),
        "{gaps:#?}"
    );
    assert_eq!(
        backend.query(&["gaps", "--device", "steady", "--json"]),
        serde_json::json!([])
    );

    // Recorded with the reason, as a refusal of flood only.
    let refused = backend.query(&["refused", "--json"]);
    let limited = FLOOD - stored;
    let refused = refused.as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(
        (&refused[0]["reason"], &refused[0]["device_id"]),
        (&"rate_limited".into(), &"flood".into())
    );
    assert_eq!(refused[0]["count"], limited);
    assert!(
        refused[0]["last_error"]
            .as_str()
            .unwrap()
            .ends_with("is over the device's rate limit (1/s, burst 50): not stored"),
        "{refused:#?}"
    );
    // The HTTP API and the table say it too.
    let (code, api) = backend.get("/api/devices");
    assert_eq!(code, 200);
    assert_eq!(device_row(&api, "flood").unwrap()["rate_limited"], limited);
    let out = backend_bin()
        .arg("--db")
        .arg(backend.db.as_ref().unwrap())
        .arg("devices")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("RATE LIMITED"), "{table}");
    // DEVICE STATE LAST-SEEN AGENT POLICY ALERTS RATE-LIMITED OVER-QUOTA ...
    let flood_line: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("flood"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        flood_line[5..8],
        [stored.to_string(), limited.to_string(), "0".into()],
        "{table}"
    );
    // Logged at most once a minute per device, not once per alert.
    let log = backend.log();
    let lines = log.matches("flood is over its alert rate limit").count() as u64;
    assert!(
        (1..=1 + started.elapsed().as_secs() / 60).contains(&lines),
        "{lines} lines: {}",
        &log[log.len().saturating_sub(4000)..]
    );
    assert!(!log.contains("steady is over"), "{log}");
    assert!(!log.contains("reconnecting in"), "{log}");
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}

/// With a quota of 10 alerts per device: 10 are all kept; 15 more keep exactly the 10 newest
/// and count the 15 removed; another device keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_keeps_exactly_a_device_s_newest_alerts() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "[limits]\nmax_alerts_per_device = 10\n");
    let mut device = Device::connect(&broker, "gw-1", None).await;
    let mut other = Device::connect(&broker, "gw-2", None).await;
    for seq in 1..=10 {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    device.flush().await;
    let alerts = backend.wait_for(&["alerts", "--device", "gw-1", "--json"], |v| {
        seqs(v).len() == 10
    });
    assert_eq!(seqs(&alerts), (1..=10).collect::<Vec<_>>());
    assert_eq!(backend.device("gw-1")["quota_removed"], 0);
    for seq in 11..=25 {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    other
        .publish(Channel::Alert, Format::Postcard, &alert(1), false)
        .await;
    device.flush().await;
    other.flush().await;
    let gw1 = backend.wait_device("gw-1", |d| d["quota_removed"] == 15);
    assert_eq!(gw1["alerts"], 10);
    assert_eq!(backend.wait_device("gw-2", |_| true)["alerts"], 1);
    let alerts = backend.query(&["alerts", "--device", "gw-1", "--json"]);
    assert_eq!(seqs(&alerts), (16..=25).collect::<Vec<_>>());
    assert_eq!(backend.query(&["gaps", "--json"]), serde_json::json!([]));
    let log = backend.log();
    assert_eq!(
        log.matches("gw-1 is over its quota of 10 stored alerts")
            .count(),
        1,
        "{log}"
    );
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}

/// `flood` loops 2000 heartbeats and 1000 `online` statuses as fast as it can, then says it is
/// offline; `steady` sends 40 alerts and 40 heartbeats among them, as a healthy agent (far
/// more often than one, whose heartbeat comes once a minute by default) within its burst.
/// `flood` has at most its burst (60) and what its bucket refilled (120 a minute) written, the
/// rest counted as `presence_limited` (refusals, devices listing, API) and logged at most once
/// a minute; its change to offline is stored all the same. `steady` loses nothing, is never
/// limited and stays online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_looping_heartbeats_and_statuses_is_limited_while_another_loses_nothing() {
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "be", "");
    let mut flood = Device::connect(&broker, "flood", None).await;
    let mut steady = Device::connect(&broker, "steady", None).await;
    steady
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Online),
            true,
        )
        .await;
    const HEARTBEATS: u64 = 2000;
    const STATUSES: u64 = 1000;
    const STEADY: u64 = 40;
    let started = Instant::now();
    for n in 1..=HEARTBEATS {
        flood
            .publish(Channel::Heartbeat, Format::Postcard, &heartbeat(n), false)
            .await;
        if n % 2 == 0 {
            flood
                .publish(
                    Channel::Status,
                    Format::Postcard,
                    &status(Presence::Online),
                    false,
                )
                .await;
        }
        if n % (HEARTBEATS / STEADY) == 0 {
            let k = n / (HEARTBEATS / STEADY);
            steady
                .publish(Channel::Alert, Format::Postcard, &alert(k), false)
                .await;
            steady
                .publish(Channel::Heartbeat, Format::Postcard, &heartbeat(k), false)
                .await;
        }
    }
    flood
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Offline),
            false,
        )
        .await;
    flood.flush().await;
    steady.flush().await;

    // Everything handled: flood's offline status stored, and of its 3000 heartbeats and
    // statuses before it, at most the burst, what refilled since the start and its first status
    // (a change) written; steady's all stored.
    let sent = HEARTBEATS + STATUSES;
    let devices = backend.wait_for(&["devices", "--json"], |v| {
        let written_at_most = 60 + 2 * (started.elapsed().as_secs() + 1) + 1;
        v.as_array().is_some_and(|a| a.len() == 2)
            && row(v, "flood")["state"] == "offline"
            && row(v, "flood")["presence_limited"]
                .as_u64()
                .is_some_and(|limited| limited + written_at_most >= sent)
            && row(v, "steady")["alerts"] == STEADY
            && row(v, "steady")["uptime_s"] == STEADY
    });
    let (f, s) = (row(&devices, "flood"), row(&devices, "steady"));
    let limited = f["presence_limited"].as_u64().unwrap();
    assert!(limited <= sent - 60, "the burst is written: {f:#}");
    assert_eq!(
        (&s["presence_limited"], &s["rate_limited"], &s["state"]),
        (&0.into(), &0.into(), &"online".into()),
        "steady is never limited: {s:#}"
    );
    assert_eq!(
        seqs(&backend.query(&["alerts", "--device", "steady", "--json"])),
        (1..=STEADY).collect::<Vec<_>>()
    );
    // Its presence changes: online, then offline, nothing in between.
    let presence = backend.query(&["presence", "--device", "flood", "--json"]);
    let states: Vec<&str> = presence
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["offline", "online"], "{presence:#}");

    // Recorded with the reason, as refusals of flood only.
    let refused = backend.query(&["refused", "--json"]);
    let refused = refused.as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(
        (&refused[0]["reason"], &refused[0]["device_id"]),
        (&"presence_limited".into(), &"flood".into())
    );
    assert_eq!(refused[0]["count"], limited);
    assert!(
        refused[0]["last_error"].as_str().unwrap().ends_with(
            "over the device's limit of heartbeats and statuses (120/min, burst 60): not stored"
        ),
        "{refused:#?}"
    );
    let (code, api) = backend.get("/api/devices");
    assert_eq!(code, 200);
    assert_eq!(row(&api, "flood")["presence_limited"], limited);
    assert_eq!(row(&api, "steady")["presence_limited"], 0);
    // Logged at most once a minute per kind, not once per message.
    let log = backend.log();
    let lines = log.matches("(presence_limited)").count() as u64;
    assert!(
        (1..=1 + started.elapsed().as_secs() / 60).contains(&lines),
        "{lines} lines: {}",
        &log[log.len().saturating_sub(4000)..]
    );
    assert!(!log.contains("reconnecting in"), "{log}");
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}

/// The row of device `id` in a devices listing, or null.
fn row<'a>(devices: &'a Value, id: &str) -> &'a Value {
    device_row(devices, id).unwrap_or(&Value::Null)
}
