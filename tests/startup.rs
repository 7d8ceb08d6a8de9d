//! Start-up that explains itself: the real `picket` binary, run the ways a new user gets wrong,
//! must fail with a message that says what is wrong and what to do; and the ways packagers use
//! it (an object loaded from a file, a machine without tracefs mounted) must work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Output},
    sync::Mutex,
    time::Duration,
};

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
    // The monitor runs in a mount namespace of its own without tracefs: neither at
    // /sys/kernel/tracing nor under debugfs (unmounted whole: its `tracing` directory would
    // mount tracefs again when reached). The machine's own mounts are left alone.
    let mut command = Command::new(picket());
    command.args(["monitor", "--filter", "exec"]);
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
