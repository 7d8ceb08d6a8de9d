//! Privileged actions: every occurrence is a signal (a setuid or setgid bit set, file
//! capabilities set, a kernel module loaded, another process attached to or written into, a
//! change to the device's mounts) unless the policy's `behaviour.privileged` allows that action
//! to the acting executable, or `modes.behaviour` is off.
//!
//! These events are rare, so the allowlist is scanned (it is short) and a chmod's target is
//! looked at only when the new mode has a setuid or setgid bit.

use std::path::{Path, PathBuf};

use picket_common::FileOp;
use picket_policy::model::Action;
use serde_json::{json, Value};

use super::{key, Detector};
use crate::{
    alert::{Draft, Kind, Severity},
    enrich::{
        file_op_name,
        privilege::{capability_effective, capability_names, capability_revision, Privileged},
        Detail, Event, Record,
    },
};

/// The setuid and setgid bits.
const SET_ID_BITS: u32 = 0o6000;

/// What a record shows of a privileged action: the action, the file or object acted on, how
/// serious it is and what to say of it. `None` for everything else (most records).
struct Signal {
    action: Action,
    kind: Kind,
    severity: Severity,
    path: Option<String>,
    details: Value,
}

/// The privileged action `record` is, if any, and the acting process's executable in canonical
/// form (as the policy's `behaviour.privileged` lists it): what `picket baseline learn`
/// records. A mount in a private mount namespace (a sandboxed service's) is none.
pub fn action_of(record: &Record) -> Option<(Action, PathBuf)> {
    let signal = signal(record)?;
    let exe = record.process.as_ref()?.exe_text()?;
    Some((signal.action, PathBuf::from(key(&exe))))
}

impl Detector {
    /// The alert a privileged action deserves, into `out`.
    pub(super) fn privilege(&self, event: &Event, r: &Record, out: &mut Vec<Draft>) {
        if !self.behaviour_checked() {
            return;
        }
        let Some(signal) = signal(r) else {
            return;
        };
        let exe = r.process.as_ref().and_then(|p| p.exe_text());
        if let Some(exe) = exe.as_deref() {
            if self.privilege_allowed(signal.action, exe) {
                return;
            }
        }
        out.push(Draft {
            kind: signal.kind,
            severity: signal.severity,
            rule: "behaviour.privileged".to_string(),
            path: signal.path,
            details: signal.details,
            process: event
                .record()
                .map(|r| r.process_context(super::MAX_ALERT_ARGS)),
        });
    }

    /// Whether the policy allows `action` to the executable `exe` (compared in canonical form).
    fn privilege_allowed(&self, action: Action, exe: &str) -> bool {
        let Some(section) = &self.policy.behaviour else {
            return false;
        };
        let allowed = &section.privileged;
        if !allowed.iter().any(|p| p.action == action) {
            return false;
        }
        let exe = key(exe);
        allowed
            .iter()
            .any(|p| p.action == action && key(p.executable.as_str()) == exe)
    }
}

/// What `r` shows of a privileged action.
fn signal(r: &Record) -> Option<Signal> {
    match &r.detail {
        Detail::File {
            op,
            path,
            resolved,
            mode,
            flags,
            length,
            ..
        } => {
            let path = path.as_deref();
            // A file the agent cannot name (a descriptor of a process gone, opened read-only).
            let known = path.filter(|_| *resolved);
            file_signal(*op, path, known, *mode, *flags, *length)
        }
        Detail::Privilege(p) => privileged_signal(r, p),
        _ => None,
    }
}

fn file_signal(
    op: FileOp,
    path: Option<&Path>,
    known: Option<&Path>,
    mode: u32,
    flags: u32,
    length: i64,
) -> Option<Signal> {
    let text = path.map(|p| p.to_string_lossy().into_owned());
    match op {
        FileOp::SetCapability => Some(Signal {
            action: Action::Capability,
            kind: Kind::FileCapabilitySet,
            severity: Severity::High,
            path: text,
            details: json!({
                "capabilities": capability_names(length as u64),
                "effective": capability_effective(mode),
                "revision": capability_revision(mode),
            }),
        }),
        FileOp::Chmod | FileOp::Open if mode & SET_ID_BITS != 0 => {
            if op == FileOp::Open && flags & (libc::O_CREAT as u32) == 0 {
                return None;
            }
            // On a directory the setgid bit only makes new files take its group (common,
            // harmless: /var/log/journal); the setuid bit means nothing there. A descriptor
            // the agent cannot name was not opened for writing (those it remembers): with the
            // setgid bit alone it is taken for a directory, which `mkdir -m 2775` and
            // `install -d` open read-only to fchmod.
            if op == FileOp::Chmod {
                let directory = match known {
                    Some(p) => p.is_dir(),
                    None => mode & 0o4000 == 0,
                };
                if directory {
                    return None;
                }
            }
            let mut bits = Vec::new();
            if mode & 0o4000 != 0 {
                bits.push("setuid");
            }
            if mode & 0o2000 != 0 {
                bits.push("setgid");
            }
            Some(Signal {
                action: Action::Setuid,
                kind: Kind::SetuidBitSet,
                severity: Severity::High,
                path: text,
                details: json!({
                    "op": file_op_name(op),
                    "mode": format!("{:04o}", mode & 0o7777),
                    "bits": bits,
                }),
            })
        }
        _ => None,
    }
}

fn privileged_signal(r: &Record, p: &Privileged) -> Option<Signal> {
    let lossy = |p: &Option<PathBuf>| p.as_deref().map(|p| p.to_string_lossy().into_owned());
    match p {
        // Critical: a module runs in the kernel with every privilege, hides what it likes
        // from the agent itself (a rootkit), and a device loads its modules at boot.
        Privileged::Module {
            op,
            file,
            fd,
            params,
        } => Some(Signal {
            action: Action::Module,
            kind: Kind::KernelModuleLoaded,
            severity: Severity::Critical,
            path: lossy(file),
            details: json!({
                "op": op,
                "file": lossy(file),
                "fd": fd,
                "from_memory": fd.is_none(),
                "params": params,
            }),
        }),
        Privileged::Injection {
            op,
            request,
            target_pid,
            target_exe,
            bytes,
        } => {
            // Writing into its own memory is not another process's.
            if *target_pid == r.task.pid {
                return None;
            }
            let mut details = json!({
                "op": op,
                "target_pid": target_pid,
                "target_exe": lossy(target_exe),
            });
            if let Some(request) = request {
                details["request"] = json!(request);
            }
            if let Some(bytes) = bytes {
                details["bytes"] = json!(bytes);
            }
            Some(Signal {
                action: Action::Ptrace,
                kind: Kind::ProcessInjection,
                severity: Severity::High,
                path: lossy(target_exe),
                details,
            })
        }
        Privileged::Mount(m) if m.on_host() => Some(Signal {
            action: Action::Mount,
            kind: Kind::MountChanged,
            severity: Severity::High,
            path: lossy(&m.target),
            details: json!({
                "op": m.op,
                "target": lossy(&m.target),
                "source": m.source,
                "fstype": m.fstype,
                "flags": m.flags,
                "remount": m.remount,
                "bind": m.bind,
                "writable": m.writable,
            }),
        }),
        Privileged::Mount(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::enrich::{privilege::Mount, process::Image, Category, Context, Fields};
    use crate::sensors::decode::{Comm, Task};

    const PID: u32 = 4_100_000_001;

    /// A policy with a `[behaviour]` section holding `behaviour`, and `modes`.
    fn detector(behaviour: &str, modes: &str) -> Detector {
        without_section(&format!("{modes}\n[behaviour]\n{behaviour}"))
    }

    /// A policy of `rest` after its metadata.
    fn without_section(rest: &str) -> Detector {
        let policy = picket_policy::load_toml(
            &format!(
                "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
                 created = \"2026-11-22T10:00:00Z\"\n{rest}\n"
            ),
            "t.toml",
        )
        .unwrap();
        let modes = policy.modes;
        Detector::new(policy, modes, vec![PathBuf::from("/etc/picket")])
    }

    fn event(exe: &str, detail: Detail) -> Event {
        Event {
            category: Category::Exec,
            fields: Fields::new_for_test(Record {
                task: Task {
                    pid: PID,
                    tid: PID,
                    uid: 0,
                    gid: 0,
                    boot_ns: 1,
                    cgroup_id: 1,
                    comm: Comm::new(&[0; 16]),
                    known: true,
                },
                process: Some(Context {
                    ppid: Some(1),
                    image: Arc::new(Image {
                        exe: Some(PathBuf::from(exe)),
                        ..Image::default()
                    }),
                    ancestry: Vec::new(),
                }),
                detail,
            }),
        }
    }

    fn file(op: FileOp, path: &Path, mode: u32, flags: u32, length: i64) -> Detail {
        Detail::File {
            op,
            path: Some(path.to_path_buf()),
            resolved: true,
            second: None,
            symlink_target: None,
            flags,
            mode,
            owner: u32::MAX,
            group: u32::MAX,
            length,
        }
    }

    fn mount(namespace: &'static str) -> Detail {
        Detail::Privilege(Privileged::Mount(Mount {
            op: "mount",
            target: Some(PathBuf::from("/mnt/x")),
            source: Some("none".into()),
            fstype: Some("tmpfs".into()),
            flags: vec!["MS_REMOUNT"],
            remount: true,
            bind: false,
            writable: Some(true),
            namespace,
            namespace_source: "proc",
        }))
    }

    /// The kinds of the alerts `detail` by `exe` raises under `d`.
    fn alerts(d: &Detector, exe: &str, detail: Detail) -> Vec<Draft> {
        d.check(&event(exe, detail))
    }

    fn kinds(drafts: &[Draft]) -> Vec<&'static str> {
        drafts.iter().map(|a| a.kind.name()).collect()
    }

    #[test]
    fn a_policy_without_a_behaviour_section_checks_no_privileged_action() {
        let dir = std::env::temp_dir().join(format!("picket-nosection-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tool");
        std::fs::write(&f, "x").unwrap();
        let chmod = || file(FileOp::Chmod, &f, 0o4755, 0, 0);
        assert!(alerts(&without_section(""), "/usr/bin/chmod", chmod()).is_empty());
        let on = alerts(&detector("", ""), "/usr/bin/chmod", chmod());
        assert_eq!(kinds(&on), ["setuid_bit_set"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn setuid_and_setgid_bits_on_files_only() {
        let d = detector("", "");
        let dir = std::env::temp_dir().join(format!("picket-setuid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tool");
        std::fs::write(&f, "x").unwrap();
        let a = alerts(&d, "/usr/bin/chmod", file(FileOp::Chmod, &f, 0o4755, 0, 0));
        assert_eq!(kinds(&a), ["setuid_bit_set"]);
        assert_eq!(a[0].severity, Severity::High);
        assert_eq!(a[0].path.as_deref(), f.to_str());
        assert_eq!(a[0].rule, "behaviour.privileged");
        assert_eq!(
            a[0].details,
            json!({ "op": "chmod", "mode": "4755", "bits": ["setuid"] })
        );
        assert_eq!(a[0].process.as_ref().unwrap().pid, Some(PID));
        let a = alerts(&d, "/usr/bin/chmod", file(FileOp::Chmod, &f, 0o6711, 0, 0));
        assert_eq!(a[0].details["bits"], json!(["setuid", "setgid"]));
        // No bit, or a directory's setgid bit: nothing.
        assert!(alerts(&d, "/usr/bin/chmod", file(FileOp::Chmod, &f, 0o755, 0, 0)).is_empty());
        let dir_path = dir.clone();
        assert!(alerts(
            &d,
            "/usr/bin/chmod",
            file(FileOp::Chmod, &dir_path, 0o2775, 0, 0)
        )
        .is_empty());
        // A descriptor the agent could not name: setgid alone is a directory's (mkdir -m
        // 2775), setuid is not.
        let unnamed = |mode| Detail::File {
            op: FileOp::Chmod,
            path: None,
            resolved: false,
            second: None,
            symlink_target: None,
            flags: 0,
            mode,
            owner: u32::MAX,
            group: u32::MAX,
            length: 0,
        };
        assert!(alerts(&d, "/usr/bin/mkdir", unnamed(0o2775)).is_empty());
        let a = alerts(&d, "/usr/bin/x", unnamed(0o4755));
        assert_eq!(kinds(&a), ["setuid_bit_set"]);
        assert_eq!(a[0].path, None);
        // A file created with the bit is the same signal; an open without O_CREAT sets none.
        let creat = libc::O_CREAT as u32 | libc::O_WRONLY as u32;
        let a = alerts(&d, "/usr/bin/cp", file(FileOp::Open, &f, 0o4755, creat, 0));
        assert_eq!(kinds(&a), ["setuid_bit_set"]);
        assert_eq!(a[0].details["op"], "open");
        let write = libc::O_WRONLY as u32;
        assert!(alerts(&d, "/usr/bin/cp", file(FileOp::Open, &f, 0o4755, write, 0)).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_capabilities_are_named() {
        let d = detector("", "");
        let f = Path::new("/opt/app/ping");
        let a = alerts(
            &d,
            "/usr/sbin/setcap",
            file(FileOp::SetCapability, f, 0x0200_0001, 0, 1 << 13),
        );
        assert_eq!(kinds(&a), ["file_capability_set"]);
        assert_eq!(
            a[0].details,
            json!({ "capabilities": ["cap_net_raw"], "effective": true, "revision": 2 })
        );
    }

    #[test]
    fn modules_injection_and_host_mounts() {
        let d = detector("", "");
        let module = Detail::Privilege(Privileged::Module {
            op: "finit_module",
            file: Some(PathBuf::from("/lib/modules/evil.ko")),
            fd: Some(3),
            params: "hide=1".into(),
        });
        let a = alerts(&d, "/usr/sbin/insmod", module);
        assert_eq!(kinds(&a), ["kernel_module_loaded"]);
        assert_eq!(a[0].severity, Severity::Critical);
        assert_eq!(a[0].path.as_deref(), Some("/lib/modules/evil.ko"));
        assert_eq!(a[0].details["from_memory"], false);
        assert_eq!(a[0].details["params"], "hide=1");

        let attach = |target_pid| {
            Detail::Privilege(Privileged::Injection {
                op: "ptrace",
                request: Some("PTRACE_ATTACH"),
                target_pid,
                target_exe: Some(PathBuf::from("/usr/sbin/sshd")),
                bytes: None,
            })
        };
        let a = alerts(&d, "/usr/bin/gdb", attach(77));
        assert_eq!(kinds(&a), ["process_injection"]);
        assert_eq!(
            a[0].details,
            json!({ "op": "ptrace", "request": "PTRACE_ATTACH", "target_pid": 77,
                    "target_exe": "/usr/sbin/sshd" })
        );
        // Its own memory is not another process's.
        assert!(alerts(&d, "/usr/bin/gdb", attach(PID)).is_empty());

        let a = alerts(&d, "/usr/bin/mount", mount("host"));
        assert_eq!(kinds(&a), ["mount_changed"]);
        assert_eq!(a[0].path.as_deref(), Some("/mnt/x"));
        assert_eq!(a[0].details["writable"], true);
        assert_eq!(a[0].details["remount"], true);
        // A sandbox's own mounts are not the device's.
        assert!(alerts(&d, "/usr/lib/systemd/systemd", mount("private")).is_empty());
    }

    #[test]
    fn allowed_actors_and_mode_off_raise_nothing() {
        let d = detector(
            "[[behaviour.privileged]]\naction = \"mount\"\nexecutable = \"/usr/bin/mount\"\n",
            "",
        );
        assert!(alerts(&d, "/usr/bin/mount", mount("host")).is_empty());
        // Another executable, or another action of the allowed one, still alerts.
        assert_eq!(
            kinds(&alerts(&d, "/usr/bin/python3", mount("host"))),
            ["mount_changed"]
        );
        let f = Path::new("/opt/x");
        assert_eq!(
            kinds(&alerts(
                &d,
                "/usr/bin/mount",
                file(FileOp::SetCapability, f, 0x0200_0000, 0, 1)
            )),
            ["file_capability_set"]
        );
        let off = detector("", "[modes]\nbehaviour = \"off\"\n");
        assert!(alerts(&off, "/usr/bin/python3", mount("host")).is_empty());
    }

    #[test]
    fn action_of_names_the_action_and_the_actor() {
        let e = event("/usr/bin/mount", mount("host"));
        assert_eq!(
            action_of(e.record().unwrap()),
            Some((Action::Mount, PathBuf::from("/usr/bin/mount")))
        );
        let e = event("/usr/bin/mount", mount("private"));
        assert_eq!(action_of(e.record().unwrap()), None);
        let e = event(
            "/usr/bin/true",
            file(FileOp::Chmod, Path::new("/nonexistent/x"), 0o644, 0, 0),
        );
        assert_eq!(action_of(e.record().unwrap()), None);
    }
}
