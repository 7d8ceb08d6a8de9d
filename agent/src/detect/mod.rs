//! Detection: each enriched event compared with the verified baseline policy, giving the alerts
//! it deserves (most events deserve none).
//!
//! Lookups are built once per policy: executables and protected files in hash maps by path, so
//! the per-event cost does not grow with the size of the baseline; globs and network rules are
//! scanned (they are few).

mod behaviour;
pub mod canary;
pub mod integrity;
mod loader;
pub mod privilege;

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use picket_common::{FileOp, NetOp};
use picket_policy::{
    model::{Glob, Mode, Modes, Protocol},
    Policy,
};
use serde_json::{json, Value};

use crate::{
    alert::{Draft, Kind, Severity},
    enrich::{file_op_name, net_op_name, Detail, Event, Guard, Record},
    paths::canon,
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

/// The reason given for an executable without a SHA-256 when the event does not say why.
const NO_HASH: &str = "no hash";

/// What an exec event says of the executed file besides its path and hash.
#[derive(Clone, Copy)]
struct ExecFlags<'a> {
    fileless: bool,
    deleted: bool,
    /// Why the file has no SHA-256, when it has none.
    hash_error: Option<&'a str>,
    /// The name the exec used, when it is a link to the file that ran.
    name_used: Option<&'a Path>,
    /// Killed before its first instruction by the exec guard's kernel side.
    killed: bool,
}

/// What a network event says, for the network checks.
struct NetSeen {
    op: NetOp,
    local_port: u16,
    remote: (std::net::IpAddr, u16),
    /// Set on a record of the network guard.
    guard: Option<Guard>,
}

/// What the baseline says of an executable.
enum Entry<'a> {
    /// Listed, with this SHA-256.
    Listed(&'a [u8; 32]),
    /// Allowed by an `executable_glob`, whatever its content.
    Globbed,
    Unknown,
}

/// What the baseline's `entry` for a file says of the file that ran, whose SHA-256 is `actual`
/// (`None`: it could not be established, for `reason`): the alert it deserves, if any.
fn verdict(
    entry: Entry<'_>,
    actual: Option<[u8; 32]>,
    reason: &str,
) -> Option<(Kind, Severity, Value)> {
    let hex = crate::paths::hex;
    match (entry, actual) {
        (Entry::Listed(expected), Some(actual)) if actual != *expected => Some((
            Kind::ModifiedExecutable,
            Severity::Critical,
            json!({ "expected": hex(expected), "actual": hex(&actual) }),
        )),
        // A hash that could not be established is never a modification: the file could not be
        // verified, which is said as such, with the reason.
        (Entry::Listed(expected), None) => Some((
            Kind::UnverifiedExecutable,
            Severity::Medium,
            json!({ "expected": hex(expected), "reason": reason }),
        )),
        (Entry::Unknown, actual) => Some((
            Kind::UnknownExecutable,
            Severity::High,
            match actual {
                Some(sha) => json!({ "sha256": hex(&sha) }),
                None => json!({ "sha256": null, "hash_error": reason }),
            },
        )),
        (Entry::Listed(_), Some(_)) | (Entry::Globbed, _) => None,
    }
}

/// Why an exec is suspicious whatever the baseline says: what ran, or from where.
fn suspicious(exe: &str, flags: &ExecFlags<'_>) -> Option<&'static str> {
    if flags.fileless {
        Some("fileless")
    } else if flags.deleted {
        Some("deleted file")
    } else if is_temporary(exe) {
        Some("temporary location")
    } else {
        None
    }
}

/// The executables a policy allows, by canonical path: what detection compares each exec with
/// and what the exec guard refuses anything else by.
pub struct ExecBaseline {
    executables: HashMap<String, [u8; 32]>,
    globs: Vec<CanonGlob>,
}

impl ExecBaseline {
    fn new(policy: &Policy) -> Self {
        Self {
            executables: policy
                .executables
                .iter()
                .map(|e| (key(e.path.as_str()), e.sha256.0))
                .collect(),
            globs: policy
                .executable_globs
                .iter()
                .map(|g| CanonGlob::new(&g.glob))
                .collect(),
        }
    }

    /// What the baseline says of the file spelled `raw`, `canonical` in canonical form.
    fn entry(&self, raw: &str, canonical: &str) -> Entry<'_> {
        if let Some(expected) = self.executables.get(canonical) {
            Entry::Listed(expected)
        } else if self.globs.iter().any(|g| g.matches(raw, canonical)) {
            Entry::Globbed
        } else {
            Entry::Unknown
        }
    }

    /// Why enforcement refuses to run the file at canonical `path` (`deleted`: its name was
    /// removed), `None` when it may run. What the baseline allows runs wherever it is: listed
    /// with this SHA-256 (`sha256` is called only when the answer needs it), or
    /// matched by an `executable_glob`. Anything else is refused, saying first what makes it
    /// worse than unknown: deleted, or in a temporary location.
    pub fn refusal(
        &self,
        path: &str,
        deleted: bool,
        sha256: impl FnOnce() -> Result<[u8; 32], String>,
    ) -> Option<Refusal> {
        match self.entry(path, path) {
            Entry::Globbed => None,
            Entry::Listed(expected) => match sha256() {
                Ok(actual) if actual == *expected => None,
                Ok(actual) => Some(Refusal::Modified {
                    expected: *expected,
                    actual,
                }),
                Err(error) => Some(Refusal::Unverified {
                    expected: *expected,
                    error,
                }),
            },
            Entry::Unknown if deleted => Some(Refusal::Deleted),
            Entry::Unknown if is_temporary(path) => Some(Refusal::Temporary),
            // Refused whatever its content: the SHA-256, for the report, is for the caller to
            // take once the exec is answered.
            Entry::Unknown => Some(Refusal::Unknown { sha256: None }),
        }
    }
}

/// Why an exec is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not in the baseline, in a temporary location (`/tmp`, `/dev/shm`, ...).
    Temporary,
    /// Not in the baseline, and deleted.
    Deleted,
    /// Not in the baseline.
    Unknown { sha256: Option<[u8; 32]> },
    /// In the baseline with another SHA-256.
    Modified {
        expected: [u8; 32],
        actual: [u8; 32],
    },
    /// In the baseline, but its SHA-256 could not be established.
    Unverified { expected: [u8; 32], error: String },
}

impl Refusal {
    /// A short reason, as alerts give it.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Temporary => "temporary location",
            Refusal::Deleted => "deleted file",
            Refusal::Unknown { .. } => "not in the baseline",
            Refusal::Modified { .. } => "another SHA-256 than the baseline's",
            Refusal::Unverified { .. } => "could not be verified",
        }
    }

    /// The alert details: the reason and the hashes that support it.
    pub fn details(&self) -> Value {
        let hex = crate::paths::hex;
        let mut d = json!({ "reason": self.reason() });
        match self {
            Refusal::Temporary | Refusal::Deleted => {}
            Refusal::Unknown { sha256 } => d["sha256"] = json!(sha256.as_ref().map(|s| hex(s))),
            Refusal::Modified { expected, actual } => {
                d["expected"] = json!(hex(expected));
                d["sha256"] = json!(hex(actual));
            }
            Refusal::Unverified { expected, error } => {
                d["expected"] = json!(hex(expected));
                d["error"] = json!(error);
            }
        }
        d
    }

    /// A modified file is the most severe: something changed what the device runs.
    pub fn severity(&self) -> Severity {
        match self {
            Refusal::Modified { .. } => Severity::Critical,
            Refusal::Unverified { .. } => Severity::Medium,
            _ => Severity::High,
        }
    }
}

/// Whether `path` is in a directory from which a legitimate device runs nothing.
pub(crate) fn is_temporary(path: &str) -> bool {
    TEMPORARY.iter().any(|t| path.starts_with(t))
}

/// A policy made ready for per-event checks.
pub struct Detector {
    policy: Policy,
    /// The policy's modes with the local configuration's overrides.
    modes: Modes,
    /// Paths of the policy in canonical form ([`crate::paths::canon`]), as are the events'
    /// paths they are compared with.
    executables: Arc<ExecBaseline>,
    protected: HashSet<String>,
    attributes: HashSet<String>,
    protected_globs: Vec<CanonGlob>,
    /// The agent's own files, normalised, each also in canonical form when that differs: any
    /// change to them is tampering.
    own: Vec<PathBuf>,
    /// Executables named by network rules → the file each name leads to, when that differs
    /// (events name the file that ran: `/usr/bin/python3.11` for a rule's `/usr/bin/python3`).
    rule_files: HashMap<String, String>,
    behaviour: behaviour::Behaviour,
    /// The kernel refuses what the network rules do not allow (see
    /// [`Detector::set_network_guarded`]).
    network_guarded: bool,
}

/// A policy glob, with its literal directory prefix in canonical form when that differs.
struct CanonGlob {
    glob: Glob,
    canonical: Option<Glob>,
}

impl CanonGlob {
    fn new(glob: &Glob) -> Self {
        let canonical = canonical_glob(glob.as_str())
            .and_then(|text| text.parse::<Glob>().ok())
            .filter(|c| c.as_str() != glob.as_str());
        Self {
            glob: glob.clone(),
            canonical,
        }
    }

    /// Whether the path spelled `raw`, `canonical` in canonical form, matches: the policy's
    /// spelling against the event's, or both canonical.
    fn matches(&self, raw: &str, canonical: &str) -> bool {
        self.glob.matches(raw)
            || self
                .canonical
                .as_ref()
                .unwrap_or(&self.glob)
                .matches(canonical)
    }
}

/// `pattern` with the directories before its first component holding a glob metacharacter
/// resolved ([`canon::canonical_dir`]); a pattern without any is a path, made canonical.
/// `None` when the text would not change.
fn canonical_glob(pattern: &str) -> Option<String> {
    let is_meta = |c: &str| c.contains(['*', '?', '[']);
    let components: Vec<&str> = pattern.split('/').collect();
    let Some(first) = components.iter().position(|c| is_meta(c)) else {
        return canonical_text(pattern).map(Cow::into_owned);
    };
    let prefix = components[..first].join("/");
    if prefix.is_empty() {
        return None;
    }
    let dir = canon::canonical_dir(Path::new(&prefix));
    let dir = dir.to_str()?;
    if dir == prefix {
        return None;
    }
    let escaped = glob::Pattern::escape(dir);
    Some(format!("{escaped}/{}", components[first..].join("/")))
}

/// The canonical form of the absolute path `path`, as text; `None` when that is `path` itself
/// (or not UTF-8, which a policy path cannot be).
fn canonical_text(path: &str) -> Option<Cow<'static, str>> {
    match canon::canonical(Path::new(path)) {
        Cow::Borrowed(_) => None,
        Cow::Owned(c) => c.into_os_string().into_string().ok().map(Cow::Owned),
    }
}

/// `path` in canonical form, as policy keys are.
fn key(path: &str) -> String {
    canonical_text(path).map_or_else(|| path.to_string(), Cow::into_owned)
}

impl Detector {
    /// Prepares `policy` under `modes`; `own` lists the agent's binary, configuration, trust
    /// and state paths. Every path of the policy is looked up by its canonical form.
    pub fn new(policy: Policy, modes: Modes, own: Vec<PathBuf>) -> Self {
        let executables = Arc::new(ExecBaseline::new(&policy));
        let protected = policy
            .files
            .protected
            .iter()
            .map(|f| key(f.path.as_str()))
            .collect();
        let attributes = policy
            .files
            .attributes
            .iter()
            .map(|f| key(f.path.as_str()))
            .collect();
        let protected_globs = policy
            .files
            .protected_glob
            .iter()
            .map(|g| CanonGlob::new(&g.glob))
            .collect();
        let mut own_paths = Vec::new();
        for p in own {
            let p = crate::paths::normalize(&p);
            // A directory of the agent's (its state) may itself be reached through a link.
            let canonical = std::fs::canonicalize(&p)
                .ok()
                .unwrap_or_else(|| canon::canonical(&p).into_owned());
            if canonical != p {
                own_paths.push(canonical);
            }
            own_paths.push(p);
        }
        let rule_files = (policy.network.outbound.iter().map(|r| &r.executable))
            .chain(policy.network.listen.iter().map(|r| &r.executable))
            .flatten()
            .filter_map(|name| {
                let file = std::fs::canonicalize(name.as_str()).ok()?;
                let file = file.to_str().filter(|f| *f != name.as_str())?;
                Some((name.as_str().to_string(), file.to_string()))
            })
            .collect();
        let behaviour = behaviour::Behaviour::new(policy.behaviour.as_ref());
        Self {
            behaviour,
            policy,
            modes,
            executables,
            protected,
            attributes,
            protected_globs,
            own: own_paths,
            rule_files,
            network_guarded: false,
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
                fileless,
                deleted,
                hash_error,
                name_used,
                killed,
                ..
            } => {
                let flags = ExecFlags {
                    fileless: *fileless,
                    deleted: *deleted,
                    hash_error: hash_error.as_deref(),
                    name_used: name_used.as_deref(),
                    killed: *killed,
                };
                self.exec(event, r, flags, &mut out);
                self.lineage(event, r, &mut out);
            }
            Detail::Net {
                op,
                local,
                remote,
                guard,
                ..
            } => {
                let seen = NetSeen {
                    op: *op,
                    local_port: local.1,
                    remote: *remote,
                    guard: *guard,
                };
                self.net(event, r, seen, &mut out);
            }
            Detail::File {
                op, path, second, ..
            } => {
                // Every path the operation touches: a rename changes both names.
                let new_path = match second {
                    Some(("new_path", p)) => Some(p),
                    _ => None,
                };
                forget_resolutions(*op, path.as_deref(), new_path);
                for p in path.iter().chain(new_path) {
                    self.file(event, r, *op, p, &mut out);
                }
            }
            Detail::Read { path } => self.read(event, r, path, &mut out),
            Detail::Refused {
                path,
                refusal,
                enforced,
            } => out.push(refused_exec(event, path, refusal, *enforced)),
            Detail::Fork { .. } | Detail::Exit { .. } | Detail::Privilege(_) => {}
        }
        // Setuid bits, file capabilities, modules, ptrace, mounts: see `privilege`.
        self.privilege(event, r, &mut out);
        out
    }

    fn exec(&self, event: &Event, r: &Record, flags: ExecFlags<'_>, out: &mut Vec<Draft>) {
        let Some(ctx) = &r.process else {
            return;
        };
        let Some(exe) = ctx.exe_text() else {
            return;
        };
        loader::check(self, event, r, &exe, out);
        if self.modes.executables == Mode::Off {
            return;
        }
        let exe = exe.as_ref();
        let raise = |out: &mut Vec<Draft>, kind, severity, details| {
            out.push(draft(kind, severity, "executables", exe, details, event));
        };
        if let Some(reason) = suspicious(exe, &flags) {
            raise(
                out,
                Kind::SuspiciousExec,
                Severity::High,
                json!({ "reason": reason }),
            );
        }
        // A memory file cannot be held by the exec guard: while it enforces, the kernel kills
        // such an exec before its first instruction; in the dry run, it would have.
        if flags.killed {
            let details = json!({ "reason": "fileless" });
            raise(out, Kind::BlockedExec, Severity::High, details);
        } else if flags.fileless && self.modes.executables == Mode::Alert {
            let details = json!({ "reason": "fileless", "action": "exec" });
            raise(out, Kind::WouldBlock, Severity::Medium, details);
        }
        let reason = flags.hash_error.unwrap_or(NO_HASH);
        let entry = self.baseline_entry(exe, flags.name_used);
        if let Some((kind, severity, details)) = verdict(entry, ctx.image.sha256, reason) {
            raise(out, kind, severity, details);
        }
        if let Some(script) = self.behaviour.script(exe, &ctx.image) {
            self.script(event, exe, script, ctx.image.script_sha256.as_ref(), out);
        }
    }

    /// A script file run by an interpreter the policy names, judged like an executable: from
    /// a temporary location, not in the baseline, or with another SHA-256. Its alerts name the
    /// script and the interpreter (`rule` `executables.scripts`).
    fn script(
        &self,
        event: &Event,
        interpreter: &str,
        script: &Path,
        sha256: Option<&crate::enrich::script::ScriptDigest>,
        out: &mut Vec<Draft>,
    ) {
        let text = script.to_string_lossy();
        let raise = |out: &mut Vec<Draft>, kind, severity, mut details: Value| {
            details["interpreter"] = json!(interpreter);
            out.push(draft(
                kind,
                severity,
                "executables.scripts",
                &text,
                details,
                event,
            ));
        };
        // As named, and where it leads (`/proc/PID/cwd/x` is in the process's directory).
        let canonical = canonical_text(&text);
        if is_temporary(&text) || canonical.as_deref().is_some_and(is_temporary) {
            let details = json!({ "reason": "script in a temporary location" });
            raise(out, Kind::SuspiciousExec, Severity::High, details);
        }
        let (actual, reason) = match sha256 {
            Some(Ok(d)) => (Some(*d), NO_HASH),
            Some(Err(e)) => (None, e.as_str()),
            None => (None, NO_HASH),
        };
        if let Some((kind, severity, details)) =
            verdict(self.baseline_entry(&text, None), actual, reason)
        {
            raise(out, kind, severity, details);
        }
    }

    /// The files whose opens are reported (`read` events): the policy's sensitive files.
    pub fn sensitive_files(&self) -> Vec<PathBuf> {
        self.behaviour.sensitive_files()
    }

    /// Whether the behavioural checks run: the policy has a `[behaviour]` section and the
    /// mode is not off.
    pub(crate) fn behaviour_checked(&self) -> bool {
        self.policy.behaviour.is_some() && self.modes.behaviour != Mode::Off
    }

    /// A sensitive file opened by an executable the policy does not allow to read it.
    fn read(&self, event: &Event, r: &Record, path: &Path, out: &mut Vec<Draft>) {
        if !self.behaviour_checked() {
            return;
        }
        let Some(text) = path.to_str() else {
            return;
        };
        let reader = r.process.as_ref().and_then(|p| p.exe_text());
        if self.behaviour.may_read(text, reader.as_deref()) == Some(false) {
            out.push(draft(
                Kind::SensitiveFileRead,
                Severity::High,
                "behaviour.sensitive",
                text,
                json!({ "reader": reader }),
                event,
            ));
        }
    }

    /// An exec by a parent the behavioural baseline does not expect to start it.
    fn lineage(&self, event: &Event, r: &Record, out: &mut Vec<Draft>) {
        if !self.behaviour_checked() {
            return;
        }
        let Some(ctx) = &r.process else {
            return;
        };
        if let Some(found) = self.behaviour.lineage(&ctx.image, ctx.ancestry.first()) {
            out.push(draft(
                Kind::UnexpectedLineage,
                Severity::High,
                "behaviour.lineage",
                &found.child,
                found.details,
                event,
            ));
        }
    }

    /// What the baseline says of the executable `exe`, which the exec named `name_used` when
    /// that was a link to it. The policy is keyed by canonical paths (`/bin/x` is looked up as
    /// `/usr/bin/x`). The file that ran may be listed under the name of a link to it, the name
    /// the exec used (`/bin/sh` for `/usr/bin/dash`); or, the other way round, a name the
    /// baseline does not list may be a link to one it does (`/usr/bin/awk` to `/usr/bin/mawk`).
    /// Those are looked up only on a miss; the hash still decides, whatever a link points to.
    fn baseline_entry(&self, exe: &str, name_used: Option<&Path>) -> Entry<'_> {
        let canonical = canonical_text(exe);
        let canonical = canonical.as_deref().unwrap_or(exe);
        let entry = self.executables.entry(exe, canonical);
        if !matches!(entry, Entry::Unknown) {
            return entry;
        }
        let other = match name_used.and_then(Path::to_str) {
            Some(used) => Some(key(used)),
            None => std::fs::canonicalize(exe)
                .ok()
                .and_then(|p| p.to_str().map(str::to_string)),
        };
        match other.filter(|p| p != canonical) {
            Some(other) => self.executables.entry(&other, &key(&other)),
            None => Entry::Unknown,
        }
    }

    /// The executables the policy allows, for the exec guard.
    pub fn exec_baseline(&self) -> Arc<ExecBaseline> {
        Arc::clone(&self.executables)
    }

    /// Whether the kernel refuses what the network rules do not allow: the policy's network
    /// mode is `enforce` and the network guard runs. Set by the caller that runs the guard.
    pub fn set_network_guarded(&mut self, guarded: bool) {
        self.network_guarded = guarded;
    }

    fn net(&self, event: &Event, r: &Record, seen: NetSeen, out: &mut Vec<Draft>) {
        let NetSeen {
            op,
            local_port,
            remote,
            guard,
        } = seen;
        if self.modes.network == Mode::Off {
            return;
        }
        let exe = r.process.as_ref().and_then(|p| p.exe_text());
        let exe = exe.as_deref();
        let allowed_exe = |rule: &Option<picket_policy::model::AbsPath>| {
            rule.as_ref().is_none_or(|r| {
                Some(r.as_str()) == exe
                    || self.rule_files.get(r.as_str()).map(String::as_str) == exe
            })
        };
        let proto_ok = |rule: Protocol, proto: Protocol| rule == Protocol::Any || rule == proto;
        let name = net_op_name(op);
        let outbound = matches!(op, NetOp::TcpConnect | NetOp::UdpConnect | NetOp::UdpSend);
        let proto = if matches!(op, NetOp::TcpConnect | NetOp::TcpListen | NetOp::TcpBind) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let (rule, details) = if outbound {
            let (addr, rport) = remote;
            let details = json!({
                "op": name,
                "remote_addr": addr.to_string(),
                "remote_port": rport,
                "protocol": protocol_name(proto),
            });
            ("network.outbound", details)
        } else {
            let details =
                json!({ "op": name, "port": local_port, "protocol": protocol_name(proto) });
            ("network.listen", details)
        };
        // A record of the network guard: what the kernel refused, or would have.
        if let Some(guard) = guard {
            let (kind, severity, mut details) = match (guard, outbound) {
                (Guard::Blocked, true) => (Kind::BlockedConnection, Severity::High, details),
                (Guard::Blocked, false) => (Kind::BlockedListener, Severity::High, details),
                (Guard::WouldBlock, _) => (Kind::WouldBlock, Severity::Medium, details),
            };
            if guard == Guard::WouldBlock {
                details["action"] = json!(if outbound { "connect" } else { "bind" });
            }
            out.push(draft(
                kind,
                severity,
                rule,
                exe.unwrap_or(""),
                details,
                event,
            ));
            return;
        }
        // What the rules allow to some executable (the guard's judgement) and to this one.
        let (any_exe, this_exe) = match op {
            NetOp::TcpConnect | NetOp::UdpConnect | NetOp::UdpSend => {
                // An IPv4 peer of a dual-stack socket (`::ffff:a.b.c.d`) is judged as the IPv4
                // address, as the network guard judges it.
                let (addr, rport) = (remote.0.to_canonical(), remote.1);
                let matching = |r: &&picket_policy::model::Outbound| {
                    r.cidr.contains(&addr) && r.ports.contains(rport) && proto_ok(r.protocol, proto)
                };
                let rules = &self.policy.network.outbound;
                (
                    rules.iter().any(|r| matching(&r)),
                    rules
                        .iter()
                        .filter(matching)
                        .any(|r| allowed_exe(&r.executable)),
                )
            }
            NetOp::TcpListen | NetOp::UdpBind => {
                if local_port == 0 {
                    return;
                }
                let matching = |r: &&picket_policy::model::Listen| {
                    r.port.0 == local_port && proto_ok(r.protocol, proto)
                };
                let rules = &self.policy.network.listen;
                (
                    rules.iter().any(|r| matching(&r)),
                    rules
                        .iter()
                        .filter(matching)
                        .any(|r| allowed_exe(&r.executable)),
                )
            }
            NetOp::TcpAccept | NetOp::TcpBind => return,
        };
        // Refused by the kernel, which said so in its own record: the syscall sensors saw the
        // attempt before the refusal (a UDP connect, send or bind). A TCP listen is not one the
        // guard judges (it judged the bind; a port the kernel picked it lets through).
        let judged_by_guard = match op {
            NetOp::UdpConnect | NetOp::UdpSend => true,
            NetOp::UdpBind => local_port != 0,
            _ => false,
        };
        if self.network_guarded && judged_by_guard && !any_exe {
            return;
        }
        if !this_exe {
            let kind = if outbound {
                Kind::UnexpectedConnection
            } else {
                Kind::UnexpectedListener
            };
            out.push(draft(
                kind,
                Severity::High,
                rule,
                exe.unwrap_or(""),
                details,
                event,
            ));
        }
    }

    fn file(&self, event: &Event, r: &Record, op: FileOp, path: &Path, out: &mut Vec<Draft>) {
        let op_name = file_op_name(op);
        // Compared in canonical form, as the policy's paths are; reported as the event says.
        let canonical = canon::canonical(path);
        if self
            .own
            .iter()
            .any(|own| under(path, own) || under(&canonical, own))
        {
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
        // As printed: lossy text for a name that is not UTF-8.
        let text: Cow<'_, str> = path.to_string_lossy();
        let canonical_text = canonical.to_string_lossy();
        let files_on = self.modes.files != Mode::Off;
        let protected = files_on
            && (self.protected.contains(canonical_text.as_ref())
                || self
                    .protected_globs
                    .iter()
                    .any(|g| g.matches(&text, &canonical_text)));
        let attributes_changed = files_on
            && matches!(op, FileOp::Chmod | FileOp::Chown)
            && self.attributes.contains(canonical_text.as_ref());
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
        if self.behaviour_checked() {
            let flags = match &r.detail {
                Detail::File { flags, .. } => *flags,
                _ => 0,
            };
            let actors = r.process.iter().flat_map(|p| {
                let ancestors = p.ancestry.iter().filter_map(|a| a.exe());
                p.image.exe.as_deref().into_iter().chain(ancestors)
            });
            if self
                .behaviour
                .append_only_broken(op, flags, &text, &canonical_text, actors)
            {
                out.push(draft(
                    Kind::AppendOnlyViolated,
                    Severity::High,
                    "behaviour.append_only",
                    &text,
                    json!({ "op": op_name }),
                    event,
                ));
            }
        }
    }
}

/// Keeps the canonical paths' cache true to the tree: a new symbolic link, or a directory
/// renamed or removed, can change what a directory resolves to.
fn forget_resolutions(op: FileOp, path: Option<&Path>, new_path: Option<&PathBuf>) {
    match op {
        FileOp::Symlink => canon::invalidate(),
        FileOp::Rename | FileOp::Rmdir => {
            for p in path.into_iter().chain(new_path.map(PathBuf::as_path)) {
                canon::forget(p);
            }
        }
        _ => {}
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

/// The alert of an exec the guard refused (`blocked_exec`), or would have (`would_block`).
fn refused_exec(event: &Event, path: &Path, refusal: &Refusal, enforced: bool) -> Draft {
    let mut details = refusal.details();
    let (kind, severity) = if enforced {
        (Kind::BlockedExec, refusal.severity())
    } else {
        details["action"] = json!("exec");
        (Kind::WouldBlock, Severity::Medium)
    };
    draft(
        kind,
        severity,
        "executables",
        &path.to_string_lossy(),
        details,
        event,
    )
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
