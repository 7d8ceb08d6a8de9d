//! Runs the `picket` binary as a child process: starts it with the given arguments, waits for
//! the line of its log (stderr) that says it is ready, collects the JSON lines it prints on
//! stdout and its log in background threads, lets a test wait for the event its action caused,
//! and stops it (SIGTERM, then SIGKILL).
//!
//! Tests pass the binary's path, [`crate::bin::picket`].

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{signal, terminate};

/// How long a test waits for the event its action should cause.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent may take to load and attach its sensors.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Raw stdout lines kept for timeout messages.
const TAIL_LINES: usize = 20;
/// Events and log lines shown by [`Agent::describe`].
const DESCRIBE_LINES: usize = 40;

/// A running agent; SIGTERMed and reaped when dropped (SIGKILLed if it does not exit).
pub struct Agent {
    child: Option<Child>,
    pid: u32,
    /// The command line, for failure messages.
    name: String,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
}

/// Everything the agent printed, once it has exited.
pub struct Output {
    /// Every stdout line that parsed as a JSON object, in order.
    pub events: Vec<Value>,
    /// stdout lines that were not JSON objects.
    pub bad_lines: Vec<String>,
    /// Its log, line by line.
    pub stderr: Vec<String>,
    /// How it exited; `None` if it had to be killed after SIGTERM.
    pub status: Option<ExitStatus>,
}

impl Output {
    /// The `summary` line `picket monitor` prints at shutdown.
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

    /// The log, one line after another.
    pub fn log(&self) -> String {
        join_lines(&self.stderr)
    }

    /// The last events and log lines, for failure messages.
    pub fn describe(&self) -> String {
        describe(&self.events, &self.stderr)
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

impl Agent {
    /// Starts `binary ARGS` and returns once it logged a line containing `ready`.
    pub fn start<S: AsRef<OsStr>>(binary: impl AsRef<OsStr>, args: &[S], ready: &str) -> Agent {
        let mut command = Command::new(binary);
        command.args(args);
        Agent::spawn(command, ready)
    }

    /// Starts `command` (its standard streams are the runner's) and returns once it logged a
    /// line containing `ready`; panics if it exits before or does not within
    /// [`START_TIMEOUT`].
    pub fn spawn(mut command: Command, ready: &str) -> Agent {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id();
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            spawn_reader(stdout, Arc::clone(&shared), Stream::Stdout),
            spawn_reader(stderr, Arc::clone(&shared), Stream::Stderr),
        ];
        let agent = Agent {
            child: Some(child),
            pid,
            name,
            shared,
            readers,
        };
        agent.wait_until_ready(ready);
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn wait_until_ready(&self, ready: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut state = self.lock();
        loop {
            if state.stderr.iter().any(|l| l.contains(ready)) {
                return;
            }
            if state.stderr_closed {
                panic!(
                    "{} exited before logging `{ready}`\nstderr:\n{}",
                    self.name,
                    state.stderr.join("\n")
                );
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "{} did not log `{ready}` within {START_TIMEOUT:?}\nstderr so far:\n{}",
                    self.name,
                    state.stderr.join("\n")
                );
            }
            state = self.wait_change(state, deadline - now);
        }
    }

    /// Waits up to `timeout` for a line of the log containing `what`; panics with the log if
    /// none came.
    pub fn wait_log(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.stderr.iter().any(|l| l.contains(what)) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "the agent did not log `{what}` within {timeout:?}:\n{}",
                    join_lines(&state.stderr)
                );
            }
            state = self.wait_change(state, deadline - now);
        }
    }

    /// The log so far, one line after another.
    pub fn log(&self) -> String {
        join_lines(&self.lock().stderr)
    }

    /// Every event (JSON object on stdout) so far.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// stdout lines so far that were not JSON objects.
    pub fn bad_lines(&self) -> Vec<String> {
        self.lock().bad_lines.clone()
    }

    /// The last events and log lines, for failure messages.
    pub fn describe(&self) -> String {
        let state = self.lock();
        describe(&state.events, &state.stderr)
    }

    /// Waits up to [`EVENT_TIMEOUT`] for an event matching `pred`, and returns it.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, EVENT_TIMEOUT, None, pred)
    }

    /// Like [`Agent::wait_for`] for an event of process `pid`; on timeout the message also
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

    /// Waits up to `timeout` for an event matching `pred`; `None` if none came. Panics if the
    /// agent exits meanwhile.
    pub fn try_wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        match self.poll_for(timeout, pred) {
            Ok(found) => Some(found),
            Err(Waited::TimedOut) => None,
            Err(Waited::Exited) => panic!(
                "{} exited while a test was waiting for an event\nstderr:\n{}",
                self.name,
                self.lock().stderr.join("\n")
            ),
        }
    }

    /// Waits up to `timeout` for an event matching `pred`; what ended the wait if none came.
    pub fn poll_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Waited> {
        let deadline = Instant::now() + timeout;
        let mut scanned = 0;
        let mut state = self.lock();
        loop {
            if let Some(found) = state.events[scanned..].iter().find(|e| pred(e)) {
                return Ok(found.clone());
            }
            scanned = state.events.len();
            if state.stdout_closed {
                return Err(Waited::Exited);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Waited::TimedOut);
            }
            state = self.wait_change(state, deadline - now);
        }
    }

    /// All events matching `pred` seen once `window` has passed (an observation window for
    /// asserting that something did NOT happen again).
    pub fn matching_after(&self, window: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut state = self.lock();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            state = self.wait_change(state, left);
        }
        state.events.iter().filter(|e| pred(e)).cloned().collect()
    }

    /// Stops the agent (SIGSTOP) until [`Agent::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused agent go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends `sig` to the agent; panics if kill(2) fails.
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.child.as_ref().expect("running"), sig);
    }

    /// Sends SIGTERM, waits up to [`STOP_TIMEOUT`] for the agent to exit (panics if it does
    /// not), and returns everything it printed.
    pub fn stop(self) -> Output {
        let out = self.terminate(STOP_TIMEOUT);
        if out.status.is_none() {
            panic!(
                "the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM\nstderr:\n{}",
                out.stderr.join("\n")
            );
        }
        out
    }

    /// Sends SIGTERM, waits up to `timeout` for the agent to exit, SIGKILLs it if it has not,
    /// and returns everything it printed.
    pub fn terminate(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let status = terminate(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.finish(status)
    }

    /// Waits up to `timeout` for the agent to exit by itself (a command that ends, such as
    /// `baseline learn --for`) and returns everything it printed; panics (after SIGKILL) if
    /// it is still running then.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let out = self.finish(None);
                panic!(
                    "{} did not exit within {timeout:?}\nstderr:\n{}",
                    self.name,
                    out.stderr.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.finish(Some(status))
    }

    /// SIGKILL: no goodbye, no flush beyond what is already durable. Returns what it printed.
    pub fn kill(mut self) -> Output {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let status = child.wait().ok();
        self.finish(status)
    }

    fn finish(&mut self, status: Option<ExitStatus>) -> Output {
        for reader in self.readers.drain(..) {
            reader.join().expect("the output reader panicked");
        }
        let mut state = self.lock();
        Output {
            events: std::mem::take(&mut state.events),
            bad_lines: std::mem::take(&mut state.bad_lines),
            stderr: std::mem::take(&mut state.stderr),
            status,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the agent's output from the others.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_change<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        match self.shared.changed.wait_timeout(state, timeout) {
            Ok((state, _)) => state,
            Err(e) => e.into_inner().0,
        }
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

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if terminate(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Why [`Agent::poll_for`] found no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// None came in time.
    TimedOut,
    /// The agent closed its stdout (it exited).
    Exited,
}

/// A running `picket monitor`: an [`Agent`] ready once it logged `monitoring`.
pub struct Monitor(Agent);

impl Monitor {
    /// Starts `picket monitor ARGS` (`binary` is the `picket` executable) and returns once it
    /// logged that its sensors are attached.
    pub fn start(binary: impl AsRef<Path>, args: &[&str]) -> Monitor {
        let mut command = Command::new(binary.as_ref());
        command.arg("monitor").args(args);
        Monitor(Agent::spawn(command, "monitoring"))
    }

    /// Sends SIGTERM, waits for the monitor to exit, and returns everything it printed.
    pub fn stop(self) -> Output {
        self.0.stop()
    }
}

impl Deref for Monitor {
    type Target = Agent;

    fn deref(&self) -> &Agent {
        &self.0
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

fn join_lines(lines: &[String]) -> String {
    lines.iter().fold(String::new(), |mut s, l| {
        s.push_str(l);
        s.push('\n');
        s
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

fn describe(events: &[Value], stderr: &[String]) -> String {
    let skip = events.len().saturating_sub(DESCRIBE_LINES);
    let mut msg = format!("last {} of {} events:\n", events.len() - skip, events.len());
    for e in &events[skip..] {
        let _ = writeln!(msg, "  {e}");
    }
    let skip = stderr.len().saturating_sub(DESCRIBE_LINES);
    let _ = writeln!(msg, "stderr:");
    for l in &stderr[skip..] {
        let _ = writeln!(msg, "  {l}");
    }
    msg
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
