//! Enrichment: a decoded record plus what the agent knows (process table, file hashes,
//! listeners) gives an [`Event`] with its full context: absolute paths, executable and its
//! SHA-256, arguments, ancestry.
//!
//! Records arrive in the order the kernel produced them, so the state kept here (working
//! directories, forks, execs) is the state at the time of each event, even for processes that
//! have exited since.
//!
//! An event is a typed [`Record`]; its JSON form (what `picket monitor` prints and what an alert
//! carries) is built only when something asks for it, so that events which are neither printed
//! nor alerted on (most of them, under `picket run`) cost no JSON at all. The process context
//! is shared with the process table (reference-counted), not copied.

mod event;
pub mod hash;
pub mod identity;
pub mod privilege;
pub mod process;
pub mod script;
mod socket;
#[cfg(test)]
mod tests;

pub use event::{
    file_op_name, net_op_name, Category, Context, Detail, Event, ExecFile, Fields, Guard, Record,
};

use std::{
    collections::HashMap,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use picket_common::{FileOp, NetOp, AT_FDCWD};

use self::{
    hash::HashCache,
    identity::{ExecFiles, Name, Ran},
    process::ProcessTable,
    socket::{socket_info, SocketInfo},
};
use crate::{
    paths::{self, read_proc_link},
    sensors::decode::{Comm, Exec, File, Net, RawEvent, Task},
};

/// Keeps the state that gives events their context.
pub struct Enricher {
    table: ProcessTable,
    hashes: HashCache,
    /// The files execs ran, from the exec listener.
    files: ExecFiles,
    /// Local TCP port → process that listened on it (accepts happen in no task's context).
    listeners: HashMap<u16, u32>,
    /// The device's mount namespace, read at the first mount: init's (`/proc/1/ns/mnt`), or the
    /// agent's own when init's cannot be read.
    host_mount_ns: std::cell::OnceCell<Option<PathBuf>>,
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

impl Enricher {
    pub fn new() -> Self {
        Self::with_exec_files(ExecFiles::new(None))
    }

    /// An enricher that takes the identity of executed files from `files`.
    pub fn with_exec_files(files: ExecFiles) -> Self {
        Self {
            table: ProcessTable::new(),
            hashes: HashCache::new(4096),
            files,
            listeners: HashMap::new(),
            host_mount_ns: std::cell::OnceCell::new(),
        }
    }

    /// Updates the state with `raw` and returns the event to report, if any (a chdir only
    /// updates state; a UDP record about what turns out to be a TCP socket is dropped).
    pub fn enrich(&mut self, raw: RawEvent) -> Option<Event> {
        match raw {
            RawEvent::Exec(e) => Some(self.exec(e)),
            RawEvent::Fork { task, child_pid } => {
                self.table.fork(task.pid, child_pid);
                let process = Some(self.context(task.pid));
                Some(event(
                    Category::Exec,
                    Record {
                        task,
                        process,
                        detail: Detail::Fork { child_pid },
                    },
                ))
            }
            RawEvent::Exit(e) => {
                let process = Some(self.context(e.task.pid));
                self.table.exit(e.task.pid);
                self.files.exited(e.task.pid);
                if !self.listeners.is_empty() {
                    self.listeners.retain(|_, pid| *pid != e.task.pid);
                }
                Some(event(
                    Category::Exec,
                    Record {
                        task: e.task,
                        process,
                        detail: Detail::Exit {
                            code: e.code,
                            signal: e.signal,
                        },
                    },
                ))
            }
            RawEvent::Net(n) => self.net(n),
            RawEvent::File(f) => self.file(f),
            RawEvent::Privilege(p) => self.privilege(p),
        }
    }

    /// A watched file opened by process `pid` (from the open listener, which gives no more than
    /// the pid): the process's context from the table, its ids and name from `/proc` while it
    /// lives.
    pub fn read(&mut self, pid: u32, path: PathBuf) -> Event {
        self.on_behalf(pid, Category::File, Detail::Read { path }, None)
    }

    /// An event for an exec the exec guard refused (or would have): the process that tried,
    /// still running its previous program, with its context.
    pub fn refused(&mut self, d: crate::enforce::exec::ExecDecision) -> Event {
        // The dry run does not hold the exec: when its record came first, the table has the new
        // image already, and the decision is about the image that asked.
        let before = if d.enforced {
            None
        } else {
            self.table
                .peek(d.pid)
                .filter(|p| p.image.exe.as_deref() == Some(d.path.as_path()))
                .and_then(|p| p.previous.clone())
        };
        let pid = d.pid;
        let detail = Detail::Refused {
            path: d.path,
            refusal: d.refusal,
            enforced: d.enforced,
        };
        self.on_behalf(pid, Category::Exec, detail, before)
    }

    /// An event seen outside the ring buffer for process `pid`: its task read from `/proc`,
    /// its context from the process table (with `image` for its own, when given).
    fn on_behalf(
        &mut self,
        pid: u32,
        category: Category,
        detail: Detail,
        image: Option<Arc<process::Image>>,
    ) -> Event {
        let proc_dir = std::fs::metadata(format!("/proc/{pid}")).ok();
        let mut comm = [0u8; picket_common::COMM_LEN];
        if let Ok(name) = std::fs::read(format!("/proc/{pid}/comm")) {
            let name = name.strip_suffix(b"\n").unwrap_or(&name);
            let n = name.len().min(comm.len());
            comm[..n].copy_from_slice(&name[..n]);
        }
        let task = Task {
            pid,
            tid: pid,
            uid: proc_dir.as_ref().map_or(0, |m| m.uid()),
            gid: proc_dir.as_ref().map_or(0, |m| m.gid()),
            boot_ns: 0,
            cgroup_id: 0,
            comm: Comm::new(&comm),
            known: proc_dir.is_some(),
        };
        let mut process = self.context(pid);
        if let Some(image) = image {
            process.image = image;
        }
        event(
            category,
            Record {
                task,
                process: Some(process),
                detail,
            },
        )
    }

    /// Number of processes in the table.
    pub fn processes(&self) -> usize {
        self.table.len()
    }

    /// (hits, misses) of the hash cache.
    pub fn hash_stats(&self) -> (u64, u64) {
        self.hashes.stats()
    }

    fn exec(&mut self, e: Exec) -> Event {
        let pid = e.task.pid;
        let filename = paths::from_bytes(&e.filename);
        let mut named = self.exec_name(pid, &filename, e.execveat.is_some());
        let empty_path = e
            .execveat
            .is_some_and(|(_, flags)| flags & (libc::AT_EMPTY_PATH as u32) != 0);
        let unseen = empty_path && !self.files.sees_empty_path();
        if let (true, Named::Fd(known)) = (unseen, &mut named) {
            named = Named::Unseen(known.take());
        }
        let name = match &named {
            Named::Path(p) => Name::Path(p),
            Named::Fd(p) => Name::Fd(p.as_deref()),
            Named::Unseen(_) => Name::Unseen,
            Named::OwnExe => Name::OwnExe,
        };
        let ran = self
            .files
            .take(pid, name, wall_clock_ns(e.task.boot_ns), &mut self.hashes);
        let seen = match ran {
            Some(ran) => Identified::from(ran),
            None => self.exec_from_proc(pid, &filename, &named),
        };
        let name_used = match named {
            Named::Path(p) if p != seen.exe => Some(p),
            _ => None,
        };
        let exe_text = seen.exe.as_os_str().as_bytes();
        let fileless = exe_text.starts_with(b"/memfd:");
        // A memory file has no name to delete: the kernel marks it so all the same.
        let deleted = !fileless && (seen.deleted || exe_text.ends_with(b" (deleted)"));

        let code = self.code(pid, &seen.exe, &e.argv);
        self.table
            .exec(pid, Some(seen.exe), seen.sha256, e.argv, code);
        let process = Some(self.context(pid));
        event(
            Category::Exec,
            Record {
                task: e.task,
                process,
                detail: Detail::Exec {
                    filename,
                    argv_truncated: e.argv_truncated,
                    argv_missing: e.argv_missing,
                    interpreter: seen.interpreter,
                    fileless,
                    deleted,
                    execveat: e.execveat.is_some(),
                    file: seen.file,
                    hash_error: seen.hash_error,
                    name_used,
                    loader_env: e.loader_env,
                    loader_env_truncated: e.loader_env_truncated,
                    env_unexamined: e.env_unexamined,
                    killed: e.killed,
                },
            },
        )
    }

    /// For an interpreter, the code `pid` runs with `argv` (a relative script found from its
    /// working directory, read only then) and, for a script file, its SHA-256 or why there is
    /// none.
    fn code(
        &mut self,
        pid: u32,
        exe: &Path,
        argv: &[Vec<u8>],
    ) -> Option<(script::Code, Option<script::ScriptDigest>)> {
        let code = match script::code_of(exe, argv, None)? {
            script::Code::Script(p) if p.is_relative() => {
                let cwd = self.table.cwd(pid);
                script::code_of(exe, argv, cwd.as_deref())?
            }
            code => code,
        };
        // Names the process resolves for itself (its own `/proc/self`, its descriptors) are
        // named for the agent, which would otherwise read its own.
        let code = match code {
            script::Code::Script(p) => script::Code::Script(as_seen_by(pid, p)),
            code => code,
        };
        let digest = match &code {
            script::Code::Script(p) if p.is_absolute() => {
                Some(self.hashes.sha256(p).map_err(|e| e.to_string()))
            }
            _ => None,
        };
        Some((code, digest))
    }

    /// How the exec of `pid` named its file: a path (made absolute), a descriptor (with what
    /// the process table knows of it), or the process's own executable.
    fn exec_name(&mut self, pid: u32, filename: &Path, execveat: bool) -> Named {
        if names_own_exe(filename, pid) {
            return Named::OwnExe;
        }
        if let Some((owner, fd, rest)) = fd_form(filename, pid) {
            // `/dev/fd/N/rest`: a path under directory descriptor N (`execveat(fd, "rest")`).
            let known = self
                .table
                .get(owner)
                .file(fd)
                .map(|p| p.to_path_buf())
                .or_else(|| {
                    execveat
                        .then(|| read_proc_link(owner, &format!("fd/{fd}")))
                        .flatten()
                });
            return match (rest, known) {
                (Some(rest), Some(dir)) => Named::Path(paths::absolute(&dir, rest)),
                (Some(_), None) => Named::Fd(None),
                (None, known) => Named::Fd(known),
            };
        }
        if filename.is_absolute() {
            Named::Path(paths::normalized_bytes(filename.as_os_str().as_bytes()))
        } else {
            let cwd = self
                .table
                .cwd(pid)
                .unwrap_or_else(|| Arc::from(Path::new("/")));
            Named::Path(paths::absolute(&cwd, filename))
        }
    }

    /// An exec neither the listener nor `/proc` could identify. By path, on a filesystem the
    /// listener does not watch (or with no listener): the file at that path now (`source:
    /// "path"`, the weakest proof: it may have been replaced since the exec). On a watched one,
    /// or through a descriptor (gone with the process): nothing.
    fn exec_by_name(&mut self, exe: PathBuf, named: &Named) -> Identified {
        let gone = "the process exited before /proc could be read";
        let reason = if !matches!(named, Named::Path(_)) {
            Some(format!("{gone}, and its descriptor with it"))
        } else if self.files.sees(&exe) {
            // Its filesystem is watched: the exec's own open was lost, and the file there now
            // need not be the one that ran.
            Some(format!("{gone}, and the exec listener lost its event"))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Identified {
                exe,
                hash_error: Some(reason),
                ..Identified::default()
            };
        }
        let file = std::fs::metadata(&exe).ok().map(|m| ExecFile {
            dev: m.dev(),
            ino: m.ino(),
            ctime_ns: identity::ctime_ns(&m),
            source: "path",
        });
        let (sha256, interpreter, hash_error) = match self.hashes.digest(&exe) {
            Ok(d) => (Some(d.sha256), d.shebang, None),
            Err(e) => (None, None, Some(format!("{gone}; hashed by its name: {e}"))),
        };
        Identified {
            exe,
            sha256,
            interpreter,
            file,
            hash_error,
            deleted: false,
        }
    }

    /// What `/proc` still tells of an exec the listener did not see (no listener, a filesystem
    /// it does not watch, a memory file): the running file while the process lives; after
    /// that, [`Self::exec_by_name`].
    fn exec_from_proc(&mut self, pid: u32, filename: &Path, named: &Named) -> Identified {
        let proc_exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let running = read_proc_link(pid, "exe");
        let exe = match named {
            Named::Path(p) => p.clone(),
            // What the table knows of a descriptor may be stale (it does not follow `close`).
            // With the listener, a descriptor that brought no event is not a file on a watched
            // filesystem: the table's memory file, or else only the name the exec gave.
            Named::Fd(known) | Named::Unseen(known) => running
                .clone()
                .or_else(|| {
                    known.clone().filter(|k| {
                        !self.files.active() || k.as_os_str().as_bytes().starts_with(b"/memfd:")
                    })
                })
                .unwrap_or_else(|| filename.to_path_buf()),
            Named::OwnExe => running
                .clone()
                .or_else(|| self.table.get(pid).image.exe.clone())
                .unwrap_or_else(|| filename.to_path_buf()),
        };
        let Some(running) = running else {
            return self.exec_by_name(exe, named);
        };
        // A script runs under an interpreter: the running binary is another file than the
        // one exec'd, which is hashed by name (the process still runs it).
        let interpreted =
            matches!(named, Named::Path(_)) && running != exe && !same_file(&exe, &proc_exe);
        let hash_from = if interpreted {
            exe.as_path()
        } else {
            proc_exe.as_path()
        };
        let file = std::fs::metadata(hash_from).ok().map(|m| ExecFile {
            dev: m.dev(),
            ino: m.ino(),
            ctime_ns: identity::ctime_ns(&m),
            source: "proc",
        });
        let (digest, hash_error) = match self.hashes.digest(hash_from) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let interpreter = if interpreted {
            Some(running.clone())
        } else {
            digest.as_ref().and_then(|d| d.shebang.clone())
        };
        let exe = if matches!(named, Named::Path(_)) {
            exe
        } else {
            running
        };
        Identified {
            exe,
            sha256: digest.map(|d| d.sha256),
            interpreter,
            file,
            hash_error,
            deleted: false,
        }
    }

    fn net(&mut self, n: Net) -> Option<Event> {
        let mut task = n.task;
        let mut pid_source = "task";
        match n.op {
            NetOp::TcpListen => {
                self.listeners.insert(n.local.1, task.pid);
            }
            NetOp::TcpAccept => match self.listeners.get(&n.local.1) {
                Some(&pid) => {
                    task.pid = pid;
                    pid_source = "listener";
                }
                None => pid_source = "unknown",
            },
            _ => {}
        }
        let mut socket_type = None;
        let mut local = n.local;
        let udp = !matches!(
            n.op,
            NetOp::TcpConnect | NetOp::TcpAccept | NetOp::TcpListen | NetOp::TcpBind
        );
        // A guard record comes from a hook that knows the socket's protocol, before the kernel
        // gave it a local port: nothing to ask of the socket.
        let from_guard = n.guard.is_some();
        if !from_guard && n.op == NetOp::TcpConnect && local.1 == 0 && n.fd >= 0 {
            // The kernel picks the local port right after SYN_SENT: ask the socket, if it still
            // is the one that connected to this peer.
            if let Some(SocketInfo {
                local: Some(addr),
                peer,
                ..
            }) = socket_info(task.pid, n.fd)
            {
                if peer.is_none_or(|p| p.ip() == n.remote.0 && p.port() == n.remote.1) {
                    local = (addr.ip(), addr.port());
                }
            }
        }
        // For UDP, the kernel side saw the syscall's arguments only: the socket's type when it
        // predates the sensors, and the local port the kernel picked, are asked of the socket.
        if !from_guard && udp && (n.sock_type_unknown || local.1 == 0) {
            let info = socket_info(task.pid, n.fd);
            match &info {
                // TCP connects are reported from the TCP state machine.
                Some(i) if i.kind == libc::SOCK_STREAM => return None,
                None if n.sock_type_unknown => socket_type = Some("unknown"),
                _ => {}
            }
            if let Some(addr) = info.and_then(|i| i.local) {
                if local.1 == 0 {
                    local = (addr.ip(), addr.port());
                }
            }
        }
        let process = (task.pid != 0).then(|| self.context(task.pid));
        Some(event(
            Category::Net,
            Record {
                task,
                process,
                detail: Detail::Net {
                    op: n.op,
                    pid_source,
                    local,
                    remote: n.remote,
                    socket_type,
                    guard: n.guard,
                },
            },
        ))
    }

    fn file(&mut self, f: File) -> Option<Event> {
        let pid = f.task.pid;
        if f.op == FileOp::MemfdCreate {
            if let Ok(fd) = i32::try_from(f.ret) {
                let mut name = b"/memfd:".to_vec();
                name.extend_from_slice(&f.path);
                name.extend_from_slice(b" (deleted)");
                self.table.get(pid).opened(fd, &paths::from_bytes(&name));
            }
            return None;
        }
        if f.op == FileOp::Chdir {
            let cwd = if f.fd_only {
                read_proc_link(pid, "cwd")
            } else {
                self.resolve(pid, AT_FDCWD, &f.path).0
            };
            if let Some(cwd) = cwd {
                self.table.set_cwd(pid, cwd);
            }
            return None;
        }
        let (main, main_dirfd, second) = match f.op {
            FileOp::Rename => (&f.path, f.dirfd, Some(("new_path", &f.path2, f.dirfd2))),
            // The new link is what changed; the existing file is its target.
            FileOp::Link => (&f.path2, f.dirfd2, Some(("target", &f.path, f.dirfd))),
            FileOp::Symlink => (&f.path2, f.dirfd2, None),
            FileOp::Chdir | FileOp::MemfdCreate => return None,
            _ => (&f.path, f.dirfd, None),
        };
        let (path, resolved) = if f.fd_only {
            // /proc is right while the process lives; after that, what it opened for writing.
            let path = read_proc_link(pid, &format!("fd/{}", f.dirfd))
                .or_else(|| self.table.get(pid).file(f.dirfd).map(|p| p.to_path_buf()));
            let resolved = path.is_some();
            (path, resolved)
        } else {
            let (p, ok) = self.resolve(pid, main_dirfd, main);
            (p.or_else(|| Some(paths::from_bytes(main))), ok)
        };
        if let (FileOp::Open, Some(p), true) = (f.op, &path, resolved) {
            if let Ok(fd) = i32::try_from(f.ret) {
                self.table.get(pid).opened(fd, p);
            }
        }
        let second = second.map(|(name, raw, dirfd)| {
            let (p, _) = self.resolve(pid, dirfd, raw);
            (name, p.unwrap_or_else(|| paths::from_bytes(raw)))
        });
        // The target of a symlink is stored as written, never resolved.
        let symlink_target = (f.op == FileOp::Symlink).then(|| paths::from_bytes(&f.path));
        let process = Some(self.context(pid));
        Some(event(
            Category::File,
            Record {
                task: f.task,
                process,
                detail: Detail::File {
                    op: f.op,
                    path,
                    resolved,
                    second,
                    symlink_target,
                    flags: f.op_flags,
                    mode: f.mode,
                    owner: f.owner,
                    group: f.group,
                    length: f.length,
                },
            },
        ))
    }

    /// Makes `raw` absolute against `dirfd` of `pid`. Returns the path and whether that worked;
    /// `None` when `raw` is empty.
    fn resolve(&mut self, pid: u32, dirfd: i32, raw: &[u8]) -> (Option<PathBuf>, bool) {
        if raw.is_empty() {
            return (None, false);
        }
        if raw[0] == b'/' {
            return (Some(paths::normalized_bytes(raw)), true);
        }
        let path = paths::from_bytes(raw);
        let base = if dirfd == AT_FDCWD {
            self.table.cwd(pid)
        } else {
            read_proc_link(pid, &format!("fd/{dirfd}")).map(Arc::from)
        };
        match base {
            Some(base) => (Some(paths::absolute(&base, &path)), true),
            None => (Some(path), false),
        }
    }

    /// The context of process `pid`: what it runs and its ancestry.
    fn context(&mut self, pid: u32) -> Context {
        let ancestry = self.table.ancestry(pid);
        let p = self.table.get(pid);
        if !p.hash_tried && !p.exited && p.image.exe.is_some() && p.image.sha256.is_none() {
            // A process that started before the agent: hash what it runs, once.
            p.hash_tried = true;
            let digest = self
                .hashes
                .sha256(Path::new(&format!("/proc/{pid}/exe")))
                .ok();
            if digest.is_some() {
                Arc::make_mut(&mut p.image).sha256 = digest;
            }
        }
        Context {
            ppid: p.ppid,
            image: Arc::clone(&p.image),
            ancestry,
        }
    }
}

/// `path` as process `pid` named it, for the agent to reach the same file: its `/proc/self`,
/// `/dev/fd` and `/dev/std*` are its own.
fn as_seen_by(pid: u32, path: PathBuf) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let own = |rest: &[u8]| {
        let mut p = format!("/proc/{pid}/").into_bytes();
        p.extend_from_slice(rest);
        paths::from_bytes(&p)
    };
    if let Some(rest) = bytes.strip_prefix(b"/proc/self/") {
        own(rest)
    } else if let Some(rest) = bytes.strip_prefix(b"/dev/fd/") {
        own(&[b"fd/", rest].concat())
    } else {
        match bytes {
            b"/dev/stdin" => own(b"fd/0"),
            b"/dev/stdout" => own(b"fd/1"),
            b"/dev/stderr" => own(b"fd/2"),
            _ => path,
        }
    }
}

fn event(category: Category, record: Record) -> Event {
    Event {
        category,
        fields: Fields::new(record),
    }
}

/// How an exec named its file (see [`Name`]), owned.
enum Named {
    Path(PathBuf),
    Fd(Option<PathBuf>),
    /// A descriptor whose exec this kernel does not report to the listener.
    Unseen(Option<PathBuf>),
    OwnExe,
}

/// What is known of the file an exec ran.
#[derive(Default)]
struct Identified {
    exe: PathBuf,
    sha256: Option<[u8; 32]>,
    interpreter: Option<PathBuf>,
    file: Option<ExecFile>,
    hash_error: Option<String>,
    deleted: bool,
}

impl From<Ran> for Identified {
    fn from(ran: Ran) -> Self {
        let (sha256, shebang, hash_error) = match ran.digest {
            Ok(d) => (Some(d.sha256), d.shebang, None),
            Err(e) => (None, None, Some(e)),
        };
        Self {
            exe: ran.path,
            sha256,
            interpreter: ran.interpreter.or(shebang),
            file: Some(ExecFile {
                dev: ran.dev,
                ino: ran.ino,
                ctime_ns: ran.ctime_ns,
                source: "exec",
            }),
            hash_error,
            deleted: ran.deleted,
        }
    }
}

/// A descriptor named as a path: `/dev/fd/N`, `/proc/self/fd/N`, `/proc/thread-self/fd/N`,
/// `/proc/PID/fd/N`, each maybe followed by a path under it. Returns the process whose
/// descriptor it is, the descriptor and the rest.
fn fd_form(filename: &Path, pid: u32) -> Option<(u32, i32, Option<&Path>)> {
    let text = filename.to_str()?;
    let (owner, rest) = if let Some(r) = text.strip_prefix("/dev/fd/") {
        (pid, r)
    } else {
        let r = text.strip_prefix("/proc/")?;
        let (who, r) = r.split_once("/fd/")?;
        let owner = match who {
            "self" | "thread-self" => pid,
            n => n.parse().ok()?,
        };
        (owner, r)
    };
    let (fd, rest) = match rest.split_once('/') {
        Some((fd, rest)) => (
            fd,
            Some(Path::new(rest)).filter(|r| !r.as_os_str().is_empty()),
        ),
        None => (rest, None),
    };
    Some((owner, fd.parse().ok()?, rest))
}

/// The wall-clock time (ns since the Unix epoch) of `boot_ns` on the boot clock, the one the
/// sensors stamp records with.
fn wall_clock_ns(boot_ns: u64) -> i64 {
    use nix::sys::time::TimeValLike as _;
    // In nanoseconds as i64 whatever the width of the target's `time_t` and `long`.
    let now = |clock| {
        nix::time::clock_gettime(clock)
            .map(|t| t.num_nanoseconds())
            .unwrap_or(0)
    };
    let offset = now(nix::time::ClockId::CLOCK_REALTIME) - now(nix::time::ClockId::CLOCK_BOOTTIME);
    offset.saturating_add(i64::try_from(boot_ns).unwrap_or(i64::MAX))
}

/// Whether two paths name the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => true,
    }
}

/// Whether an exec path is the exec'ing process's own `/proc` link to its executable:
/// `/proc/self/exe`, `/proc/thread-self/exe` or `/proc/PID/exe` with its own PID.
fn names_own_exe(filename: &Path, pid: u32) -> bool {
    let Some(rest) = filename
        .to_str()
        .and_then(|f| f.strip_prefix("/proc/"))
        .and_then(|f| f.strip_suffix("/exe"))
    else {
        return false;
    };
    rest == "self" || rest == "thread-self" || rest.parse::<u32>().is_ok_and(|p| p == pid)
}
