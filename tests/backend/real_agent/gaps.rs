//! The gaps in a real agent's sequence numbers that a restart, a counter reset and a full spool
//! leave, as `gaps`, `/api/gaps` and `/api/devices/ID/gaps` report them.

use super::*;

#[test]
fn a_restart_of_the_agent_leaves_the_gap_the_backend_reports_as_a_restart() {
    let _serial = serial();
    let broker = Broker::start();
    let backend = Backend::with_http(&broker, "gaps", "");
    let site = Site::new(&broker);

    // The first run raises alerts 1 and 2; it reserved sequence numbers up to 64.
    let agent = site.start_agent();
    site.change("a");
    site.change("b");
    wait_for_alerts(&backend, &[1, 2], &agent);
    assert_eq!(backend.query(&["gaps", "--json"]), serde_json::json!([]));
    stop(agent);
    assert_eq!(
        fs::read_to_string(site.root.join("state/alert.seq")).unwrap(),
        "64\n",
        "the block the first run reserved"
    );

    // The second run goes on after the reserved block: its first alert is 65.
    let agent = site.start_agent();
    site.change("c");
    wait_for_alerts(&backend, &[1, 2, 65], &agent);
    stop(agent);
    assert_eq!(site.raised(), [1, 2, 65], "the agent's own record");

    let gap = serde_json::json!([{
        "device_id": DEVICE, "first_missing": 3, "last_missing": 64, "missing": 62,
        "restart": true
    }]);
    assert_eq!(backend.query(&["gaps", "--json"]), gap);
    assert_eq!(backend.query(&["gaps", "--device", DEVICE, "--json"]), gap);
    assert_eq!(backend.get("/api/gaps"), (200, gap.clone()));
    assert_eq!(
        backend.get(&format!("/api/devices/{DEVICE}/gaps")),
        (200, gap)
    );
    assert_eq!(
        backend.get("/api/devices/gw-other/gaps"),
        (200, serde_json::json!([]))
    );
    backend.stop();
}

#[test]
fn alerts_numbered_after_the_counter_and_spool_were_lost_are_stored_and_the_reset_reported() {
    let _serial = serial();
    let broker = Broker::start();
    let backend = Backend::start(&broker, "reset", "");
    let site = Site::new(&broker);

    let agent = site.start_agent();
    site.change("a");
    site.change("b");
    wait_for_alerts(&backend, &[1, 2], &agent);
    stop(agent);

    // The counter and the spool removed while the agent is stopped (a wiped or reflashed state
    // partition, or someone covering their tracks): the next alerts must not be numbered 1
    // and 2 again, which the backend already holds and would take for copies.
    fs::remove_file(site.root.join("state/alert.seq")).unwrap();
    fs::remove_dir_all(site.root.join("state/spool")).unwrap();
    let agent = site.start_agent();
    site.change("c");
    let start = Instant::now();
    while site.raised().len() < 3 {
        assert!(start.elapsed() < TIMEOUT, "{}", agent.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    let new = site.raised()[2];
    assert!(
        new > 2 + picket_proto::SEQ_RESET_JUMP,
        "a new counter begins far from the old one: {new}"
    );
    let stored = wait_for_alerts(&backend, &[1, 2, new], &agent);
    assert!(
        stored[0]["path"].as_str().unwrap().ends_with("/c"),
        "{stored:#}"
    );
    stop(agent);
    assert_eq!(
        backend.query(&["gaps", "--json"]),
        serde_json::json!([{
            "device_id": DEVICE, "first_missing": 3, "last_missing": new - 1, "missing": 0,
            "restart": false, "reset": true
        }])
    );
    backend.stop();
}

#[test]
fn alerts_a_full_spool_dropped_are_the_gap_the_backend_reports() {
    let _serial = serial();
    let mut broker = Broker::start();
    let backend = Backend::with_http(&broker, "spool", "");
    let site = Site::new(&broker);
    let many = site.watch_more(400);
    let agent = site.start_agent_with("[spool]\nmax_bytes = \"64KiB\"\n");

    // Alert 1 delivered and acknowledged: it left the spool.
    site.change("a");
    wait_for_alerts(&backend, &[1], &agent);
    wait_counters(&backend, &agent, "alert 1 acknowledged", |c| {
        c["alerts"]["sent"] == 1 && c["spool_pending"] == 0
    });

    // The broker away, 400 alerts: more than 64 KiB of spool. The oldest are dropped.
    broker.stop();
    for name in &many {
        site.change(name);
    }
    let start = Instant::now();
    while site
        .raised_alerts()
        .iter()
        .filter(|a| a["alert"] == "protected_file_changed")
        .count()
        < 1 + many.len()
    {
        assert!(
            start.elapsed() < TIMEOUT,
            "the agent did not raise the 400 alerts:\n{}",
            agent.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.wait_log("the spool is full", TIMEOUT);

    // The broker back; the backend subscribed again before the agent sends what it kept.
    agent.pause();
    broker.restart();
    let mut backend = backend;
    backend.wait_log("subscribed to", 2);
    agent.resume();
    let resumed_ms = now_ms();

    // Drained: nothing pending, and every drop the agent counted said by an alerts_dropped
    // alert the backend stored.
    let dropped = wait_drained(&backend, &agent, resumed_ms);
    stop(agent);
    assert!(dropped > 0);

    // The dropped ones are the oldest of the lowest severity (high, below the reports'
    // critical): the first `dropped` of the 400. The backend has every other alert the agent
    // raised, and the dropped ones as its gaps.
    let raised = site.raised_alerts();
    for a in &raised {
        let kind_severity = (
            a["alert"].as_str().unwrap(),
            a["severity"].as_str().unwrap(),
        );
        assert!(
            matches!(
                kind_severity,
                ("protected_file_changed", "high") | ("alerts_dropped", "critical")
            ),
            "an alert the test did not cause: {a}"
        );
    }
    let lost: BTreeSet<u64> = raised
        .iter()
        .filter(|a| a["alert"] == "protected_file_changed" && a["seq"] != 1)
        .map(|a| a["seq"].as_u64().unwrap())
        .take(dropped as usize)
        .collect();
    let all: Vec<u64> = raised.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "raised in order"
    );
    let kept: Vec<u64> = all.iter().copied().filter(|s| !lost.contains(s)).collect();
    let stored = backend.query(&["alerts", "--device", DEVICE, "--json"]);
    assert_eq!(seqs(&stored), kept, "the alerts stored");
    let gaps = serde_json::Value::Array(
        runs(&lost)
            .into_iter()
            .map(|(first, last)| {
                serde_json::json!({
                    "device_id": DEVICE, "first_missing": first, "last_missing": last,
                    "missing": last - first + 1,
                    // An agent restart's gap lies in one block of 64 numbers and ends with it.
                    "restart": last % 64 == 0 && (first - 1) / 64 == (last - 1) / 64,
                })
            })
            .collect(),
    );
    eprintln!("{dropped} alerts dropped; the gaps: {gaps}");
    assert_eq!(backend.query(&["gaps", "--json"]), gaps);
    assert_eq!(backend.get("/api/gaps"), (200, gaps.clone()));
    assert_eq!(
        backend.get(&format!("/api/devices/{DEVICE}/gaps")),
        (200, gaps)
    );
    backend.stop();
}

/// Waits until the device's last heartbeat (as the backend stored it) satisfies `done`.
fn wait_counters(backend: &Backend, agent: &Agent, what: &str, done: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let devices = backend.query(&["devices", "--json"]);
        let counters = devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == DEVICE)
            .map(|d| d["counters"].clone())
            .unwrap_or_default();
        if counters.is_object() && done(&counters) {
            return;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "no heartbeat with {what}: {counters:#}\nagent:\n{}",
            agent.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until a heartbeat the agent sent after `since_ms` says nothing is pending in its
/// spool and the drops it counted are those the stored alerts_dropped alerts report; returns
/// that number.
fn wait_drained(backend: &Backend, agent: &Agent, since_ms: u64) -> u64 {
    let start = Instant::now();
    loop {
        let reported: u64 = backend
            .query(&["alerts", "--kind", "alerts_dropped", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["details"]["dropped"].as_u64().unwrap())
            .sum();
        let devices = backend.query(&["devices", "--json"]);
        let counters = &devices[0]["counters"];
        if counters["time_ms"].as_u64().is_some_and(|t| t > since_ms)
            && counters["spool_pending"] == 0
            && counters["alerts"]["dropped"] == reported
        {
            return reported;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not drained, or drops not all reported ({reported} reported): {counters:#}\nagent:\n{}",
            agent.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The runs of consecutive numbers in `set`, as (first, last).
fn runs(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &n in set {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => runs.push((n, n)),
        }
    }
    runs
}
