//! Processes a test starts or causes: stopping a child, forked children that make raw
//! syscalls, executables written a moment ago, a fileless exec.

use std::ffi::CString;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// SIGTERM, then reap; `None` if the child was still running after `timeout`.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `child` (our own, not yet reaped); panics if kill(2) fails.
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: plain kill(2) of our own, not yet reaped, child.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal}) failed", child.id());
}

/// Runs `body` in a forked child, which exits with its return value; returns the child's pid.
///
/// The test process is multithreaded: `body` may only make async-signal-safe calls (raw
/// syscalls on data prepared before the fork), must not allocate, and must not panic.
pub fn fork_child(body: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `body`, which the caller keeps async-signal-safe, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = body();
        // SAFETY: leaves the child without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Reaps child `pid` and returns its exit code (panics if it was killed).
pub fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let got = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        got,
        pid,
        "waitpid({pid}): {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFEXITED(status),
        "child {pid} did not exit normally (status {status:#x})"
    );
    libc::WEXITSTATUS(status)
}

/// Spawns `cmd`, retrying while the kernel reports ETXTBSY: an executable written a moment ago
/// can still be open for writing in a child that another test thread is forking.
pub fn spawn_fresh_executable(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot spawn {cmd:?}: {e}"),
        }
    }
}

/// Runs `cmd` to completion (output discarded) and returns its pid; panics unless it succeeded.
pub fn run(cmd: &mut Command) -> u32 {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "{cmd:?} failed: {status}");
    pid
}

/// Runs /usr/bin/true from a memfd named `name` (memfd_create, then execveat(fd, "",
/// AT_EMPTY_PATH) in a forked child, with `argv0` as its only argument): a fileless exec.
/// Returns the child's pid, once it has exited successfully, and the memfd's fd number.
pub fn exec_memfd(name: &str, argv0: &str) -> (u32, i32) {
    use std::io::Write as _;
    use std::os::fd::{AsRawFd, FromRawFd};
    let c_name = CString::new(name).unwrap();
    // SAFETY: plain syscall; no MFD_CLOEXEC so the fd stays valid through the exec.
    let fd = unsafe { libc::memfd_create(c_name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut memfd = unsafe { std::fs::File::from_raw_fd(fd) };
    memfd
        .write_all(&std::fs::read("/usr/bin/true").unwrap())
        .unwrap();
    let argv0 = CString::new(argv0).unwrap();
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let child = fork_child(|| {
        // SAFETY: execveat(fd, "", argv, envp, AT_EMPTY_PATH) on data prepared before the fork.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                memfd.as_raw_fd(),
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        127
    });
    assert_eq!(wait_child(child), 0, "the memfd exec failed");
    (child as u32, fd)
}
