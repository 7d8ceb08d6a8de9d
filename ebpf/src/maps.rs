//! The maps the programs share, and the ring buffer output with per-sensor loss accounting.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use picket_common::{
    counter,
    guard::{NetRule, KEY_BYTES, LISTEN_ENTRIES_MAX, NET_ENTRIES_MAX},
    loss, EventHeader, ExecEvent, ExitEvent, FileEvent, ForkEvent, NetEvent, PrivilegeEvent,
    Sensor, ARGV_MAX, ENV_MAX,
};

/// Default ring buffer size; the agent sets the real one at load time.
const RING_BYTES: u32 = 1 << 20;

/// Every record, in order.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Counters indexed by [`counter`] constants, summed over CPUs by the agent.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Scratch space to build an exec record (too big for the 512-byte stack).
#[map(name = "EXEC_SCRATCH")]
pub static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space to build a file record.
#[map(name = "FILE_SCRATCH")]
pub static FILE_SCRATCH: PerCpuArray<FileEvent> = PerCpuArray::with_max_entries(1, 0);

/// `argv` and the loader variables of `envp` read at `sys_enter_execve*`, waiting for
/// `sched_process_exec`; keyed by thread id.
#[repr(C)]
pub struct ArgvStash {
    pub argc: u16,
    pub argv_len: u16,
    pub flags: u16,
    pub env_len: u16,
    pub exec_fd: i32,
    pub exec_at_flags: u32,
    pub env_examined: u16,
    pub _pad0: [u16; 3],
    /// Twice [`ARGV_MAX`] so that a read of up to `ARGV_MAX` bytes at any offset below
    /// `ARGV_MAX` provably stays inside the buffer.
    pub argv: [u8; ARGV_MAX * 2],
    /// Twice [`ENV_MAX`], for the same reason.
    pub env: [u8; ENV_MAX * 2],
}

#[map(name = "ARGV_SCRATCH")]
pub static ARGV_SCRATCH: PerCpuArray<ArgvStash> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "ARGV_STASH")]
pub static ARGV_STASH: LruHashMap<u32, ArgvStash> = LruHashMap::with_max_entries(128, 0);

/// `clone` flags of a thread in `clone`/`clone3`, so `sched_process_fork` can skip threads.
#[map(name = "CLONE_FLAGS")]
pub static CLONE_FLAGS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// Exit status passed to `exit_group`, keyed by process id.
#[map(name = "EXIT_CODES")]
pub static EXIT_CODES: LruHashMap<u32, i32> = LruHashMap::with_max_entries(1024, 0);

/// Fatal signal delivered with its default action, keyed by process id.
#[map(name = "FATAL_SIGNALS")]
pub static FATAL_SIGNALS: LruHashMap<u32, i32> = LruHashMap::with_max_entries(1024, 0);

/// A file syscall's arguments, saved at entry and turned into a record at exit if it succeeded.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileStash {
    pub op: u16,
    pub flags: u16,
    pub dirfd: i32,
    pub dirfd2: i32,
    pub op_flags: u32,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
    pub _pad0: u32,
    pub path: u64,
    pub path2: u64,
    pub length: i64,
}

#[map(name = "FILE_STASH")]
pub static FILE_STASH: LruHashMap<u32, FileStash> = LruHashMap::with_max_entries(4096, 0);

/// A privileged syscall's arguments, saved at entry and turned into a record at exit if it
/// succeeded (see `privilege.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PrivStash {
    pub op: u16,
    pub _pad0: u16,
    pub dirfd: i32,
    pub dirfd2: i32,
    pub target: i32,
    pub flags: u32,
    pub _pad1: u32,
    pub arg: u64,
    pub arg2: u64,
    pub path: u64,
    pub path2: u64,
    pub text: u64,
}

#[map(name = "PRIV_STASH")]
pub static PRIV_STASH: LruHashMap<u32, PrivStash> = LruHashMap::with_max_entries(256, 0);

/// Scratch space to build a privileged action's record.
#[map(name = "PRIV_SCRATCH")]
pub static PRIV_SCRATCH: PerCpuArray<PrivilegeEvent> = PerCpuArray::with_max_entries(1, 0);

/// Socket kind (`family << 16 | type`) keyed by `(tgid << 32) | fd`, for `AF_INET*` sockets
/// created while the sensors run.
#[map(name = "SOCKETS")]
pub static SOCKETS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(8192, 0);

/// The fd passed to `connect` by each thread, so the TCP `SYN_SENT` record (which happens inside
/// that call) can name the socket; user space then asks it for the local port, which the kernel
/// picks only after the state change.
#[map(name = "CONNECT_FD")]
pub static CONNECT_FD: LruHashMap<u32, i32> = LruHashMap::with_max_entries(1024, 0);

/// `socket()` arguments between entry and exit, keyed by thread id.
#[map(name = "SOCKET_STASH")]
pub static SOCKET_STASH: LruHashMap<u32, u32> = LruHashMap::with_max_entries(1024, 0);

/// UDP destinations each process already sent to: only the first datagram is reported.
#[repr(C)]
pub struct UdpDest {
    pub tgid: u32,
    pub port: u16,
    pub family: u16,
    pub addr: [u8; 16],
}

#[map(name = "UDP_DESTS")]
pub static UDP_DESTS: LruHashMap<UdpDest, u8> = LruHashMap::with_max_entries(8192, 0);

/// The network guard's mode and active rule slot (see `picket_common::guard`).
#[map(name = "GUARD_STATE")]
pub static GUARD_STATE: Array<u32> = Array::with_max_entries(1, 0);

/// The network guard's outbound rules: destination network (in a slot) to the port ranges it
/// allows. Two slots, so that the agent writes one while the programs read the other.
#[map(name = "GUARD_NETS")]
pub static GUARD_NETS: LpmTrie<[u8; KEY_BYTES], NetRule> =
    LpmTrie::with_max_entries(2 * NET_ENTRIES_MAX, 0);

/// The network guard's listen rules: `listen_key(slot, protocol, port)` present when allowed.
#[map(name = "GUARD_LISTEN")]
pub static GUARD_LISTEN: HashMap<u32, u8> = HashMap::with_max_entries(2 * LISTEN_ENTRIES_MAX, 0);

/// Adds one to a counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Records lost by cgroup (see `picket_common::loss`). Touched only when the ring buffer is
/// full: a record that fits costs nothing more.
#[map(name = "LOST_BY_CGROUP")]
pub static LOST_BY_CGROUP: LruPerCpuHashMap<loss::Key, loss::Counts> =
    LruPerCpuHashMap::with_max_entries(loss::CGROUPS_MAX, 0);

/// A record: a [`EventHeader`] first.
pub trait Record {
    fn header(&self) -> &EventHeader;
}

macro_rules! records {
    ($($t:ty),*) => {
        $(impl Record for $t {
            #[inline(always)]
            fn header(&self) -> &EventHeader {
                &self.header
            }
        })*
    };
}

records!(
    ExecEvent,
    ForkEvent,
    ExitEvent,
    NetEvent,
    FileEvent,
    PrivilegeEvent
);

/// Counts a lost record of `kind` against `cgroup` and `sensor`.
#[inline(always)]
fn count_cgroup_loss(cgroup: u64, sensor: Sensor, kind: u16) {
    let i = kind as usize;
    if i >= loss::KINDS {
        return;
    }
    let key = loss::Key {
        cgroup_id: cgroup,
        sensor: sensor as u32,
        _pad: 0,
    };
    match LOST_BY_CGROUP.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU; `i < KINDS`.
        Some(counts) => unsafe { *(*counts).get_unchecked_mut(i) += 1 },
        None => {
            let mut counts: loss::Counts = [0; loss::KINDS];
            // SAFETY: `i < KINDS`.
            unsafe { *counts.get_unchecked_mut(i) = 1 };
            // A full map evicts the cgroup that lost least recently; nothing else can fail.
            let _ = LOST_BY_CGROUP.insert(&key, &counts, 0);
        }
    }
}

/// Sends the first `len` bytes of `record` (clamped to its size), counting a loss for `sensor`
/// and for the acting task's cgroup when the ring buffer is full.
#[inline(always)]
pub fn emit<T: Record>(sensor: Sensor, record: *const T, len: usize) {
    let size = core::mem::size_of::<T>();
    // The bound check is what lets the verifier accept a variable-length output.
    if len == 0 || len > size {
        return;
    }
    // SAFETY: `record` points to a live `T` (a map value or a stack value) and `len <= size`.
    let bytes = unsafe { core::slice::from_raw_parts(record as *const u8, len) };
    if EVENTS.output(bytes, 0).is_err() {
        count(counter::LOST_BASE + sensor as u32);
        // SAFETY: as above.
        let header = unsafe { (*record).header() };
        count_cgroup_loss(header.cgroup_id, sensor, header.kind);
    }
}

/// Processes whose current exec the exec guard allowed an open for: thread group id → when
/// (`CLOCK_MONOTONIC`), written by the agent before it answers each permission event, removed
/// at the exec's entry and consumed at its end.
#[map(name = "EXEC_TOKENS")]
pub static EXEC_TOKENS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Index 0: 1 while the exec guard enforces (an exec through a descriptor without a token is
/// then killed), 0 otherwise.
#[map(name = "EXEC_GUARD")]
pub static EXEC_GUARD: Array<u32> = Array::with_max_entries(1, 0);
