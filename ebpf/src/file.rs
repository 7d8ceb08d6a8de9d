//! File sensor: every syscall that changes a file. Arguments are saved at `sys_enter_*` and the
//! record is built at `sys_exit_*` only when the call succeeded, so failed attempts cost one map
//! update and produce nothing. Read-only opens are dropped at entry.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use picket_common::{
    EventKind, FileOp, Sensor, AT_FDCWD, FILE_EVENT_PATH2_OFFSET, FILE_EVENT_PATH_OFFSET,
    FILE_FLAG_FD_ONLY, PATH_MAX,
};

use crate::{
    context::{arg, current_ids, fill_header, is_agent, read_user_str, ret},
    maps::{emit, FileStash, FILE_SCRATCH, FILE_STASH},
};

const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const AT_REMOVEDIR: u32 = 0x200;
const UNCHANGED: u32 = u32::MAX;

fn stash(op: FileOp) -> FileStash {
    FileStash {
        op: op as u16,
        flags: 0,
        dirfd: AT_FDCWD,
        dirfd2: AT_FDCWD,
        op_flags: 0,
        mode: 0,
        owner: UNCHANGED,
        group: UNCHANGED,
        _pad0: 0,
        path: 0,
        path2: 0,
        length: 0,
    }
}

#[inline(always)]
fn save(s: &FileStash) {
    let (tgid, tid) = current_ids();
    if is_agent(tgid) {
        return;
    }
    let _ = FILE_STASH.insert(&tid, s, 0);
}

/// Whether an open with these flags can change the file: the others are dropped at entry.
#[inline(always)]
fn opens_for_writing(flags: u32) -> bool {
    flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC) != 0
}

#[inline(always)]
fn save_open(dirfd: i32, path: u64, flags: u32, mode: u32) {
    if !opens_for_writing(flags) {
        return;
    }
    let mut s = stash(FileOp::Open);
    s.dirfd = dirfd;
    s.path = path;
    s.op_flags = flags;
    s.mode = mode;
    save(&s);
}

#[inline(always)]
fn save_path(op: FileOp, dirfd: i32, path: u64) -> FileStash {
    let mut s = stash(op);
    s.dirfd = dirfd;
    s.path = path;
    s
}

#[inline(always)]
fn save_two(op: FileOp, dirfd: i32, path: u64, dirfd2: i32, path2: u64, flags: u32) {
    let mut s = save_path(op, dirfd, path);
    s.dirfd2 = dirfd2;
    s.path2 = path2;
    s.op_flags = flags;
    save(&s);
}

#[inline(always)]
fn save_fd(op: FileOp, fd: i32) -> FileStash {
    let mut s = stash(op);
    s.flags = FILE_FLAG_FD_ONLY;
    s.dirfd = fd;
    s
}

/// At syscall exit: builds and sends the record if the call succeeded.
#[inline(always)]
fn finish(ctx: &TracePointContext) {
    let (_, tid) = current_ids();
    let Some(s) = (unsafe { FILE_STASH.get(&tid) }).copied() else {
        return;
    };
    let _ = FILE_STASH.remove(&tid);
    let ret = ret(ctx);
    if ret < 0 {
        return;
    }
    let Some(event) = FILE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, exclusively ours while this program runs.
    let event = unsafe { &mut *event };
    fill_header(&mut event.header, EventKind::File as u16, s.flags);
    event.op = s.op;
    event._pad0 = 0;
    event.dirfd = s.dirfd;
    event.dirfd2 = s.dirfd2;
    event.op_flags = s.op_flags;
    event.mode = s.mode;
    event.owner = s.owner;
    event.group = s.group;
    event.length = s.length;
    event.ret = ret;
    // chdir and memfd_create feed the process table (relative paths of execs too): it belongs to the process
    // sensor, which is always attached.
    let sensor = if s.op == FileOp::Chdir as u16 || s.op == FileOp::MemfdCreate as u16 {
        Sensor::Process
    } else {
        Sensor::File
    };
    let len = read_user_str(&mut event.path, s.path).unwrap_or(0);
    event.path_len = len as u16;
    event.path2_len = 0;
    if s.path2 == 0 {
        emit(
            sensor,
            event,
            FILE_EVENT_PATH_OFFSET + (len & (PATH_MAX - 1)),
        );
        return;
    }
    let len2 = read_user_str(&mut event.path2, s.path2).unwrap_or(0);
    event.path2_len = len2 as u16;
    emit(
        sensor,
        event,
        FILE_EVENT_PATH2_OFFSET + (len2 & (PATH_MAX - 1)),
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
    sys_exit_openat,
    sys_exit_openat2,
    sys_exit_open,
    sys_exit_creat,
    sys_exit_renameat,
    sys_exit_renameat2,
    sys_exit_rename,
    sys_exit_unlinkat,
    sys_exit_unlink,
    sys_exit_rmdir,
    sys_exit_mkdirat,
    sys_exit_mkdir,
    sys_exit_linkat,
    sys_exit_link,
    sys_exit_symlinkat,
    sys_exit_symlink,
    sys_exit_fchmodat,
    sys_exit_fchmodat2,
    sys_exit_chmod,
    sys_exit_fchmod,
    sys_exit_fchownat,
    sys_exit_chown,
    sys_exit_lchown,
    sys_exit_fchown,
    sys_exit_truncate,
    sys_exit_ftruncate,
    sys_exit_chdir,
    sys_exit_fchdir,
    sys_exit_memfd_create,
    sys_exit_setxattr,
    sys_exit_lsetxattr,
    sys_exit_fsetxattr,
    sys_exit_setxattrat,
);

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    // The flags first: most opens read, and read nothing else.
    let flags = arg(&ctx, 2) as u32;
    if !opens_for_writing(flags) {
        return 0;
    }
    save_open(
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        flags,
        arg(&ctx, 3) as u32,
    );
    0
}

#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    // `struct open_how` starts with `__u64 flags; __u64 mode;`.
    let how = arg(&ctx, 2);
    let Ok(flags_mode) =
        (unsafe { aya_ebpf::helpers::bpf_probe_read_user(how as *const [u64; 2]) })
    else {
        return 0;
    };
    save_open(
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        flags_mode[0] as u32,
        flags_mode[1] as u32,
    );
    0
}

#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 1) as u32;
    if !opens_for_writing(flags) {
        return 0;
    }
    save_open(AT_FDCWD, arg(&ctx, 0), flags, arg(&ctx, 2) as u32);
    0
}

#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    save_open(
        AT_FDCWD,
        arg(&ctx, 0),
        O_CREAT | O_WRONLY | O_TRUNC,
        arg(&ctx, 1) as u32,
    );
    0
}

#[tracepoint]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    save_two(
        FileOp::Rename,
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        arg(&ctx, 2) as i32,
        arg(&ctx, 3),
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_renameat2(ctx: TracePointContext) -> u32 {
    save_two(
        FileOp::Rename,
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        arg(&ctx, 2) as i32,
        arg(&ctx, 3),
        arg(&ctx, 4) as u32,
    );
    0
}

#[tracepoint]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    save_two(
        FileOp::Rename,
        AT_FDCWD,
        arg(&ctx, 0),
        AT_FDCWD,
        arg(&ctx, 1),
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_unlinkat(ctx: TracePointContext) -> u32 {
    let flags = arg(&ctx, 2) as u32;
    let op = if flags & AT_REMOVEDIR != 0 {
        FileOp::Rmdir
    } else {
        FileOp::Unlink
    };
    let mut s = save_path(op, arg(&ctx, 0) as i32, arg(&ctx, 1));
    s.op_flags = flags;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_unlink(ctx: TracePointContext) -> u32 {
    save(&save_path(FileOp::Unlink, AT_FDCWD, arg(&ctx, 0)));
    0
}

#[tracepoint]
pub fn sys_enter_rmdir(ctx: TracePointContext) -> u32 {
    save(&save_path(FileOp::Rmdir, AT_FDCWD, arg(&ctx, 0)));
    0
}

#[tracepoint]
pub fn sys_enter_mkdirat(ctx: TracePointContext) -> u32 {
    let mut s = save_path(FileOp::Mkdir, arg(&ctx, 0) as i32, arg(&ctx, 1));
    s.mode = arg(&ctx, 2) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_mkdir(ctx: TracePointContext) -> u32 {
    let mut s = save_path(FileOp::Mkdir, AT_FDCWD, arg(&ctx, 0));
    s.mode = arg(&ctx, 1) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_linkat(ctx: TracePointContext) -> u32 {
    save_two(
        FileOp::Link,
        arg(&ctx, 0) as i32,
        arg(&ctx, 1),
        arg(&ctx, 2) as i32,
        arg(&ctx, 3),
        arg(&ctx, 4) as u32,
    );
    0
}

#[tracepoint]
pub fn sys_enter_link(ctx: TracePointContext) -> u32 {
    save_two(
        FileOp::Link,
        AT_FDCWD,
        arg(&ctx, 0),
        AT_FDCWD,
        arg(&ctx, 1),
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
    // symlinkat(target, newdirfd, linkpath): the target is stored literally, never resolved.
    save_two(
        FileOp::Symlink,
        AT_FDCWD,
        arg(&ctx, 0),
        arg(&ctx, 1) as i32,
        arg(&ctx, 2),
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
    save_two(
        FileOp::Symlink,
        AT_FDCWD,
        arg(&ctx, 0),
        AT_FDCWD,
        arg(&ctx, 1),
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_fchmodat(ctx: TracePointContext) -> u32 {
    let mut s = save_path(FileOp::Chmod, arg(&ctx, 0) as i32, arg(&ctx, 1));
    s.mode = arg(&ctx, 2) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_fchmodat2(ctx: TracePointContext) -> u32 {
    let mut s = save_path(FileOp::Chmod, arg(&ctx, 0) as i32, arg(&ctx, 1));
    s.mode = arg(&ctx, 2) as u32;
    s.op_flags = arg(&ctx, 3) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_chmod(ctx: TracePointContext) -> u32 {
    let mut s = save_path(FileOp::Chmod, AT_FDCWD, arg(&ctx, 0));
    s.mode = arg(&ctx, 1) as u32;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_fchmod(ctx: TracePointContext) -> u32 {
    let mut s = save_fd(FileOp::Chmod, arg(&ctx, 0) as i32);
    s.mode = arg(&ctx, 1) as u32;
    save(&s);
    0
}

#[inline(always)]
fn save_chown(mut s: FileStash, owner: u64, group: u64, flags: u32) {
    s.owner = owner as u32;
    s.group = group as u32;
    s.op_flags = flags;
    save(&s);
}

#[tracepoint]
pub fn sys_enter_fchownat(ctx: TracePointContext) -> u32 {
    let s = save_path(FileOp::Chown, arg(&ctx, 0) as i32, arg(&ctx, 1));
    save_chown(s, arg(&ctx, 2), arg(&ctx, 3), arg(&ctx, 4) as u32);
    0
}

#[tracepoint]
pub fn sys_enter_chown(ctx: TracePointContext) -> u32 {
    let s = save_path(FileOp::Chown, AT_FDCWD, arg(&ctx, 0));
    save_chown(s, arg(&ctx, 1), arg(&ctx, 2), 0);
    0
}

#[tracepoint]
pub fn sys_enter_lchown(ctx: TracePointContext) -> u32 {
    let s = save_path(FileOp::Chown, AT_FDCWD, arg(&ctx, 0));
    // AT_SYMLINK_NOFOLLOW: lchown changes the link itself.
    save_chown(s, arg(&ctx, 1), arg(&ctx, 2), 0x100);
    0
}

#[tracepoint]
pub fn sys_enter_fchown(ctx: TracePointContext) -> u32 {
    let s = save_fd(FileOp::Chown, arg(&ctx, 0) as i32);
    save_chown(s, arg(&ctx, 1), arg(&ctx, 2), 0);
    0
}

#[tracepoint]
pub fn sys_enter_truncate(ctx: TracePointContext) -> u32 {
    let mut s = save_path(FileOp::Truncate, AT_FDCWD, arg(&ctx, 0));
    s.length = arg(&ctx, 1) as i64;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_ftruncate(ctx: TracePointContext) -> u32 {
    let mut s = save_fd(FileOp::Truncate, arg(&ctx, 0) as i32);
    s.length = arg(&ctx, 1) as i64;
    save(&s);
    0
}

#[tracepoint]
pub fn sys_enter_chdir(ctx: TracePointContext) -> u32 {
    save(&save_path(FileOp::Chdir, AT_FDCWD, arg(&ctx, 0)));
    0
}

#[tracepoint]
pub fn sys_enter_fchdir(ctx: TracePointContext) -> u32 {
    save(&save_fd(FileOp::Chdir, arg(&ctx, 0) as i32));
    0
}

#[tracepoint]
pub fn sys_enter_memfd_create(ctx: TracePointContext) -> u32 {
    let mut s = save_path(FileOp::MemfdCreate, AT_FDCWD, arg(&ctx, 0));
    s.op_flags = arg(&ctx, 1) as u32;
    save(&s);
    0
}

/// The one extended attribute reported, NUL included, as the kernel compares it: file
/// capabilities. Every other name is dropped at entry.
const CAPABILITY_XATTR: &[u8; 20] = b"security.capability\0";
const AT_SYMLINK_NOFOLLOW: u32 = 0x100;

/// Whether the user string at `name` is `security.capability`: read into a zeroed buffer and
/// compared as three words (no other attribute reaches user space).
#[inline(always)]
fn is_capability_xattr(name: u64) -> bool {
    let mut buf = [0u8; 24];
    if read_user_str(&mut buf, name) != Some(CAPABILITY_XATTR.len() - 1) {
        return false;
    }
    let mut want = [0u8; 24];
    let mut i = 0;
    while i < CAPABILITY_XATTR.len() {
        want[i] = CAPABILITY_XATTR[i];
        i += 1;
    }
    let word = |b: &[u8; 24], at: usize| {
        u64::from_ne_bytes([
            b[at],
            b[at + 1],
            b[at + 2],
            b[at + 3],
            b[at + 4],
            b[at + 5],
            b[at + 6],
            b[at + 7],
        ])
    };
    word(&buf, 0) == word(&want, 0)
        && word(&buf, 8) == word(&want, 8)
        && word(&buf, 16) == word(&want, 16)
}

/// Saves a `security.capability` write: the value's `magic_etc` goes in `mode`, the permitted
/// set (both 32-bit halves) in `length`. `struct vfs_cap_data` is `magic_etc` then, per half,
/// `permitted` and `inheritable`; revision 1 has one half (12 bytes).
#[inline(always)]
fn save_capability(mut s: FileStash, value: u64, size: u64) {
    let read = |len: usize| -> Option<[u32; 5]> {
        // SAFETY: the helper checks the address; a fault returns an error.
        unsafe {
            if len >= 20 {
                aya_ebpf::helpers::bpf_probe_read_user(value as *const [u32; 5]).ok()
            } else {
                aya_ebpf::helpers::bpf_probe_read_user(value as *const [u32; 3])
                    .ok()
                    .map(|v| [v[0], v[1], v[2], 0, 0])
            }
        }
    };
    if size >= 12 {
        if let Some(v) = read(size as usize) {
            s.mode = v[0];
            s.length = (u64::from(v[1]) | u64::from(v[3]) << 32) as i64;
        }
    }
    save(&s);
}

#[tracepoint]
pub fn sys_enter_setxattr(ctx: TracePointContext) -> u32 {
    if !is_capability_xattr(arg(&ctx, 1)) {
        return 0;
    }
    let s = save_path(FileOp::SetCapability, AT_FDCWD, arg(&ctx, 0));
    save_capability(s, arg(&ctx, 2), arg(&ctx, 3));
    0
}

#[tracepoint]
pub fn sys_enter_lsetxattr(ctx: TracePointContext) -> u32 {
    if !is_capability_xattr(arg(&ctx, 1)) {
        return 0;
    }
    let mut s = save_path(FileOp::SetCapability, AT_FDCWD, arg(&ctx, 0));
    s.op_flags = AT_SYMLINK_NOFOLLOW;
    save_capability(s, arg(&ctx, 2), arg(&ctx, 3));
    0
}

#[tracepoint]
pub fn sys_enter_fsetxattr(ctx: TracePointContext) -> u32 {
    if !is_capability_xattr(arg(&ctx, 1)) {
        return 0;
    }
    let s = save_fd(FileOp::SetCapability, arg(&ctx, 0) as i32);
    save_capability(s, arg(&ctx, 2), arg(&ctx, 3));
    0
}

#[tracepoint]
pub fn sys_enter_setxattrat(ctx: TracePointContext) -> u32 {
    // setxattrat(dfd, path, at_flags, name, uargs, usize), Linux 6.13: `struct xattr_args` is
    // `__u64 value; __u32 size; __u32 flags;`.
    if !is_capability_xattr(arg(&ctx, 3)) {
        return 0;
    }
    let Ok(args) =
        (unsafe { aya_ebpf::helpers::bpf_probe_read_user(arg(&ctx, 4) as *const [u64; 2]) })
    else {
        return 0;
    };
    let mut s = save_path(FileOp::SetCapability, arg(&ctx, 0) as i32, arg(&ctx, 1));
    s.op_flags = arg(&ctx, 2) as u32;
    save_capability(s, args[0], args[1] & 0xffff_ffff);
    0
}
