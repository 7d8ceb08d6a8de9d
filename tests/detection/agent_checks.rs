//! What `picket run` checks beside the events of the moment: the periodic rescan of protected
//! files, the liveness canary of its sensors, its own files, the bound on aggregation, and the
//! changes to protected files that are not writes (truncate, chown, rename away).

use super::*;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// The periodic rescan
// ---------------------------------------------------------------------------------------------

/// How often the rescan test's agent hashes the protected files again.
const RESCAN: Duration = Duration::from_secs(2);

#[test]
fn the_periodic_rescan_raises_drift_of_files_changed_while_running() {
    let lab = Lab::new("rescan");
    let d = lab.dir("files");
    let changed = d.join("changed.conf");
    let untouched = d.join("untouched.conf");
    let secret = d.join("secret");
    fs::write(&changed, "listen = 8080\n").unwrap();
    fs::write(&untouched, "listen = 8081\n").unwrap();
    fs::write(&secret, "hunter2\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let baseline_sha = sha256_file(&changed);
    let mut policy = PolicyText::new(1);
    policy.protected(&changed, &baseline_sha);
    policy.protected(&untouched, &sha256_file(&untouched));
    policy.raw(&format!(
        "[[files.protected]]\npath = {}\nsha256 = \"{}\"\nmode = \"0600\"\n",
        toml_str(&secret),
        sha256_file(&secret)
    ));
    let bundle = lab.sign("rescan", &policy.text());
    let config = lab.config_with(
        &bundle,
        &format!(
            "rescan_interval = \"{}s\"\n\n[alerts]\nwindow = \"1h\"\n\n[output]\nstdout = true\n",
            RESCAN.as_secs()
        ),
    );
    let agent = Agent::start(&config);
    let changed_at = now_ms();

    // Same size, and the modification time put back: only the content tells.
    rewrite_keeping_mtime(&changed, "listen = 4444\n");
    let new_sha = sha256_file(&changed);
    let content = agent.wait_for(
        &format!("integrity_drift (content) of {}", changed.display()),
        None,
        |a| is_drift(a, &changed, "content"),
    );
    check_envelope(&content);
    assert_eq!(content["count"], 1, "{content}");
    assert!(
        content["process"].is_null(),
        "a scan has no process: {content}"
    );
    assert_eq!(
        content["details"]["expected"],
        baseline_sha.as_str(),
        "{content}"
    );
    assert_eq!(content["details"]["actual"], new_sha.as_str(), "{content}");
    assert_eq!(content["rule"], "files.protected", "{content}");

    // A later change is found by a later rescan.
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let mode = agent.wait_for(
        &format!("integrity_drift (mode) of {}", secret.display()),
        None,
        |a| is_drift(a, &secret, "mode"),
    );
    assert_eq!(mode["details"]["expected"], "0600", "{mode}");
    assert_eq!(mode["details"]["actual"], "0644", "{mode}");
    assert!(mode["process"].is_null(), "{mode}");
    assert!(
        seq(&mode).unwrap() > seq(&content).unwrap(),
        "{mode} after {content}"
    );

    // And the content changed again: a drift of its own, with the new content's hash.
    rewrite_keeping_mtime(&changed, "listen = 5555\n");
    let newer_sha = sha256_file(&changed);
    let again = agent.wait_for(
        &format!(
            "integrity_drift (content {newer_sha}) of {}",
            changed.display()
        ),
        None,
        |a| is_drift(a, &changed, "content") && a["details"]["actual"] == newer_sha.as_str(),
    );
    assert_eq!(again["count"], 1, "{again}");
    assert_eq!(
        again["details"]["expected"],
        baseline_sha.as_str(),
        "{again}"
    );

    let out = agent.stop();
    let drift_in_d: Vec<Value> = out
        .alerts
        .iter()
        .filter(|a| kind(a) == "integrity_drift" && under_dir(a, &d))
        .cloned()
        .collect();
    assert!(
        !drift_in_d.iter().any(|a| path(a) == untouched.to_str()),
        "the untouched file drifted:\n{}",
        lines(&drift_in_d)
    );
    for a in &drift_in_d {
        assert!(
            a["first_ms"].as_u64().unwrap() >= changed_at,
            "no drift before the change (the start scan found the files as the baseline has \
             them): {a}"
        );
    }
    for (file, printed) in [(&changed, vec![&content, &again]), (&secret, vec![&mode])] {
        check_printed_once(&drift_in_d, file, &printed);
    }
}

/// The drift alerts of `file` among `drift` are `printed`, each once, and at most one
/// aggregate of each (the later rescans' repeats, reported when the window closed at the stop).
fn check_printed_once(drift: &[Value], file: &Path, printed: &[&Value]) {
    let of_file: Vec<&Value> = drift.iter().filter(|a| path(a) == file.to_str()).collect();
    let all = || lines(&of_file.iter().copied().cloned().collect::<Vec<_>>());
    for p in printed {
        let same = |a: &&&Value| a["details"] == p["details"];
        let of_p: Vec<&&Value> = of_file.iter().filter(same).collect();
        let first_ok = of_p.first().is_some_and(|a| **a == *p);
        let repeats = of_p.get(1..).unwrap_or(&[]);
        let repeats_ok = repeats.len() <= 1
            && repeats.iter().all(|a| {
                a["first_ms"] == p["first_ms"]
                    && a["count"].as_u64().is_some_and(|c| c >= 1)
                    && seq(a) > seq(p)
            });
        assert!(
            first_ok && repeats_ok,
            "{p} printed once, then at most its repeats; the drift of {}:\n{}",
            file.display(),
            all()
        );
    }
    assert!(
        of_file
            .iter()
            .all(|a| printed.iter().any(|p| a["details"] == p["details"])),
        "no other drift of {}:\n{}",
        file.display(),
        all()
    );
}

fn is_drift(a: &Value, file: &Path, what: &str) -> bool {
    kind(a) == "integrity_drift" && path(a) == file.to_str() && a["details"]["what"] == what
}

// ---------------------------------------------------------------------------------------------
// The canary
// ---------------------------------------------------------------------------------------------

/// The canary's wait for its exec (`canary::TIMEOUT`).
const CANARY_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn the_canary_raises_agent_tamper_once_the_sensors_stop_delivering() {
    let lab = Lab::new("canary");
    let bundle = lab.sign("canary", &PolicyText::new(1).text());
    let config = lab.config_with(
        &bundle,
        "canary_interval = \"1s\"\nrescan_interval = \"1h\"\n\n\
         [modes]\nexecutables = \"off\"\nnetwork = \"off\"\nbehaviour = \"off\"\n\n\
         [output]\nstdout = true\n",
    );
    let agent = Agent::start(&config);
    let agent_pid = agent.0.pid();
    // Canaries go out every second and come back: several before the wedge, even when a
    // loaded machine takes a second or two to start each.
    std::thread::sleep(Duration::from_secs(6));
    let wedged_at = now_ms();
    wedge_ring_buffer(agent_pid);

    let wait = CANARY_TIMEOUT + Duration::from_secs(5);
    let tamper = agent
        .0
        .poll_for(wait, |a| kind(a) == "agent_tamper")
        .unwrap_or_else(|_| {
            panic!(
                "no agent_tamper within {wait:?} of wedging the ring buffer\n{}",
                agent.describe()
            )
        });
    let out = agent.stop();
    check_envelope(&tamper);
    assert_eq!(tamper["severity"], "critical", "{tamper}");
    assert_eq!(tamper["rule"], "agent.sensors", "{tamper}");
    assert!(tamper["path"].is_null(), "{tamper}");
    assert!(tamper["process"].is_null(), "{tamper}");
    assert_eq!(
        tamper["details"]["reason"],
        "the sensors stopped delivering events: a test exec was not seen",
        "{tamper}"
    );
    assert_eq!(
        tamper["details"]["waited_s"],
        CANARY_TIMEOUT.as_secs(),
        "{tamper}"
    );
    assert!(
        tamper["time_ms"].as_u64().unwrap() >= wedged_at + 10_000,
        "raised when a canary sent after the wedge (or a few seconds before, if one was in \
         flight) was overdue: {tamper} (wedged at {wedged_at})"
    );
    // The nonce is `PID-N`, the Nth canary: a canary goes out only once the previous one came
    // back (or was raised as overdue, which would be another alert), so the canaries before
    // the wedge were seen.
    let nonce = tamper["details"]["nonce"].as_str().unwrap_or_default();
    let (of_pid, n) = nonce.split_once('-').unwrap_or_default();
    assert_eq!(of_pid, agent_pid.to_string(), "{tamper}");
    assert!(
        n.parse::<u64>().is_ok_and(|n| n >= 2),
        "the canaries before the wedge came back: {tamper}"
    );
    let tampers: Vec<Value> = out
        .alerts
        .iter()
        .filter(|a| kind(a) == "agent_tamper")
        .cloned()
        .collect();
    assert_eq!(
        tampers.len(),
        1,
        "one agent_tamper, for the canary:\n{}",
        lines(&tampers)
    );
}

/// Wedges the ring buffer of the agent `pid` as anyone with root can: its consumer position (a
/// page the kernel lets every holder of the map write, taken here with `pidfd_getfd`) is set a
/// whole ring behind the producer's. The kernel then finds no room for any record and drops
/// them all, and never wakes the agent, whose own position did not move: it waits for records
/// that never come.
fn wedge_ring_buffer(pid: u32) {
    let (target, size) = ring_buffer_of(pid);
    // SAFETY: plain system calls on descriptors and mappings this function owns.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        assert!(
            pidfd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd as libc::c_int, target, 0);
        assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        let (pidfd, fd) = (pidfd as libc::c_int, fd as libc::c_int);
        let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let consumer = libc::mmap(std::ptr::null_mut(), page, rw, libc::MAP_SHARED, fd, 0);
        assert_ne!(
            consumer,
            libc::MAP_FAILED,
            "{}",
            std::io::Error::last_os_error()
        );
        let offset = libc::off_t::try_from(page).unwrap();
        let producer = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            offset,
        );
        assert_ne!(
            producer,
            libc::MAP_FAILED,
            "{}",
            std::io::Error::last_os_error()
        );
        let consumer = &*(consumer as *const AtomicUsize);
        let producer = &*(producer as *const AtomicUsize);
        // The agent may still be reading records committed before: it writes its position
        // back as it does. Wedged once both positions have held for half a second.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stable_since: Option<Instant> = None;
        loop {
            let p = producer.load(Ordering::SeqCst);
            let wedged = p.wrapping_sub(size as usize);
            if consumer.load(Ordering::SeqCst) == wedged {
                let since = *stable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(500) {
                    break;
                }
            } else {
                consumer.store(wedged, Ordering::SeqCst);
                stable_since = None;
            }
            assert!(
                Instant::now() < deadline,
                "the ring buffer of {pid} did not stay wedged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        libc::munmap(consumer as *const AtomicUsize as *mut libc::c_void, page);
        libc::munmap(producer as *const AtomicUsize as *mut libc::c_void, page);
        libc::close(fd);
        libc::close(pidfd);
    }
}

/// The descriptor of the ring buffer map that process `pid` holds, and the ring's size.
fn ring_buffer_of(pid: u32) -> (libc::c_int, u64) {
    /// `BPF_MAP_TYPE_RINGBUF`.
    const RINGBUF: &str = "27";
    let mut found = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let entry = entry.unwrap();
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if field("map_type:").as_deref() == Some(RINGBUF) {
            let fd: libc::c_int = entry.file_name().to_str().unwrap().parse().unwrap();
            let size: u64 = field("max_entries:").unwrap().parse().unwrap();
            found.push((fd, size));
        }
    }
    assert_eq!(
        found.len(),
        1,
        "one ring buffer in process {pid}: {found:?}"
    );
    found[0]
}

// ---------------------------------------------------------------------------------------------
// The agent's own files
// ---------------------------------------------------------------------------------------------

#[test]
fn tamper_with_the_agents_configuration_trust_and_state_raises_agent_tamper() {
    let lab = Lab::new("own");
    let bundle = lab.sign("own", &PolicyText::new(3).text());
    let config = lab.config(&bundle, None);
    let agent = Agent::start(&config);
    let me = std::process::id();
    let serial = lab.state.join("policy/serial");
    assert_eq!(fs::read_to_string(&serial).unwrap().trim(), "3");
    let seq_file = lab.state.join("alert.seq");

    // Reading them is what the agent's operators do: nothing.
    fs::read(&config).unwrap();
    fs::read(lab.trust.join("vendor.pub")).unwrap();
    fs::read(&serial).unwrap();

    // The attacker: a setting changed, a signing key of their own trusted, the anti-rollback
    // serial lowered (an older policy would be taken), the alert numbering reset.
    fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .unwrap()
        .write_all(b"# changed\n")
        .unwrap();
    let rogue_key = lab.trust.join("rogue.pub");
    fs::write(&rogue_key, fs::read(lab.trust.join("vendor.pub")).unwrap()).unwrap();
    fs::write(&serial, "1\n").unwrap();
    let expected = [
        (config.clone(), "open"),
        (rogue_key, "open"),
        (serial, "open"),
        (seq_file.clone(), "unlink"),
    ];
    // The first alert made the agent write its sequence file: it exists by now.
    agent.wait_for("agent_tamper of the configuration", Some(me), |a| {
        kind(a) == "agent_tamper" && path(a) == config.to_str()
    });
    assert!(seq_file.exists(), "{} written", seq_file.display());
    fs::remove_file(&seq_file).unwrap();
    for (file, op) in &expected {
        let a = agent.wait_for(
            &format!("agent_tamper ({op}) of {}", file.display()),
            Some(me),
            |a| kind(a) == "agent_tamper" && path(a) == file.to_str(),
        );
        check_envelope(&a);
        assert_eq!(a["severity"], "critical", "{a}");
        assert_eq!(a["rule"], "agent", "{a}");
        assert_eq!(a["details"]["op"], *op, "{a}");
        assert_eq!(pid(&a), Some(me), "{a}");
        assert_eq!(a["count"], 1, "{a}");
    }
    // Everything before the barrier handled: the agent's own writes to its state (the sequence
    // file written at its first alert) raised nothing, nor did the reads.
    agent.barrier(&lab, "after the tamper");
    let out = agent.stop();
    let own: Vec<Value> = out
        .alerts
        .iter()
        .filter(|a| {
            kind(a) == "agent_tamper"
                || [&config, &lab.trust, &lab.state]
                    .iter()
                    .any(|own| path(a).is_some_and(|p| Path::new(p).starts_with(own)))
        })
        .cloned()
        .collect();
    let mut problems = String::new();
    for (file, op) in &expected {
        let n = own.iter().filter(|a| is_tamper(a, file, op)).count();
        if n != 1 {
            let _ = writeln!(
                problems,
                "agent_tamper ({op}) of {}: {n} times",
                file.display()
            );
        }
    }
    for a in &own {
        if !expected.iter().any(|(file, op)| is_tamper(a, file, op)) {
            let _ = writeln!(problems, "unexpected: {a}");
        }
    }
    assert!(problems.is_empty(), "{problems}all:\n{}", lines(&own));
}

fn is_tamper(a: &Value, file: &Path, op: &str) -> bool {
    kind(a) == "agent_tamper" && path(a) == file.to_str() && a["details"]["op"] == op
}

// ---------------------------------------------------------------------------------------------
// Protected files truncated, chowned, renamed away
// ---------------------------------------------------------------------------------------------

#[test]
fn protected_files_truncated_chowned_or_renamed_away_are_reported_once_each() {
    let lab = Lab::new("fileops");
    let d = lab.dir("files");
    let names = ["truncated", "chowned", "moved", "plain"];
    for name in names {
        fs::write(d.join(name), format!("{name}\n")).unwrap();
    }
    let mut policy = PolicyText::new(1);
    for name in &names[..3] {
        policy.protected(&d.join(name), &sha256_file(&d.join(name)));
    }
    let bundle = lab.sign("fileops", &policy.text());
    let agent = Agent::start(&lab.config(&bundle, None));
    let me = std::process::id();

    // The same to a file nobody protects: nothing.
    let plain = d.join("plain");
    truncate(&plain);
    std::os::unix::fs::chown(&plain, Some(1), Some(1)).unwrap();
    fs::rename(&plain, d.join("plain.away")).unwrap();

    truncate(&d.join("truncated"));
    std::os::unix::fs::chown(d.join("chowned"), Some(1), Some(1)).unwrap();
    fs::rename(d.join("moved"), d.join("moved.away")).unwrap();
    let expected = [
        ("truncated", "truncate"),
        ("chowned", "chown"),
        ("moved", "rename"),
    ];
    for (name, op) in expected {
        let file = d.join(name);
        let a = agent.wait_for(
            &format!("protected_file_changed ({op}) of {}", file.display()),
            Some(me),
            |a| kind(a) == "protected_file_changed" && path(a) == file.to_str(),
        );
        check_envelope(&a);
        assert_eq!(a["details"]["op"], op, "{a}");
        assert_eq!(a["rule"], "files.protected", "{a}");
        assert_eq!(a["severity"], "high", "{a}");
        assert_eq!(pid(&a), Some(me), "{a}");
    }
    agent.barrier(&lab, "after the changes");
    let out = agent.stop();
    let in_d: Vec<Value> = out
        .alerts
        .iter()
        .filter(|a| under_dir(a, &d))
        .cloned()
        .collect();
    let mut problems = String::new();
    for (name, op) in expected {
        let file = d.join(name);
        let n = in_d
            .iter()
            .filter(|a| {
                kind(a) == "protected_file_changed"
                    && path(a) == file.to_str()
                    && a["details"]["op"] == op
                    && a["count"] == 1
            })
            .count();
        if n != 1 {
            let _ = writeln!(problems, "{op} of {}: {n} alerts", file.display());
        }
    }
    if in_d.len() != expected.len() {
        let _ = writeln!(
            problems,
            "{} alerts, {} expected",
            in_d.len(),
            expected.len()
        );
    }
    assert!(
        problems.is_empty(),
        "{problems}alerts about {}:\n{}",
        d.display(),
        lines(&in_d)
    );
}

/// truncate(2) of `path` to nothing (no open: the one event is the truncate).
fn truncate(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let r = unsafe { libc::truncate(c.as_ptr(), 0) };
    assert_eq!(
        r,
        0,
        "truncate {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------------------------
// The bound on aggregation
// ---------------------------------------------------------------------------------------------

#[test]
fn past_max_tracked_the_oldest_window_closes_early() {
    let lab = Lab::new("tracked");
    let d = lab.dir("files");
    let mut policy = PolicyText::new(1);
    for name in ["a", "b", "c"] {
        fs::write(d.join(name), format!("{name}\n")).unwrap();
        policy.protected(&d.join(name), &sha256_file(&d.join(name)));
    }
    let bundle = lab.sign("tracked", &policy.text());
    // Only file changes are judged, so that nothing but this test's writes takes a place among
    // the two tracked alerts; the window outlasts the test.
    let config = lab.config_with(
        &bundle,
        "rescan_interval = \"1h\"\n\n\
         [modes]\nexecutables = \"off\"\nnetwork = \"off\"\nbehaviour = \"off\"\n\n\
         [alerts]\nwindow = \"1h\"\nmax_tracked = 2\n\n[output]\nstdout = true\n",
    );
    let agent = Agent::start(&config);
    let append = |name: &str| {
        fs::OpenOptions::new()
            .append(true)
            .open(d.join(name))
            .unwrap()
            .write_all(b"x\n")
            .unwrap();
    };
    for name in ["a", "a", "a", "b", "b", "b", "c", "a"] {
        append(name);
    }
    // What each write makes the agent print, in order, as (file, count): a and b reported at
    // once, their repeats counted; c is a third alert to track: a's window, the oldest, closes
    // with its two repeats. a again is a fourth: b's window closes, a's new one opens.
    let expected = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 1)];
    let is_mine = |a: &Value| kind(a) == "protected_file_changed" && under_dir(a, &d);
    let want: Vec<(String, u64)> = expected.iter().map(|(n, c)| (n.to_string(), *c)).collect();
    let deadline = Instant::now() + ALERT_TIMEOUT;
    while agent.alerts().iter().filter(|a| is_mine(a)).count() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "expected {want:?} as (file, count), got {:?}\n{}",
            file_counts(&agent.alerts()),
            agent.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // All printed while the agent ran, in a window of an hour: the closes were early.
    let out = agent.stop();
    // Nothing else took a place: the order of the windows is the test's.
    let others: Vec<&Value> = out.alerts.iter().filter(|a| !is_mine(a)).collect();
    assert!(
        others.is_empty(),
        "alerts other than the test's:\n{}",
        lines(&others.into_iter().cloned().collect::<Vec<_>>())
    );
    let got = file_counts(&out.alerts);
    assert_eq!(
        got,
        want,
        "alerts in order as (file, count); nothing more at the stop (the open windows have no \
         repeats)\n{}",
        lines(&out.alerts)
    );
    for a in &out.alerts {
        check_envelope(a);
        assert_eq!(a["details"]["op"], "open", "{a}");
        assert_eq!(pid(a), Some(std::process::id()), "{a}");
    }
    // An early close reports the repeats' span: from the first write to the last repeat.
    let a_first = &out.alerts[0];
    let a_closed = &out.alerts[2];
    assert_eq!(a_closed["first_ms"], a_first["first_ms"], "{a_closed}");
    assert!(
        a_closed["last_ms"].as_u64() >= a_first["first_ms"].as_u64(),
        "{a_closed}"
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Each alert as (the name of its file, its count).
fn file_counts(alerts: &[Value]) -> Vec<(String, u64)> {
    alerts
        .iter()
        .map(|a| {
            let name = path(a).and_then(|p| Path::new(p).file_name());
            let name = name.map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            (name, a["count"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn under_dir(a: &Value, dir: &Path) -> bool {
    path(a).is_some_and(|p| Path::new(p).starts_with(dir))
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Writes `text` over `path`, of the same size, in place (never truncated: a rescan in between
/// would see an empty file), and puts its modification time back: a change only its content
/// tells.
fn rewrite_keeping_mtime(path: &Path, text: &str) {
    use std::io::Write as _;
    let meta = fs::metadata(path).unwrap();
    assert_eq!(meta.len(), text.len() as u64, "{}", path.display());
    let mut f = fs::File::options().write(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
}
