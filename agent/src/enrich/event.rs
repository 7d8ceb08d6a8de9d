//! An enriched event: the typed record (who did what, with which process context) and its JSON
//! form, built only when something asks for it.

use std::{
    borrow::Cow,
    cell::OnceCell,
    net::IpAddr,
    ops::Deref,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use picket_common::{FileOp, NetOp};
use picket_proto::ProcessContext;
use serde_json::{Map, Value};

use super::{
    privilege::{self, Privileged},
    process::{Ancestor, Image},
};
use crate::{
    paths,
    sensors::decode::{LoaderVar, Task},
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
    pub(super) fn new(record: Record) -> Self {
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

/// What identifies the file an exec ran, and how it was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecFile {
    pub dev: u64,
    pub ino: u64,
    /// Change marker: the inode's ctime, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// `exec`: taken from the file the kernel opened for the exec (race-free); `proc`: read
    /// back from `/proc/PID/exe` while the process still ran.
    pub source: &'static str,
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
        /// The executed file's identity, when it could be established.
        file: Option<ExecFile>,
        /// Why the executed file has no SHA-256 (the process context's `sha256` is then
        /// `None`): it could not be verified, which is not a modification.
        hash_error: Option<String>,
        /// The absolute name the exec used, when it is not the file's own (a symbolic link).
        name_used: Option<PathBuf>,
        /// The dynamic loader variables its environment sets (`LD_PRELOAD`, `LD_AUDIT`,
        /// `LD_LIBRARY_PATH`), in its order.
        loader_env: Vec<LoaderVar>,
        /// More loader variables than the kernel's record holds: the last is cut or some are
        /// missing.
        loader_env_truncated: bool,
        /// Its environment was not fully examined for them (more entries than the kernel
        /// examines, or one it could not read).
        env_unexamined: bool,
        /// Killed before its first instruction: the exec guard enforces and this exec of a
        /// memory file (through a descriptor) was not one it could hold.
        killed: bool,
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
        /// Set on a record of the network guard.
        guard: Option<Guard>,
    },
    /// A watched (sensitive) file opened, seen by the open listener.
    Read {
        path: PathBuf,
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
    /// A privileged action: a module loaded, a process attached to, a mount changed.
    Privilege(Privileged),
    /// An exec the exec guard refused, or would have in its dry run: the process still runs
    /// its previous program.
    Refused {
        path: PathBuf,
        refusal: crate::detect::Refusal,
        enforced: bool,
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
            Detail::Privilege(_) => "privilege",
            Detail::Read { .. } => "read",
            Detail::Refused { .. } => "exec_refused",
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
        self.detail.emit(out)?;
        Ok(())
    }
}

impl Detail {
    /// The fields of what happened, after those of who did it.
    fn emit<O: Out>(&self, out: &mut O) -> Result<(), O::Error> {
        match self {
            Detail::Exec {
                filename,
                argv_truncated,
                argv_missing,
                interpreter,
                fileless,
                deleted,
                execveat,
                file,
                hash_error,
                name_used,
                loader_env,
                loader_env_truncated,
                env_unexamined,
                killed,
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
                if let Some(f) = file {
                    out.put(
                        "file",
                        &serde_json::json!({
                            "dev": f.dev, "ino": f.ino, "ctime_ns": f.ctime_ns, "source": f.source
                        }),
                    )?;
                }
                if let Some(e) = hash_error {
                    out.put("hash_error", e)?;
                }
                if let Some(n) = name_used {
                    put_path(out, "name_used", "name_used_hex", n)?;
                }
                if !loader_env.is_empty() {
                    let vars: Vec<_> = loader_env.iter().map(LoaderVar::json).collect();
                    out.put("loader_env", &vars)?;
                }
                if *loader_env_truncated {
                    out.put("loader_env_truncated", &true)?;
                }
                if *env_unexamined {
                    out.put("env_unexamined", &true)?;
                }
                if *killed {
                    out.put("killed", &true)?;
                }
                out.put("execveat", execveat)
            }
            Detail::Fork { child_pid } => out.put("child_pid", child_pid),
            Detail::Exit { code, signal } => {
                // The kernel stores `exit_group(status)` as `status & 0xff`.
                out.put("exit_code", &code.map(|c| c & 0xff))?;
                out.put("signal", signal)
            }
            Detail::Net {
                op,
                pid_source,
                local,
                remote,
                socket_type,
                guard,
            } => emit_net(
                out,
                *op,
                pid_source,
                (*local, *remote),
                *socket_type,
                *guard,
            ),
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
            } => emit_file(
                out,
                *op,
                path.as_deref(),
                *resolved,
                second.as_ref(),
                symlink_target.as_deref(),
                (*flags, *mode, *owner, *group, *length),
            ),
            Detail::Privilege(p) => emit_privilege(out, p),
            Detail::Read { path } => put_path(out, "path", "path_hex", path),
            Detail::Refused {
                path,
                refusal,
                enforced,
            } => {
                put_path(out, "path", "path_hex", path)?;
                out.put("reason", refusal.reason())?;
                out.put("enforced", enforced)
            }
        }
    }
}

/// The fields of a network event.
fn emit_net<O: Out>(
    out: &mut O,
    op: NetOp,
    pid_source: &'static str,
    (local, remote): ((IpAddr, u16), (IpAddr, u16)),
    socket_type: Option<&'static str>,
    guard: Option<Guard>,
) -> Result<(), O::Error> {
    out.put("op", net_op_name(op))?;
    out.put("pid_source", pid_source)?;
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
        out.put("socket_type", t)?;
    }
    if let Some(g) = guard {
        out.put("guard", g.name())?;
    }
    Ok(())
}

/// The fields of a file event; `attributes` are the flags, mode, owner, group and length the
/// operation set (each printed only for the operations that have it).
fn emit_file<O: Out>(
    out: &mut O,
    op: FileOp,
    path: Option<&Path>,
    resolved: bool,
    second: Option<&(&'static str, PathBuf)>,
    symlink_target: Option<&Path>,
    (flags, mode, owner, group, length): (u32, u32, u32, u32, i64),
) -> Result<(), O::Error> {
    out.put("op", file_op_name(op))?;
    match path {
        Some(p) => put_path(out, "path", "path_hex", p)?,
        None => out.put("path", &None::<&str>)?,
    }
    out.put("path_resolved", &resolved)?;
    match second {
        Some((name, p)) if *name == "new_path" => put_path(out, "new_path", "new_path_hex", p)?,
        Some((_, p)) => put_path(out, "target", "target_hex", p)?,
        None => {}
    }
    if let Some(target) = symlink_target {
        put_path(out, "target", "target_hex", target)?;
    }
    match op {
        FileOp::Open => {
            out.put("flags", &open_flags(flags))?;
            if flags & (libc::O_CREAT as u32) != 0 {
                out.put("mode", &Mode(mode))?;
            }
        }
        FileOp::Mkdir | FileOp::Chmod => out.put("mode", &Mode(mode))?,
        FileOp::Chown => {
            // -1 means "leave unchanged".
            let id = |v: u32| (v != u32::MAX).then_some(v);
            out.put("owner", &id(owner))?;
            out.put("group", &id(group))?;
        }
        FileOp::Truncate => out.put("length", &length)?,
        FileOp::SetCapability => {
            let permitted = length as u64;
            out.put("capabilities", &privilege::capability_names(permitted))?;
            out.put("effective", &privilege::capability_effective(mode))?;
            out.put("revision", &privilege::capability_revision(mode))?;
        }
        _ => {}
    }
    Ok(())
}

/// The fields of a privileged action: `action` (`module`, `ptrace` or `mount`), `op` and what
/// was acted on.
fn emit_privilege<O: Out>(out: &mut O, p: &Privileged) -> Result<(), O::Error> {
    match p {
        Privileged::Module {
            op,
            file,
            fd,
            params,
        } => {
            out.put("action", "module")?;
            out.put("op", op)?;
            match file {
                Some(f) => put_path(out, "file", "file_hex", f.as_path())?,
                None => out.put("file", &None::<&str>)?,
            }
            out.put("fd", fd)?;
            out.put("from_memory", &fd.is_none())?;
            out.put("params", params)
        }
        Privileged::Injection {
            op,
            request,
            target_pid,
            target_exe,
            bytes,
        } => {
            out.put("action", "ptrace")?;
            out.put("op", op)?;
            if let Some(r) = request {
                out.put("request", r)?;
            }
            out.put("target_pid", target_pid)?;
            match target_exe {
                Some(e) => put_path(out, "target_exe", "target_exe_hex", e.as_path())?,
                None => out.put("target_exe", &None::<&str>)?,
            }
            if let Some(b) = bytes {
                out.put("bytes", b)?;
            }
            Ok(())
        }
        Privileged::Mount(m) => {
            out.put("action", "mount")?;
            out.put("op", m.op)?;
            match &m.target {
                Some(t) => put_path(out, "target", "target_hex", t.as_path())?,
                None => out.put("target", &None::<&str>)?,
            }
            out.put("source", &m.source)?;
            out.put("fstype", &m.fstype)?;
            out.put("flags", &m.flags)?;
            out.put("remount", &m.remount)?;
            out.put("bind", &m.bind)?;
            out.put("writable", &m.writable)?;
            out.put("namespace", m.namespace)?;
            out.put("namespace_source", m.namespace_source)
        }
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
        NetOp::TcpBind => "tcp_bind",
    }
}

/// What the network guard did with a network operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Refused: the process got `EPERM`.
    Blocked,
    /// Let through in dry run; enforcing would have refused it.
    WouldBlock,
}

impl Guard {
    /// The `guard` field of the event.
    pub fn name(self) -> &'static str {
        match self {
            Guard::Blocked => "blocked",
            Guard::WouldBlock => "would_block",
        }
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
        FileOp::SetCapability => "set_capability",
    }
}

pub(super) fn mode_text(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// The names of the interesting flags of an `open`.
pub(super) fn open_flags(flags: u32) -> Vec<&'static str> {
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
