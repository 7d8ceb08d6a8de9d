//! The exec guard: every exec of a file on a marked filesystem waits for the agent's answer.
//!
//! A fanotify group of class `FAN_CLASS_CONTENT` marks every filesystem for
//! `FAN_OPEN_EXEC_PERM` (in the dry run, a notification group for `FAN_OPEN_EXEC`: nothing
//! waits). The kernel opens the file for the exec, queues the event with a descriptor of that
//! very inode and holds the exec until the answer: `FAN_ALLOW`, or `FAN_DENY` and the exec fails
//! with `EPERM`. The same happens for the interpreter a `#!` script names and the dynamic loader
//! of an ELF program, each judged as a file of its own.
//!
//! One thread reads and answers, in order; it only looks things up (`fstat`, the descriptor's
//! path, a cache of SHA-256 by file identity). A file that must be hashed is hashed by a worker
//! thread while the guard waits at most the decision time; past it the exec gets the configured
//! default answer (allow, unless configured otherwise) and the worker finishes for the next
//! exec of that file. What is refused or would be is handed to the event loop, which raises the
//! alert with the process context.
//!
//! Never refused: the agent's own execs, init's (process 1 re-executing itself), processes the
//! kernel starts itself (`modprobe`, hotplug and other user-mode helpers, whose parent is a
//! kernel thread) and the agent's own executable (an update replaces it; a change to it is
//! `agent_tamper`).

use std::{
    fs::{File, Metadata},
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc as std_mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::fanotify::{FanotifyResponse, InitFlags, MaskFlags, Response},
};
use tokio::sync::mpsc;

use super::GuardMode;
use crate::{
    detect::{ExecBaseline, Refusal},
    enrich::hash::{self, HashCache},
    sensors::fanotify::{self, MarkedGroup},
};

/// Files whose SHA-256 the guard keeps (each hashed once per identity).
const CACHE_ENTRIES: usize = 4096;
/// Files hashed at once past the decision time; beyond, an exec that needs a hash gets the
/// default answer at once.
const MAX_WORKERS: usize = 4;
/// Events read at once: each holds a descriptor until it is answered.
const BATCH_BYTES: usize = 32 * std::mem::size_of::<libc::fanotify_event_metadata>();

/// What the guard judges by; swapped whole when the policy changes.
pub struct ExecRules {
    pub baseline: Arc<ExecBaseline>,
    /// The agent's own executable, canonical: never refused.
    pub own_exe: Option<PathBuf>,
}

/// How the guard answers.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Longest wait for a file's SHA-256 before the default answer.
    pub decision_time: Duration,
    /// The default answer: allow (fail open) unless configured to deny.
    pub allow_on_timeout: bool,
}

/// An exec refused, or that would have been.
#[derive(Debug)]
pub struct ExecDecision {
    /// The process that exec'd (still running its previous program when refused).
    pub pid: u32,
    /// The file, as the descriptor names it in the agent's mount namespace.
    pub path: PathBuf,
    pub refusal: Refusal,
    /// Refused (`true`) or only reported, in the dry run.
    pub enforced: bool,
}

/// What the guard counted.
#[derive(Debug, Default)]
pub struct GuardStats {
    pub judged: AtomicUsize,
    pub refused: AtomicUsize,
    /// Execs that got the default answer: not hashed within the decision time.
    pub timed_out: AtomicUsize,
    /// Decisions not handed to the event loop (it was behind by a full queue).
    pub unreported: AtomicUsize,
}

/// The exec program's side of the guard, shared by the guards one after the other (see
/// [`crate::sensors::ExecTokens`]).
pub type KernelSide = Arc<Mutex<crate::sensors::ExecTokens>>;

/// Turns the exec program's killing of token-less execs on or off; the error says which.
pub fn set_kill_switch(kernel: &KernelSide, on: bool) -> Result<(), String> {
    let mut k = kernel.lock().unwrap_or_else(|e| e.into_inner());
    k.switch.set(0, u32::from(on), 0).map_err(|e| {
        let state = if on { "on" } else { "off" };
        format!("exec guard: switching the kernel side {state}: {e}")
    })
}

/// What the guard hands to the event loop.
#[derive(Debug)]
pub enum GuardReport {
    Decision(ExecDecision),
    /// A line for the log: the guard thread never writes to it itself (a blocked log would
    /// hold up every exec on the device).
    Note(String),
}

/// A running guard. Dropping it stops the thread and closes the group: anything waiting is
/// allowed by the kernel.
pub struct ExecGuard {
    mode: GuardMode,
    rules: Arc<Mutex<Arc<ExecRules>>>,
    pub stats: Arc<GuardStats>,
    /// The filesystems' marks and their watcher; dropped before the thread stops.
    marks: Option<MarkedGroup>,
    /// Closing this stops the thread.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl ExecGuard {
    /// Starts answering, then marks every filesystem; `mode` is [`GuardMode::DryRun`] or
    /// [`GuardMode::Enforce`]. `kernel`, when enforcing: the guard writes a token for each
    /// exec it allows before the answer; the exec program's killing of token-less execs
    /// through a descriptor is switched on once every filesystem is marked, and off when the
    /// guard's thread ends (however it ends).
    pub fn start(
        mode: GuardMode,
        rules: ExecRules,
        settings: Settings,
        reports: mpsc::Sender<GuardReport>,
        kernel: Option<KernelSide>,
    ) -> io::Result<Self> {
        let (init, mask, what) = match mode {
            GuardMode::Enforce => (
                InitFlags::FAN_CLASS_CONTENT,
                MaskFlags::FAN_OPEN_EXEC_PERM,
                "exec guard (fanotify FAN_OPEN_EXEC_PERM)",
            ),
            GuardMode::DryRun => (
                InitFlags::FAN_CLASS_NOTIF,
                MaskFlags::FAN_OPEN_EXEC,
                "exec guard, dry run (fanotify FAN_OPEN_EXEC)",
            ),
            GuardMode::Off => return Err(io::Error::other("an exec guard that is off")),
        };
        raise_descriptor_limit();
        // Unlimited: a permission event the queue has no room for is let through unjudged.
        let group =
            fanotify::init_group(init | InitFlags::FAN_NONBLOCK | InitFlags::FAN_UNLIMITED_QUEUE)?;
        let rules = Arc::new(Mutex::new(Arc::new(rules)));
        let stats = Arc::new(GuardStats::default());
        let (wake, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let enforce = mode == GuardMode::Enforce;
        let mut worker = Worker {
            group: Arc::clone(&group),
            enforce,
            rules: Arc::clone(&rules),
            settings,
            cache: Arc::new(Mutex::new(HashCache::new(CACHE_ENTRIES))),
            hashing: Arc::new(AtomicUsize::new(0)),
            reports,
            stats: Arc::clone(&stats),
            me: std::process::id(),
            kernel: kernel.filter(|_| enforce),
        };
        let kernel = worker.kernel.clone();
        // Answering before the first mark: an exec held meanwhile is answered.
        let thread = std::thread::Builder::new()
            .name("picket-guard".into())
            .spawn(move || worker.run(&wake))?;
        let mut guard = Self {
            mode,
            rules,
            stats,
            marks: None,
            stop: Some(stop),
            thread: Some(thread),
        };
        guard.marks = Some(MarkedGroup::start(group, mask, what)?);
        // Only now that every filesystem brings tokens may a token-less exec be killed (an
        // exec from a filesystem not marked yet would be).
        if let Some(Err(e)) = kernel.as_ref().map(|k| set_kill_switch(k, true)) {
            log::warn!("{e}");
        }
        Ok(guard)
    }

    pub fn mode(&self) -> GuardMode {
        self.mode
    }

    /// Whether its thread still answers (it ends only when stopped, or on an error it could
    /// not go on after: the group is then closed, nothing is judged any more).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Judges by `rules` from the next exec on.
    pub fn set_rules(&self, rules: ExecRules) {
        *self.rules.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        drop(self.marks.take());
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The guard's thread.
struct Worker {
    group: Arc<nix::sys::fanotify::Fanotify>,
    enforce: bool,
    rules: Arc<Mutex<Arc<ExecRules>>>,
    settings: Settings,
    cache: Arc<Mutex<HashCache>>,
    /// Files being hashed by hashing threads.
    hashing: Arc<AtomicUsize>,
    reports: mpsc::Sender<GuardReport>,
    stats: Arc<GuardStats>,
    me: u32,
    kernel: Option<KernelSide>,
}

/// Turns the kernel side's killing off when the thread ends, however it ends.
struct SwitchOff(Option<KernelSide>, mpsc::Sender<GuardReport>);

impl Drop for SwitchOff {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.0.as_ref().map(|k| set_kill_switch(k, false)) {
            let _ = self.1.try_send(GuardReport::Note(e));
        }
    }
}

/// Events read at once, at most: the stop is looked at between batches.
const BATCH_EVENTS: usize = 32;

impl Worker {
    /// Answers events until `stop` is closed.
    fn run(&mut self, stop: &OwnedFd) {
        // Switched on by `ExecGuard::start` once every filesystem is marked.
        let _off = SwitchOff(self.kernel.clone(), self.reports.clone());
        let mut buf = vec![0u64; BATCH_BYTES / 8];
        let mut lost = 0u64;
        loop {
            let mut fds = [
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.group.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    // Returning closes the group: the kernel allows what waits.
                    self.note(format!("exec guard stopped: waiting for events: {e}"));
                    return;
                }
                Ok(_) => {}
            }
            if fds[0].any().unwrap_or(true) {
                return;
            }
            let before = lost;
            let group = Arc::clone(&self.group);
            fanotify::read_events(&group, &mut buf, &mut lost, BATCH_EVENTS, |o| {
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.handle(o.pid, &o.file)
                }));
                if handled.is_err() && self.enforce {
                    // A bug judging it: the exec runs rather than wait for ever.
                    let _ = group
                        .write_response(FanotifyResponse::new(o.file.as_fd(), Response::FAN_ALLOW));
                }
            });
            if lost > before {
                // An event the kernel could give no descriptor for: it refused that exec.
                self.note(format!(
                    "exec guard: {} events could not be read (out of descriptors?): the kernel \
                     refused those execs",
                    lost - before
                ));
            }
        }
    }

    /// Hands a line for the log to the event loop, if it has room.
    fn note(&self, line: String) {
        let _ = self.reports.try_send(GuardReport::Note(line));
    }

    /// Judges one exec and answers it.
    fn handle(&self, pid: u32, file: &File) {
        let refusal = if pid == self.me {
            None
        } else {
            self.stats.judged.fetch_add(1, Ordering::Relaxed);
            self.judge(pid, file)
        };
        let allow = match &refusal {
            None => true,
            Some(_) => !self.enforce,
        };
        if self.enforce {
            if allow {
                self.token(pid);
            }
            let response = if allow {
                Response::FAN_ALLOW
            } else {
                Response::FAN_DENY
            };
            if let Err(e) = self
                .group
                .write_response(FanotifyResponse::new(file.as_fd(), response))
            {
                self.note(format!("exec guard: answering the exec of pid {pid}: {e}"));
            }
        }
        let Some((path, refusal)) = refusal else {
            return;
        };
        if self.enforce {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        let decision = ExecDecision {
            pid,
            path,
            refusal,
            enforced: self.enforce,
        };
        // Refused whatever its content: its SHA-256, for the report, is taken off this thread.
        if let Refusal::Unknown { sha256: None } = decision.refusal {
            self.report_hashed(decision, file);
        } else {
            self.report(decision);
        }
    }

    fn report(&self, decision: ExecDecision) {
        if self
            .reports
            .try_send(GuardReport::Decision(decision))
            .is_err()
        {
            self.stats.unreported.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reports `decision` with the SHA-256 of `file`: at once when cached, else from a hashing
    /// thread when one is free, else without it.
    fn report_hashed(&self, mut decision: ExecDecision, file: &File) {
        let Ok(meta) = file.metadata() else {
            return self.report(decision);
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cached(&meta);
        if let Ok(Some(d)) = cached {
            decision.refusal = Refusal::Unknown {
                sha256: Some(d.sha256),
            };
            return self.report(decision);
        }
        let reports = self.reports.clone();
        let stats = Arc::clone(&self.stats);
        let on_hash = move |sha: Result<[u8; 32], String>| {
            decision.refusal = Refusal::Unknown { sha256: sha.ok() };
            if reports.try_send(GuardReport::Decision(decision)).is_err() {
                stats.unreported.fetch_add(1, Ordering::Relaxed);
            }
        };
        if let Err(on_hash) = self.hash_in_background(file, &meta, on_hash) {
            on_hash(Err("no hashing thread free".into()));
        }
    }

    /// Tells the exec program that `pid`'s exec was allowed, now.
    fn token(&self, pid: u32) {
        let Some(kernel) = &self.kernel else {
            return;
        };
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        let mut k = kernel.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = k.tokens.insert(pid, now, 0) {
            drop(k);
            self.note(format!("exec guard: the token of pid {pid}: {e}"));
        }
    }

    /// Why the exec of `file` by `pid` is refused, `None` when it may run.
    fn judge(&self, pid: u32, file: &File) -> Option<(PathBuf, Refusal)> {
        let rules = Arc::clone(&self.rules.lock().unwrap_or_else(|e| e.into_inner()));
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                self.note(format!(
                    "exec guard: fstat of an exec by pid {pid}: {e}; allowed"
                ));
                return None;
            }
        };
        let Some((path, deleted)) = descriptor_path(file) else {
            self.note(format!(
                "exec guard: the path of an exec by pid {pid} could not be read; allowed"
            ));
            return None;
        };
        let sha256 = || self.sha256(file, &meta);
        let refusal = match path.to_str() {
            Some(p) => rules.baseline.refusal(p, deleted, sha256),
            // No policy path is anything but UTF-8.
            None => Some(Refusal::Unknown { sha256: None }),
        };
        let refusal = match refusal {
            Some(Refusal::Unverified { error, expected }) if error == TIMED_OUT => {
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                self.note(format!(
                    "exec guard: {} not hashed within {:?}: {} (pid {pid})",
                    path.display(),
                    self.settings.decision_time,
                    if self.settings.allow_on_timeout {
                        "allowed, the default answer"
                    } else {
                        "refused, the configured answer"
                    }
                ));
                if self.settings.allow_on_timeout {
                    return None;
                }
                Refusal::Unverified {
                    expected,
                    error: TIMED_OUT.into(),
                }
            }
            Some(r) => r,
            None => return None,
        };
        if exempt(pid, &path, &rules).is_some() {
            return None;
        }
        Some((path, refusal))
    }

    /// The SHA-256 of `file`: cached, or hashed within the decision time.
    fn sha256(&self, file: &File, meta: &Metadata) -> Result<[u8; 32], String> {
        match self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cached(meta)
        {
            Ok(Some(d)) => return Ok(d.sha256),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if !self.enforce {
            // Nothing waits in the dry run: the file is hashed here however long it takes,
            // so that a slow disk or a large file never hides what enforcing would refuse.
            let digest = hash::digest_of_file(file, meta).map_err(|e| e.to_string())?;
            if settled(meta) {
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .store(meta, &digest);
            }
            return Ok(digest.sha256);
        }
        let (tx, rx) = std_mpsc::sync_channel(1);
        let sent = self.hash_in_background(file, meta, move |sha| {
            let _ = tx.send(sha);
        });
        if sent.is_err() {
            return Err(TIMED_OUT.into());
        }
        rx.recv_timeout(self.settings.decision_time)
            .unwrap_or_else(|_| Err(TIMED_OUT.into()))
    }

    /// Hashes `file` on a thread of its own, keeps the digest for the next exec of that file,
    /// and hands the result to `done`; gives `done` back when no thread is free.
    fn hash_in_background<F>(&self, file: &File, meta: &Metadata, done: F) -> Result<(), F>
    where
        F: FnOnce(Result<[u8; 32], String>) + Send + 'static,
    {
        if self.hashing.fetch_add(1, Ordering::AcqRel) >= MAX_WORKERS {
            self.hashing.fetch_sub(1, Ordering::AcqRel);
            return Err(done);
        }
        let Ok(file) = file.try_clone() else {
            self.hashing.fetch_sub(1, Ordering::AcqRel);
            return Err(done);
        };
        let (meta, cache, hashing) = (meta.clone(), self.cache.clone(), self.hashing.clone());
        let done = Arc::new(Mutex::new(Some(done)));
        let in_thread = Arc::clone(&done);
        let spawned = std::thread::Builder::new()
            .name("picket-hash".into())
            .spawn(move || {
                let digest = hash::digest_of_file(&file, &meta);
                if let Ok(d) = &digest {
                    // Not kept when the file changed within the last moments: a same-size
                    // rewrite within one tick of the clock that stamps ctime would keep it.
                    if settled(&meta) {
                        cache
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .store(&meta, d);
                    }
                }
                hashing.fetch_sub(1, Ordering::AcqRel);
                let taken = in_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(done) = taken {
                    done(digest.map(|d| d.sha256).map_err(|e| e.to_string()));
                }
            });
        if spawned.is_err() {
            self.hashing.fetch_sub(1, Ordering::AcqRel);
            let taken = done.lock().unwrap_or_else(|e| e.into_inner()).take();
            return match taken {
                Some(done) => Err(done),
                None => Ok(()),
            };
        }
        Ok(())
    }
}

/// Whether the file whose `fstat` is `meta` last changed long enough ago (2 s, more than the
/// coarsest ctime a filesystem keeps) for its digest to be kept by identity.
fn settled(meta: &Metadata) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - meta.ctime() >= 2
}

/// The error of a hash not established within the decision time.
const TIMED_OUT: &str = "not hashed within the decision time";

/// The path of an open descriptor, and whether its file was deleted (the kernel appends
/// ` (deleted)`, taken off here); `None` when it cannot be read.
fn descriptor_path(file: &File) -> Option<(PathBuf, bool)> {
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    let path = std::fs::read_link(link).ok()?;
    let deleted = file.metadata().is_ok_and(|m| m.nlink() == 0);
    if deleted {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        if let Some(live) = bytes.strip_suffix(b" (deleted)") {
            return Some((crate::paths::from_bytes(live), true));
        }
    }
    Some((path, deleted))
}

/// Why the exec of `path` by `pid` is never refused, if it is one of those.
fn exempt(pid: u32, path: &Path, rules: &ExecRules) -> Option<&'static str> {
    if pid == 1 {
        return Some("init");
    }
    if rules.own_exe.as_deref() == Some(path) {
        return Some("the agent's own executable");
    }
    if parent_is_kernel_thread(pid) {
        return Some("started by the kernel");
    }
    None
}

/// Whether the parent of `pid` is a kernel thread: a user-mode helper the kernel runs
/// (`modprobe`, hotplug, core dump pipes, ...).
fn parent_is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let field = |pid: u32, n: usize| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        crate::enrich::process::stat_field(&stat, n)?.parse().ok()
    };
    let Some(ppid) = field(pid, 1).and_then(|p| u32::try_from(p).ok()) else {
        return false;
    };
    ppid == 2 || (ppid != 0 && field(ppid, 6).is_some_and(|f| f & PF_KTHREAD != 0))
}

/// Raises the soft limit of open descriptors to the hard one: an event the kernel cannot give
/// a descriptor for is lost, and a permission event lost that way is refused.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` and `setrlimit` read and write the one struct passed, which lives
    // across both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
