//! End to end: a real `picket run` (real sensors in the running kernel) reporting to a real
//! Mosquitto over mutual TLS, with certificates made for the test. Alerts are caused by real
//! execs of binaries the policy does not list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    ops::Deref,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use picket_proto::{
    topic::{self, Channel},
    Alert, AlertKind, Heartbeat, PolicyOutcome, PolicyResult, Presence, Status,
};
use picket_test_support::bin::picket;
use picket_test_support::{
    hex, sha256_file, unique, Identity, Message, Mosquitto, Pki, Subscriber,
};

/// One test at a time: every agent sees every exec on the machine, so one test's thousand
/// execs would fill another's spool and crowd its broker connection.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const DEVICE: &str = "gw-test-01";
const BACKEND: &str = "picket-backend";

/// Broker, PKI, keys and a directory for one test.
struct Fleet {
    _pki: Pki,
    broker: Mosquitto,
    root: PathBuf,
    key: PathBuf,
    device: Identity,
    backend: Identity,
}

impl Fleet {
    fn new(tag: &str) -> Fleet {
        let pki = Pki::new();
        let device = pki.device(DEVICE);
        let backend = pki.backend(BACKEND);
        let broker = Mosquitto::start(&pki);
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(&format!("reporting-{tag}")));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("trust")).unwrap();
        let root = fs::canonicalize(root).unwrap();
        ok(Command::new(picket())
            .args(["keygen", "--out"])
            .arg(root.join("vendor")));
        fs::copy(root.join("vendor.pub"), root.join("trust/vendor.pub")).unwrap();
        // A binary to run under many names: each name is an unknown executable.
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy("/bin/true", root.join("bin/true")).unwrap();
        Fleet {
            key: root.join("vendor.key"),
            _pki: pki,
            broker,
            root,
            device,
            backend,
        }
    }

    /// Signs a policy of `serial` for `class` with `key` (the trusted one by default).
    fn policy(&self, name: &str, serial: u64, class: &str, key: Option<&Path>) -> PathBuf {
        let toml = self.root.join(format!("{name}.toml"));
        fs::write(
            &toml,
            format!(
                "[metadata]\nname = \"{name}\"\ndevice_class = \"{class}\"\nserial = {serial}\n\
                 created = \"2026-11-22T10:00:00Z\"\n"
            ),
        )
        .unwrap();
        let bundle = self.root.join(format!("{name}.bundle"));
        ok(Command::new(picket())
            .args(["policy", "sign", "--key"])
            .arg(key.unwrap_or(&self.key))
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        bundle
    }

    /// The agent's configuration: executables checked (everything unlisted alerts), network and
    /// files off, alerts to a file and over MQTT. `extra` is appended.
    fn config(&self, extra: &str) -> PathBuf {
        let bundle = self.policy("base", 1, "lab", None);
        let q = |p: &Path| serde_json::to_string(p.to_str().unwrap()).unwrap();
        let mut text = format!(
            "device_class = \"lab\"\npolicy = {}\ntrust_dir = {}\nstate_dir = {}\n\
             [modes]\nnetwork = \"off\"\nfiles = \"off\"\n\
             [output]\nstdout = false\nfile = {}\n\
             [mqtt]\nbroker = \"localhost:{}\"\nca = {}\ncert = {}\nkey = {}\n\
             heartbeat_interval = \"1s\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n\
             keep_alive = \"10s\"\n",
            q(&bundle),
            q(&self.root.join("trust")),
            q(&self.root.join("state")),
            q(&self.root.join("alerts.jsonl")),
            self.broker.port(),
            q(&self.device.ca),
            q(&self.device.cert),
            q(&self.device.key),
        );
        text.push_str(extra);
        let path = self.root.join("picket.toml");
        fs::write(&path, text).unwrap();
        path
    }

    /// Execs `n` unknown executables named `<prefix>-<i>`; returns their paths, in order.
    fn unknown_execs(&self, prefix: &str, n: usize) -> Vec<String> {
        let dir = self.root.join("bin");
        let mut paths = Vec::with_capacity(n);
        for i in 0..n {
            let path = dir.join(format!("{prefix}-{i}"));
            if !path.exists() {
                fs::hard_link(dir.join("true"), &path).unwrap();
            }
            let status = Command::new(&path).status().unwrap();
            assert!(status.success());
            paths.push(path.to_str().unwrap().to_string());
        }
        paths
    }

    fn subscriber(&self) -> Subscriber {
        Subscriber::connect(
            self.broker.port(),
            &self.backend,
            &[&format!("picket/v1/{DEVICE}/#")],
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A running `picket run`, its log collected; killed when dropped.
struct Agent(picket_test_support::Agent);

impl Agent {
    fn start(config: &Path) -> Agent {
        let mut command = Command::new(picket());
        command
            .args(["run", "--config"])
            .arg(config)
            // The tests cause bursts of a thousand execs (and links) at once; what they test is
            // delivery, not the sensors' capacity, so the ring buffer has room for a burst.
            .args(["--ring-buffer-size", "8388608"])
            .env("RUST_LOG", "info");
        Agent(picket_test_support::Agent::spawn(
            command,
            "sensors attached",
        ))
    }

    /// SIGTERM, and the log.
    fn stop(self) -> String {
        self.0.terminate(Duration::from_secs(20)).log()
    }

    /// SIGKILL: no goodbye, no flush beyond what is already durable.
    fn kill(self) -> String {
        self.0.kill().log()
    }
}

impl Deref for Agent {
    type Target = picket_test_support::Agent;

    fn deref(&self) -> &picket_test_support::Agent {
        &self.0
    }
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn decode<T: serde::de::DeserializeOwned>(m: &Message) -> T {
    let (_, envelope) = picket_proto::decode::<T>(&m.payload)
        .unwrap_or_else(|e| panic!("undecodable message on {}: {e}", m.topic));
    assert_eq!(envelope.device_id, DEVICE, "device id in the envelope");
    envelope.body
}

fn on(m: &Message, channel: Channel) -> bool {
    m.topic == topic::topic(DEVICE, channel)
}

/// The alerts received about the executables in `paths`: their executable → every seq received.
fn alerts_about(sub: &Subscriber, paths: &BTreeSet<String>) -> BTreeMap<String, Vec<u64>> {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in sub.messages().iter().filter(|m| on(m, Channel::Alert)) {
        let alert: Alert = decode(m);
        // The unknown-executable alert of each: a checkout under a temporary directory (/tmp)
        // also gets a suspicious_exec alert for every one, with a number of its own.
        if alert.kind != AlertKind::UnknownExecutable {
            continue;
        }
        if let Some(path) = alert.path.as_ref().filter(|p| paths.contains(*p)) {
            seen.entry(path.clone()).or_default().push(alert.seq);
        }
    }
    seen
}

/// Waits until an alert about each of `paths` arrived.
fn wait_for_alerts(
    sub: &Subscriber,
    paths: &[String],
    timeout: Duration,
    agent_log: impl Fn() -> String,
) -> BTreeMap<String, Vec<u64>> {
    let wanted: BTreeSet<String> = paths.iter().cloned().collect();
    let start = Instant::now();
    loop {
        let seen = alerts_about(sub, &wanted);
        if seen.len() == wanted.len() {
            return seen;
        }
        if start.elapsed() > timeout {
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|p| !seen.contains_key(*p))
                .take(5)
                .collect();
            panic!(
                "{} of {} alerts arrived within {timeout:?}; missing e.g. {missing:?}\nagent log:\n{}",
                seen.len(),
                wanted.len(),
                tail(&agent_log(), 40)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every alert about one of ours has one sequence number (sent twice at most with the same),
/// and distinct executables have distinct numbers.
fn assert_once_each(seen: &BTreeMap<String, Vec<u64>>) -> usize {
    let mut numbers = BTreeSet::new();
    let mut duplicates = 0;
    for (path, seqs) in seen {
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            1,
            "{path} was raised as several alerts: {seqs:?}"
        );
        duplicates += seqs.len() - 1;
        assert!(numbers.insert(seqs[0]), "seq {} used twice", seqs[0]);
    }
    duplicates
}

fn results(sub: &Subscriber) -> Vec<PolicyResult> {
    sub.messages()
        .iter()
        .filter(|m| on(m, Channel::PolicyResult))
        .map(decode)
        .collect()
}

fn last_heartbeat(sub: &Subscriber) -> Option<Heartbeat> {
    sub.messages()
        .iter()
        .rev()
        .find(|m| on(m, Channel::Heartbeat))
        .map(decode)
}

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

    // Heartbeats count what happened.
    let start = Instant::now();
    let hb = loop {
        if let Some(hb) = last_heartbeat(&sub).filter(|hb| hb.alerts.sent >= 20) {
            break hb;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no heartbeat counting 20 sent alerts"
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
    assert!(offline.retain || sub.messages().iter().any(|m| m == &offline));
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
    // The spool is written once per batch; give the batch a moment to end.
    thread::sleep(Duration::from_millis(1500));
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

#[test]
fn policies_over_mqtt_are_verified_like_policies_on_disk() {
    let _serial = serial();
    let fleet = Fleet::new("policy");
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config(""));
    agent.wait_log("connected to the broker", Duration::from_secs(20));
    let policy_topic = topic::topic(DEVICE, Channel::Policy);

    let cases = policy_cases(&fleet);
    send_each_and_check_its_outcome(&sub, &agent, &policy_topic, cases);
    // The good one is in force and announced; each refusal is also an alert.
    check_the_good_one_is_in_force_and_refusals_are_alerts(&sub, &agent);
    let log = agent.stop();
    assert!(!log.contains("panicked"), "{log}");
    // Persisted: after a restart serial 5 is in force without being sent again.
    let agent = Agent::start(&fleet.root.join("picket.toml"));
    agent.wait_log("serial 5", Duration::from_secs(5));
    agent.stop();
}

/// The bundles sent, in order, each with what it is and the outcome it must have: forged
/// (signed by an intruder's key), tampered, garbage, huge, for another device class, good
/// (serial 5), rolled back (serial 3), and the good one again.
fn policy_cases(fleet: &Fleet) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    ok(Command::new(picket())
        .args(["keygen", "--out"])
        .arg(fleet.root.join("intruder")));
    let good = fs::read(fleet.policy("good", 5, "lab", None)).unwrap();
    let forged =
        fs::read(fleet.policy("forged", 6, "lab", Some(&fleet.root.join("intruder.key")))).unwrap();
    let mut tampered = good.clone();
    let last = tampered.len() - 40;
    tampered[last] ^= 0x01;
    let other_class = fs::read(fleet.policy("other", 7, "someone-else", None)).unwrap();
    let older = fs::read(fleet.policy("older", 3, "lab", None)).unwrap();
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let huge = vec![0x42u8; 5 << 20];

    vec![
        ("forged", forged, "refused"),
        ("tampered", tampered, "refused"),
        ("garbage", garbage, "refused"),
        ("huge", huge, "refused"),
        ("other device class", other_class, "refused"),
        ("good", good.clone(), "applied"),
        ("rolled back", older, "refused"),
        ("the same again", good, "unchanged"),
    ]
}

/// Publishes each bundle on the policy topic and checks the outcome of the result for it.
fn send_each_and_check_its_outcome(
    sub: &Subscriber,
    agent: &Agent,
    policy_topic: &str,
    cases: Vec<(&str, Vec<u8>, &str)>,
) {
    let mut report = String::new();
    for (i, (what, bundle, expected)) in cases.into_iter().enumerate() {
        let sha = hex(ring::digest::digest(&ring::digest::SHA256, &bundle).as_ref());
        let results_before = results(sub).len();
        let reason = sub.publish(policy_topic, bundle, false);
        let start = Instant::now();
        let result = loop {
            let new = results(sub)
                .into_iter()
                .skip(results_before)
                .find(|r| r.bundle_sha256 == sha);
            if new.is_some() || start.elapsed() > Duration::from_secs(15) {
                break new;
            }
            thread::sleep(Duration::from_millis(50));
        }
        .unwrap_or_else(|| {
            panic!(
                "no result for the {what} policy (#{i}, PUBACK {reason:?}); agent log:\n{}",
                tail(&agent.log(), 30)
            )
        });
        let outcome = result.outcome;
        let _ = writeln!(report, "{what}: {outcome:?}");
        let got = match &outcome {
            PolicyOutcome::Applied { serial, .. } => {
                assert_eq!(*serial, 5);
                "applied"
            }
            PolicyOutcome::Unchanged { serial } => {
                assert_eq!(*serial, 5);
                "unchanged"
            }
            PolicyOutcome::Refused { reason } => {
                assert!(!reason.is_empty());
                "refused"
            }
        };
        assert_eq!(got, expected, "{what}: {outcome:?}\n{report}");
    }
    eprintln!("{report}");
}

/// A status announces `good` serial 5, the agent logs it in force, and at least one
/// policy_rejected alert arrives.
fn check_the_good_one_is_in_force_and_refusals_are_alerts(sub: &Subscriber, agent: &Agent) {
    let online = sub
        .wait_for_message(Duration::from_secs(5), |m| {
            on(m, Channel::Status) && decode::<Status>(m).policy_serial == 5
        })
        .expect("a status announcing serial 5");
    assert_eq!(decode::<Status>(&online).policy_name, "good");
    agent.wait_log(
        "now enforcing policy `good` serial 5",
        Duration::from_secs(5),
    );
    // The refusals were raised as alerts too (spooled, then sent: they may still be on their way).
    let rejected = || {
        sub.messages()
            .iter()
            .filter(|m| on(m, Channel::Alert))
            .map(decode::<Alert>)
            .filter(|a| a.kind == AlertKind::PolicyRejected)
            .count()
    };
    let start = Instant::now();
    while rejected() == 0 && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(rejected() >= 1, "no policy_rejected alert");
}

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
    // The newest survive: the last of ours arrived.
    assert!(delivered.contains_key(paths.last().unwrap()));
    // Everything spooled is accounted for: sent or dropped.
    assert_eq!(
        hb.alerts.spooled,
        hb.alerts.sent + hb.alerts.dropped,
        "{hb:?}"
    );
    agent.stop();
}

/// Waits up to 30 s for the agent to log that the spool is full, then 2 s more; the spool's
/// directory stays within twice its 64 KiB bound and the agent's RSS under 64 MiB.
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
        bytes <= 2 * 64 * 1024,
        "the spool takes {bytes} bytes, over its bound"
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
