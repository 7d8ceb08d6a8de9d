//! `picket run` as the tests run it, and the keys, policies and configuration they give it.

use super::*;

// ---------------------------------------------------------------------------------------------
// Running `picket run`
// ---------------------------------------------------------------------------------------------

/// A running `picket run`; SIGTERMed and reaped when dropped.
pub(crate) struct Agent(pub(crate) picket_test_support::Agent);

/// Everything `picket run` printed, once it has exited.
pub(crate) struct Output {
    /// Every stdout line, parsed (non-JSON lines fail the test at once).
    pub(crate) alerts: Vec<Value>,
}

impl Agent {
    /// Starts `picket run --config CONFIG` and returns once it logged that it is running.
    pub(crate) fn start(config: &Path) -> Agent {
        let args = [
            OsStr::new("run"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        Agent(picket_test_support::Agent::start(picket(), &args, READY))
    }

    /// Waits up to [`ALERT_TIMEOUT`] for an alert matching `pred` and returns it; on timeout
    /// panics naming `what`, with the alerts of `pid` and the last ones printed.
    pub(crate) fn wait_for(
        &self,
        what: &str,
        pid_of: Option<u32>,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = self.0.poll_for(ALERT_TIMEOUT, pred);
        let bad_lines = self.0.bad_lines();
        assert!(
            bad_lines.is_empty(),
            "picket run printed lines that are not JSON objects: {bad_lines:?}"
        );
        found.unwrap_or_else(|ended| {
            let mut msg = match ended {
                Waited::Exited => format!("picket run exited while waiting for {what}\n"),
                Waited::TimedOut => {
                    format!("timed out after {ALERT_TIMEOUT:?} waiting for {what}\n")
                }
            };
            if let Some(p) = pid_of {
                let of_pid: Vec<Value> = self
                    .alerts()
                    .into_iter()
                    .filter(|a| pid(a) == Some(p))
                    .collect();
                let _ = writeln!(msg, "alerts of pid {p}:\n{}", lines(&of_pid));
            }
            panic!("{msg}{}", self.describe())
        })
    }

    /// Runs an executable unknown to every test policy and waits for its alert: the sensors
    /// deliver events in order, so everything done before has been handled by then.
    pub(crate) fn barrier(&self, lab: &Lab, when: &str) {
        let marker = lab.root.join(unique("barrier"));
        fs::copy("/usr/bin/true", &marker).unwrap();
        let marker_pid = run_ok(&mut Command::new(&marker));
        self.wait_for(
            &format!("the barrier alert {when} (pid {marker_pid})"),
            Some(marker_pid),
            |a| kind(a) == "unknown_executable" && pid(a) == Some(marker_pid),
        );
    }

    /// Every alert printed so far.
    pub(crate) fn alerts(&self) -> Vec<Value> {
        self.0.events()
    }

    /// The last alerts and stderr lines, for failure messages.
    pub(crate) fn describe(&self) -> String {
        self.0.describe()
    }

    /// SIGTERM; checks that the agent exits with status 0 and returns what it printed.
    pub(crate) fn stop(self) -> Output {
        let out = self.0.stop();
        let status = out.status.expect("stop() waits for the exit");
        assert!(
            status.success(),
            "picket run should exit 0 on SIGTERM, got {status}\n{}",
            out.describe()
        );
        assert!(
            out.bad_lines.is_empty(),
            "picket run printed lines that are not JSON objects: {:?}",
            out.bad_lines
        );
        Output { alerts: out.events }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, policies and configuration
// ---------------------------------------------------------------------------------------------

/// A test's scratch directory (outside the temporary locations the agent finds suspicious):
/// its signing key, trust directory and state directory. Removed when dropped.
pub(crate) struct Lab {
    pub(crate) root: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) trust: PathBuf,
    pub(crate) state: PathBuf,
}

impl Lab {
    pub(crate) fn new(tag: &str) -> Lab {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(&format!("detection-{tag}")));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let root = fs::canonicalize(root).unwrap();
        ok(Command::new(picket())
            .args(["keygen", "--out"])
            .arg(root.join("vendor")));
        let trust = root.join("trust");
        fs::create_dir_all(&trust).unwrap();
        fs::copy(root.join("vendor.pub"), trust.join("vendor.pub")).unwrap();
        let state = root.join("state");
        fs::create_dir_all(&state).unwrap();
        Lab {
            key: root.join("vendor.key"),
            root,
            trust,
            state,
        }
    }

    /// A new directory in the lab, by its canonical path (the agent reports canonical paths).
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Signs policy `text` into NAME.bundle.
    pub(crate) fn sign(&self, name: &str, text: &str) -> PathBuf {
        let toml = self.root.join(format!("{name}.toml"));
        fs::write(&toml, text).unwrap();
        let bundle = self.root.join(format!("{name}.bundle"));
        ok(Command::new(picket())
            .args(["policy", "sign", "--key"])
            .arg(&self.key)
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        bundle
    }

    /// Writes an agent configuration enforcing `bundle`; returns its path.
    pub(crate) fn config(&self, bundle: &Path, alerts_file: Option<&Path>) -> PathBuf {
        let mut text = format!(
            "device_id = \"test-device\"\n\
             device_class = \"lab\"\n\
             policy = {}\n\
             trust_dir = {}\n\
             state_dir = {}\n\
             rescan_interval = \"1h\"\n\
             \n\
             [alerts]\n\
             window = \"60s\"\n\
             \n\
             [output]\n\
             stdout = true\n",
            toml_str(bundle),
            toml_str(&self.trust),
            toml_str(&self.state),
        );
        if let Some(file) = alerts_file {
            let _ = writeln!(text, "file = {}", toml_str(file));
        }
        let path = self.root.join(format!("{}.conf", unique("picket")));
        fs::write(&path, text).unwrap();
        path
    }
}

impl Lab {
    /// Writes an agent configuration enforcing `bundle` with this lab's trust and state
    /// directories and `settings` (TOML: top-level keys first, then tables, `[output]`
    /// included); returns its path.
    pub(crate) fn config_with(&self, bundle: &Path, settings: &str) -> PathBuf {
        let text = format!(
            "device_id = \"test-device\"\n\
             device_class = \"lab\"\n\
             policy = {}\n\
             trust_dir = {}\n\
             state_dir = {}\n\
             {settings}",
            toml_str(bundle),
            toml_str(&self.trust),
            toml_str(&self.state),
        );
        let path = self.root.join(format!("{}.conf", unique("picket")));
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A policy in the authoring format, for device class `lab`.
pub(crate) struct PolicyText(pub(crate) String);

impl PolicyText {
    /// A policy listing nothing but the machine's dynamic loader, as every device's does.
    pub(crate) fn new(serial: u64) -> PolicyText {
        PolicyText(format!(
            "[metadata]\nname = \"detection-test\"\ndevice_class = \"lab\"\nserial = {serial}\n\
             created = \"2026-11-22T10:00:00Z\"\n\n{}",
            picket_test_support::loader_entry()
        ))
    }

    pub(crate) fn executable(&mut self, path: &Path, sha256: &str) {
        let _ = writeln!(
            self.0,
            "[[executable]]\npath = {}\nsha256 = \"{sha256}\"\n",
            toml_str(path)
        );
    }

    pub(crate) fn protected(&mut self, path: &Path, sha256: &str) {
        let _ = writeln!(
            self.0,
            "[[files.protected]]\npath = {}\nsha256 = \"{sha256}\"\n",
            toml_str(path)
        );
    }

    pub(crate) fn raw(&mut self, text: &str) {
        let _ = writeln!(self.0, "{text}");
    }

    pub(crate) fn text(&self) -> String {
        self.0.clone()
    }
}

/// `path` as a TOML basic string (JSON string escapes are valid TOML).
pub(crate) fn toml_str(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("test paths are UTF-8")).unwrap()
}

pub(crate) fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Actions and alerts
// ---------------------------------------------------------------------------------------------

/// An alert the scenario must raise exactly once.
pub(crate) struct Expected {
    pub(crate) what: String,
    pub(crate) pid: u32,
    pub(crate) pred: Box<dyn Fn(&Value) -> bool>,
}

impl Expected {
    pub(crate) fn new(what: String, pid: u32, pred: impl Fn(&Value) -> bool + 'static) -> Expected {
        Expected {
            what,
            pid,
            pred: Box::new(pred),
        }
    }

    /// An alert of `alert_kind` about `path` by process `pid`, also matching `pred`.
    pub(crate) fn path(
        alert_kind: &'static str,
        path_: &Path,
        pid: u32,
        pred: impl Fn(&Value) -> bool + 'static,
    ) -> Expected {
        let expected_path = path_.to_str().unwrap().to_string();
        Expected::new(
            format!("{alert_kind} of {expected_path} by pid {pid}"),
            pid,
            move |a| kind(a) == alert_kind && path(a) == Some(expected_path.as_str()) && pred(a),
        )
    }

    pub(crate) fn matches(&self, a: &Value) -> bool {
        pid(a) == Some(self.pid) && (self.pred)(a)
    }
}

pub(crate) fn kind(a: &Value) -> &str {
    a["alert"].as_str().unwrap_or("")
}

pub(crate) fn pid(a: &Value) -> Option<u32> {
    a["process"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

pub(crate) fn path(a: &Value) -> Option<&str> {
    a["path"].as_str()
}

pub(crate) fn seq(a: &Value) -> Option<u64> {
    a["seq"].as_u64()
}

pub(crate) fn lines(alerts: &[Value]) -> String {
    alerts.iter().fold(String::new(), |mut s, a| {
        let _ = writeln!(s, "  {a}");
        s
    })
}

/// The fields every alert carries.
pub(crate) fn check_envelope(a: &Value) {
    assert!(seq(a).is_some(), "no seq: {a}");
    assert_eq!(a["device_id"], "test-device", "{a}");
    assert!(a["severity"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
    assert!(a["boot_id"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
    assert!(
        a["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
        "{a}"
    );
    assert!(a["count"].as_u64().is_some_and(|c| c >= 1), "{a}");
}

pub(crate) fn assert_seq_increasing(alerts: &[Value], what: &str) {
    let mut last: Option<u64> = None;
    for a in alerts {
        let s = seq(a).unwrap_or_else(|| panic!("an alert of {what} has no seq: {a}"));
        if let Some(l) = last {
            assert!(
                s > l,
                "seq must strictly increase in {what}: {s} came after {l}: {a}\nall:\n{}",
                lines(alerts)
            );
        }
        last = Some(s);
    }
}

/// Whether the agent counts `path` as a temporary location (its suspicious_exec rule).
pub(crate) fn is_temporary_location(path: &Path) -> bool {
    [
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/home",
        "/root",
        "/run/user",
    ]
    .iter()
    .any(|dir| path.starts_with(dir))
}

/// Runs `cmd` to completion (output discarded) and returns its pid, whatever its exit status.
pub(crate) fn run_any(cmd: &mut Command) -> u32 {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = spawn_fresh_executable(cmd);
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Runs `cmd` to completion and returns its pid; panics unless it succeeded.
pub(crate) fn run_ok(cmd: &mut Command) -> u32 {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = spawn_fresh_executable(cmd);
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "{cmd:?} failed: {status}");
    pid
}

/// A port free on 127.0.0.1 and 127.0.0.2, for TCP and UDP, below the ephemeral range (an
/// outgoing connection cannot take it before the test binds it).
pub(crate) fn free_port() -> u16 {
    for _ in 0..50 {
        let port = picket_test_support::ports::free_port();
        let free = ["127.0.0.1", "127.0.0.2"].iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok() && UdpSocket::bind((*ip, port)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no port free for TCP and UDP on 127.0.0.1 and 127.0.0.2");
}
