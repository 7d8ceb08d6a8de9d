//! Faults over the whole pipe: a real `picket run` → a real Mosquitto → `picket-backend serve`
//! → its store, with one component killed, restarted or cut off while alerts flow. Each
//! scenario counts the alerts the device raised against those stored, and checks that no
//! process exited but the one the fault ended.
//!
//! **Raised** is what the agent wrote to its alert file (`[output] file`): it writes an alert
//! there before handing it to the spool, so the file lists every alert the spool can hold.
//! **Durable** is what the spool holds on disk after a `SIGKILL` (read with the agent's own
//! `Spool::open`), together with what was stored by then. An alert raised and not yet durable
//! when the agent is killed may be lost (docs/ARCHITECTURE.md, "Durable before published"):
//! the spool flushes in order, so such losses are the last alerts of a run. Everything else
//! must be stored exactly once.
//!
//! Each scenario prints one line, `FAULTS scenario=NAME key=value ...`, which
//! docs/RELIABILITY.md reports. `PICKET_FAULT_FULL=1` runs the long versions;
//! `PICKET_FAULT_ROUNDS` and `PICKET_FAULT_SEED` set the rounds and the random kill points.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use picket_agent::spool::{Spool, SpoolLimits};
use picket_test_support::bin::picket;
use picket_test_support::Agent;

use super::*;

mod agent_kill;
mod broker_flap;
mod disk_full;
mod postgres_restart;
mod serve_kill;

/// One real agent at a time, among these scenarios and the other tests that run one (each
/// loads the sensors into the kernel, and each test counts its agent's alerts exactly).
use super::real_agent::serial;

/// The device id: the CN of the agent's certificate.
const DEVICE: &str = "gw-faults-1";

/// The agent's spool size (its default).
const SPOOL_BYTES: u64 = 8 << 20;

/// How long the end of a scenario may take to see every durable alert stored.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the long versions run (`PICKET_FAULT_FULL=1`).
fn full() -> bool {
    std::env::var("PICKET_FAULT_FULL").is_ok_and(|v| v == "1")
}

/// `PICKET_FAULT_ROUNDS`, or `ci` rounds, or `full_rounds` with `PICKET_FAULT_FULL=1`.
fn rounds(ci: usize, full_rounds: usize) -> usize {
    match std::env::var("PICKET_FAULT_ROUNDS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("PICKET_FAULT_ROUNDS={v}: {e}")),
        Err(_) if full() => full_rounds,
        Err(_) => ci,
    }
}

/// A small random generator (xorshift), seeded from `PICKET_FAULT_SEED` or the clock; the
/// seed is printed so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new(scenario: &str) -> Rng {
        let seed = match std::env::var("PICKET_FAULT_SEED") {
            Ok(v) => v
                .parse()
                .unwrap_or_else(|e| panic!("PICKET_FAULT_SEED={v}: {e}")),
            Err(_) => now_ms() | 1,
        };
        eprintln!("{scenario}: PICKET_FAULT_SEED={seed}");
        Rng(seed)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The device: its certificate, its policy (a directory of watched files, each chmod of one an
/// alert), its state and the alerts it writes.
struct Site {
    root: PathBuf,
    /// Watched files not changed yet: each is changed once, so that no two changes aggregate.
    fresh: std::ops::Range<usize>,
}

impl Site {
    /// A device with `files` watched files, reporting to `broker`.
    fn new(broker: &Broker, files: usize) -> Site {
        let root = broker.path("device");
        fs::create_dir_all(root.join("trust")).unwrap();
        fs::create_dir_all(root.join("watched")).unwrap();
        for i in 0..files {
            fs::write(root.join("watched").join(format!("f-{i}")), "f").unwrap();
        }
        run_ok(
            Command::new(picket())
                .args(["keygen", "--out"])
                .arg(root.join("vendor")),
        );
        fs::copy(root.join("vendor.pub"), root.join("trust/vendor.pub")).unwrap();
        let toml = root.join("base.toml");
        fs::write(
            &toml,
            format!(
                "[metadata]\nname = \"base\"\ndevice_class = \"lab\"\nserial = 1\n\
                 created = \"2026-11-22T10:00:00Z\"\n\n[[files.protected_glob]]\nglob = {}\n",
                quote(&root.join("watched/*"))
            ),
        )
        .unwrap();
        run_ok(
            Command::new(picket())
                .args(["policy", "sign", "--key"])
                .arg(root.join("vendor.key"))
                .arg("--in")
                .arg(&toml)
                .arg("--out")
                .arg(root.join("base.bundle")),
        );
        let identity = broker.pki.device(DEVICE);
        fs::write(
            root.join("picket.toml"),
            format!(
                "device_class = \"lab\"\npolicy = {}\ntrust_dir = {}\nstate_dir = {}\n\
                 [modes]\nexecutables = \"off\"\nnetwork = \"off\"\nbehaviour = \"off\"\n\
                 [output]\nstdout = false\nfile = {}\n\
                 [mqtt]\nbroker = \"localhost:{}\"\nca = {}\ncert = {}\nkey = {}\n\
                 heartbeat_interval = \"1s\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n\
                 keep_alive = \"10s\"\n[spool]\nmax_bytes = {SPOOL_BYTES}\n",
                quote(&root.join("base.bundle")),
                quote(&root.join("trust")),
                quote(&root.join("state")),
                quote(&root.join("alerts.jsonl")),
                broker.port,
                quote(&identity.ca),
                quote(&identity.cert),
                quote(&identity.key),
            ),
        )
        .unwrap();
        Site {
            root,
            fresh: 0..files,
        }
    }

    /// Starts `picket run`; returns once its sensors are attached.
    fn start(&self) -> Agent {
        let mut command = Command::new(picket());
        command
            .args(["run", "--config"])
            .arg(self.root.join("picket.toml"))
            .env("RUST_LOG", "info");
        Agent::spawn(command, "sensors attached")
    }

    /// The next `n` watched files not changed yet.
    fn take(&mut self, n: usize) -> Vec<PathBuf> {
        let start = self.fresh.start;
        assert!(start + n <= self.fresh.end, "not enough watched files");
        self.fresh.start += n;
        (start..start + n)
            .map(|i| self.root.join("watched").join(format!("f-{i}")))
            .collect()
    }

    /// The sequence numbers of the alerts the agent wrote to its file, in order, and the
    /// number of lines that were not whole alerts (a line cut by a kill).
    fn raised(&self) -> (Vec<u64>, usize) {
        let (alerts, torn) = self.raised_alerts();
        (
            alerts.iter().map(|a| a["seq"].as_u64().unwrap()).collect(),
            torn,
        )
    }

    /// The alerts the agent wrote to its file, in order, and the number of lines that were
    /// not whole alerts.
    fn raised_alerts(&self) -> (Vec<Value>, usize) {
        let text = fs::read_to_string(self.root.join("alerts.jsonl")).unwrap_or_default();
        let mut alerts = Vec::new();
        let mut torn = 0;
        for line in text.lines() {
            match serde_json::from_str::<Value>(line) {
                Ok(a) => alerts.push(a),
                Err(_) => torn += 1,
            }
        }
        (alerts, torn)
    }

    /// The alerts raised other than the test's changes, as `kind:count,...` (`-` if none).
    fn others(&self) -> String {
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for a in self.raised_alerts().0 {
            if a["alert"] != "protected_file_changed" {
                *kinds
                    .entry(a["alert"].as_str().unwrap_or("?").into())
                    .or_default() += 1;
            }
        }
        if kinds.is_empty() {
            return "-".into();
        }
        kinds
            .iter()
            .map(|(k, n)| format!("{k}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The alerts the spool holds on disk, read as the next agent will (the agent must not run).
    fn spooled(&self) -> BTreeSet<u64> {
        let (mut spool, _) = Spool::open(
            &self.root.join("state/spool"),
            SpoolLimits {
                max_bytes: SPOOL_BYTES,
            },
        )
        .unwrap();
        spool
            .peek(None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.seq)
            .collect()
    }
}

/// Changes the mode of each of `files` (0644 ↔ 0600), `pause` apart: one alert each.
fn chmod_all(files: &[PathBuf], pause: Duration) {
    for path in files {
        let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let new = if mode == 0o600 { 0o644 } else { 0o600 };
        fs::set_permissions(path, fs::Permissions::from_mode(new)).unwrap();
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// Alerts at a steady rate, on a thread of their own, until [`Steady::finish`].
struct Steady {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Steady {
    /// Changes `files` one after the other, `rate` a second.
    fn start(files: Vec<PathBuf>, rate: u64) -> Steady {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut changed = 0;
                for file in files.chunks(1) {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    chmod_all(file, Duration::from_millis(1000 / rate));
                    changed += 1;
                }
                changed
            })
        };
        Steady { done, thread }
    }

    /// Stops the changes; waits until the agent raised an alert for each, and returns the
    /// alerts it raised.
    fn finish(self, site: &Site, agent: &Agent) -> BTreeSet<u64> {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        let changed = self.thread.join().unwrap();
        let wait = Instant::now();
        while site.raised().0.len() < changed {
            assert!(wait.elapsed() < TIMEOUT, "{}", agent.describe());
            std::thread::sleep(Duration::from_millis(50));
        }
        let (raised, torn) = site.raised();
        assert_eq!(torn, 0, "lines of the alert file that are not alerts");
        let raised: BTreeSet<u64> = raised.into_iter().collect();
        assert_eq!(raised.len(), changed, "one alert per change");
        raised
    }
}

/// How many times each sequence number of the device is stored: its own alerts, not the
/// backend's about it (`device_silent` at each kill, numbered apart, format `backend`).
fn stored(backend: &Backend) -> BTreeMap<u64, usize> {
    let alerts = backend.query(&["alerts", "--device", DEVICE, "--limit", "100000", "--json"]);
    let mut counts = BTreeMap::new();
    for a in alerts.as_array().unwrap() {
        if a["format"] == "backend" {
            continue;
        }
        *counts.entry(a["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    counts
}

/// Waits until every alert of `want` is stored; returns the store's counts then.
fn wait_stored(backend: &Backend, want: &BTreeSet<u64>, what: &str) -> BTreeMap<u64, usize> {
    let start = Instant::now();
    loop {
        let counts = stored(backend);
        if want.iter().all(|s| counts.contains_key(s)) {
            return counts;
        }
        let missing: Vec<&u64> = want.iter().filter(|s| !counts.contains_key(s)).collect();
        assert!(
            start.elapsed() < DRAIN_TIMEOUT,
            "{what}: {} alert(s) never stored: {missing:?}\nbackend log:\n{}",
            missing.len(),
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Delivers what the agent raised: waits while it runs until every alert it raised is stored,
/// stops it (SIGTERM), and, if it raised more while stopping (kept in its spool, durable),
/// starts it again to send them. `killed` are alerts of runs ended by a kill, which may have
/// been lost (the scenario checks them). Returns the alerts raised, once all are stored.
fn drain(
    site: &Site,
    mut agent: Agent,
    backend: &Backend,
    killed: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    let owed =
        |raised: &BTreeSet<u64>| -> BTreeSet<u64> { raised.difference(killed).copied().collect() };
    loop {
        let raised: BTreeSet<u64> = site.raised().0.into_iter().collect();
        wait_stored(backend, &owed(&raised), "raised");
        stop(agent);
        let (raised, torn) = site.raised();
        assert_eq!(torn, 0, "lines of the alert file that are not alerts");
        let raised: BTreeSet<u64> = raised.into_iter().collect();
        // Those no longer in the spool were acknowledged by the broker: they arrive.
        let spooled = site.spooled();
        let sent: BTreeSet<u64> = owed(&raised).difference(&spooled).copied().collect();
        let stored = wait_stored(backend, &sent, "acknowledged by the broker");
        if owed(&raised).iter().all(|s| stored.contains_key(s)) {
            return raised;
        }
        agent = site.start();
    }
}

/// The counts every scenario checks and prints: `raised` against `stored` (counts per
/// sequence number), `lost` being allowed alerts (checked by the scenario).
struct Tally {
    raised: BTreeSet<u64>,
    stored: BTreeMap<u64, usize>,
}

impl Tally {
    /// Checks that nothing was stored twice or that the device did not raise; returns the
    /// raised alerts not stored.
    fn check(&self) -> BTreeSet<u64> {
        let twice: Vec<(&u64, &usize)> = self.stored.iter().filter(|(_, &n)| n > 1).collect();
        assert!(twice.is_empty(), "stored more than once: {twice:?}");
        let foreign: Vec<&u64> = self
            .stored
            .keys()
            .filter(|s| !self.raised.contains(s))
            .collect();
        assert!(foreign.is_empty(), "stored, never raised: {foreign:?}");
        self.raised
            .iter()
            .copied()
            .filter(|s| !self.stored.contains_key(s))
            .collect()
    }

    /// The figures line.
    fn print(&self, scenario: &str, lost: usize, recover: Duration, extra: &str) {
        let rows: usize = self.stored.values().sum();
        println!(
            "FAULTS scenario={scenario} raised={} stored={} lost={lost} duplicated={} \
             recover_ms={} {extra}",
            self.raised.len(),
            self.stored.len(),
            rows - self.stored.len(),
            recover.as_millis()
        );
    }
}

fn quote(path: &Path) -> String {
    serde_json::to_string(path.to_str().unwrap()).unwrap()
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
}

/// SIGTERM; the agent must exit with status 0.
fn stop(agent: Agent) {
    let out = agent.stop();
    let status = out.status.unwrap();
    assert!(status.success(), "exit {status}:\n{}", out.log());
}
