//! Shared harness for the end-to-end tests: runs `picket monitor` as a child process, collects
//! its JSON lines in background threads, and lets a test wait for the event its action caused.
//!
//! The monitor sees every process on the machine, and tests of one binary run in parallel, so
//! every wait selects events by pid, path or port, never by position in the stream.
#![allow(dead_code)] // each test binary uses a different subset

pub mod broker;

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for the event its action should cause.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the monitor may take to load and attach its sensors.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the monitor may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Raw stdout lines kept for timeout messages.
const TAIL_LINES: usize = 20;

/// A running `picket monitor`; SIGTERMed and reaped when dropped.
pub struct Monitor {
    child: Option<Child>,
    pid: u32,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
}

/// Everything the monitor printed, once it has exited.
pub struct Output {
    /// Every stdout line that parsed as JSON, in order.
    pub events: Vec<Value>,
    /// stdout lines that were not JSON objects.
    pub bad_lines: Vec<String>,
    pub stderr: Vec<String>,
}

impl Output {
    /// The `summary` line printed at shutdown.
    pub fn summary(&self) -> &Value {
        self.events.iter().rev().find(|e| e.kind() == "summary").unwrap_or_else(|| {
            panic!(
                "the monitor printed no summary line at shutdown\nlast stdout lines:\n{}\nstderr:\n{}",
                tail_of(&self.events),
                self.stderr.join("\n")
            )
        })
    }

    /// Events lost by `sensor`, from the summary line.
    pub fn lost(&self, sensor: &str) -> u64 {
        let summary = self.summary();
        summary["lost"][sensor]
            .as_u64()
            .unwrap_or_else(|| panic!("summary has no lost.{sensor} count: {summary}"))
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    events: Vec<Value>,
    bad_lines: Vec<String>,
    tail: VecDeque<String>,
    stderr: Vec<String>,
    stdout_closed: bool,
    stderr_closed: bool,
}

impl Monitor {
    /// Starts `picket monitor ARGS` and returns once it logged that its sensors are attached.
    pub fn start(args: &[&str]) -> Monitor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_picket"))
            .arg("monitor")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start picket monitor {args:?}: {e}"));
        let pid = child.id();
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            spawn_reader(stdout, Arc::clone(&shared), Stream::Stdout),
            spawn_reader(stderr, Arc::clone(&shared), Stream::Stderr),
        ];
        let monitor = Monitor {
            child: Some(child),
            pid,
            shared,
            readers,
        };
        monitor.wait_until_monitoring(args);
        monitor
    }

    /// The monitor's own pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn wait_until_monitoring(&self, args: &[&str]) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut state = self.lock();
        loop {
            if state.stderr.iter().any(|l| l.contains("monitoring")) {
                return;
            }
            if state.stderr_closed {
                panic!(
                    "picket monitor {args:?} exited before logging `monitoring`\nstderr:\n{}",
                    state.stderr.join("\n")
                );
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "picket monitor {args:?} did not log `monitoring` within {START_TIMEOUT:?}\n\
                     stderr so far:\n{}",
                    state.stderr.join("\n")
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Waits up to [`EVENT_TIMEOUT`] for an event matching `pred`, and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, EVENT_TIMEOUT, None, pred)
    }

    /// Like [`Monitor::wait_for`] for an event of process `pid`; on timeout the message also
    /// shows that process's last events.
    pub fn wait_for_pid(&self, what: &str, pid: u32, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, EVENT_TIMEOUT, Some(pid), |e| {
            e.pid() == Some(pid) && pred(e)
        })
    }

    /// Waits up to `timeout` for an event matching `pred`; panics naming `what` if none came.
    pub fn wait_for_within(
        &self,
        what: &str,
        timeout: Duration,
        pid: Option<u32>,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.try_wait_for(timeout, &pred)
            .unwrap_or_else(|| panic!("{}", self.timeout_message(what, timeout, pid)))
    }

    /// Waits up to `timeout` for an event matching `pred`; `None` if none came.
    pub fn try_wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut scanned = 0;
        let mut state = self.lock();
        loop {
            if let Some(found) = state.events[scanned..].iter().find(|e| pred(e)) {
                return Some(found.clone());
            }
            scanned = state.events.len();
            if state.stdout_closed {
                panic!(
                    "the monitor exited while a test was waiting for an event\nstderr:\n{}",
                    state.stderr.join("\n")
                );
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// All events matching `pred` seen once `window` has passed (an observation window for
    /// asserting that something did NOT happen again).
    pub fn matching_after(&self, window: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut state = self.lock();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
        state.events.iter().filter(|e| pred(e)).cloned().collect()
    }

    /// Sends SIGTERM, waits for the monitor to exit, and returns everything it printed.
    pub fn stop(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        terminate(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "the monitor did not exit within {STOP_TIMEOUT:?} of SIGTERM\nstderr:\n{}",
                self.lock().stderr.join("\n")
            )
        });
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let mut state = self.lock();
        Output {
            events: std::mem::take(&mut state.events),
            bad_lines: std::mem::take(&mut state.bad_lines),
            stderr: std::mem::take(&mut state.stderr),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the monitor's output from the others.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn timeout_message(&self, what: &str, timeout: Duration, pid: Option<u32>) -> String {
        let state = self.lock();
        let mut msg = format!("timed out after {timeout:?} waiting for {what}\n");
        if let Some(pid) = pid {
            let mine: Vec<&Value> = state
                .events
                .iter()
                .filter(|e| e.pid() == Some(pid))
                .collect();
            let skip = mine.len().saturating_sub(TAIL_LINES);
            let _ = writeln!(msg, "last events of pid {pid} ({} in all):", mine.len());
            for e in &mine[skip..] {
                let _ = writeln!(msg, "  {e}");
            }
        }
        let _ = writeln!(
            msg,
            "last {TAIL_LINES} stdout lines ({} events in all):",
            state.events.len()
        );
        for line in &state.tail {
            let _ = writeln!(msg, "  {line}");
        }
        let skip = state.stderr.len().saturating_sub(TAIL_LINES);
        let _ = writeln!(msg, "last stderr lines:");
        for line in &state.stderr[skip..] {
            let _ = writeln!(msg, "  {line}");
        }
        msg
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if terminate(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// SIGTERM, then reap; `None` if the child was still running after `timeout`.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: plain kill(2) of our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
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

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    shared: Arc<Shared>,
    which: Stream,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 20, pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).unwrap_or(0);
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                match which {
                    Stream::Stdout => state.stdout_closed = true,
                    Stream::Stderr => state.stderr_closed = true,
                }
                shared.changed.notify_all();
                return;
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches('\n')
                .to_string();
            match which {
                Stream::Stderr => state.stderr.push(line),
                Stream::Stdout => {
                    match serde_json::from_slice::<Value>(&buf) {
                        Ok(v) if v.is_object() => state.events.push(v),
                        _ => state.bad_lines.push(line.clone()),
                    }
                    if state.tail.len() == TAIL_LINES {
                        state.tail.pop_front();
                    }
                    state.tail.push_back(line);
                }
            }
            shared.changed.notify_all();
        }
    })
}

fn tail_of(events: &[Value]) -> String {
    let skip = events.len().saturating_sub(TAIL_LINES);
    events[skip..]
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Typed access to the fields of one event line.
pub trait Event {
    /// The `event` field ("exec", "file", ...).
    fn kind(&self) -> &str;
    fn pid(&self) -> Option<u32>;
    fn str_field(&self, key: &str) -> Option<&str>;
    fn u64_field(&self, key: &str) -> Option<u64>;
    /// The `argv` array, as strings.
    fn argv(&self) -> Vec<String>;
    /// Whether the `flags` array holds `flag`.
    fn has_flag(&self, flag: &str) -> bool;
}

impl Event for Value {
    fn kind(&self) -> &str {
        self["event"].as_str().unwrap_or("")
    }

    fn pid(&self) -> Option<u32> {
        self["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self[key].as_str()
    }

    fn u64_field(&self, key: &str) -> Option<u64> {
        self[key].as_u64()
    }

    fn argv(&self) -> Vec<String> {
        self["argv"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or("<not a string>").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn has_flag(&self, flag: &str) -> bool {
        self["flags"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f == flag))
    }
}

/// Whether `event` is a file event of operation `op` on `path`.
pub fn is_file_op(event: &Value, op: &str, path: &Path) -> bool {
    event.kind() == "file"
        && event.str_field("op") == Some(op)
        && event.str_field("path").map(OsStr::new) == Some(path.as_os_str())
}

/// A directory under the system temp dir, with a canonical path, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let template = std::env::temp_dir().join("picket-e2e-XXXXXX");
        let mut bytes = CString::new(template.as_os_str().as_bytes())
            .unwrap()
            .into_bytes_with_nul();
        // SAFETY: `bytes` is a writable NUL-terminated template, as mkdtemp(3) requires.
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        assert!(
            !made.is_null(),
            "mkdtemp failed: {}",
            std::io::Error::last_os_error()
        );
        bytes.pop();
        let path = PathBuf::from(OsStr::from_bytes(&bytes));
        // Events carry canonical paths, so compare against the canonical form.
        TempDir(std::fs::canonicalize(path).unwrap())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name no other test run uses, for argv markers and file names.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of the file at `path`, in lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
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
