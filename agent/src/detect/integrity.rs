//! Integrity scan: every protected file of the baseline hashed and stat'ed again, at start-up
//! (catching changes made while the agent was not running) and periodically.
//!
//! Files protected by a glob have no hash in the policy: their reference is what the agent saw
//! at its previous scan, kept in the state directory (`integrity.snapshot`). A glob scanned for
//! the first time is recorded without alerts (logged); after that, a new, missing or changed
//! file matching it is drift, and the snapshot moves to what was found.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use picket_policy::{
    model::{Attributes, Mode, ProtectedFile},
    Policy,
};
use serde_json::{json, Value};

use crate::{
    alert::{Draft, Kind, Severity},
    enrich::hash::HashCache,
};

/// Files matching each protected glob at the previous scan, with their SHA-256.
pub struct Snapshot {
    path: PathBuf,
    globs: BTreeMap<String, BTreeMap<String, [u8; 32]>>,
}

impl Snapshot {
    /// Loads the snapshot kept in `state_dir`; a missing or damaged one starts empty (the next
    /// scan records afresh, and says so).
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join("integrity.snapshot");
        let mut globs: BTreeMap<String, BTreeMap<String, [u8; 32]>> = BTreeMap::new();
        match fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    match parse_line(line) {
                        Some((glob, file, sha)) => {
                            globs.entry(glob).or_default().insert(file, sha);
                        }
                        None => {
                            log::warn!(
                                "{}:{}: damaged snapshot line, recording the globs afresh",
                                path.display(),
                                n + 1
                            );
                            globs.clear();
                            break;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "reading {}: {e}; recording the globs afresh",
                path.display()
            ),
        }
        Self { path, globs }
    }

    /// Scans every protected glob against the snapshot, updates it, and returns the drift.
    pub fn scan_globs(
        &mut self,
        policy: &Policy,
        mode: Mode,
        hashes: &mut HashCache,
    ) -> Vec<Draft> {
        let mut out = Vec::new();
        if mode == Mode::Off {
            return out;
        }
        let mut next = BTreeMap::new();
        for entry in &policy.files.protected_glob {
            let pattern = entry.glob.as_str();
            let now = match_files(pattern, hashes);
            match self.globs.get(pattern) {
                None => log::info!(
                    "first scan of protected glob {pattern}: {} files recorded",
                    now.len()
                ),
                Some(before) => {
                    let paths: BTreeSet<&String> = before.keys().chain(now.keys()).collect();
                    for path in paths {
                        let what = match (before.get(path), now.get(path)) {
                            (None, Some(_)) => "new file",
                            (Some(_), None) => "missing",
                            (Some(a), Some(b)) if a != b => "content",
                            _ => continue,
                        };
                        out.push(Draft {
                            kind: Kind::IntegrityDrift,
                            severity: Severity::High,
                            rule: format!("files.protected_glob {pattern}"),
                            path: Some(path.clone()),
                            details: json!({
                                "what": what,
                                "expected": before.get(path).map(|d| crate::paths::hex(d)),
                                "actual": now.get(path).map(|d| crate::paths::hex(d)),
                            }),
                            process: None,
                        });
                    }
                }
            }
            next.insert(pattern.to_string(), now);
        }
        if next != self.globs {
            self.globs = next;
            if let Err(e) = self.save() {
                log::error!("saving {}: {e}", self.path.display());
            }
        }
        out
    }

    fn save(&self) -> std::io::Result<()> {
        let mut text = String::new();
        for (glob, files) in &self.globs {
            for (file, sha) in files {
                text.push_str(&format!("{}\t{glob}\t{file}\n", crate::paths::hex(sha)));
            }
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
    }
}

/// `sha256<TAB>glob<TAB>path`.
fn parse_line(line: &str) -> Option<(String, String, [u8; 32])> {
    let mut parts = line.splitn(3, '\t');
    let sha: picket_policy::model::Sha256 = parts.next()?.parse().ok()?;
    let glob = parts.next()?.to_string();
    let file = parts.next()?.to_string();
    Some((glob, file, sha.0))
}

/// The regular files matching `pattern` now, with their SHA-256 (unreadable ones are left out:
/// they show as missing).
fn match_files(pattern: &str, hashes: &mut HashCache) -> BTreeMap<String, [u8; 32]> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let Ok(paths) = glob::glob_with(pattern, options) else {
        return BTreeMap::new();
    };
    paths
        .filter_map(Result::ok)
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .filter_map(|p| {
            let text = p.to_str()?.to_string();
            let sha = hashes.sha256(&p).ok()?;
            Some((text, sha))
        })
        .collect()
}

/// Compares every protected file with the baseline and returns one alert per difference;
/// nothing when the files category is `mode`d off.
pub fn scan(policy: &Policy, mode: Mode, hashes: &mut HashCache) -> Vec<Draft> {
    let mut out = Vec::new();
    if mode == Mode::Off {
        return out;
    }
    for entry in &policy.files.protected {
        check_protected(entry, hashes, &mut out);
    }
    for entry in &policy.files.attributes {
        check_attributes(entry, &mut out);
    }
    out
}

/// One `[[files.protected]]` entry: missing, content, owner, group and mode, each a drift.
fn check_protected(entry: &ProtectedFile, hashes: &mut HashCache, out: &mut Vec<Draft>) {
    let path = entry.path.as_str();
    let mut drift = |what: &str, expected: Value, actual: Value| {
        out.push(Draft {
            kind: Kind::IntegrityDrift,
            severity: Severity::High,
            rule: "files.protected".into(),
            path: Some(path.to_string()),
            details: json!({ "what": what, "expected": expected, "actual": actual }),
            process: None,
        });
    };
    if let Some(meta) = check_content(entry, hashes, &mut drift) {
        check_ownership(entry, &meta, &mut drift);
    }
}

/// A protected file's presence and content, each difference passed to `drift`; its attributes
/// when it is a regular file.
fn check_content(
    entry: &ProtectedFile,
    hashes: &mut HashCache,
    drift: &mut dyn FnMut(&str, Value, Value),
) -> Option<fs::Metadata> {
    let path = entry.path.as_str();
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            drift(
                "missing",
                json!(entry.sha256.to_string()),
                json!(e.to_string()),
            );
            return None;
        }
    };
    if !meta.is_file() {
        drift(
            "content",
            json!(entry.sha256.to_string()),
            json!("not a regular file"),
        );
        return None;
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
    Some(meta)
}

/// A protected file's owner, group and mode, each difference passed to `drift`.
fn check_ownership(
    entry: &ProtectedFile,
    meta: &fs::Metadata,
    drift: &mut dyn FnMut(&str, Value, Value),
) {
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

/// One `[[files.attributes]]` entry: owner, group and mode of a path that exists, each a drift.
fn check_attributes(entry: &Attributes, out: &mut Vec<Draft>) {
    let path = entry.path.as_str();
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_snapshot_reports_new_missing_and_changed_files_once() {
        let dir = std::env::temp_dir().join(format!("picket-integrity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let watched = dir.join("initd");
        fs::create_dir_all(&watched).unwrap();
        fs::write(watched.join("a"), "a").unwrap();
        fs::write(watched.join("b"), "b").unwrap();
        let policy = picket_policy::load_toml(
            &format!(
                "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
                 created = \"2026-11-22T10:00:00Z\"\n[[files.protected_glob]]\nglob = \"{}/*\"\n",
                watched.display()
            ),
            "t.toml",
        )
        .unwrap();
        let mut hashes = HashCache::new(16);
        let mut snap = Snapshot::load(&dir);
        assert!(snap
            .scan_globs(&policy, Mode::Alert, &mut hashes)
            .is_empty());
        // Changes made while "stopped": a fresh snapshot from disk sees them.
        fs::write(watched.join("c"), "new").unwrap();
        fs::remove_file(watched.join("b")).unwrap();
        fs::write(watched.join("a"), "changed").unwrap();
        let mut snap = Snapshot::load(&dir);
        let mut found: Vec<(String, String)> = snap
            .scan_globs(&policy, Mode::Alert, &mut hashes)
            .into_iter()
            .map(|d| {
                (
                    d.path.unwrap(),
                    d.details["what"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        found.sort();
        let p = |n: &str| watched.join(n).display().to_string();
        assert_eq!(
            found,
            vec![
                (p("a"), "content".to_string()),
                (p("b"), "missing".to_string()),
                (p("c"), "new file".to_string()),
            ]
        );
        // Reported once: the snapshot now holds what was found.
        assert!(snap
            .scan_globs(&policy, Mode::Alert, &mut hashes)
            .is_empty());
        fs::write(dir.join("integrity.snapshot"), "garbage\n").unwrap();
        assert!(Snapshot::load(&dir).globs.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
