//! Paths as raw bytes: making them absolute, normalising them, and rendering them for output.
//!
//! Linux paths are bytes, not text. They stay `OsString`/`PathBuf` until they are printed; a path
//! that is not UTF-8 is printed lossily *and* as exact hex, so nothing is lost. Comparing two
//! spellings of one file (through directory symbolic links) is [`canon`]'s.

pub mod canon;

use std::{
    ffi::{OsStr, OsString},
    fs,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Component, Path, PathBuf},
};

/// Turns raw bytes into a path.
pub fn from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

/// Joins `path` onto `base` unless it is absolute, then normalises the result lexically.
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else if is_normal(base.as_os_str().as_bytes())
        && is_normal_relative(path.as_os_str().as_bytes())
    {
        base.join(path)
    } else {
        normalize(&base.join(path))
    }
}

/// The absolute form of the raw path `raw`: itself when it is absolute and already normal (the
/// usual case, taken without rebuilding it component by component), else normalised.
pub fn normalized_bytes(raw: &[u8]) -> PathBuf {
    if is_normal(raw) {
        from_bytes(raw)
    } else {
        normalize(Path::new(OsStr::from_bytes(raw)))
    }
}

/// Whether `p` is an absolute path that [`normalize`] would leave as it is: no empty, `.` or
/// `..` component and no trailing slash (except for `/` itself).
fn is_normal(p: &[u8]) -> bool {
    if p == b"/" {
        return true;
    }
    p.first() == Some(&b'/') && is_normal_relative(&p[1..])
}

/// Whether the relative path `p` has only ordinary, non-empty components.
fn is_normal_relative(p: &[u8]) -> bool {
    !p.is_empty()
        && p.split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Removes `.` and empty components and applies `..` lexically (`/a/b/../c` is `/a/c`, and
/// `/..` is `/`). Symbolic links are not followed: the kernel already did, and the file may be
/// gone by now.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if out.parent().is_some() {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            Component::Normal(name) => out.push(name),
            Component::Prefix(_) => {}
        }
    }
    out
}

/// Reads a symbolic link in `/proc` (`/proc/PID/cwd`, `/proc/PID/fd/N`, `/proc/PID/exe`).
pub fn read_proc_link(pid: u32, what: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/{what}")).ok()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        for (input, want) in [
            ("/a/./b//c", "/a/b/c"),
            ("/a/b/../c", "/a/c"),
            ("/../..", "/"),
            ("/a/b/", "/a/b"),
        ] {
            assert_eq!(normalize(Path::new(input)), PathBuf::from(want), "{input}");
        }
    }

    #[test]
    fn takes_normal_paths_as_they_are() {
        for (input, want) in [
            (&b"/etc/passwd"[..], "/etc/passwd"),
            (b"/", "/"),
            (b"/a//b", "/a/b"),
            (b"/a/./b", "/a/b"),
            (b"/a/../b", "/b"),
            (b"/a/", "/a"),
            (b"/a/.", "/a"),
            (b"/a/b/..", "/a"),
            (b"a/b", "a/b"),
            (b"", ""),
        ] {
            assert_eq!(normalized_bytes(input), PathBuf::from(want), "{input:?}");
        }
        assert_eq!(
            absolute(Path::new("/home/u"), Path::new("x/y")),
            PathBuf::from("/home/u/x/y")
        );
        assert_eq!(
            absolute(Path::new("/home/u"), Path::new("x/")),
            PathBuf::from("/home/u/x")
        );
        assert_eq!(hex(&[0x00, 0x7f, 0xff]), "007fff");
    }

    #[test]
    fn joins_relative_paths_only() {
        assert_eq!(
            absolute(Path::new("/home/u"), Path::new("../x/./y")),
            PathBuf::from("/home/x/y")
        );
        assert_eq!(
            absolute(Path::new("/home/u"), Path::new("/etc/passwd")),
            PathBuf::from("/etc/passwd")
        );
    }
}
