//! Each exec form, 20 times: `picket monitor` reports the file that ran, and `picket run`
//! raises exactly the right alerts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use picket_test_support::bin::picket;
use picket_test_support::process::ExpectedExe;
use picket_test_support::process::{Exec, ExecForm, ExecForms};
use picket_test_support::{sha256_file, Event, Monitor, TempDir};
use serde_json::{json, Value};

use crate::support::{self, Lab, Miss, Misses};

/// How many times each form is done.
const ATTEMPTS: usize = 20;
/// How long the agent may take, after the last exec, to have handled them all.
const REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// Each form, done by a child that exits at once: the exec event names the file that ran
/// (`exe`, canonical; a symbolic link's name kept in `filename`), its SHA-256, and the
/// `fileless` and `deleted` flags (a memfd's `deleted` is left open), every time. A memfd cannot be read once its process has
/// exited unless the agent captured it at exec time: its `sha256` must be right or absent with
/// a `hash_error` saying why, never wrong. Every other form's `sha256` must be right.
#[test]
fn monitor_reports_every_exec_form_as_the_file_that_ran() {
    let _one_at_a_time = support::one_at_a_time();
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let dir = TempDir::new();
    let forms = ExecForms::new(dir.path());

    let mut execs: Vec<(usize, Exec)> = Vec::new();
    for attempt in 1..=ATTEMPTS {
        for form in ExecForm::ALL {
            execs.push((attempt, forms.exec(form)));
        }
    }

    let deadline = Instant::now() + REPORT_TIMEOUT;
    let mut misses = Misses::default();
    for (attempt, exec) in &execs {
        let left = deadline.saturating_duration_since(Instant::now());
        let found = mon.try_wait_for(left, |e| e.kind() == "exec" && e.pid() == Some(exec.pid));
        let problems = match &found {
            None => vec![format!("no exec event for pid {}", exec.pid)],
            Some(ev) => check(exec, ev),
        };
        misses.record(
            exec.form.name(),
            *attempt,
            Miss::new(problems, found.as_ref()),
        );
    }
    let out = mon.stop();
    let lost = out.lost("process");
    let problems = if lost == 0 {
        Vec::new()
    } else {
        vec![format!("{lost} process events lost")]
    };
    misses.record("the monitor lost events", 1, Miss::new(problems, None));
    misses.assert_none(&ExecForm::ALL.map(ExecForm::name), ATTEMPTS, || {
        let mut more = String::new();
        let _ = writeln!(more, "the file forms run {}", forms.true_copy().display());
        more + &out.describe()
    });
}

/// What is wrong with `ev` as the report of `exec`.
fn check(exec: &Exec, ev: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    match ev.str_field("exe") {
        Some(exe) if exec.exe.matches(exe) => {}
        other => problems.push(format!("exe {other:?}, expected {}", exec.exe)),
    }
    if let Some(filename) = &exec.filename {
        if ev.str_field("filename") != Some(filename.as_str()) {
            problems.push(format!(
                "filename {:?}, expected {filename}",
                ev.str_field("filename")
            ));
        }
    }
    let sha256 = ev.str_field("sha256");
    let hash_error = ev.get("hash_error").filter(|e| !e.is_null());
    match sha256 {
        Some(s) if s == exec.sha256 => {}
        None if exec.form.is_memfd() && hash_error.is_some() => {}
        None if exec.form.is_memfd() => {
            problems.push("no sha256 and no hash_error saying why".into())
        }
        other => problems.push(format!("sha256 {other:?}, expected {}", exec.sha256)),
    }
    for (flag, expected) in [("fileless", Some(exec.fileless)), ("deleted", exec.deleted)] {
        let Some(expected) = expected else { continue };
        if ev[flag].as_bool() != Some(expected) {
            problems.push(format!("{flag} {}, expected {expected}", ev[flag]));
        }
    }
    if let Some(interpreter) = &exec.interpreter {
        if ev.str_field("interpreter") != Some(interpreter.as_str()) {
            problems.push(format!(
                "interpreter {:?}, expected {interpreter}",
                ev.str_field("interpreter")
            ));
        }
    }
    problems
}

/// Each form, 20 times, under `picket run` with a policy that does not know the program (only
/// the script's interpreter): exactly `unknown_executable` with the real hash, about the file
/// that ran, plus `suspicious_exec` with reason `fileless` (memfds) or `deleted file` (deleted
/// files) — no other alert, none missing. A memory file is on no filesystem the exec listener
/// can watch: once its process has exited, its bytes are gone, so its `unknown_executable` may
/// come without a hash, saying why (`hash_error`) — never with a wrong one. Repeats of an alert within the aggregation window
/// come as one alert with a count, so alerts are matched to the execs by count: a repeat is
/// charged to the process that raised the alert first, and a shortfall to the last attempts.
#[test]
fn run_raises_exactly_the_right_alerts_for_every_exec_form() {
    let _one_at_a_time = support::one_at_a_time();
    let lab = Lab::new("forms");
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let sh_sha256 = sha256_file(&sh);
    let baseline: Vec<(PathBuf, String)> = [PathBuf::from("/bin/sh"), "/usr/bin/sh".into(), sh]
        .into_iter()
        .map(|p| (p, sh_sha256.clone()))
        .collect();
    let agent = lab.run(&baseline);
    let dir = lab.root.join("forms");
    std::fs::create_dir_all(&dir).unwrap();
    let forms = ExecForms::new(&dir);

    let mut execs: Vec<(usize, Exec)> = Vec::new();
    for attempt in 1..=ATTEMPTS {
        for form in ExecForm::ALL {
            execs.push((attempt, forms.exec(form)));
        }
    }
    lab.barrier(&agent, REPORT_TIMEOUT);
    let alerts = support::detection(agent.stop().events);

    // The alerts each exec must raise; each is ticked off by one alert (or one of its count).
    struct Want<'a> {
        exec: usize,
        kind: &'static str,
        exe: &'a ExpectedExe,
        details: Value,
        /// A memory file's: no hash, with the reason, is right too.
        fileless: bool,
        seen: bool,
    }
    let mut wants: Vec<Want> = Vec::new();
    for (i, (_, exec)) in execs.iter().enumerate() {
        let mut want = |kind, details| {
            wants.push(Want {
                exec: i,
                kind,
                exe: &exec.exe,
                details,
                fileless: exec.fileless,
                seen: false,
            })
        };
        want("unknown_executable", json!({ "sha256": exec.sha256 }));
        if exec.fileless {
            want("suspicious_exec", json!({ "reason": "fileless" }));
        }
        if exec.deleted == Some(true) {
            want("suspicious_exec", json!({ "reason": "deleted file" }));
        }
    }
    let by_pid: HashMap<u32, usize> = execs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| (e.pid, i))
        .collect();
    let mut problems: Vec<(Vec<String>, Option<&Value>)> = vec![(Vec::new(), None); execs.len()];
    for a in &alerts {
        let Some(&i) = support::pid_of(a).and_then(|p| by_pid.get(&p)) else {
            continue;
        };
        let mut left = a["count"].as_u64().unwrap_or(1);
        let path = a["path"].as_str().unwrap_or("");
        for w in wants.iter_mut().filter(|w| {
            !w.seen
                && w.kind == support::kind(a)
                && w.exe.matches(path)
                && (a["details"] == w.details
                    || (w.fileless
                        && w.kind == "unknown_executable"
                        && a["details"]["sha256"].is_null()
                        && a["details"]["hash_error"].is_string()))
        }) {
            if left == 0 {
                break;
            }
            w.seen = true;
            left -= 1;
        }
        if left > 0 {
            problems[i]
                .0
                .push(format!("{} not expected (count {left})", support::kind(a)));
            problems[i].1.get_or_insert(a);
        }
    }
    for w in wants.iter().filter(|w| !w.seen) {
        problems[w.exec]
            .0
            .push(format!("no {} {} about {}", w.kind, w.details, w.exe));
    }
    let mut misses = Misses::default();
    for ((attempt, exec), (found, printed)) in execs.iter().zip(problems) {
        misses.record(exec.form.name(), *attempt, Miss::new(found, printed));
    }
    support::record_losses(&mut misses, &alerts);
    misses.assert_none(&ExecForm::ALL.map(ExecForm::name), ATTEMPTS, || {
        format!("alerts:\n{}", support::lines(&alerts))
    });
}
