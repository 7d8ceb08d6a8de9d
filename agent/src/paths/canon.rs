//! Canonical paths: one spelling for every name a file has through directory symbolic links.
//!
//! On a merged-/usr system `/lib/systemd/system/x` and `/usr/lib/systemd/system/x` are one file,
//! as are `/bin/sh` and `/usr/bin/sh`. The canonical form of an absolute, normalised path has
//! its parent directory resolved (every symbolic link on the way followed) and its last
//! component kept as it is: a symbolic link to a file is a different name, not a different
//! spelling of the same directory entry. Policy entries and events are both compared in this
//! form, so one spelling in a policy covers every spelling on the device.
//!
//! Each parent directory is resolved once (`fs::canonicalize`) and kept in a bounded cache:
//! the per-event cost is a hash lookup, not a syscall. A directory that does not exist (yet, or
//! any more) is its parent's canonical form with its own name, so a path under a directory
//! created later resolves the same way then as now.
//!
//! Staleness: the cache holds what the directory tree looked like when a directory was first
//! seen. A change that can alter a resolution empties it, and the next lookups resolve again:
//! the detector calls [`invalidate`] for every symbolic link created and [`forget`] for every
//! rename or removed directory (which empties the cache when the name is a directory it holds;
//! renames of files, which are frequent, cost a lookup). Between such a change and its event
//! being handled, a lookup can still give the old resolution. The cache
//! is emptied as well when it reaches its capacity ([`CAPACITY`] directories), which bounds its
//! memory whatever the events name.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{LazyLock, Mutex, MutexGuard},
};

/// Directories kept in the shared cache before it is emptied.
pub const CAPACITY: usize = 4096;

/// The cache every caller of [`canonical`] shares (the detector and the enricher).
static SHARED: LazyLock<Canon> = LazyLock::new(|| Canon::new(CAPACITY));

/// The canonical form of `path` (see the module documentation), through the shared cache.
pub fn canonical(path: &Path) -> Cow<'_, Path> {
    SHARED.path(path)
}

/// The canonical form of the directory `dir` itself (its last component resolved too),
/// through the shared cache.
pub fn canonical_dir(dir: &Path) -> Cow<'_, Path> {
    SHARED.dir_path(dir)
}

/// Forgets every resolution of the shared cache: to be called when a symbolic link is created
/// or a directory renamed, since either can change what a directory resolves to.
pub fn invalidate() {
    SHARED.clear();
}

/// Forgets the shared cache's resolutions when `dir` is one of the directories it holds (a
/// directory renamed or removed): cheaper than [`invalidate`] on every rename of a file.
pub fn forget(dir: &Path) {
    SHARED.forget(dir);
}

/// A cache of directory resolutions.
pub struct Canon {
    /// Each directory looked up, with its canonical form when that differs from it.
    dirs: Mutex<HashMap<PathBuf, Option<PathBuf>>>,
    capacity: usize,
}

impl Canon {
    /// An empty cache holding at most `capacity` directories.
    pub fn new(capacity: usize) -> Self {
        Self {
            dirs: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The canonical form of the absolute, normalised `path`: its parent resolved, its last
    /// component kept. Anything else (a relative path, `/`) is returned as it is.
    pub fn path<'a>(&self, path: &'a Path) -> Cow<'a, Path> {
        if !path.is_absolute() {
            return Cow::Borrowed(path);
        }
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => match self.dir(parent) {
                Some(dir) => Cow::Owned(dir.join(name)),
                None => Cow::Borrowed(path),
            },
            _ => Cow::Borrowed(path),
        }
    }

    /// The canonical form of the absolute, normalised directory `dir`, its last component
    /// resolved too.
    pub fn dir_path<'a>(&self, dir: &'a Path) -> Cow<'a, Path> {
        if !dir.is_absolute() {
            return Cow::Borrowed(dir);
        }
        match self.dir(dir) {
            Some(c) => Cow::Owned(c),
            None => Cow::Borrowed(dir),
        }
    }

    /// Empties the cache.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Empties the cache if it holds `dir`: what resolved through it may have changed.
    pub fn forget(&self, dir: &Path) {
        let mut dirs = self.lock();
        if dirs.contains_key(dir) {
            dirs.clear();
        }
    }

    /// How many directories the cache holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Option<PathBuf>>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The canonical form of the absolute directory `dir`, `None` when it is `dir` itself.
    fn dir(&self, dir: &Path) -> Option<PathBuf> {
        // `/` is itself.
        dir.parent()?;
        if let Some(known) = self.lock().get(dir) {
            return known.clone();
        }
        // Not under the lock: resolving may take syscalls, and recurses for a missing one.
        let resolved = self.resolve(dir);
        let mut dirs = self.lock();
        if dirs.len() >= self.capacity {
            dirs.clear();
        }
        dirs.insert(dir.to_path_buf(), resolved.clone());
        resolved
    }

    fn resolve(&self, dir: &Path) -> Option<PathBuf> {
        match fs::canonicalize(dir) {
            Ok(c) => (c != dir).then_some(c),
            // Missing (or not reachable): where it would be, from its parent.
            Err(_) => match (dir.parent(), dir.file_name()) {
                (Some(parent), Some(name)) => self.dir(parent).map(|p| p.join(name)),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .canonicalize()
            .unwrap()
            .join(format!("picket-canon-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("real/sub")).unwrap();
        symlink(dir.join("real"), dir.join("link")).unwrap();
        symlink("sub", dir.join("real/rel")).unwrap();
        fs::write(dir.join("real/f"), "f").unwrap();
        symlink("f", dir.join("real/flink")).unwrap();
        dir
    }

    #[test]
    fn resolves_directory_links_but_not_the_last_component() {
        let dir = tempdir("resolve");
        let c = Canon::new(16);
        let p = |s: &str| dir.join(s);
        assert_eq!(c.path(&p("link/f")), p("real/f"));
        assert_eq!(c.path(&p("real/f")), p("real/f"));
        assert!(matches!(c.path(&p("real/f")), Cow::Borrowed(_)));
        // A relative link, and a link under a link.
        assert_eq!(c.path(&p("real/rel/x")), p("real/sub/x"));
        assert_eq!(c.path(&p("link/rel/x")), p("real/sub/x"));
        // A link to a file is a name of its own.
        assert_eq!(c.path(&p("link/flink")), p("real/flink"));
        // The directory itself, resolved.
        assert_eq!(c.dir_path(&p("link")), p("real"));
        // Missing directories resolve through the parent that exists.
        assert_eq!(c.path(&p("link/new/deeper/x")), p("real/new/deeper/x"));
        assert_eq!(c.path(Path::new("/")), Path::new("/"));
        assert_eq!(c.path(Path::new("rel/x")), Path::new("rel/x"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_is_bounded_and_can_be_invalidated() {
        let dir = tempdir("cache");
        let c = Canon::new(4);
        for i in 0..10 {
            c.path(&dir.join(format!("real/d{i}/x")));
            assert!(c.len() <= 4, "{}", c.len());
        }
        // A resolution cached before a change is kept until invalidated.
        let seen = c.path(&dir.join("moved/x")).into_owned();
        assert_eq!(seen, dir.join("moved/x"));
        symlink(dir.join("real"), dir.join("moved")).unwrap();
        assert_eq!(c.path(&dir.join("moved/x")), seen);
        // Renaming a file it does not hold keeps it; a directory it holds empties it.
        c.forget(&dir.join("real/f"));
        assert!(!c.is_empty());
        c.forget(&dir.join("moved"));
        assert!(c.is_empty());
        assert_eq!(c.path(&dir.join("moved/x")), dir.join("real/x"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn merged_usr_spellings_meet() {
        // This machine is merged-/usr when /lib is a link; both spellings then resolve alike.
        if fs::symlink_metadata("/lib").is_ok_and(|m| m.file_type().is_symlink()) {
            assert_eq!(
                canonical(Path::new("/lib/x")),
                canonical(Path::new("/usr/lib/x"))
            );
        }
    }
}
