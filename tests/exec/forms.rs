//! `picket monitor` reports each exec form as the file that ran, 20 times out of 20.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use picket_test_support::bin::picket;
use picket_test_support::process::{Exec, ExecForm, ExecForms};
use picket_test_support::{Event, Monitor, TempDir};
use serde_json::Value;

use crate::support::{Miss, Misses};

/// How many times each form is done.
const ATTEMPTS: usize = 20;
/// How long the monitor may take, after the last exec, to report them all.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Each form, done by a child that exits at once: the exec event names the file that ran
/// (`exe`, canonical; a symbolic link's name kept in `filename`), its SHA-256, and the
/// `fileless` and `deleted` flags (a memfd's `deleted` is left open), every time. A memfd cannot be read once its process has
/// exited unless the agent captured it at exec time: its `sha256` must be right or absent with
/// a `hash_error` saying why, never wrong. Every other form's `sha256` must be right.
#[test]
fn monitor_reports_every_exec_form_as_the_file_that_ran() {
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
    misses.assert_none(&ExecForm::ALL.map(ExecForm::name), ATTEMPTS, || {
        let mut more = String::new();
        let _ = writeln!(more, "the file forms run {}", forms.true_copy().display());
        more + &mon.describe()
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
