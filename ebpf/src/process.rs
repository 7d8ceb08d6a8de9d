//! Process sensor: exec (with argv and the dynamic loader variables of its environment), fork
//! (processes only, not threads) and exit (with status).

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel_str_bytes, gen},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use core::ffi::c_void;
use picket_common::{
    counter, EventHeader, EventKind, ExecEvent, ExitEvent, ForkEvent, Sensor, ARGV_MAX, ENV_MAX,
    EXEC_EVENT_FILENAME_OFFSET, EXEC_FLAG_ARGV_MISSING, EXEC_FLAG_ARGV_TRUNCATED,
    EXEC_FLAG_ENV_TRUNCATED, EXEC_FLAG_ENV_UNEXAMINED, EXEC_FLAG_EXECVEAT, EXEC_FLAG_KILLED,
    EXIT_FLAG_CODE, EXIT_FLAG_SIGNAL, MAX_ARGS, MAX_ENV, PATH_MAX,
};

use crate::{
    context::{arg, current_ids, fill_header, is_agent, layout, read_user_ulong},
    maps::{
        count, emit, ARGV_SCRATCH, ARGV_STASH, CLONE_FLAGS, EXEC_GUARD, EXEC_SCRATCH, EXEC_TOKENS,
        EXIT_CODES, FATAL_SIGNALS,
    },
};

const CLONE_THREAD: u64 = 0x0001_0000;
const AT_FDCWD: i32 = -100;

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    stash_argv(arg(&ctx, 1), arg(&ctx, 2), AT_FDCWD, 0, 0);
    0
}

#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    stash_argv(
        arg(&ctx, 2),
        arg(&ctx, 3),
        arg(&ctx, 0) as i32,
        arg(&ctx, 4) as u32,
        EXEC_FLAG_EXECVEAT,
    );
    0
}

#[tracepoint]
pub fn sys_exit_execve(_ctx: TracePointContext) -> u32 {
    drop_argv_stash();
    0
}

#[tracepoint]
pub fn sys_exit_execveat(_ctx: TracePointContext) -> u32 {
    drop_argv_stash();
    0
}

/// Reads `argv` and the loader variables of `envp` now, while the old image's memory still
/// exists; `sched_process_exec` picks them up.
#[inline(always)]
fn stash_argv(argv: u64, envp: u64, exec_fd: i32, exec_at_flags: u32, flags: u16) {
    let (tgid, tid) = current_ids();
    if is_agent(tgid) {
        return;
    }
    // A token counts only for the exec it was written during (see `guard_fileless`).
    let _ = EXEC_TOKENS.remove(&tgid);
    let Some(stash) = ARGV_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, exclusively ours while this program runs.
    let stash = unsafe { &mut *stash };
    stash.exec_fd = exec_fd;
    stash.exec_at_flags = exec_at_flags;
    stash.flags = flags;
    stash._pad0 = [0; 3];
    let ptr_size = layout!(syscall_arg_size) as u64;
    let mut off: usize = 0;
    let mut argc: u16 = 0;
    for i in 0..MAX_ARGS {
        let Some(ptr) = read_user_ulong(argv + i as u64 * ptr_size) else {
            break;
        };
        if ptr == 0 {
            break;
        }
        if off >= ARGV_MAX {
            stash.flags |= EXEC_FLAG_ARGV_TRUNCATED;
            break;
        }
        let at = off & (ARGV_MAX - 1);
        // SAFETY: `at < ARGV_MAX` and the read is at most `ARGV_MAX` bytes into a buffer of
        // `2 * ARGV_MAX`.
        let len = unsafe {
            gen::bpf_probe_read_user_str(
                stash.argv.as_mut_ptr().add(at) as *mut c_void,
                ARGV_MAX as u32,
                ptr as *const c_void,
            )
        };
        if len <= 0 {
            break;
        }
        off = at + len as usize;
        argc += 1;
        if i == MAX_ARGS - 1 {
            // More may follow; say so if they do.
            if let Some(next) = read_user_ulong(argv + MAX_ARGS as u64 * ptr_size) {
                if next != 0 {
                    stash.flags |= EXEC_FLAG_ARGV_TRUNCATED;
                }
            }
        }
    }
    if off > ARGV_MAX {
        off = ARGV_MAX;
        stash.flags |= EXEC_FLAG_ARGV_TRUNCATED;
    }
    stash.argc = argc;
    stash.argv_len = off as u16;
    stash_env(stash, envp);
    if ARGV_STASH.insert(&tid, stash, 0).is_err() {
        count(counter::ARGV_STASH_EVICTED);
    }
}

/// `NAME=` of the loader variables, as their first bytes read in native order.
const LD_PRELO: u64 = u64::from_ne_bytes(*b"LD_PRELO");
const LD_AUDIT: u64 = u64::from_ne_bytes(*b"LD_AUDIT");
const LD_LIBRA: u64 = u64::from_ne_bytes(*b"LD_LIBRA");
const RY_PATH_: u64 = u64::from_ne_bytes(*b"RY_PATH=");

/// Walks at most [`MAX_ENV`] entries of `envp` and keeps only `LD_PRELOAD=`, `LD_AUDIT=` and
/// `LD_LIBRARY_PATH=` entries. Each entry costs two reads: its pointer, and its first 16 bytes
/// (a string read, so that a short entry at the end of a mapping cannot fault and hide); only
/// a loader variable is read whole.
#[inline(always)]
fn stash_env(stash: &mut crate::maps::ArgvStash, envp: u64) {
    let ptr_size = layout!(syscall_arg_size) as u64;
    // Where the next variable goes: a `u8` (below `ENV_MAX`, 256) whose bound every verifier
    // keeps across the loop, also when it is spilled to the stack; a bound learned from a
    // comparison is lost there by verifiers before 6.8 (Linux 6.1 refused a `usize` offset).
    let mut off: u8 = 0;
    // The buffer is full (the last variable may have been cut).
    let mut full = false;
    let mut cut = false;
    let mut examined: u16 = 0;
    stash.env_len = 0;
    stash.env_examined = 0;
    if envp == 0 {
        return;
    }
    for i in 0..=MAX_ENV {
        let Some(ptr) = read_user_ulong(envp + i as u64 * ptr_size) else {
            stash.flags |= EXEC_FLAG_ENV_UNEXAMINED;
            break;
        };
        if ptr == 0 {
            break;
        }
        if i == MAX_ENV {
            stash.flags |= EXEC_FLAG_ENV_UNEXAMINED;
            break;
        }
        examined += 1;
        // 16 name bytes and the NUL; the words make the comparisons two loads.
        let mut name = [0u64; 3];
        // SAFETY: `name` is 24 writable bytes; the helper writes at most 17.
        let len = unsafe {
            gen::bpf_probe_read_user_str(name.as_mut_ptr() as *mut c_void, 17, ptr as *const c_void)
        };
        if len <= 0 {
            stash.flags |= EXEC_FLAG_ENV_UNEXAMINED;
            continue;
        }
        let tail = name[1].to_ne_bytes();
        let loader = match name[0] {
            LD_PRELO => tail[0] == b'A' && tail[1] == b'D' && tail[2] == b'=',
            LD_AUDIT => tail[0] == b'=',
            LD_LIBRA => name[1] == RY_PATH_,
            _ => false,
        };
        if !loader {
            continue;
        }
        if full {
            stash.flags |= EXEC_FLAG_ENV_TRUNCATED;
            continue;
        }
        let at = off as usize;
        // SAFETY: `at < ENV_MAX` and the read is at most `ENV_MAX` bytes into a buffer of
        // `2 * ENV_MAX`.
        let len = unsafe {
            gen::bpf_probe_read_user_str(
                stash.env.as_mut_ptr().add(at) as *mut c_void,
                ENV_MAX as u32,
                ptr as *const c_void,
            )
        };
        if len > 0 {
            let next = at + len as usize;
            if next >= ENV_MAX {
                full = true;
                cut = next > ENV_MAX;
            } else {
                off = next as u8;
            }
        }
    }
    if cut {
        stash.flags |= EXEC_FLAG_ENV_TRUNCATED;
    }
    stash.env_len = if full { ENV_MAX as u16 } else { u16::from(off) };
    stash.env_examined = examined;
}

#[inline(always)]
fn drop_argv_stash() {
    let (_, tid) = current_ids();
    let _ = ARGV_STASH.remove(&tid);
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current_ids();
    if is_agent(tgid) {
        return 0;
    }
    let Some(event) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, exclusively ours while this program runs.
    let event = unsafe { &mut *event };
    fill_header(&mut event.header, EventKind::Exec as u16, 0);
    // SAFETY: offsets from the tracefs format.
    let old_tid: u32 = unsafe { ctx.read_at::<u32>(layout!(exec_old_pid)) }.unwrap_or(0);
    event.old_tid = old_tid;
    event._pad0 = 0;
    match unsafe { ARGV_STASH.get(&old_tid) } {
        Some(stash) => {
            event.argc = stash.argc;
            event.argv_len = stash.argv_len;
            event.env_len = stash.env_len;
            event.env_examined = stash.env_examined;
            event.exec_fd = stash.exec_fd;
            event.exec_at_flags = stash.exec_at_flags;
            event.header.flags = stash.flags;
            // SAFETY: both argv buffers are at least ARGV_MAX bytes, both env buffers ENV_MAX.
            unsafe {
                gen::bpf_probe_read_kernel(
                    event.argv.as_mut_ptr() as *mut c_void,
                    ARGV_MAX as u32,
                    stash.argv.as_ptr() as *const c_void,
                );
                gen::bpf_probe_read_kernel(
                    event.env.as_mut_ptr() as *mut c_void,
                    ENV_MAX as u32,
                    stash.env.as_ptr() as *const c_void,
                );
            }
            let _ = ARGV_STASH.remove(&old_tid);
        }
        None => {
            event.argc = 0;
            event.argv_len = 0;
            event.env_len = 0;
            event.env_examined = 0;
            event.exec_fd = AT_FDCWD;
            event.exec_at_flags = 0;
            event.header.flags = EXEC_FLAG_ARGV_MISSING;
            count(counter::ARGV_STASH_EVICTED);
        }
    }
    // `__data_loc`: low 16 bits are the offset of the string in the record, high 16 its length.
    let loc: u32 = unsafe { ctx.read_at::<u32>(layout!(exec_filename)) }.unwrap_or(0);
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    // SAFETY: `src` points into the tracepoint record; the helper bounds the copy.
    let len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut event.filename) } {
        Ok(s) => s.len(),
        Err(_) => 0,
    };
    let len = len & (PATH_MAX - 1);
    event.filename_len = len as u16;
    guard_fileless(tgid, event);
    emit(Sensor::Process, event, EXEC_EVENT_FILENAME_OFFSET + len);
    0
}

/// With the exec guard enforcing, an exec through a descriptor that brought the guard no
/// permission event (a memory file: fanotify cannot mark the filesystem memory files live on)
/// is killed before its first instruction runs. The guard writes the process's token when it
/// allows an open for the exec; the exec's entry removed any older one; it is consumed here.
#[inline(always)]
fn guard_fileless(tgid: u32, event: &mut ExecEvent) {
    const AT_EMPTY_PATH: u32 = 0x1000;
    const SIGKILL: u32 = 9;
    // SAFETY: a plain lookup, only whether there is a value.
    let token = unsafe { EXEC_TOKENS.get(&tgid) }.is_some();
    if token {
        let _ = EXEC_TOKENS.remove(&tgid);
    }
    if token || EXEC_GUARD.get(0).is_none_or(|on| *on != 1) {
        return;
    }
    let name = &event.filename;
    let descriptor = event.exec_at_flags & AT_EMPTY_PATH != 0
        || name.starts_with(b"/dev/fd/")
        || name.starts_with(b"/proc/");
    if descriptor {
        // SAFETY: signals the current task, which is completing this exec.
        unsafe { gen::bpf_send_signal(SIGKILL) };
        event.header.flags |= EXEC_FLAG_KILLED;
    }
}

#[tracepoint]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    remember_clone_flags(arg(&ctx, 0));
    0
}

#[tracepoint]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    // `struct clone_args` starts with `__aligned_u64 flags`.
    let flags = unsafe { aya_ebpf::helpers::bpf_probe_read_user(arg(&ctx, 0) as *const u64) };
    remember_clone_flags(flags.unwrap_or(0));
    0
}

#[tracepoint]
pub fn sys_exit_clone(_ctx: TracePointContext) -> u32 {
    forget_clone_flags();
    0
}

#[tracepoint]
pub fn sys_exit_clone3(_ctx: TracePointContext) -> u32 {
    forget_clone_flags();
    0
}

#[inline(always)]
fn remember_clone_flags(flags: u64) {
    if flags & CLONE_THREAD != 0 {
        let (_, tid) = current_ids();
        let _ = CLONE_FLAGS.insert(&tid, &flags, 0);
    }
}

#[inline(always)]
fn forget_clone_flags() {
    let (_, tid) = current_ids();
    let _ = CLONE_FLAGS.remove(&tid);
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if is_agent(tgid) {
        return 0;
    }
    // A new thread, not a new process.
    if unsafe { CLONE_FLAGS.get(&tid) }.is_some() {
        return 0;
    }
    let child: u32 = unsafe { ctx.read_at::<u32>(layout!(fork_child_pid)) }.unwrap_or(0);
    let mut event = ForkEvent {
        header: empty_header(),
        parent_tgid: tgid,
        child_pid: child,
    };
    fill_header(&mut event.header, EventKind::Fork as u16, 0);
    emit(Sensor::Process, &event, core::mem::size_of::<ForkEvent>());
    0
}

#[tracepoint]
pub fn sys_enter_exit_group(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current_ids();
    let code = arg(&ctx, 0) as i32;
    let _ = EXIT_CODES.insert(&tgid, &code, 0);
    0
}

/// Default action is to terminate (with or without a core dump).
const FATAL_BY_DEFAULT: u64 = (1 << 1)  // SIGHUP
    | (1 << 2)  // SIGINT
    | (1 << 3)  // SIGQUIT
    | (1 << 4)  // SIGILL
    | (1 << 5)  // SIGTRAP
    | (1 << 6)  // SIGABRT
    | (1 << 7)  // SIGBUS
    | (1 << 8)  // SIGFPE
    | (1 << 9)  // SIGKILL
    | (1 << 10) // SIGUSR1
    | (1 << 11) // SIGSEGV
    | (1 << 12) // SIGUSR2
    | (1 << 13) // SIGPIPE
    | (1 << 14) // SIGALRM
    | (1 << 15) // SIGTERM
    | (1 << 16) // SIGSTKFLT
    | (1 << 24) // SIGXCPU
    | (1 << 25) // SIGXFSZ
    | (1 << 26) // SIGVTALRM
    | (1 << 27) // SIGPROF
    | (1 << 29) // SIGIO
    | (1 << 30) // SIGPWR
    | (1 << 31); // SIGSYS

#[tracepoint]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    let sig: i32 = unsafe { ctx.read_at::<i32>(layout!(signal_sig)) }.unwrap_or(0);
    if !(1..32).contains(&sig) || FATAL_BY_DEFAULT & (1u64 << sig) == 0 {
        return 0;
    }
    let handler: u64 = unsafe {
        if layout!(signal_sa_handler_size) == 4 {
            ctx.read_at::<u32>(layout!(signal_sa_handler))
                .map(u64::from)
        } else {
            ctx.read_at::<u64>(layout!(signal_sa_handler))
        }
    }
    .unwrap_or(1);
    // SIG_DFL is 0: the process dies of this signal.
    if handler == 0 {
        let (tgid, _) = current_ids();
        let _ = FATAL_SIGNALS.insert(&tgid, &sig, 0);
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if is_agent(tgid) {
        return 0;
    }
    let group_dead_at = layout!(exit_group_dead);
    let last = if group_dead_at != 0 {
        unsafe { ctx.read_at::<u8>(group_dead_at) }.unwrap_or(0) != 0
    } else {
        tgid == tid
    };
    if !last {
        return 0;
    }
    let mut event = ExitEvent {
        header: empty_header(),
        exit_code: 0,
        signal: 0,
    };
    let mut flags = 0;
    if let Some(code) = unsafe { EXIT_CODES.get(&tgid) } {
        event.exit_code = *code;
        flags |= EXIT_FLAG_CODE;
        let _ = EXIT_CODES.remove(&tgid);
    }
    if let Some(sig) = unsafe { FATAL_SIGNALS.get(&tgid) } {
        event.signal = *sig;
        flags |= EXIT_FLAG_SIGNAL;
        let _ = FATAL_SIGNALS.remove(&tgid);
    }
    fill_header(&mut event.header, EventKind::Exit as u16, flags);
    emit(Sensor::Process, &event, core::mem::size_of::<ExitEvent>());
    0
}

/// A zeroed header, to be filled by [`fill_header`].
#[inline(always)]
pub fn empty_header() -> EventHeader {
    EventHeader {
        kind: 0,
        flags: 0,
        tgid: 0,
        tid: 0,
        uid: 0,
        gid: 0,
        _pad0: 0,
        boot_ns: 0,
        cgroup_id: 0,
        comm: [0; 16],
    }
}
