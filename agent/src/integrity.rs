//! Integrity scan: every protected file of the baseline hashed and stat'ed again, at start-up
//! (catching changes made while the agent was not running) and periodically.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

use picket_policy::{model::Mode, Policy};
use serde_json::json;

use crate::{
    alert::{Draft, Kind, Severity},
    hash::HashCache,
};

/// Compares every protected file with the baseline and returns one alert per difference;
/// nothing when the files category is `mode`d off.
pub fn scan(policy: &Policy, mode: Mode, hashes: &mut HashCache) -> Vec<Draft> {
    let mut out = Vec::new();
    if mode == Mode::Off {
        return out;
    }
    for entry in &policy.files.protected {
        let path = entry.path.as_str();
        let mut drift = |what: &str, expected: serde_json::Value, actual: serde_json::Value| {
            out.push(Draft {
                kind: Kind::IntegrityDrift,
                severity: Severity::High,
                rule: "files.protected".into(),
                path: Some(path.to_string()),
                details: json!({ "what": what, "expected": expected, "actual": actual }),
                process: None,
            });
        };
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                drift(
                    "missing",
                    json!(entry.sha256.to_string()),
                    json!(e.to_string()),
                );
                continue;
            }
        };
        if !meta.is_file() {
            drift(
                "content",
                json!(entry.sha256.to_string()),
                json!("not a regular file"),
            );
            continue;
        }
        match hashes.sha256(Path::new(path)) {
            Ok(actual) if actual != entry.sha256.0 => drift(
                "content",
                json!(entry.sha256.to_string()),
                json!(crate::paths::hex(&actual)),
            ),
            Ok(_) => {}
            Err(e) => drift(
                "content",
                json!(entry.sha256.to_string()),
                json!(e.to_string()),
            ),
        }
        if let Some(owner) = entry.owner.filter(|o| *o != meta.uid()) {
            drift("owner", json!(owner), json!(meta.uid()));
        }
        if let Some(group) = entry.group.filter(|g| *g != meta.gid()) {
            drift("group", json!(group), json!(meta.gid()));
        }
        if let Some(mode) = entry.mode.filter(|m| m.0 != meta.mode() & 0o7777) {
            drift(
                "mode",
                json!(format!("{:04o}", mode.0)),
                json!(format!("{:04o}", meta.mode() & 0o7777)),
            );
        }
    }
    for entry in &policy.files.attributes {
        let path = entry.path.as_str();
        let Ok(meta) = fs::symlink_metadata(path) else {
            continue;
        };
        let checks = [
            ("owner", entry.owner, meta.uid()),
            ("group", entry.group, meta.gid()),
            ("mode", entry.mode.map(|m| m.0), meta.mode() & 0o7777),
        ];
        for (what, expected, actual) in checks {
            if let Some(expected) = expected.filter(|e| *e != actual) {
                out.push(Draft {
                    kind: Kind::IntegrityDrift,
                    severity: Severity::Medium,
                    rule: "files.attributes".into(),
                    path: Some(path.to_string()),
                    details: json!({ "what": what, "expected": expected, "actual": actual }),
                    process: None,
                });
            }
        }
    }
    out
}
