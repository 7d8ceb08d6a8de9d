//! Paths as raw bytes: making them absolute, normalising them, and rendering them for output.
//!
//! Linux paths are bytes, not text. They stay `OsString`/`PathBuf` until they are printed; a path
//! that is not UTF-8 is printed lossily *and* as exact hex, so nothing is lost.

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
    } else {
        normalize(&base.join(path))
    }
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

/// How a path is printed: text, plus its exact bytes in hex when it is not UTF-8.
pub struct Rendered {
    pub text: String,
    pub hex: Option<String>,
}

/// Renders a path for JSON output.
pub fn render(path: &OsStr) -> Rendered {
    match path.to_str() {
        Some(text) => Rendered {
            text: text.to_string(),
            hex: None,
        },
        None => Rendered {
            text: path.to_string_lossy().into_owned(),
            hex: Some(hex(path.as_bytes())),
        },
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
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

    #[test]
    fn renders_non_utf8_exactly() {
        let p = from_bytes(b"/tmp/\xffx");
        let r = render(p.as_os_str());
        assert_eq!(
            r.hex.as_deref(),
            Some("2f746d702f ff78".replace(' ', "").as_str())
        );
        assert!(r.text.starts_with("/tmp/"));
        assert!(render(OsStr::new("/ok")).hex.is_none());
    }
}
