//! The alert spool: where alerts wait, on disk, between being raised and being acknowledged by
//! the broker.
//!
//! # Guarantees
//!
//! - **Durable before published.** [`Spool::push`] only buffers; [`Spool::flush`] writes the
//!   buffered records (and the buffered acknowledgements) with one `write` and one `fdatasync`
//!   per batch. [`Spool::peek`] returns durable records only, so nothing reaches the wire that a
//!   power cut could take back.
//! - **Crash-safe.** Every record carries its length and two CRC-32s (header and body). A record
//!   torn by a crash or damaged on the medium is detected, counted and skipped; the records
//!   before and after it are kept. A damaged record never makes opening fail.
//! - **In order.** Records come back in sequence-number order, oldest first.
//! - **Bounded.** The records waiting (and the unflushed batch) never take more than
//!   `max_bytes` minus one segment. When a new record would not fit, the oldest record of the
//!   lowest severity present goes first (the new record itself, if its severity is the lowest);
//!   the drops are counted for [`Spool::take_dropped`]. After every [`Spool::flush`] the files
//!   take at most `max_bytes`; while a segment is being compacted, one more segment's worth.
//! - **Acknowledged and dropped records stay gone.** They are recorded as tombstones in the
//!   same append-only stream, written by the next flush (a crash before it re-delivers them:
//!   duplicates are possible on the wire, losses are not).
//!
//! # On disk
//!
//! The directory holds segments `XXXXXXXX.seg` (hexadecimal segment number; a higher number
//! holds later records) and an empty `lock` file (`flock`, one process per spool). Records are
//! appended to the newest segment until it reaches the segment size (`max_bytes / 8`, between
//! 4 KiB and 1 MiB), then a new one is started. A record is a 28-byte header followed by its
//! body, all little-endian:
//!
//! | bytes  | field                                                              |
//! |--------|--------------------------------------------------------------------|
//! | 0..4   | magic `PkS1`                                                       |
//! | 4      | kind: 1 = alert, 2 = tombstones                                    |
//! | 5      | severity (alert), 0 (tombstones)                                   |
//! | 6..8   | zero                                                               |
//! | 8..12  | body length                                                        |
//! | 12..20 | sequence number (alert), 0 (tombstones)                            |
//! | 20..24 | CRC-32 of the body                                                 |
//! | 24..28 | CRC-32 of bytes 0..24                                              |
//!
//! An alert's body is its payload. A tombstone body is a list of ranges (first sequence number
//! u64, count u32) of records that are gone (acknowledged or dropped). A tombstone always
//! follows the records it names, in the same or a later segment.
//!
//! A reader trusts a header whose CRC matches: a body that does not match is skipped by its
//! length. After a damaged header it looks for the next magic followed by a valid header.
//!
//! # Reclaiming space
//!
//! A segment whose records are all gone, and whose tombstones name no record still on disk in
//! another segment, is deleted (in normal operation, acknowledgements arrive in order and
//! whole segments go this way, without rewriting anything; the newest segment is kept and
//! filled first). When a flush would take the files
//! over `max_bytes` (records dropped or acknowledged out of order leave holes), segments are
//! compacted, the most reclaimable first: rewritten to a temporary file with their waiting
//! records and the tombstones still needed, synced, and renamed over the original.
//!
//! # Memory
//!
//! In memory: about 60 bytes per record on disk (sequence number, place, severity, state), the
//! unflushed batch, and per-segment counters. Payloads are read from disk by `peek`.
//!
//! # Code
//!
//! | file | what it does |
//! | --- | --- |
//! | `mod.rs` | the [`Spool`] and its API: open, push, peek, acknowledge; limits and counters |
//! | `format.rs` | records: encoding, decoding, tombstone ranges, scanning a segment past damage |
//! | `files.rs` | the directory: its lock, segment file names, reading, deleting, syncing |
//! | `recover.rs` | opening: reading the segments back, cutting a torn end, resuming |
//! | `flush.rs` | writing: the flush, one write and one sync per segment written to |
//! | `compact.rs` | reclaiming space: deleting free segments, compacting the others |
//! | `tests/` | unit tests; `tests/damage.rs` those of torn writes and damage |

mod compact;
mod files;
mod flush;
mod format;
mod recover;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use nix::fcntl::Flock;

pub use format::HEADER;
use format::{read_record, Found, Read};

/// The smallest `max_bytes` accepted.
pub const MIN_MAX_BYTES: u64 = 16 * 1024;
const MIN_SEGMENT: u64 = 4 * 1024;
const MAX_SEGMENT: u64 = 1024 * 1024;
/// `Rec::tomb` of a record still waiting.
const LIVE: u32 = u32::MAX;
/// `Rec::tomb` of a gone record whose tombstone the next flush writes.
const TOMB_PENDING: u32 = u32::MAX - 1;
/// Segment numbers stay below the `Rec::tomb` markers.
const MAX_SEGMENT_ID: u32 = u32::MAX - 2;

/// How much disk the spool may use.
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    /// Bytes of all segment files together, after every flush.
    pub max_bytes: u64,
}

/// A record handed back by [`Spool::peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub severity: u8,
    pub payload: Vec<u8>,
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Records waiting to be published.
    pub records: usize,
    /// Damaged or partial records skipped (torn writes, damage on the medium). A torn end of
    /// the newest segment is cut off; damage further back is counted again at each open
    /// until its segment is compacted or deleted.
    pub torn: usize,
    /// Bytes of the segment files.
    pub bytes: u64,
}

/// Counters for logs and status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Records waiting (durable and unflushed).
    pub pending: usize,
    /// Of those, records not flushed yet.
    pub unflushed: usize,
    /// Bytes of the waiting records (headers included).
    pub pending_bytes: u64,
    /// Bytes of the segment files.
    pub disk_bytes: u64,
    pub segments: usize,
    /// The highest sequence number the spool has seen; pushes must be above it.
    pub last_seq: u64,
    /// Since open: records pushed, acknowledged, dropped (for room, or found damaged).
    pub pushed: u64,
    pub acked: u64,
    pub dropped: u64,
    /// Since open: records found damaged when read back (included in `dropped`).
    pub corrupt: u64,
    /// Since open: segment rewrites, and the bytes they wrote.
    pub compactions: u64,
    pub rewritten_bytes: u64,
    /// Since open: `fdatasync`/`fsync` calls (files and the directory), a measure of flash wear.
    pub syncs: u64,
}

/// A bounded, crash-safe queue of alerts on disk. See the module documentation.
pub struct Spool {
    dir: PathBuf,
    _lock: Flock<File>,
    max_bytes: u64,
    segment_bytes: u64,
    /// Bytes the waiting records may take: `max_bytes` minus one segment, so that compaction
    /// can always bring the files under `max_bytes`.
    budget: u64,
    segments: BTreeMap<u32, Segment>,
    /// The segment new records are appended to.
    active: Option<Active>,
    next_segment: u32,
    /// Every alert record in the segment files, waiting or gone, by sequence number.
    index: BTreeMap<u64, Rec>,
    /// Records pushed and not flushed yet, in sequence order.
    batch: Vec<Pending>,
    /// Waiting records (flushed or not) in eviction order: lowest severity, then oldest.
    order: BTreeSet<(u8, u64)>,
    /// Gone records whose tombstone the next flush writes (may hold stale entries).
    tombs_pending: Vec<u64>,
    pending_bytes: u64,
    disk_bytes: u64,
    last_seq: u64,
    dropped_since_take: u64,
    stats: SpoolStats,
    /// When a failure to free space (a segment that cannot be rewritten or deleted) was last
    /// logged: a failing disk is retried every second, said once a minute.
    warned: Option<std::time::Instant>,
}

/// How often the spool says again that it cannot free space.
const WARN_REPEAT: std::time::Duration = std::time::Duration::from_secs(60);

struct Active {
    id: u32,
    file: File,
    /// Whether its directory entry is durable (a new file's is once its first write is).
    entry_synced: bool,
}

/// Per-segment accounting.
#[derive(Debug, Default, Clone, Copy)]
struct Segment {
    /// Bytes of the file.
    size: u64,
    /// Waiting records in it, and their bytes.
    live: u32,
    live_bytes: u64,
    /// Bytes of its tombstone records.
    tomb_bytes: u64,
    /// Gone records in other segments whose tombstone is in this one: while there are any,
    /// this segment's tombstones are needed.
    refs: u32,
}

impl Segment {
    /// Bytes a rewrite certainly frees: everything but the waiting records and, while needed,
    /// the tombstones.
    fn reclaimable(&self) -> u64 {
        let needed = self.live_bytes + if self.refs > 0 { self.tomb_bytes } else { 0 };
        self.size.saturating_sub(needed)
    }
}

/// An alert record in a segment file.
#[derive(Debug, Clone, Copy)]
struct Rec {
    seg: u32,
    off: u32,
    /// Header and payload.
    len: u32,
    severity: u8,
    /// [`LIVE`], [`TOMB_PENDING`], or the segment holding its tombstone.
    tomb: u32,
}

struct Pending {
    seq: u64,
    severity: u8,
    payload: Vec<u8>,
}

impl Pending {
    fn len(&self) -> u64 {
        (HEADER + self.payload.len()) as u64
    }
}

impl Spool {
    /// Logs a failure to free space, at most once every [`WARN_REPEAT`].
    fn warn(&mut self, e: &anyhow::Error) {
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_REPEAT) {
            log::warn!("spool: {e:#} (said at most once a minute)");
            self.warned = Some(std::time::Instant::now());
        }
    }

    /// Opens (creating it, mode 0700) the spool in `dir`, recovering what a previous run left:
    /// damaged records are skipped and counted, a torn end of the newest segment is cut off.
    pub fn open(dir: &Path, limits: SpoolLimits) -> anyhow::Result<(Spool, Recovered)> {
        let max_bytes = limits.max_bytes;
        if max_bytes < MIN_MAX_BYTES {
            bail!("spool size limit of {max_bytes} bytes is too small: the minimum is {MIN_MAX_BYTES}");
        }
        let segment_bytes = (max_bytes / 8).clamp(MIN_SEGMENT, MAX_SEGMENT);
        files::create_dir(dir)?;
        let lock = files::lock(dir)?;

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            _lock: lock,
            max_bytes,
            segment_bytes,
            budget: max_bytes - segment_bytes,
            segments: BTreeMap::new(),
            active: None,
            next_segment: 0,
            index: BTreeMap::new(),
            batch: Vec::new(),
            order: BTreeSet::new(),
            tombs_pending: Vec::new(),
            pending_bytes: 0,
            disk_bytes: 0,
            last_seq: 0,
            dropped_since_take: 0,
            stats: SpoolStats::default(),
            warned: None,
        };
        let torn = spool.recover()?;
        let recovered = Recovered {
            records: spool.order.len(),
            torn,
            bytes: spool.disk_bytes,
        };
        // A smaller limit than the last run's: make room now.
        spool.fit_limits()?;
        Ok((spool, recovered))
    }

    /// The largest payload [`Spool::push`] accepts.
    pub fn max_payload(&self) -> usize {
        self.segment_bytes as usize - HEADER
    }

    /// Adds a record to the unflushed batch. `seq` must be above every sequence number the
    /// spool has seen ([`SpoolStats::last_seq`], records and tombstones: a caller whose
    /// counter went back resumes above it). Makes room if needed by dropping the oldest
    /// records of the lowest severity, which may be this one.
    pub fn push(&mut self, seq: u64, severity: u8, payload: &[u8]) -> anyhow::Result<()> {
        if payload.len() > self.max_payload() {
            bail!(
                "alert {seq} is {} bytes, more than the spool's limit of {} bytes per alert",
                payload.len(),
                self.max_payload()
            );
        }
        if seq <= self.last_seq {
            bail!(
                "alert sequence number {seq} is not above the spool's last one ({}): the sequence counter went back",
                self.last_seq
            );
        }
        self.last_seq = seq;
        let len = (HEADER + payload.len()) as u64;
        while self.pending_bytes + len > self.budget {
            let Some(&(lowest, oldest)) = self.order.first() else {
                break;
            };
            if severity < lowest {
                // Everything waiting is more severe than this record.
                self.count_dropped(1);
                return Ok(());
            }
            self.remove(oldest);
            self.count_dropped(1);
        }
        self.batch.push(Pending {
            seq,
            severity,
            payload: payload.to_vec(),
        });
        self.order.insert((severity, seq));
        self.pending_bytes += len;
        self.stats.pushed += 1;
        Ok(())
    }
    /// Durable records still waiting, in sequence order, with a sequence number above `after`;
    /// at most `max`. A record found damaged is dropped (logged and counted) and skipped.
    pub fn peek(&mut self, after: Option<u64>, max: usize) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut from = match after {
            Some(u64::MAX) => return Ok(out),
            Some(a) => a + 1,
            None => 0,
        };
        let mut open: Option<(u32, File)> = None;
        while out.len() < max {
            let Some((seq, rec)) = self
                .index
                .range(from..)
                .find(|(_, r)| r.tomb == LIVE)
                .map(|(&s, &r)| (s, r))
            else {
                break;
            };
            from = seq.saturating_add(1);
            match self.read_alert(&mut open, seq, rec) {
                Ok(entry) => out.push(entry),
                Err(e) => {
                    log::warn!("spool: dropping alert {seq}: {e:#}");
                    self.remove(seq);
                    self.count_dropped(1);
                    self.stats.corrupt += 1;
                }
            }
            if seq == u64::MAX {
                break;
            }
        }
        Ok(out)
    }

    /// Reads and checks one record.
    fn read_alert(
        &self,
        open: &mut Option<(u32, File)>,
        seq: u64,
        rec: Rec,
    ) -> anyhow::Result<Entry> {
        if open.as_ref().is_none_or(|(id, _)| *id != rec.seg) {
            let path = self.seg_path(rec.seg);
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            *open = Some((rec.seg, file));
        }
        let Some((_, file)) = open.as_ref() else {
            bail!("segment {} is not open", rec.seg);
        };
        let mut buf = vec![0; rec.len as usize];
        file.read_exact_at(&mut buf, u64::from(rec.off))
            .with_context(|| format!("reading segment {:08x} at {}", rec.seg, rec.off))?;
        match read_record(&buf, 0) {
            Read::Ok(
                Found::Alert {
                    seq: s,
                    severity,
                    len,
                    ..
                },
                _,
            ) if s == seq && len == rec.len => Ok(Entry {
                seq,
                severity,
                payload: buf.split_off(HEADER),
            }),
            _ => bail!(
                "the record at offset {} of segment {:08x} is damaged",
                rec.off,
                rec.seg
            ),
        }
    }

    /// Removes a record once the broker has acknowledged it. Returns false when the spool does
    /// not hold it (already acknowledged, or dropped). Durable with the next flush.
    pub fn ack(&mut self, seq: u64) -> anyhow::Result<bool> {
        let removed = self.remove(seq);
        if removed {
            self.stats.acked += 1;
        }
        Ok(removed)
    }

    /// Records dropped (for room, or found damaged) since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_since_take)
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            pending: self.order.len(),
            unflushed: self.batch.len(),
            pending_bytes: self.pending_bytes,
            disk_bytes: self.disk_bytes,
            segments: self.segments.len(),
            last_seq: self.last_seq,
            ..self.stats
        }
    }

    fn count_dropped(&mut self, n: u64) {
        self.dropped_since_take += n;
        self.stats.dropped += n;
    }

    /// Takes a waiting record out: from the batch, or by scheduling its tombstone.
    fn remove(&mut self, seq: u64) -> bool {
        if let Some(rec) = self.index.get_mut(&seq) {
            if rec.tomb != LIVE {
                return false;
            }
            rec.tomb = TOMB_PENDING;
            let (severity, len, seg) = (rec.severity, u64::from(rec.len), rec.seg);
            if let Some(s) = self.segments.get_mut(&seg) {
                s.live -= 1;
                s.live_bytes -= len;
            }
            self.order.remove(&(severity, seq));
            self.pending_bytes -= len;
            self.tombs_pending.push(seq);
            return true;
        }
        if let Ok(i) = self.batch.binary_search_by_key(&seq, |p| p.seq) {
            let p = self.batch.remove(i);
            self.order.remove(&(p.severity, seq));
            self.pending_bytes -= p.len();
            return true;
        }
        false
    }

    /// Keeps the pending tombstones of records still on disk, sorted, once each.
    fn retain_needed_tombs(&mut self) {
        let index = &self.index;
        self.tombs_pending
            .retain(|s| index.get(s).is_some_and(|r| r.tomb == TOMB_PENDING));
        self.tombs_pending.sort_unstable();
        self.tombs_pending.dedup();
    }

    fn seg_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08x}.seg"))
    }
}
