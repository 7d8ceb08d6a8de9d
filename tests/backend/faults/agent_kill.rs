//! `SIGKILL` of the agent at a random point of a burst of alerts, round after round: what was
//! durable before each kill is stored exactly once; what is lost is only alerts not yet
//! durable, the last ones a run raised.

use std::os::unix::process::ExitStatusExt;

use super::*;

/// Alerts per burst, and the most the kill waits after the burst's first alert (its alerts are
/// raised over about 100 ms: kills land during and after their flushes).
const BURST: usize = 50;
const MAX_DELAY_MS: u64 = 150;

#[test]
fn faults_agent_killed_during_bursts_loses_only_what_was_not_durable() {
    let _serial = serial();
    let rounds = rounds(3, 50);
    let mut rng = Rng::new("agent_kill");
    let broker = Broker::start();
    let mut backend = Backend::start(&broker, "agent-kill", "");
    let mut site = Site::new(&broker, BURST * (rounds + 1));

    // Each round: a burst, a SIGKILL at a random point of it, and what the spool then holds.
    let mut durable = BTreeSet::new();
    let mut runs: Vec<Vec<u64>> = Vec::new();
    for round in 0..rounds {
        // Everything this run raises, from its start (`agent_interrupted` after a kill).
        let before = site.raised().0.len();
        let agent = site.start();
        let files = site.take(BURST);
        let delay = rng.below(MAX_DELAY_MS);
        let burst = std::thread::spawn(move || chmod_all(&files, Duration::from_millis(2)));
        // From the first alert of the burst on: the kill lands while its alerts are raised
        // and flushed, or shortly after.
        let start = Instant::now();
        while !site.raised_alerts().0[before..]
            .iter()
            .any(|a| a["alert"] == "protected_file_changed")
        {
            assert!(
                start.elapsed() < TIMEOUT,
                "round {round}: {}",
                agent.describe()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(delay));
        let out = agent.kill();
        burst.join().unwrap();
        let status = out.status.expect("reaped");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: the agent exited on its own ({status}):\n{}",
            out.log()
        );
        let (raised, torn) = site.raised();
        assert_eq!(
            torn, 0,
            "round {round}: lines of the alert file cut by the kill"
        );
        runs.push(raised[before..].to_vec());
        durable.extend(site.spooled());
    }

    // The last run, not killed: it sends what the others left, and a burst of its own.
    let first_of_last = site.raised().0.len();
    assert_eq!(first_of_last, runs.iter().map(Vec::len).sum::<usize>());
    let agent = site.start();
    let restarted = Instant::now();
    wait_stored(&backend, &durable, "durable before a kill");
    let recover = restarted.elapsed();
    let before = site.raised().0.len();
    chmod_all(&site.take(BURST), Duration::ZERO);
    let start = Instant::now();
    while site.raised().0.len() < before + BURST {
        assert!(start.elapsed() < TIMEOUT, "{}", agent.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed: BTreeSet<u64> = runs.iter().flatten().copied().collect();
    let raised_all = drain(&site, agent, &backend, &killed);
    let (raised, _) = site.raised();
    assert_eq!(raised.len(), raised_all.len(), "each alert raised once");
    let last_run: BTreeSet<u64> = raised[first_of_last..].iter().copied().collect();
    assert!(last_run.len() >= BURST, "the last run raised {last_run:?}");
    let stored = stored(&backend);
    backend.assert_running();

    let tally = Tally {
        raised: raised.iter().copied().collect(),
        stored,
    };
    let lost = tally.check();
    assert!(
        durable.is_disjoint(&lost),
        "durable, never stored: {:?}",
        durable.intersection(&lost).collect::<Vec<_>>()
    );
    // A run's lost alerts are its last ones: the spool makes them durable in order.
    let mut lost_runs = 0;
    for (round, run) in runs.iter().enumerate() {
        if let Some(first) = run.iter().position(|s| lost.contains(s)) {
            lost_runs += 1;
            let kept_after: Vec<&u64> = run[first..].iter().filter(|s| !lost.contains(s)).collect();
            assert!(
                kept_after.is_empty(),
                "round {round}: alert {} lost, later ones of that run stored: {kept_after:?}",
                run[first]
            );
        }
    }
    assert!(
        lost.iter().all(|s| !last_run.contains(s)),
        "the clean run lost alerts"
    );
    tally.print(
        "agent_kill",
        lost.len(),
        recover,
        &format!(
            "rounds={rounds} restarts={} killed_runs_losing={lost_runs} durable_at_kill={} \
             other_alerts={}",
            rounds + 1,
            durable.len(),
            site.others()
        ),
    );
    backend.stop();
}
