//! Types shared by Picket's eBPF programs (kernel side) and its agent (user space).
//!
//! Everything here crosses the kernel boundary as raw bytes, so every struct is `#[repr(C)]` with
//! explicit padding fields: the verifier rejects reads of uninitialised padding, and user space
//! must be able to decode a record without guessing the compiler's layout.
//!
//! A record in the ring buffer starts with an [`EventHeader`] whose `kind` says which struct
//! follows. Records carrying paths are variable-length: only the used part of the trailing path
//! buffer is sent, so a record is usually a few hundred bytes, not the full struct.
#![no_std]

/// Longest path the kernel accepts, terminating NUL included (`PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// Bytes of `argv` captured per exec: arguments are packed, each terminated by a NUL.
pub const ARGV_MAX: usize = 1024;
/// Arguments captured per exec; the rest are counted as truncated.
pub const MAX_ARGS: usize = 32;
/// Bytes of dynamic loader variables (`LD_PRELOAD`, `LD_AUDIT`, `LD_LIBRARY_PATH`) captured per
/// exec from its environment: each entry packed as `NAME=value`, NUL-terminated.
pub const ENV_MAX: usize = 256;
/// Environment entries examined per exec; an exec with more has
/// [`EXEC_FLAG_ENV_UNEXAMINED`].
pub const MAX_ENV: usize = 128;
/// Length of a task's `comm`, NUL included (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// What a ring buffer record holds.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`ExecEvent`]
    Exec = 1,
    /// [`ForkEvent`]
    Fork = 2,
    /// [`ExitEvent`]
    Exit = 3,
    /// [`NetEvent`]
    Net = 4,
    /// [`FileEvent`]
    File = 5,
    /// [`PrivilegeEvent`]
    Privilege = 6,
}

impl EventKind {
    /// Every kind, in value order.
    pub const ALL: [EventKind; 6] = [
        Self::Exec,
        Self::Fork,
        Self::Exit,
        Self::Net,
        Self::File,
        Self::Privilege,
    ];

    /// The kind's name, as in the agent's output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::Net => "net",
            Self::File => "file",
            Self::Privilege => "privilege",
        }
    }

    /// Decodes a `kind` field; `None` for a value this build does not know.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::Exec,
            2 => Self::Fork,
            3 => Self::Exit,
            4 => Self::Net,
            5 => Self::File,
            6 => Self::Privilege,
            _ => return None,
        })
    }
}

/// The sensors, each with its own lost-event counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensor {
    /// exec, fork, exit
    Process = 0,
    /// TCP and UDP
    Network = 1,
    /// file changes
    File = 2,
}

impl Sensor {
    /// All sensors, in counter order.
    pub const ALL: [Sensor; 3] = [Sensor::Process, Sensor::Network, Sensor::File];

    /// The sensor's name, as used on the command line and in output.
    pub const fn name(self) -> &'static str {
        match self {
            Sensor::Process => "process",
            Sensor::Network => "network",
            Sensor::File => "file",
        }
    }
}

/// Indexes of the in-kernel counters (`COUNTERS`, a per-CPU array of `u64`).
pub mod counter {
    /// Records dropped because the ring buffer was full, one slot per [`super::Sensor`].
    pub const LOST_BASE: u32 = 0;
    /// Exec argument stashes evicted before their exec completed (argv lost, exec still seen).
    pub const ARGV_STASH_EVICTED: u32 = 3;
    /// Syscall argument stashes missing at syscall exit (the event could not be built).
    pub const SYSCALL_STASH_MISSING: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// Records lost in the kernel, counted by the cgroup of the task that caused them, so that a
/// loss can be told apart from another's (map `LOST_BY_CGROUP`: [`loss::Key`] → one count per
/// [`EventKind`] value, summed over CPUs by the agent).
pub mod loss {
    /// A cgroup's losses of one sensor.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Key {
        /// cgroup v2 id of the acting task.
        pub cgroup_id: u64,
        /// The [`super::Sensor`] whose counter counted the loss.
        pub sensor: u32,
        pub _pad: u32,
    }

    /// (cgroup, sensor) pairs whose losses are kept; the one that lost least recently is
    /// forgotten first.
    pub const CGROUPS_MAX: u32 = 1024;
    /// Counts per cgroup, indexed by [`super::EventKind`] value (index 0 unused).
    pub const KINDS: usize = 8;
    /// A cgroup's counts.
    pub type Counts = [u64; KINDS];

    const _: () = assert!((super::EventKind::Privilege as usize) < KINDS);
}

/// Common prefix of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u16,
    /// Per-kind flags (see the `*_FLAG_*` constants).
    pub flags: u16,
    /// Process id (thread group id) of the acting task; 0 when the kernel does not know it.
    pub tgid: u32,
    /// Thread id of the acting task.
    pub tid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    pub _pad0: u32,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub boot_ns: u64,
    /// cgroup v2 id of the acting task.
    pub cgroup_id: u64,
    /// `comm` of the acting task, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// The header says no task could be attributed (for example work done in softirq context).
pub const HEADER_FLAG_NO_TASK: u16 = 1 << 15;

/// A successful `execve`/`execveat`, seen at `sched:sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Thread id that called exec (differs from `tgid` when a non-leader thread exec'd).
    pub old_tid: u32,
    /// Number of arguments captured in `argv`.
    pub argc: u16,
    /// Bytes used in `argv`.
    pub argv_len: u16,
    /// For `execveat`: the directory fd; `AT_FDCWD` for `execve`.
    pub exec_fd: i32,
    /// For `execveat`: its flags (`AT_EMPTY_PATH` for `fexecve`).
    pub exec_at_flags: u32,
    /// Bytes used in `filename`, NUL excluded.
    pub filename_len: u16,
    /// Bytes used in `env`.
    pub env_len: u16,
    /// Environment entries examined (at most [`MAX_ENV`]).
    pub env_examined: u16,
    pub _pad0: u16,
    /// Arguments, each NUL-terminated.
    pub argv: [u8; ARGV_MAX],
    /// The environment's dynamic loader variables, each `NAME=value` NUL-terminated, in the
    /// order of the environment; only those are read, nothing else of the environment leaves
    /// the kernel. The last may be cut (no NUL) when they exceed [`ENV_MAX`].
    pub env: [u8; ENV_MAX],
    /// The file executed, as the kernel saw it (`bprm->filename`): the path given to exec, or
    /// `/dev/fd/N[/path]` for `execveat` with a directory fd.
    pub filename: [u8; PATH_MAX],
}

/// `argv` held more than [`MAX_ARGS`] arguments or [`ARGV_MAX`] bytes.
pub const EXEC_FLAG_ARGV_TRUNCATED: u16 = 1;
/// The exec was an `execveat`.
pub const EXEC_FLAG_EXECVEAT: u16 = 1 << 1;
/// The arguments (and the environment) could not be captured (stash evicted or unreadable).
pub const EXEC_FLAG_ARGV_MISSING: u16 = 1 << 2;
/// The environment held more than [`MAX_ENV`] entries (or one could not be read): the rest were
/// not examined.
pub const EXEC_FLAG_ENV_UNEXAMINED: u16 = 1 << 3;
/// The loader variables found held more than [`ENV_MAX`] bytes: the last is cut or missing.
pub const EXEC_FLAG_ENV_TRUNCATED: u16 = 1 << 4;
/// The exec guard enforces and this exec, through a descriptor, brought it no permission event
/// (a memory file, which fanotify cannot mark): the process was killed before its first
/// instruction.
pub const EXEC_FLAG_KILLED: u16 = 1 << 5;

/// A new process (threads are not reported), seen at `sched:sched_process_fork`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// Process id of the parent.
    pub parent_tgid: u32,
    /// Process id of the child.
    pub child_pid: u32,
}

/// The end of a process (its whole thread group), seen at `sched:sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// The status passed to `exit_group`/`exit`, valid with [`EXIT_FLAG_CODE`].
    pub exit_code: i32,
    /// The fatal signal delivered with its default action, valid with [`EXIT_FLAG_SIGNAL`].
    pub signal: i32,
}

/// `exit_code` is valid.
pub const EXIT_FLAG_CODE: u16 = 1;
/// `signal` is valid.
pub const EXIT_FLAG_SIGNAL: u16 = 1 << 1;

/// What happened on the network.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetOp {
    /// Outbound TCP connection attempt (`SYN_SENT`).
    TcpConnect = 1,
    /// Inbound TCP connection established on a listener.
    TcpAccept = 2,
    /// A socket started listening.
    TcpListen = 3,
    /// `connect` of a UDP socket.
    UdpConnect = 4,
    /// A UDP datagram to a destination this process had not sent to yet.
    UdpSend = 5,
    /// `bind` of a UDP socket.
    UdpBind = 6,
    /// `bind` of a TCP socket to a port, judged by the network guard (which has no listen
    /// hook) as a listener; the network sensor reports the listen itself as [`NetOp::TcpListen`].
    TcpBind = 7,
}

impl NetOp {
    /// Decodes an `op` field; `None` for a value this build does not know.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::TcpConnect,
            2 => Self::TcpAccept,
            3 => Self::TcpListen,
            4 => Self::UdpConnect,
            5 => Self::UdpSend,
            6 => Self::UdpBind,
            7 => Self::TcpBind,
            _ => return None,
        })
    }
}

/// Net record flag: the socket's type was not known in the kernel (created before the sensors
/// started, or inherited across fork); user space checks that it is UDP.
pub const NET_FLAG_SOCK_UNKNOWN: u16 = 1;
/// Net record flag: the network guard refused the operation (the caller got `EPERM`).
pub const NET_FLAG_BLOCKED: u16 = 1 << 1;
/// Net record flag: the network guard, in dry run, would have refused the operation.
pub const NET_FLAG_WOULD_BLOCK: u16 = 1 << 2;

/// The network guard's maps (cgroup `sock_addr` programs refusing connects, sends and binds the
/// policy does not allow), written by the agent and read by the programs.
pub mod guard {
    /// `GUARD_STATE[0]`: the mode in the low byte, the active rule slot (0 or 1) in bit
    /// [`SLOT_SHIFT`]. One `u32`, so that mode and slot change in one store.
    pub const SLOT_SHIFT: u32 = 8;
    /// Mode: allow everything, report nothing.
    pub const MODE_OFF: u32 = 0;
    /// Mode: allow everything, report what would be refused.
    pub const MODE_DRY_RUN: u32 = 1;
    /// Mode: refuse (`EPERM`) and report.
    pub const MODE_ENFORCE: u32 = 2;

    /// Protocol bits of a [`PortRange`] and of a listen key.
    pub const PROTO_TCP: u16 = 1;
    pub const PROTO_UDP: u16 = 1 << 1;

    /// Port ranges one destination entry can hold. An entry whose rules need more is stored as
    /// [`ALLOW_ALL`]: the guard then lets every port of that network through (detection still
    /// judges it), it never refuses what the policy allows.
    pub const RANGES_MAX: usize = 16;
    /// [`NetRule::count`] meaning every port and protocol is allowed.
    pub const ALLOW_ALL: u32 = u32::MAX;
    /// Destination entries (distinct outbound networks) per rule slot.
    pub const NET_ENTRIES_MAX: u32 = 1024;
    /// Listen entries (port and protocol pairs) per rule slot.
    pub const LISTEN_ENTRIES_MAX: u32 = 1024;

    /// Bytes of a `GUARD_NETS` key's data: slot, family (4 or 6), two zero bytes, the address
    /// (IPv4 in the first 4 bytes). The key's prefix length counts [`KEY_HEADER_BITS`] plus the
    /// network's prefix length.
    pub const KEY_BYTES: usize = 20;
    pub const KEY_HEADER_BITS: u32 = 32;

    /// An inclusive port range and the protocols allowed on it.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct PortRange {
        pub first: u16,
        pub last: u16,
        /// [`PROTO_TCP`] and/or [`PROTO_UDP`].
        pub protocols: u16,
        pub _pad0: u16,
    }

    /// What a destination network allows: the port ranges of every outbound rule whose network
    /// contains it (pushed down by the agent, as the trie answers only the longest prefix).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NetRule {
        /// Ranges used, or [`ALLOW_ALL`].
        pub count: u32,
        pub _pad0: u32,
        pub ranges: [PortRange; RANGES_MAX],
    }

    /// `GUARD_LISTEN` key: a listen rule's slot, protocol bit and port.
    pub const fn listen_key(slot: u32, protocol: u16, port: u16) -> u32 {
        (slot << 24) | ((protocol as u32) << 16) | port as u32
    }
}

/// A network event. Addresses are in network byte order; IPv4 uses the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetEvent {
    pub header: EventHeader,
    /// A [`NetOp`].
    pub op: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port, host byte order (0 when unknown).
    pub local_port: u16,
    /// Remote port, host byte order (0 when not applicable).
    pub remote_port: u16,
    /// The socket's fd in the acting process, -1 when not known.
    pub fd: i32,
    pub _pad0: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Which change to a file.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// Opened for writing, or with `O_CREAT`/`O_TRUNC`.
    Open = 1,
    /// `path` renamed to `path2`.
    Rename = 2,
    Unlink = 3,
    Rmdir = 4,
    Mkdir = 5,
    /// Hard link `path2` to the existing `path`.
    Link = 6,
    /// Symbolic link `path2` whose target is the literal `path`.
    Symlink = 7,
    Chmod = 8,
    Chown = 9,
    Truncate = 10,
    /// The process changed its working directory (used to resolve relative paths).
    Chdir = 11,
    /// The process created an anonymous memory file (`memfd_create`); `ret` is its fd and
    /// `path` its name. Tracked so a later fileless exec of that fd can be named.
    MemfdCreate = 12,
    /// File capabilities set (`setxattr` family, name `security.capability`, compared in the
    /// kernel): `mode` holds the value's `magic_etc` (revision and effective bit), `length` the
    /// permitted set (low 32 bits: capabilities 0-31, high: 32-63). `op_flags` holds
    /// `AT_SYMLINK_NOFOLLOW` for `lsetxattr`.
    SetCapability = 13,
}

impl FileOp {
    /// Decodes an `op` field; `None` for a value this build does not know.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::Open,
            2 => Self::Rename,
            3 => Self::Unlink,
            4 => Self::Rmdir,
            5 => Self::Mkdir,
            6 => Self::Link,
            7 => Self::Symlink,
            8 => Self::Chmod,
            9 => Self::Chown,
            10 => Self::Truncate,
            11 => Self::Chdir,
            12 => Self::MemfdCreate,
            13 => Self::SetCapability,
            _ => return None,
        })
    }
}

/// `dirfd` value meaning "the working directory" (`AT_FDCWD`).
pub const AT_FDCWD: i32 = -100;

/// A change to a file, built at the syscall's exit when it succeeded.
///
/// Paths are as the process passed them; user space makes them absolute with `dirfd` and the
/// process's working directory. An operation on an fd (`fchmod`, `ftruncate`, ...) carries an
/// empty path and the fd in `dirfd` with [`FILE_FLAG_FD_ONLY`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    pub header: EventHeader,
    /// A [`FileOp`].
    pub op: u16,
    /// Bytes used in `path`, NUL excluded.
    pub path_len: u16,
    /// Bytes used in `path2`, NUL excluded.
    pub path2_len: u16,
    pub _pad0: u16,
    /// Directory fd `path` is relative to (`AT_FDCWD` for the working directory).
    pub dirfd: i32,
    /// Directory fd `path2` is relative to.
    pub dirfd2: i32,
    /// Open flags, rename/unlink flags, ...
    pub op_flags: u32,
    /// Mode for open with `O_CREAT`, mkdir, chmod.
    pub mode: u32,
    /// New owner for chown (`u32::MAX`: unchanged).
    pub owner: u32,
    /// New group for chown (`u32::MAX`: unchanged).
    pub group: u32,
    /// New length for truncate.
    pub length: i64,
    /// The syscall's return value (the fd for open).
    pub ret: i64,
    pub path: [u8; PATH_MAX],
    pub path2: [u8; PATH_MAX],
}

/// `path` is empty: the operation named an fd, given in `dirfd`.
pub const FILE_FLAG_FD_ONLY: u16 = 1;

/// Byte offset of `FileEvent::path`: a one-path record is this long plus `path_len` bytes.
pub const FILE_EVENT_PATH_OFFSET: usize = core::mem::offset_of!(FileEvent, path);
/// Byte offset of `FileEvent::path2`: a two-path record is this long plus `path2_len` bytes.
pub const FILE_EVENT_PATH2_OFFSET: usize = core::mem::offset_of!(FileEvent, path2);
/// Byte offset of `ExecEvent::filename`.
pub const EXEC_EVENT_FILENAME_OFFSET: usize = core::mem::offset_of!(ExecEvent, filename);

/// Which privileged action a [`PrivilegeEvent`] reports.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivOp {
    /// `init_module`: a module image from memory; `text` holds its parameters (`uargs`),
    /// `arg2` the image's length.
    InitModule = 1,
    /// `finit_module`: `target` is the module file's descriptor, `text` its parameters,
    /// `flags` the call's flags.
    FinitModule = 2,
    /// `ptrace` with a request that attaches to or writes into another task: `arg` is the
    /// request, `target` the thread id.
    Ptrace = 3,
    /// `process_vm_writev` into process `target`; `ret` is the number of bytes written.
    VmWrite = 4,
    /// `mount(source, target, fstype, flags)`: `path` is the target, `path2` the source,
    /// `text` the filesystem type, `arg` the `MS_*` flags.
    Mount = 5,
    /// `umount`/`umount2`: `path` is the target, `flags` the `MNT_*`/`UMOUNT_*` flags.
    Umount = 6,
    /// `move_mount`: a mount attached at `path` (relative to `dirfd`), taken from `path2`
    /// (relative to `dirfd2`, empty for a descriptor); `flags` the `MOVE_MOUNT_*` flags.
    MoveMount = 7,
    /// `mount_setattr` on `path` (relative to `dirfd`): `arg` is `attr_set`, `arg2`
    /// `attr_clr`, `flags` the `AT_*` flags.
    MountSetattr = 8,
    /// `fspick(dirfd, path)`: a mounted filesystem opened for reconfiguration; `ret` is the
    /// descriptor a later [`PrivOp::Reconfigure`] names.
    Fspick = 9,
    /// `fsconfig(target, FSCONFIG_CMD_RECONFIGURE)`: the filesystem picked with descriptor
    /// `target` reconfigured (a remount through the new mount API).
    Reconfigure = 10,
    /// `unshare` with `CLONE_NEWNS`: the process now has a mount namespace of its own.
    UnshareMounts = 11,
    /// `setns`: the process may have joined another namespace (`target` is the descriptor,
    /// `flags` the namespace type asked for).
    Setns = 12,
}

impl PrivOp {
    /// Decodes an `op` field; `None` for a value this build does not know.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::InitModule,
            2 => Self::FinitModule,
            3 => Self::Ptrace,
            4 => Self::VmWrite,
            5 => Self::Mount,
            6 => Self::Umount,
            7 => Self::MoveMount,
            8 => Self::MountSetattr,
            9 => Self::Fspick,
            10 => Self::Reconfigure,
            11 => Self::UnshareMounts,
            12 => Self::Setns,
            _ => return None,
        })
    }
}

/// Bytes of a [`PrivilegeEvent`]'s short text (module parameters, filesystem type).
pub const PRIV_TEXT_MAX: usize = 256;

/// A privileged action (module load, ptrace, mount, ...), built at the syscall's exit when it
/// succeeded. These syscalls are rare: the record is sent whole up to its last used path.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PrivilegeEvent {
    pub header: EventHeader,
    /// A [`PrivOp`].
    pub op: u16,
    /// Bytes used in `path`, NUL excluded.
    pub path_len: u16,
    /// Bytes used in `path2`, NUL excluded.
    pub path2_len: u16,
    /// Bytes used in `text`, NUL excluded.
    pub text_len: u16,
    /// Directory fd `path` is relative to.
    pub dirfd: i32,
    /// Directory fd `path2` is relative to.
    pub dirfd2: i32,
    /// The process, thread or descriptor acted on (see [`PrivOp`]).
    pub target: i32,
    /// The call's flags (see [`PrivOp`]).
    pub flags: u32,
    /// First wide argument (see [`PrivOp`]).
    pub arg: u64,
    /// Second wide argument (see [`PrivOp`]).
    pub arg2: u64,
    /// The syscall's return value.
    pub ret: i64,
    pub text: [u8; PRIV_TEXT_MAX],
    pub path: [u8; PATH_MAX],
    pub path2: [u8; PATH_MAX],
}

/// Byte offset of `PrivilegeEvent::path`: a record without `path2` is this long plus
/// `path_len` bytes.
pub const PRIV_EVENT_PATH_OFFSET: usize = core::mem::offset_of!(PrivilegeEvent, path);
/// Byte offset of `PrivilegeEvent::path2`.
pub const PRIV_EVENT_PATH2_OFFSET: usize = core::mem::offset_of!(PrivilegeEvent, path2);

/// Where the fields the programs read sit in each tracepoint's record, read by the agent from
/// tracefs (`events/<group>/<name>/format`) at load time, so that one eBPF object works on
/// 32- and 64-bit kernels and across kernel versions. Offsets are in bytes from the start of
/// the record; 0 means "absent" where a field is optional.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Layout {
    /// The agent's own process id: its events are dropped in the kernel.
    pub agent_tgid: u32,
    /// Offset of the first syscall argument in `syscalls:sys_enter_*`.
    pub syscall_args: u32,
    /// Size of one syscall argument (4 or 8: the kernel's `long`).
    pub syscall_arg_size: u32,
    /// Offset of `ret` in `syscalls:sys_exit_*`.
    pub syscall_ret: u32,
    /// `sched_process_exec`: `__data_loc char[] filename`, `pid_t old_pid`.
    pub exec_filename: u32,
    pub exec_old_pid: u32,
    /// `sched_process_fork`: `parent_pid`, `child_pid`.
    pub fork_parent_pid: u32,
    pub fork_child_pid: u32,
    /// `sched_process_exit`: `bool group_dead` (0 on kernels without it).
    pub exit_group_dead: u32,
    /// `signal_deliver`: `int sig`, `unsigned long sa_handler`, and that field's size.
    pub signal_sig: u32,
    pub signal_sa_handler: u32,
    pub signal_sa_handler_size: u32,
    /// `inet_sock_set_state` fields.
    pub sock_oldstate: u32,
    pub sock_newstate: u32,
    pub sock_sport: u32,
    pub sock_dport: u32,
    pub sock_family: u32,
    pub sock_protocol: u32,
    pub sock_saddr: u32,
    pub sock_daddr: u32,
    pub sock_saddr_v6: u32,
    pub sock_daddr_v6: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding: every bit pattern is
    // a valid value.
    unsafe impl aya::Pod for super::Layout {}
    unsafe impl aya::Pod for super::guard::NetRule {}
    unsafe impl aya::Pod for super::loss::Key {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    // The kernel side and user space must agree byte for byte, on 32- and 64-bit targets alike;
    // these sizes are the ABI of the ring buffer records.
    #[test]
    fn record_layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EventHeader>(), 56);
        assert_eq!(size_of::<ForkEvent>(), 64);
        assert_eq!(size_of::<ExitEvent>(), 64);
        assert_eq!(size_of::<NetEvent>(), 104);
        assert_eq!(EXEC_EVENT_FILENAME_OFFSET, 80 + ARGV_MAX + ENV_MAX);
        assert_eq!(
            size_of::<ExecEvent>(),
            EXEC_EVENT_FILENAME_OFFSET + PATH_MAX
        );
        assert_eq!(FILE_EVENT_PATH_OFFSET, 104);
        assert_eq!(FILE_EVENT_PATH2_OFFSET, FILE_EVENT_PATH_OFFSET + PATH_MAX);
        assert_eq!(size_of::<FileEvent>(), FILE_EVENT_PATH2_OFFSET + PATH_MAX);
        assert_eq!(PRIV_EVENT_PATH_OFFSET, 104 + PRIV_TEXT_MAX);
        assert_eq!(PRIV_EVENT_PATH2_OFFSET, PRIV_EVENT_PATH_OFFSET + PATH_MAX);
        assert_eq!(size_of::<Layout>(), 22 * 4);
        assert_eq!(size_of::<guard::NetRule>(), 8 + 8 * guard::RANGES_MAX);
        assert!(align_of::<FileEvent>() <= 8);
    }

    #[test]
    fn kinds_and_ops_round_trip() {
        for kind in [
            EventKind::Exec,
            EventKind::Fork,
            EventKind::Exit,
            EventKind::Net,
            EventKind::File,
            EventKind::Privilege,
        ] {
            assert_eq!(EventKind::from_u16(kind as u16), Some(kind));
        }
        assert_eq!(EventKind::from_u16(0), None);
        for op in 1..=13 {
            assert_eq!(FileOp::from_u16(op).map(|o| o as u16), Some(op));
        }
        assert_eq!(FileOp::from_u16(14), None);
        for op in 1..=12 {
            assert_eq!(PrivOp::from_u16(op).map(|o| o as u16), Some(op));
        }
        assert_eq!(PrivOp::from_u16(13), None);
        for op in 1..=7 {
            assert_eq!(NetOp::from_u16(op).map(|o| o as u16), Some(op));
        }
        assert_eq!(NetOp::from_u16(8), None);
    }
}
