//! `SIGKILL` of `serve` while it stores a burst, then started again: the broker delivers again
//! what it had not acknowledged (its session outlives the connection), and the store keeps one
//! copy of each alert. Every alert is stored exactly once.

use super::*;

/// Alerts per burst, raised at least 1 ms apart: still being raised when the kill comes.
const BURST: usize = 400;

#[test]
fn faults_serve_killed_mid_batch_stores_every_alert_exactly_once() {
    let _serial = serial();
    let rounds = rounds(1, 20);
    let broker = Broker::start();
    let mut backend = Backend::start(&broker, "serve-kill", "");
    let mut site = Site::new(&broker, BURST * rounds);
    let agent = site.start();

    let mut at_kill = Vec::new();
    let mut restarted = Instant::now();
    for round in 0..rounds {
        // The previous burst all raised and stored: what is stored next is this burst.
        let start = Instant::now();
        while site.raised().0.len() < round * BURST {
            assert!(start.elapsed() < TIMEOUT, "{}", agent.describe());
            std::thread::sleep(Duration::from_millis(50));
        }
        let so_far: BTreeSet<u64> = site.raised().0.into_iter().collect();
        let base = wait_stored(&backend, &so_far, "the previous bursts").len();
        let files = site.take(BURST);
        let burst = std::thread::spawn(move || chmod_all(&files, Duration::from_millis(1)));
        // Killed as soon as the first alerts of the burst are stored: the rest are being
        // raised, sent, queued at the broker and stored.
        let start = Instant::now();
        while stored(&backend).len() == base {
            assert!(
                start.elapsed() < TIMEOUT,
                "round {round}: nothing of the burst stored\n{}",
                agent.describe()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        backend.kill();
        let stored_then = stored_in(&broker, "serve-kill").len() - base;
        assert!(
            stored_then < BURST,
            "round {round}: the whole burst was stored before the kill"
        );
        at_kill.push(stored_then);
        burst.join().unwrap();
        backend = Backend::start(&broker, "serve-kill", "");
        restarted = Instant::now();
        assert!(
            backend.log().contains("session present: true"),
            "the broker kept no session for the backend:\n{}",
            backend.log()
        );
    }

    // Every change raised, and what was raised stored: the end of the recovery.
    let start = Instant::now();
    while site.raised().0.len() < rounds * BURST {
        assert!(start.elapsed() < TIMEOUT, "{}", agent.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    let so_far: BTreeSet<u64> = site.raised().0.into_iter().collect();
    wait_stored(&backend, &so_far, "raised");
    let recover = restarted.elapsed();
    let raised = drain(&site, agent, &backend, &BTreeSet::new());
    assert_eq!(raised.len(), BURST * rounds, "one alert per change");
    let stored = stored(&backend);
    backend.assert_running();
    let tally = Tally { raised, stored };
    let lost = tally.check();
    assert!(lost.is_empty(), "lost: {lost:?}");
    tally.print(
        "serve_kill",
        0,
        recover,
        &format!(
            "rounds={rounds} restarts={rounds} stored_at_kill={}",
            at_kill
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    backend.stop();
}

/// What the store of backend `name` holds while no `serve` runs.
fn stored_in(broker: &Broker, name: &str) -> BTreeMap<u64, usize> {
    let out = backend_bin()
        .arg("--db")
        .arg(broker.path(&format!("{name}.db")))
        .args(["alerts", "--device", DEVICE, "--limit", "100000", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let alerts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut counts = BTreeMap::new();
    for a in alerts.as_array().unwrap() {
        *counts.entry(a["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    counts
}
