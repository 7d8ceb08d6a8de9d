//! The walk of a root filesystem: which files the baseline records, found on one thread.
//!
//! Symbolic links are never followed by the walk (a link in an image's rootfs points into the
//! build host; protected paths are resolved inside the root beforehand, see
//! [`resolve_protected`]),
//! excluded paths are not entered, and paths are kept as the device will see them: relative to
//! the root, made absolute. Hard links to one inode are grouped so the content is read once
//! (busybox-style systems can have hundreds of names for one binary), yet every name is listed,
//! since any of them can be executed.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::Context;
use picket_policy::model::AbsPath;

/// Which paths are recorded and which are not walked, both as on the device.
pub struct Rules {
    pub protected: Vec<PathBuf>,
    pub excluded: Vec<PathBuf>,
}

impl Rules {
    fn is_protected(&self, device_path: &Path) -> bool {
        // `Path::starts_with` compares whole components: `/etc` covers `/etc/x`, not `/etcx`.
        self.protected.iter().any(|p| device_path.starts_with(p))
    }

    fn is_excluded(&self, device_path: &Path) -> bool {
        self.excluded.iter().any(|p| device_path.starts_with(p))
    }
}

/// One inode to hash, with every recorded name it has.
#[derive(Debug)]
pub struct Found {
    /// Where to open it on this machine (its first name).
    pub host_path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub names: Vec<Name>,
}

/// One recorded name of a file.
#[derive(Debug)]
pub struct Name {
    pub path: AbsPath,
    /// Under a protected path (so listed in `[[files.protected]]` whatever its mode).
    pub protected: bool,
}

/// Something the policy will not list, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// The device path, as raw bytes (it may not be UTF-8).
    pub path: Vec<u8>,
    pub reason: String,
}

impl Skipped {
    pub fn new(path: &Path, reason: impl Into<String>) -> Self {
        Self {
            path: path.as_os_str().as_bytes().to_vec(),
            reason: reason.into(),
        }
    }
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Walked {
    pub files: Vec<Found>,
    pub skipped: Vec<Skipped>,
    /// Directory entries looked at, for progress.
    pub entries: u64,
}

/// Walks `root`, calling `progress` with the number of entries seen so far after each directory.
///
/// Fails only when the root itself cannot be listed; anything below it that cannot be read is
/// noted in [`Walked::skipped`].
pub fn walk(root: &Path, rules: &Rules, progress: &mut dyn FnMut(u64)) -> anyhow::Result<Walked> {
    let mut out = Walked::default();
    let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
    // Depth-first with an explicit stack: a deep tree cannot overflow the thread's stack.
    let mut stack = vec![(root.to_path_buf(), PathBuf::from("/"))];
    while let Some((host_dir, device_dir)) = stack.pop() {
        let entries = match fs::read_dir(&host_dir) {
            Ok(entries) => entries,
            Err(e) if device_dir == Path::new("/") => {
                return Err(e).with_context(|| format!("listing scan root {}", root.display()))
            }
            Err(e) => {
                out.skipped.push(Skipped::new(
                    &device_dir,
                    format!("cannot list directory: {e}"),
                ));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    out.skipped.push(Skipped::new(
                        &device_dir,
                        format!("cannot list directory: {e}"),
                    ));
                    break;
                }
            };
            out.entries += 1;
            let device_path = device_dir.join(entry.file_name());
            if rules.is_excluded(&device_path) {
                continue;
            }
            match classify(&entry, device_path, rules) {
                Ok(Entry::Dir(device_path)) => stack.push((entry.path(), device_path)),
                Ok(Entry::File(meta, name)) => record(&mut out, &mut by_inode, &entry, &meta, name),
                Ok(Entry::Ignored) => {}
                Err(skipped) => out.skipped.push(skipped),
            }
        }
        progress(out.entries);
    }
    Ok(out)
}

/// What one directory entry is to the walk.
enum Entry {
    /// A directory to enter, with its device path.
    Dir(PathBuf),
    /// A file to record under this name.
    File(fs::Metadata, Name),
    /// Nothing to record: not a regular file, or neither executable nor protected.
    Ignored,
}

/// Looks at one (not excluded) directory entry without following links; what cannot be
/// recorded is an `Err` with the reason.
fn classify(entry: &fs::DirEntry, device_path: PathBuf, rules: &Rules) -> Result<Entry, Skipped> {
    // Both calls use the directory entry itself (lstat): links are not followed.
    let file_type = entry
        .file_type()
        .map_err(|e| Skipped::new(&device_path, format!("cannot stat: {e}")))?;
    if file_type.is_dir() {
        return Ok(Entry::Dir(device_path));
    }
    // Symbolic links are not entries: their targets are listed where they live. FIFOs,
    // sockets and device nodes have no content to hash.
    if !file_type.is_file() {
        return Ok(Entry::Ignored);
    }
    let meta = entry
        .metadata()
        .map_err(|e| Skipped::new(&device_path, format!("cannot stat: {e}")))?;
    let executable = meta.mode() & 0o111 != 0;
    let protected = rules.is_protected(&device_path);
    if !executable && !protected {
        return Ok(Entry::Ignored);
    }
    let Some(text) = device_path.to_str() else {
        return Err(Skipped::new(
            &device_path,
            "name is not valid UTF-8 (policy paths are UTF-8)",
        ));
    };
    let path = text
        .parse::<AbsPath>()
        .map_err(|e| Skipped::new(&device_path, e))?;
    Ok(Entry::File(meta, Name { path, protected }))
}

/// Adds a name to the file found for its inode, or the file itself when its inode is new.
fn record(
    out: &mut Walked,
    by_inode: &mut HashMap<(u64, u64), usize>,
    entry: &fs::DirEntry,
    meta: &fs::Metadata,
    name: Name,
) {
    let key = (meta.dev(), meta.ino());
    if let Some(&i) = by_inode.get(&key) {
        out.files[i].names.push(name);
        return;
    }
    by_inode.insert(key, out.files.len());
    out.files.push(Found {
        host_path: entry.path(),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        names: vec![name],
    });
}

/// The configured protected paths as the walk finds them, with notes about those that will
/// protect nothing (missing, excluded, or leading nowhere).
///
/// The walk never follows links, so a protected path behind a directory link (with merged
/// /usr, `/lib/firmware` is really `/usr/lib/firmware`) is resolved here, once, inside the scan
/// root: its files are then recorded under the path they have there, the canonical path, which
/// the agent compares every spelling of an event with.
pub fn resolve_protected(
    root: &Path,
    configured: &[PathBuf],
    excluded: &[PathBuf],
) -> (Vec<PathBuf>, Vec<Skipped>) {
    let mut protected = Vec::new();
    let mut notes = Vec::new();
    let is_excluded = |p: &Path| excluded.iter().any(|e| p.starts_with(e));
    for p in configured {
        if is_excluded(p) {
            notes.push(Skipped::new(p, "protected path is excluded from the scan"));
            continue;
        }
        match resolve_under(root, p) {
            Ok((resolved, _)) if is_excluded(&resolved) => notes.push(Skipped::new(
                p,
                format!(
                    "protected path is {}, which is excluded from the scan",
                    display(resolved.as_os_str().as_bytes())
                ),
            )),
            Ok((resolved, true)) => {
                if resolved != *p {
                    log::info!(
                        "protected path {} is {} under the scan root: recorded there",
                        display(p.as_os_str().as_bytes()),
                        display(resolved.as_os_str().as_bytes())
                    );
                }
                protected.push(resolved);
            }
            Ok((_, false)) => notes.push(Skipped::new(
                p,
                "protected path does not exist under the scan root",
            )),
            Err(reason) => notes.push(Skipped::new(p, reason)),
        }
    }
    (protected, notes)
}

/// At most this many links are followed resolving one path, as the kernel does (`ELOOP`).
const MAX_LINKS: usize = 40;

/// `device_path` with every symbolic link on the way followed inside `root`, as if `root` were
/// `/` (an absolute target starts again at the root, `..` stops there): nothing outside the
/// root is ever looked at. Also whether it exists; a missing one keeps its remaining components
/// as they are.
fn resolve_under(root: &Path, device_path: &Path) -> Result<(PathBuf, bool), String> {
    let mut resolved = PathBuf::from("/");
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = device_path
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == "." || name.is_empty() {
            continue;
        }
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let host = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err("protected path has too many levels of symbolic links".into());
                }
                let target = fs::read_link(&host)
                    .map_err(|e| format!("cannot read the symbolic link on the way: {e}"))?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    if let std::path::Component::Normal(_) | std::path::Component::ParentDir = c {
                        pending.push_front(c.as_os_str().to_os_string());
                    }
                }
            }
            Ok(_) => resolved = candidate,
            Err(e) => {
                // Missing, or not reachable (the walk notes an unreadable directory): the rest
                // is taken as it is.
                resolved.push(name);
                resolved.extend(pending);
                return Ok((resolved, e.kind() != std::io::ErrorKind::NotFound));
            }
        }
    }
    Ok((resolved, true))
}

/// A path's bytes for people: UTF-8 as is, other bytes as `\xNN`, control characters escaped,
/// so that one path is always one line (of stderr, or of a TOML comment).
pub fn display(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                s.extend(c.escape_debug());
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_any_path_on_one_line() {
        assert_eq!(display(b"/etc/bad\xffname"), "/etc/bad\\xffname");
        assert_eq!(display(b"/a\nb\\c"), "/a\\nb\\\\c");
        assert_eq!(display("/caf\u{e9}".as_bytes()), "/caf\u{e9}");
    }

    #[test]
    fn prefixes_match_whole_components() {
        let rules = Rules {
            protected: vec![PathBuf::from("/etc")],
            excluded: vec![PathBuf::from("/")],
        };
        assert!(rules.is_protected(Path::new("/etc/x")));
        assert!(rules.is_protected(Path::new("/etc")));
        assert!(!rules.is_protected(Path::new("/etcx/y")));
        assert!(rules.is_excluded(Path::new("/anything")));
    }

    #[test]
    fn protected_paths_are_resolved_inside_the_root() {
        let root = std::env::temp_dir().join(format!("picket-walk-resolve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
        fs::create_dir_all(root.join("data/real")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        // Absolute: inside the root, never the host's.
        std::os::unix::fs::symlink("/data/real", root.join("usr/lib/abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("data/real/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let configured: Vec<PathBuf> = [
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
            "/lib/abs/x",
            "/lib/abs/up/usr",
            "/lib/missing/x",
            "/loop/x",
            "/var/excluded",
            "/lib/var",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let excluded = vec![PathBuf::from("/var"), PathBuf::from("/usr/lib/var")];
        let (protected, notes) = resolve_protected(&root, &configured, &excluded);
        assert_eq!(
            protected,
            vec![
                PathBuf::from("/usr/lib/systemd/system"),
                PathBuf::from("/usr/lib/systemd/system"),
                PathBuf::from("/usr"),
            ]
        );
        let notes: Vec<(String, String)> = notes
            .into_iter()
            .map(|n| (display(&n.path), n.reason))
            .collect();
        assert_eq!(notes.len(), 5, "{notes:?}");
        assert_eq!(notes[0].0, "/lib/abs/x");
        assert!(notes[0].1.contains("does not exist"), "{notes:?}");
        assert_eq!(notes[1].0, "/lib/missing/x");
        assert!(notes[2].1.contains("too many levels"), "{notes:?}");
        assert!(notes[3].1.contains("excluded"), "{notes:?}");
        assert!(notes[4].1.contains("/usr/lib/var"), "{notes:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
