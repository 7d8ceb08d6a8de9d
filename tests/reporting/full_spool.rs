//! A full spool: the oldest dropped, the drops said, disk and memory bounded.

use super::*;

#[test]
fn a_full_spool_drops_the_oldest_and_says_how_many() {
    let _serial = serial();
    let mut fleet = Fleet::new("full");
    fleet.broker.stop();
    let config = fleet.config("[spool]\nmax_bytes = \"64KiB\"\n");
    let agent = Agent::start(&config);
    let paths = fleet.unknown_execs("full", 600);
    let spool = fleet.root.join("state/spool");
    wait_until_the_spool_is_full_and_check_its_bounds(&agent, &spool);

    // Subscribed before the agent reconnects (see the outage test).
    agent.pause();
    fleet.broker.restart();
    let sub = fleet.subscriber();
    agent.resume();
    // What is left arrives: the newest alerts, and the reports of how many were dropped (one a
    // second at most, so the reports do not fill the spool themselves).
    let (hb, reported_dropped) = wait_until_drained_and_drops_reported(&sub, &agent);
    let wanted: BTreeSet<String> = paths.iter().cloned().collect();
    let delivered = alerts_about(&sub, &wanted);
    assert!(reported_dropped > 0, "no alerts_dropped alert arrived");
    let reports = alerts_received(&sub)
        .iter()
        .filter(|a| a.kind == AlertKind::AlertsDropped)
        .count();
    assert!(
        reports < 100,
        "{reports} alerts_dropped alerts for {reported_dropped} drops"
    );
    assert!(
        delivered.len() < paths.len(),
        "nothing of ours was dropped?"
    );
    // The oldest went first (ours are all of one severity, high): those delivered are the
    // newest, with no gap.
    let survivors: Vec<usize> = (0..paths.len())
        .filter(|&i| delivered.contains_key(&paths[i]))
        .collect();
    let first = paths.len() - delivered.len();
    assert!(
        survivors.iter().copied().eq(first..paths.len()),
        "the {} alerts delivered are not the newest of ours (from #{first} on): {survivors:?}",
        delivered.len()
    );
    // Everything spooled is accounted for: sent or dropped.
    assert_eq!(
        hb.alerts.spooled,
        hb.alerts.sent + hb.alerts.dropped,
        "{hb:?}"
    );
    agent.stop();
}

/// Waits up to 30 s for the agent to log that the spool is full, then 2 s more; the spool's
/// directory stays within its 64 KiB bound and one segment (8 KiB: a segment being compacted)
/// and the agent's RSS under 64 MiB.
fn wait_until_the_spool_is_full_and_check_its_bounds(agent: &Agent, spool: &Path) {
    let start = Instant::now();
    while !agent.log().contains("the spool is full") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no drop reported:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(2));
    let bytes = dir_size(spool);
    assert!(
        bytes <= (64 + 8) * 1024,
        "the spool takes {bytes} bytes, over its bound of 64 KiB and one 8 KiB segment"
    );
    let rss = rss_kib(agent.pid());
    assert!(rss < 64 * 1024, "agent RSS {rss} KiB");
}

/// Every alert `sub` received.
fn alerts_received(sub: &Subscriber) -> Vec<Alert> {
    sub.messages()
        .iter()
        .filter(|m| on(m, Channel::Alert))
        .map(decode)
        .collect()
}

/// How many drops the alerts_dropped alerts among `alerts` report in all.
fn reported_drops(alerts: &[Alert]) -> u64 {
    alerts
        .iter()
        .filter(|a| a.kind == AlertKind::AlertsDropped)
        .map(|a| a.details.0["dropped"].as_u64().unwrap())
        .sum()
}

/// Waits up to 60 s for a heartbeat with nothing pending in the spool and as many drops as
/// the alerts_dropped alerts received report; returns it and that number.
fn wait_until_drained_and_drops_reported(sub: &Subscriber, agent: &Agent) -> (Heartbeat, u64) {
    let start = Instant::now();
    loop {
        let hb = last_heartbeat(sub);
        let reported_dropped = reported_drops(&alerts_received(sub));
        if let Some(hb) =
            hb.filter(|hb| hb.spool_pending == 0 && hb.alerts.dropped == reported_dropped)
        {
            break (hb, reported_dropped);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "spool not drained, or drops not all reported ({reported_dropped} reported): {:?}\n{}",
            last_heartbeat(sub),
            tail(&agent.log(), 20)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
