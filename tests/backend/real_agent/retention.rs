//! The retention of a running `serve` deletes a real agent's old alerts and policy results and
//! keeps newer ones.

use super::*;

#[test]
fn the_retention_deletes_old_alerts_and_policy_results_and_keeps_newer_ones() {
    let _serial = serial();
    let broker = Broker::start();
    // Received more than 12 s ago: deleted, by a run every 500 ms. The windows in which the
    // test looks (all three alerts there; only the newer one) are 5 s or more wide, so that
    // a loaded machine's pauses do not close them.
    let backend = Backend::with_http(
        &broker,
        "ret",
        &format!(
            "[store]\nsqlite = \"{}\"\nretention = \"12s\"\nretention_interval = \"500ms\"\n",
            broker.path("ret.db").display()
        ),
    );
    let site = Site::new(&broker);
    let agent = site.start_agent();
    wait_online_with_policy(&backend, "base", 1, &agent);

    // The old ones: a policy result, then alerts 1 and 2.
    let first = site.sign("first", 5, None);
    assert_eq!(push(&backend, &first).status.code(), Some(0));
    site.change("a");
    site.change("b");
    let old = wait_for_alerts(&backend, &[1, 2], &agent);
    let old_results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(serials_of(&old_results), [5]);
    let old_last = received(&old).max(received(&old_results));

    // The newer ones, 5 s later: a policy result, then alert 3. Nothing is old enough yet.
    let wait = (old_last + 5000).saturating_sub(now_ms());
    std::thread::sleep(Duration::from_millis(wait));
    let second = site.sign("second", 6, None);
    assert_eq!(push(&backend, &second).status.code(), Some(0));
    site.change("c");
    let all = wait_for_alerts(&backend, &[1, 2, 3], &agent);
    let all_results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    assert_eq!(serials_of(&all_results), [5, 6]);
    let new_first = all
        .as_array()
        .unwrap()
        .iter()
        .chain(all_results.as_array().unwrap())
        .map(|r| r["received_ms"].as_u64().unwrap())
        .filter(|&ms| ms > old_last)
        .min()
        .unwrap();
    assert!(
        new_first >= old_last + 5000,
        "the newer ones were received {} ms after the old ones",
        new_first - old_last
    );
    assert_eq!(api_device_alerts(&backend), 3);

    // Once the old ones are gone, the newer ones are still there (they have 5 s more to live).
    let kept = wait_api(&backend, &format!("/api/alerts?device={DEVICE}"), |v| {
        !seqs(v).contains(&1) && !seqs(v).contains(&2)
    });
    let kept_results = backend.get("/api/policy-results").1;
    assert_eq!(seqs(&kept), [3], "{kept:#}");
    assert_eq!(serials_of(&kept_results), [6], "{kept_results:#}");
    assert_eq!(api_device_alerts(&backend), 1);
    // The run that left these said how many it deleted (its line follows the deletion).
    let deleted_then = wait_retention_deletions(&backend, 2);
    assert_eq!(
        deleted_then.iter().sum::<u64>(),
        2,
        "the retention's runs so far: {deleted_then:?}"
    );

    // And later the newer ones go too: the retention runs on.
    wait_api(&backend, &format!("/api/alerts?device={DEVICE}"), |v| {
        v.as_array().unwrap().is_empty()
    });
    wait_api(&backend, "/api/policy-results", |v| {
        v.as_array().unwrap().is_empty()
    });
    assert_eq!(api_device_alerts(&backend), 0);
    let deleted = wait_retention_deletions(&backend, 3);
    assert_eq!(
        deleted.iter().sum::<u64>(),
        3,
        "the retention's runs: {deleted:?}"
    );
    // The CLI reads the same store.
    assert_eq!(backend.query(&["alerts", "--json"]), serde_json::json!([]));
    stop(agent);
    backend.stop();
}

/// The latest `received_ms` among `rows`.
fn received(rows: &Value) -> u64 {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["received_ms"].as_u64().unwrap())
        .max()
        .unwrap()
}

/// The serials of the policy results `rows` (all applied), in ascending order.
fn serials_of(rows: &Value) -> Vec<u64> {
    let mut serials: Vec<u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["outcome"], "applied", "{r}");
            r["serial"].as_u64().unwrap()
        })
        .collect();
    serials.sort();
    serials
}

/// The device's alert count in `/api/devices`.
fn api_device_alerts(backend: &Backend) -> u64 {
    let (code, devices) = backend.get("/api/devices");
    assert_eq!(code, 200);
    devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == DEVICE)
        .unwrap_or_else(|| panic!("{DEVICE} not in {devices:#}"))["alerts"]
        .as_u64()
        .unwrap()
}

/// Polls the API's `path` until `done` accepts its answer (status 200).
fn wait_api(backend: &Backend, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (code, v) = backend.get(path);
        assert_eq!(code, 200, "{path}: {v}");
        if done(&v) {
            return v;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{path} never gave the expected answer; last: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many alerts each run of the retention that deleted some said it deleted, in order,
/// once they add up to `total` at least.
fn wait_retention_deletions(backend: &Backend, total: u64) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let runs: Vec<u64> = backend
            .log()
            .lines()
            .filter_map(|l| l.split("retention: deleted ").nth(1))
            .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
            .collect();
        if runs.iter().sum::<u64>() >= total {
            return runs;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the retention never said it deleted {total} alert(s): {runs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
