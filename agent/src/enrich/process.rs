//! The process table: what the agent knows of each live process, kept from fork, exec, exit and
//! chdir events, so that every event carries its process's executable, arguments and ancestry
//! even when the process is already gone by the time user space reads the event.
//!
//! Processes that existed before the agent started are read from `/proc` the first time they
//! are seen. The table is bounded: exited processes are kept a little (their children's
//! ancestry refers to them) and evicted oldest first.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    ffi::OsString,
    fs,
    hash::{BuildHasherDefault, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::script::{applet_of, code_of, Code, ScriptDigest};
use crate::paths;

/// Longest ancestry chain reported.
pub const MAX_ANCESTRY: usize = 16;
/// Exited processes kept for their descendants' ancestry.
const KEEP_EXITED: usize = 4096;
/// Upper bound on entries; beyond it the oldest exited ones go first, then any.
const MAX_ENTRIES: usize = 65536;

/// What a process runs: set at exec, shared (not copied) by its forks and by the events that
/// report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// The executable: the file it exec'd (a script, for `#!` scripts).
    pub exe: Option<PathBuf>,
    pub sha256: Option<[u8; 32]>,
    pub argv: Vec<Vec<u8>>,
    /// For an interpreter, the code it runs (kept when the process exits, for its children's
    /// lineage).
    pub code: Option<Code>,
    /// The SHA-256 of that script file when it is one, or why it could not be taken.
    pub script_sha256: Option<ScriptDigest>,
    /// For a multi-call binary (busybox), the applet it runs.
    pub applet: Option<OsString>,
}

impl Image {
    /// What the process runs, as lineage names it: the script an interpreter runs, else the
    /// executable, with its applet for a multi-call binary (`/usr/bin/busybox#sh`: a web
    /// server running busybox's `wget` is not one running its shell).
    pub fn program(&self) -> Option<Cow<'_, Path>> {
        match &self.code {
            Some(Code::Script(p)) if p.is_absolute() => Some(Cow::Borrowed(p)),
            _ => {
                let exe = self.exe.as_deref()?;
                Some(match &self.applet {
                    Some(applet) => {
                        let mut named = exe.as_os_str().to_owned();
                        named.push("#");
                        named.push(applet);
                        Cow::Owned(PathBuf::from(named))
                    }
                    None => Cow::Borrowed(exe),
                })
            }
        }
    }
}

/// What is known about one process.
#[derive(Debug, Clone, Default)]
pub struct Process {
    pub ppid: Option<u32>,
    pub image: Arc<Image>,
    /// What it ran before its last exec (`None` until it execs): a dry-run exec decision,
    /// reported whether or not the exec went ahead by then, names the image that asked for the
    /// exec, as an enforced one does.
    pub previous: Option<Arc<Image>>,
    /// Whether hashing the running executable was tried already (for processes older than the
    /// agent): a file that cannot be hashed is not retried on every event.
    pub hash_tried: bool,
    /// Working directory, as tracked from chdir events (or read from `/proc`).
    pub cwd: Option<Arc<Path>>,
    /// Files this process opened for writing, by fd, newest last: resolves `fchmod(fd)` and
    /// friends once the process (and its `/proc/PID/fd`) is gone. Bounded by [`MAX_OPEN_FILES`].
    pub files: Vec<(i32, Arc<Path>)>,
    pub exited: bool,
    /// What the sensors saw of its mount namespace (inherited by its children).
    pub mount_ns: MountNs,
}

/// What the sensors saw of a process's mount namespace since they started: what tells a
/// sandbox's mounts from the device's once the process (and its `/proc` entry) is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MountNs {
    /// No change seen: its parent's.
    #[default]
    Inherited,
    /// A new one of its own (`unshare(CLONE_NEWNS)`, by it or by an ancestor before the fork).
    Private,
    /// It joined another (`setns`): which one only `/proc` could say.
    Joined,
}

/// Open files remembered per process.
const MAX_OPEN_FILES: usize = 16;

impl Process {
    /// Remembers that `fd` is `path`.
    pub fn opened(&mut self, fd: i32, path: &Path) {
        if let Some(i) = self.files.iter().position(|(f, _)| *f == fd) {
            // The same fd reopened on the same file (a loop of open/close): nothing to copy.
            if *self.files[i].1 == *path && i + 1 == self.files.len() {
                return;
            }
            self.files.remove(i);
        }
        if self.files.len() == MAX_OPEN_FILES {
            self.files.remove(0);
        }
        self.files.push((fd, Arc::from(path)));
    }

    /// The path of `fd`, if this process opened it for writing.
    pub fn file(&self, fd: i32) -> Option<&Arc<Path>> {
        self.files
            .iter()
            .rev()
            .find(|(f, _)| *f == fd)
            .map(|(_, p)| p)
    }
}

/// One link of an ancestry chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ancestor {
    pub pid: u32,
    /// What the ancestor ran at the time (its executable is `image.exe`).
    pub image: Arc<Image>,
}

impl Ancestor {
    pub fn exe(&self) -> Option<&Path> {
        self.image.exe.as_deref()
    }
}

/// Hashes process ids: they are small integers chosen by the kernel, so a multiplicative hash
/// spreads them well and costs a fraction of the default (SipHash).
#[derive(Default)]
pub struct PidHasher(u64);

impl Hasher for PidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by process id.
pub type PidMap<V> = HashMap<u32, V, BuildHasherDefault<PidHasher>>;

/// All known processes.
#[derive(Default)]
pub struct ProcessTable {
    procs: PidMap<Process>,
    exited: VecDeque<u32>,
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The process `pid`, read from `/proc` if it is not known yet.
    pub fn get(&mut self, pid: u32) -> &mut Process {
        if !self.procs.contains_key(&pid) {
            let p = from_proc(pid);
            self.insert(pid, p);
        }
        self.procs.entry(pid).or_default()
    }

    /// The process `pid` if known, without reading `/proc`.
    pub fn peek(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    /// `parent` forked `child`: the child starts as a copy of its parent (sharing its image and
    /// working directory, not copying them).
    pub fn fork(&mut self, parent: u32, child: u32) {
        // The child works where its parent did. A parent older than the agent has its working
        // directory read now, while it lives: a short-lived child is often gone before its own
        // `/proc` entry could be read, and a relative exec would then be resolved against `/`.
        self.cwd(parent);
        let mut p = self.get(parent).clone();
        p.ppid = Some(parent);
        p.exited = false;
        p.previous = None;
        // Descriptors are inherited, so the parent's open files stay valid for the child.
        self.insert(child, p);
    }

    /// `pid` exec'd `exe`.
    pub fn exec(
        &mut self,
        pid: u32,
        exe: Option<PathBuf>,
        sha256: Option<[u8; 32]>,
        argv: Vec<Vec<u8>>,
        code: Option<(Code, Option<ScriptDigest>)>,
    ) {
        let applet = exe.as_deref().and_then(|e| applet_of(e, &argv));
        let p = self.get(pid);
        let (code, script_sha256) = code.map_or((None, None), |(c, d)| (Some(c), d));
        let image = Arc::new(Image {
            applet,
            exe,
            sha256,
            argv,
            code,
            script_sha256,
        });
        p.previous = Some(std::mem::replace(&mut p.image, image));
        p.hash_tried = true;
        // Descriptors survive exec, but a close-on-exec one may be reused: forget them.
        p.files.clear();
    }

    /// `pid` exited.
    pub fn exit(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            if !p.exited {
                p.exited = true;
                self.exited.push_back(pid);
                // Kept only for its descendants' ancestry (pid, parent, executable): its
                // arguments, open files and directory are dropped, so that the exited
                // processes kept weigh little even when their command lines were long.
                // The image before its exec stays (a dry-run exec decision may be reported
                // after the exit), as light.
                for image in std::iter::once(&mut p.image).chain(p.previous.as_mut()) {
                    if let Some(image) = Arc::get_mut(image) {
                        image.argv = Vec::new();
                    }
                }
                p.files = Vec::new();
                p.cwd = None;
            }
        }
        while self.exited.len() > KEEP_EXITED {
            if let Some(old) = self.exited.pop_front() {
                // The pid may have been reused by a live process since.
                if self.procs.get(&old).is_some_and(|p| p.exited) {
                    self.procs.remove(&old);
                }
            }
        }
    }

    /// The working directory of `pid`: tracked, else read from `/proc`.
    pub fn cwd(&mut self, pid: u32) -> Option<Arc<Path>> {
        let p = self.get(pid);
        if p.cwd.is_none() && !p.exited {
            p.cwd = paths::read_proc_link(pid, "cwd").map(Arc::from);
        }
        p.cwd.clone()
    }

    /// `pid` changed its working directory to `cwd`.
    pub fn set_cwd(&mut self, pid: u32, cwd: PathBuf) {
        self.get(pid).cwd = Some(Arc::from(cwd));
    }

    /// The chain of parents of `pid`, nearest first, up to pid 1 or [`MAX_ANCESTRY`] links.
    pub fn ancestry(&mut self, pid: u32) -> Vec<Ancestor> {
        let mut chain: Vec<Ancestor> = Vec::new();
        let mut current = self.get(pid).ppid;
        while let Some(ppid) = current {
            if ppid == 0 || chain.len() == MAX_ANCESTRY || chain.iter().any(|a| a.pid == ppid) {
                break;
            }
            let parent = self.get(ppid);
            if chain.is_empty() {
                chain.reserve(4);
            }
            chain.push(Ancestor {
                pid: ppid,
                image: Arc::clone(&parent.image),
            });
            if ppid == 1 {
                break;
            }
            current = parent.ppid;
        }
        chain
    }

    /// Number of processes held.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether no process is held.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    fn insert(&mut self, pid: u32, p: Process) {
        if self.procs.len() >= MAX_ENTRIES && !self.procs.contains_key(&pid) {
            self.evict_one();
        }
        self.procs.insert(pid, p);
    }

    fn evict_one(&mut self) {
        while let Some(old) = self.exited.pop_front() {
            if self.procs.get(&old).is_some_and(|p| p.exited) {
                self.procs.remove(&old);
                return;
            }
        }
        // Every entry is live: drop an arbitrary one; it will be re-read from /proc if needed.
        if let Some(&any) = self.procs.keys().next() {
            self.procs.remove(&any);
        }
    }
}

/// Reads what `/proc` says of a process the agent has not seen start. Missing pieces stay
/// `None`: the process may be a kernel thread, or gone.
fn from_proc(pid: u32) -> Process {
    let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat_ppid(&stat));
    let argv: Vec<Vec<u8>> = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default();
    let exe = paths::read_proc_link(pid, "exe");
    Process {
        ppid,
        image: Arc::new(Image {
            code: exe.as_deref().and_then(|e| proc_code(pid, e, &argv)),
            applet: exe.as_deref().and_then(|e| applet_of(e, &argv)),
            script_sha256: None,
            exe,
            sha256: None,
            argv,
        }),
        hash_tried: false,
        previous: None,
        cwd: None,
        files: Vec::new(),
        exited: false,
        mount_ns: MountNs::Inherited,
    }
}

/// The ppid in `/proc/PID/stat`.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    stat_field(stat, 1)?.parse().ok()
}

/// Field `n` of a `/proc/PID/stat` line, counted from the state after the `(comm)` that may
/// itself hold spaces and parentheses (0: state, 1: ppid, 6: flags).
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(n)
}

/// The code a running interpreter runs, a relative script resolved from its directory.
fn proc_code(pid: u32, exe: &Path, argv: &[Vec<u8>]) -> Option<Code> {
    match code_of(exe, argv, None)? {
        Code::Script(p) if p.is_relative() => {
            let cwd = paths::read_proc_link(pid, "cwd");
            code_of(exe, argv, cwd.as_deref())
        }
        code => Some(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ppid_past_odd_comms() {
        assert_eq!(parse_stat_ppid("42 (a b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn a_child_works_where_its_parent_did_even_once_gone() {
        let mut t = ProcessTable::new();
        // This test's own process is the parent (older than the table, as at start-up); the
        // child's pid is far above pid_max, so /proc has nothing to say about it.
        let parent = std::process::id();
        let child = 4_000_000_010;
        t.get(parent);
        t.fork(parent, child);
        let here = std::env::current_dir().unwrap();
        assert_eq!(t.cwd(child).as_deref(), Some(here.as_path()));
    }

    #[test]
    fn fork_exec_and_ancestry() {
        let mut t = ProcessTable::new();
        // Pids far above pid_max so /proc has nothing to say about them.
        let (a, b, c) = (4_000_000_001, 4_000_000_002, 4_000_000_003);
        t.get(a).image = Arc::new(Image {
            exe: Some("/sbin/init-ish".into()),
            ..Image::default()
        });
        t.fork(a, b);
        t.exec(b, Some("/bin/sh".into()), None, vec![b"sh".to_vec()], None);
        t.fork(b, c);
        t.exec(c, Some("/bin/true".into()), None, vec![], None);
        let chain: Vec<(u32, Option<PathBuf>)> = t
            .ancestry(c)
            .iter()
            .map(|a| (a.pid, a.exe().map(Path::to_path_buf)))
            .collect();
        assert_eq!(
            chain,
            vec![
                (b, Some("/bin/sh".into())),
                (a, Some("/sbin/init-ish".into())),
            ]
        );
        t.set_cwd(b, "/tmp".into());
        t.fork(b, 4_000_000_004);
        assert_eq!(t.cwd(4_000_000_004).as_deref(), Some(Path::new("/tmp")));
    }

    #[test]
    fn an_exec_keeps_the_image_that_asked_for_it() {
        let mut t = ProcessTable::new();
        let (a, b) = (4_100_000_001, 4_100_000_002);
        t.get(a).image = Arc::new(Image {
            exe: Some("/bin/sh".into()),
            ..Image::default()
        });
        t.fork(a, b);
        assert!(t.peek(b).unwrap().previous.is_none(), "not exec'd yet");
        t.exec(b, Some("/tmp/x".into()), None, vec![], None);
        let p = t.peek(b).unwrap();
        assert_eq!(p.image.exe.as_deref(), Some(Path::new("/tmp/x")));
        let before = p.previous.as_ref().unwrap();
        assert_eq!(before.exe.as_deref(), Some(Path::new("/bin/sh")));
        // A child of the new image starts with no exec of its own.
        t.fork(b, 4_100_000_003);
        assert!(t.peek(4_100_000_003).unwrap().previous.is_none());
        // Exited, it keeps the image from before its exec (a decision may come after the exit).
        t.exit(b);
        let before = t.peek(b).unwrap().previous.as_ref().unwrap();
        assert_eq!(before.exe.as_deref(), Some(Path::new("/bin/sh")));
    }

    #[test]
    fn exited_processes_keep_only_what_ancestry_needs() {
        let mut t = ProcessTable::new();
        let (a, b) = (4_200_000_001, 4_200_000_002);
        t.exec(
            a,
            Some("/bin/sh".into()),
            None,
            vec![b"sh".to_vec(); 100],
            None,
        );
        t.get(a).opened(3, Path::new("/tmp/log"));
        t.fork(a, b);
        // Shared with a live child: left as it is.
        t.exit(a);
        assert_eq!(t.peek(a).unwrap().image.argv.len(), 100);
        assert!(t.peek(a).unwrap().files.is_empty());
        t.exec(
            b,
            Some("/bin/true".into()),
            None,
            vec![b"true".to_vec()],
            None,
        );
        t.exit(b);
        let gone = t.peek(b).unwrap();
        assert!(gone.image.argv.is_empty());
        assert_eq!(gone.image.exe.as_deref(), Some(Path::new("/bin/true")));
        assert_eq!(t.ancestry(b)[0].exe(), Some(Path::new("/bin/sh")));
    }

    #[test]
    fn exited_processes_are_evicted_in_order() {
        let mut t = ProcessTable::new();
        for pid in 0..(KEEP_EXITED as u32 + 10) {
            let pid = 4_100_000_000 + pid;
            t.fork(4_000_000_000, pid);
            t.exit(pid);
        }
        assert!(t.peek(4_100_000_000).is_none());
        assert!(t.peek(4_100_000_000 + KEEP_EXITED as u32 + 9).is_some());
        assert!(t.len() <= KEEP_EXITED + 1);
    }
}
