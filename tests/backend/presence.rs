//! What the backend makes of a device's silence: a real agent killed (its last will says
//! `lost`, and the backend raises `device_silent`), stopped cleanly (`offline`, nothing
//! raised) and restarted (`online`, and `device_returned` after a kill); a device that keeps
//! its connection and sends nothing (`timed_out`, raised once).

use super::real_agent::{serial, stop, Site, DEVICE};
use super::*;

/// Waits until device `id` is in `state`; returns its row of `devices --json`.
fn wait_state(backend: &Backend, id: &str, state: &str) -> Value {
    backend.wait_device(id, |d| d["state"] == state)
}

/// The alerts the backend raised about `id`, oldest first.
fn backend_alerts(backend: &Backend, id: &str) -> Vec<Value> {
    let mut alerts: Vec<Value> = backend
        .query(&["alerts", "--device", id, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["format"] == "backend")
        .cloned()
        .collect();
    alerts.reverse();
    alerts
}

#[test]
fn a_killed_agent_is_lost_and_raised_and_a_clean_stop_is_not() {
    let _serial = serial();
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "be", "");
    let site = Site::new(&broker);

    // A clean stop and a restart: offline, then online, and nothing raised.
    let agent = site.start_agent();
    wait_state(&backend, DEVICE, "online");
    stop(agent);
    wait_state(&backend, DEVICE, "offline");
    let agent = site.start_agent();
    wait_state(&backend, DEVICE, "online");
    assert!(
        backend_alerts(&backend, DEVICE).is_empty(),
        "{:#}",
        backend.query(&["alerts", "--json"])
    );

    // SIGKILL: the broker publishes the will, the device is lost and the backend says so.
    let killed = agent.kill();
    let lost = wait_state(&backend, DEVICE, "lost");
    assert_eq!(lost["online"], false);
    let alerts = backend_alerts(&backend, DEVICE);
    assert_eq!(alerts.len(), 1, "{alerts:#?}\nagent:\n{}", killed.log());
    let silent = &alerts[0];
    assert_eq!(silent["kind"], "device_silent");
    assert_eq!(silent["severity"], "high");
    assert_eq!(silent["rule"], "presence");
    assert_eq!(silent["details"]["state"], "lost");
    assert_eq!(silent["details"]["previous"], "online");
    assert_eq!(silent["boot_id"], lost["boot_id"]);
    // The table says lost too, and the HTTP API has the state and the alert.
    let out = backend_bin()
        .arg("--db")
        .arg(backend.db.as_ref().unwrap())
        .arg("devices")
        .output()
        .unwrap();
    let table = stdout_of(&out);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(DEVICE) && l.contains(" lost ")),
        "{table}"
    );
    let (code, devices) = backend.get("/api/devices");
    assert_eq!(code, 200);
    assert_eq!(devices[0]["state"], "lost");
    let (code, overview) = backend.get("/api/overview");
    assert_eq!(code, 200);
    assert_eq!(overview["devices"]["lost"], 1);
    let (code, found) = backend.get("/api/alerts?kind=device_silent");
    assert_eq!(code, 200);
    assert_eq!(found.as_array().unwrap().len(), 1, "{found:#}");
    let id = found[0]["id"].as_u64().unwrap();
    let (code, one) = backend.get(&format!("/api/alerts/{id}"));
    assert_eq!(code, 200);
    assert_eq!(
        one["ocsf"]["finding_info"]["uid"],
        format!("{DEVICE}:backend:{}", found[0]["seq"])
    );
    // The backend's alert is in none of the device's gaps (its own restarts may leave some).
    let gaps = backend.query(&["gaps", "--json"]);
    assert!(
        gaps.as_array()
            .unwrap()
            .iter()
            .all(|g| g["restart"] == true),
        "{gaps:#}"
    );

    // Restarted: online, and the return is raised, in the same boot.
    let agent = site.start_agent();
    let back = wait_state(&backend, DEVICE, "online");
    let alerts = backend_alerts(&backend, DEVICE);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let returned = &alerts[1];
    assert_eq!(returned["kind"], "device_returned");
    assert_eq!(returned["severity"], "medium");
    assert_eq!(returned["details"]["previous"], "lost");
    assert_eq!(returned["details"]["rebooted"], false);
    assert_eq!(returned["boot_id"], back["boot_id"]);
    stop(agent);
    wait_state(&backend, DEVICE, "offline");
    assert_eq!(backend_alerts(&backend, DEVICE).len(), 2);

    // The history, from the CLI and the API, newest first: each change once, and the alerts
    // the kill and the return raised.
    let changes = backend.query(&["presence", "--device", DEVICE, "--json"]);
    let seen: Vec<(&str, bool)> = changes
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| (c["state"].as_str().unwrap(), c["alert_id"].is_u64()))
        .collect();
    assert_eq!(
        seen,
        [
            ("online", false),
            ("offline", false),
            ("online", false),
            ("lost", true),
            ("online", true),
            ("offline", false),
        ],
        "{changes:#}"
    );
    let (_, returned) = backend.get("/api/alerts?kind=device_returned");
    assert_eq!(changes[1]["alert_id"], returned[0]["id"]);
    assert_eq!(changes[2]["alert_id"], found[0]["id"]);
    let (code, api) = backend.get(&format!("/api/devices/{DEVICE}/presence"));
    assert_eq!(code, 200);
    assert_eq!(api, changes);
    backend.stop();
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A device that keeps its connection open and sends nothing: `timed_out` once the heartbeat
/// timeout has passed, with one `device_silent` however many checks follow (a second device,
/// timing out later, shows that the checks went on); its next message ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_times_out_once_and_its_next_message_ends_it() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "[devices]\nheartbeat_timeout = \"2s\"\n");
    let will = |id: &str| picket_proto::encode(Format::Postcard, id, &status(Presence::Lost)).ok();
    let mut first = Device::connect(&broker, "gw-quiet", will("gw-quiet")).await;
    first
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Online),
            true,
        )
        .await;
    first.flush().await;
    let silent = wait_backend_alerts(&backend, "gw-quiet", 1);
    assert_eq!(silent[0]["kind"], "device_silent");
    assert_eq!(silent[0]["details"]["state"], "timed_out");
    assert_eq!(backend.device("gw-quiet")["state"], "timed_out");

    // A second device, silent from now on: when it has timed out, the checks have run again
    // and again, and the first is still raised once.
    let mut second = Device::connect(&broker, "gw-later", will("gw-later")).await;
    second
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Online),
            true,
        )
        .await;
    second.flush().await;
    wait_backend_alerts(&backend, "gw-later", 1);
    assert_eq!(backend_alerts(&backend, "gw-quiet").len(), 1);

    // A heartbeat of the first: online again, and said so.
    first
        .publish(Channel::Heartbeat, Format::Postcard, &heartbeat(), false)
        .await;
    first.flush().await;
    let alerts = wait_backend_alerts(&backend, "gw-quiet", 2);
    assert_eq!(alerts[1]["kind"], "device_returned");
    assert_eq!(alerts[1]["details"]["previous"], "timed_out");

    // The broker ends the second's connection: lost, but that silence was raised already.
    second.vanish();
    wait_state(&backend, "gw-later", "lost");
    assert_eq!(backend_alerts(&backend, "gw-later").len(), 1);
    drop(first);
    backend.stop();
}

/// Waits until the backend raised `n` alerts about `id`; returns them, oldest first.
fn wait_backend_alerts(backend: &Backend, id: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let alerts = backend_alerts(backend, id);
        if alerts.len() >= n {
            return alerts;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{id}: {} backend alert(s), not {n}: {alerts:#?}\nlog:\n{}",
            alerts.len(),
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        time_ms: 2,
        uptime_s: 60,
        agent_version: "0.1.1".into(),
        policy_serial: 3,
        rss_bytes: 5 << 20,
        sensors: vec![],
        alerts: AlertCounters::default(),
        spool_pending: 0,
        spool_bytes: 0,
        exec_unverified: Some(0),
    }
}
