//! The walk of a root filesystem: which files the baseline records, found on one thread.
//!
//! Symbolic links are never followed (a link in an image's rootfs points into the build host),
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

/// Notes about configured protected paths that will protect nothing: missing, excluded, or a
/// symbolic link or under one (links are not followed, so nothing there would be recorded; with
/// merged /usr, `/lib/firmware` is really `/usr/lib/firmware`).
pub fn check_protected(root: &Path, rules: &Rules) -> Vec<Skipped> {
    let mut notes = Vec::new();
    for p in &rules.protected {
        if rules.is_excluded(p) {
            notes.push(Skipped::new(p, "protected path is excluded from the scan"));
            continue;
        }
        // Component by component, with lstat: a link anywhere on the way must not be followed
        // (an absolute link in an image's rootfs would resolve on the build host).
        let (mut host, mut device) = (root.to_path_buf(), PathBuf::from("/"));
        for component in p.components().skip(1) {
            host.push(component);
            device.push(component);
            let reason = match fs::symlink_metadata(&host) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    "protected path does not exist under the scan root".to_string()
                }
                // Not stat-able for another reason (an unreadable parent): the walk noted that.
                Err(_) => break,
                Ok(m) if m.file_type().is_symlink() && device == *p => {
                    "protected path is a symbolic link, not followed: protect its target instead"
                        .to_string()
                }
                Ok(m) if m.file_type().is_symlink() => format!(
                    "protected path is under the symbolic link {}, not followed: \
                     protect the path it leads to instead",
                    display(device.as_os_str().as_bytes())
                ),
                Ok(_) => continue,
            };
            notes.push(Skipped::new(p, reason));
            break;
        }
    }
    notes
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
}
