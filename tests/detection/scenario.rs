//! One run of `picket run` through attacks and a healthy workload: exactly the expected alerts.

use super::*;
use std::net::SocketAddr;

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

#[test]
fn scenario_raises_exactly_the_expected_alerts() {
    let lab = Lab::new("scenario");
    let files = Files::create(&lab);
    let port = free_port();
    let shas = Shas::of_binaries();
    let bundle = lab.sign("scenario", &scenario_policy(&files, port, &shas).text());
    let agent = Agent::start(&lab.config(&bundle, None));
    let me = std::process::id();

    // ---- The quiet part: everything here is in the baseline. ----
    let quiet = Quiet::run(&files, port);
    let quiet_pids = [me, quiet.true_pid, quiet.cat_pid];
    check_the_quiet_part_raised_nothing(&agent, &lab, &quiet_pids, &files.d);
    drop(quiet.allowed_client);

    // ---- The attack. ----
    let mut expected: Vec<Expected> = Vec::new();
    let (_local_listener, client, _server) = connect_to_a_peer_not_allowed(port, me, &mut expected);
    send_udp_to_a_peer_not_allowed(&quiet.udp, me, &mut expected);
    let rogue_listener = listen_on_a_port_not_allowed(me, &mut expected);
    let sh_copy_pid = run_a_shell_copied_to_tmp(&files.sh_copy, &mut expected);
    replace_a_baselined_executable(&files.tool, &shas, &mut expected);
    append_to_a_protected_file(&files, &mut expected);
    rename_over_a_protected_file(&files, &mut expected);
    chmod_a_protected_file(&files.secret, &mut expected);
    run_a_fileless_executable(&mut expected);

    // Each expected alert arrives...
    wait_for_each(&agent, &expected);
    // ... and nothing else from those processes, once everything before the barrier is handled.
    agent.barrier(&lab, "after the attack");
    std::thread::sleep(Duration::from_secs(1));
    let mut pids: BTreeSet<u32> = expected.iter().map(|e| e.pid).collect();
    pids.extend(quiet_pids);
    let mine: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| pid(a).is_some_and(|p| pids.contains(&p)))
        .collect();
    // Nor did the agent say it lost events, was tampered with or refused a policy, whoever
    // caused it: the verdicts above would not be complete.
    let health: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| HEALTH_KINDS.contains(&kind(a)))
        .collect();
    assert!(
        health.is_empty(),
        "the agent reported trouble during the scenario:\n{}\n{}",
        lines(&health),
        agent.describe()
    );
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
    check_each_alert_and_the_shell_context(&mine, sh_copy_pid, me, &shas.dash);

    drop((client, rogue_listener, quiet.udp, quiet.udp_receiver));
    let out = agent.stop();
    assert_seq_increasing(&out.alerts, "the scenario run");
}

// ---------------------------------------------------------------------------------------------
// The device and its baseline
// ---------------------------------------------------------------------------------------------

/// The files the scenario protects or replaces, and where the copied shell goes.
struct Files {
    /// The directory of the protected files and the replaced tool.
    d: PathBuf,
    app_conf: PathBuf,
    secret: PathBuf,
    tool: PathBuf,
    /// Holds the copied shell; removed when dropped.
    _in_tmp: TempDir,
    sh_copy: PathBuf,
}

impl Files {
    /// Writes the protected files and the tool-to-be-replaced; picks the copied shell's path.
    fn create(lab: &Lab) -> Files {
        // Protected files and the replaced tool live outside the temporary locations (/tmp, ...),
        // so that executing from there is not also "suspicious"; the copied shell lives in /tmp.
        let d = lab.dir("files");
        let app_conf = d.join("app.conf");
        let secret = d.join("secret");
        let tool = d.join("tool");
        fs::write(&app_conf, "listen = 8080\n").unwrap();
        fs::write(&secret, "hunter2\n").unwrap();
        fs::write(&tool, "not yet\n").unwrap();
        let in_tmp = TempDir::new();
        let sh_copy = in_tmp.join("sh");
        Files {
            d,
            app_conf,
            secret,
            tool,
            _in_tmp: in_tmp,
            sh_copy,
        }
    }
}

/// The SHA-256 of the binaries the scenario runs, copies or swaps.
struct Shas {
    true_: String,
    false_: String,
    dash: String,
}

impl Shas {
    /// Hashes /usr/bin/true, /usr/bin/false and /usr/bin/dash.
    fn of_binaries() -> Shas {
        Shas {
            true_: sha256_file(Path::new("/usr/bin/true")),
            false_: sha256_file(Path::new("/usr/bin/false")),
            dash: sha256_file(Path::new("/usr/bin/dash")),
        }
    }
}

/// The baseline: the tools the test runs, this test binary, the tool (as /usr/bin/true), the
/// protected files, and the peer and listen port of the quiet part.
fn scenario_policy(files: &Files, port: u16, shas: &Shas) -> PolicyText {
    let me_exe = fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let mut policy = PolicyText::new(1);
    for bin in ["true", "sleep", "cat", "mv", "chmod", "dash", "bash", "cp"] {
        let path = PathBuf::from(format!("/usr/bin/{bin}"));
        policy.executable(&path, &sha256_file(&path));
    }
    // `sh` is dash behind symbolic links; the kernel names the link that was executed.
    policy.executable(Path::new("/bin/sh"), &shas.dash);
    policy.executable(Path::new("/usr/bin/sh"), &shas.dash);
    policy.executable(&me_exe, &sha256_file(&me_exe));
    // Baselined as /usr/bin/true; replaced by /usr/bin/false before it runs.
    policy.executable(&files.tool, &shas.true_);
    policy.protected(&files.app_conf, &sha256_file(&files.app_conf));
    policy.protected(&files.secret, &sha256_file(&files.secret));
    policy.raw(&format!(
        "[[network.outbound]]\ncidr = \"127.0.0.2/32\"\nports = {port}\nprotocol = \"any\"\n\n\
         [[network.listen]]\nport = {port}\nprotocol = \"any\"\n"
    ));
    policy
}

// ---------------------------------------------------------------------------------------------
// The quiet part
// ---------------------------------------------------------------------------------------------

/// What the quiet part left open, and the pids of the commands it ran.
struct Quiet {
    _allowed_listener: TcpListener,
    udp_receiver: UdpSocket,
    /// Bound to the allowed port; the attack sends from it too.
    udp: UdpSocket,
    allowed_client: TcpStream,
    _allowed_server: (TcpStream, SocketAddr),
    true_pid: u32,
    cat_pid: u32,
}

impl Quiet {
    /// Connects and sends to the allowed peer, listens on the allowed port, runs baselined
    /// tools and reads the protected files.
    fn run(files: &Files, port: u16) -> Quiet {
        let allowed_listener = TcpListener::bind(("127.0.0.2", port)).unwrap();
        let udp_receiver = UdpSocket::bind(("127.0.0.2", port)).unwrap();
        let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let allowed_client = TcpStream::connect(("127.0.0.2", port)).unwrap();
        let allowed_server = allowed_listener.accept().unwrap();
        udp.send_to(b"allowed", ("127.0.0.2", port)).unwrap();
        let mut buf = [0u8; 16];
        udp_receiver.recv_from(&mut buf).unwrap();
        let true_pid = run_ok(&mut Command::new("/usr/bin/true"));
        let cat_pid = run_ok(Command::new("/usr/bin/cat").arg(&files.app_conf));
        fs::read(&files.app_conf).unwrap();
        fs::read(&files.secret).unwrap();
        Quiet {
            _allowed_listener: allowed_listener,
            udp_receiver,
            udp,
            allowed_client,
            _allowed_server: allowed_server,
            true_pid,
            cat_pid,
        }
    }
}

/// After a barrier and at least two seconds, no alert names the quiet part's pids or a file in
/// `d`.
fn check_the_quiet_part_raised_nothing(agent: &Agent, lab: &Lab, quiet_pids: &[u32], d: &Path) {
    let started = Instant::now();
    agent.barrier(lab, "after the quiet part");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let noisy: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| {
            pid(a).is_some_and(|p| quiet_pids.contains(&p))
                || path(a).is_some_and(|p| Path::new(p).starts_with(d))
        })
        .collect();
    assert!(
        noisy.is_empty(),
        "the baseline's own actions (pids {quiet_pids:?}, files in {}) raised alerts:\n{}\n{}",
        d.display(),
        lines(&noisy),
        agent.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// The attack: each step acts once and says which alerts it must raise
// ---------------------------------------------------------------------------------------------

/// TCP connect to a peer that is not allowed; the listener is on the allowed listen port.
/// Returns the listener and both ends, to be kept open.
fn connect_to_a_peer_not_allowed(
    port: u16,
    me: u32,
    expected: &mut Vec<Expected>,
) -> (TcpListener, TcpStream, (TcpStream, SocketAddr)) {
    let local_listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let server = local_listener.accept().unwrap();
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
    // The dry run of enforcement: the network guard would have refused the connect.
    expected.push(would_block_connect("tcp_connect", port, me));
    (local_listener, client, server)
}

/// UDP datagram to a peer that is not allowed, from the socket bound to the allowed port.
fn send_udp_to_a_peer_not_allowed(udp: &UdpSocket, me: u32, expected: &mut Vec<Expected>) {
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
    expected.push(would_block_connect("udp_send", 9, me));
}

/// The dry run's `would_block` for a connect or send `op` to 127.0.0.1:`port` by `pid`.
fn would_block_connect(op: &'static str, port: u16, pid: u32) -> Expected {
    Expected::new(
        format!("would_block {op} to 127.0.0.1:{port}"),
        pid,
        move |a| {
            kind(a) == "would_block"
                && a["details"]["action"] == "connect"
                && a["details"]["op"] == op
                && a["details"]["remote_addr"] == "127.0.0.1"
                && a["details"]["remote_port"] == port
        },
    )
}

/// A TCP listener on a port that is not allowed; returned, to be kept open. Bound to port 0 (a
/// port the kernel picks), which the network guard lets through: no `would_block`.
fn listen_on_a_port_not_allowed(me: u32, expected: &mut Vec<Expected>) -> TcpListener {
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
    rogue_listener
}

/// A shell copied to /tmp: unknown, and run from a temporary location. Returns its pid.
fn run_a_shell_copied_to_tmp(sh_copy: &Path, expected: &mut Vec<Expected>) -> u32 {
    fs::copy("/usr/bin/dash", sh_copy).unwrap();
    let sh_copy_pid = run_any(Command::new(sh_copy).args(["-c", "true"]));
    expected.push(Expected::path(
        "unknown_executable",
        sh_copy,
        sh_copy_pid,
        |_| true,
    ));
    expected.push(Expected::path(
        "suspicious_exec",
        sh_copy,
        sh_copy_pid,
        |a| a["details"]["reason"] == "temporary location",
    ));
    expected.push(Expected::path("would_block", sh_copy, sh_copy_pid, |a| {
        a["details"]["reason"] == "temporary location" && a["details"]["action"] == "exec"
    }));
    sh_copy_pid
}

/// A baselined executable replaced by another binary.
fn replace_a_baselined_executable(tool: &Path, shas: &Shas, expected: &mut Vec<Expected>) {
    fs::copy("/usr/bin/false", tool).unwrap();
    fs::set_permissions(tool, fs::Permissions::from_mode(0o755)).unwrap();
    let tool_pid = run_any(&mut Command::new(tool));
    {
        let (t, f) = (shas.true_.clone(), shas.false_.clone());
        expected.push(Expected::path(
            "modified_executable",
            tool,
            tool_pid,
            move |a| a["details"]["expected"] == t.as_str() && a["details"]["actual"] == f.as_str(),
        ));
        let f = shas.false_.clone();
        expected.push(Expected::path("would_block", tool, tool_pid, move |a| {
            a["details"]["sha256"] == f.as_str() && a["details"]["action"] == "exec"
        }));
    }
    if is_temporary_location(tool) {
        expected.push(Expected::path("suspicious_exec", tool, tool_pid, |_| true));
    }
}

/// A protected file appended to through a relative path.
fn append_to_a_protected_file(files: &Files, expected: &mut Vec<Expected>) {
    let append_pid = run_ok(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("cd '{}' && echo x >> app.conf", files.d.display())),
    );
    expected.push(Expected::path(
        "protected_file_changed",
        &files.app_conf,
        append_pid,
        |a| a["details"]["op"] == "open",
    ));
}

/// Another file renamed over a protected one.
fn rename_over_a_protected_file(files: &Files, expected: &mut Vec<Expected>) {
    let new = files.d.join("new");
    fs::write(&new, "attacker's secret\n").unwrap();
    let mv_pid = run_ok(Command::new("/usr/bin/mv").arg(&new).arg(&files.secret));
    expected.push(Expected::path(
        "protected_file_changed",
        &files.secret,
        mv_pid,
        |a| a["details"]["op"] == "rename",
    ));
}

/// The protected path's permissions changed (it is the renamed file now: protected by path).
fn chmod_a_protected_file(secret: &Path, expected: &mut Vec<Expected>) {
    let chmod_pid = run_ok(Command::new("/usr/bin/chmod").arg("600").arg(secret));
    expected.push(Expected::path(
        "protected_file_changed",
        secret,
        chmod_pid,
        |a| a["details"]["op"] == "chmod",
    ));
}

/// A fileless executable: /usr/bin/true run from a memfd.
fn run_a_fileless_executable(expected: &mut Vec<Expected>) {
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
    // The dry run: enforcing, the kernel would have killed it before its first instruction.
    expected.push(Expected::path(
        "would_block",
        Path::new(&memfd_path),
        memfd_pid,
        |a| a["details"]["reason"] == "fileless",
    ));
}

// ---------------------------------------------------------------------------------------------
// The alerts
// ---------------------------------------------------------------------------------------------

/// Waits for each expected alert, in order.
fn wait_for_each(agent: &Agent, expected: &[Expected]) {
    for e in expected {
        agent.wait_for(&e.what, Some(e.pid), |a| {
            pid(a) == Some(e.pid) && (e.pred)(a)
        });
    }
}

/// Each alert has the envelope, a count of 1 and its process's executable; the copied shell's
/// alert names this test as its parent and dash's hash.
fn check_each_alert_and_the_shell_context(
    mine: &[Value],
    sh_copy_pid: u32,
    me: u32,
    dash_sha: &str,
) {
    for a in mine {
        check_envelope(a);
        assert_eq!(a["count"], 1, "{a}");
        assert!(
            a["process"]["exe"].as_str().is_some(),
            "an alert about a process names its executable: {a}"
        );
    }
    // The exec sensor reports the process once it runs the copied shell; the exec guard decides
    // before the kernel replaces the image, so its `would_block` names the image that asked for
    // the exec (this test's forked child). The two sensors' alerts arrive in either order.
    let me_exe = std::env::current_exe().unwrap();
    let sh_alerts: Vec<&Value> = mine
        .iter()
        .filter(|a| pid(a) == Some(sh_copy_pid))
        .collect();
    assert_eq!(sh_alerts.len(), 3, "{sh_alerts:?}");
    for sh_alert in sh_alerts {
        assert_eq!(
            sh_alert["process"]["ppid"], me,
            "the copied shell's parent is this test: {sh_alert}"
        );
        if sh_alert["alert"] == "would_block" {
            assert_eq!(
                sh_alert["process"]["exe"],
                me_exe.to_str().unwrap(),
                "decided before the exec: {sh_alert}"
            );
        } else {
            assert_eq!(sh_alert["process"]["sha256"], dash_sha, "{sh_alert}");
        }
    }
}
