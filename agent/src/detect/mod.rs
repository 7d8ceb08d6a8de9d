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
        process: event.record().map(|r| r.process_context(MAX_ALERT_ARGS)),
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
mod tests;
