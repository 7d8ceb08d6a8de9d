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

pub mod hash;
pub mod process;

use std::{
    borrow::Cow,
    cell::OnceCell,
    collections::HashMap,
    net::IpAddr,
    ops::Deref,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use picket_common::{FileOp, NetOp, AT_FDCWD};
use serde_json::{Map, Value};

use self::{
    hash::HashCache,
    process::{Ancestor, Image, ProcessTable},
};
use picket_proto::ProcessContext;

use crate::{
    paths::{self, read_proc_link},
    sensors::decode::{Exec, File, Net, RawEvent, Task},
};

/// Broad category of an event, as selected by `--filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Exec,
    Net,
    File,
}

/// An enriched event.
pub struct Event {
    pub category: Category,
    /// The event's fields: typed, and as JSON on first use (`Deref` to a JSON object).
    pub fields: Fields,
}

impl Event {
    /// The typed record (absent only for events built from JSON in tests).
    pub fn record(&self) -> Option<&Record> {
        self.fields.record.as_ref()
    }
}

/// An event's fields: the typed record, and its JSON object built once, when first asked for.
pub struct Fields {
    record: Option<Record>,
    json: OnceCell<Map<String, Value>>,
}

impl Fields {
    fn new(record: Record) -> Self {
        Self {
            record: Some(record),
            json: OnceCell::new(),
        }
    }

    /// The JSON object, built now if it was not yet.
    pub fn json(&self) -> &Map<String, Value> {
        self.json.get_or_init(|| match &self.record {
            Some(r) => r.to_json(),
            None => Map::new(),
        })
    }
}

#[cfg(test)]
impl Fields {
    pub fn new_for_test(record: Record) -> Self {
        Self::new(record)
    }
}

impl Deref for Fields {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        self.json()
    }
}

/// An event given directly as JSON: seen by sinks as such; it has no typed record, so the
/// detector has nothing to check in it.
#[cfg(test)]
impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Self {
        Self {
            record: None,
            json: OnceCell::from(map),
        }
    }
}

/// One event, typed.
#[derive(Debug)]
pub struct Record {
    /// Who did it (for an accept, `pid` is the listener's).
    pub task: Task,
    /// That process's context; `None` for network events of no known process.
    pub process: Option<Context>,
    pub detail: Detail,
}

/// What the agent knows of the process behind an event.
#[derive(Debug)]
pub struct Context {
    pub ppid: Option<u32>,
    /// What it runs (executable, SHA-256, arguments), shared with the process table.
    pub image: Arc<Image>,
    pub ancestry: Vec<Ancestor>,
}

impl Context {
    /// The executable as text (lossy for a name that is not UTF-8, as printed).
    pub fn exe_text(&self) -> Option<Cow<'_, str>> {
        self.image.exe.as_ref().map(|e| e.to_string_lossy())
    }
}

/// What happened.
#[derive(Debug)]
pub enum Detail {
    Exec {
        filename: PathBuf,
        argv_truncated: bool,
        argv_missing: bool,
        interpreter: Option<PathBuf>,
        fileless: bool,
        deleted: bool,
        execveat: bool,
    },
    Fork {
        child_pid: u32,
    },
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Net {
        op: NetOp,
        pid_source: &'static str,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        socket_type: Option<&'static str>,
    },
    File {
        op: FileOp,
        path: Option<PathBuf>,
        resolved: bool,
        /// The operation's other name: `new_path` of a rename, `target` of a link.
        second: Option<(&'static str, PathBuf)>,
        /// What a symlink points to, as written.
        symlink_target: Option<PathBuf>,
        flags: u32,
        mode: u32,
        owner: u32,
        group: u32,
        length: i64,
    },
}

impl Record {
    /// The acting process as an alert carries it (the same type goes on the wire), with at
    /// most `max_args` arguments (`argv_dropped` counts the rest). Fields are those printed for
    /// the event: unknown ones are `None`, names that are not UTF-8 are lossy.
    pub fn process_context(&self, max_args: usize) -> ProcessContext {
        let task = &self.task;
        let known = |v: u32| task.known.then_some(v);
        let process = self.process.as_ref();
        let lossy = |p: &Path| p.to_string_lossy().into_owned();
        let argv = process.map_or(&[][..], |p| &p.image.argv[..]);
        ProcessContext {
            pid: (task.pid != 0 || process.is_some()).then_some(task.pid),
            ppid: process.and_then(|p| p.ppid),
            uid: known(task.uid),
            exe: process.and_then(|p| p.image.exe.as_deref()).map(lossy),
            sha256: process
                .and_then(|p| p.image.sha256.as_ref())
                .map(|d| paths::hex(d)),
            argv: argv
                .iter()
                .take(max_args)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
            argv_dropped: u32::try_from(argv.len().saturating_sub(max_args)).unwrap_or(u32::MAX),
            ancestry: process
                .map_or(&[][..], |p| &p.ancestry[..])
                .iter()
                .map(|a| picket_proto::Ancestor {
                    pid: a.pid,
                    exe: a.exe().map(lossy),
                })
                .collect(),
            cgroup_id: Some(task.cgroup_id),
        }
    }

    /// The `event` field: exec, fork, exit, net or file.
    pub fn kind(&self) -> &'static str {
        match self.detail {
            Detail::Exec { .. } => "exec",
            Detail::Fork { .. } => "fork",
            Detail::Exit { .. } => "exit",
            Detail::Net { .. } => "net",
            Detail::File { .. } => "file",
        }
    }

    /// The JSON object printed for this event.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = MapOut(Map::new());
        let _ = self.emit(&mut map);
        map.0
    }

    /// Writes this event as one JSON object, exactly as [`Record::to_json`] would serialise,
    /// without building it first (what `picket monitor` prints for every event).
    pub fn write_json(&self, writer: &mut impl std::io::Write) -> serde_json::Result<()> {
        use serde::ser::{SerializeMap, Serializer as _};
        let mut ser = serde_json::Serializer::new(writer);
        let map = ser.serialize_map(None)?;
        let mut out = StreamOut(map);
        self.emit(&mut out)?;
        out.0.end()
    }

    /// The event's fields, in the order they are printed, to `out`.
    fn emit<O: Out>(&self, out: &mut O) -> Result<(), O::Error> {
        let task = &self.task;
        let known = |v: u32| task.known.then_some(v);
        out.put("event", self.kind())?;
        out.put("time_ns", &task.boot_ns)?;
        let pid = (task.pid != 0 || self.process.is_some()).then_some(task.pid);
        out.put("pid", &pid)?;
        out.put("tid", &known(task.tid))?;
        let process = self.process.as_ref();
        out.put("ppid", &process.and_then(|p| p.ppid))?;
        out.put("uid", &known(task.uid))?;
        out.put("gid", &known(task.gid))?;
        out.put("comm", task.comm.text().as_ref())?;
        let exe = process.and_then(|p| p.image.exe.as_deref());
        out.put("exe", &exe.map(Lossy))?;
        let sha256 = process
            .and_then(|p| p.image.sha256.as_ref())
            .map(|d| Hex(d));
        out.put("sha256", &sha256)?;
        out.put("argv", &Argv(process.map_or(&[][..], |p| &p.image.argv)))?;
        out.put(
            "ancestry",
            &Ancestry(process.map_or(&[][..], |p| &p.ancestry)),
        )?;
        out.put("cgroup_id", &task.cgroup_id)?;
        if let Some(exe) = exe {
            put_hex(out, "exe_hex", exe)?;
        }
        match &self.detail {
            Detail::Exec {
                filename,
                argv_truncated,
                argv_missing,
                interpreter,
                fileless,
                deleted,
                execveat,
            } => {
                put_path(out, "filename", "filename_hex", filename)?;
                out.put("argv_truncated", argv_truncated)?;
                if *argv_missing {
                    out.put("argv_missing", &true)?;
                }
                if let Some(interp) = interpreter {
                    put_path(out, "interpreter", "interpreter_hex", interp)?;
                }
                out.put("fileless", fileless)?;
                out.put("deleted", deleted)?;
                out.put("execveat", execveat)?;
            }
            Detail::Fork { child_pid } => out.put("child_pid", child_pid)?,
            Detail::Exit { code, signal } => {
                // The kernel stores `exit_group(status)` as `status & 0xff`.
                out.put("exit_code", &code.map(|c| c & 0xff))?;
                out.put("signal", signal)?;
            }
            Detail::Net {
                op,
                pid_source,
                local,
                remote,
                socket_type,
            } => {
                out.put("op", net_op_name(*op))?;
                out.put("pid_source", *pid_source)?;
                let family = if local.0.is_ipv6() || remote.0.is_ipv6() {
                    "ipv6"
                } else {
                    "ipv4"
                };
                out.put("family", family)?;
                out.put("local_addr", &Text(&local.0))?;
                out.put("local_port", &local.1)?;
                out.put("remote_addr", &Text(&remote.0))?;
                out.put("remote_port", &remote.1)?;
                if let Some(t) = socket_type {
                    out.put("socket_type", *t)?;
                }
            }
            Detail::File {
                op,
                path,
                resolved,
                second,
                symlink_target,
                flags,
                mode,
                owner,
                group,
                length,
            } => {
                out.put("op", file_op_name(*op))?;
                match path {
                    Some(p) => put_path(out, "path", "path_hex", p)?,
                    None => out.put("path", &None::<&str>)?,
                }
                out.put("path_resolved", resolved)?;
                match second {
                    Some(("new_path", p)) => put_path(out, "new_path", "new_path_hex", p)?,
                    Some((_, p)) => put_path(out, "target", "target_hex", p)?,
                    None => {}
                }
                if let Some(target) = symlink_target {
                    put_path(out, "target", "target_hex", target)?;
                }
                match op {
                    FileOp::Open => {
                        out.put("flags", &open_flags(*flags))?;
                        if *flags & (libc::O_CREAT as u32) != 0 {
                            out.put("mode", &Mode(*mode))?;
                        }
                    }
                    FileOp::Mkdir | FileOp::Chmod => out.put("mode", &Mode(*mode))?,
                    FileOp::Chown => {
                        // -1 means "leave unchanged".
                        let id = |v: u32| (v != u32::MAX).then_some(v);
                        out.put("owner", &id(*owner))?;
                        out.put("group", &id(*group))?;
                    }
                    FileOp::Truncate => out.put("length", length)?,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Where [`Record::emit`] puts fields: a JSON object in memory, or a JSON writer.
trait Out {
    type Error;
    fn put<V: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &V,
    ) -> Result<(), Self::Error>;
}

struct MapOut(Map<String, Value>);

impl Out for MapOut {
    type Error = std::convert::Infallible;
    fn put<V: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &V,
    ) -> Result<(), Self::Error> {
        // These values always have a JSON form; `Null` would only stand in for one that had not.
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.0.insert(key.to_string(), value);
        Ok(())
    }
}

struct StreamOut<M>(M);

impl<M: serde::ser::SerializeMap<Error = serde_json::Error>> Out for StreamOut<M> {
    type Error = serde_json::Error;
    fn put<V: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &V,
    ) -> Result<(), Self::Error> {
        self.0.serialize_entry(key, value)
    }
}

/// `path` under `key` as text, and its exact bytes under `hex_key` when it is not UTF-8.
fn put_path<O: Out>(out: &mut O, key: &str, hex_key: &str, path: &Path) -> Result<(), O::Error> {
    out.put(key, &Lossy(path))?;
    put_hex(out, hex_key, path)
}

/// The exact bytes of `path` under `key`, when it is not UTF-8.
fn put_hex<O: Out>(out: &mut O, key: &str, path: &Path) -> Result<(), O::Error> {
    if path.to_str().is_none() {
        out.put(key, &Hex(path.as_os_str().as_bytes()))?;
    }
    Ok(())
}

/// A path as text (invalid UTF-8 replaced).
struct Lossy<'a>(&'a Path);

impl serde::Serialize for Lossy<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string_lossy())
    }
}

/// Bytes as lowercase hex.
struct Hex<'a>(&'a [u8]);

impl serde::Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&paths::hex(self.0))
    }
}

/// Anything printed through `Display` (addresses), without an intermediate string.
struct Text<'a, T>(&'a T);

impl<T: std::fmt::Display> serde::Serialize for Text<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// Permission bits in octal, as `0644`.
struct Mode(u32);

impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&mode_text(self.0))
    }
}

/// Arguments as text (invalid UTF-8 replaced).
struct Argv<'a>(&'a [Vec<u8>]);

impl serde::Serialize for Argv<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|a| String::from_utf8_lossy(a)))
    }
}

/// The ancestry chain as `[{"pid": .., "exe": ..}, ...]`.
struct Ancestry<'a>(&'a [Ancestor]);

impl serde::Serialize for Ancestry<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct One<'a>(&'a Ancestor);
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("pid", &self.0.pid)?;
                m.serialize_entry("exe", &self.0.exe().map(Lossy))?;
                m.end()
            }
        }
        s.collect_seq(self.0.iter().map(One))
    }
}

/// The `op` of a network event.
pub fn net_op_name(op: NetOp) -> &'static str {
    match op {
        NetOp::TcpConnect => "tcp_connect",
        NetOp::TcpAccept => "tcp_accept",
        NetOp::TcpListen => "tcp_listen",
        NetOp::UdpConnect => "udp_connect",
        NetOp::UdpSend => "udp_send",
        NetOp::UdpBind => "udp_bind",
    }
}

/// The `op` of a file event.
pub fn file_op_name(op: FileOp) -> &'static str {
    match op {
        FileOp::Open => "open",
        FileOp::Rename => "rename",
        FileOp::Unlink => "unlink",
        FileOp::Rmdir => "rmdir",
        FileOp::Mkdir => "mkdir",
        FileOp::Link => "link",
        FileOp::Symlink => "symlink",
        FileOp::Chmod => "chmod",
        FileOp::Chown => "chown",
        FileOp::Truncate => "truncate",
        FileOp::Chdir => "chdir",
        FileOp::MemfdCreate => "memfd_create",
    }
}

/// Keeps the state that gives events their context.
pub struct Enricher {
    table: ProcessTable,
    hashes: HashCache,
    /// Local TCP port → process that listened on it (accepts happen in no task's context).
    listeners: HashMap<u16, u32>,
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

impl Enricher {
    pub fn new() -> Self {
        Self {
            table: ProcessTable::new(),
            hashes: HashCache::new(4096),
            listeners: HashMap::new(),
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
        }
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
        // Read while the process may still live: it can be gone by the next record.
        let running = read_proc_link(pid, "exe");
        let proc_exe = PathBuf::from(format!("/proc/{pid}/exe"));
        // `execveat(fd, ...)` shows as `/dev/fd/N[/path]`: the kernel's link names the file, or
        // else what the process table knows of that fd (a memfd it created, a file it wrote).
        let by_fd = e.execveat.is_some() && filename.starts_with("/dev/fd/");
        let exe = if by_fd {
            running
                .clone()
                .or_else(|| self.fd_path(pid, &filename))
                .unwrap_or_else(|| filename.clone())
        } else if names_own_exe(&filename, pid) {
            // `/proc/self/exe`: the process runs its own executable again (busybox does for
            // its applets). The link is the file itself, not a path to report: name the file,
            // as running now, or else as the process table knew it before the exec.
            running
                .clone()
                .or_else(|| self.table.get(pid).image.exe.clone())
                .unwrap_or_else(|| filename.clone())
        } else if filename.is_absolute() {
            paths::normalized_bytes(&e.filename)
        } else {
            let cwd = self
                .table
                .cwd(pid)
                .unwrap_or_else(|| Arc::from(Path::new("/")));
            paths::absolute(&cwd, &filename)
        };
        // A script runs under an interpreter: the running binary is another file than the one
        // exec'd. Hash the file exec'd; for a binary, the very inode running when still there.
        // The kernel's name of the running file equal to the name exec'd settles it without a
        // `stat` (the usual case); else the inodes are compared.
        let interpreted_live = running
            .as_ref()
            .is_some_and(|r| !by_fd && *r != exe && !same_file(&exe, &proc_exe));
        let hash_from = if running.is_some() && !interpreted_live {
            proc_exe.as_path()
        } else {
            exe.as_path()
        };
        let digest = self.hashes.digest(hash_from).ok();
        let interpreter = if interpreted_live {
            running
        } else {
            digest.as_ref().and_then(|d| d.shebang.clone())
        };
        let sha256 = digest.map(|d| d.sha256);
        let exe_text = exe.as_os_str().as_bytes();
        let fileless = exe_text.starts_with(b"/memfd:");
        let deleted = exe_text.ends_with(b" (deleted)");

        self.table.exec(pid, Some(exe), sha256, e.argv);
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
                    interpreter,
                    fileless,
                    deleted,
                    execveat: e.execveat.is_some(),
                },
            },
        )
    }

    /// What `fd` of `pid` is, per the process table, for a `/dev/fd/N` exec path.
    fn fd_path(&mut self, pid: u32, filename: &Path) -> Option<PathBuf> {
        let fd: i32 = filename
            .strip_prefix("/dev/fd")
            .ok()?
            .components()
            .next()?
            .as_os_str()
            .to_str()?
            .parse()
            .ok()?;
        self.table.get(pid).file(fd).map(|p| p.to_path_buf())
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
            NetOp::TcpConnect | NetOp::TcpAccept | NetOp::TcpListen
        );
        if n.op == NetOp::TcpConnect && local.1 == 0 && n.fd >= 0 {
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
        if udp && (n.sock_type_unknown || local.1 == 0) {
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

fn event(category: Category, record: Record) -> Event {
    Event {
        category,
        fields: Fields::new(record),
    }
}

/// Whether two paths name the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => true,
    }
}

/// What a borrowed socket says of itself.
struct SocketInfo {
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    kind: i32,
    /// Bound local address, if any.
    local: Option<std::net::SocketAddr>,
    /// Connected peer, if any.
    peer: Option<std::net::SocketAddr>,
}

/// Looks at socket `fd` of process `pid` by borrowing the descriptor with `pidfd_getfd`
/// (Linux >= 5.6). `None` if the process or the fd is gone.
fn socket_info(pid: u32, fd: i32) -> Option<SocketInfo> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: plain syscalls on buffers we own; every fd they return is owned right away and
    // closed on drop.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let sock = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if sock < 0 {
            return None;
        }
        let sock = OwnedFd::from_raw_fd(sock as i32);
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        );
        if rc != 0 {
            return None;
        }
        let name = |get: unsafe extern "C" fn(
            libc::c_int,
            *mut libc::sockaddr,
            *mut libc::socklen_t,
        ) -> libc::c_int| {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let rc = get(
                sock.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            );
            if rc == 0 {
                sockaddr_to_std(&storage)
            } else {
                None
            }
        };
        Some(SocketInfo {
            kind,
            local: name(libc::getsockname),
            peer: name(libc::getpeername),
        })
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn mode_text(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// The names of the interesting flags of an `open`.
fn open_flags(flags: u32) -> Vec<&'static str> {
    let flags = flags as i32;
    let mut out = Vec::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => out.push("O_WRONLY"),
        libc::O_RDWR => out.push("O_RDWR"),
        _ => out.push("O_RDONLY"),
    }
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_TMPFILE & !libc::O_DIRECTORY, "O_TMPFILE"),
        (libc::O_SYNC & !libc::O_DSYNC, "O_SYNC"),
        (libc::O_DSYNC, "O_DSYNC"),
    ] {
        if flags & bit == bit {
            out.push(name);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::decode::Comm;

    fn task(known: bool) -> Task {
        Task {
            pid: 42,
            tid: 43,
            uid: 1000,
            gid: 100,
            boot_ns: 7,
            cgroup_id: 9,
            comm: Comm::new(b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            known,
        }
    }

    fn context(exe: &[u8]) -> Option<Context> {
        let parent = Arc::new(Image {
            exe: Some("/bin/init".into()),
            ..Image::default()
        });
        Some(Context {
            ppid: Some(1),
            image: Arc::new(Image {
                exe: Some(paths::from_bytes(exe)),
                sha256: Some([0xab; 32]),
                argv: vec![b"sh".to_vec(), b"-c\xff".to_vec()],
            }),
            ancestry: vec![Ancestor {
                pid: 1,
                image: parent,
            }],
        })
    }

    /// The line printed for `r`, checked to be the same both ways it can be produced.
    fn printed(r: &Record) -> String {
        let mut direct = Vec::new();
        r.write_json(&mut direct).unwrap();
        let direct = String::from_utf8(direct).unwrap();
        assert_eq!(direct, serde_json::to_string(&r.to_json()).unwrap());
        direct
    }

    #[test]
    fn prints_events_with_fields_in_their_order() {
        let exec = Record {
            task: task(true),
            process: context(b"/tmp/\xffsh"),
            detail: Detail::Exec {
                filename: "/tmp/x".into(),
                argv_truncated: false,
                argv_missing: true,
                interpreter: Some("/bin/sh".into()),
                fileless: false,
                deleted: false,
                execveat: false,
            },
        };
        let sha = "ab".repeat(32);
        assert_eq!(
            printed(&exec),
            format!(
                r#"{{"event":"exec","time_ns":7,"pid":42,"tid":43,"ppid":1,"uid":1000,"gid":100,"comm":"sh","exe":"/tmp/�sh","sha256":"{sha}","argv":["sh","-c�"],"ancestry":[{{"pid":1,"exe":"/bin/init"}}],"cgroup_id":9,"exe_hex":"2f746d702fff7368","filename":"/tmp/x","argv_truncated":false,"argv_missing":true,"interpreter":"/bin/sh","fileless":false,"deleted":false,"execveat":false}}"#
            )
        );
        let accept = Record {
            task: Task {
                pid: 0,
                ..task(false)
            },
            process: None,
            detail: Detail::Net {
                op: NetOp::TcpAccept,
                pid_source: "unknown",
                local: ("::1".parse().unwrap(), 22),
                remote: ("::1".parse().unwrap(), 40000),
                socket_type: None,
            },
        };
        assert_eq!(
            printed(&accept),
            r#"{"event":"net","time_ns":7,"pid":null,"tid":null,"ppid":null,"uid":null,"gid":null,"comm":"sh","exe":null,"sha256":null,"argv":[],"ancestry":[],"cgroup_id":9,"op":"tcp_accept","pid_source":"unknown","family":"ipv6","local_addr":"::1","local_port":22,"remote_addr":"::1","remote_port":40000}"#
        );
        let rename = Record {
            task: task(true),
            process: context(b"/bin/mv"),
            detail: Detail::File {
                op: FileOp::Rename,
                path: Some(paths::from_bytes(b"/a/\xfe")),
                resolved: true,
                second: Some(("new_path", "/b".into())),
                symlink_target: None,
                flags: 0,
                mode: 0,
                owner: 0,
                group: 0,
                length: 0,
            },
        };
        let line = printed(&rename);
        assert!(
            line.ends_with(r#""cgroup_id":9,"op":"rename","path":"/a/�","path_hex":"2f612ffe","path_resolved":true,"new_path":"/b"}"#),
            "{line}"
        );
        let open = Record {
            task: task(true),
            process: context(b"/bin/sh"),
            detail: Detail::File {
                op: FileOp::Open,
                path: None,
                resolved: false,
                second: None,
                symlink_target: None,
                flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
                mode: 0o100640,
                owner: 0,
                group: 0,
                length: 0,
            },
        };
        let line = printed(&open);
        assert!(
            line.ends_with(r#""op":"open","path":null,"path_resolved":false,"flags":["O_WRONLY","O_CREAT"],"mode":"0640"}"#),
            "{line}"
        );
        let exit = Record {
            task: task(true),
            process: context(b"/bin/sh"),
            detail: Detail::Exit {
                code: Some(0x1ff),
                signal: None,
            },
        };
        assert!(printed(&exit).ends_with(r#""exit_code":255,"signal":null}"#));
    }

    #[test]
    fn recognises_own_exe_links() {
        assert!(names_own_exe(Path::new("/proc/self/exe"), 7));
        assert!(names_own_exe(Path::new("/proc/thread-self/exe"), 7));
        assert!(names_own_exe(Path::new("/proc/7/exe"), 7));
        assert!(!names_own_exe(Path::new("/proc/8/exe"), 7));
        assert!(!names_own_exe(Path::new("/proc/self/fd/3"), 7));
        assert!(!names_own_exe(Path::new("/bin/busybox"), 7));
        assert!(!names_own_exe(Path::new("/proc/self/exe/x"), 7));
    }

    #[test]
    fn names_open_flags() {
        let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32;
        assert_eq!(open_flags(f), vec!["O_WRONLY", "O_CREAT", "O_TRUNC"]);
        assert_eq!(open_flags(libc::O_RDWR as u32), vec!["O_RDWR"]);
        assert_eq!(mode_text(0o100644), "0644");
    }
}
