//! A real `picket run` (real sensors in the running kernel) reporting through a real Mosquitto
//! to a real `serve`: a policy pushed with `policy push` applied or refused by the agent and
//! its result stored; the retention deleting old alerts and policy results from a running
//! `serve` and keeping newer ones; the gaps in its sequence numbers an agent restart and a
//! full spool leave, in `gaps`, `/api/gaps` and `/api/devices/ID/gaps`.
//!
//! The agent watches only a directory of its own (`[[files.protected_glob]]`, every other mode
//! off), so every alert it raises is one the test caused (a chmod of a watched file, a bundle
//! it refused) or says what it dropped. Its sequence numbers are known in advance.

// The tests, by concern: a policy pushed and its results, the retention, the gaps of a restart,
// a counter reset and a full spool.
mod gaps;
mod policy;
mod retention;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::SystemTime;

use picket_test_support::bin::picket;
use picket_test_support::{sha256_file, Agent};

use super::*;

/// Whether a test runs a real agent: one at a time, as each loads the sensors into the kernel
/// (and one that checks executables sees every other's execs).
static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

/// The right to run a real agent, until dropped (also by a test's panic). Unlike a mutex's
/// guard it may be held across an `.await` of an async test.
pub(crate) struct Serial(());

pub(crate) fn serial() -> Serial {
    let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
    while *busy {
        busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
    }
    *busy = true;
    Serial(())
}

impl Drop for Serial {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        FREED.notify_one();
    }
}

/// The device id: the CN of the agent's certificate.
pub(crate) const DEVICE: &str = "gw-real-1";

/// The files the agent watches, created before it starts.
const WATCHED: [&str; 3] = ["a", "b", "c"];

/// The agent's files: its certificate (CN [`DEVICE`]), a vendor key and the trust directory,
/// its state, the files it watches and the alerts it writes.
pub(crate) struct Site {
    pub(crate) root: PathBuf,
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
    pub(super) fn sign(&self, name: &str, serial: u64, key: Option<&Path>) -> PathBuf {
        let rules = format!(
            "[[files.protected_glob]]\nglob = {}\n",
            quote(&self.root.join("watched/*"))
        );
        self.sign_rules(name, serial, &rules, key)
    }

    /// Signs policy `name` of `serial` for the device class `lab`, of `rules` (TOML).
    fn sign_rules(&self, name: &str, serial: u64, rules: &str, key: Option<&Path>) -> PathBuf {
        let toml = self.root.join(format!("{name}.toml"));
        fs::write(
            &toml,
            format!(
                "[metadata]\nname = \"{name}\"\ndevice_class = \"lab\"\nserial = {serial}\n\
                 created = \"2026-11-22T10:00:00Z\"\n\n{rules}"
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
    pub(super) fn tampered(&self, bundle: &Path) -> PathBuf {
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
    pub(super) fn start_agent_with(&self, extra: &str) -> Agent {
        let config = self.root.join("picket.toml");
        if !config.exists() {
            let base = self.sign("base", 1, None);
            self.configure(&base, "executables = \"off\"", extra);
        }
        self.run_agent()
    }

    /// Starts `picket run` checking executables only (every other mode off), with the policy
    /// `execs` serial 1: everything allowed by location (weak globs) but what lies in a
    /// directory under `/tmp` whose name begins with `p`, as this site does (`/tmp/picket-e2e-*`):
    /// an executable run from there is the only unknown one, whatever else runs on the machine.
    pub(crate) fn start_exec_agent(&self) -> Agent {
        let root = self.root.to_str().unwrap();
        assert!(root.starts_with("/tmp/p"), "{root}");
        let rules: String = [
            "/[!t]*/**",
            "/t[!m]*/**",
            "/tm[!p]*/**",
            "/tmp/*",
            "/tmp/[!p]*/**",
        ]
        .iter()
        .map(|glob| format!("[[executable_glob]]\nglob = \"{glob}\"\nweak = true\n\n"))
        .collect();
        let policy = self.sign_rules("execs", 1, &rules, None);
        self.configure(&policy, "files = \"off\"", "");
        self.run_agent()
    }

    /// Writes the agent's configuration: `policy`, `mode` and the network and behaviour checks
    /// off, alerts to a file and over MQTT to the broker, then `extra`.
    fn configure(&self, policy: &Path, mode: &str, extra: &str) {
        fs::write(
            self.root.join("picket.toml"),
            format!(
                "device_class = \"lab\"\npolicy = {}\ntrust_dir = {}\nstate_dir = {}\n\
                 [modes]\n{mode}\nnetwork = \"off\"\nbehaviour = \"off\"\n\
                 [output]\nstdout = false\nfile = {}\n\
                     [mqtt]\nbroker = \"localhost:{}\"\nca = {}\ncert = {}\nkey = {}\n\
                     heartbeat_interval = \"1s\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n\
                 keep_alive = \"10s\"\n{extra}",
                quote(policy),
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

    fn run_agent(&self) -> Agent {
        let config = self.root.join("picket.toml");
        let mut command = Command::new(picket());
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info");
        Agent::spawn(command, "sensors attached")
    }

    /// Creates `n` more watched files (before the agent starts: a new file there is an
    /// alert); returns their names.
    pub(super) fn watch_more(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("m-{i}");
                fs::write(self.root.join("watched").join(&name), "m").unwrap();
                name
            })
            .collect()
    }

    /// Changes the mode of the watched file `name` (0644 ↔ 0600): one alert.
    pub(super) fn change(&self, name: &str) {
        let path = self.root.join("watched").join(name);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let new = if mode == 0o600 { 0o644 } else { 0o600 };
        fs::set_permissions(&path, fs::Permissions::from_mode(new)).unwrap();
    }

    /// The serial the agent persisted and the bundle it keeps in force.
    pub(super) fn assert_policy_in_force(&self, serial: u64, bundle: &Path) {
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
    pub(super) fn raised(&self) -> Vec<u64> {
        self.raised_alerts()
            .iter()
            .map(|a| a["seq"].as_u64().unwrap())
            .collect()
    }

    /// The alerts the agent wrote to its file, in order (not a line it is still writing).
    pub(super) fn raised_alerts(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.root.join("alerts.jsonl")).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

pub(super) fn quote(path: &Path) -> String {
    serde_json::to_string(path.to_str().unwrap()).unwrap()
}

pub(super) fn run_ok(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
}

pub(super) fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(super) fn now_ms() -> u64 {
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
pub(super) fn push(backend: &Backend, bundle: &Path) -> std::process::Output {
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
pub(super) fn push_refused(backend: &Backend, bundle: &Path, why: &str) -> String {
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
pub(super) fn wait_online_with_policy(backend: &Backend, name: &str, serial: u64, agent: &Agent) {
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
pub(super) fn wait_for_alerts(backend: &Backend, want: &[u64], agent: &Agent) -> Value {
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
