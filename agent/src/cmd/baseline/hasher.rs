//! Parallel SHA-256 of the files the walk found, with a progress line on a terminal.
//!
//! One worker per available CPU takes the next file from a shared index (files vary from bytes
//! to hundreds of MiB, so a fixed split would leave workers idle). Each file is opened without
//! following links and checked to still be the inode the walk saw: on a live system a file can be
//! replaced between the walk and the read, and the policy must not pair a name with content
//! that was never at it.

use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use super::walk::Found;

/// Read size: large enough that syscalls do not dominate, small enough per worker.
const BUF_BYTES: usize = 256 * 1024;

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A file's digest and the attributes of the very inode that was read.
#[derive(Debug)]
pub struct Hashed {
    pub sha256: [u8; 32],
    pub meta: Metadata,
}

/// Totals of a hashing run.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

/// Hashes every file; results are in the order of `files`. An `Err` holds why a file could
/// not be hashed. `progress` draws an updating line on stderr.
pub fn hash_all(
    files: &[Found],
    progress: bool,
) -> anyhow::Result<(Vec<Result<Hashed, String>>, Totals)> {
    let next = AtomicUsize::new(0);
    let done_files = AtomicU64::new(0);
    let done_bytes = AtomicU64::new(0);
    let total_bytes: u64 = files.iter().map(|f| f.size).sum();
    let workers = worker_count(files.len());
    let started = Instant::now();

    let per_worker = thread::scope(|scope| {
        // Each worker holds a sender; when all have finished the channel disconnects, which
        // wakes the progress loop at once instead of at its next tick.
        let (tx, rx) = mpsc::channel::<()>();
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let tx = tx.clone();
                let (next, done_files, done_bytes) = (&next, &done_files, &done_bytes);
                scope.spawn(move || {
                    let _tx = tx;
                    work(files, next, done_files, done_bytes)
                })
            })
            .collect();
        drop(tx);
        if progress {
            let counts = || {
                (
                    done_files.load(Ordering::Relaxed),
                    done_bytes.load(Ordering::Relaxed),
                )
            };
            draw_progress(&rx, counts, files.len() as u64, total_bytes, started);
        }
        handles
            .into_iter()
            .map(|h| h.join())
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?;

    let results = in_order(files.len(), per_worker);
    let totals = Totals {
        files: done_files.load(Ordering::Relaxed),
        bytes: done_bytes.load(Ordering::Relaxed),
    };
    Ok((results, totals))
}

/// One worker per available CPU, at least one and no more than there are files.
fn worker_count(files: usize) -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files)
        .max(1)
}

/// One worker: hashes the next file not yet taken until there is none, counting files and
/// bytes done; returns each result with the file's index.
fn work(
    files: &[Found],
    next: &AtomicUsize,
    done_files: &AtomicU64,
    done_bytes: &AtomicU64,
) -> Vec<(usize, Result<Hashed, String>)> {
    let mut buf = vec![0u8; BUF_BYTES];
    let mut results = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(found) = files.get(i) else { break };
        results.push((i, hash_file(found, &mut buf, done_bytes)));
        done_files.fetch_add(1, Ordering::Relaxed);
    }
    results
}

/// Redraws the progress line on stderr every [`PROGRESS_EVERY`] until every worker has dropped
/// its sender, then clears it. `counts` gives the files and bytes done so far.
fn draw_progress(
    rx: &mpsc::Receiver<()>,
    counts: impl Fn() -> (u64, u64),
    total_files: u64,
    total_bytes: u64,
    started: Instant,
) {
    let mut stderr = io::stderr();
    loop {
        match rx.recv_timeout(PROGRESS_EVERY) {
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            _ => {
                let (files, bytes) = counts();
                let line = progress_line(files, total_files, bytes, total_bytes, started.elapsed());
                // Progress is best effort: a closed stderr must not fail the scan.
                let _ = write!(stderr, "\r{line}\x1b[K");
                let _ = stderr.flush();
            }
        }
    }
    let _ = write!(stderr, "\r\x1b[K");
    let _ = stderr.flush();
}

/// The workers' results back in the order of the files; a file no worker returned (which
/// cannot happen) is an error rather than a panic.
fn in_order(
    len: usize,
    per_worker: Vec<Vec<(usize, Result<Hashed, String>)>>,
) -> Vec<Result<Hashed, String>> {
    let mut results: Vec<Option<Result<Hashed, String>>> = (0..len).map(|_| None).collect();
    for (i, result) in per_worker.into_iter().flatten() {
        results[i] = Some(result);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not hashed (internal error)".into())))
        .collect()
}

/// Hashes one file, adding what it reads to `bytes` as it goes.
fn hash_file(found: &Found, buf: &mut [u8], bytes: &AtomicU64) -> Result<Hashed, String> {
    // O_NOFOLLOW: a name swapped for a link since the walk is not followed out of the root.
    // O_NONBLOCK: a name swapped for a FIFO does not hang the scan (no effect on regular files).
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&found.host_path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "changed during the scan: now a symbolic link".to_string(),
            _ => format!("cannot open: {e}"),
        })?;
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() || meta.dev() != found.dev || meta.ino() != found.ino {
        return Err("changed during the scan: no longer the file that was found".into());
    }
    let sha256 = digest(&mut file, buf, bytes).map_err(|e| format!("cannot read: {e}"))?;
    Ok(Hashed { sha256, meta })
}

/// SHA-256 of everything in `file`, counting the bytes for the progress line.
fn digest(file: &mut File, buf: &mut [u8], bytes: &AtomicU64) -> io::Result<[u8; 32]> {
    crate::enrich::hash::sha256_chunks(file, buf, |chunk| {
        bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    })
}

/// Mebibytes, for people.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `hashed 120/5678 files, 12.0/900.1 MiB, 85.2 MiB/s`
fn progress_line(
    files: u64,
    total_files: u64,
    bytes: u64,
    total_bytes: u64,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!(
        "hashed {files}/{total_files} files, {:.1}/{:.1} MiB, {:.1} MiB/s",
        mib(bytes),
        mib(total_bytes),
        mib(bytes) / secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_reads_well() {
        let line = progress_line(3, 10, 3 << 20, 10 << 20, Duration::from_secs(2));
        assert_eq!(line, "hashed 3/10 files, 3.0/10.0 MiB, 1.5 MiB/s");
    }
}
