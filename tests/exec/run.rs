//! `picket run` against baselined binaries: a burst of execs raises nothing; a replaced or
//! swapped binary raises `modified_executable` with the right pair of hashes, exactly once
//! per exec of the wrong bytes.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_test_support::process::spawn_fresh_executable;
use picket_test_support::sha256_file;
use serde_json::Value;

use crate::support::{self, from_tree_of, kind, lines, pid_of, Lab, Miss, Misses};

/// Execs in the burst, from all shells together.
const BURST_EXECS: usize = 100_000;
/// Shells running the burst at once.
const SHELLS: usize = 4;
/// How long the agent may take, after the burst, to have handled it all.
const BURST_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the agent may take to handle a few hundred execs.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Execs of the swapped binary.
const SWAP_EXECS: usize = 200;

/// 100,000 execs of short-lived baselined binaries (`/usr/bin/true`, and `/usr/bin/env true`:
/// two execs in one process) from four shells at once raise no alert at all: none about the
/// shells or their children, none about a baselined path, and no lost exec events (a loss
/// would leave execs unchecked). Every binary the shells exec is baselined, the shell included.
/// An alert about a baselined path by any process counts: a process that merely exited
/// quickly must never be reported. On a 2-core machine the burst takes about 45 to 55 s.
#[test]
fn a_burst_of_baselined_execs_from_four_shells_raises_no_alert() {
    let _one_at_a_time = support::one_at_a_time();
    let lab = Lab::new("burst");
    let baselined: Vec<(PathBuf, String)> = [
        "/usr/bin/true",
        "/bin/true",
        "/usr/bin/env",
        "/bin/env",
        "/bin/sh",
        "/usr/bin/sh",
        "/usr/bin/dash",
        "/bin/dash",
    ]
    .iter()
    .map(|p| {
        let canonical = std::fs::canonicalize(p).unwrap();
        (PathBuf::from(p), sha256_file(&canonical))
    })
    .collect();
    // A ring buffer of 4 MiB (the default is 1 MiB): the burst runs on both cores, and the
    // agent (built for debugging here) catches up with it between moments it falls behind.
    let agent = lab.run_with(&baselined, &["--ring-buffer-size", "4194304"]);

    // Each round is three execs: true, env, and the true env runs.
    let rounds = BURST_EXECS.div_ceil(SHELLS * 3);
    let script = format!(
        "i=0; while [ $i -lt {rounds} ]; do /usr/bin/true; /usr/bin/env true; i=$((i+1)); done"
    );
    let started = Instant::now();
    let mut shells: Vec<std::process::Child> = (0..SHELLS)
        .map(|_| {
            Command::new("/bin/sh")
                .args(["-c", &script])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let shell_pids: Vec<u32> = shells.iter().map(|c| c.id()).collect();
    for shell in &mut shells {
        assert!(shell.wait().unwrap().success(), "a burst shell failed");
    }
    let burst = started.elapsed();
    lab.barrier(&agent, BURST_DRAIN_TIMEOUT);
    eprintln!(
        "burst: {} execs from {SHELLS} shells in {burst:.1?}, handled by the agent {:.1?} after \
         the start",
        rounds * SHELLS * 3,
        started.elapsed()
    );

    let noisy: Vec<Value> = support::detection(agent.events())
        .into_iter()
        .filter(|a| {
            support::is_exec_loss(a)
                || shell_pids.iter().any(|p| from_tree_of(a, *p))
                || a["path"].as_str().is_some_and(|p| {
                    baselined
                        .iter()
                        .any(|(b, _)| b.as_os_str().as_bytes() == p.as_bytes())
                })
        })
        .collect();
    assert!(
        noisy.is_empty(),
        "the burst (shells {shell_pids:?}) raised {} alerts:\n{}\n{}",
        noisy.len(),
        lines(&noisy),
        agent.describe()
    );
}

/// A baselined binary (a copy of /usr/bin/true) replaced between two execs: by a rename of
/// another file (/usr/bin/false) over it, by writing the good bytes back in place, by
/// writing the bad bytes in place, by a rename of a good copy. Each exec of the bad bytes
/// raises `modified_executable` with the baseline's hash as `expected` and the new one as
/// `actual`; each exec of the good bytes raises nothing (a cached hash of the previous
/// content must not be reused). Each change is made once the agent has handled the exec
/// before it (a barrier): a change made before that is the next test's case.
#[test]
fn a_baselined_binary_replaced_between_execs_is_reported_with_both_hashes() {
    let _one_at_a_time = support::one_at_a_time();
    let lab = Lab::new("replace");
    let tool = lab.root.join("tool");
    let good = std::fs::read("/usr/bin/true").unwrap();
    let bad = std::fs::read("/usr/bin/false").unwrap();
    write_executable(&tool, &good);
    let hashes = Hashes::of_true_and_false();
    let agent = lab.run(&[(tool.clone(), hashes.good.clone())]);

    let mut runs = Vec::new();
    let mut exec = |case| {
        runs.push(exec_tool(case, &tool));
        lab.barrier(&agent, DRAIN_TIMEOUT);
    };
    exec("as baselined");
    let other = lab.root.join("other");
    write_executable(&other, &bad);
    std::fs::rename(&other, &tool).unwrap();
    exec("bad renamed over");
    write_executable(&tool, &good);
    exec("good written in place");
    write_executable(&tool, &bad);
    exec("bad written in place");
    write_executable(&other, &good);
    std::fs::rename(&other, &tool).unwrap();
    exec("good renamed over");
    for run in &runs {
        let expected_bad = run.case.starts_with("bad");
        assert_eq!(run.bad, expected_bad, "{}: the wrong copy ran", run.case);
    }

    lab.barrier(&agent, DRAIN_TIMEOUT);
    let alerts = support::detection(agent.stop().events);
    let cases: Vec<&str> = runs.iter().map(|r| r.case).collect();
    check_tool_alerts(&alerts, &tool, &hashes, &runs)
        .assert_none(&cases, 1, || format!("alerts:\n{}", lines(&alerts)));
}

/// The same baselined binary swapped back and forth with a bad copy (rename with
/// RENAME_EXCHANGE, in a loop, every millisecond) while it is executed 200 times: each exec
/// raises either nothing (the good copy ran: exit code 0) or `modified_executable` with the bad
/// copy's hash (exit code 1) — never the good hash as `actual`, never no hash, never another
/// alert.
#[test]
fn a_baselined_binary_swapped_during_execs_is_never_misattributed() {
    let _one_at_a_time = support::one_at_a_time();
    let lab = Lab::new("swap");
    let tool = lab.root.join("tool");
    let spare = lab.root.join("spare");
    let good = std::fs::read("/usr/bin/true").unwrap();
    let bad = std::fs::read("/usr/bin/false").unwrap();
    write_executable(&tool, &good);
    write_executable(&spare, &bad);
    let hashes = Hashes::of_true_and_false();
    let agent = lab.run(&[(tool.clone(), hashes.good.clone())]);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let (a, b) = (cstring(&tool), cstring(&spare));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: renameat2(2) on two NUL-terminated paths.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(
                    rc,
                    0,
                    "RENAME_EXCHANGE: {}",
                    std::io::Error::last_os_error()
                );
                swaps.fetch_add(1, Ordering::Relaxed);
                // A swap about every exec's length (an exec of true takes some 500 µs to 1 ms
                // here): the copies trade places while execs are in flight, and the renames
                // (each a file event, for an agent built for debugging) do not flood the ring
                // buffer past what it holds.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let runs: Vec<ToolRun> = (0..SWAP_EXECS).map(|_| exec_tool("swap", &tool)).collect();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let bad_runs = runs.iter().filter(|r| r.bad).count();
    eprintln!(
        "swap: {SWAP_EXECS} execs, {bad_runs} of the bad copy, {} swaps",
        swaps.load(Ordering::Relaxed)
    );
    assert!(
        bad_runs > 0 && bad_runs < SWAP_EXECS,
        "the swaps should let both copies run: the bad one ran {bad_runs} times in {SWAP_EXECS}"
    );

    lab.barrier(&agent, DRAIN_TIMEOUT);
    let alerts = support::detection(agent.stop().events);
    check_tool_alerts(&alerts, &tool, &hashes, &runs).assert_none(&["swap"], SWAP_EXECS, || {
        format!("alerts:\n{}", lines(&alerts))
    });
}

/// The SHA-256 of the baselined bytes (/usr/bin/true) and of the bad ones (/usr/bin/false).
struct Hashes {
    good: String,
    bad: String,
}

impl Hashes {
    fn of_true_and_false() -> Hashes {
        Hashes {
            good: sha256_file(Path::new("/usr/bin/true")),
            bad: sha256_file(Path::new("/usr/bin/false")),
        }
    }
}

/// One exec of the tool: which step, its pid, and whether the bad copy ran (exit code 1).
struct ToolRun {
    case: &'static str,
    pid: u32,
    bad: bool,
}

/// Runs `tool` once and tells which copy ran by its exit code (true: 0, false: 1).
fn exec_tool(case: &'static str, tool: &Path) -> ToolRun {
    let mut child = spawn_fresh_executable(
        Command::new(tool)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let pid = child.id();
    let bad = match child.wait().unwrap().code() {
        Some(0) => false,
        Some(1) => true,
        other => panic!("{case}: {} exited with {other:?}", tool.display()),
    };
    ToolRun { case, pid, bad }
}

/// `bytes` written to `path` (in place if it exists), mode 0755.
/// A baselined binary run, then rewritten in place with other bytes before the agent has read
/// its exec (the agent is stopped meanwhile): the file it would hash is no longer what ran, and
/// its modification time says so. The exec is `unverified_executable` (the reason says the file
/// was written after it ran), never `modified_executable` with the new bytes' hash, never
/// nothing.
#[test]
fn a_binary_rewritten_after_its_exec_before_the_agent_read_it_is_unverified() {
    let _one_at_a_time = support::one_at_a_time();
    let lab = Lab::new("rewritten");
    let tool = lab.root.join("tool");
    write_executable(&tool, &std::fs::read("/usr/bin/true").unwrap());
    let hashes = Hashes::of_true_and_false();
    let agent = lab.run(&[(tool.clone(), hashes.good.clone())]);

    agent.pause();
    let run = exec_tool("good, then rewritten", &tool);
    assert!(!run.bad);
    // Later than the exec by more than the coarse clock's tick that file times are stamped
    // with: a condition to create, not a duration measured.
    std::thread::sleep(Duration::from_millis(100));
    write_executable(&tool, &std::fs::read("/usr/bin/false").unwrap());
    agent.resume();
    lab.barrier(&agent, DRAIN_TIMEOUT);
    let alerts = support::detection(agent.stop().events);
    let about: Vec<&Value> = alerts
        .iter()
        .filter(|a| pid_of(a) == Some(run.pid))
        .collect();
    assert_eq!(about.len(), 1, "alerts:\n{}", lines(&alerts));
    let a = about[0];
    assert_eq!(kind(a), "unverified_executable", "{a}");
    assert_eq!(a["details"]["expected"], hashes.good.as_str(), "{a}");
    let reason = a["details"]["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("written "), "{a}");
}

fn write_executable(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn cstring(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// The misses among the alerts about `tool` or the processes of `runs`: each must be
/// `modified_executable` of `tool` with the good hash expected and the bad one actual, by a
/// process that ran the bad copy (a repeat within the aggregation window is counted in the
/// first one's `count`); their counts add up to the execs of the bad copy.
fn check_tool_alerts(alerts: &[Value], tool: &Path, hashes: &Hashes, runs: &[ToolRun]) -> Misses {
    let tool = tool.to_str().unwrap();
    let mut misses = Misses::default();
    let mut attempts = std::collections::HashMap::<&str, usize>::new();
    let mut counted = 0;
    for run in runs {
        let attempt = attempts.entry(run.case).or_default();
        *attempt += 1;
        let mut problems = Vec::new();
        let mut printed = None;
        for a in alerts.iter().filter(|a| pid_of(a) == Some(run.pid)) {
            printed = Some(a);
            let right = kind(a) == "modified_executable"
                && a["path"] == tool
                && a["details"]["expected"] == hashes.good.as_str()
                && a["details"]["actual"] == hashes.bad.as_str();
            if !run.bad {
                problems.push(format!("the good copy ran, yet {} was raised", kind(a)));
            } else if !right {
                problems.push(format!("wrong alert {}", kind(a)));
            } else {
                counted += a["count"].as_u64().unwrap_or(0);
            }
        }
        misses.record(run.case, *attempt, Miss::new(problems, printed));
    }
    // Alerts about the tool by no process of ours.
    let ours: Vec<u32> = runs.iter().map(|r| r.pid).collect();
    for a in alerts
        .iter()
        .filter(|a| a["path"] == tool && !pid_of(a).is_some_and(|p| ours.contains(&p)))
    {
        misses.record(
            "other processes",
            1,
            Miss::new(
                vec!["an alert about the tool by another process".into()],
                Some(a),
            ),
        );
    }
    let bad_runs = runs.iter().filter(|r| r.bad).count() as u64;
    let problems = if counted == bad_runs {
        Vec::new()
    } else {
        vec![format!(
            "{bad_runs} execs of the bad copy, {counted} modified_executable alerts counted"
        )]
    };
    misses.record("all execs", 1, Miss::new(problems, None));
    support::record_losses(&mut misses, alerts);
    misses
}
