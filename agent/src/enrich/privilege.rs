//! Privileged actions: a kernel module loaded, another process attached to or written into, a
//! filesystem mounted, remounted or unmounted. Each becomes a [`Detail::Privilege`] event,
//! with what was acted on resolved from what the process table and `/proc` know.
//!
//! Mounts are judged by the mount namespace they happen in: a service manager builds private
//! namespaces for sandboxed services (systemd's `PrivateTmp=`, `ProtectSystem=`), whose mounts
//! do not change the device's. The namespace is read from `/proc/PID/ns/mnt` and compared with
//! init's (`/proc/1/ns/mnt`, or the agent's own when init's cannot be read) while the process
//! lives; once it has exited, from what the sensors
//! saw: an `unshare(CLONE_NEWNS)` by the process (or by an ancestor before forking it) makes it
//! private; otherwise the nearest living ancestor's namespace is its own (nothing seen changed
//! it); a `setns` seen, or no living ancestor, leaves it unknown, which counts as the host's.
//! A process cloned straight into a new namespace (`clone(CLONE_NEWNS)`) is told apart only
//! while it lives.

use std::path::{Path, PathBuf};

use picket_common::{PrivOp, AT_FDCWD};

use super::{event, process::MountNs, Category, Detail, Enricher, Event, Record};
use crate::{paths::read_proc_link, sensors::decode::Privilege};

/// A privileged action, as reported.
#[derive(Debug)]
pub enum Privileged {
    /// A kernel module loaded.
    Module {
        /// `init_module` (an image from memory) or `finit_module` (a file).
        op: &'static str,
        /// The module's file, for `finit_module`, when its descriptor could be resolved.
        file: Option<PathBuf>,
        /// The descriptor `finit_module` was given.
        fd: Option<i32>,
        /// The module's parameters, as given.
        params: String,
    },
    /// Another task attached to or written into.
    Injection {
        /// `ptrace` or `process_vm_writev`.
        op: &'static str,
        /// The `ptrace` request, by name.
        request: Option<&'static str>,
        /// The target's process (a thread id for `ptrace`) in the caller's pid namespace.
        target_pid: u32,
        target_exe: Option<PathBuf>,
        /// Bytes written by `process_vm_writev`.
        bytes: Option<i64>,
    },
    /// A mount, remount or unmount.
    Mount(Mount),
}

/// A change to the mount table.
#[derive(Debug)]
pub struct Mount {
    /// `mount`, `umount`, `move_mount`, `mount_setattr` or `reconfigure` (`fsconfig`).
    pub op: &'static str,
    /// Where: the mount point.
    pub target: Option<PathBuf>,
    /// What: a device, a directory bound, a filesystem's name, as given.
    pub source: Option<String>,
    pub fstype: Option<String>,
    /// The flags, by name.
    pub flags: Vec<&'static str>,
    /// An existing mount's options changed (`MS_REMOUNT`, `mount_setattr`, a reconfiguration).
    pub remount: bool,
    pub bind: bool,
    /// A change that leaves the mount writable: a remount without `MS_RDONLY`, or read-only
    /// cleared by `mount_setattr`. `None` when the call does not say (a reconfiguration).
    pub writable: Option<bool>,
    /// The acting process's mount namespace: `host` (init's) or `private`.
    pub namespace: &'static str,
    /// How that was known: `proc`, `unshare`, `ancestor` or `unknown`.
    pub namespace_source: &'static str,
}

impl Mount {
    /// Whether the change is to the device's own mounts (its namespace is init's, or unknown).
    pub fn on_host(&self) -> bool {
        self.namespace == "host"
    }
}

const MS_RDONLY: u64 = 1;
const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;
/// Old callers put this magic number in the flags' upper half.
const MS_MGC_MSK: u64 = 0xffff_0000;
const MS_MGC_VAL: u64 = 0xc0ed_0000;
const MOUNT_ATTR_RDONLY: u64 = 1;
const AT_EMPTY_PATH: u32 = 0x1000;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

const MS_FLAGS: [(u64, &str); 21] = [
    (1, "MS_RDONLY"),
    (2, "MS_NOSUID"),
    (4, "MS_NODEV"),
    (8, "MS_NOEXEC"),
    (16, "MS_SYNCHRONOUS"),
    (32, "MS_REMOUNT"),
    (64, "MS_MANDLOCK"),
    (128, "MS_DIRSYNC"),
    (1 << 10, "MS_NOATIME"),
    (1 << 11, "MS_NODIRATIME"),
    (1 << 12, "MS_BIND"),
    (1 << 13, "MS_MOVE"),
    (1 << 14, "MS_REC"),
    (1 << 15, "MS_SILENT"),
    (1 << 17, "MS_UNBINDABLE"),
    (1 << 18, "MS_PRIVATE"),
    (1 << 19, "MS_SLAVE"),
    (1 << 20, "MS_SHARED"),
    (1 << 21, "MS_RELATIME"),
    (1 << 24, "MS_STRICTATIME"),
    (1 << 25, "MS_LAZYTIME"),
];

const UMOUNT_FLAGS: [(u64, &str); 4] = [
    (1, "MNT_FORCE"),
    (2, "MNT_DETACH"),
    (4, "MNT_EXPIRE"),
    (8, "UMOUNT_NOFOLLOW"),
];

const MOUNT_ATTRS: [(u64, &str); 8] = [
    (1, "MOUNT_ATTR_RDONLY"),
    (2, "MOUNT_ATTR_NOSUID"),
    (4, "MOUNT_ATTR_NODEV"),
    (8, "MOUNT_ATTR_NOEXEC"),
    (0x10, "MOUNT_ATTR_NOATIME"),
    (0x20, "MOUNT_ATTR_STRICTATIME"),
    (0x80, "MOUNT_ATTR_NODIRATIME"),
    (0x0020_0000, "MOUNT_ATTR_NOSYMFOLLOW"),
];

/// The names of the bits of `flags` in `table`.
fn names(flags: u64, table: &[(u64, &'static str)]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// A `ptrace` request by name (only those the sensor reports).
pub fn ptrace_request(request: u64) -> &'static str {
    match request {
        4 => "PTRACE_POKETEXT",
        5 => "PTRACE_POKEDATA",
        6 => "PTRACE_POKEUSER",
        13 => "PTRACE_SETREGS",
        15 => "PTRACE_SETFPREGS",
        16 => "PTRACE_ATTACH",
        19 => "PTRACE_SETFPXREGS",
        0x4205 => "PTRACE_SETREGSET",
        0x4206 => "PTRACE_SEIZE",
        _ => "other",
    }
}

/// Text of a string argument (lossy), `None` when empty.
fn text(raw: &[u8]) -> Option<String> {
    (!raw.is_empty()).then(|| String::from_utf8_lossy(raw).into_owned())
}

impl Enricher {
    /// A privileged action's record: the event to report, or `None` for the records that only
    /// keep state (namespace changes, `fspick`).
    pub(super) fn privilege(&mut self, p: Privilege) -> Option<Event> {
        let pid = p.task.pid;
        let detail = match p.op {
            PrivOp::UnshareMounts => {
                self.table.get(pid).mount_ns = MountNs::Private;
                return None;
            }
            PrivOp::Setns => {
                self.table.get(pid).mount_ns = MountNs::Joined;
                return None;
            }
            PrivOp::Fspick => {
                // The descriptor a later reconfiguration names.
                if let (Some(path), Ok(fd)) = (self.at(pid, p.dirfd, &p.path), i32::try_from(p.ret))
                {
                    self.table.get(pid).opened(fd, &path);
                }
                return None;
            }
            PrivOp::InitModule => Privileged::Module {
                op: "init_module",
                file: None,
                fd: None,
                params: String::from_utf8_lossy(&p.text).into_owned(),
            },
            PrivOp::FinitModule => Privileged::Module {
                op: "finit_module",
                file: self.descriptor(pid, p.target),
                fd: Some(p.target),
                params: String::from_utf8_lossy(&p.text).into_owned(),
            },
            PrivOp::Ptrace | PrivOp::VmWrite => {
                let target_pid = u32::try_from(p.target).unwrap_or(0);
                let target_exe = read_proc_link(target_pid, "exe")
                    .or_else(|| self.table.get(target_pid).image.exe.clone());
                let ptrace = p.op == PrivOp::Ptrace;
                Privileged::Injection {
                    op: if ptrace {
                        "ptrace"
                    } else {
                        "process_vm_writev"
                    },
                    request: ptrace.then(|| ptrace_request(p.arg)),
                    target_pid,
                    target_exe,
                    bytes: (!ptrace).then_some(p.ret),
                }
            }
            PrivOp::Mount
            | PrivOp::Umount
            | PrivOp::MoveMount
            | PrivOp::MountSetattr
            | PrivOp::Reconfigure => Privileged::Mount(self.mount(&p)),
        };
        let process = Some(self.context(pid));
        Some(event(
            Category::Exec,
            Record {
                task: p.task,
                process,
                detail: Detail::Privilege(detail),
            },
        ))
    }

    fn mount(&mut self, p: &Privilege) -> Mount {
        let pid = p.task.pid;
        let (namespace, namespace_source) = self.mount_namespace(pid);
        let mut m = Mount {
            op: "mount",
            target: None,
            source: None,
            fstype: None,
            flags: Vec::new(),
            remount: false,
            bind: false,
            writable: None,
            namespace,
            namespace_source,
        };
        match p.op {
            PrivOp::Mount => {
                let mut flags = p.arg;
                if flags & MS_MGC_MSK == MS_MGC_VAL {
                    flags &= !MS_MGC_MSK;
                }
                m.target = self.at(pid, AT_FDCWD, &p.path);
                m.source = text(&p.path2);
                m.fstype = text(&p.text);
                m.flags = names(flags, &MS_FLAGS);
                m.remount = flags & MS_REMOUNT != 0;
                m.bind = flags & MS_BIND != 0;
                m.writable = m.remount.then_some(flags & MS_RDONLY == 0);
            }
            PrivOp::Umount => {
                m.op = "umount";
                m.target = self.at(pid, AT_FDCWD, &p.path);
                m.flags = names(u64::from(p.flags), &UMOUNT_FLAGS);
            }
            PrivOp::MoveMount => {
                m.op = "move_mount";
                m.target = if p.flags & MOVE_MOUNT_T_EMPTY_PATH != 0 && p.path.is_empty() {
                    self.descriptor(pid, p.dirfd)
                } else {
                    self.at(pid, p.dirfd, &p.path)
                };
                m.source = if p.flags & MOVE_MOUNT_F_EMPTY_PATH != 0 && p.path2.is_empty() {
                    // A new filesystem from `fsmount`, or a tree from `open_tree`.
                    Some(format!("fd {}", p.dirfd2))
                } else {
                    self.at(pid, p.dirfd2, &p.path2)
                        .map(|s| s.to_string_lossy().into_owned())
                };
            }
            PrivOp::MountSetattr => {
                m.op = "mount_setattr";
                m.target = if p.flags & AT_EMPTY_PATH != 0 && p.path.is_empty() {
                    self.descriptor(pid, p.dirfd)
                } else {
                    self.at(pid, p.dirfd, &p.path)
                };
                let mut flags: Vec<&str> = names(p.arg, &MOUNT_ATTRS);
                flags.extend(
                    names(p.arg2, &MOUNT_ATTRS)
                        .into_iter()
                        .map(cleared_attr_name),
                );
                m.flags = flags;
                m.remount = true;
                m.writable = if p.arg2 & MOUNT_ATTR_RDONLY != 0 {
                    Some(true)
                } else if p.arg & MOUNT_ATTR_RDONLY != 0 {
                    Some(false)
                } else {
                    None
                };
            }
            PrivOp::Reconfigure => {
                m.op = "reconfigure";
                m.target = self.table.get(pid).file(p.target).map(|p| p.to_path_buf());
                m.remount = true;
            }
            _ => {}
        }
        m
    }

    /// The path `raw` relative to `dirfd` of `pid`, absolute when that could be done.
    fn at(&mut self, pid: u32, dirfd: i32, raw: &[u8]) -> Option<PathBuf> {
        let (path, _) = self.resolve(pid, dirfd, raw);
        path
    }

    /// What descriptor `fd` of `pid` names: from `/proc` while the process lives, else as the
    /// process table knows it.
    fn descriptor(&mut self, pid: u32, fd: i32) -> Option<PathBuf> {
        read_proc_link(pid, &format!("fd/{fd}"))
            .or_else(|| self.table.get(pid).file(fd).map(|p| p.to_path_buf()))
    }

    /// The mount namespace of `pid` (`host` or `private`) and how that was known (see the
    /// module's documentation).
    fn mount_namespace(&mut self, pid: u32) -> (&'static str, &'static str) {
        // Init's; the agent's own when init's cannot be read (a container's first process).
        let host = self
            .host_mount_ns
            .get_or_init(|| {
                read_proc_link(1, "ns/mnt").or_else(|| std::fs::read_link("/proc/self/ns/mnt").ok())
            })
            .clone();
        let Some(host) = host else {
            // No namespace can be read: every mount counts.
            return ("host", "unknown");
        };
        let judge = |ns: &Path| if *ns == host { "host" } else { "private" };
        if let Some(ns) = read_proc_link(pid, "ns/mnt") {
            return (judge(&ns), "proc");
        }
        match self.table.get(pid).mount_ns {
            MountNs::Private => return ("private", "unshare"),
            MountNs::Joined => return ("host", "unknown"),
            MountNs::Inherited => {}
        }
        for a in self.table.ancestry(pid) {
            let ancestor = self.table.get(a.pid);
            if ancestor.exited {
                continue;
            }
            if let Some(ns) = read_proc_link(a.pid, "ns/mnt") {
                return (judge(&ns), "ancestor");
            }
        }
        ("host", "unknown")
    }
}

/// The name of a `mount_setattr` attribute cleared: `MOUNT_ATTR_RDONLY` becomes
/// `-MOUNT_ATTR_RDONLY`.
fn cleared_attr_name(name: &'static str) -> &'static str {
    match name {
        "MOUNT_ATTR_RDONLY" => "-MOUNT_ATTR_RDONLY",
        "MOUNT_ATTR_NOSUID" => "-MOUNT_ATTR_NOSUID",
        "MOUNT_ATTR_NODEV" => "-MOUNT_ATTR_NODEV",
        "MOUNT_ATTR_NOEXEC" => "-MOUNT_ATTR_NOEXEC",
        "MOUNT_ATTR_NOATIME" => "-MOUNT_ATTR_NOATIME",
        "MOUNT_ATTR_STRICTATIME" => "-MOUNT_ATTR_STRICTATIME",
        "MOUNT_ATTR_NODIRATIME" => "-MOUNT_ATTR_NODIRATIME",
        _ => "-MOUNT_ATTR_NOSYMFOLLOW",
    }
}

/// Capability names by number, as `capabilities(7)` spells them.
const CAPABILITIES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// The capabilities in the permitted set `mask` by name (`cap_N` for one this table does not
/// know).
pub fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| match CAPABILITIES.get(bit) {
            Some(name) => (*name).to_string(),
            None => format!("cap_{bit}"),
        })
        .collect()
}

/// Whether `magic_etc` of a `security.capability` value has the effective bit: the permitted
/// set is raised at exec.
pub fn capability_effective(magic_etc: u32) -> bool {
    magic_etc & 1 != 0
}

/// The revision of a `security.capability` value (1, 2 or 3; 0 when it could not be read).
pub fn capability_revision(magic_etc: u32) -> u32 {
    (magic_etc >> 24) & 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_flags_and_capabilities() {
        assert_eq!(
            names(MS_REMOUNT | MS_BIND | MS_RDONLY, &MS_FLAGS),
            vec!["MS_RDONLY", "MS_REMOUNT", "MS_BIND"]
        );
        assert_eq!(
            capability_names((1 << 13) | (1 << 40) | (1 << 50)),
            vec!["cap_net_raw", "cap_checkpoint_restore", "cap_50"]
        );
        // VFS_CAP_REVISION_2 with the effective bit.
        assert!(capability_effective(0x0200_0001));
        assert_eq!(capability_revision(0x0200_0001), 2);
        assert_eq!(ptrace_request(16), "PTRACE_ATTACH");
        assert_eq!(cleared_attr_name("MOUNT_ATTR_RDONLY"), "-MOUNT_ATTR_RDONLY");
    }
}
