//! Privileged actions: kernel modules loaded, another process attached to or written into,
//! filesystems mounted, remounted or unmounted, and the mount namespace changes that tell a
//! sandbox's private mounts from the device's.
//!
//! As in the file sensor, arguments are saved at `sys_enter_*` and the record is built at
//! `sys_exit_*` only when the call succeeded. Requests that are not signals (a `ptrace` that
//! only reads, an `unshare` without `CLONE_NEWNS`, an `fsconfig` that is not a reconfiguration)
//! are dropped at entry. These syscalls are rare on a device: none of them is on a hot path.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use picket_common::{
    EventKind, PrivOp, Sensor, AT_FDCWD, PATH_MAX, PRIV_EVENT_PATH2_OFFSET, PRIV_EVENT_PATH_OFFSET,
};

use crate::{
    context::{arg, current_ids, fill_header, is_agent, read_user_str, ret},
    maps::{emit, PrivStash, PRIV_SCRATCH, PRIV_STASH},
};

const PTRACE_POKETEXT: u64 = 4;
const PTRACE_POKEDATA: u64 = 5;
const PTRACE_POKEUSR: u64 = 6;
const PTRACE_SETREGS: u64 = 13;
const PTRACE_SETFPREGS: u64 = 15;
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SETFPXREGS: u64 = 19;
const PTRACE_SETREGSET: u64 = 0x4205;
const PTRACE_SEIZE: u64 = 0x4206;
const CLONE_NEWNS: u64 = 0x0002_0000;
const FSCONFIG_CMD_RECONFIGURE: u64 = 7;

fn stash(op: PrivOp) -> PrivStash {
    PrivStash {
        op: op as u16,
        _pad0: 0,
        dirfd: AT_FDCWD,
        dirfd2: AT_FDCWD,
        target: 0,
        flags: 0,
        _pad1: 0,
        arg: 0,
        arg2: 0,
        path: 0,
        path2: 0,
        text: 0,
    }
}

#[inline(always)]
fn save(s: &PrivStash) {
    let (tgid, tid) = current_ids();
    if is_agent(tgid) {
        return;
    }
    let _ = PRIV_STASH.insert(&tid, s, 0);
}

/// At syscall exit: builds and sends the record if the call succeeded.
#[inline(always)]
fn finish(ctx: &TracePointContext) {
    let (_, tid) = current_ids();
    let Some(s) = (unsafe { PRIV_STASH.get(&tid) }).copied() else {
        return;
    };
    let _ = PRIV_STASH.remove(&tid);
    let ret = ret(ctx);
    if ret < 0 {
        return;
    }
    let Some(event) = PRIV_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, exclusively ours while this program runs.
    let event = unsafe { &mut *event };
    fill_header(&mut event.header, EventKind::Privilege as u16, 0);
    event.op = s.op;
    event.dirfd = s.dirfd;
    event.dirfd2 = s.dirfd2;
    event.target = s.target;
    event.flags = s.flags;
    event.arg = s.arg;
    event.arg2 = s.arg2;
    event.ret = ret;
    event.text_len = read_user_str(&mut event.text, s.text).unwrap_or(0) as u16;
    let len = read_user_str(&mut event.path, s.path).unwrap_or(0);
    event.path_len = len as u16;
    event.path2_len = 0;
    if s.path2 == 0 {
        emit(
            Sensor::Process,
            event,
            PRIV_EVENT_PATH_OFFSET + (len & (PATH_MAX - 1)),
        );
        return;
    }
    let len2 = read_user_str(&mut event.path2, s.path2).unwrap_or(0);
    event.path2_len = len2 as u16;
    emit(
        Sensor::Process,
        event,
        PRIV_EVENT_PATH2_OFFSET + (len2 & (PATH_MAX - 1)),
    );
}

/// Declares `sys_exit_*` programs that all end in [`finish`].
macro_rules! exits {
    ($($name:ident),* $(,)?) => {
        $(
            #[tracepoint]
            pub fn $name(ctx: TracePointContext) -> u32 {
                finish(&ctx);
                0
            }
        )*
    };
}

exits!(
    sys_exit_init_module,
    sys_exit_finit_module,
    sys_exit_ptrace,
    sys_exit_process_vm_writev,
    sys_exit_mount,
    sys_exit_umount,
    sys_exit_oldumount,
    sys_exit_move_mount,
    sys_exit_mount_setattr,
    sys_exit_fspick,
    sys_exit_fsconfig,
    sys_exit_unshare,
    sys_exit_setns,
);

#[tracepoint]
pub fn sys_enter_init_module(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::InitModule);
    s.arg2 = arg(&ctx, 1);
    s.text = arg(&ctx, 2);
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_finit_module(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::FinitModule);
    s.target = arg(&ctx, 0) as i32;
    s.text = arg(&ctx, 1);
    s.flags = arg(&ctx, 2) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    let request = arg(&ctx, 0);
    // Attaching, or writing another task's memory or registers; reads and TRACEME are not.
    if !matches!(
        request,
        PTRACE_ATTACH
            | PTRACE_SEIZE
            | PTRACE_POKETEXT
            | PTRACE_POKEDATA
            | PTRACE_POKEUSR
            | PTRACE_SETREGS
            | PTRACE_SETFPREGS
            | PTRACE_SETFPXREGS
            | PTRACE_SETREGSET
    ) {
        return 0;
    }
    let mut s = stash(PrivOp::Ptrace);
    s.arg = request;
    s.target = arg(&ctx, 1) as i32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::VmWrite);
    s.target = arg(&ctx, 0) as i32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_mount(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::Mount);
    s.path2 = arg(&ctx, 0);
    s.path = arg(&ctx, 1);
    s.text = arg(&ctx, 2);
    s.arg = arg(&ctx, 3);
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_umount(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::Umount);
    s.path = arg(&ctx, 0);
    s.flags = arg(&ctx, 1) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_oldumount(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::Umount);
    s.path = arg(&ctx, 0);
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_move_mount(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::MoveMount);
    s.dirfd2 = arg(&ctx, 0) as i32;
    s.path2 = arg(&ctx, 1);
    s.dirfd = arg(&ctx, 2) as i32;
    s.path = arg(&ctx, 3);
    s.flags = arg(&ctx, 4) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_mount_setattr(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::MountSetattr);
    s.dirfd = arg(&ctx, 0) as i32;
    s.path = arg(&ctx, 1);
    s.flags = arg(&ctx, 2) as u32;
    // `struct mount_attr` starts with `__u64 attr_set; __u64 attr_clr;`.
    let Ok(attr) =
        (unsafe { aya_ebpf::helpers::bpf_probe_read_user(arg(&ctx, 3) as *const [u64; 2]) })
    else {
        return 0;
    };
    s.arg = attr[0];
    s.arg2 = attr[1];
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_fspick(ctx: TracePointContext) -> u32 {
    let mut s = stash(PrivOp::Fspick);
    s.dirfd = arg(&ctx, 0) as i32;
    s.path = arg(&ctx, 1);
    s.flags = arg(&ctx, 2) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_fsconfig(ctx: TracePointContext) -> u32 {
    // Only the command that applies a reconfiguration changes a mounted filesystem.
    if arg(&ctx, 1) != FSCONFIG_CMD_RECONFIGURE {
        return 0;
    }
    let mut s = stash(PrivOp::Reconfigure);
    s.target = arg(&ctx, 0) as i32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_unshare(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 0);
    if flags & CLONE_NEWNS == 0 {
        return 0;
    }
    let mut s = stash(PrivOp::UnshareMounts);
    s.arg = flags;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_setns(ctx: TracePointContext) -> u32 {
    let nstype = arg(&ctx, 1);
    // 0 accepts any namespace; a pidfd with several CLONE_NEW* bits may include mounts.
    if nstype != 0 && nstype & CLONE_NEWNS == 0 {
        return 0;
    }
    let mut s = stash(PrivOp::Setns);
    s.target = arg(&ctx, 0) as i32;
    s.flags = nstype as u32;
    save(&s);
    0
}
