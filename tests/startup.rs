//! Start-up that explains itself: the real `picket` binary, run the ways a new user gets wrong,
//! must fail with a message that says what is wrong and what to do; and the ways packagers use
//! it (an object loaded from a file, a machine without tracefs mounted) must work. `picket
//! kernel-check` must tell what this machine's kernel has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use picket_agent::cmd::kernel_check::FEATURES;
use picket_test_support::bin::picket;
use picket_test_support::{Agent, Event, Monitor};

/// The tests here run one at a time: each loads the sensors.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn refuses_to_start_unprivileged_and_says_how_to_fix_it() {
    let _serial = serial();
    // `nobody`: no capabilities at all.
    let out = Command::new(picket())
        .args(["monitor"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("needs root"), "stderr: {err}");
    assert!(err.contains("CAP_BPF"), "stderr: {err}");
}

#[test]
fn names_an_object_file_that_does_not_exist() {
    let _serial = serial();
    let out = Command::new(picket())
        .args(["monitor", "--bpf-object", "/nonexistent/picket-sensors"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/picket-sensors"), "stderr: {err}");
    assert!(err.contains("No such file"), "stderr: {err}");
}

#[test]
fn refuses_an_object_that_is_not_one() {
    let _serial = serial();
    let dir = tempdir();
    let junk = dir.join("junk.o");
    std::fs::write(&junk, b"\x7fELF but not really").unwrap();
    let out = Command::new(picket())
        .arg("monitor")
        .arg("--bpf-object")
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("loading the eBPF object"), "stderr: {err}");
    assert!(err.contains(junk.to_str().unwrap()), "stderr: {err}");
}

#[test]
fn refuses_bad_options_with_the_reason() {
    let _serial = serial();
    let out = Command::new(picket())
        .args(["monitor", "--filter", "exec,bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown event kind `bogus`"));

    let out = Command::new(picket())
        .args(["monitor", "--ring-buffer-size", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("power of two"), "{}", stderr(&out));
}

#[test]
fn loads_the_sensors_from_a_file_given_with_bpf_object() {
    let _serial = serial();
    let object = built_object();
    let monitor = Monitor::start(
        picket(),
        &["--filter", "exec", "--bpf-object", object.to_str().unwrap()],
    );
    // The sensors loaded from the file really work: an exec shows up.
    let marker = format!("picket-bpf-object-{}", std::process::id());
    let child = Command::new("/bin/echo").arg(&marker).output().unwrap();
    assert!(child.status.success());
    let seen = monitor.try_wait_for(Duration::from_secs(15), |e| {
        e.kind() == "exec" && e.to_string().contains(&marker)
    });
    stop(monitor);
    assert!(seen.is_some(), "no exec event for {marker}");
}

#[test]
fn mounts_tracefs_when_it_is_missing() {
    let _serial = serial();
    // The monitor runs in a mount namespace of its own without tracefs.
    let mut command = Command::new(picket());
    command.args(["monitor", "--filter", "exec"]);
    without_tracefs(&mut command);
    let monitor = Agent::spawn(command, "monitoring");
    let out = monitor.stop();
    let status = out.status.expect("stop() waits for the exit");
    assert!(status.success(), "picket monitor exited with {status}");
    let log = out.log();
    assert!(
        log.contains("mounted tracefs at /sys/kernel/tracing"),
        "the monitor did not say it mounted tracefs:\n{log}"
    );
}

/// `picket kernel-check` on this machine's kernel, which has every feature the agent uses (see
/// the environment the tests run in): each is present, as its probe saw it, and the exit
/// status says so.
#[test]
fn kernel_check_finds_every_feature_of_this_kernel() {
    let _serial = serial();
    let out = Command::new(picket()).arg("kernel-check").output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("kernel ") && first.ends_with("build configuration: /proc/config.gz"),
        "{text}"
    );
    for feature in FEATURES {
        let kind = if feature.required {
            "required"
        } else {
            "optional"
        };
        let start = format!("present  {kind}  {}: ", feature.name);
        assert!(
            text.lines().any(|l| l.starts_with(&start)),
            "no line `{start}…`:\n{text}"
        );
    }
    // What the probes saw, not only what the configuration says.
    for (feature, evidence) in [
        ("bpf() syscall", "CONFIG_BPF_SYSCALL=y; bpf() answers"),
        ("BPF ring buffer", "; a ring buffer map was created"),
        (
            "BPF programs on tracepoints",
            "CONFIG_BPF_EVENTS=y, CONFIG_PERF_EVENTS=y; a tracepoint program was loaded, a \
             tracepoint perf event opened",
        ),
        (
            "BPF helpers the sensors call",
            "a tracepoint program calling get_current_pid_tgid, ",
        ),
        (
            "syscall tracepoints",
            "CONFIG_FTRACE_SYSCALLS=y; syscalls:sys_enter_execve, ",
        ),
        (
            "BPF JIT",
            "CONFIG_BPF_JIT=y; /proc/sys/net/core/bpf_jit_enable is ",
        ),
        (
            "fanotify permission events",
            "CONFIG_FANOTIFY_ACCESS_PERMISSIONS=y; fanotify_init(FAN_CLASS_CONTENT) and a \
             FAN_OPEN_EXEC_PERM mark",
        ),
        (
            "cgroup BPF",
            "CONFIG_CGROUP_BPF=y; a cgroup connect4 program was loaded",
        ),
        ("cgroup v2", "CONFIG_CGROUPS=y; mounted at /"),
        (
            "process context in sock_addr programs",
            "a cgroup connect4 program calling get_current_pid_tgid, ",
        ),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("  {feature}")))
            .unwrap_or_else(|| panic!("no line for {feature}:\n{text}"));
        assert!(line.contains(evidence), "expected `{evidence}` in: {line}");
    }
    assert!(!text.contains("without it"), "{text}");
    assert!(
        text.ends_with("every required feature is present\n"),
        "{text}"
    );
}

/// Without tracefs mounted, kernel-check mounts it for the check, in a directory of its own
/// that it removes, and says the agent would mount it.
#[test]
fn kernel_check_mounts_tracefs_for_the_check_alone() {
    let _serial = serial();
    let mut command = Command::new(picket());
    command
        .arg("kernel-check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_tracefs(&mut command);
    let child = command.spawn().unwrap();
    let own = std::env::temp_dir().join(format!("picket-kernel-check-tracefs.{}", child.id()));
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(
            "present  required  tracefs: CONFIG_TRACING=y; not mounted (the agent mounts it at \
             /sys/kernel/tracing)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "present  required  syscall tracepoints: CONFIG_FTRACE_SYSCALLS=y; syscalls:"
        ),
        "{text}"
    );
    assert!(!own.exists(), "{} was left behind", own.display());
}

/// Without privileges the probes cannot tell; the configuration given with --kernel-config
/// answers, the exit status follows the required features, and a missing optional feature
/// says what the agent does without it.
#[test]
fn kernel_check_without_privileges_answers_from_the_configuration() {
    let _serial = serial();
    let dir = tempdir();
    let required = "CONFIG_BPF_SYSCALL=y\nCONFIG_BPF_EVENTS=y\nCONFIG_PERF_EVENTS=y\n\
                    CONFIG_CGROUPS=y\nCONFIG_TRACING=y\nCONFIG_TRACEPOINTS=y\n\
                    CONFIG_NET=y\nCONFIG_INET=y\nCONFIG_BPF_JIT=y\nCONFIG_FANOTIFY=y\n\
                    CONFIG_CGROUP_BPF=y\n\
                    # CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set\n";
    let run = |name: &str, config: String| {
        let path = dir.join(name);
        std::fs::write(&path, config).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = Command::new(picket())
            .args(["kernel-check", "--kernel-config"])
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (out.status.code(), stdout(&out), stderr(&out))
    };
    let (code, text, err) = run("complete", format!("{required}CONFIG_FTRACE_SYSCALLS=y\n"));
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("not running as root"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("fanotify permission events"))
        .unwrap_or_else(|| panic!("no line for permission events:\n{text}"));
    assert!(
        line.starts_with(
            "missing  optional  fanotify permission events (FAN_OPEN_EXEC_PERM): \
             CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set; not probed: fanotify_init"
        ),
        "{line}"
    );
    assert!(
        line.ends_with(
            "-- without it, a policy's executables cannot be enforced: the exec guard \
                        does not start (enforcement_weakened when the policy enforces); \
                        detection goes on"
        ),
        "{line}"
    );

    let (code, text, err) = run("no-syscall-tracepoints", required.to_string());
    assert_eq!(code, Some(1), "{text}{err}");
    assert!(
        text.contains(
            "missing  required  syscall tracepoints: CONFIG_FTRACE_SYSCALLS is not set; not probed: "
        ),
        "{text}"
    );
    assert!(
        text.ends_with("picket cannot run on this kernel\n"),
        "{text}"
    );

    let (code, _, err) = run("not-a-config", "hello\n".to_string());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not a kernel configuration"), "{err}");
}

/// Runs `command` in a mount namespace of its own without tracefs: neither at
/// /sys/kernel/tracing nor under debugfs (unmounted whole: its `tracing` directory would mount
/// tracefs again when reached). The machine's own mounts are left alone.
fn without_tracefs(command: &mut Command) {
    // SAFETY: only system calls between fork and exec (no allocation, no lock).
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for path in [c"/sys/kernel/debug", c"/sys/kernel/tracing"] {
                // Every mount stacked there; EINVAL once none is left.
                while libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0 {}
            }
            Ok(())
        });
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SIGTERM; the monitor must exit with status 0.
fn stop(monitor: Monitor) {
    let status = monitor.stop().status.expect("stop() waits for the exit");
    assert!(status.success(), "picket monitor exited with {status}");
}

/// The sensors object `build.rs` built for this agent (the one it also embeds).
fn built_object() -> PathBuf {
    let exe = PathBuf::from(picket());
    let build = exe.parent().unwrap().join("build");
    std::fs::read_dir(&build)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("out").join("picket-sensors"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no built picket-sensors object under {}", build.display()))
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "picket-startup-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
