//! Alerts, status and heartbeats delivered in order, in either format, through outages and restarts.

use super::*;

#[test]
fn alerts_status_and_heartbeats_reach_the_fleet_in_order() {
    let _serial = serial();
    let fleet = Fleet::new("order");
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config("format = \"postcard\"\n"));
    agent.wait_log("connected to the broker", Duration::from_secs(20));

    let online = sub
        .wait_for_message(Duration::from_secs(10), |m| on(m, Channel::Status))
        .expect("a status message");
    let status: Status = decode(&online);
    assert_eq!(status.state, Presence::Online);
    assert_eq!(status.policy_serial, 1);
    assert_eq!(status.policy_name, "base");

    let paths = fleet.unknown_execs("order", 20);
    let seen = wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    assert_once_each(&seen);
    // In the order they were caused.
    let seqs: Vec<u64> = paths.iter().map(|p| seen[p][0]).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "alerts out of order: {seqs:?}"
    );
    // With their process context.
    let first = sub
        .messages()
        .iter()
        .filter(|m| on(m, Channel::Alert))
        .map(decode::<Alert>)
        .find(|a| {
            a.kind == AlertKind::UnknownExecutable && a.path.as_deref() == Some(paths[0].as_str())
        })
        .unwrap();
    let process = first.process.expect("process context");
    assert_eq!(process.exe.as_deref(), Some(paths[0].as_str()));
    assert_eq!(process.argv, vec![paths[0].clone()]);
    assert_eq!(process.ppid, Some(std::process::id()));
    assert_eq!(
        process.sha256.as_deref(),
        Some(sha256_file(Path::new(&paths[0])).as_str())
    );

    // An exec of a file that cannot be hashed.
    fleet.unhashable_exec("order-unhashable");

    // Heartbeats count what happened.
    let start = Instant::now();
    let hb = loop {
        if let Some(hb) = last_heartbeat(&sub)
            .filter(|hb| hb.alerts.sent >= 20 && hb.exec_unverified.is_some_and(|n| n >= 1))
        {
            break hb;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no heartbeat counting 20 sent alerts and an unverified exec: {:?}",
            last_heartbeat(&sub)
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(hb.policy_serial, 1);
    assert!(hb.rss_bytes > 0);
    assert!(hb.alerts.raised >= 20 && hb.alerts.spooled >= 20, "{hb:?}");
    assert!(
        hb.sensors
            .iter()
            .any(|s| s.sensor == "process" && s.seen >= 20),
        "{hb:?}"
    );

    // A clean stop says offline (retained).
    let log = agent.stop();
    let offline = sub
        .wait_for_message(Duration::from_secs(10), |m| {
            on(m, Channel::Status) && decode::<Status>(m).state == Presence::Offline
        })
        .unwrap_or_else(|| panic!("no offline status; agent log:\n{}", tail(&log, 30)));
    assert!(!offline.retain, "a live status forwarded as retained");
    // Retained: a client that subscribes afterwards is told at once.
    drop(sub);
    assert_eq!(retained_status(&fleet).state, Presence::Offline);
}

/// The status the broker keeps for the device, as a client that subscribes now receives it.
fn retained_status(fleet: &Fleet) -> Status {
    let sub = fleet.subscriber();
    let m = sub
        .wait_for_message(Duration::from_secs(5), |m| on(m, Channel::Status))
        .expect("a retained status");
    assert!(
        m.retain,
        "the first status to a new subscriber is not the retained one"
    );
    decode(&m)
}

/// The last will: the broker says the device lost (retained) when it is SIGKILLed or its link
/// goes silent beyond the keep-alive, where a clean stop says offline.
#[test]
fn the_lost_status_is_retained_after_a_sigkill_and_a_silent_link() {
    let _serial = serial();
    let fleet = Fleet::new("will");
    // The shortest keep-alive: the broker gives up on a silent link after one and a half of it.
    let config = fleet.config("");
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("keep_alive = \"10s\""));
    fs::write(
        &config,
        text.replace("keep_alive = \"10s\"", "keep_alive = \"5s\""),
    )
    .unwrap();

    // SIGKILL: the connection closes without DISCONNECT.
    let sub = fleet.subscriber();
    let agent = Agent::start(&config);
    let online = wait_live_status(&sub, 0, Presence::Online, || agent.log());
    let before = sub.messages().len();
    let killed = agent.kill();
    let will = wait_live_status(&sub, before, Presence::Lost, || killed.clone());
    assert_eq!(
        (will.policy_name.as_str(), will.policy_serial, &will.boot_id),
        ("base", 1, &online.boot_id)
    );
    drop(sub);
    assert_eq!(retained_status(&fleet), will);

    // A silent link: the agent stopped (SIGSTOP), its socket open.
    let sub = fleet.subscriber();
    let agent = Agent::start(&config);
    wait_live_status(&sub, 0, Presence::Online, || agent.log());
    let before = sub.messages().len();
    agent.pause();
    let silent = Instant::now();
    let will = wait_live_status(&sub, before, Presence::Lost, || agent.log());
    eprintln!(
        "the will came {:?} after the link went silent",
        silent.elapsed()
    );
    drop(sub);
    assert_eq!(retained_status(&fleet), will);
    // Back, it says so.
    let sub = fleet.subscriber();
    agent.resume();
    wait_live_status(&sub, 0, Presence::Online, || agent.log());
    drop(sub);
    assert_eq!(retained_status(&fleet).state, Presence::Online);
    agent.stop();
}

#[test]
fn json_format_over_mqtt_3_1_1_is_plain_json() {
    let _serial = serial();
    let fleet = Fleet::new("json");
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config("format = \"json\"\nprotocol = \"v3.1.1\"\n"));
    agent.wait_log("(MQTT 3.1.1)", Duration::from_secs(20));
    let paths = fleet.unknown_execs("json", 3);
    wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    let m = sub
        .messages()
        .into_iter()
        .find(|m| on(m, Channel::Alert))
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&m.payload).expect("a JSON alert");
    assert_eq!(value["v"], 1);
    assert_eq!(value["device_id"], DEVICE);
    assert!(value["body"]["seq"].is_u64(), "{value}");
    assert!(value["body"]["kind"].is_string(), "{value}");
    agent.stop();
}

#[test]
fn a_30_second_broker_outage_loses_no_alert() {
    let _serial = serial();
    let mut fleet = Fleet::new("outage");
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config(""));
    agent.wait_log("connected to the broker", Duration::from_secs(20));

    fleet.broker.stop();
    let down = Instant::now();
    let paths = fleet.unknown_execs("outage", 1000);
    let raised_in = down.elapsed();
    thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    // The subscriber subscribes again before the agent can reconnect: an alert published while
    // no one subscribes is acknowledged by the broker ("no matching subscribers") and reaches
    // no one, the agent's delivery done.
    agent.pause();
    fleet.broker.restart();
    sub.wait_connected(2, Duration::from_secs(20));
    agent.resume();

    let seen = wait_for_alerts(&sub, &paths, Duration::from_secs(120), || agent.log());
    let duplicates = assert_once_each(&seen);
    eprintln!(
        "1000 alerts raised in {raised_in:?} while the broker was down; all arrived, \
         {duplicates} duplicate(s) on the wire"
    );
    // Nothing was dropped, and the spool drains: every alert spooled is sent and acknowledged
    // (alerts other than these thousand included). A connection that stops acknowledging is
    // replaced after 30 s (twice the keep-alive, at least 30 s), hence the wait.
    let start = Instant::now();
    let hb = loop {
        let hb = last_heartbeat(&sub).expect("a heartbeat after the outage");
        let drained = hb.spool_pending == 0 && hb.alerts.sent == hb.alerts.spooled;
        if drained || start.elapsed() > Duration::from_secs(45) {
            break hb;
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(hb.alerts.dropped, 0, "{hb:?}");
    assert!(
        hb.spool_pending == 0 && hb.alerts.sent == hb.alerts.spooled,
        "the spool did not drain: {hb:?}\n{}",
        tail(&agent.log(), 30)
    );
    eprintln!("drained {:?} after the outage", hb.alerts);
    agent.stop();
}

#[test]
fn alerts_spooled_before_a_sigkill_are_delivered_after_restart() {
    let _serial = serial();
    let mut fleet = Fleet::new("kill");
    fleet.broker.stop();
    let config = fleet.config("");
    let agent = Agent::start(&config);
    let paths = fleet.unknown_execs("kill", 50);
    // Wait until the agent has raised (and spooled) them all: the alert file shows it.
    let alerts_file = fleet.root.join("alerts.jsonl");
    let start = Instant::now();
    while !paths.iter().all(|p| {
        fs::read_to_string(&alerts_file)
            .unwrap_or_default()
            .contains(&format!("\"path\":\"{p}\""))
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "alerts not raised:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // The spool is written by its own thread, once per batch: each alert in it before the kill.
    let spool = fleet.root.join("state/spool");
    let seqs: Vec<u64> = paths
        .iter()
        .map(|p| seq_of(&alerts_file, p).unwrap())
        .collect();
    wait_until_spooled(&spool, &seqs, || agent.log());
    let log = agent.kill();
    assert!(!log.contains("connected to the broker"), "{log}");

    fleet.broker.restart();
    let sub = fleet.subscriber();
    let agent = Agent::start(&config);
    agent.wait_log("await delivery", Duration::from_secs(5));
    let seen = wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    assert_once_each(&seen);
    agent.stop();
}

/// MQTT v5: a broker that refuses an alert (PUBACK "not authorized") leaves it in the spool;
/// it is sent again after the next reconnection, once the broker takes it.
#[test]
fn an_alert_the_broker_refuses_stays_spooled_and_is_sent_after_reconnecting() {
    let _serial = serial();
    let refusing = BrokerOptions {
        denied: vec![(DEVICE.to_string(), topic::topic(DEVICE, Channel::Alert))],
        ..BrokerOptions::default()
    };
    let mut fleet = Fleet::with_broker("refused", &refusing);
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config(""));
    wait_live_status(&sub, 0, Presence::Online, || agent.log());
    let paths = fleet.unknown_execs("refused", 3);
    agent.wait_log("the broker refused alert #", Duration::from_secs(15));
    // Refused, kept: the spool holds them (heartbeats still go out).
    let start = Instant::now();
    loop {
        let hb = last_heartbeat(&sub);
        if hb
            .as_ref()
            .is_some_and(|hb| hb.spool_pending >= 3 && hb.alerts.spooled >= 3)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no heartbeat with the refused alerts pending: {hb:?}\n{}",
            tail(&agent.log(), 20)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let wanted: BTreeSet<String> = paths.iter().cloned().collect();
    assert!(
        alerts_about(&sub, &wanted).is_empty(),
        "an alert the broker refused reached the subscriber"
    );

    // The broker takes alerts again (restarted: a new connection).
    let pki = &fleet.pki;
    fleet.broker.set_options(pki, &BrokerOptions::default());
    agent.pause();
    fleet.broker.restart();
    sub.wait_connected(2, Duration::from_secs(20));
    agent.resume();
    let seen = wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    assert_once_each(&seen);
    agent.stop();
}

/// Waits until the spool in `dir` holds each of `seqs` (30 s at most).
fn wait_until_spooled(dir: &Path, seqs: &[u64], log: impl Fn() -> String) {
    let start = Instant::now();
    loop {
        let spooled = spooled(dir);
        if seqs.iter().all(|s| spooled.contains(s)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not spooled: {:?}\n{}",
            seqs.iter()
                .filter(|s| !spooled.contains(s))
                .collect::<Vec<_>>(),
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}
