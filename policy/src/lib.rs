//! Picket's baseline policy: what a healthy device does, in one artifact nobody can forge or
//! replay.
//!
//! - [`model`]: the policy's types; reading them from TOML validates every value.
//! - [`load_toml`] / [`to_toml`]: the authoring format, both ways.
//! - [`canonical_bytes`]: the signed form (postcard of the sorted, de-duplicated policy).
//! - [`bundle`]: the versioned, Ed25519-signed envelope around the canonical bytes.
//! - [`keys`]: signing keys and the directory of trusted public keys.
//! - [`store`]: on the device, anti-rollback and the atomic swap of the active policy.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod keys;
pub mod model;
pub mod store;

use std::path::PathBuf;

pub use model::Policy;
use thiserror::Error;

/// Errors about a policy's text or content.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The TOML does not parse or holds a bad value; the message has the line and column.
    #[error("{origin}: {message}")]
    Toml { origin: String, message: String },
    /// The same thing is listed twice in contradicting ways.
    #[error("{origin}: {message}")]
    Conflict { origin: String, message: String },
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a policy from TOML text; `origin` (usually the file name) prefixes every error.
///
/// Unknown fields are refused (a typo must not silently weaken a policy), every value is
/// checked, and the result is put in canonical order.
pub fn load_toml(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Toml {
        origin: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    canonicalize(policy).map_err(|message| PolicyError::Conflict {
        origin: origin.to_string(),
        message,
    })
}

/// Reads a policy from a TOML file.
pub fn load_toml_file(path: &std::path::Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_toml(&text, &path.display().to_string())
}

/// Sorts every list and removes exact duplicates, so that the same policy always has the same
/// canonical bytes whatever order it was written in. Refuses an entry listed twice with
/// different content: one of the two would be silently ignored.
pub fn canonicalize(mut p: Policy) -> Result<Policy, String> {
    fn sort_dedup<T: Ord>(v: &mut Vec<T>) {
        v.sort();
        v.dedup();
    }
    for (name, mode) in [("files", p.modes.files), ("behaviour", p.modes.behaviour)] {
        if mode == model::Mode::Enforce {
            return Err(format!(
                "modes.{name} = \"enforce\": only executables and network can be enforced \
                 (files and behaviour are watched, not prevented)"
            ));
        }
    }
    sort_dedup(&mut p.executables);
    sort_dedup(&mut p.executable_globs);
    sort_dedup(&mut p.network.outbound);
    sort_dedup(&mut p.network.listen);
    sort_dedup(&mut p.files.protected);
    sort_dedup(&mut p.files.protected_glob);
    sort_dedup(&mut p.files.attributes);
    if let Some(b) = p.behaviour.as_mut() {
        sort_dedup(&mut b.interpreters);
        sort_dedup(&mut b.lineage);
        sort_dedup(&mut b.privileged);
        for s in &mut b.sensitive {
            sort_dedup(&mut s.readers);
        }
        for a in &mut b.append_only {
            sort_dedup(&mut a.rotated_by);
        }
        sort_dedup(&mut b.append_only);
        sort_dedup(&mut b.sensitive);
        for pair in b.sensitive.windows(2) {
            if pair[0].path == pair[1].path {
                return Err(format!(
                    "sensitive file {} is listed twice with different readers",
                    pair[0].path.as_str()
                ));
            }
        }
        for pair in b.append_only.windows(2) {
            if pair[0].glob == pair[1].glob {
                return Err(format!(
                    "append-only pattern {} is listed twice with different rotators",
                    pair[0].glob.as_str()
                ));
            }
        }
    }
    for pair in p.executables.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(format!(
                "executable {} is listed twice with different hashes ({} and {})",
                pair[0].path.as_str(),
                pair[0].sha256,
                pair[1].sha256
            ));
        }
    }
    for pair in p.files.protected.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(format!(
                "protected file {} is listed twice with different content",
                pair[0].path.as_str()
            ));
        }
    }
    for a in &p.files.attributes {
        if a.owner.is_none() && a.group.is_none() && a.mode.is_none() {
            return Err(format!(
                "files.attributes entry for {} sets none of owner, group, mode",
                a.path.as_str()
            ));
        }
    }
    Ok(p)
}

/// The canonical binary form of a policy: what is signed, and the bundle format it needs.
///
/// A policy without behavioural sections and with the behavioural mode at its default is
/// written in format 1, which agents from before those sections read; any other in format 2.
pub fn canonical_bytes(policy: &Policy) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    if format_of(policy) == 1 {
        postcard::to_stdvec(&v1::View::from(policy)).unwrap_or_default()
    } else {
        postcard::to_stdvec(policy).unwrap_or_default()
    }
}

/// The bundle format `policy` is written in: 3 if a mode is `enforce`, else 2 if it has
/// behavioural sections or a non-default behavioural mode, else 1.
pub fn format_of(policy: &Policy) -> u16 {
    let m = policy.modes;
    let enforces = [m.executables, m.network, m.files, m.behaviour].contains(&model::Mode::Enforce);
    if enforces {
        3
    } else if policy.behaviour.is_none() && policy.modes.behaviour == model::Mode::Alert {
        1
    } else {
        2
    }
}

/// Decodes canonical bytes of bundle format `format`, refusing trailing data, a non-canonical
/// order and a policy written in a format other than its own.
pub fn from_canonical_bytes(bytes: &[u8], format: u16) -> Result<Policy, String> {
    let (policy, rest): (Policy, &[u8]) = match format {
        1 => postcard::take_from_bytes::<v1::Owned>(bytes).map(|(p, rest)| (p.into(), rest)),
        2 | 3 => postcard::take_from_bytes(bytes),
        other => return Err(format!("policy format {other} is not known")),
    }
    .map_err(|e| format!("policy payload: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("policy payload has {} trailing bytes", rest.len()));
    }
    let canonical = canonicalize(policy.clone())?;
    if canonical != policy {
        return Err("policy payload is not in canonical order".into());
    }
    if format_of(&policy) != format {
        return Err(format!(
            "policy payload is in format {format} but needs format {}: not canonical",
            format_of(&policy)
        ));
    }
    Ok(policy)
}

/// Bundle format 1's policy: everything but the behavioural sections and mode.
mod v1 {
    use serde::{Deserialize, Serialize};

    use crate::model::{Executable, ExecutableGlob, Files, Metadata, Mode, Modes, Network, Policy};

    #[derive(Serialize, Deserialize)]
    struct ModesV1 {
        executables: Mode,
        network: Mode,
        files: Mode,
    }

    /// Borrowed, for writing.
    #[derive(Serialize)]
    pub struct View<'a> {
        metadata: &'a Metadata,
        modes: ModesV1,
        executables: &'a [Executable],
        executable_globs: &'a [ExecutableGlob],
        network: &'a Network,
        files: &'a Files,
    }

    impl<'a> From<&'a Policy> for View<'a> {
        fn from(p: &'a Policy) -> Self {
            View {
                metadata: &p.metadata,
                modes: ModesV1 {
                    executables: p.modes.executables,
                    network: p.modes.network,
                    files: p.modes.files,
                },
                executables: &p.executables,
                executable_globs: &p.executable_globs,
                network: &p.network,
                files: &p.files,
            }
        }
    }

    /// Owned, for reading.
    #[derive(Deserialize)]
    pub struct Owned {
        metadata: Metadata,
        modes: ModesV1,
        executables: Vec<Executable>,
        executable_globs: Vec<ExecutableGlob>,
        network: Network,
        files: Files,
    }

    impl From<Owned> for Policy {
        fn from(p: Owned) -> Self {
            Policy {
                metadata: p.metadata,
                modes: Modes {
                    executables: p.modes.executables,
                    network: p.modes.network,
                    files: p.modes.files,
                    behaviour: Mode::Alert,
                },
                executables: p.executables,
                executable_globs: p.executable_globs,
                network: p.network,
                files: p.files,
                behaviour: None,
            }
        }
    }
}

/// The policy as TOML, for people: sections with nothing in them are left out, but an empty
/// `[behaviour]`, which turns the behavioural checks on.
pub fn to_toml(policy: &Policy) -> String {
    let mut value = toml::Value::try_from(policy).unwrap_or(toml::Value::Table(Default::default()));
    prune_empty(&mut value);
    if let (Some(_), toml::Value::Table(table)) = (&policy.behaviour, &mut value) {
        table
            .entry("behaviour")
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    toml::to_string_pretty(&value).unwrap_or_default()
}

fn prune_empty(value: &mut toml::Value) {
    if let toml::Value::Table(table) = value {
        for (_, v) in table.iter_mut() {
            prune_empty(v);
        }
        table.retain(|_, v| match v {
            toml::Value::Array(a) => !a.is_empty(),
            toml::Value::Table(t) => !t.is_empty(),
            _ => true,
        });
    } else if let toml::Value::Array(items) = value {
        for v in items {
            prune_empty(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[metadata]
name = "test"
device_class = "gw"
serial = 3
created = "2026-11-22T10:00:00Z"

[[executable]]
path = "/usr/bin/b"
sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

[[executable]]
path = "/usr/bin/a"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

[[network.outbound]]
cidr = "10.0.0.0/8"
ports = 443

[[network.listen]]
port = 502
"#;

    #[test]
    fn order_does_not_change_the_canonical_bytes() {
        let a = load_toml(SMALL, "a.toml").unwrap();
        // Same policy, entries swapped.
        let swapped = SMALL
            .replacen("/usr/bin/b", "/usr/bin/TMP", 1)
            .replacen("/usr/bin/a", "/usr/bin/b", 1)
            .replacen("/usr/bin/TMP", "/usr/bin/a", 1)
            .replace("bbbb", "TTTT")
            .replace("aaaa", "bbbb")
            .replace("TTTT", "aaaa");
        let b = load_toml(&swapped, "b.toml").unwrap();
        assert_eq!(canonical_bytes(&a), canonical_bytes(&b));
        assert_eq!(a.executables[0].path.as_str(), "/usr/bin/a");
    }

    #[test]
    fn toml_round_trips() {
        let a = load_toml(SMALL, "a.toml").unwrap();
        let text = to_toml(&a);
        assert!(
            !text.contains("protected"),
            "empty sections are pruned:\n{text}"
        );
        let b = load_toml(&text, "shown.toml").unwrap();
        assert_eq!(a, b);
        assert_eq!(from_canonical_bytes(&canonical_bytes(&a), 1).unwrap(), a);
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let cases = [
            (
                "sha256 = \"bbbb",
                "sha256 = \"bb\"\n#",
                "line 10",
                "64 hex digits",
            ),
            ("ports = 443", "ports = 70000", "line 18", "over 65535"),
            (
                "cidr = \"10.0.0.0/8\"",
                "cidr = \"10.0.0.0/40\"",
                "line 17",
                "CIDR",
            ),
            (
                "serial = 3",
                "serial = 3\nseriall = 4",
                "line 6",
                "unknown field `seriall`",
            ),
        ];
        for (from, to, line, what) in cases {
            let text = SMALL.replacen(from, to, 1);
            let err = load_toml(&text, "p.toml").unwrap_err().to_string();
            assert!(err.starts_with("p.toml: "), "{err}");
            assert!(err.contains(line), "{what}: {err}");
            assert!(err.contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn contradictions_are_refused() {
        let text = format!(
            "{SMALL}\n[[executable]]\npath = \"/usr/bin/a\"\nsha256 = \"{}\"\n",
            "c".repeat(64)
        );
        let err = load_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("/usr/bin/a is listed twice"), "{err}");
    }

    #[test]
    fn globs_must_be_acknowledged_as_weak() {
        let text = format!("{SMALL}\n[[executable_glob]]\nglob = \"/opt/s/*.sh\"\nweak = false\n");
        let err = load_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("weak = true"), "{err}");
        let text = format!("{SMALL}\n[[executable_glob]]\nglob = \"/opt/s/*.sh\"\n");
        let err = load_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("missing field `weak`"), "{err}");
    }

    const BEHAVIOUR: &str = r#"
[behaviour]
interpreters = ["/usr/bin/python3*", "/usr/bin/dash"]

[[behaviour.lineage]]
parent = "/usr/sbin/cron"
child = "/etc/cron.daily/logrotate"

[[behaviour.sensitive]]
path = "/etc/shadow"
readers = ["/usr/bin/passwd", "/usr/sbin/sshd"]

[[behaviour.append_only]]
glob = "/var/log/*.log"
rotated_by = ["/usr/sbin/logrotate", "/usr/bin/savelog"]

[[behaviour.privileged]]
action = "module"
executable = "/usr/bin/kmod"
"#;

    #[test]
    fn behaviour_sections_load_round_trip_and_refuse_typos() {
        let text = format!("{SMALL}{BEHAVIOUR}");
        let p = load_toml(&text, "b.toml").unwrap();
        let b = p.behaviour.as_ref().unwrap();
        assert_eq!(b.interpreters.len(), 2);
        assert_eq!(b.append_only[0].rotated_by.len(), 2);
        assert_eq!(b.sensitive[0].readers.len(), 2);
        assert_eq!(b.privileged[0].action, model::Action::Module);
        assert_eq!(format_of(&p), 2);
        assert_eq!(load_toml(&to_toml(&p), "shown.toml").unwrap(), p);
        assert_eq!(from_canonical_bytes(&canonical_bytes(&p), 2).unwrap(), p);
        for (from, to, what) in [
            (
                "action = \"module\"",
                "action = \"modules\"",
                "unknown variant `modules`",
            ),
            ("rotated_by", "rotated", "unknown field `rotated`"),
            ("child = \"/etc", "child = \"etc", "not absolute"),
        ] {
            let bad = text.replacen(from, to, 1);
            let err = load_toml(&bad, "b.toml").unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        let twice = format!("{text}\n[[behaviour.append_only]]\nglob = \"/var/log/*.log\"\n");
        let err = load_toml(&twice, "b.toml").unwrap_err().to_string();
        assert!(err.contains("/var/log/*.log is listed twice"), "{err}");
        // An empty section is a section: it turns the checks on, and survives the round trip.
        let empty = load_toml(&format!("{SMALL}\n[behaviour]\n"), "e.toml").unwrap();
        assert_eq!(empty.behaviour, Some(model::Behaviour::default()));
        assert_eq!(format_of(&empty), 2);
        assert_eq!(load_toml(&to_toml(&empty), "shown.toml").unwrap(), empty);
        assert_eq!(load_toml(SMALL, "s.toml").unwrap().behaviour, None);
        let twice = format!("{text}\n[[behaviour.sensitive]]\npath = \"/etc/shadow\"\n");
        let err = load_toml(&twice, "b.toml").unwrap_err().to_string();
        assert!(err.contains("/etc/shadow is listed twice"), "{err}");
    }
}
