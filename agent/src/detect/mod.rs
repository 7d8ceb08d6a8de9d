//! Detection: each enriched event compared with the verified baseline policy, giving the alerts
//! it deserves (most events deserve none).
//!
//! Lookups are built once per policy: executables and protected files in hash maps by path, so
//! the per-event cost does not grow with the size of the baseline; globs and network rules are
//! scanned (they are few).

pub mod canary;
pub mod integrity;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use picket_common::{FileOp, NetOp};
use picket_policy::{
    model::{Mode, Modes, Protocol},
    Policy,
};
use serde_json::{json, Value};

use crate::{
    alert::{Draft, Kind, Severity},
    enrich::{file_op_name, net_op_name, Detail, Event, Record},
};

/// Directories from which a legitimate device runs nothing: writable by ordinary users or
/// memory-backed.
const TEMPORARY: [&str; 6] = [
    "/tmp/",
    "/var/tmp/",
    "/dev/shm/",
    "/home/",
    "/root/",
    "/run/user/",
];

/// A policy made ready for per-event checks.
pub struct Detector {
    policy: Policy,
    /// The policy's modes with the local configuration's overrides.
    modes: Modes,
    executables: HashMap<String, [u8; 32]>,
    protected: HashSet<String>,
    attributes: HashSet<String>,
    /// The agent's own files, normalised: any change to them is tampering.
    own: Vec<PathBuf>,
}

impl Detector {
    /// Prepares `policy` under `modes`; `own` lists the agent's binary, configuration, trust
    /// and state paths.
    pub fn new(policy: Policy, modes: Modes, own: Vec<PathBuf>) -> Self {
        let executables = policy
            .executables
            .iter()
            .map(|e| (e.path.as_str().to_string(), e.sha256.0))
            .collect();
        let protected = policy
            .files
            .protected
            .iter()
            .map(|f| f.path.as_str().to_string())
            .collect();
        let attributes = policy
            .files
            .attributes
            .iter()
            .map(|f| f.path.as_str().to_string())
            .collect();
        let own = own.iter().map(|p| crate::paths::normalize(p)).collect();
        Self {
            policy,
            modes,
            executables,
            protected,
            attributes,
            own,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn modes(&self) -> Modes {
        self.modes
    }

    /// The alerts `event` raises. Checks work on the typed record; the event's JSON is built
    /// only when an alert needs its process context.
    pub fn check(&self, event: &Event) -> Vec<Draft> {
        let mut out = Vec::new();
        let Some(r) = event.record() else {
            return out;
        };
        match &r.detail {
            Detail::Exec {
                fileless, deleted, ..
            } => self.exec(event, r, *fileless, *deleted, &mut out),
            Detail::Net {
                op, local, remote, ..
            } => self.net(event, r, *op, local.1, *remote, &mut out),
            Detail::File {
                op, path, second, ..
            } => {
                // Every path the operation touches: a rename changes both names.
                let new_path = match second {
                    Some(("new_path", p)) => Some(p),
                    _ => None,
                };
                for p in path.iter().chain(new_path) {
                    self.file(event, *op, p, &mut out);
                }
            }
            Detail::Fork { .. } | Detail::Exit { .. } => {}
        }
        out
    }

    fn exec(&self, event: &Event, r: &Record, fileless: bool, deleted: bool, out: &mut Vec<Draft>) {
        let Some(ctx) = &r.process else {
            return;
        };
        let Some(exe) = ctx.exe_text() else {
            return;
        };
        if self.modes.executables == Mode::Off {
            return;
        }
        let exe = exe.as_ref();
        let reason = if fileless {
            Some("fileless")
        } else if deleted {
            Some("deleted file")
        } else if TEMPORARY.iter().any(|t| exe.starts_with(t)) {
            Some("temporary location")
        } else {
            None
        };
        if let Some(reason) = reason {
            out.push(draft(
                Kind::SuspiciousExec,
                Severity::High,
                "executables",
                exe,
                json!({ "reason": reason }),
                event,
            ));
        }
        let actual = ctx.image.sha256;
        let actual_hex = || actual.as_ref().map(|d| crate::paths::hex(d));
        // A name the baseline does not list may be a link to one it does (`/usr/bin/awk` to
        // `/usr/bin/mawk`, `/bin` to `/usr/bin`): the baseline records files where they live.
        // Only looked up on a miss; the hash still decides, whatever the link points to now.
        let resolved = (!self.executables.contains_key(exe)
            && !self
                .policy
                .executable_globs
                .iter()
                .any(|g| g.glob.matches(exe)))
        .then(|| std::fs::canonicalize(exe).ok())
        .flatten()
        .and_then(|p| p.to_str().map(str::to_string))
        .filter(|p| p != exe);
        let listed = self
            .executables
            .get(exe)
            .or_else(|| resolved.as_deref().and_then(|r| self.executables.get(r)));
        match listed {
            Some(expected) => {
                if actual.as_ref() != Some(expected) {
                    out.push(draft(
                        Kind::ModifiedExecutable,
                        Severity::Critical,
                        "executables",
                        exe,
                        json!({ "expected": crate::paths::hex(expected), "actual": actual_hex() }),
                        event,
                    ));
                }
            }
            None => {
                let glob = self.policy.executable_globs.iter().find(|g| {
                    g.glob.matches(exe) || resolved.as_deref().is_some_and(|r| g.glob.matches(r))
                });
                if glob.is_none() {
                    out.push(draft(
                        Kind::UnknownExecutable,
                        Severity::High,
                        "executables",
                        exe,
                        json!({ "sha256": actual_hex() }),
                        event,
                    ));
                }
            }
        }
    }

    fn net(
        &self,
        event: &Event,
        r: &Record,
        op: NetOp,
        local_port: u16,
        remote: (std::net::IpAddr, u16),
        out: &mut Vec<Draft>,
    ) {
        if self.modes.network == Mode::Off {
            return;
        }
        let exe = r.process.as_ref().and_then(|p| p.exe_text());
        let exe = exe.as_deref();
        let allowed_exe = |rule: &Option<picket_policy::model::AbsPath>| {
            rule.as_ref().is_none_or(|r| Some(r.as_str()) == exe)
        };
        let proto_ok = |rule: Protocol, proto: Protocol| rule == Protocol::Any || rule == proto;
        let name = net_op_name(op);
        match op {
            NetOp::TcpConnect | NetOp::UdpConnect | NetOp::UdpSend => {
                let proto = if op == NetOp::TcpConnect {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                let (addr, rport) = remote;
                let allowed = self.policy.network.outbound.iter().any(|r| {
                    r.cidr.contains(&addr)
                        && r.ports.contains(rport)
                        && proto_ok(r.protocol, proto)
                        && allowed_exe(&r.executable)
                });
                if !allowed {
                    out.push(draft(
                        Kind::UnexpectedConnection,
                        Severity::High,
                        "network.outbound",
                        exe.unwrap_or(""),
                        json!({
                            "op": name,
                            "remote_addr": addr.to_string(),
                            "remote_port": rport,
                            "protocol": protocol_name(proto),
                        }),
                        event,
                    ));
                }
            }
            NetOp::TcpListen | NetOp::UdpBind => {
                let proto = if op == NetOp::TcpListen {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                if local_port == 0 {
                    return;
                }
                let allowed = self.policy.network.listen.iter().any(|r| {
                    r.port.0 == local_port
                        && proto_ok(r.protocol, proto)
                        && allowed_exe(&r.executable)
                });
                if !allowed {
                    out.push(draft(
                        Kind::UnexpectedListener,
                        Severity::High,
                        "network.listen",
                        exe.unwrap_or(""),
                        json!({ "op": name, "port": local_port, "protocol": protocol_name(proto) }),
                        event,
                    ));
                }
            }
            NetOp::TcpAccept => {}
        }
    }

    fn file(&self, event: &Event, op: FileOp, path: &Path, out: &mut Vec<Draft>) {
        let op_name = file_op_name(op);
        if self.own.iter().any(|own| under(path, own)) {
            out.push(draft(
                Kind::AgentTamper,
                Severity::Critical,
                "agent",
                &path.to_string_lossy(),
                json!({ "op": op_name }),
                event,
            ));
            return;
        }
        if self.modes.files == Mode::Off {
            return;
        }
        // As printed: lossy text for a name that is not UTF-8.
        let text: Cow<'_, str> = path.to_string_lossy();
        let protected = self.protected.contains(text.as_ref())
            || self
                .policy
                .files
                .protected_glob
                .iter()
                .any(|g| g.glob.matches(&text));
        let attributes_changed =
            matches!(op, FileOp::Chmod | FileOp::Chown) && self.attributes.contains(text.as_ref());
        if protected || attributes_changed {
            out.push(draft(
                Kind::ProtectedFileChanged,
                Severity::High,
                if protected {
                    "files.protected"
                } else {
                    "files.attributes"
                },
                &text,
                json!({ "op": op_name }),
                event,
            ));
        }
    }
}

/// Whether `path` is `dir` or inside it, component-wise like [`Path::starts_with`], for a
/// normalised `dir`: compared as bytes (no component iteration on every event).
fn under(path: &Path, dir: &Path) -> bool {
    let (p, d) = (path.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
    if d.is_empty() {
        return path.is_relative();
    }
    match p.strip_prefix(d) {
        Some(rest) => rest.is_empty() || rest[0] == b'/' || d.ends_with(b"/"),
        None => false,
    }
}

fn draft(
    kind: Kind,
    severity: Severity,
    rule: &str,
    path: &str,
    details: Value,
    event: &Event,
) -> Draft {
    Draft {
        kind,
        severity,
        rule: rule.to_string(),
        path: Some(path.to_string()),
        details,
        process: event
            .record()
            .map(|r| r.process_context(MAX_ALERT_ARGS)),
    }
}

/// Arguments kept in an alert; the rest are counted.
const MAX_ALERT_ARGS: usize = 16;

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Any => "any",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Category;

    fn detector() -> Detector {
        let policy = picket_policy::load_toml(
            r#"
[metadata]
name = "t"
device_class = "c"
serial = 1
created = "2026-11-22T10:00:00Z"

[[executable]]
path = "/usr/bin/app"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

[[executable_glob]]
glob = "/opt/scripts/*.sh"
weak = true

[[network.outbound]]
cidr = "10.0.0.0/8"
ports = 443
executable = "/usr/bin/app"

[[network.listen]]
port = 22

[[files.protected]]
path = "/etc/app.conf"
sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

[[files.protected_glob]]
glob = "/etc/init.d/*"
"#,
            "t.toml",
        )
        .unwrap();
        let modes = policy.modes;
        Detector::new(policy, modes, vec![PathBuf::from("/etc/picket")])
    }

    /// A typed event with what `fields` gives (the keys a test uses), the rest empty.
    fn event(fields: Value) -> Event {
        use crate::{
            enrich::{process::Image, Context, Fields, Record},
            sensors::decode::{Comm, Task},
        };
        use std::{net::IpAddr, sync::Arc};
        let text = |k: &str| fields.get(k).and_then(Value::as_str);
        let flag = |k: &str| fields.get(k).and_then(Value::as_bool) == Some(true);
        let port = |k: &str| {
            fields
                .get(k)
                .and_then(Value::as_u64)
                .map_or(0, |p| p as u16)
        };
        let mut sha256 = None;
        if let Some(hex) = text("sha256") {
            let mut d = [0u8; 32];
            for (i, b) in d.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
            }
            sha256 = Some(d);
        }
        let image = Image {
            exe: text("exe").map(PathBuf::from),
            sha256,
            argv: fields
                .get("argv")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().unwrap().as_bytes().to_vec())
                        .collect()
                })
                .unwrap_or_default(),
        };
        let process = Some(Context {
            ppid: None,
            image: Arc::new(image),
            ancestry: vec![],
        });
        let file_op = |op: &str| match op {
            "open" => FileOp::Open,
            "rename" => FileOp::Rename,
            "unlink" => FileOp::Unlink,
            "chmod" => FileOp::Chmod,
            other => panic!("no file op {other} in these tests"),
        };
        let net_op = |op: &str| match op {
            "tcp_connect" => NetOp::TcpConnect,
            "tcp_listen" => NetOp::TcpListen,
            "udp_send" => NetOp::UdpSend,
            other => panic!("no net op {other} in these tests"),
        };
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let (category, detail) = match text("event").unwrap() {
            "exec" => (
                Category::Exec,
                Detail::Exec {
                    filename: PathBuf::new(),
                    argv_truncated: false,
                    argv_missing: false,
                    interpreter: None,
                    fileless: flag("fileless"),
                    deleted: flag("deleted"),
                    execveat: false,
                },
            ),
            "net" => (
                Category::Net,
                Detail::Net {
                    op: net_op(text("op").unwrap()),
                    pid_source: "task",
                    local: (any, port("local_port")),
                    remote: (
                        text("remote_addr").map_or(any, |a| a.parse().unwrap()),
                        port("remote_port"),
                    ),
                    socket_type: None,
                },
            ),
            "file" => (
                Category::File,
                Detail::File {
                    op: file_op(text("op").unwrap()),
                    path: text("path").map(PathBuf::from),
                    resolved: true,
                    second: text("new_path").map(|p| ("new_path", PathBuf::from(p))),
                    symlink_target: None,
                    flags: 0,
                    mode: 0,
                    owner: 0,
                    group: 0,
                    length: 0,
                },
            ),
            other => panic!("no event {other} in these tests"),
        };
        let task = Task {
            pid: 7,
            tid: 7,
            uid: 0,
            gid: 0,
            boot_ns: 0,
            cgroup_id: 0,
            comm: Comm::new(&[0; 16]),
            known: true,
        };
        Event {
            category,
            fields: Fields::new_for_test(Record {
                task,
                process,
                detail,
            }),
        }
    }

    #[test]
    fn alerts_carry_the_process_context_as_printed() {
        let d = detector();
        let e = event(json!({"event":"exec","exe":"/tmp/sh"}));
        let drafts = d.check(&e);
        let p = drafts[0].process.as_ref().unwrap();
        assert_eq!(p.exe.as_deref(), Some("/tmp/sh"));
        assert_eq!(p.pid, Some(7));
        assert_eq!(p.sha256, None);
        assert!(p.argv.is_empty());
        // As printed: the same values as the event's own fields.
        for (key, value) in [
            ("exe", json!(p.exe)),
            ("pid", json!(p.pid)),
            ("uid", json!(p.uid)),
            ("ppid", json!(p.ppid)),
            ("sha256", json!(p.sha256)),
            ("argv", json!(p.argv)),
            ("ancestry", json!(p.ancestry)),
            ("cgroup_id", json!(p.cgroup_id)),
        ] {
            assert_eq!(e.fields[key], value, "{key}");
        }
        assert_eq!(drafts[1].details, json!({ "sha256": null }));
    }

    #[test]
    fn alerts_keep_the_first_arguments_and_count_the_rest() {
        let d = detector();
        let argv: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
        let e = event(json!({"event":"exec","exe":"/tmp/sh","argv":argv}));
        let p = d.check(&e)[0].process.clone().unwrap();
        assert_eq!(p.argv, argv[..MAX_ALERT_ARGS]);
        assert_eq!(p.argv_dropped, 4);
        let e = event(json!({"event":"exec","exe":"/tmp/sh","argv":["x"]}));
        let p = d.check(&e)[0].process.clone().unwrap();
        assert_eq!((p.argv, p.argv_dropped), (vec!["x".to_string()], 0));
    }

    #[test]
    fn own_paths_match_whole_components() {
        assert!(under(Path::new("/etc/picket"), Path::new("/etc/picket")));
        assert!(under(
            Path::new("/etc/picket/k.pub"),
            Path::new("/etc/picket")
        ));
        assert!(!under(Path::new("/etc/picketx"), Path::new("/etc/picket")));
        assert!(under(Path::new("/x"), Path::new("/")));
        assert!(!under(Path::new("etc/picket"), Path::new("/etc/picket")));
    }

    fn kinds(d: &Detector, fields: Value) -> Vec<Kind> {
        d.check(&event(fields))
            .into_iter()
            .map(|a| a.kind)
            .collect()
    }

    #[test]
    fn executables() {
        let d = detector();
        let a = "a".repeat(64);
        assert!(kinds(&d, json!({"event":"exec","exe":"/usr/bin/app","sha256":a})).is_empty());
        assert_eq!(
            kinds(
                &d,
                json!({"event":"exec","exe":"/usr/bin/app","sha256":"b".repeat(64)})
            ),
            vec![Kind::ModifiedExecutable]
        );
        assert!(kinds(&d, json!({"event":"exec","exe":"/opt/scripts/x.sh"})).is_empty());
        assert_eq!(
            kinds(&d, json!({"event":"exec","exe":"/tmp/sh"})),
            vec![Kind::SuspiciousExec, Kind::UnknownExecutable]
        );
        assert_eq!(
            kinds(
                &d,
                json!({"event":"exec","exe":"/memfd:x (deleted)","fileless":true})
            ),
            vec![Kind::SuspiciousExec, Kind::UnknownExecutable]
        );
    }

    #[test]
    fn a_link_to_a_listed_executable_is_that_executable() {
        // Not under /tmp (or wherever running is suspicious in itself): in the build tree,
        // unless that is itself under such a directory.
        let target = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .canonicalize()
            .unwrap();
        let base = if TEMPORARY.iter().any(|t| target.starts_with(t)) {
            Path::new("/var/lib").to_path_buf()
        } else {
            target
        };
        let dir = base.join(format!("picket-detect-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/tool"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(dir.join("real/tool"), dir.join("tool")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("bin")).unwrap();
        let real = dir.join("real/tool").canonicalize().unwrap();
        let policy = picket_policy::load_toml(
            &format!(
                "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
             created = \"2026-11-22T10:00:00Z\"\n\n[[executable]]\npath = \"{}\"\n\
             sha256 = \"{}\"\n",
                real.display(),
                "a".repeat(64)
            ),
            "t.toml",
        )
        .unwrap();
        let d = Detector::new(policy, Modes::default(), vec![]);
        let exec = |path: &Path, sha: &str| {
            kinds(
                &d,
                json!({"event":"exec","exe":path.to_str().unwrap(),"sha256":sha}),
            )
        };
        let a = "a".repeat(64);
        assert!(exec(&dir.join("tool"), &a).is_empty(), "a file link");
        assert!(
            exec(&dir.join("bin/tool"), &a).is_empty(),
            "a directory link"
        );
        // The hash still decides.
        assert_eq!(
            exec(&dir.join("tool"), &"b".repeat(64)),
            vec![Kind::ModifiedExecutable]
        );
        assert_eq!(
            exec(&dir.join("missing"), &a),
            vec![Kind::UnknownExecutable]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn network() {
        let d = detector();
        let ok = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/app","remote_addr":"10.1.2.3","remote_port":443});
        assert!(kinds(&d, ok).is_empty());
        let other_exe = json!({"event":"net","op":"tcp_connect","exe":"/usr/bin/x","remote_addr":"10.1.2.3","remote_port":443});
        assert_eq!(kinds(&d, other_exe), vec![Kind::UnexpectedConnection]);
        let udp = json!({"event":"net","op":"udp_send","exe":"/usr/bin/app","remote_addr":"10.1.2.3","remote_port":443});
        assert_eq!(kinds(&d, udp), vec![Kind::UnexpectedConnection]);
        assert!(kinds(&d, json!({"event":"net","op":"tcp_listen","local_port":22})).is_empty());
        assert_eq!(
            kinds(&d, json!({"event":"net","op":"tcp_listen","local_port":23})),
            vec![Kind::UnexpectedListener]
        );
    }

    #[test]
    fn a_category_switched_off_raises_nothing() {
        let d = detector();
        let off = Modes {
            executables: Mode::Off,
            ..d.modes()
        };
        let d = Detector::new(d.policy().clone(), off, vec![]);
        assert!(kinds(&d, json!({"event":"exec","exe":"/tmp/sh"})).is_empty());
        assert_eq!(
            kinds(&d, json!({"event":"net","op":"tcp_listen","local_port":23})),
            vec![Kind::UnexpectedListener]
        );
    }

    #[test]
    fn files() {
        let d = detector();
        let k = |op: &str, path: &str| kinds(&d, json!({"event":"file","op":op,"path":path}));
        assert_eq!(k("open", "/etc/app.conf"), vec![Kind::ProtectedFileChanged]);
        assert_eq!(
            k("unlink", "/etc/init.d/rcS"),
            vec![Kind::ProtectedFileChanged]
        );
        assert!(k("open", "/etc/other").is_empty());
        assert_eq!(
            k("open", "/etc/picket/picket.toml"),
            vec![Kind::AgentTamper]
        );
        // A rename over a protected file names it as the new path.
        let over = json!({"event":"file","op":"rename","path":"/tmp/x","new_path":"/etc/app.conf"});
        assert_eq!(kinds(&d, over), vec![Kind::ProtectedFileChanged]);
    }
}
