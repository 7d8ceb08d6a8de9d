//! The behavioural baseline: scripts judged like executables, which program starts which
//! (lineage), and files that may only grow.
//!
//! Lookups are hash maps keyed by canonical paths: lineage is one map of parents, each with the
//! set of its children, so a check costs two lookups whatever the number of pairs.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use picket_common::FileOp;
use picket_policy::model::Behaviour as Section;
use serde_json::json;

use super::{key, CanonGlob};
use crate::enrich::{
    process::{Ancestor, Image},
    script::Code,
};

/// The behavioural section made ready for per-event checks.
pub struct Behaviour {
    interpreters: Vec<CanonGlob>,
    /// Parent program → the programs it may start. Empty: lineage is not checked.
    lineage: HashMap<String, HashSet<String>>,
    append_only: Vec<(CanonGlob, HashSet<String>)>,
    /// Sensitive files as the policy names them → their readers, canonical.
    sensitive: HashMap<String, HashSet<String>>,
}

/// What an exec's lineage check found wrong.
pub struct Lineage {
    /// The child's program, in canonical form.
    pub child: String,
    pub details: serde_json::Value,
}

impl Behaviour {
    /// The checks of `section`; none without one.
    pub fn new(section: Option<&Section>) -> Self {
        let empty = Section::default();
        let section = section.unwrap_or(&empty);
        let mut lineage: HashMap<String, HashSet<String>> = HashMap::new();
        for pair in &section.lineage {
            lineage
                .entry(key(pair.parent.as_str()))
                .or_default()
                .insert(key(pair.child.as_str()));
        }
        Self {
            interpreters: section.interpreters.iter().map(CanonGlob::new).collect(),
            lineage,
            sensitive: section
                .sensitive
                .iter()
                .map(|s| {
                    let readers = s.readers.iter().map(|r| key(r.as_str())).collect();
                    (s.path.as_str().to_string(), readers)
                })
                .collect(),
            append_only: section
                .append_only
                .iter()
                .map(|a| {
                    let rotators = a.rotated_by.iter().map(|p| key(p.as_str())).collect();
                    (CanonGlob::new(&a.glob), rotators)
                })
                .collect(),
        }
    }

    /// Whether the policy names `exe` an interpreter.
    pub fn is_interpreter(&self, exe: &str) -> bool {
        let canonical = key(exe);
        self.interpreters.iter().any(|g| g.matches(exe, &canonical))
    }

    /// The script an interpreter the policy names runs, as an absolute path: to be judged like
    /// an executable.
    pub fn script<'a>(&self, exe: &str, image: &'a Image) -> Option<&'a Path> {
        match &image.code {
            Some(Code::Script(p)) if p.is_absolute() && self.is_interpreter(exe) => Some(p),
            _ => None,
        }
    }

    /// The lineage the baseline does not expect: `image` started by `parent` (its nearest
    /// ancestor). `None` when lineage is not checked, the pair is expected, or the parent is
    /// unknown (a process whose executable could not be read, a kernel thread).
    pub fn lineage<'a>(&self, image: &'a Image, parent: Option<&'a Ancestor>) -> Option<Lineage> {
        if self.lineage.is_empty() {
            return None;
        }
        let parent_program = live(&parent?.image.program()?)?;
        let child_program = live(&image.program()?)?;
        let (parent_key, child_key) = (key(&parent_program), key(&child_program));
        if self
            .lineage
            .get(&parent_key)
            .is_some_and(|children| children.contains(&child_key))
        {
            return None;
        }
        let mut details = json!({ "parent": parent_program, "child": child_program });
        if let Some(Code::Inline(how)) = &image.code {
            details["inline"] = json!(how.name());
        }
        Some(Lineage {
            child: child_key,
            details,
        })
    }

    /// The sensitive files, as the policy names them (the open listener watches them).
    pub fn sensitive_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.sensitive.keys().map(PathBuf::from).collect();
        files.sort();
        files
    }

    /// Whether the executable `reader` may read the sensitive file `path` (as the policy names
    /// it); `None` when `path` is not a sensitive file.
    pub fn may_read(&self, path: &str, reader: Option<&str>) -> Option<bool> {
        let readers = self.sensitive.get(path)?;
        Some(reader.is_some_and(|r| readers.contains(&key(r))))
    }

    /// Whether `op` on `path` (spelled `raw`, `canonical` in canonical form) by a process whose
    /// executable and ancestors' are `actors` breaks an append-only rule: a truncation, or the
    /// file renamed away or deleted, by a process neither named to rotate it nor started by
    /// one (logrotate's `gzip` removing an old log).
    pub fn append_only_broken<'a>(
        &self,
        op: FileOp,
        open_flags: u32,
        raw: &str,
        canonical: &str,
        actors: impl Iterator<Item = &'a Path>,
    ) -> bool {
        let shrinks = match op {
            FileOp::Truncate | FileOp::Unlink | FileOp::Rename => true,
            FileOp::Open => open_flags & libc::O_TRUNC as u32 != 0,
            _ => false,
        };
        if !shrinks {
            return false;
        }
        let mut matching = self
            .append_only
            .iter()
            .filter(|(glob, _)| glob.matches(raw, canonical))
            .peekable();
        if matching.peek().is_none() {
            return false;
        }
        let actors: Vec<String> = actors.filter_map(|a| a.to_str()).map(key).collect();
        matching.any(|(_, rotators)| !actors.iter().any(|a| rotators.contains(a)))
    }
}

/// A program's name as text, as lineage compares it: a program replaced on disk since it
/// started (an upgrade: `/usr/sbin/cron (deleted)`) is still that program. `None` for a name
/// that is not UTF-8, which no policy path can name.
fn live(program: &Path) -> Option<String> {
    Some(program.to_str()?.replacen(" (deleted)", "", 1))
}
