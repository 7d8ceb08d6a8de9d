//! What `picket run` finds when it starts again: drift while stopped, a rejected policy, a
//! previous run that was killed.

use super::*;

// ---------------------------------------------------------------------------------------------
// Integrity across restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn drift_while_stopped_is_reported_at_restart() {
    let lab = Lab::new("drift");
    let files = DriftFiles::create(&lab);
    let bundle = lab.sign("drift", &drift_policy(&files).text());
    let alerts_file = lab.root.join("alerts.jsonl");
    let config = lab.config(&bundle, Some(&alerts_file));

    // First run: the files match the baseline; one alert is caused so that there is a sequence.
    let first = run_once_without_drift(&config, &files.d);
    let first_max = first.alerts.iter().filter_map(seq).max().unwrap();

    // While the agent is stopped: content changed, mode changed, a file removed.
    drift_while_stopped(&files);

    let second = run_again_and_see_the_drift(&config, &files, first_max);
    check_the_alert_file_holds_both_runs(&alerts_file, &first, &second);
}

/// The protected files of the drift test, in the lab's `files` directory.
struct DriftFiles {
    d: PathBuf,
    app_conf: PathBuf,
    /// Protected with mode 0600 too.
    secret: PathBuf,
    /// Removed while the agent is stopped.
    gone: PathBuf,
}

impl DriftFiles {
    /// Writes the three files as the baseline records them.
    fn create(lab: &Lab) -> DriftFiles {
        let d = lab.dir("files");
        let app_conf = d.join("app.conf");
        let secret = d.join("secret");
        let gone = d.join("gone");
        fs::write(&app_conf, "listen = 8080\n").unwrap();
        fs::write(&secret, "hunter2\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&gone, "soon gone\n").unwrap();
        DriftFiles {
            d,
            app_conf,
            secret,
            gone,
        }
    }
}

/// The baseline: the three files as they are now, the secret with its mode.
fn drift_policy(files: &DriftFiles) -> PolicyText {
    let mut policy = PolicyText::new(1);
    policy.protected(&files.app_conf, &sha256_file(&files.app_conf));
    policy.raw(&format!(
        "[[files.protected]]\npath = {}\nsha256 = \"{}\"\nmode = \"0600\"\n",
        toml_str(&files.secret),
        sha256_file(&files.secret)
    ));
    policy.protected(&files.gone, &sha256_file(&files.gone));
    policy
}

/// Starts the agent, causes one alert (an unknown executable in `d`) and stops it; checks that
/// it reported no drift of a file in `d` and that its sequence increased.
fn run_once_without_drift(config: &Path, d: &Path) -> Output {
    let agent = Agent::start(config);
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
            kind(a) == "integrity_drift" && path(a).is_some_and(|p| Path::new(p).starts_with(d))
        })
        .collect();
    assert!(
        drift_of_mine.is_empty(),
        "the files matched the baseline at the first start:\n{}",
        lines(&drift_of_mine.into_iter().cloned().collect::<Vec<_>>())
    );
    assert_seq_increasing(&first.alerts, "the first run");
    first
}

/// Appends to app.conf, opens up the secret's mode and removes `gone`.
fn drift_while_stopped(files: &DriftFiles) {
    fs::OpenOptions::new()
        .append(true)
        .open(&files.app_conf)
        .unwrap()
        .write_all(b"listen = 4444\n")
        .unwrap();
    fs::set_permissions(&files.secret, fs::Permissions::from_mode(0o644)).unwrap();
    fs::remove_file(&files.gone).unwrap();
}

/// Starts the agent again: each drift is reported once, without a process, with a sequence
/// after `first_max`; returns what it printed once stopped.
fn run_again_and_see_the_drift(config: &Path, files: &DriftFiles, first_max: u64) -> Output {
    let agent = Agent::start(config);
    for (file, what) in [
        (&files.app_conf, "content"),
        (&files.secret, "mode"),
        (&files.gone, "missing"),
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
    // Exactly once each, and nothing else drifted among them.
    for (file, what) in [
        (&files.app_conf, "content"),
        (&files.secret, "mode"),
        (&files.gone, "missing"),
    ] {
        let drift: Vec<&Value> = second
            .alerts
            .iter()
            .filter(|a| kind(a) == "integrity_drift" && path(a) == file.to_str())
            .collect();
        assert!(
            drift.len() == 1 && drift[0]["details"]["what"] == what,
            "one drift alert ({what}) for {}: {drift:?}",
            file.display()
        );
    }
    second
}

/// The alert file got both runs, appended, the same alerts as stdout.
fn check_the_alert_file_holds_both_runs(alerts_file: &Path, first: &Output, second: &Output) {
    let text = fs::read_to_string(alerts_file)
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
// How the previous run ended
// ---------------------------------------------------------------------------------------------

/// A run killed (`SIGKILL`) is reported when the agent starts again in the same boot:
/// `agent_interrupted`, naming the killed run, once. A clean stop is not.
#[test]
fn a_killed_run_is_reported_at_the_next_start_and_a_clean_stop_is_not() {
    let lab = Lab::new("interrupted");
    let bundle = lab.sign("interrupted", &PolicyText::new(1).text());
    let config = lab.config(&bundle, None);
    let interrupted = |out: &[Value]| -> Vec<Value> {
        out.iter()
            .filter(|a| kind(a) == "agent_interrupted")
            .cloned()
            .collect()
    };

    // A first run, stopped cleanly (exit 0, checked by `stop`); the next start says nothing of
    // it.
    let first = Agent::start(&config).stop();
    assert_eq!(interrupted(&first.alerts), Vec::<Value>::new());
    let second = Agent::start(&config);
    let killed_pid = second.0.pid();
    let Agent(second) = second;
    let second = second.kill();
    assert_eq!(
        interrupted(&second.events),
        Vec::<Value>::new(),
        "after a clean stop"
    );

    // Killed: the next start reports it.
    let third = Agent::start(&config);
    let a = third.wait_for("agent_interrupted", None, |a| {
        kind(a) == "agent_interrupted"
    });
    check_envelope(&a);
    assert_eq!(a["severity"], "high", "{a}");
    assert_eq!(a["details"]["previous_pid"], killed_pid, "{a}");
    assert!(a["process"].is_null(), "{a}");
    let third = third.stop();
    assert_eq!(interrupted(&third.alerts).len(), 1, "{:?}", third.alerts);

    // That run stopped cleanly: the next one raises nothing.
    let fourth = Agent::start(&config).stop();
    assert_eq!(interrupted(&fourth.alerts), Vec::<Value>::new());
}
