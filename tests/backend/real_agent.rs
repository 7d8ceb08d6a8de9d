//! A real `picket run` (real sensors in the running kernel) reporting through a real Mosquitto
//! to a real `serve`: a policy pushed with `policy push` applied or refused by the agent and
//! its result stored; the retention deleting old alerts and policy results from a running
//! `serve` and keeping newer ones; the gaps in its sequence numbers an agent restart and a
//! full spool leave, in `gaps`, `/api/gaps` and `/api/devices/ID/gaps`.
//!
//! The agent watches only a directory of its own (`[[files.protected_glob]]`, every other mode
//! off), so every alert it raises is one the test caused (a chmod of a watched file, a bundle
//! it refused) or says what it dropped. Its sequence numbers are known in advance.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use picket_test_support::bin::picket;
use picket_test_support::{sha256_file, Agent};

use super::*;

/// One real agent at a time: each loads the sensors into the kernel.
static SERIAL: Mutex<()> = Mutex::new(());

pub(super) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The device id: the CN of the agent's certificate.
pub(super) const DEVICE: &str = "gw-real-1";

/// The files the agent watches, created before it starts.
const WATCHED: [&str; 3] = ["a", "b", "c"];

#[test]
fn a_policy_pushed_by_the_backend_is_applied_or_refused_by_the_agent_and_the_result_stored() {
    let _serial = serial();
    let broker = Broker::start();
    let http = free_http_port();
    let backend = Backend::start(
        &broker,
        "be",
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
    let site = Site::new(&broker);
    let agent = site.start_agent();
    wait_online_with_policy(&backend, "base", 1, &agent);

    // A newer policy: applied, in force, persisted and announced.
    let good = site.sign("good", 5, None);
    let applied = push(&backend, &good);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    assert!(
        stdout(&applied).contains(&format!("{DEVICE}: applied `good` serial 5")),
        "{}",
        text(&applied)
    );
    agent.wait_log(
        "now enforcing policy `good` serial 5",
        Duration::from_secs(10),
    );
    site.assert_policy_in_force(5, &good);
    wait_online_with_policy(&backend, "good", 5, &agent);

    // An older one and a tampered one: refused, each with its reason; serial 5 stays.
    let older = site.sign("older", 3, None);
    let tampered = site.tampered(&good);
    let older_reason = push_refused(&backend, &older, "serial 3 is older than serial 5");
    let tampered_reason = push_refused(&backend, &tampered, "signature does not verify");
    site.assert_policy_in_force(5, &good);

    // The backend stored the three results, newest first, as the CLI and the API say.
    let expected = [
        Expected::refused(&tampered, &tampered_reason),
        Expected::refused(&older, &older_reason),
        Expected::applied(&good, "good", 5),
    ];
    let results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| a.len() >= expected.len())
    });
    check_results(&results, &expected);
    check_the_api_gives_the_same_results(http, &results);

    // Each refusal is also a policy_rejected alert from the agent, stored with its digest,
    // reason and source; the agent raised nothing else.
    let alerts = backend.wait_for(&["alerts", "--device", DEVICE, "--json"], |v| {
        v.as_array().is_some_and(|a| a.len() >= 2)
    });
    let mut rejected: Vec<(String, String, String, String)> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let field = |k: &str| a["details"][k].as_str().unwrap_or_default().to_string();
            (
                a["kind"].as_str().unwrap().to_string(),
                field("bundle_sha256"),
                field("reason"),
                field("source"),
            )
        })
        .collect();
    rejected.sort();
    let mut want = vec![
        (
            "policy_rejected".to_string(),
            sha256_file(&older),
            older_reason.clone(),
            "mqtt".to_string(),
        ),
        (
            "policy_rejected".to_string(),
            sha256_file(&tampered),
            tampered_reason.clone(),
            "mqtt".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(rejected, want, "{alerts:#}");
    stop(agent);
    backend.stop();
}

#[test]
fn the_retention_deletes_old_alerts_and_policy_results_and_keeps_newer_ones() {
    let _serial = serial();
    let broker = Broker::start();
    let http = free_http_port();
    // Received more than 12 s ago: deleted, by a run every 500 ms. The windows in which the
    // test looks (all three alerts there; only the newer one) are 5 s or more wide, so that
    // a loaded machine's pauses do not close them.
    let backend = Backend::start(
        &broker,
        "ret",
        &format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n[store]\nsqlite = \"{}\"\n\
             retention = \"12s\"\nretention_interval = \"500ms\"\n",
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
    assert_eq!(api_device_alerts(http), 3);

    // Once the old ones are gone, the newer ones are still there (they have 5 s more to live).
    let kept = wait_api(http, &format!("/api/alerts?device={DEVICE}"), |v| {
        !seqs(v).contains(&1) && !seqs(v).contains(&2)
    });
    let kept_results = http_get(http, "/api/policy-results").1;
    assert_eq!(seqs(&kept), [3], "{kept:#}");
    assert_eq!(serials_of(&kept_results), [6], "{kept_results:#}");
    assert_eq!(api_device_alerts(http), 1);
    // The run that left these said how many it deleted (its line follows the deletion).
    let deleted_then = wait_retention_deletions(&backend, 2);
    assert_eq!(
        deleted_then.iter().sum::<u64>(),
        2,
        "the retention's runs so far: {deleted_then:?}"
    );

    // And later the newer ones go too: the retention runs on.
    wait_api(http, &format!("/api/alerts?device={DEVICE}"), |v| {
        v.as_array().unwrap().is_empty()
    });
    wait_api(http, "/api/policy-results", |v| {
        v.as_array().unwrap().is_empty()
    });
    assert_eq!(api_device_alerts(http), 0);
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

#[test]
fn a_restart_of_the_agent_leaves_the_gap_the_backend_reports_as_a_restart() {
    let _serial = serial();
    let broker = Broker::start();
    let http = free_http_port();
    let backend = Backend::start(
        &broker,
        "gaps",
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
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
    assert_eq!(http_get(http, "/api/gaps"), (200, gap.clone()));
    assert_eq!(
        http_get(http, &format!("/api/devices/{DEVICE}/gaps")),
        (200, gap)
    );
    assert_eq!(
        http_get(http, "/api/devices/gw-other/gaps"),
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
    let http = free_http_port();
    let backend = Backend::start(
        &broker,
        "spool",
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
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
    assert_eq!(http_get(http, "/api/gaps"), (200, gaps.clone()));
    assert_eq!(
        http_get(http, &format!("/api/devices/{DEVICE}/gaps")),
        (200, gaps)
    );
    backend.stop();
}

/// The agent's files: its certificate (CN [`DEVICE`]), a vendor key and the trust directory,
/// its state, the files it watches and the alerts it writes.
pub(super) struct Site {
    root: PathBuf,
    key: PathBuf,
    identity: Identity,
    port: u16,
}

impl Site {
    pub(super) fn new(broker: &Broker) -> Site {
        let root = broker.path("device");
        fs::create_dir_all(root.join("trust")).unwrap();
        fs::create_dir_all(root.join("watched")).unwrap();
        for name in WATCHED {
            fs::write(root.join("watched").join(name), name).unwrap();
        }
        run_ok(
            Command::new(picket())
                .args(["keygen", "--out"])
                .arg(root.join("vendor")),
        );
        fs::copy(root.join("vendor.pub"), root.join("trust/vendor.pub")).unwrap();
        // The counter an agent of before random starts left: numbering goes on from 1, and
        // these tests can name the numbers.
        fs::create_dir_all(root.join("state")).unwrap();
        fs::write(root.join("state/alert.seq"), "0\n").unwrap();
        Site {
            key: root.join("vendor.key"),
            identity: broker.pki.device(DEVICE),
            port: broker.port,
            root,
        }
    }

    /// Signs policy `name` of `serial` for the device class `lab` with `key` (the trusted one
    /// by default): it watches the `watched` directory.
    fn sign(&self, name: &str, serial: u64, key: Option<&Path>) -> PathBuf {
        let toml = self.root.join(format!("{name}.toml"));
        fs::write(
            &toml,
            format!(
                "[metadata]\nname = \"{name}\"\ndevice_class = \"lab\"\nserial = {serial}\n\
                 created = \"2026-11-22T10:00:00Z\"\n\n[[files.protected_glob]]\nglob = {}\n",
                quote(&self.root.join("watched/*"))
            ),
        )
        .unwrap();
        let bundle = self.root.join(format!("{name}.bundle"));
        run_ok(
            Command::new(picket())
                .args(["policy", "sign", "--key"])
                .arg(key.unwrap_or(&self.key))
                .arg("--in")
                .arg(&toml)
                .arg("--out")
                .arg(&bundle),
        );
        bundle
    }

    /// A copy of `bundle` with one byte of its signed content changed.
    fn tampered(&self, bundle: &Path) -> PathBuf {
        let mut bytes = fs::read(bundle).unwrap();
        let at = bytes.len() - 40;
        bytes[at] ^= 0x01;
        let path = self.root.join("tampered.bundle");
        fs::write(&path, bytes).unwrap();
        path
    }

    /// Starts `picket run`: policy `base` serial 1, only the file sensor's checks on, alerts
    /// to a file and over MQTT to the broker.
    pub(super) fn start_agent(&self) -> Agent {
        self.start_agent_with("")
    }

    /// [`Site::start_agent`] with `extra` at the end of the configuration (written by the
    /// first start).
    fn start_agent_with(&self, extra: &str) -> Agent {
        let config = self.root.join("picket.toml");
        if !config.exists() {
            let base = self.sign("base", 1, None);
            fs::write(
                &config,
                format!(
                    "device_class = \"lab\"\npolicy = {}\ntrust_dir = {}\nstate_dir = {}\n\
                     [modes]\nexecutables = \"off\"\nnetwork = \"off\"\nbehaviour = \"off\"\n\
                     [output]\nstdout = false\nfile = {}\n\
                     [mqtt]\nbroker = \"localhost:{}\"\nca = {}\ncert = {}\nkey = {}\n\
                     heartbeat_interval = \"1s\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n\
                     keep_alive = \"10s\"\n{extra}",
                    quote(&base),
                    quote(&self.root.join("trust")),
                    quote(&self.root.join("state")),
                    quote(&self.root.join("alerts.jsonl")),
                    self.port,
                    quote(&self.identity.ca),
                    quote(&self.identity.cert),
                    quote(&self.identity.key),
                ),
            )
            .unwrap();
        }
        let mut command = Command::new(picket());
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info");
        Agent::spawn(command, "sensors attached")
    }

    /// Creates `n` more watched files (before the agent starts: a new file there is an
    /// alert); returns their names.
    fn watch_more(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("m-{i}");
                fs::write(self.root.join("watched").join(&name), "m").unwrap();
                name
            })
            .collect()
    }

    /// Changes the mode of the watched file `name` (0644 ↔ 0600): one alert.
    fn change(&self, name: &str) {
        let path = self.root.join("watched").join(name);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let new = if mode == 0o600 { 0o644 } else { 0o600 };
        fs::set_permissions(&path, fs::Permissions::from_mode(new)).unwrap();
    }

    /// The serial the agent persisted and the bundle it keeps in force.
    fn assert_policy_in_force(&self, serial: u64, bundle: &Path) {
        let state = self.root.join("state/policy");
        assert_eq!(
            fs::read_to_string(state.join("serial")).unwrap(),
            format!("{serial}\n")
        );
        assert_eq!(
            sha256_file(&state.join("active.bundle")),
            sha256_file(bundle),
            "the bundle in force"
        );
    }

    /// The sequence numbers of the alerts the agent wrote to its file, in order.
    fn raised(&self) -> Vec<u64> {
        self.raised_alerts()
            .iter()
            .map(|a| a["seq"].as_u64().unwrap())
            .collect()
    }

    /// The alerts the agent wrote to its file, in order (not a line it is still writing).
    fn raised_alerts(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.root.join("alerts.jsonl")).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

fn quote(path: &Path) -> String {
    serde_json::to_string(path.to_str().unwrap()).unwrap()
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// SIGTERM; the agent must exit with status 0.
pub(super) fn stop(agent: Agent) {
    let out = agent.stop();
    let status = out.status.unwrap();
    assert!(status.success(), "exit {status}:\n{}", out.log());
}

/// `policy push --device DEVICE BUNDLE`, waiting up to 20 s for the result.
fn push(backend: &Backend, bundle: &Path) -> std::process::Output {
    backend_bin()
        .arg("--config")
        .arg(&backend.config)
        .args(["policy", "push", "--device", DEVICE, "--timeout", "20s"])
        .arg(bundle)
        .output()
        .unwrap()
}

/// Pushes `bundle`, which the agent must refuse for a reason containing `why`; returns the
/// reason `policy push` showed.
fn push_refused(backend: &Backend, bundle: &Path, why: &str) -> String {
    let out = push(backend, bundle);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let prefix = format!("{DEVICE}: REFUSED: ");
    let reason = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("no refusal shown: {}", text(&out)));
    assert!(reason.contains(why), "refused for `{reason}`, not `{why}`");
    reason
}

/// Waits until the backend shows the device online with policy `name` serial `serial`.
fn wait_online_with_policy(backend: &Backend, name: &str, serial: u64, agent: &Agent) {
    let start = Instant::now();
    loop {
        let devices = backend.query(&["devices", "--json"]);
        if devices.as_array().unwrap().iter().any(|d| {
            d["device_id"] == DEVICE
                && d["state"] == "online"
                && d["policy_name"] == name
                && d["policy_serial"] == serial
        }) {
            return;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{DEVICE} never shown online with `{name}` serial {serial}: {devices:#}\nagent:\n{}",
            agent.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the backend stored the device's alerts `want` (and no other); returns them.
fn wait_for_alerts(backend: &Backend, want: &[u64], agent: &Agent) -> Value {
    let start = Instant::now();
    loop {
        let alerts = backend.query(&["alerts", "--device", DEVICE, "--json"]);
        let got = seqs(&alerts);
        if got.len() >= want.len() {
            assert_eq!(got, want, "{alerts:#}");
            assert!(alerts
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["kind"] == "protected_file_changed"));
            return alerts;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "alerts {want:?} never stored (only {got:?}); agent:\n{}",
            agent.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
fn api_device_alerts(http: u16) -> u64 {
    let (code, devices) = http_get(http, "/api/devices");
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
fn wait_api(http: u16, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (code, v) = http_get(http, path);
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

/// A policy result the backend must have stored: the bundle's digest, the outcome, the
/// policy's name and serial when applied, the reason when refused.
struct Expected {
    sha: String,
    outcome: &'static str,
    applied: Option<(&'static str, u64)>,
    reason: Option<String>,
}

impl Expected {
    fn applied(bundle: &Path, name: &'static str, serial: u64) -> Expected {
        Expected {
            sha: sha256_file(bundle),
            outcome: "applied",
            applied: Some((name, serial)),
            reason: None,
        }
    }

    fn refused(bundle: &Path, reason: &str) -> Expected {
        Expected {
            sha: sha256_file(bundle),
            outcome: "refused",
            applied: None,
            reason: Some(reason.to_string()),
        }
    }
}

/// `results` (newest first) are exactly `expected`, each from the device, with its times.
fn check_results(results: &Value, expected: &[Expected]) {
    let rows = results.as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "{results:#}");
    for (row, e) in rows.iter().zip(expected) {
        let mut want = serde_json::json!({
            "device_id": DEVICE,
            "bundle_sha256": e.sha,
            "outcome": e.outcome,
            "name": e.applied.map(|a| a.0),
            "serial": e.applied.map(|a| a.1),
            "reason": e.reason,
        });
        // The agent's time and the backend's: set.
        assert!(
            row["time_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "{row}"
        );
        assert!(
            row["received_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "{row}"
        );
        want["time_ms"] = row["time_ms"].clone();
        want["received_ms"] = row["received_ms"].clone();
        assert_eq!(row, &want, "{results:#}");
    }
}

/// `/api/policy-results` gives the CLI's `results`; `?device=` filters; a bad id is refused.
fn check_the_api_gives_the_same_results(http: u16, results: &Value) {
    assert_eq!(
        http_get(http, "/api/policy-results"),
        (200, results.clone())
    );
    assert_eq!(
        http_get(http, &format!("/api/policy-results?device={DEVICE}")),
        (200, results.clone())
    );
    assert_eq!(
        http_get(http, "/api/policy-results?device=gw-other"),
        (200, serde_json::json!([]))
    );
    let (code, err) = http_get(http, "/api/policy-results?device=a%2Fb");
    assert_eq!(code, 400, "{err}");
}
