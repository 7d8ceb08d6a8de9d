//! `picket baseline learn`: runs the sensors for a while and writes what the device actually did
//! (executables with their hashes, scripts run by interpreters, outbound peers, listeners, which
//! program started which, the interpreters, privileged actions, files written) as a draft policy
//! for a person to review, merged into an existing policy when one is given.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use picket_common::Sensor;
use picket_policy::{
    model::{
        Action, Executable, Glob, Lineage, Listen, Metadata, Outbound, Privileged, Protocol,
        Timestamp,
    },
    Policy,
};
use serde_json::Value;

use crate::{
    cmd::session::{self, Sink},
    detect::privilege,
    enrich::{script::Code, Event, Fields, Record},
    sensors::{SensorArgs, SensorSet},
};

/// Arguments of `picket baseline learn`.
#[derive(clap::Args, Debug)]
pub struct LearnArgs {
    /// How long to watch: `90s`, `15m`, `2h` (a bare number is seconds).
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::config::parse_duration)]
    duration: Duration,

    /// Where to write the draft policy (TOML).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// A policy (TOML) to extend: its entries are kept and what is learned is added.
    #[arg(long, value_name = "FILE")]
    merge: Option<PathBuf>,

    /// Device class of a new draft (ignored with --merge, which keeps the policy's).
    #[arg(long, value_name = "CLASS", default_value = "unknown")]
    device_class: String,

    #[command(flatten)]
    sensors: SensorArgs,
}

/// Runs the learning session and writes the draft.
pub async fn run(args: LearnArgs) -> anyhow::Result<()> {
    let base = match &args.merge {
        Some(path) => Some(picket_policy::load_toml_file(path)?),
        None => None,
    };
    let mut seen = Learned {
        watched: base.as_ref().map(|p| {
            (p.behaviour.iter().flat_map(|b| &b.sensitive))
                .map(|s| PathBuf::from(s.path.as_str()))
                .collect()
        }),
        ..Learned::default()
    };
    let purpose = format!("learning for {:?}", args.duration);
    let stats = session::run(
        &args.sensors,
        SensorSet::empty()
            .with(Sensor::Process)
            .with(Sensor::Network)
            .with(Sensor::File),
        &purpose,
        tokio::time::sleep(args.duration),
        &mut seen,
    )
    .await?;
    let lost: u64 = stats.lost.iter().sum();
    if lost > 0 {
        seen.notes.insert(format!(
            "{lost} events were lost during learning (ring buffer full): the draft may be incomplete"
        ));
    }
    let (policy, notes) = seen.into_policy(base, &args.device_class)?;
    let text = draft_text(&notes, &policy);
    // What is written must load back as the same policy.
    let back = picket_policy::load_toml(&text, &args.out.display().to_string())
        .context("the draft does not load back (a bug: please report it)")?;
    anyhow::ensure!(back == policy, "the draft does not load back as written");
    fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    log::info!(
        "wrote {}: {} executables, {} outbound rules, {} listeners, {} lineage pairs, {} interpreters; {} notes",
        args.out.display(),
        policy.executables.len(),
        policy.network.outbound.len(),
        policy.network.listen.len(),
        policy.behaviour.as_ref().map_or(0, |b| b.lineage.len()),
        policy.behaviour.as_ref().map_or(0, |b| b.interpreters.len()),
        notes.len()
    );
    Ok(())
}

/// What the device did, as seen through events.
#[derive(Default)]
struct Learned {
    executables: BTreeMap<String, String>,
    outbound: BTreeSet<(String, u16, Protocol, Option<String>)>,
    listen: BTreeSet<(u16, Protocol, Option<String>)>,
    /// Files written, counted by directory (a log directory can see thousands).
    written: BTreeMap<String, (usize, String)>,
    /// (parent program, child program) pairs: lineage.
    lineage: BTreeSet<(String, String)>,
    /// Executables seen running code: a script file or inline code.
    interpreters: BTreeSet<String>,
    /// The base policy's sensitive files, to watch (taken once by the session).
    watched: Option<Vec<PathBuf>>,
    /// (sensitive file, executable) pairs: who read what.
    readers: BTreeSet<(String, String)>,
    /// Privileged actions and the executables that took them.
    privileged: BTreeSet<(Action, PathBuf)>,
    notes: BTreeSet<String>,
}

impl Sink for Learned {
    fn event(&mut self, event: Event) -> anyhow::Result<()> {
        let f = &event.fields;
        let text = |key: &str| f.get(key).and_then(Value::as_str).map(str::to_string);
        let exe = text("exe").filter(|e| e.starts_with('/') && !f.contains_key("exe_hex"));
        if let Some(action) = event.record().and_then(privilege::action_of) {
            self.privileged.insert(action);
        }
        match text("event").as_deref() {
            Some("exec") => {
                self.exec(exe, text("sha256"));
                if let Some(r) = event.record() {
                    self.behaviour(r);
                }
            }
            Some("net") => self.net(f, exe),
            Some("file") => self.file(text("path")),
            Some("read") => {
                if let (Some(path), Some(exe)) = (text("path"), exe) {
                    self.readers.insert((path, exe));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn lost(&mut self, _loss: &session::Loss) -> anyhow::Result<()> {
        Ok(())
    }

    fn watched_files(&mut self) -> Option<Vec<PathBuf>> {
        self.watched.take()
    }
}

impl Learned {
    /// An exec: the executable with its hash, or a note on why it cannot be allowed.
    fn exec(&mut self, exe: Option<String>, sha256: Option<String>) {
        match (exe, sha256) {
            (Some(path), _) if path.starts_with("/memfd:") || path.ends_with(" (deleted)") => {
                self.notes.insert(format!(
                    "not allowed: fileless or deleted executable {path}"
                ));
            }
            (Some(path), Some(sha)) => {
                self.executables.insert(path, sha);
            }
            (Some(path), None) => {
                self.notes
                    .insert(format!("not allowed: {path} ran but could not be hashed"));
            }
            (None, _) => {}
        }
    }

    /// What an exec says of behaviour: the pair parent → child, and for an interpreter, that
    /// it is one and the script it ran (an executable of the draft, with its hash).
    fn behaviour(&mut self, r: &Record) {
        let Some(ctx) = &r.process else {
            return;
        };
        let text = |p: &std::path::Path| {
            p.to_str()
                .filter(|t| t.starts_with('/'))
                .map(str::to_string)
        };
        if let Some(code) = &ctx.image.code {
            if let Some(exe) = ctx.image.exe.as_deref().and_then(text) {
                self.interpreters.insert(exe);
            }
            if let Code::Script(script) = code {
                let sha = match &ctx.image.script_sha256 {
                    Some(Ok(d)) => Some(crate::paths::hex(d)),
                    _ => None,
                };
                self.exec(text(script), sha);
            }
        }
        let parent = ctx
            .ancestry
            .first()
            .and_then(|a| a.image.program())
            .and_then(|p| text(&p));
        let child = ctx.image.program().and_then(|p| text(&p));
        // As detection compares them: a program replaced on disk since it started is itself.
        let live = |p: String| p.replacen(" (deleted)", "", 1);
        let (parent, child) = (parent.map(live), child.map(live));
        if let (Some(parent), Some(child)) = (parent, child) {
            self.lineage.insert((parent, child));
        }
    }

    /// A network event: a connection or datagram out is an outbound peer, a listen or bind a
    /// listener.
    fn net(&mut self, f: &Fields, exe: Option<String>) {
        let text = |key: &str| f.get(key).and_then(Value::as_str).map(str::to_string);
        let port = |key: &str| {
            f.get(key)
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
        };
        match text("op").as_deref() {
            Some(op @ ("tcp_connect" | "udp_connect" | "udp_send")) => {
                if let (Some(addr), Some(port)) = (text("remote_addr"), port("remote_port")) {
                    let proto = if op == "tcp_connect" {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    };
                    self.outbound.insert((addr, port, proto, exe));
                }
            }
            Some(op @ ("tcp_listen" | "udp_bind")) => {
                if let Some(port) = port("local_port") {
                    let proto = if op == "tcp_listen" {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    };
                    self.listen.insert((port, proto, exe));
                }
            }
            _ => {}
        }
    }

    /// A file written: counted under its directory (outside /proc and /dev).
    fn file(&mut self, path: Option<String>) {
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            if !path.starts_with("/proc/") && !path.starts_with("/dev/") {
                let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
                let dir = if dir.is_empty() { "/" } else { dir };
                let entry = self
                    .written
                    .entry(dir.to_string())
                    .or_insert_with(|| (0, name.to_string()));
                entry.0 += 1;
            }
        }
    }

    /// The draft: `base` (or a new policy) plus everything learned, and the notes for review.
    fn into_policy(
        mut self,
        base: Option<Policy>,
        device_class: &str,
    ) -> anyhow::Result<(Policy, BTreeSet<String>)> {
        let mut policy = draft_base(base, device_class)?;
        self.add_executables(&mut policy);
        self.notes
            .extend(super::add_loaders(&mut policy, std::path::Path::new("/")));
        self.add_network(&mut policy);
        self.add_behaviour(&mut policy);
        for (dir, (count, example)) in &self.written {
            self.notes.insert(if *count == 1 {
                format!("written while learning: {dir}/{example}")
            } else {
                format!("written while learning: {count} files in {dir}/ (e.g. {example})")
            });
        }
        let policy = picket_policy::canonicalize(policy).map_err(|e| anyhow::anyhow!(e))?;
        Ok((policy, self.notes))
    }

    /// Adds the executables the policy does not list; one it lists with another hash keeps the
    /// policy's, with a note.
    fn add_executables(&mut self, policy: &mut Policy) {
        let known: BTreeMap<String, String> = policy
            .executables
            .iter()
            .map(|e| (e.path.as_str().to_string(), e.sha256.to_string()))
            .collect();
        for (path, sha) in std::mem::take(&mut self.executables) {
            match known.get(&path) {
                Some(old) if *old == sha => {}
                Some(old) => {
                    self.notes.insert(format!(
                        "{path} ran with sha256 {sha}, the policy says {old}: kept the policy's"
                    ));
                }
                None => match (path.parse(), sha.parse()) {
                    (Ok(path), Ok(sha256)) => policy.executables.push(Executable { path, sha256 }),
                    _ => {
                        self.notes
                            .insert(format!("not allowed: {path} is not a policy path"));
                    }
                },
            }
        }
    }

    /// Adds the lineage pairs, the interpreters seen and the readers of the sensitive files.
    fn add_behaviour(&mut self, policy: &mut Policy) {
        // A draft always has the section: learning is what makes it.
        let b = policy.behaviour.get_or_insert_with(Default::default);
        for (action, exe) in std::mem::take(&mut self.privileged) {
            match exe.to_str().map(str::parse) {
                Some(Ok(executable)) => b.privileged.push(Privileged { action, executable }),
                _ => {
                    self.notes.insert(format!(
                        "{} by {} not kept: not a policy path",
                        action.name(),
                        exe.display()
                    ));
                }
            }
        }
        for (path, exe) in std::mem::take(&mut self.readers) {
            let Some(file) = b.sensitive.iter_mut().find(|s| s.path.as_str() == path) else {
                continue;
            };
            match exe.parse() {
                Ok(reader) if !file.readers.contains(&reader) => file.readers.push(reader),
                Ok(_) => {}
                Err(_) => {
                    self.notes.insert(format!(
                        "reader {exe} of {path} not kept: not a policy path"
                    ));
                }
            }
        }
        for (parent, child) in std::mem::take(&mut self.lineage) {
            match (parent.parse(), child.parse()) {
                (Ok(parent), Ok(child)) => b.lineage.push(Lineage { parent, child }),
                _ => {
                    self.notes.insert(format!(
                        "lineage {parent} -> {child} not kept: not policy paths"
                    ));
                }
            }
        }
        for exe in std::mem::take(&mut self.interpreters) {
            // A policy glob: its metacharacters, rare in a file name, are escaped.
            if let Ok(glob) = glob::Pattern::escape(&exe).parse::<Glob>() {
                if !b.interpreters.iter().any(|g| g.matches(&exe)) {
                    b.interpreters.push(glob);
                }
            }
        }
    }

    /// Adds the outbound peers and the listeners.
    fn add_network(&mut self, policy: &mut Policy) {
        for (addr, port, protocol, exe) in std::mem::take(&mut self.outbound) {
            let (Ok(cidr), Ok(ports)) = (addr.parse(), port.to_string().parse()) else {
                continue;
            };
            policy.network.outbound.push(Outbound {
                cidr,
                ports,
                protocol,
                executable: exe.and_then(|e| e.parse().ok()),
            });
        }
        for (port, protocol, exe) in std::mem::take(&mut self.listen) {
            policy.network.listen.push(Listen {
                port: picket_policy::model::Port(port),
                protocol,
                executable: exe.and_then(|e| e.parse().ok()),
            });
        }
    }
}

/// The policy the draft starts from: the next version of `base`, or a new empty policy.
fn draft_base(base: Option<Policy>, device_class: &str) -> anyhow::Result<Policy> {
    Ok(match base {
        Some(mut p) => {
            // A draft built on a policy is its next version.
            p.metadata.serial += 1;
            p.metadata.created = now()?;
            p
        }
        None => Policy {
            metadata: Metadata {
                name: "learned".into(),
                device_class: device_class.to_string(),
                serial: 1,
                created: now()?,
            },
            modes: Default::default(),
            executables: Vec::new(),
            executable_globs: Vec::new(),
            network: Default::default(),
            files: Default::default(),
            behaviour: Default::default(),
        },
    })
}

/// The draft as written: a header, one comment line per note, then the policy.
fn draft_text(notes: &BTreeSet<String>, policy: &Policy) -> String {
    let mut text = String::from(
        "# Draft policy from `picket baseline learn`: review every entry before signing.\n",
    );
    for note in notes {
        text.push_str("# ");
        text.push_str(&comment(note));
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&picket_policy::to_toml(policy));
    text
}

/// `note` as one TOML comment line: a comment may not hold control characters, and a note can
/// quote any path a process wrote (a name with a newline, a NUL, an escape sequence), so each
/// is written escaped (`\n`, `\0`, `\u{1b}`).
fn comment(note: &str) -> String {
    let mut out = String::with_capacity(note.len());
    for c in note.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

fn now() -> anyhow::Result<Timestamp> {
    Timestamp::for_new_policy().map_err(|e| anyhow::anyhow!("creation time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_quoting_any_path_keep_the_draft_loadable() {
        let policy = draft_base(None, "lab").unwrap();
        let notes: BTreeSet<String> = [
            "written while learning: /srv/\0x".to_string(),
            "written while learning: /srv/a\nb\rc\td\u{7f}e\u{1b}[31m".to_string(),
            "written while learning: /srv/caf\u{e9} \u{fffd}".to_string(),
        ]
        .into();
        let text = draft_text(&notes, &policy);
        let back = picket_policy::load_toml(&text, "draft.toml").expect("loads back");
        assert_eq!(back, policy);
        assert!(
            text.contains("# written while learning: /srv/\\0x\n"),
            "{text}"
        );
        assert!(
            text.contains("/srv/a\\nb\\rc\\td\\u{7f}e\\u{1b}[31m\n"),
            "{text}"
        );
        // Printable text beyond ASCII is kept as it is.
        assert!(text.contains("/srv/caf\u{e9} \u{fffd}\n"), "{text}");
    }
}
