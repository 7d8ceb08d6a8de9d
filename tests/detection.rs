//! End-to-end tests of `picket run`, the detection daemon: each test signs its own baseline
//! policy with a fresh key, starts the real agent with the real eBPF sensors, plays the device
//! (or the attacker) and checks the alerts printed as JSON lines on stdout.
//!
//! Runs as root. The agent sees every process on the machine, and anything that runs there
//! (other tests of this binary, cargo, shells) raises alerts against these small policies, so
//! alerts are always selected by the pids and paths the test itself caused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use picket_test_support::agent::Waited;
use picket_test_support::process::{exec_memfd, spawn_fresh_executable};
use picket_test_support::{sha256_file, unique, TempDir};
use serde_json::Value;

const PICKET: &str = env!("CARGO_BIN_EXE_picket");
/// How long a test waits for the alert its action should cause.
const ALERT_TIMEOUT: Duration = Duration::from_secs(15);
/// What `picket run` logs on stderr once its sensors are attached.
const READY: &str = "running with policy";

/// Alert kinds a test never causes on purpose (agent health, policy updates): tolerated in the
/// checks that no other alert came, since tests running in parallel in this process signal and
/// start other agents.
const HEALTH_KINDS: [&str; 3] = ["agent_tamper", "sensor_data_loss", "policy_rejected"];

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

#[test]
fn scenario_raises_exactly_the_expected_alerts() {
    let lab = Lab::new("scenario");
    // Protected files and the replaced tool live outside the temporary locations (/tmp, ...), so
    // that executing from there is not also "suspicious"; the copied shell lives in /tmp.
    let d = lab.dir("files");
    let app_conf = d.join("app.conf");
    let secret = d.join("secret");
    let tool = d.join("tool");
    fs::write(&app_conf, "listen = 8080\n").unwrap();
    fs::write(&secret, "hunter2\n").unwrap();
    fs::write(&tool, "not yet\n").unwrap();
    let in_tmp = TempDir::new();
    let sh_copy = in_tmp.join("sh");

    let port = free_port();
    let true_sha = sha256_file(Path::new("/usr/bin/true"));
    let false_sha = sha256_file(Path::new("/usr/bin/false"));
    let dash_sha = sha256_file(Path::new("/usr/bin/dash"));
    let me_exe = fs::canonicalize(std::env::current_exe().unwrap()).unwrap();

    let mut policy = PolicyText::new(1);
    for bin in ["true", "sleep", "cat", "mv", "chmod", "dash", "bash", "cp"] {
        let path = PathBuf::from(format!("/usr/bin/{bin}"));
        policy.executable(&path, &sha256_file(&path));
    }
    // `sh` is dash behind symbolic links; the kernel names the link that was executed.
    policy.executable(Path::new("/bin/sh"), &dash_sha);
    policy.executable(Path::new("/usr/bin/sh"), &dash_sha);
    policy.executable(&me_exe, &sha256_file(&me_exe));
    // Baselined as /usr/bin/true; replaced by /usr/bin/false before it runs.
    policy.executable(&tool, &true_sha);
    policy.protected(&app_conf, &sha256_file(&app_conf));
    policy.protected(&secret, &sha256_file(&secret));
    policy.raw(&format!(
        "[[network.outbound]]\ncidr = \"127.0.0.2/32\"\nports = {port}\nprotocol = \"any\"\n\n\
         [[network.listen]]\nport = {port}\nprotocol = \"any\"\n"
    ));
    let bundle = lab.sign("scenario", &policy.text());
    let agent = Agent::start(&lab.config(&bundle, None));
    let me = std::process::id();

    // ---- The quiet part: everything here is in the baseline. ----
    let allowed_listener = TcpListener::bind(("127.0.0.2", port)).unwrap();
    let udp_receiver = UdpSocket::bind(("127.0.0.2", port)).unwrap();
    let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let allowed_client = TcpStream::connect(("127.0.0.2", port)).unwrap();
    let _allowed_server = allowed_listener.accept().unwrap();
    udp.send_to(b"allowed", ("127.0.0.2", port)).unwrap();
    let mut buf = [0u8; 16];
    udp_receiver.recv_from(&mut buf).unwrap();
    let true_pid = run_ok(&mut Command::new("/usr/bin/true"));
    let cat_pid = run_ok(Command::new("/usr/bin/cat").arg(&app_conf));
    fs::read(&app_conf).unwrap();
    fs::read(&secret).unwrap();
    let quiet_pids = [me, true_pid, cat_pid];

    let started = Instant::now();
    agent.barrier(&lab, "after the quiet part");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let noisy: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| !HEALTH_KINDS.contains(&kind(a)))
        .filter(|a| {
            pid(a).is_some_and(|p| quiet_pids.contains(&p))
                || path(a).is_some_and(|p| Path::new(p).starts_with(&d))
        })
        .collect();
    assert!(
        noisy.is_empty(),
        "the baseline's own actions (pids {quiet_pids:?}, files in {}) raised alerts:\n{}\n{}",
        d.display(),
        lines(&noisy),
        agent.describe()
    );
    drop(allowed_client);

    // ---- The attack. ----
    let mut expected: Vec<Expected> = Vec::new();

    // TCP connect to a peer that is not allowed; the listener is on the allowed listen port.
    let local_listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _server = local_listener.accept().unwrap();
    expected.push(Expected::new(
        format!("unexpected_connection tcp to 127.0.0.1:{port}"),
        me,
        move |a| {
            kind(a) == "unexpected_connection"
                && a["details"]["op"] == "tcp_connect"
                && a["details"]["remote_addr"] == "127.0.0.1"
                && a["details"]["remote_port"] == port
                && a["details"]["protocol"] == "tcp"
        },
    ));

    // UDP datagram to a peer that is not allowed, from the socket bound to the allowed port.
    udp.send_to(b"exfil", ("127.0.0.1", 9)).unwrap();
    expected.push(Expected::new(
        "unexpected_connection udp_send to 127.0.0.1:9".into(),
        me,
        |a| {
            kind(a) == "unexpected_connection"
                && a["details"]["op"] == "udp_send"
                && a["details"]["remote_addr"] == "127.0.0.1"
                && a["details"]["remote_port"] == 9
                && a["details"]["protocol"] == "udp"
        },
    ));

    // A TCP listener on a port that is not allowed.
    let rogue_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let rogue_port = rogue_listener.local_addr().unwrap().port();
    expected.push(Expected::new(
        format!("unexpected_listener on tcp port {rogue_port}"),
        me,
        move |a| {
            kind(a) == "unexpected_listener"
                && a["details"]["port"] == rogue_port
                && a["details"]["protocol"] == "tcp"
        },
    ));

    // A shell copied to /tmp: unknown, and run from a temporary location.
    fs::copy("/usr/bin/dash", &sh_copy).unwrap();
    let sh_copy_pid = run_any(Command::new(&sh_copy).args(["-c", "true"]));
    expected.push(Expected::path(
        "unknown_executable",
        &sh_copy,
        sh_copy_pid,
        |_| true,
    ));
    expected.push(Expected::path(
        "suspicious_exec",
        &sh_copy,
        sh_copy_pid,
        |a| a["details"]["reason"] == "temporary location",
    ));

    // A baselined executable replaced by another binary.
    fs::copy("/usr/bin/false", &tool).unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let tool_pid = run_any(&mut Command::new(&tool));
    {
        let (t, f) = (true_sha.clone(), false_sha.clone());
        expected.push(Expected::path(
            "modified_executable",
            &tool,
            tool_pid,
            move |a| a["details"]["expected"] == t.as_str() && a["details"]["actual"] == f.as_str(),
        ));
    }
    if is_temporary_location(&tool) {
        expected.push(Expected::path("suspicious_exec", &tool, tool_pid, |_| true));
    }

    // A protected file appended to through a relative path.
    let append_pid = run_ok(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("cd '{}' && echo x >> app.conf", d.display())),
    );
    expected.push(Expected::path(
        "protected_file_changed",
        &app_conf,
        append_pid,
        |a| a["details"]["op"] == "open",
    ));

    // Another file renamed over a protected one.
    let new = d.join("new");
    fs::write(&new, "attacker's secret\n").unwrap();
    let mv_pid = run_ok(Command::new("/usr/bin/mv").arg(&new).arg(&secret));
    expected.push(Expected::path(
        "protected_file_changed",
        &secret,
        mv_pid,
        |a| a["details"]["op"] == "rename",
    ));

    // The protected path's permissions changed (it is the renamed file now: protected by path).
    let chmod_pid = run_ok(Command::new("/usr/bin/chmod").arg("600").arg(&secret));
    expected.push(Expected::path(
        "protected_file_changed",
        &secret,
        chmod_pid,
        |a| a["details"]["op"] == "chmod",
    ));

    // A fileless executable: /usr/bin/true run from a memfd.
    let memfd_name = unique("picket-det-memfd");
    let (memfd_pid, _) = exec_memfd(&memfd_name, "picket-det-fileless");
    let memfd_path = format!("/memfd:{memfd_name} (deleted)");
    expected.push(Expected::path(
        "unknown_executable",
        Path::new(&memfd_path),
        memfd_pid,
        |_| true,
    ));
    expected.push(Expected::path(
        "suspicious_exec",
        Path::new(&memfd_path),
        memfd_pid,
        |a| a["details"]["reason"] == "fileless",
    ));

    // Each expected alert arrives...
    for e in &expected {
        agent.wait_for(&e.what, Some(e.pid), |a| {
            pid(a) == Some(e.pid) && (e.pred)(a)
        });
    }
    // ... and nothing else from those processes, once everything before the barrier is handled.
    agent.barrier(&lab, "after the attack");
    std::thread::sleep(Duration::from_secs(1));
    let mut pids: BTreeSet<u32> = expected.iter().map(|e| e.pid).collect();
    pids.extend(quiet_pids);
    let mine: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| pid(a).is_some_and(|p| pids.contains(&p)))
        .filter(|a| !HEALTH_KINDS.contains(&kind(a)))
        .collect();
    let mut problems = String::new();
    for e in &expected {
        let n = mine.iter().filter(|a| e.matches(a)).count();
        if n != 1 {
            let _ = writeln!(problems, "expected once, seen {n} times: {}", e.what);
        }
    }
    for a in &mine {
        if !expected.iter().any(|e| e.matches(a)) {
            let _ = writeln!(problems, "unexpected alert: {a}");
        }
    }
    assert!(
        problems.is_empty(),
        "{problems}\nalerts of pids {pids:?}:\n{}\n{}",
        lines(&mine),
        agent.describe()
    );
    for a in &mine {
        check_envelope(a);
        assert_eq!(a["count"], 1, "{a}");
        assert!(
            a["process"]["exe"].as_str().is_some(),
            "an alert about a process names its executable: {a}"
        );
    }
    let sh_alert = mine.iter().find(|a| pid(a) == Some(sh_copy_pid)).unwrap();
    assert_eq!(
        sh_alert["process"]["ppid"], me,
        "the copied shell's parent is this test: {sh_alert}"
    );
    assert_eq!(
        sh_alert["process"]["sha256"],
        dash_sha.as_str(),
        "{sh_alert}"
    );

    drop((client, rogue_listener, udp, udp_receiver));
    let out = agent.stop();
    assert_seq_increasing(&out.alerts, "the scenario run");
}

// ---------------------------------------------------------------------------------------------
// Integrity across restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn drift_while_stopped_is_reported_at_restart() {
    let lab = Lab::new("drift");
    let d = lab.dir("files");
    let app_conf = d.join("app.conf");
    let secret = d.join("secret");
    let gone = d.join("gone");
    fs::write(&app_conf, "listen = 8080\n").unwrap();
    fs::write(&secret, "hunter2\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&gone, "soon gone\n").unwrap();

    let mut policy = PolicyText::new(1);
    policy.protected(&app_conf, &sha256_file(&app_conf));
    policy.raw(&format!(
        "[[files.protected]]\npath = {}\nsha256 = \"{}\"\nmode = \"0600\"\n",
        toml_str(&secret),
        sha256_file(&secret)
    ));
    policy.protected(&gone, &sha256_file(&gone));
    let bundle = lab.sign("drift", &policy.text());
    let alerts_file = lab.root.join("alerts.jsonl");
    let config = lab.config(&bundle, Some(&alerts_file));

    // First run: the files match the baseline; one alert is caused so that there is a sequence.
    let agent = Agent::start(&config);
    let probe = d.join("probe");
    fs::copy("/usr/bin/true", &probe).unwrap();
    let probe_pid = run_ok(&mut Command::new(&probe));
    agent.wait_for(
        &format!(
            "unknown_executable of {} by pid {probe_pid}",
            probe.display()
        ),
        Some(probe_pid),
        |a| kind(a) == "unknown_executable" && pid(a) == Some(probe_pid),
    );
    let first = agent.stop();
    let drift_of_mine: Vec<&Value> = first
        .alerts
        .iter()
        .filter(|a| {
            kind(a) == "integrity_drift" && path(a).is_some_and(|p| Path::new(p).starts_with(&d))
        })
        .collect();
    assert!(
        drift_of_mine.is_empty(),
        "the files matched the baseline at the first start:\n{}",
        lines(&drift_of_mine.into_iter().cloned().collect::<Vec<_>>())
    );
    assert_seq_increasing(&first.alerts, "the first run");
    let first_max = first.alerts.iter().filter_map(seq).max().unwrap();

    // While the agent is stopped: content changed, mode changed, a file removed.
    fs::OpenOptions::new()
        .append(true)
        .open(&app_conf)
        .unwrap()
        .write_all(b"listen = 4444\n")
        .unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    fs::remove_file(&gone).unwrap();

    let agent = Agent::start(&config);
    for (file, what) in [
        (&app_conf, "content"),
        (&secret, "mode"),
        (&gone, "missing"),
    ] {
        let a = agent.wait_for(
            &format!("integrity_drift ({what}) of {}", file.display()),
            None,
            |a| {
                kind(a) == "integrity_drift"
                    && path(a) == file.to_str()
                    && a["details"]["what"] == what
            },
        );
        check_envelope(&a);
        assert!(
            a["process"].is_null(),
            "a drift found by a scan has no process: {a}"
        );
        assert!(
            seq(&a).unwrap() > first_max,
            "the sequence must go on across restarts: first run ended at {first_max}, got {a}"
        );
    }
    let second = agent.stop();
    assert_seq_increasing(&second.alerts, "the second run");
    let drift: Vec<&Value> = second
        .alerts
        .iter()
        .filter(|a| kind(a) == "integrity_drift" && path(a) == app_conf.to_str())
        .collect();
    assert_eq!(drift.len(), 1, "one drift alert for app.conf: {drift:?}");

    // The alert file got both runs, appended, the same alerts as stdout.
    let text = fs::read_to_string(&alerts_file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", alerts_file.display()));
    let from_file: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("not a JSON line in {}: {e}: {l}", alerts_file.display())
            })
        })
        .collect();
    assert_seq_increasing(&from_file, "the alert file");
    let file_seqs: Vec<u64> = from_file.iter().filter_map(seq).collect();
    let stdout_seqs: Vec<u64> = first
        .alerts
        .iter()
        .chain(&second.alerts)
        .filter_map(seq)
        .collect();
    assert_eq!(
        file_seqs, stdout_seqs,
        "the alert file should hold what both runs printed on stdout"
    );
}

// ---------------------------------------------------------------------------------------------
// Anti-rollback at start-up
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rejected_policy_keeps_the_last_good_one() {
    let lab = Lab::new("rollback");
    let d = lab.dir("files");
    let probe = d.join("probe");
    fs::copy("/usr/bin/true", &probe).unwrap();
    // Serial 4 allows the probe; serial 5 does not: an alert for it shows that 5 is in force.
    let mut four = PolicyText::new(4);
    four.executable(&probe, &sha256_file(&probe));
    let four = lab.sign("p4", &four.text());
    let five = lab.sign("p5", &PolicyText::new(5).text());

    let agent = Agent::start(&lab.config(&five, None));
    let probe_pid = run_ok(&mut Command::new(&probe));
    agent.wait_for(
        &format!("unknown_executable of the probe (pid {probe_pid}) under serial 5"),
        Some(probe_pid),
        |a| kind(a) == "unknown_executable" && pid(a) == Some(probe_pid),
    );
    agent.stop();
    let serial_file = lab.state.join("policy/serial");
    let serial = fs::read_to_string(&serial_file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", serial_file.display()));
    assert_eq!(serial.trim(), "5", "{}", serial_file.display());

    // Restart with the older bundle configured: refused, and serial 5 stays in force.
    let agent = Agent::start(&lab.config(&four, None));
    let rejected = agent.wait_for("policy_rejected of serial 4", None, |a| {
        kind(a) == "policy_rejected"
    });
    check_envelope(&rejected);
    let reason = rejected["details"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("older"),
        "the rejection should say the bundle is older: {rejected}"
    );
    let probe_pid = run_ok(&mut Command::new(&probe));
    agent.wait_for(
        &format!("unknown_executable of the probe (pid {probe_pid}): serial 5 still in force"),
        Some(probe_pid),
        |a| kind(a) == "unknown_executable" && pid(a) == Some(probe_pid),
    );
    let out = agent.stop();
    assert_seq_increasing(&out.alerts, "the run with the older bundle");
    assert_eq!(
        fs::read_to_string(&serial_file).unwrap().trim(),
        "5",
        "a refused bundle changes nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Running `picket run`
// ---------------------------------------------------------------------------------------------

/// A running `picket run`; SIGTERMed and reaped when dropped.
struct Agent(picket_test_support::Agent);

/// Everything `picket run` printed, once it has exited.
struct Output {
    /// Every stdout line, parsed (non-JSON lines fail the test at once).
    alerts: Vec<Value>,
}

impl Agent {
    /// Starts `picket run --config CONFIG` and returns once it logged that it is running.
    fn start(config: &Path) -> Agent {
        let args = [
            OsStr::new("run"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        Agent(picket_test_support::Agent::start(PICKET, &args, READY))
    }

    /// Waits up to [`ALERT_TIMEOUT`] for an alert matching `pred` and returns it; on timeout
    /// panics naming `what`, with the alerts of `pid` and the last ones printed.
    fn wait_for(&self, what: &str, pid_of: Option<u32>, pred: impl Fn(&Value) -> bool) -> Value {
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
    fn barrier(&self, lab: &Lab, when: &str) {
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
    fn alerts(&self) -> Vec<Value> {
        self.0.events()
    }

    /// The last alerts and stderr lines, for failure messages.
    fn describe(&self) -> String {
        self.0.describe()
    }

    /// SIGTERM; checks that the agent exits with status 0 and returns what it printed.
    fn stop(self) -> Output {
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
struct Lab {
    root: PathBuf,
    key: PathBuf,
    trust: PathBuf,
    state: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(&format!("detection-{tag}")));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let root = fs::canonicalize(root).unwrap();
        ok(Command::new(PICKET)
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
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Signs policy `text` into NAME.bundle.
    fn sign(&self, name: &str, text: &str) -> PathBuf {
        let toml = self.root.join(format!("{name}.toml"));
        fs::write(&toml, text).unwrap();
        let bundle = self.root.join(format!("{name}.bundle"));
        ok(Command::new(PICKET)
            .args(["policy", "sign", "--key"])
            .arg(&self.key)
            .arg("--in")
            .arg(&toml)
            .arg("--out")
            .arg(&bundle));
        bundle
    }

    /// Writes an agent configuration enforcing `bundle`; returns its path.
    fn config(&self, bundle: &Path, alerts_file: Option<&Path>) -> PathBuf {
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

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A policy in the authoring format, for device class `lab`.
struct PolicyText(String);

impl PolicyText {
    fn new(serial: u64) -> PolicyText {
        PolicyText(format!(
            "[metadata]\nname = \"detection-test\"\ndevice_class = \"lab\"\nserial = {serial}\n\
             created = \"2026-11-22T10:00:00Z\"\n\n"
        ))
    }

    fn executable(&mut self, path: &Path, sha256: &str) {
        let _ = writeln!(
            self.0,
            "[[executable]]\npath = {}\nsha256 = \"{sha256}\"\n",
            toml_str(path)
        );
    }

    fn protected(&mut self, path: &Path, sha256: &str) {
        let _ = writeln!(
            self.0,
            "[[files.protected]]\npath = {}\nsha256 = \"{sha256}\"\n",
            toml_str(path)
        );
    }

    fn raw(&mut self, text: &str) {
        let _ = writeln!(self.0, "{text}");
    }

    fn text(&self) -> String {
        self.0.clone()
    }
}

/// `path` as a TOML basic string (JSON string escapes are valid TOML).
fn toml_str(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("test paths are UTF-8")).unwrap()
}

fn ok(cmd: &mut Command) {
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
struct Expected {
    what: String,
    pid: u32,
    pred: Box<dyn Fn(&Value) -> bool>,
}

impl Expected {
    fn new(what: String, pid: u32, pred: impl Fn(&Value) -> bool + 'static) -> Expected {
        Expected {
            what,
            pid,
            pred: Box::new(pred),
        }
    }

    /// An alert of `alert_kind` about `path` by process `pid`, also matching `pred`.
    fn path(
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

    fn matches(&self, a: &Value) -> bool {
        pid(a) == Some(self.pid) && (self.pred)(a)
    }
}

fn kind(a: &Value) -> &str {
    a["alert"].as_str().unwrap_or("")
}

fn pid(a: &Value) -> Option<u32> {
    a["process"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

fn path(a: &Value) -> Option<&str> {
    a["path"].as_str()
}

fn seq(a: &Value) -> Option<u64> {
    a["seq"].as_u64()
}

fn lines(alerts: &[Value]) -> String {
    alerts.iter().fold(String::new(), |mut s, a| {
        let _ = writeln!(s, "  {a}");
        s
    })
}

/// The fields every alert carries.
fn check_envelope(a: &Value) {
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

fn assert_seq_increasing(alerts: &[Value], what: &str) {
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
fn is_temporary_location(path: &Path) -> bool {
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
fn run_any(cmd: &mut Command) -> u32 {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = spawn_fresh_executable(cmd);
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Runs `cmd` to completion and returns its pid; panics unless it succeeded.
fn run_ok(cmd: &mut Command) -> u32 {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = spawn_fresh_executable(cmd);
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "{cmd:?} failed: {status}");
    pid
}

/// A port free on 127.0.0.1 and 127.0.0.2, for TCP and UDP.
fn free_port() -> u16 {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let free = ["127.0.0.1", "127.0.0.2"].iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok() && UdpSocket::bind((*ip, port)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no port free for TCP and UDP on 127.0.0.1 and 127.0.0.2");
}
