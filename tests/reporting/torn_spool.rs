//! A spool damaged while the agent was down: the damage is logged and counted at start-up, the
//! damaged alerts reported as dropped, and every other alert delivered.

use super::*;

#[test]
fn a_damaged_spool_is_logged_and_counted_and_the_rest_delivered() {
    let _serial = serial();
    let mut fleet = Fleet::new("torn");
    fleet.broker.stop();
    let config = fleet.config("");
    let agent = Agent::start(&config);
    let paths = fleet.unknown_execs("torn", 10);
    let alerts_file = fleet.root.join("alerts.jsonl");
    let start = Instant::now();
    while !paths.iter().all(|p| seq_of(&alerts_file, p).is_some()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "alerts not raised:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // A clean stop: everything raised is in the spool, durable.
    agent.stop();

    // One of ours damaged in the middle (a bit flipped in its body), and the newest segment's
    // last record torn (cut in its body, as by a power cut during the write).
    let victim = seq_of(&alerts_file, &paths[3]).unwrap();
    let segments = spool_segments(&fleet.root.join("state/spool"));
    let mut damaged = false;
    for segment in &segments {
        let mut bytes = fs::read(segment).unwrap();
        if let Some(r) = records(&bytes).into_iter().find(|r| r.seq == victim) {
            bytes[r.body + r.len / 2] ^= 0x20;
            fs::write(segment, &bytes).unwrap();
            damaged = true;
        }
    }
    assert!(damaged, "alert #{victim} is in no segment of {segments:?}");
    let newest = segments.last().unwrap();
    let bytes = fs::read(newest).unwrap();
    let last = *records(&bytes).last().unwrap();
    assert_ne!(last.seq, victim, "the victim is the last record");
    fs::write(newest, &bytes[..last.body + last.len / 2]).unwrap();
    let torn_path = paths
        .iter()
        .find(|p| seq_of(&alerts_file, p) == Some(last.seq));

    fleet.broker.restart();
    let sub = fleet.subscriber();
    let agent = Agent::start(&config);
    agent.wait_log("2 damaged record(s) skipped", Duration::from_secs(5));
    let lost: Vec<&String> = [Some(&paths[3]), torn_path].into_iter().flatten().collect();
    let rest: Vec<String> = paths
        .iter()
        .filter(|p| !lost.contains(p))
        .cloned()
        .collect();
    wait_for_alerts(&sub, &rest, Duration::from_secs(30), || agent.log());
    // Counted as dropped, said in an alerts_dropped alert, and the spool drained otherwise.
    let start = Instant::now();
    loop {
        let reported: u64 = sub
            .messages()
            .iter()
            .filter(|m| on(m, Channel::Alert))
            .map(decode::<Alert>)
            .filter(|a| a.kind == AlertKind::AlertsDropped)
            .map(|a| a.details.0["dropped"].as_u64().unwrap())
            .sum();
        let hb = last_heartbeat(&sub);
        let drained = hb
            .as_ref()
            .is_some_and(|hb| hb.spool_pending == 0 && hb.alerts.dropped == 2);
        if drained && reported == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the 2 damaged records not counted and reported ({reported} reported): {hb:?}\n{}",
            tail(&agent.log(), 20)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let wanted: BTreeSet<String> = lost.iter().map(|p| (*p).clone()).collect();
    let delivered = alerts_about(&sub, &wanted);
    assert!(
        delivered.is_empty(),
        "damaged alerts were delivered: {delivered:?}"
    );
    agent.stop();
}
