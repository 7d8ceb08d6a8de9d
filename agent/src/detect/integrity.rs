//! Integrity scan: every protected file of the baseline hashed and stat'ed again, at start-up
//! (catching changes made while the agent was not running) and periodically.
//!
//! Files protected by a glob have no hash in the policy: their reference is what the agent saw
//! at its previous scan, kept in the state directory (`integrity.snapshot`). A glob scanned for
//! the first time is recorded without alerts (logged); after that, a new, missing or changed
//! file matching it is drift, and the snapshot moves to what was found.
//!
//! `**` matches files at any depth, in the scan as in the events' matcher: a trailing `/**`
//! is walked as `/**/*` (the walk's own `**` yields directories only). Directory links on the
//! way are followed, so a glob or a protected path behind one (`/lib/...` on a merged-/usr
//! system) is scanned where it leads; files are recorded under the glob's spelling.
//!
//! The snapshot file is versioned. Version 2 (a `# picket integrity snapshot 2` first line)
//! has a `glob<TAB>pattern` line for every glob scanned, even one that matched nothing, then a
//! `sha256<TAB>pattern<TAB>path` line per file: a glob that matched nothing and now matches a
//! file reports it as new. A file without that first line is version 1, written by earlier
//! agents, which listed files only: a glob without files there (every `/**` glob, which the
//! earlier walk recorded empty) is a first scan on the next start, recorded without alerts, and
//! the file is rewritten as version 2.

use std::{
    borrow::Cow,
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
    /// Whether the file read was an earlier version, to be rewritten.
    outdated: bool,
}

/// The first line of a version 2 snapshot.
const HEADER_V2: &str = "# picket integrity snapshot 2";

impl Snapshot {
    /// Loads the snapshot kept in `state_dir`; a missing or damaged one starts empty (the next
    /// scan records afresh, and says so).
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join("integrity.snapshot");
        let mut globs: BTreeMap<String, BTreeMap<String, [u8; 32]>> = BTreeMap::new();
        let mut outdated = false;
        match fs::read_to_string(&path) {
            Ok(text) => {
                outdated = text.lines().next() != Some(HEADER_V2);
                let lines = text.lines().enumerate().skip(usize::from(!outdated));
                for (n, line) in lines {
                    match parse_line(line) {
                        Some(Line::Glob(glob)) if !outdated => {
                            globs.entry(glob).or_default();
                        }
                        Some(Line::File(glob, file, sha)) => {
                            globs.entry(glob).or_default().insert(file, sha);
                        }
                        _ => {
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
        Self {
            path,
            globs,
            outdated,
        }
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
        if next != self.globs || self.outdated {
            self.globs = next;
            self.outdated = false;
            if let Err(e) = self.save() {
                // A full or read-only state directory: saved again at the next scan.
                log::error!(
                    "saving {}: {e}; tried again at the next scan",
                    self.path.display()
                );
                self.outdated = true;
            }
        }
        out
    }

    fn save(&self) -> std::io::Result<()> {
        let mut text = format!("{HEADER_V2}\n");
        for (glob, files) in &self.globs {
            text.push_str(&format!("glob\t{glob}\n"));
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

/// One line of a snapshot.
enum Line {
    /// `glob<TAB>pattern`: the glob was scanned (version 2).
    Glob(String),
    /// `sha256<TAB>glob<TAB>path`.
    File(String, String, [u8; 32]),
}

fn parse_line(line: &str) -> Option<Line> {
    if let Some(glob) = line.strip_prefix("glob\t") {
        return Some(Line::Glob(glob.to_string()));
    }
    let mut parts = line.splitn(3, '\t');
    let sha: picket_policy::model::Sha256 = parts.next()?.parse().ok()?;
    let glob = parts.next()?.to_string();
    let file = parts.next()?.to_string();
    Some(Line::File(glob, file, sha.0))
}

/// The pattern walked for the policy's `pattern`: a trailing `**` becomes `**/*`, since the
/// walk's `**` yields directories only while the policy means every file below.
fn walk_pattern(pattern: &str) -> Cow<'_, str> {
    if pattern.ends_with("/**") {
        Cow::Owned(format!("{pattern}/*"))
    } else {
        Cow::Borrowed(pattern)
    }
}

/// The regular files matching `pattern` now, with their SHA-256 (unreadable ones are left out:
/// they show as missing).
fn match_files(pattern: &str, hashes: &mut HashCache) -> BTreeMap<String, [u8; 32]> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let Ok(paths) = glob::glob_with(&walk_pattern(pattern), options) else {
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

    #[test]
    fn a_snapshot_that_cannot_be_saved_is_saved_at_the_next_scan() {
        let dir = tempdir("unsaved");
        let watched = dir.join("fw");
        fs::create_dir_all(&watched).unwrap();
        fs::write(watched.join("a"), "1").unwrap();
        let policy = glob_policy(&format!("{}/*", watched.display()));
        let mut hashes = HashCache::new(16);
        let mut snap = Snapshot::load(&dir);
        // The temporary file cannot be created (a directory in its place: the save fails as
        // on a full or read-only state directory, even for root).
        let tmp = dir.join("integrity.tmp");
        fs::create_dir(&tmp).unwrap();
        assert!(snap
            .scan_globs(&policy, Mode::Alert, &mut hashes)
            .is_empty());
        assert!(!dir.join("integrity.snapshot").exists());
        // Nothing changed since, and the snapshot is written at the next scan all the same:
        // a restart compares with what was last seen, not with an older snapshot.
        fs::remove_dir(&tmp).unwrap();
        assert!(snap
            .scan_globs(&policy, Mode::Alert, &mut hashes)
            .is_empty());
        let saved = Snapshot::load(&dir);
        assert_eq!(saved.globs, snap.globs);
        assert_eq!(saved.globs.values().map(BTreeMap::len).sum::<usize>(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn glob_policy(pattern: &str) -> Policy {
        picket_policy::load_toml(
            &format!(
                "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
                 created = \"2026-11-22T10:00:00Z\"\n[[files.protected_glob]]\nglob = \"{pattern}\"\n"
            ),
            "t.toml",
        )
        .unwrap()
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("picket-integrity-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_double_star_glob_records_files_at_any_depth_as_the_event_matcher_does() {
        let dir = tempdir("doublestar");
        let watched = dir.join("fw");
        fs::create_dir_all(watched.join("a/b")).unwrap();
        fs::write(watched.join("top"), "1").unwrap();
        fs::write(watched.join("a/mid"), "2").unwrap();
        fs::write(watched.join("a/b/.deep"), "3").unwrap();
        let pattern = format!("{}/**", watched.display());
        let mut hashes = HashCache::new(16);
        let found: Vec<String> = match_files(&pattern, &mut hashes).into_keys().collect();
        let p = |n: &str| watched.join(n).display().to_string();
        assert_eq!(found, vec![p("a/b/.deep"), p("a/mid"), p("top")]);
        // The policy's matcher, used for events, takes the same files, and not the directory.
        let glob: picket_policy::model::Glob = pattern.parse().unwrap();
        for f in &found {
            assert!(glob.matches(f), "{f}");
        }
        assert!(!glob.matches(&format!("{}x/y", watched.display())));
        // A single star stays in its directory.
        let one = match_files(&format!("{}/*", watched.display()), &mut hashes);
        assert_eq!(one.into_keys().collect::<Vec<_>>(), vec![p("top")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drift_under_a_double_star_glob_is_reported_once() {
        let dir = tempdir("doublestar-drift");
        let watched = dir.join("fw");
        fs::create_dir_all(watched.join("a")).unwrap();
        fs::write(watched.join("a/blob"), "1").unwrap();
        let policy = glob_policy(&format!("{}/**", watched.display()));
        let mut hashes = HashCache::new(16);
        let scan =
            |hashes: &mut HashCache| Snapshot::load(&dir).scan_globs(&policy, Mode::Alert, hashes);
        assert!(scan(&mut hashes).is_empty(), "first scan: recorded");
        assert!(scan(&mut hashes).is_empty(), "nothing changed");
        fs::write(watched.join("a/blob"), "2").unwrap();
        fs::create_dir_all(watched.join("b")).unwrap();
        fs::write(watched.join("b/new"), "n").unwrap();
        let mut found: Vec<(String, String)> = scan(&mut hashes)
            .into_iter()
            .map(|d| (d.path.unwrap(), d.details["what"].as_str().unwrap().into()))
            .collect();
        found.sort();
        let p = |n: &str| watched.join(n).display().to_string();
        assert_eq!(
            found,
            vec![
                (p("a/blob"), "content".into()),
                (p("b/new"), "new file".into())
            ]
        );
        assert!(scan(&mut hashes).is_empty(), "reported once");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_glob_that_matched_nothing_reports_its_first_file() {
        let dir = tempdir("empty");
        let watched = dir.join("keys");
        fs::create_dir_all(&watched).unwrap();
        let policy = glob_policy(&format!("{}/*", watched.display()));
        let mut hashes = HashCache::new(16);
        assert!(Snapshot::load(&dir)
            .scan_globs(&policy, Mode::Alert, &mut hashes)
            .is_empty());
        fs::write(watched.join("authorized_keys"), "k").unwrap();
        let drift = Snapshot::load(&dir).scan_globs(&policy, Mode::Alert, &mut hashes);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(drift[0].details["what"], "new file");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_earlier_snapshot_without_a_double_star_glob_is_a_first_scan() {
        let dir = tempdir("upgrade");
        let watched = dir.join("fw");
        fs::create_dir_all(watched.join("a")).unwrap();
        fs::write(watched.join("a/blob"), "1").unwrap();
        fs::write(watched.join("top"), "t").unwrap();
        let star = format!("{}/*", watched.display());
        let double = format!("{}/**", watched.display());
        let policy = picket_policy::load_toml(
            &format!(
                "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
                 created = \"2026-11-22T10:00:00Z\"\n[[files.protected_glob]]\nglob = \"{star}\"\n\
                 [[files.protected_glob]]\nglob = \"{double}\"\n"
            ),
            "t.toml",
        )
        .unwrap();
        let mut hashes = HashCache::new(16);
        // As an earlier agent wrote it: no header, the `/*` glob's file, nothing for `/**`.
        let top = crate::paths::hex(&hashes.sha256(&watched.join("top")).unwrap());
        fs::write(
            dir.join("integrity.snapshot"),
            format!("{top}\t{star}\t{}/top\n", watched.display()),
        )
        .unwrap();
        let drift = Snapshot::load(&dir).scan_globs(&policy, Mode::Alert, &mut hashes);
        assert!(drift.is_empty(), "{drift:?}");
        let text = fs::read_to_string(dir.join("integrity.snapshot")).unwrap();
        assert!(text.starts_with(HEADER_V2), "{text}");
        assert!(text.contains(&format!("glob\t{double}\n")), "{text}");
        // From now on, changes under either glob are drift.
        fs::write(watched.join("a/blob"), "2").unwrap();
        let drift = Snapshot::load(&dir).scan_globs(&policy, Mode::Alert, &mut hashes);
        assert_eq!(drift.len(), 1, "{drift:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn globs_and_protected_files_behind_a_directory_link_are_scanned() {
        let dir = tempdir("behind-link");
        fs::create_dir_all(dir.join("usr/lib/unit")).unwrap();
        fs::write(dir.join("usr/lib/unit/a.service"), "a").unwrap();
        std::os::unix::fs::symlink("usr/lib", dir.join("lib")).unwrap();
        let state = dir.join("state");
        fs::create_dir_all(&state).unwrap();
        let through = dir.join("lib/unit");
        let policy = glob_policy(&format!("{}/*", through.display()));
        let mut hashes = HashCache::new(16);
        let found = match_files(&format!("{}/*", through.display()), &mut hashes);
        assert_eq!(
            found.into_keys().collect::<Vec<_>>(),
            vec![through.join("a.service").display().to_string()]
        );
        assert!(Snapshot::load(&state)
            .scan_globs(&policy, Mode::Alert, &mut hashes)
            .is_empty());
        fs::write(dir.join("usr/lib/unit/a.service"), "changed").unwrap();
        let drift = Snapshot::load(&state).scan_globs(&policy, Mode::Alert, &mut hashes);
        assert_eq!(drift.len(), 1, "{drift:?}");
        // A protected file named through the link is checked where it leads.
        let sha = crate::paths::hex(&hashes.sha256(&through.join("a.service")).unwrap());
        let policy = picket_policy::load_toml(
            &format!(
                "[metadata]\nname = \"t\"\ndevice_class = \"c\"\nserial = 1\n\
                 created = \"2026-11-22T10:00:00Z\"\n[[files.protected]]\npath = \"{}\"\n\
                 sha256 = \"{sha}\"\n",
                through.join("a.service").display()
            ),
            "t.toml",
        )
        .unwrap();
        assert!(scan(&policy, Mode::Alert, &mut hashes).is_empty());
        fs::write(dir.join("usr/lib/unit/a.service"), "again").unwrap();
        let drift = scan(&policy, Mode::Alert, &mut HashCache::new(16));
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(drift[0].details["what"], "content");
        fs::remove_dir_all(&dir).unwrap();
    }
}
