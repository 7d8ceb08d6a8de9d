//! Which file an exec ran, from the files the kernel opened for execs ([`ExecWatch`]).
//!
//! The listener's events (an open descriptor per exec open, with the PID) arrive apart from the
//! ring buffer's records, but never later than needed: the kernel opens the file before the
//! exec succeeds and the `sched_process_exec` record is written, so when the record is read, its
//! open has been queued. Events are read when a record needs them, and each is turned at once
//! into what is kept (the name the kernel gives the descriptor, its `fstat`, its digest: a cache
//! hit for files already seen), so no descriptor is held between records.
//!
//! A process's events are matched to its exec records in order. One exec opens, in turn, the
//! file it runs, a script's interpreter, and an ELF program's loader (`PT_INTERP`); an exec that
//! fails after opening its file (too many arguments, a format no handler takes) leaves that open
//! behind. So for each record the file is looked for among the process's events by the name the
//! exec used (canonical: symbolic links resolved, as the kernel names the descriptor); events
//! before it were failed attempts and are dropped, and the interpreters after it are taken
//! with it. A file renamed since its exec no longer has the name: the process's first event
//! that is not a known ELF loader is taken for it, if that file's ctime says it changed around
//! or after the exec. An exec through a descriptor (`/proc/self/fd/N`, `/dev/fd/N`, `execveat`
//! with `AT_EMPTY_PATH`) has no name to match: its file is the process's first event that is
//! not a known ELF loader. A memory file brings no event (its filesystem cannot be marked), nor
//! does `execveat(fd, "", AT_EMPTY_PATH)` before Linux 6.5: those are identified through
//! `/proc` while their process lives.
//!
//! Limits: a file written after its exec and before its event is read has lost the bytes that
//! ran (said, when its modification time shows it); a file's identity is read when its event
//! is, so an in-place rewrite within a coarse clock tick of its exec goes unseen. A memory
//! `#!` script is taken for its interpreter.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::{File, Metadata},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::hash::{Digest, HashCache};
use crate::sensors::fanotify::{ExecWatch, Opened};

/// Events kept per process, oldest dropped first (only failed exec attempts pile up).
const PER_PROCESS: usize = 16;
/// Events kept in all: a backlog of records in the ring buffer means as many events read ahead.
const TOTAL: usize = 8192;
/// Events read from the listener at once (each is a descriptor until it is handled).
const READ_AT_ONCE: usize = 1024;
/// Reads one record makes at most, looking for its event: a bound on the backlog read at once.
const MAX_READS: usize = 64;
/// ELF loaders remembered (a system has a handful).
const LOADERS: usize = 64;
/// Canonical forms of names kept.
const NAMES: usize = 1024;
/// `binfmt_script` nests at most this deep (`BINPRM_MAX_RECURSION`), plus the loader.
const CHAIN: usize = 5;
/// How far before its exec a file's stamp may lie and still be from after it: the kernel stamps
/// files from a coarse clock, up to a tick behind real time (10 ms at HZ=100). A stamp is never
/// ahead of real time.
const TICK_NS: i64 = 20_000_000;
/// How far the wall-clock time of an exec (its boot-clock stamp plus the clocks' offset now)
/// may be off.
const OFFSET_NS: i64 = 2_000_000;

/// How an exec named its file.
#[derive(Debug)]
pub enum Name<'a> {
    /// An absolute, normalised path.
    Path(&'a Path),
    /// A descriptor; what the process table knows it to be, if anything.
    Fd(Option<&'a Path>),
    /// `execveat(fd, "", AT_EMPTY_PATH)` on a kernel that reports no open for it (before Linux
    /// 6.5, `do_open_execat` notified only opens by a non-empty name).
    Unseen,
    /// `/proc/self/exe`: the process's own executable again.
    OwnExe,
}

/// The file an exec ran.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The file's name: for an exec by path, the name it had then (what the exec named,
    /// symbolic links resolved); for an exec through a descriptor, the kernel's name for it now
    /// (`... (deleted)` when unlinked).
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i64,
    pub size: u64,
    /// No link to it was left (only said of execs through a descriptor: a file exec'd by path
    /// had one then, whatever happened to it since).
    pub deleted: bool,
    pub digest: Result<Digest, String>,
    /// The interpreter it ran under (a script's), as the kernel opened it.
    pub interpreter: Option<PathBuf>,
}

/// One exec open, as kept.
#[derive(Debug)]
struct Seen {
    path: PathBuf,
    dev: u64,
    ino: u64,
    ctime_ns: i64,
    mtime_ns: i64,
    size: u64,
    nlink: u64,
    digest: Result<Digest, String>,
}

/// Matches the listener's events to exec records.
pub struct ExecFiles {
    watch: Option<ExecWatch>,
    pending: HashMap<u32, VecDeque<Seen>>,
    total: usize,
    /// Name used → the kernel's name for it (symbolic links resolved).
    names: HashMap<PathBuf, PathBuf>,
    /// (device, inode, ctime) → the kernel's name of that file: a rename or an unlink changes
    /// the ctime, so a file seen before is named without asking the kernel again (a renamed
    /// directory above it is not seen: an exec by path is then matched by identity).
    kernel_names: HashMap<(u64, u64, i64), PathBuf>,
    /// Canonical paths of the ELF loaders seen (what `PT_INTERP` names).
    loaders: HashSet<PathBuf>,
    /// Loaders whose exec opens the listener ignores (an inode ignore mark: half the events of
    /// a dynamic program's exec), with their file as it was when ignored. Writing to one clears
    /// its mark, and its events come again; until then, an exec of a loader itself (`ldd` runs
    /// it) is this file, when its path still leads to it unchanged.
    ignored: HashMap<PathBuf, Ran>,
    /// Per process, the file its last exec ran, and the interpreter it runs under (a script's):
    /// fanotify merges an open that is the same as one still queued (same file, same process),
    /// so a process that executes the same file twice before the first event is read brings
    /// one event for both.
    last: HashMap<u32, (Ran, Option<Ran>)>,
    /// Events dropped (per-process or total bound, or unreadable).
    pub dropped: u64,
    /// When losses were last said in the log (at most once a minute).
    warned: Option<std::time::Instant>,
    /// Whether this kernel reports the open of `execveat(fd, "", AT_EMPTY_PATH)` (6.5+).
    empty_path_events: bool,
}

impl ExecFiles {
    /// Matches the events of `watch`; with `None`, every lookup misses.
    pub fn new(watch: Option<ExecWatch>) -> Self {
        // The loaders of this system, known before the first exec: an exec whose own file
        // brings no event is not mistaken for its loader's.
        let loaders = if watch.is_some() {
            ["/proc/self/exe", "/proc/1/exe", "/bin/sh", "/usr/bin/env"]
                .iter()
                .filter_map(|p| super::hash::elf_interp_of(Path::new(p)))
                .filter_map(|l| std::fs::canonicalize(l).ok())
                .collect()
        } else {
            HashSet::new()
        };
        Self {
            watch,
            pending: HashMap::new(),
            total: 0,
            names: HashMap::new(),
            kernel_names: HashMap::new(),
            loaders,
            ignored: HashMap::new(),
            last: HashMap::new(),
            dropped: 0,
            warned: None,
            empty_path_events: kernel_at_least(6, 5),
        }
    }

    /// Whether an exec of `path` brings an event: a listener runs and the file's filesystem is
    /// marked.
    pub fn sees(&self, path: &Path) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|w| std::fs::metadata(path).is_ok_and(|m| w.watches(m.dev())))
    }

    /// Whether this kernel reports the open of `execveat(fd, "", AT_EMPTY_PATH)`.
    pub fn sees_empty_path(&self) -> bool {
        self.empty_path_events
    }

    /// Whether a listener feeds this.
    pub fn active(&self) -> bool {
        self.watch.is_some()
    }

    /// The file that the exec of `pid`, which named it `name`, ran at `exec_real_ns` (wall
    /// clock), with its digest. Takes it, the failed attempts before it and the interpreters
    /// opened after it.
    ///
    /// The digest is of the file as it is when its event is read, moments after the exec: a
    /// file written after its exec (its modification time says so) has no digest, as the bytes
    /// that ran are gone.
    pub fn take(
        &mut self,
        pid: u32,
        name: Name<'_>,
        exec_real_ns: i64,
        hashes: &mut HashCache,
    ) -> Option<Ran> {
        // Since the exec, and no later than now (a clock set back leaves files stamped "in the
        // future": those are not taken for changes made since the exec). Now is when the stamp
        // is judged, not when the record was taken up: the events are read in between, and a
        // file renamed meanwhile carries a stamp from after the record's start.
        let not_future = |stamp: i64| stamp <= wall_clock_now_ns().saturating_add(OFFSET_NS);
        // Surely after the exec (a stamp is never ahead of the time it was made).
        let since_exec =
            |stamp: i64| stamp > exec_real_ns.saturating_add(OFFSET_NS) && not_future(stamp);
        // Maybe after the exec (a stamp up to a tick behind may be from after it).
        let around_exec = |stamp: i64| {
            stamp > exec_real_ns.saturating_sub(TICK_NS + OFFSET_NS) && not_future(stamp)
        };
        let mut found = self.find(pid, &name, &around_exec);
        // The record's own event was queued before the record: read until it is found or the
        // queue is empty. Events no record claims (execs from before the sensors attached, or
        // whose records were lost) can stand before it, more than one read takes.
        for _ in 0..MAX_READS {
            if found.is_some() {
                break;
            }
            let read = self.drain(hashes);
            found = self.find(pid, &name, &around_exec);
            if read < READ_AT_ONCE {
                break;
            }
        }
        let Some(found) = found else {
            let merged = self
                .merged(pid, &name)
                .or_else(|| self.ignored_loader(&name));
            if merged.is_none() {
                // What this process runs now is not known: `/proc/self/exe` is not its last.
                self.last.remove(&pid);
            }
            return merged;
        };
        let queue = self.pending.get_mut(&pid)?;
        let head = queue.drain(..=found.index).next_back()?;
        self.total -= found.index + 1;
        let path = match (&name, found.by_name) {
            // The name it was opened by, as the kernel resolved it, even if renamed or
            // unlinked since; or, if it no longer has that name, the name the exec used.
            (Name::Path(_), true) => found.renamed.unwrap_or_else(|| strip_deleted(head.path)),
            (Name::Path(used), false) => used.to_path_buf(),
            _ => head.path,
        };
        // What the kernel opened after it, as the file says (even if its digest is refused).
        let chain = head.digest.as_ref().ok().and_then(interpreter_of);
        let digest = if since_exec(head.mtime_ns) {
            Err(format!(
                "written {} ms after it was executed: the bytes that ran are gone",
                head.mtime_ns.saturating_sub(exec_real_ns) / 1_000_000
            ))
        } else {
            head.digest
        };
        // Unlinked at the exec, not since (an upgrade replacing it: its ctime says when).
        let deleted =
            head.nlink == 0 && !matches!(name, Name::Path(_)) && !since_exec(head.ctime_ns);
        let mut ran = Ran {
            path,
            dev: head.dev,
            ino: head.ino,
            ctime_ns: head.ctime_ns,
            size: head.size,
            deleted,
            digest,
            interpreter: None,
        };
        let image = self.take_interpreters(pid, &mut ran, chain);
        self.last.insert(pid, (ran.clone(), image));
        Some(ran)
    }

    /// Takes the interpreters the kernel opened after `ran` for `pid`'s exec, each named by the
    /// one before, starting with `chain` (a script's `#!` interpreter, an ELF program's
    /// loader); notes the script's. Returns the script interpreter's file: what the process
    /// runs (its `/proc/self/exe`).
    fn take_interpreters(
        &mut self,
        pid: u32,
        ran: &mut Ran,
        chain: Option<(PathBuf, bool)>,
    ) -> Option<Ran> {
        let mut next = chain;
        let mut image = None;
        for _ in 0..CHAIN {
            let Some((interp, elf)) = next.take() else {
                break;
            };
            let canonical = self.canonical(&interp);
            if elf && self.loaders.len() < LOADERS {
                self.loaders.insert(canonical.clone());
            }
            let Some(queue) = self.pending.get_mut(&pid) else {
                break;
            };
            if queue
                .front()
                .is_none_or(|s| !same_name(&s.path, &canonical))
            {
                break;
            }
            let Some(seen) = queue.pop_front() else {
                break;
            };
            self.total -= 1;
            next = seen.digest.as_ref().ok().and_then(interpreter_of);
            if elf {
                self.ignore(&canonical, &seen);
            } else {
                ran.interpreter = Some(strip_deleted(seen.path.clone()));
                image = Some(ran_of(&seen, strip_deleted(seen.path.clone())));
            }
        }
        image
    }

    /// The file of an exec that brought no event, when it can only be the file of the
    /// process's previous exec (the two opens were merged into one event): `/proc/self/exe`
    /// runs the process's own file again (it could not be written while it ran); an exec by a
    /// path that leads to that same file, unchanged (by the same name, or another link to it:
    /// busybox's applets).
    fn merged(&self, pid: u32, name: &Name<'_>) -> Option<Ran> {
        let (file, image) = self.last.get(&pid)?;
        match name {
            Name::OwnExe => Some(image.as_ref().unwrap_or(file).clone()),
            Name::Path(used) => {
                let meta = std::fs::metadata(used).ok()?;
                let same = |ran: &&Ran| {
                    meta.dev() == ran.dev
                        && meta.ino() == ran.ino
                        && ctime_ns(&meta) == ran.ctime_ns
                        && meta.len() == ran.size
                };
                let ran = [Some(file), image.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(same)?;
                Some(Ran {
                    path: std::fs::canonicalize(used).unwrap_or_else(|_| used.to_path_buf()),
                    ..ran.clone()
                })
            }
            _ => None,
        }
    }

    /// Has the listener ignore the exec opens of `loader` (canonical path) of which `seen` is
    /// the event, if it does not yet.
    fn ignore(&mut self, loader: &Path, seen: &Seen) {
        if self.ignored.contains_key(loader) || self.ignored.len() >= LOADERS {
            return;
        }
        let Some(watch) = &self.watch else {
            return;
        };
        // The path leads to the file of the event still (else a later exec will tell).
        let same = std::fs::metadata(loader).is_ok_and(|m| {
            m.dev() == seen.dev && m.ino() == seen.ino && ctime_ns(&m) == seen.ctime_ns
        });
        if !same {
            return;
        }
        match watch.ignore(loader) {
            Ok(()) => {
                log::debug!("exec identity: loader {} ignored", loader.display());
                let ran = ran_of(seen, loader.to_path_buf());
                self.ignored.insert(loader.to_path_buf(), ran);
            }
            Err(e) => log::debug!("exec identity: ignoring {}: {e}", loader.display()),
        }
    }

    /// The file of an exec of an ignored loader by path, when the path leads to it unchanged.
    fn ignored_loader(&mut self, name: &Name<'_>) -> Option<Ran> {
        let Name::Path(used) = name else {
            return None;
        };
        let canonical = self.canonical(used);
        let ran = self.ignored.get(&canonical)?;
        let meta = std::fs::metadata(&canonical).ok()?;
        let same = meta.dev() == ran.dev
            && meta.ino() == ran.ino
            && ctime_ns(&meta) == ran.ctime_ns
            && meta.len() == ran.size;
        same.then(|| ran.clone())
    }

    /// Forgets what is kept for `pid`, which exited.
    pub fn exited(&mut self, pid: u32) {
        // Its opens still queued in the kernel, if any (exec attempts that failed), are read
        // later and kept until a process with the same PID execs a file by that name (they are
        // dropped as its failed attempts) or exits.
        if let Some(q) = self.pending.remove(&pid) {
            self.total -= q.len();
        }
        self.last.remove(&pid);
    }

    /// Where in `pid`'s events the file named `name` is.
    ///
    /// An exec by path whose name matches no event may have run a file renamed since: the
    /// process's first event that is not a loader is taken for it only when that file's ctime
    /// says it may have been changed (renamed) since the exec (`changed`); a file untouched
    /// since (the process's next exec, read ahead) is not.
    fn find(&mut self, pid: u32, name: &Name<'_>, changed: &dyn Fn(i64) -> bool) -> Option<Found> {
        let by_name = |index| Found {
            index,
            by_name: true,
            renamed: None,
        };
        let first = |index| Found {
            index,
            by_name: false,
            renamed: None,
        };
        let queue = self.pending.get(&pid)?;
        match name {
            Name::Path(path) => {
                let direct = queue.iter().position(|s| same_name(&s.path, path));
                if let Some(i) = direct {
                    return Some(by_name(i));
                }
                // Through a symbolic link: the kernel names the file it led to.
                let cached = self.names.get(*path).cloned();
                if let Some(c) = &cached {
                    if let Some(i) = queue.iter().position(|s| same_name(&s.path, c)) {
                        return Some(by_name(i));
                    }
                }
                let fresh = std::fs::canonicalize(path).ok();
                let queue = &self.pending[&pid];
                let hit = fresh
                    .as_ref()
                    .and_then(|f| queue.iter().position(|s| same_name(&s.path, f)));
                // The file the name leads to now, by identity (another hard link to it, or a
                // directory above it renamed since the kernel named it).
                if hit.is_none() {
                    if let Some(m) = fresh.as_ref().and_then(|f| std::fs::metadata(f).ok()) {
                        let same = |s: &Seen| s.dev == m.dev() && s.ino == m.ino();
                        if let Some(i) = queue.iter().position(same) {
                            return Some(Found {
                                index: i,
                                by_name: true,
                                renamed: fresh,
                            });
                        }
                    }
                }
                // Renamed since (the name now leads elsewhere, or nowhere).
                let found = hit.map(by_name).or_else(|| {
                    self.first_program(queue)
                        .filter(|&i| changed(queue[i].ctime_ns))
                        .map(first)
                });
                if let Some(fresh) = fresh.filter(|f| cached.as_ref() != Some(f)) {
                    if self.names.len() >= NAMES {
                        self.names.clear();
                    }
                    self.names.insert(path.to_path_buf(), fresh);
                }
                found
            }
            // What the process table knows of a descriptor can be stale (it does not follow
            // `close`: a memory file's number reused for a file): the file the kernel opened
            // decides. (A memory file brings no event, so its process's next exec, if read
            // already, would be taken for it: a payload that execs another program at once.)
            Name::Fd(Some(known)) => queue
                .iter()
                .position(|s| same_name(&s.path, known))
                .or_else(|| self.first_program(queue))
                .map(first),
            Name::Fd(None) => self.first_program(queue).map(first),
            // The file the process runs: its open, if not merged into the previous one.
            // (A process older than the agent: its first program.)
            Name::OwnExe => match self.last.get(&pid) {
                Some((file, image)) => {
                    let running = image.as_ref().unwrap_or(file);
                    queue
                        .iter()
                        .position(|s| s.dev == running.dev && s.ino == running.ino)
                        .map(first)
                }
                None => self.first_program(queue).map(first),
            },
            Name::Unseen => None,
        }
    }

    /// The first event that is not a known ELF loader.
    fn first_program(&self, queue: &VecDeque<Seen>) -> Option<usize> {
        queue.iter().position(|s| !self.loaders.contains(&s.path))
    }

    /// Reads the queued events into `pending`, at most [`READ_AT_ONCE`]; returns how many were
    /// read (fewer: the queue is empty).
    fn drain(&mut self, hashes: &mut HashCache) -> usize {
        let Some(mut watch) = self.watch.take() else {
            return 0;
        };
        let (lost, dropped) = (watch.lost, self.dropped);
        let read = watch.drain(READ_AT_ONCE, |Opened { pid, file }| {
            let Some(seen) = seen(&file, hashes, &mut self.kernel_names) else {
                self.dropped += 1;
                return;
            };
            if self.total >= TOTAL {
                // Events no record claimed (failed attempts, lost records) filled the store:
                // start afresh rather than refuse every new one.
                self.dropped += self.total as u64;
                self.pending.clear();
                self.total = 0;
            }
            let queue = self.pending.entry(pid).or_default();
            if queue.len() >= PER_PROCESS {
                queue.pop_front();
                self.dropped += 1;
                self.total -= 1;
            }
            queue.push_back(seen);
            self.total += 1;
        });
        let quiet = self
            .warned
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(60));
        if (watch.lost > lost || self.dropped > dropped) && !quiet {
            self.warned = Some(std::time::Instant::now());
            log::warn!(
                "exec listener: {} events lost in the kernel, {} dropped by the agent, so far: \
                 their execs are identified through /proc",
                watch.lost,
                self.dropped
            );
        }
        self.watch = Some(watch);
        read
    }

    /// The kernel's name for `path` (symbolic links resolved), cached.
    fn canonical(&mut self, path: &Path) -> PathBuf {
        if let Some(c) = self.names.get(path) {
            return c.clone();
        }
        let c = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.names.len() >= NAMES {
            self.names.clear();
        }
        self.names.insert(path.to_path_buf(), c.clone());
        c
    }
}

/// Where a file was found among a process's events.
struct Found {
    index: usize,
    /// Found by the name the exec used (else: the first event that is not a loader).
    by_name: bool,
    /// Found by identity: the file's name now, which the kernel's may not be.
    renamed: Option<PathBuf>,
}

/// The change marker of `meta`, in nanoseconds.
pub(crate) fn ctime_ns(meta: &Metadata) -> i64 {
    meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec()
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(u) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = u.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Now, on the wall clock, in nanoseconds since the Unix epoch.
fn wall_clock_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `path` without the ` (deleted)` the kernel appends to the name of an unlinked file.
fn strip_deleted(path: PathBuf) -> PathBuf {
    match path
        .as_os_str()
        .as_encoded_bytes()
        .strip_suffix(b" (deleted)")
    {
        Some(p) => crate::paths::from_bytes(p),
        None => path,
    }
}

/// The file of event `seen`, named `path`.
fn ran_of(seen: &Seen, path: PathBuf) -> Ran {
    Ran {
        path,
        dev: seen.dev,
        ino: seen.ino,
        ctime_ns: seen.ctime_ns,
        size: seen.size,
        deleted: false,
        digest: seen.digest.clone(),
        interpreter: None,
    }
}

/// What is kept of one exec open: its name, identity and digest.
fn seen(
    file: &File,
    hashes: &mut HashCache,
    names: &mut HashMap<(u64, u64, i64), PathBuf>,
) -> Option<Seen> {
    let meta: Metadata = file.metadata().ok()?;
    let key = (meta.dev(), meta.ino(), ctime_ns(&meta));
    let path = match names.get(&key) {
        Some(p) => p.clone(),
        None => {
            let p = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
            if names.len() >= NAMES * 4 {
                names.clear();
            }
            names.insert(key, p.clone());
            p
        }
    };
    let digest = hashes.digest_file(file, &meta).map_err(|e| e.to_string());
    Some(Seen {
        path,
        dev: meta.dev(),
        ino: meta.ino(),
        ctime_ns: ctime_ns(&meta),
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        size: meta.len(),
        nlink: meta.nlink(),
        digest,
    })
}

/// The interpreter a file names, and whether it is an ELF loader (else a script's).
fn interpreter_of(d: &Digest) -> Option<(PathBuf, bool)> {
    match (&d.shebang, &d.elf_interp) {
        (Some(s), _) => Some((s.clone(), false)),
        (None, Some(l)) => Some((l.clone(), true)),
        (None, None) => None,
    }
}

/// Whether the kernel's name `kernel` (maybe ending in ` (deleted)`) is `path`.
fn same_name(kernel: &Path, path: &Path) -> bool {
    let k = kernel.as_os_str().as_encoded_bytes();
    let p = path.as_os_str().as_encoded_bytes();
    k == p || k.strip_suffix(b" (deleted)") == Some(p)
}

#[cfg(test)]
mod tests;
