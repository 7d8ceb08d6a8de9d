//! One run of `picket run` through attacks and a healthy workload: exactly the expected alerts.

use super::*;

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
