//! The spool directory: creating and locking it, segment file names, reading and deleting
//! segment files, and directory syncs.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

use anyhow::{bail, Context as _};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::{MAX_SEGMENT, MAX_SEGMENT_ID};

/// A larger file cannot be a segment this spool wrote.
pub(super) const MAX_FILE: u64 = 4 * MAX_SEGMENT;

/// Creates the spool directory (mode 0700) if it is missing, and makes its creation durable.
pub(super) fn create_dir(dir: &Path) -> anyhow::Result<()> {
    let created = !dir.exists();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the spool directory {}", dir.display()))?;
    if created {
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Takes the spool's `lock` file (`flock`, exclusive): one process per spool.
pub(super) fn lock(dir: &Path) -> anyhow::Result<Flock<File>> {
    let lock_path = dir.join("lock");
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == Errno::EWOULDBLOCK {
            anyhow::anyhow!("the spool {} is in use by another process", dir.display())
        } else {
            anyhow::anyhow!("locking {}: {e}", lock_path.display())
        }
    })
}

/// The number of a segment from its file name without the extension; `None` if it is not one.
pub(super) fn parse_id(stem: &str) -> Option<u32> {
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(stem, 16)
        .ok()
        .filter(|&id| id <= MAX_SEGMENT_ID)
}

/// Reads a whole segment file, refusing one larger than any segment the spool writes.
pub(super) fn read_segment(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_FILE {
        bail!(
            "{} is {len} bytes, larger than any spool segment ({MAX_FILE} bytes at most): not a spool file",
            path.display()
        );
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Deletes a file; one already gone is not an error.
pub(super) fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Makes the directory's entries (created, renamed, deleted files) durable.
pub(super) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}
