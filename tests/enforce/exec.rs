//! The exec guard: refused execs fail with `EPERM` and raise `blocked_exec`; the dry run
//! refuses nothing and reports `would_block`; allowed execs run and raise nothing; a killed
//! agent leaves everything runnable; the configuration can weaken enforcement, and says so.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use picket_test_support::{sha256_file, unique, Agent};
use serde_json::Value;

use crate::support::*;

/// The lab's files, one per case.
struct Files {
    /// Listed with its SHA-256.
    allowed: PathBuf,
    /// A `#!` script listed with its SHA-256, whose interpreter (`/bin/sh`) is allowed.
    script: PathBuf,
    /// Not in the policy.
    unknown: PathBuf,
    /// Listed with another file's SHA-256.
    modified: PathBuf,
    /// A `#!` script listed, naming an interpreter the policy does not allow.
    bad_interpreter: PathBuf,
    /// In a temporary location (`/dev/shm`), not in the policy.
    temporary: PathBuf,
}

impl Files {
    fn new(lab: &Lab) -> Files {
        let allowed = lab.install("/usr/bin/true", "allowed");
        let unknown = lab.install("/usr/bin/true", "unknown");
        let modified = lab.install("/usr/bin/false", "modified");
        let script = lab.root.join("script.sh");
        fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let interpreter = lab.install("/bin/sh", "shell-copy");
        let bad_interpreter = lab.root.join("bad-interpreter.sh");
        fs::write(
            &bad_interpreter,
            format!("#!{}\nexit 0\n", interpreter.display()),
        )
        .unwrap();
        for f in [&script, &bad_interpreter] {
            fs::set_permissions(f, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let temporary = PathBuf::from(format!("/dev/shm/{}", unique("picket-enforce")));
        fs::copy("/usr/bin/true", &temporary).unwrap();
        Files {
            allowed,
            script,
            unknown,
            modified,
            bad_interpreter,
            temporary,
        }
    }

    /// The policy: the lab's allowed files listed, the rest of the machine allowed.
    fn policy(&self, lab: &Lab, modes: &str) -> String {
        let mut text = policy(lab, modes);
        executable(&mut text, &self.allowed, &sha256_file(&self.allowed));
        executable(&mut text, &self.script, &sha256_file(&self.script));
        executable(
            &mut text,
            &self.bad_interpreter,
            &sha256_file(&self.bad_interpreter),
        );
        // The SHA-256 of `true`, for a file that is `false`.
        executable(&mut text, &self.modified, &sha256_file(&self.allowed));
        text
    }

    /// The files a guard refuses, each with the reason given.
    fn refused(&self, lab: &Lab) -> Vec<(PathBuf, &'static str)> {
        vec![
            (self.unknown.clone(), "not in the baseline"),
            (self.modified.clone(), "another SHA-256 than the baseline's"),
            (lab.root.join("shell-copy"), "not in the baseline"),
            (self.temporary.clone(), "temporary location"),
        ]
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.temporary);
    }
}

/// The alert of `kind` about `file`, waited for.
fn alert_about(agent: &Agent, kind_: &str, file: &Path) -> Value {
    let file = file.to_str().unwrap().to_string();
    agent.wait_for_within(&format!("{kind_} for {file}"), ALERT_TIMEOUT, None, |a| {
        kind(a) == kind_ && path(a) == Some(file.as_str())
    })
}

/// The allowed files run, as a device's workload would, many times.
fn healthy_workload(files: &Files) {
    for _ in 0..100 {
        assert_eq!(try_run(&files.allowed).unwrap(), 0);
        assert_eq!(try_run(&files.script).unwrap(), 0);
        assert_eq!(try_run(Path::new("/usr/bin/true")).unwrap(), 0);
    }
}

#[test]
fn enforce_refuses_what_the_baseline_does_not_allow_and_runs_the_rest() {
    let _serial = serial();
    let lab = Lab::new("exec");
    let files = Files::new(&lab);
    let bundle = lab.sign("policy", &files.policy(&lab, "executables = \"enforce\""));
    let agent = lab.run(&lab.config(&bundle, ""));
    agent.wait_log("executables: guard started (enforce)", ALERT_TIMEOUT);

    healthy_workload(&files);
    // The script's own file is allowed, its interpreter is not: the exec is refused.
    let refused = [
        &files.unknown,
        &files.modified,
        &files.bad_interpreter,
        &files.temporary,
    ];
    for file in refused {
        let r = try_run(file);
        assert!(is_eperm(&r), "{} ran: {r:?}", file.display());
    }
    let me = std::env::current_exe().unwrap();
    let me = fs::canonicalize(me).unwrap();
    for (file, reason) in files.refused(&lab) {
        let a = alert_about(&agent, "blocked_exec", &file);
        assert_eq!(a["details"]["reason"], reason, "{a}");
        // The process that tried: a child of this test, still running the test's program.
        assert_eq!(
            a["process"]["exe"].as_str(),
            me.to_str(),
            "the context of the refused exec: {a}\n{}",
            agent.log()
        );
        assert_eq!(a["rule"], "executables", "{a}");
    }
    let modified = alert_about(&agent, "blocked_exec", &files.modified);
    assert_eq!(modified["severity"], "critical", "{modified}");
    assert_eq!(
        modified["details"]["sha256"],
        sha256_file(&files.modified),
        "{modified}"
    );
    let unknown = alert_about(&agent, "blocked_exec", &files.unknown);
    assert_eq!(
        unknown["details"]["sha256"],
        sha256_file(&files.unknown),
        "{unknown}"
    );

    // Nothing allowed was refused or reported: no other alert names a lab file.
    let out = agent.stop();
    let allowed = [&files.allowed, &files.script];
    let wrong: Vec<&Value> = out
        .events
        .iter()
        .filter(|a| {
            allowed
                .iter()
                .any(|f| path(a) == f.to_str() || a["process"]["exe"].as_str() == f.to_str())
        })
        .collect();
    assert!(wrong.is_empty(), "alerts about allowed files: {wrong:#?}");
    // Each refused exec was reported once (the window aggregates repeats).
    for (file, _) in files.refused(&lab) {
        let n = out
            .events
            .iter()
            .filter(|a| kind(a) == "blocked_exec" && path(a) == file.to_str())
            .count();
        assert_eq!(n, 1, "blocked_exec alerts for {}", file.display());
    }
}

#[test]
fn the_dry_run_refuses_nothing_and_reports_what_enforce_would() {
    let _serial = serial();
    let lab = Lab::new("dry");
    let files = Files::new(&lab);
    let bundle = lab.sign("policy", &files.policy(&lab, "executables = \"alert\""));
    let agent = lab.run(&lab.config(&bundle, ""));
    agent.wait_log("executables: guard started (dry run)", ALERT_TIMEOUT);

    healthy_workload(&files);
    for file in [
        &files.unknown,
        &files.modified,
        &files.bad_interpreter,
        &files.temporary,
    ] {
        let r = try_run(file);
        assert!(
            r.is_ok(),
            "{} was refused in the dry run: {r:?}",
            file.display()
        );
    }
    for (file, reason) in files.refused(&lab) {
        let a = alert_about(&agent, "would_block", &file);
        assert_eq!(a["details"]["reason"], reason, "{a}");
        assert_eq!(a["details"]["action"], "exec", "{a}");
        assert_eq!(a["severity"], "medium", "{a}");
    }
    // Detection goes on as in any alert mode.
    alert_about(&agent, "unknown_executable", &files.unknown);
    let out = agent.stop();
    let blocked: Vec<&Value> = out
        .events
        .iter()
        .filter(|a| kind(a) == "blocked_exec")
        .collect();
    assert!(blocked.is_empty(), "the dry run blocked: {blocked:#?}");
    let about_allowed: Vec<&Value> = out
        .events
        .iter()
        .filter(|a| kind(a) == "would_block")
        .filter(|a| {
            [&files.allowed, &files.script]
                .iter()
                .any(|f| path(a) == f.to_str())
        })
        .collect();
    assert!(
        about_allowed.is_empty(),
        "would_block for allowed files: {about_allowed:#?}"
    );
}

#[test]
fn a_killed_agent_leaves_every_file_runnable() {
    let _serial = serial();
    let lab = Lab::new("kill");
    let files = Files::new(&lab);
    let bundle = lab.sign("policy", &files.policy(&lab, "executables = \"enforce\""));
    let agent = lab.run(&lab.config(&bundle, ""));
    agent.wait_log("executables: guard started (enforce)", ALERT_TIMEOUT);
    assert!(is_eperm(&try_run(&files.unknown)));
    alert_about(&agent, "blocked_exec", &files.unknown);
    // The agent's pid: killed, then waited for (its descriptors are closed by then).
    agent.kill();
    // The kernel closed the agent's group with it: nothing waits, nothing is refused.
    assert_eq!(try_run(&files.unknown).unwrap(), 0);
    assert_eq!(try_run(&files.temporary).unwrap(), 0);
    assert_eq!(try_run(&files.allowed).unwrap(), 0);
}

#[test]
fn the_configuration_can_weaken_enforcement_and_it_is_reported() {
    let _serial = serial();
    let lab = Lab::new("weaken");
    let files = Files::new(&lab);
    let bundle = lab.sign("policy", &files.policy(&lab, "executables = \"enforce\""));
    let agent = lab.run(&lab.config(&bundle, "[modes]\nexecutables = \"alert\"\n"));
    let a = agent.wait_for_within("enforcement_weakened", ALERT_TIMEOUT, None, |a| {
        kind(a) == "enforcement_weakened"
    });
    assert_eq!(a["details"]["category"], "executables", "{a}");
    assert_eq!(a["details"]["effective"], "alert", "{a}");
    assert_eq!(try_run(&files.unknown).unwrap(), 0, "weakened to alert");
    alert_about(&agent, "would_block", &files.unknown);
    drop(agent);

    // Raising a mode is the signed policy's alone: a configuration that enforces is refused.
    let plain = lab.sign("plain", &files.policy(&lab, "executables = \"alert\""));
    let config = lab.config(&plain, "[modes]\nexecutables = \"enforce\"\n");
    let out = std::process::Command::new(picket_test_support::bin::picket())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("modes.executables") && stderr.contains("only the signed policy"),
        "{stderr}"
    );
}

#[test]
fn an_exec_not_decided_in_time_gets_the_configured_answer() {
    let _serial = serial();
    let lab = Lab::new("timeout");
    // A listed program too large to hash within the decision time (`true` with 256 MiB of
    // zeros after it, which the loader never reads), listed with another SHA-256: refused once
    // hashed, but the answer cannot wait that long.
    let big = lab.install("/usr/bin/true", "big");
    let mut f = fs::OpenOptions::new().append(true).open(&big).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        f.write_all(&zeros).unwrap();
    }
    drop(f);
    let mut text = policy(&lab, "executables = \"enforce\"");
    executable(&mut text, &big, &sha256_file(Path::new("/usr/bin/false")));
    let bundle = lab.sign("policy", &text);

    for (answer, refused) in [("allow", false), ("deny", true)] {
        let extra = format!("[enforce]\ndecision_time = \"10ms\"\non_timeout = \"{answer}\"\n");
        let agent = lab.run(&lab.config(&bundle, &extra));
        agent.wait_log("executables: guard started (enforce)", ALERT_TIMEOUT);
        let r = try_run(&big);
        assert_eq!(is_eperm(&r), refused, "on_timeout = {answer}: {r:?}");
        agent.wait_log("not hashed within", ALERT_TIMEOUT);
        drop(agent);
    }
}

/// A statically linked program on every Debian system.
const STATIC_PROGRAM: &str = "/usr/sbin/ldconfig";

#[test]
fn a_memory_file_is_killed_before_it_runs_and_a_file_through_a_descriptor_is_judged() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::ExitStatusExt;
    let _serial = serial();
    let lab = Lab::new("memfd");
    let files = Files::new(&lab);
    let bundle = lab.sign("policy", &files.policy(&lab, "executables = \"enforce\""));
    let agent = lab.run(&lab.config(&bundle, ""));
    agent.wait_log("executables: guard started (enforce)", ALERT_TIMEOUT);

    // A memory file holding a statically linked program (`ldconfig`): fanotify cannot hold its
    // exec, the kernel side kills it. (A dynamically linked one is not killed: its loader's
    // open is held and allowed; see docs/ENFORCEMENT.md.)
    let name = unique("picket-enforce-memfd");
    let c_name = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: plain syscall; the descriptor is owned by the `File` made of it.
    let fd = unsafe { libc::memfd_create(c_name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut memfd = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    assert!(
        picket_agent::enrich::hash::elf_interp_of(Path::new(STATIC_PROGRAM)).is_none(),
        "{STATIC_PROGRAM} is not statically linked here"
    );
    memfd.write_all(&fs::read(STATIC_PROGRAM).unwrap()).unwrap();
    let via = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    let status = std::process::Command::new(&via)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let prefix = format!("/memfd:{name}");
    let a = agent.wait_for_within(
        "blocked_exec of the memory file",
        ALERT_TIMEOUT,
        None,
        |a| kind(a) == "blocked_exec" && path(a).is_some_and(|p| p.starts_with(&prefix)),
    );
    assert_eq!(a["details"]["reason"], "fileless", "{a}");

    // A file on disk run through a descriptor is held and judged like any other.
    let allowed = fs::File::open(&files.allowed).unwrap();
    let via = format!("/proc/self/fd/{}", allowed.as_raw_fd());
    assert_eq!(
        try_run(Path::new(&via)).unwrap(),
        0,
        "an allowed file through {via}"
    );
    let unknown = fs::File::open(&files.unknown).unwrap();
    let via = format!("/proc/self/fd/{}", unknown.as_raw_fd());
    assert!(
        is_eperm(&try_run(Path::new(&via))),
        "an unknown file through {via}"
    );
    alert_about(&agent, "blocked_exec", &files.unknown);
}
