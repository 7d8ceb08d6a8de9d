//! The table of programs in the eBPF object: which tracepoint each attaches to, which sensor it
//! belongs to, and what a missing tracepoint means.

use picket_common::Sensor;

/// What to do when a program's tracepoint does not exist on this kernel.
pub enum IfMissing {
    /// Refuse to start, with this hint for the user.
    Fail(&'static str),
    /// Carry on: the syscall does not exist on every architecture or kernel version, and a
    /// newer equivalent is traced instead. The text says why.
    Skip(&'static str),
}

/// One tracepoint program.
pub struct Program {
    /// Program name in the object, equal to the tracepoint's name.
    pub name: &'static str,
    pub category: &'static str,
    pub sensor: Sensor,
    pub missing: IfMissing,
}

const SYSCALLS_HINT: &str = "syscall tracepoints need a kernel built with CONFIG_FTRACE_SYSCALLS=y";
const SCHED_HINT: &str = "scheduler tracepoints need CONFIG_TRACEPOINTS=y (and CONFIG_FTRACE)";
const SOCK_HINT: &str = "socket tracepoints need kernel >= 4.16 with CONFIG_NET";
const LEGACY: &str = "legacy syscall absent on this architecture; its *at() form is traced";
const NEWER: &str = "syscall added in a later kernel; the older form is traced";
const NO_MODULES: &str =
    "kernel built without loadable modules (CONFIG_MODULES=n): none can be loaded";
const NO_CMA: &str =
    "kernel built without CONFIG_CROSS_MEMORY_ATTACH: no process can write another's memory this way";
const NEWER_MOUNT: &str = "syscall added in a later kernel: mounts through it cannot happen here";
const OLD_UMOUNT: &str =
    "the one-argument umount exists on some architectures only; umount2 is traced";
const NEWER_XATTR: &str =
    "syscall added in Linux 6.13; setxattr, lsetxattr and fsetxattr are traced";

const fn syscall(name: &'static str, sensor: Sensor) -> Program {
    tracepoint(name, "syscalls", sensor, SYSCALLS_HINT)
}

const fn tracepoint(
    name: &'static str,
    category: &'static str,
    sensor: Sensor,
    hint: &'static str,
) -> Program {
    Program {
        name,
        category,
        sensor,
        missing: IfMissing::Fail(hint),
    }
}

const fn optional(name: &'static str, sensor: Sensor, why: &'static str) -> Program {
    Program {
        name,
        category: "syscalls",
        sensor,
        missing: IfMissing::Skip(why),
    }
}

use Sensor::{File, Network, Process};

/// Every program, in attach order. Programs that build state another relies on (argument
/// stashes at syscall entry) come before the ones that consume it.
pub const PROGRAMS: &[Program] = &[
    // Process.
    syscall("sys_enter_execve", Process),
    syscall("sys_enter_execveat", Process),
    syscall("sys_exit_execve", Process),
    syscall("sys_exit_execveat", Process),
    syscall("sys_enter_clone", Process),
    optional("sys_enter_clone3", Process, NEWER),
    syscall("sys_exit_clone", Process),
    optional("sys_exit_clone3", Process, NEWER),
    syscall("sys_enter_exit_group", Process),
    tracepoint("signal_deliver", "signal", Process, SCHED_HINT),
    tracepoint("sched_process_fork", "sched", Process, SCHED_HINT),
    tracepoint("sched_process_exec", "sched", Process, SCHED_HINT),
    tracepoint("sched_process_exit", "sched", Process, SCHED_HINT),
    // Working directory changes, to make relative paths absolute (exec's too).
    syscall("sys_enter_chdir", Process),
    syscall("sys_exit_chdir", Process),
    syscall("sys_enter_fchdir", Process),
    syscall("sys_exit_fchdir", Process),
    // Anonymous memory files, to name a later fileless exec.
    syscall("sys_enter_memfd_create", Process),
    syscall("sys_exit_memfd_create", Process),
    // Privileged actions (modules, ptrace, mounts) and the mount namespace changes that tell
    // a sandbox's mounts from the device's: entry stashes, exit reports a success.
    optional("sys_enter_init_module", Process, NO_MODULES),
    optional("sys_exit_init_module", Process, NO_MODULES),
    optional("sys_enter_finit_module", Process, NO_MODULES),
    optional("sys_exit_finit_module", Process, NO_MODULES),
    syscall("sys_enter_ptrace", Process),
    syscall("sys_exit_ptrace", Process),
    optional("sys_enter_process_vm_writev", Process, NO_CMA),
    optional("sys_exit_process_vm_writev", Process, NO_CMA),
    syscall("sys_enter_unshare", Process),
    syscall("sys_exit_unshare", Process),
    syscall("sys_enter_setns", Process),
    syscall("sys_exit_setns", Process),
    syscall("sys_enter_mount", Process),
    syscall("sys_exit_mount", Process),
    syscall("sys_enter_umount", Process),
    syscall("sys_exit_umount", Process),
    optional("sys_enter_oldumount", Process, OLD_UMOUNT),
    optional("sys_exit_oldumount", Process, OLD_UMOUNT),
    optional("sys_enter_move_mount", Process, NEWER_MOUNT),
    optional("sys_exit_move_mount", Process, NEWER_MOUNT),
    optional("sys_enter_mount_setattr", Process, NEWER_MOUNT),
    optional("sys_exit_mount_setattr", Process, NEWER_MOUNT),
    optional("sys_enter_fspick", Process, NEWER_MOUNT),
    optional("sys_exit_fspick", Process, NEWER_MOUNT),
    optional("sys_enter_fsconfig", Process, NEWER_MOUNT),
    optional("sys_exit_fsconfig", Process, NEWER_MOUNT),
    // Network.
    syscall("sys_enter_socket", Network),
    syscall("sys_exit_socket", Network),
    syscall("sys_enter_close", Network),
    syscall("sys_enter_connect", Network),
    syscall("sys_enter_bind", Network),
    syscall("sys_enter_sendto", Network),
    syscall("sys_enter_sendmsg", Network),
    syscall("sys_enter_sendmmsg", Network),
    tracepoint("inet_sock_set_state", "sock", Network, SOCK_HINT),
    // Files: entry stashes the arguments, exit reports a success.
    syscall("sys_enter_openat", File),
    syscall("sys_exit_openat", File),
    optional("sys_enter_openat2", File, NEWER),
    optional("sys_exit_openat2", File, NEWER),
    optional("sys_enter_open", File, LEGACY),
    optional("sys_exit_open", File, LEGACY),
    optional("sys_enter_creat", File, LEGACY),
    optional("sys_exit_creat", File, LEGACY),
    syscall("sys_enter_renameat", File),
    syscall("sys_exit_renameat", File),
    optional("sys_enter_renameat2", File, NEWER),
    optional("sys_exit_renameat2", File, NEWER),
    optional("sys_enter_rename", File, LEGACY),
    optional("sys_exit_rename", File, LEGACY),
    syscall("sys_enter_unlinkat", File),
    syscall("sys_exit_unlinkat", File),
    optional("sys_enter_unlink", File, LEGACY),
    optional("sys_exit_unlink", File, LEGACY),
    optional("sys_enter_rmdir", File, LEGACY),
    optional("sys_exit_rmdir", File, LEGACY),
    syscall("sys_enter_mkdirat", File),
    syscall("sys_exit_mkdirat", File),
    optional("sys_enter_mkdir", File, LEGACY),
    optional("sys_exit_mkdir", File, LEGACY),
    syscall("sys_enter_linkat", File),
    syscall("sys_exit_linkat", File),
    optional("sys_enter_link", File, LEGACY),
    optional("sys_exit_link", File, LEGACY),
    syscall("sys_enter_symlinkat", File),
    syscall("sys_exit_symlinkat", File),
    optional("sys_enter_symlink", File, LEGACY),
    optional("sys_exit_symlink", File, LEGACY),
    syscall("sys_enter_fchmodat", File),
    syscall("sys_exit_fchmodat", File),
    optional("sys_enter_fchmodat2", File, NEWER),
    optional("sys_exit_fchmodat2", File, NEWER),
    optional("sys_enter_chmod", File, LEGACY),
    optional("sys_exit_chmod", File, LEGACY),
    syscall("sys_enter_fchmod", File),
    syscall("sys_exit_fchmod", File),
    syscall("sys_enter_fchownat", File),
    syscall("sys_exit_fchownat", File),
    optional("sys_enter_chown", File, LEGACY),
    optional("sys_exit_chown", File, LEGACY),
    optional("sys_enter_lchown", File, LEGACY),
    optional("sys_exit_lchown", File, LEGACY),
    syscall("sys_enter_fchown", File),
    syscall("sys_exit_fchown", File),
    syscall("sys_enter_truncate", File),
    syscall("sys_exit_truncate", File),
    syscall("sys_enter_ftruncate", File),
    syscall("sys_exit_ftruncate", File),
    // File capabilities: only `security.capability` leaves the kernel.
    syscall("sys_enter_setxattr", File),
    syscall("sys_exit_setxattr", File),
    syscall("sys_enter_lsetxattr", File),
    syscall("sys_exit_lsetxattr", File),
    syscall("sys_enter_fsetxattr", File),
    syscall("sys_exit_fsetxattr", File),
    optional("sys_enter_setxattrat", File, NEWER_XATTR),
    optional("sys_exit_setxattrat", File, NEWER_XATTR),
];

/// A set of sensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensorSet(u8);

impl SensorSet {
    /// The empty set.
    pub const fn empty() -> Self {
        SensorSet(0)
    }

    /// This set with `sensor` added.
    pub const fn with(self, sensor: Sensor) -> Self {
        SensorSet(self.0 | 1 << sensor as u8)
    }

    /// Whether `sensor` is in the set.
    pub const fn contains(self, sensor: Sensor) -> bool {
        self.0 & (1 << sensor as u8) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_has_its_entry_first() {
        for (i, p) in PROGRAMS.iter().enumerate() {
            if let Some(call) = p.name.strip_prefix("sys_exit_") {
                let entry = format!("sys_enter_{call}");
                let at = PROGRAMS.iter().position(|q| q.name == entry);
                // socket/clone/execve exits may stand alone; every file-syscall exit pairs, as
                // does every privileged action's.
                let paired = p.sensor == Sensor::File
                    || call.contains("chdir")
                    || call.contains("memfd")
                    || call.contains("module")
                    || call.contains("mount")
                    || [
                        "ptrace",
                        "process_vm_writev",
                        "unshare",
                        "setns",
                        "fspick",
                        "fsconfig",
                    ]
                    .contains(&call);
                if paired {
                    assert!(
                        at.is_some_and(|at| at < i),
                        "{} lacks {entry} before it",
                        p.name
                    );
                }
            }
        }
    }

    #[test]
    fn sets() {
        let s = SensorSet::empty().with(Sensor::File);
        assert!(s.contains(Sensor::File));
        assert!(!s.contains(Sensor::Network));
        assert!(!SensorSet::empty().contains(Sensor::Process));
    }
}
