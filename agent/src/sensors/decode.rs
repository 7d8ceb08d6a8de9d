//! Decoding ring buffer records into typed events.
//!
//! Records are untrusted bytes as far as this module is concerned: every length is checked
//! against the record's size before use, and a record that does not make sense is an error
//! value, never a panic.

use std::{
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use picket_common::{
    EventHeader, EventKind, ExecEvent, ExitEvent, FileEvent, FileOp, ForkEvent, NetEvent, NetOp,
    ARGV_MAX, COMM_LEN, ENV_MAX, EXEC_EVENT_FILENAME_OFFSET, EXEC_FLAG_ARGV_MISSING,
    EXEC_FLAG_ARGV_TRUNCATED, EXEC_FLAG_ENV_TRUNCATED, EXEC_FLAG_ENV_UNEXAMINED,
    EXEC_FLAG_EXECVEAT, EXEC_FLAG_KILLED, EXIT_FLAG_CODE, EXIT_FLAG_SIGNAL,
    FILE_EVENT_PATH2_OFFSET, FILE_EVENT_PATH_OFFSET, FILE_FLAG_FD_ONLY, HEADER_FLAG_NO_TASK,
    NET_FLAG_BLOCKED, NET_FLAG_SOCK_UNKNOWN, NET_FLAG_WOULD_BLOCK, PATH_MAX,
    PRIV_EVENT_PATH2_OFFSET, PRIV_EVENT_PATH_OFFSET, PRIV_TEXT_MAX,
};
pub use picket_common::{PrivOp, PrivilegeEvent};
use thiserror::Error;

use crate::enrich::Guard;

const AF_INET6: u16 = 10;

/// Why a record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than a header")]
    NoHeader(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("{kind:?} record of {len} bytes, expected at least {min}")]
    Short {
        kind: EventKind,
        len: usize,
        min: usize,
    },
    #[error("{kind:?} record says {field} is {value} bytes, which does not fit in {len}")]
    BadLength {
        kind: EventKind,
        field: &'static str,
        value: usize,
        len: usize,
    },
    #[error("unknown {what} {value}")]
    UnknownOp { what: &'static str, value: u16 },
}

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Process id; 0 when the kernel did not know the task.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since boot.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    pub comm: Comm,
    /// False for work done in interrupt context on behalf of no task.
    pub known: bool,
}

/// A task's command name as the kernel keeps it: up to [`COMM_LEN`] bytes, kept inline (no
/// allocation per record) and turned into text only when printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    pub fn new(raw: &[u8; COMM_LEN]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        Self {
            bytes: *raw,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The name as text (invalid UTF-8 replaced).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text())
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Exec(Exec),
    Fork { task: Task, child_pid: u32 },
    Exit(Exit),
    Net(Net),
    File(File),
    Privilege(Privilege),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub task: Task,
    pub old_tid: u32,
    /// The path the kernel was given (`bprm->filename`), raw bytes.
    pub filename: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub argv_truncated: bool,
    pub argv_missing: bool,
    /// `Some((dirfd, flags))` for `execveat`.
    pub execveat: Option<(i32, u32)>,
    /// The dynamic loader variables of the environment, in its order.
    pub loader_env: Vec<LoaderVar>,
    /// More loader variables than the record holds: the last is cut, or some are missing.
    pub loader_env_truncated: bool,
    /// Environment entries the kernel examined for loader variables.
    pub env_examined: u16,
    /// The environment had entries the kernel did not examine (more than it examines, or
    /// unreadable).
    pub env_unexamined: bool,
    /// Killed by the exec guard's kernel side before its first instruction (see
    /// `EXEC_FLAG_KILLED`).
    pub killed: bool,
}

/// The dynamic loader variables the kernel keeps from an exec's environment.
pub const LOADER_VARIABLES: [&str; 3] = ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH"];

/// A loader variable set in an exec's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderVar {
    /// One of [`LOADER_VARIABLES`].
    pub name: &'static str,
    /// Its value, raw bytes.
    pub value: Vec<u8>,
    /// The value was longer than the record holds: this is its beginning.
    pub cut: bool,
}

impl LoaderVar {
    /// As printed and in alerts: `variable`, `value` (lossy text; `value_hex` too when it is
    /// not UTF-8), and `truncated` when the value was cut.
    pub fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut o = serde_json::Map::new();
        o.insert("variable".into(), self.name.into());
        o.insert(
            "value".into(),
            String::from_utf8_lossy(&self.value).into_owned().into(),
        );
        if std::str::from_utf8(&self.value).is_err() {
            o.insert("value_hex".into(), crate::paths::hex(&self.value).into());
        }
        if self.cut {
            o.insert("truncated".into(), true.into());
        }
        o
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub task: Task,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    pub task: Task,
    pub op: NetOp,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub fd: i32,
    /// The kernel did not know the socket's type: user space must check it is UDP.
    pub sock_type_unknown: bool,
    /// A record of the network guard: the operation was refused, or would have been.
    pub guard: Option<Guard>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub task: Task,
    pub op: FileOp,
    /// As passed to the syscall (empty with `fd_only`).
    pub path: Vec<u8>,
    pub path2: Vec<u8>,
    pub dirfd: i32,
    pub dirfd2: i32,
    /// The operation named an fd (in `dirfd`), not a path.
    pub fd_only: bool,
    pub op_flags: u32,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
    pub length: i64,
    pub ret: i64,
}

/// A privileged action (see [`PrivOp`] for what each field holds per operation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub task: Task,
    pub op: PrivOp,
    /// As passed to the syscall: a mount's target, a module's parameters (`text`), ...
    pub path: Vec<u8>,
    pub path2: Vec<u8>,
    pub text: Vec<u8>,
    pub dirfd: i32,
    pub dirfd2: i32,
    pub target: i32,
    pub flags: u32,
    pub arg: u64,
    pub arg2: u64,
    pub ret: i64,
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let header: EventHeader = read(bytes).ok_or(DecodeError::NoHeader(bytes.len()))?;
    let kind = EventKind::from_u16(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    match kind {
        EventKind::Exec => decode_exec(&header, bytes),
        EventKind::Fork => decode_fork(&header, bytes),
        EventKind::Exit => decode_exit(&header, bytes),
        EventKind::Net => decode_net(&header, bytes),
        EventKind::File => decode_file(&header, bytes),
        EventKind::Privilege => decode_privilege(&header, bytes),
    }
}

/// A privileged action's record: fixed fields and text, then one or two paths, each as long as
/// it says.
fn decode_privilege(header: &EventHeader, bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let kind = EventKind::Privilege;
    let min = PRIV_EVENT_PATH_OFFSET;
    if bytes.len() < min {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            min,
        });
    }
    let raw_op = field::<u16>(bytes, offset_of!(PrivilegeEvent, op));
    let op = PrivOp::from_u16(raw_op).ok_or(DecodeError::UnknownOp {
        what: "privileged operation",
        value: raw_op,
    })?;
    let bad = |field, value| DecodeError::BadLength {
        kind,
        field,
        value,
        len: bytes.len(),
    };
    let text_len = usize::from(field::<u16>(bytes, offset_of!(PrivilegeEvent, text_len)));
    if text_len >= PRIV_TEXT_MAX {
        return Err(bad("text", text_len));
    }
    let text_at = offset_of!(PrivilegeEvent, text);
    let text = bytes[text_at..text_at + text_len].to_vec();
    let path_len = usize::from(field::<u16>(bytes, offset_of!(PrivilegeEvent, path_len)));
    if path_len >= PATH_MAX {
        return Err(bad("path", path_len));
    }
    let path = bytes
        .get(PRIV_EVENT_PATH_OFFSET..PRIV_EVENT_PATH_OFFSET + path_len)
        .ok_or(bad("path", path_len))?
        .to_vec();
    let path2_len = usize::from(field::<u16>(bytes, offset_of!(PrivilegeEvent, path2_len)));
    let path2 = if path2_len > 0 {
        bytes
            .get(PRIV_EVENT_PATH2_OFFSET..PRIV_EVENT_PATH2_OFFSET + path2_len)
            .ok_or(bad("path2", path2_len))?
            .to_vec()
    } else {
        Vec::new()
    };
    Ok(RawEvent::Privilege(Privilege {
        task: task(header),
        op,
        path,
        path2,
        text,
        dirfd: field(bytes, offset_of!(PrivilegeEvent, dirfd)),
        dirfd2: field(bytes, offset_of!(PrivilegeEvent, dirfd2)),
        target: field(bytes, offset_of!(PrivilegeEvent, target)),
        flags: field(bytes, offset_of!(PrivilegeEvent, flags)),
        arg: field(bytes, offset_of!(PrivilegeEvent, arg)),
        arg2: field(bytes, offset_of!(PrivilegeEvent, arg2)),
        ret: field(bytes, offset_of!(PrivilegeEvent, ret)),
    }))
}

/// An exec record: fixed fields, then the filename and argv buffers, each as long as it says.
fn decode_exec(header: &EventHeader, bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let kind = EventKind::Exec;
    let min = EXEC_EVENT_FILENAME_OFFSET;
    if bytes.len() < min {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            min,
        });
    }
    // Only the fixed fields are read: copying the whole record type would zero and
    // copy kilobytes of buffers per record.
    let filename_len = usize::from(field::<u16>(bytes, offset_of!(ExecEvent, filename_len)));
    let filename = bytes
        .get(min..min + filename_len)
        .ok_or(DecodeError::BadLength {
            kind,
            field: "filename",
            value: filename_len,
            len: bytes.len(),
        })?
        .to_vec();
    let argv_len = usize::from(field::<u16>(bytes, offset_of!(ExecEvent, argv_len))).min(ARGV_MAX);
    let argv_at = offset_of!(ExecEvent, argv);
    let argc = usize::from(field::<u16>(bytes, offset_of!(ExecEvent, argc)));
    let argv = split_argv(&bytes[argv_at..argv_at + argv_len], argc);
    let env_len = usize::from(field::<u16>(bytes, offset_of!(ExecEvent, env_len))).min(ENV_MAX);
    let env_at = offset_of!(ExecEvent, env);
    let (loader_env, damaged) = split_loader_env(&bytes[env_at..env_at + env_len]);
    Ok(RawEvent::Exec(Exec {
        task: task(header),
        old_tid: field(bytes, offset_of!(ExecEvent, old_tid)),
        filename,
        argv,
        argv_truncated: header.flags & EXEC_FLAG_ARGV_TRUNCATED != 0,
        argv_missing: header.flags & EXEC_FLAG_ARGV_MISSING != 0,
        execveat: (header.flags & EXEC_FLAG_EXECVEAT != 0).then(|| {
            (
                field(bytes, offset_of!(ExecEvent, exec_fd)),
                field(bytes, offset_of!(ExecEvent, exec_at_flags)),
            )
        }),
        loader_env,
        loader_env_truncated: damaged || header.flags & EXEC_FLAG_ENV_TRUNCATED != 0,
        env_examined: field(bytes, offset_of!(ExecEvent, env_examined)),
        env_unexamined: header.flags & EXEC_FLAG_ENV_UNEXAMINED != 0,
        killed: header.flags & EXEC_FLAG_KILLED != 0,
    }))
}

/// The packed `NAME=value` entries of an exec record's `env`; the last one, unterminated, was
/// cut. The kernel keeps only loader variables; an entry that is not one (cut inside its name,
/// or changed by another thread between the kernel's reads) is dropped and said (`true`): the
/// exec itself is never lost to its environment.
fn split_loader_env(bytes: &[u8]) -> (Vec<LoaderVar>, bool) {
    let mut damaged = false;
    let mut vars = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (entry, cut) = match rest.iter().position(|&b| b == 0) {
            Some(end) => {
                let entry = &rest[..end];
                rest = &rest[end + 1..];
                (entry, false)
            }
            None => (std::mem::take(&mut rest), true),
        };
        let var = LOADER_VARIABLES.iter().find_map(|name| {
            let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            Some(LoaderVar {
                name,
                value: value.to_vec(),
                cut,
            })
        });
        match var {
            Some(var) => vars.push(var),
            None => damaged = true,
        }
    }
    (vars, damaged)
}

/// A fork record: the new process's pid.
fn decode_fork(header: &EventHeader, bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let e: ForkEvent = read(bytes).ok_or(short::<ForkEvent>(EventKind::Fork, bytes))?;
    Ok(RawEvent::Fork {
        task: task(header),
        child_pid: e.child_pid,
    })
}

/// An exit record: the exit code or the signal, each only when the kernel set it.
fn decode_exit(header: &EventHeader, bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let e: ExitEvent = read(bytes).ok_or(short::<ExitEvent>(EventKind::Exit, bytes))?;
    Ok(RawEvent::Exit(Exit {
        task: task(header),
        code: (header.flags & EXIT_FLAG_CODE != 0).then_some(e.exit_code),
        signal: (header.flags & EXIT_FLAG_SIGNAL != 0).then_some(e.signal),
    }))
}

/// A network record: the operation and both ends, IPv4 or IPv6.
fn decode_net(header: &EventHeader, bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let e: NetEvent = read(bytes).ok_or(short::<NetEvent>(EventKind::Net, bytes))?;
    let op = NetOp::from_u16(e.op).ok_or(DecodeError::UnknownOp {
        what: "network operation",
        value: e.op,
    })?;
    let v6 = e.family == AF_INET6;
    Ok(RawEvent::Net(Net {
        task: task(header),
        op,
        local: (ip(v6, &e.local_addr), e.local_port),
        remote: (ip(v6, &e.remote_addr), e.remote_port),
        fd: e.fd,
        sock_type_unknown: header.flags & NET_FLAG_SOCK_UNKNOWN != 0,
        guard: if header.flags & NET_FLAG_BLOCKED != 0 {
            Some(Guard::Blocked)
        } else if header.flags & NET_FLAG_WOULD_BLOCK != 0 {
            Some(Guard::WouldBlock)
        } else {
            None
        },
    }))
}

/// A file record: fixed fields, then one or two paths, each as long as it says.
fn decode_file(header: &EventHeader, bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let kind = EventKind::File;
    let min = FILE_EVENT_PATH_OFFSET;
    if bytes.len() < min {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            min,
        });
    }
    let raw_op = field::<u16>(bytes, offset_of!(FileEvent, op));
    let op = FileOp::from_u16(raw_op).ok_or(DecodeError::UnknownOp {
        what: "file operation",
        value: raw_op,
    })?;
    let (path, path2) = file_paths(bytes)?;
    Ok(RawEvent::File(File {
        task: task(header),
        op,
        path,
        path2,
        dirfd: field(bytes, offset_of!(FileEvent, dirfd)),
        dirfd2: field(bytes, offset_of!(FileEvent, dirfd2)),
        fd_only: header.flags & FILE_FLAG_FD_ONLY != 0,
        op_flags: field(bytes, offset_of!(FileEvent, op_flags)),
        mode: field(bytes, offset_of!(FileEvent, mode)),
        owner: field(bytes, offset_of!(FileEvent, owner)),
        group: field(bytes, offset_of!(FileEvent, group)),
        length: field(bytes, offset_of!(FileEvent, length)),
        ret: field(bytes, offset_of!(FileEvent, ret)),
    }))
}

/// A file record's path and second path (empty when it has none), each checked to fit.
fn file_paths(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    let bad = |field, value| DecodeError::BadLength {
        kind: EventKind::File,
        field,
        value,
        len: bytes.len(),
    };
    let path_len = usize::from(field::<u16>(bytes, offset_of!(FileEvent, path_len)));
    if path_len >= PATH_MAX {
        return Err(bad("path", path_len));
    }
    let path = bytes
        .get(FILE_EVENT_PATH_OFFSET..FILE_EVENT_PATH_OFFSET + path_len)
        .ok_or(bad("path", path_len))?
        .to_vec();
    let path2_len = usize::from(field::<u16>(bytes, offset_of!(FileEvent, path2_len)));
    let path2 = if path2_len > 0 {
        bytes
            .get(FILE_EVENT_PATH2_OFFSET..FILE_EVENT_PATH2_OFFSET + path2_len)
            .ok_or(bad("path2", path2_len))?
            .to_vec()
    } else {
        Vec::new()
    };
    Ok((path, path2))
}

fn task(h: &EventHeader) -> Task {
    Task {
        pid: h.tgid,
        tid: h.tid,
        uid: h.uid,
        gid: h.gid,
        boot_ns: h.boot_ns,
        cgroup_id: h.cgroup_id,
        comm: Comm::new(&h.comm),
        known: h.flags & HEADER_FLAG_NO_TASK == 0,
    }
}

fn short<T>(kind: EventKind, bytes: &[u8]) -> DecodeError {
    DecodeError::Short {
        kind,
        len: bytes.len(),
        min: std::mem::size_of::<T>(),
    }
}

fn ip(v6: bool, addr: &[u8; 16]) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

/// Splits NUL-terminated arguments; a last argument cut short by the buffer is kept.
fn split_argv(bytes: &[u8], argc: usize) -> Vec<Vec<u8>> {
    let mut args: Vec<Vec<u8>> = bytes
        .split(|&b| b == 0)
        .map(<[u8]>::to_vec)
        .take(argc)
        .collect();
    // `split` yields an empty tail after the final NUL; `take(argc)` drops it unless an
    // argument really was empty.
    args.truncate(argc);
    args
}

/// Reads the integer at `offset` of a record whose fixed part (which holds `offset`) has been
/// checked to be present; a record cut short reads as zero rather than panicking.
fn field<T: Copy + Default>(bytes: &[u8], offset: usize) -> T {
    let size = std::mem::size_of::<T>();
    match bytes.get(offset..offset + size) {
        // SAFETY: `T` is a plain integer type, valid for any bit pattern, and the slice holds
        // exactly `size_of::<T>()` bytes; `read_unaligned` needs no alignment.
        Some(b) => unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) },
        None => T::default(),
    }
}

/// Reads a whole `T` from the start of `bytes` (only small fixed-size records and the header
/// are read this way).
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    let b = bytes.get(..std::mem::size_of::<T>())?;
    // SAFETY: `T` is one of the `#[repr(C)]` integer-only record types of `picket_common`, for
    // which every bit pattern is valid, and `b` holds `size_of::<T>()` bytes; `read_unaligned`
    // needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u16,
            flags: 0,
            tgid: 42,
            tid: 43,
            uid: 1000,
            gid: 1000,
            _pad0: 0,
            boot_ns: 7,
            cgroup_id: 9,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    fn bytes_of<T>(v: &T, len: usize) -> Vec<u8> {
        // SAFETY: test-only view of a plain struct's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), len).to_vec() }
    }

    fn file_event(op: FileOp, path: &[u8], path2: &[u8]) -> Box<FileEvent> {
        // SAFETY: all-zero is a valid FileEvent.
        let mut e: Box<FileEvent> = Box::new(unsafe { std::mem::zeroed() });
        e.header = header(EventKind::File);
        e.op = op as u16;
        e.path[..path.len()].copy_from_slice(path);
        e.path_len = path.len() as u16;
        e.path2[..path2.len()].copy_from_slice(path2);
        e.path2_len = path2.len() as u16;
        e
    }

    #[test]
    fn decodes_a_variable_length_file_record() {
        let e = file_event(FileOp::Unlink, b"/etc/\xffpasswd", b"");
        let raw = bytes_of(&*e, FILE_EVENT_PATH_OFFSET + 12);
        let RawEvent::File(f) = decode(&raw).unwrap() else {
            panic!("not a file event")
        };
        assert_eq!(f.op, FileOp::Unlink);
        assert_eq!(f.path, b"/etc/\xffpasswd");
        assert_eq!(f.task.pid, 42);
        assert_eq!(f.task.comm.text(), "sh");
    }

    #[test]
    fn decodes_both_names_of_a_rename() {
        let e = file_event(FileOp::Rename, b"a", b"b/c");
        let raw = bytes_of(&*e, FILE_EVENT_PATH2_OFFSET + 3);
        let RawEvent::File(f) = decode(&raw).unwrap() else {
            panic!("not a file event")
        };
        assert_eq!(
            (f.path.as_slice(), f.path2.as_slice()),
            (&b"a"[..], &b"b/c"[..])
        );
    }

    #[test]
    fn refuses_lengths_that_overrun_the_record() {
        let e = file_event(FileOp::Open, b"/tmp/x", b"");
        // Cut the record shorter than its path.
        let raw = bytes_of(&*e, FILE_EVENT_PATH_OFFSET + 3);
        assert!(matches!(
            decode(&raw),
            Err(DecodeError::BadLength { field: "path", .. })
        ));
        let raw = bytes_of(&*e, 10);
        assert_eq!(decode(&raw), Err(DecodeError::NoHeader(10)));
    }

    #[test]
    fn refuses_unknown_kinds_and_ops() {
        let mut h = header(EventKind::Exit);
        h.kind = 99;
        assert_eq!(
            decode(&bytes_of(&h, std::mem::size_of::<EventHeader>())),
            Err(DecodeError::UnknownKind(99))
        );
        let mut e = file_event(FileOp::Open, b"/x", b"");
        e.op = 200;
        assert!(matches!(
            decode(&bytes_of(&*e, FILE_EVENT_PATH_OFFSET + 2)),
            Err(DecodeError::UnknownOp { value: 200, .. })
        ));
    }

    #[test]
    fn decodes_a_mount_and_refuses_an_overlong_text() {
        // SAFETY: all-zero is a valid PrivilegeEvent.
        let mut e: Box<PrivilegeEvent> = Box::new(unsafe { std::mem::zeroed() });
        e.header = header(EventKind::Privilege);
        e.op = PrivOp::Mount as u16;
        e.text[..5].copy_from_slice(b"tmpfs");
        e.text_len = 5;
        e.path[..4].copy_from_slice(b"/mnt");
        e.path_len = 4;
        e.path2[..3].copy_from_slice(b"src");
        e.path2_len = 3;
        e.arg = 0x20;
        let raw = bytes_of(&*e, PRIV_EVENT_PATH2_OFFSET + 3);
        let RawEvent::Privilege(p) = decode(&raw).unwrap() else {
            panic!("not a privileged action")
        };
        assert_eq!(p.op, PrivOp::Mount);
        assert_eq!(
            (&p.text[..], &p.path[..], &p.path2[..]),
            (&b"tmpfs"[..], &b"/mnt"[..], &b"src"[..])
        );
        assert_eq!(p.arg, 0x20);
        e.text_len = PRIV_TEXT_MAX as u16;
        assert!(matches!(
            decode(&bytes_of(&*e, PRIV_EVENT_PATH2_OFFSET + 3)),
            Err(DecodeError::BadLength { field: "text", .. })
        ));
        e.text_len = 0;
        e.op = 99;
        assert!(matches!(
            decode(&bytes_of(&*e, PRIV_EVENT_PATH2_OFFSET + 3)),
            Err(DecodeError::UnknownOp { value: 99, .. })
        ));
    }

    #[test]
    fn splits_argv() {
        assert_eq!(
            split_argv(b"ls\0-l\0\0", 3),
            vec![b"ls".to_vec(), b"-l".to_vec(), b"".to_vec()]
        );
        assert_eq!(
            split_argv(b"ls\0-l\0", 2),
            vec![b"ls".to_vec(), b"-l".to_vec()]
        );
        assert!(split_argv(b"", 0).is_empty());
    }

    #[test]
    fn decodes_exec_with_truncated_argv_flag() {
        // SAFETY: all-zero is a valid ExecEvent.
        let mut e: Box<ExecEvent> = Box::new(unsafe { std::mem::zeroed() });
        e.header = header(EventKind::Exec);
        e.header.flags = EXEC_FLAG_ARGV_TRUNCATED;
        e.argv[..6].copy_from_slice(b"cat\0a\0");
        e.argv_len = 6;
        e.argc = 2;
        e.filename[..8].copy_from_slice(b"/bin/cat");
        e.filename_len = 8;
        let raw = bytes_of(&*e, EXEC_EVENT_FILENAME_OFFSET + 8);
        let RawEvent::Exec(x) = decode(&raw).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(x.filename, b"/bin/cat");
        assert_eq!(x.argv, vec![b"cat".to_vec(), b"a".to_vec()]);
        assert!(x.argv_truncated);
        assert_eq!(x.execveat, None);
    }

    fn exec_with_env(env: &[u8], flags: u16) -> Result<RawEvent, DecodeError> {
        // SAFETY: all-zero is a valid ExecEvent.
        let mut e: Box<ExecEvent> = Box::new(unsafe { std::mem::zeroed() });
        e.header = header(EventKind::Exec);
        e.header.flags = flags;
        e.env[..env.len()].copy_from_slice(env);
        e.env_len = env.len() as u16;
        e.env_examined = 40;
        e.filename[..8].copy_from_slice(b"/bin/cat");
        e.filename_len = 8;
        decode(&bytes_of(&*e, EXEC_EVENT_FILENAME_OFFSET + 8))
    }

    #[test]
    fn decodes_exec_loader_variables_in_order_the_last_cut_when_unterminated() {
        let Ok(RawEvent::Exec(x)) = exec_with_env(
            b"LD_AUDIT=/a.so\0LD_LIBRARY_PATH=\0LD_PRELOAD=/tmp/x",
            EXEC_FLAG_ENV_TRUNCATED | EXEC_FLAG_ENV_UNEXAMINED,
        ) else {
            panic!("not an exec")
        };
        let var = |name, value: &[u8], cut| LoaderVar {
            name,
            value: value.to_vec(),
            cut,
        };
        assert_eq!(
            x.loader_env,
            vec![
                var("LD_AUDIT", b"/a.so", false),
                var("LD_LIBRARY_PATH", b"", false),
                var("LD_PRELOAD", b"/tmp/x", true),
            ]
        );
        assert!(x.loader_env_truncated);
        assert!(x.env_unexamined);
        assert_eq!(x.env_examined, 40);
        assert_eq!(x.filename, b"/bin/cat");

        let Ok(RawEvent::Exec(x)) = exec_with_env(b"", 0) else {
            panic!("not an exec")
        };
        assert!(x.loader_env.is_empty());
        assert!(!x.loader_env_truncated && !x.env_unexamined);
    }

    #[test]
    fn an_exec_environment_entry_that_is_not_a_loader_variable_is_dropped_not_the_exec() {
        // Not loader variables, or one cut inside its name (`LD_PRE`, the buffer's end): the
        // exec is decoded, the entry dropped, and the environment said incomplete.
        for env in [
            &b"PATH=/bin\0"[..],
            b"LD_PRELOADX=/x\0",
            b"LD_PRELOAD\0",
            b"LD_AUDIT=/a.so\0LD_PRE",
        ] {
            let Ok(RawEvent::Exec(x)) = exec_with_env(env, 0) else {
                panic!("{env:?}: the exec was lost")
            };
            assert!(x.loader_env_truncated, "{env:?}");
            assert_eq!(x.filename, b"/bin/cat");
            let kept: Vec<&str> = x.loader_env.iter().map(|v| v.name).collect();
            let expected: &[&str] = if env.starts_with(b"LD_AUDIT") {
                &["LD_AUDIT"]
            } else {
                &[]
            };
            assert_eq!(kept, expected, "{env:?}");
        }
    }
}
