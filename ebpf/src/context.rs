//! What every program needs: the tracepoint layout, the acting task, and user-memory reads.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, gen},
    programs::TracePointContext,
    EbpfContext,
};
use core::ffi::c_void;
use picket_common::{EventHeader, Layout};

/// Filled in by the agent at load time from tracefs; see [`Layout`].
#[no_mangle]
pub(crate) static LAYOUT: Layout = Layout {
    agent_tgid: 0,
    syscall_args: 16,
    syscall_arg_size: 8,
    syscall_ret: 16,
    exec_filename: 8,
    exec_old_pid: 16,
    fork_parent_pid: 12,
    fork_child_pid: 20,
    exit_group_dead: 0,
    signal_sig: 8,
    signal_sa_handler: 24,
    signal_sa_handler_size: 8,
    sock_oldstate: 16,
    sock_newstate: 20,
    sock_sport: 24,
    sock_dport: 26,
    sock_family: 28,
    sock_protocol: 30,
    sock_saddr: 32,
    sock_daddr: 36,
    sock_saddr_v6: 40,
    sock_daddr_v6: 56,
};

/// Reads one field of [`LAYOUT`]. Volatile, so that the compiler does not fold in the defaults
/// above: the loader rewrites them.
macro_rules! layout {
    ($field:ident) => {
        $crate::context::read_layout(&raw const $crate::context::LAYOUT.$field)
    };
}
pub(crate) use layout;

#[inline(always)]
pub fn read_layout(field: *const u32) -> usize {
    // SAFETY: `field` points into the `LAYOUT` static, which lives forever.
    unsafe { core::ptr::read_volatile(field) as usize }
}

/// The acting task's ids: `(tgid, tid)`.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// Whether the acting task belongs to the agent itself, whose own activity is not reported.
#[inline(always)]
pub fn is_agent(tgid: u32) -> bool {
    tgid as usize == layout!(agent_tgid)
}

/// Fills `header` with the acting task's identity.
#[inline(always)]
pub fn fill_header(header: &mut EventHeader, kind: u16, flags: u16) {
    let (tgid, tid) = current_ids();
    let ugid = bpf_get_current_uid_gid();
    header.kind = kind;
    header.flags = flags;
    header.tgid = tgid;
    header.tid = tid;
    header.uid = ugid as u32;
    header.gid = (ugid >> 32) as u32;
    header._pad0 = 0;
    // SAFETY: helpers without arguments.
    unsafe {
        header.boot_ns = gen::bpf_ktime_get_boot_ns();
        header.cgroup_id = gen::bpf_get_current_cgroup_id();
    }
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Where the arguments of a `sys_enter_*` record and the return value of a `sys_exit_*` record
/// start on a 64-bit kernel: after the common fields (8 bytes) and the syscall number (padded).
const SYSCALL_ARGS_64: usize = 16;
const SYSCALL_RET_64: usize = 16;

/// Reads the `u64` at `OFFSET` of the record with a plain load. A program may load from its
/// record at a constant offset; the verifier checks it, and the kernel refuses to attach a
/// program whose loads go past the tracepoint's record. On other kernels the branches that call
/// this are never taken, and the verifier, which knows `LAYOUT` (read-only, frozen at load),
/// leaves them out.
#[inline(always)]
fn load_u64<const OFFSET: usize>(ctx: &TracePointContext) -> u64 {
    // SAFETY: the record is at least `OFFSET + 8` bytes long on the kernels that take this
    // path (see above); the load is aligned.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(OFFSET) as *const u64) }
}

/// Syscall argument `index` of a `sys_enter_*` record, zero-extended to 64 bits.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, index: usize) -> u64 {
    let size = layout!(syscall_arg_size);
    let offset = layout!(syscall_args) + index * size;
    // The 64-bit layout: a load from the record instead of a helper call. `index` is a
    // constant once inlined.
    if size == 8 && layout!(syscall_args) == SYSCALL_ARGS_64 {
        return match index {
            0 => load_u64::<{ SYSCALL_ARGS_64 }>(ctx),
            1 => load_u64::<{ SYSCALL_ARGS_64 + 8 }>(ctx),
            2 => load_u64::<{ SYSCALL_ARGS_64 + 16 }>(ctx),
            3 => load_u64::<{ SYSCALL_ARGS_64 + 24 }>(ctx),
            4 => load_u64::<{ SYSCALL_ARGS_64 + 32 }>(ctx),
            _ => load_u64::<{ SYSCALL_ARGS_64 + 40 }>(ctx),
        };
    }
    // SAFETY: `offset` is inside the record per the tracefs format.
    unsafe {
        if size == 4 {
            ctx.read_at::<u32>(offset).map(u64::from).unwrap_or(0)
        } else {
            ctx.read_at::<u64>(offset).unwrap_or(0)
        }
    }
}

/// The return value of a `sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    let size = layout!(syscall_arg_size);
    let offset = layout!(syscall_ret);
    if size == 8 && offset == SYSCALL_RET_64 {
        return load_u64::<{ SYSCALL_RET_64 }>(ctx) as i64;
    }
    // SAFETY: as in `arg`.
    unsafe {
        if size == 4 {
            ctx.read_at::<i32>(offset).map(i64::from).unwrap_or(-1)
        } else {
            ctx.read_at::<i64>(offset).unwrap_or(-1)
        }
    }
}

/// Reads a user-space pointer-sized value (the process's `unsigned long`).
#[inline(always)]
pub fn read_user_ulong(addr: u64) -> Option<u64> {
    let size = layout!(syscall_arg_size);
    // SAFETY: the helper checks the address; a fault returns an error.
    unsafe {
        if size == 4 {
            aya_ebpf::helpers::bpf_probe_read_user(addr as *const u32)
                .ok()
                .map(u64::from)
        } else {
            aya_ebpf::helpers::bpf_probe_read_user(addr as *const u64).ok()
        }
    }
}

/// Copies a NUL-terminated user string into `dst` (at most `N` bytes, NUL included) and returns
/// its length without the NUL, or `None` if it could not be read.
#[inline(always)]
pub fn read_user_str<const N: usize>(dst: &mut [u8; N], src: u64) -> Option<usize> {
    if src == 0 {
        return None;
    }
    // SAFETY: `dst` is `N` bytes of writable memory; the helper bounds the copy by `N`.
    let len = unsafe {
        gen::bpf_probe_read_user_str(
            dst.as_mut_ptr() as *mut c_void,
            N as u32,
            src as *const c_void,
        )
    };
    if len <= 0 {
        return None;
    }
    Some((len as usize - 1) & (N - 1))
}
