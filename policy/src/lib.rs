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
    sort_dedup(&mut p.executables);
    sort_dedup(&mut p.executable_globs);
    sort_dedup(&mut p.network.outbound);
    sort_dedup(&mut p.network.listen);
    sort_dedup(&mut p.files.protected);
    sort_dedup(&mut p.files.protected_glob);
    sort_dedup(&mut p.files.attributes);
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

/// The canonical binary form of a policy: what is signed.
pub fn canonical_bytes(policy: &Policy) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_stdvec(policy).unwrap_or_default()
}

/// Decodes canonical bytes, refusing trailing data and a non-canonical order.
pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Policy, String> {
    let (policy, rest): (Policy, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("policy payload: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("policy payload has {} trailing bytes", rest.len()));
    }
    let canonical = canonicalize(policy.clone())?;
    if canonical != policy {
        return Err("policy payload is not in canonical order".into());
    }
    Ok(policy)
}

/// The policy as TOML, for people: sections with nothing in them are left out.
pub fn to_toml(policy: &Policy) -> String {
    let mut value = toml::Value::try_from(policy).unwrap_or(toml::Value::Table(Default::default()));
    prune_empty(&mut value);
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
        assert_eq!(from_canonical_bytes(&canonical_bytes(&a)).unwrap(), a);
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
}
