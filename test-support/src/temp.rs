//! Scratch directories and names no other test run uses.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A directory under the system temp dir, with a canonical path, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let template = std::env::temp_dir().join("picket-e2e-XXXXXX");
        let mut bytes = CString::new(template.as_os_str().as_bytes())
            .expect("the temp dir has no NUL byte")
            .into_bytes_with_nul();
        // SAFETY: `bytes` is a writable NUL-terminated template, as mkdtemp(3) requires.
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        assert!(
            !made.is_null(),
            "mkdtemp failed: {}",
            std::io::Error::last_os_error()
        );
        bytes.pop();
        let path = PathBuf::from(OsStr::from_bytes(&bytes));
        // Events carry canonical paths, so compare against the canonical form.
        let path = std::fs::canonicalize(&path)
            .unwrap_or_else(|e| panic!("cannot canonicalize {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name no other test run uses, for argv markers and file names.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}
