//! Detection: each enriched event compared with the verified baseline policy, giving the alerts
//! it deserves (most events deserve none).
//!
//! Lookups are built once per policy: executables and protected files in hash maps by path, so
//! the per-event cost does not grow with the size of the baseline; globs and network rules are
//! scanned (they are few).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
};

use picket_policy::{
    model::{Mode, Modes, Protocol},
    Policy,
};
use serde_json::{json, Map, Value};

use crate::{
    alert::{Draft, Kind, Severity},
    enrich::Event,
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
    /// The agent's own files: any change to them is tampering.
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

    /// The alerts `event` raises.
    pub fn check(&self, event: &Event) -> Vec<Draft> {
        let f = &event.fields;
        let mut out = Vec::new();
        match str_field(f, "event") {
            Some("exec") => self.exec(f, &mut out),
            Some("net") => self.net(f, &mut out),
            Some("file") => self.file(f, &mut out),
            _ => {}
        }
        out
    }

    fn exec(&self, f: &Map<String, Value>, out: &mut Vec<Draft>) {
        let Some(exe) = str_field(f, "exe") else {
            return;
        };
        if self.modes.executables == Mode::Off {
            return;
        }
        let fileless = f.get("fileless").and_then(Value::as_bool) == Some(true);
        let deleted = f.get("deleted").and_then(Value::as_bool) == Some(true);
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
                f,
            ));
        }
        let actual = str_field(f, "sha256");
        match self.executables.get(exe) {
            Some(expected) => {
                let expected = crate::paths::hex(expected);
                if actual != Some(expected.as_str()) {
                    out.push(draft(
                        Kind::ModifiedExecutable,
                        Severity::Critical,
                        "executables",
                        exe,
                        json!({ "expected": expected, "actual": actual }),
                        f,
                    ));
                }
            }
            None => {
                let glob = self
                    .policy
                    .executable_globs
                    .iter()
                    .find(|g| g.glob.matches(exe));
                if glob.is_none() {
                    out.push(draft(
                        Kind::UnknownExecutable,
                        Severity::High,
                        "executables",
                        exe,
                        json!({ "sha256": actual }),
                        f,
                    ));
                }
            }
        }
    }

    fn net(&self, f: &Map<String, Value>, out: &mut Vec<Draft>) {
        if self.modes.network == Mode::Off {
            return;
        }
        let exe = str_field(f, "exe");
        let allowed_exe = |rule: &Option<picket_policy::model::AbsPath>| {
            rule.as_ref().is_none_or(|r| Some(r.as_str()) == exe)
        };
        let proto_ok = |rule: Protocol, proto: Protocol| rule == Protocol::Any || rule == proto;
        let port = |key: &str| {
            f.get(key)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
        };
        match str_field(f, "op") {
            Some(op @ ("tcp_connect" | "udp_connect" | "udp_send")) => {
                let proto = if op == "tcp_connect" {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                let (Some(addr), Some(rport)) = (
                    str_field(f, "remote_addr").and_then(|a| a.parse::<IpAddr>().ok()),
                    port("remote_port"),
                ) else {
                    return;
                };
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
                            "op": op,
                            "remote_addr": addr.to_string(),
                            "remote_port": rport,
                            "protocol": protocol_name(proto),
                        }),
                        f,
                    ));
                }
            }
            Some(op @ ("tcp_listen" | "udp_bind")) => {
                let proto = if op == "tcp_listen" {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                let Some(lport) = port("local_port").filter(|p| *p != 0) else {
                    return;
                };
                let allowed = self.policy.network.listen.iter().any(|r| {
                    r.port.0 == lport && proto_ok(r.protocol, proto) && allowed_exe(&r.executable)
                });
                if !allowed {
                    out.push(draft(
                        Kind::UnexpectedListener,
                        Severity::High,
                        "network.listen",
                        exe.unwrap_or(""),
                        json!({ "op": op, "port": lport, "protocol": protocol_name(proto) }),
                        f,
                    ));
                }
            }
            _ => {}
        }
    }

    fn file(&self, f: &Map<String, Value>, out: &mut Vec<Draft>) {
        let Some(op) = str_field(f, "op") else {
            return;
        };
        // Every path the operation touches: a rename changes both names.
        let paths: Vec<&str> = ["path", "new_path"]
            .iter()
            .filter_map(|k| str_field(f, k))
            .collect();
        for path in paths {
            if self
                .own
                .iter()
                .any(|own| std::path::Path::new(path).starts_with(own))
            {
                out.push(draft(
                    Kind::AgentTamper,
                    Severity::Critical,
                    "agent",
                    path,
                    json!({ "op": op }),
                    f,
                ));
                continue;
            }
            if self.modes.files == Mode::Off {
                continue;
            }
            let protected = self.protected.contains(path)
                || self
                    .policy
                    .files
                    .protected_glob
                    .iter()
                    .any(|g| g.glob.matches(path));
            let attributes_changed =
                matches!(op, "chmod" | "chown") && self.attributes.contains(path);
            if protected || attributes_changed {
                out.push(draft(
                    Kind::ProtectedFileChanged,
                    Severity::High,
                    if protected {
                        "files.protected"
                    } else {
                        "files.attributes"
                    },
                    path,
                    json!({ "op": op }),
                    f,
                ));
            }
        }
    }
}

fn draft(
    kind: Kind,
    severity: Severity,
    rule: &str,
    path: &str,
    details: Value,
    f: &Map<String, Value>,
) -> Draft {
    Draft {
        kind,
        severity,
        rule: rule.to_string(),
        path: Some(path.to_string()),
        details,
        process: Some(process_context(f)),
    }
}

/// Arguments kept in an alert; the rest are counted.
const MAX_ALERT_ARGS: usize = 16;

/// The process fields of an event, as an alert carries them.
fn process_context(f: &Map<String, Value>) -> Map<String, Value> {
    let mut p = Map::new();
    for key in [
        "pid",
        "ppid",
        "uid",
        "exe",
        "sha256",
        "ancestry",
        "cgroup_id",
    ] {
        p.insert(key.into(), f.get(key).cloned().unwrap_or(Value::Null));
    }
    let argv = f
        .get("argv")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if argv.len() > MAX_ALERT_ARGS {
        p.insert("argv_dropped".into(), json!(argv.len() - MAX_ALERT_ARGS));
    }
    p.insert(
        "argv".into(),
        Value::Array(argv.into_iter().take(MAX_ALERT_ARGS).collect()),
    );
    p
}

fn str_field<'a>(f: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    f.get(key).and_then(Value::as_str)
}

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

    fn event(fields: Value) -> Event {
        let Value::Object(fields) = fields else {
            panic!()
        };
        Event {
            category: Category::Exec,
            fields,
        }
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
