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

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// Starts every record; lets a reader find the next record after damage.
const MAGIC: [u8; 4] = *b"PkS1";
/// Bytes of a record header.
pub const HEADER: usize = 28;
const KIND_ALERT: u8 = 1;
const KIND_GONE: u8 = 2;
/// Bytes of one tombstone range: first sequence number (u64) and count (u32).
const RANGE: usize = 12;
/// The smallest `max_bytes` accepted.
pub const MIN_MAX_BYTES: u64 = 16 * 1024;
const MIN_SEGMENT: u64 = 4 * 1024;
const MAX_SEGMENT: u64 = 1024 * 1024;
/// A larger file cannot be a segment this spool wrote.
const MAX_FILE: u64 = 4 * MAX_SEGMENT;
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
}

struct Active {
    id: u32,
    file: File,
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
    /// Opens (creating it, mode 0700) the spool in `dir`, recovering what a previous run left:
    /// damaged records are skipped and counted, a torn end of the newest segment is cut off.
    pub fn open(dir: &Path, limits: SpoolLimits) -> anyhow::Result<(Spool, Recovered)> {
        let max_bytes = limits.max_bytes;
        if max_bytes < MIN_MAX_BYTES {
            bail!("spool size limit of {max_bytes} bytes is too small: the minimum is {MIN_MAX_BYTES}");
        }
        let segment_bytes = (max_bytes / 8).clamp(MIN_SEGMENT, MAX_SEGMENT);
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
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == Errno::EWOULDBLOCK {
                anyhow::anyhow!("the spool {} is in use by another process", dir.display())
            } else {
                anyhow::anyhow!("locking {}: {e}", lock_path.display())
            }
        })?;

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
        };
        let torn = spool.recover()?;
        let recovered = Recovered {
            records: spool.order.len(),
            torn,
            bytes: spool.disk_bytes,
        };

        // A smaller limit than the last run's: make room now.
        while spool.pending_bytes > spool.budget {
            let Some(&(_, seq)) = spool.order.first() else {
                break;
            };
            spool.remove(seq);
            spool.count_dropped(1);
        }
        spool.collect_free(false)?;
        if spool.disk_bytes > spool.max_bytes || !spool.tombs_pending.is_empty() {
            spool.make_room(0)?;
            spool.flush()?;
        }
        Ok((spool, recovered))
    }

    /// Reads every segment, oldest first, into the index. Returns the damaged records skipped.
    fn recover(&mut self) -> anyhow::Result<usize> {
        let entries = fs::read_dir(&self.dir)
            .with_context(|| format!("listing the spool directory {}", self.dir.display()))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry
                .with_context(|| format!("listing the spool directory {}", self.dir.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "lock" {
                continue;
            }
            if let Some(stem) = name.strip_suffix(".tmp") {
                // A compaction interrupted before its rename: the original is intact.
                if parse_id(stem).is_some() {
                    let path = entry.path();
                    fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    continue;
                }
            }
            match name.strip_suffix(".seg").and_then(parse_id) {
                Some(id) => ids.push(id),
                None => log::warn!(
                    "spool: ignoring {}: not a spool file",
                    entry.path().display()
                ),
            }
        }
        ids.sort_unstable();

        let mut torn = 0;
        let mut last_alert = 0u64;
        for (n, &id) in ids.iter().enumerate() {
            let path = self.seg_path(id);
            let buf = match read_segment(&path) {
                Ok(buf) => buf,
                Err(e) => {
                    // Its records are lost; the others are not held hostage.
                    log::warn!("spool: skipping a segment: {e:#}");
                    torn += 1;
                    continue;
                }
            };
            let scanned = scan(&buf);
            torn += scanned.torn;
            let mut seg = Segment {
                size: buf.len() as u64,
                ..Segment::default()
            };
            for found in scanned.found {
                match found {
                    Found::Alert {
                        seq,
                        severity,
                        off,
                        len,
                    } => {
                        if seq <= last_alert {
                            // Out of order or repeated: not something this spool wrote.
                            torn += 1;
                            continue;
                        }
                        last_alert = seq;
                        self.index.insert(
                            seq,
                            Rec {
                                seg: id,
                                off,
                                len,
                                severity,
                                tomb: LIVE,
                            },
                        );
                        self.order.insert((severity, seq));
                        seg.live += 1;
                        seg.live_bytes += u64::from(len);
                        self.pending_bytes += u64::from(len);
                    }
                    Found::Gone { ranges, len } => {
                        seg.tomb_bytes += u64::from(len);
                        for (first, last) in ranges {
                            self.last_seq = self.last_seq.max(last);
                            for (&seq, rec) in self.index.range_mut(first..=last) {
                                if rec.tomb != LIVE {
                                    continue;
                                }
                                rec.tomb = id;
                                self.order.remove(&(rec.severity, seq));
                                self.pending_bytes -= u64::from(rec.len);
                                if rec.seg == id {
                                    seg.live -= 1;
                                    seg.live_bytes -= u64::from(rec.len);
                                } else {
                                    seg.refs += 1;
                                    if let Some(owner) = self.segments.get_mut(&rec.seg) {
                                        owner.live -= 1;
                                        owner.live_bytes -= u64::from(rec.len);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if n + 1 == ids.len() && (scanned.valid_end as u64) < seg.size {
                // The newest segment is the only one a crash can tear: cut the partial write
                // off so that new records follow the last good one.
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                file.set_len(scanned.valid_end as u64)
                    .and_then(|()| file.sync_data())
                    .with_context(|| format!("truncating the torn end of {}", path.display()))?;
                seg.size = scanned.valid_end as u64;
                self.stats.syncs += 1;
            }
            self.disk_bytes += seg.size;
            self.segments.insert(id, seg);
        }
        self.last_seq = self.last_seq.max(last_alert);
        if let Some(&last) = ids.last() {
            self.next_segment = last
                .checked_add(1)
                .filter(|&n| n <= MAX_SEGMENT_ID)
                .context("the spool's segment numbers are exhausted: empty the spool directory")?;
            let size = self.segments.get(&last).map(|s| s.size);
            if size.is_some_and(|size| size < self.segment_bytes) {
                let path = self.seg_path(last);
                let file = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                self.active = Some(Active { id: last, file });
            }
        }
        Ok(torn)
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

    /// Makes the batch and the acknowledgements since the last flush durable: one write and one
    /// `fdatasync` (more only when a segment fills up). May delete or compact segments first
    /// to stay within `max_bytes`.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.retain_needed_tombs();
        if self.batch.is_empty() && self.tombs_pending.is_empty() {
            return Ok(());
        }
        let batch_bytes: u64 = self.batch.iter().map(Pending::len).sum();
        let tomb_bytes: u64 = encode_gone(&to_ranges(&self.tombs_pending), self.segment_bytes)
            .iter()
            .map(|r| r.len() as u64)
            .sum();
        self.make_room(batch_bytes + tomb_bytes)?;
        self.retain_needed_tombs();
        let tombs = encode_gone(&to_ranges(&self.tombs_pending), self.segment_bytes);

        // The records to write, in order: alerts first, then tombstones. Normally all in one
        // segment; a group per segment when the active one fills up.
        let mut next_tomb = 0;
        while !self.batch.is_empty() || next_tomb < tombs.len() {
            let first_len = match self.batch.first() {
                Some(p) => p.len(),
                None => tombs[next_tomb].len() as u64,
            };
            let (id, base, created) = self.writable_segment(first_len)?;
            let mut buf = Vec::new();
            let mut alerts = Vec::new();
            let mut tomb_records = Vec::new();
            loop {
                let (len, alert) = match self.batch.get(alerts.len()) {
                    Some(p) => (p.len(), Some(p)),
                    None => match tombs.get(next_tomb + tomb_records.len()) {
                        Some(t) => (t.len() as u64, None),
                        None => break,
                    },
                };
                if base + buf.len() as u64 + len > self.segment_bytes {
                    break;
                }
                match alert {
                    Some(p) => {
                        alerts.push((p.seq, p.severity, buf.len() as u64, len));
                        encode(&mut buf, KIND_ALERT, p.severity, p.seq, &p.payload);
                    }
                    None => {
                        tomb_records.push((buf.len(), len as usize));
                        buf.extend_from_slice(&tombs[next_tomb + tomb_records.len() - 1]);
                    }
                }
            }
            if buf.is_empty() {
                bail!("a spool record of {first_len} bytes does not fit in a segment");
            }
            self.write_segment(id, base, &buf, created)?;

            // Durable: account for it.
            let seg = self.segments.entry(id).or_default();
            seg.size = base + buf.len() as u64;
            self.disk_bytes += buf.len() as u64;
            for &(seq, severity, off, len) in &alerts {
                self.index.insert(
                    seq,
                    Rec {
                        seg: id,
                        off: (base + off) as u32,
                        len: len as u32,
                        severity,
                        tomb: LIVE,
                    },
                );
                seg.live += 1;
                seg.live_bytes += len;
            }
            self.batch.drain(..alerts.len());
            for &(off, len) in &tomb_records {
                seg.tomb_bytes += len as u64;
                let body = &buf[off + HEADER..off + len];
                for (first, last) in parse_ranges(body).unwrap_or_default() {
                    for (_, rec) in self.index.range_mut(first..=last) {
                        if rec.tomb == TOMB_PENDING {
                            rec.tomb = id;
                            if rec.seg != id {
                                seg.refs += 1;
                            }
                        }
                    }
                }
            }
            next_tomb += tomb_records.len();
        }
        self.tombs_pending.clear();
        // The batch is durable: failing to delete what is no longer needed does not undo that.
        if let Err(e) = self.collect_free(false) {
            log::warn!("spool: {e:#}");
        }
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

    /// The segment to append a record of `len` bytes to, starting a new one when the active
    /// one is full: (segment, its size, whether it was just created).
    fn writable_segment(&mut self, len: u64) -> anyhow::Result<(u32, u64, bool)> {
        if let Some(active) = &self.active {
            let size = self.segments.get(&active.id).map_or(0, |s| s.size);
            if size + len <= self.segment_bytes {
                return Ok((active.id, size, false));
            }
        }
        self.active = None;
        let id = self.next_segment;
        if id > MAX_SEGMENT_ID {
            bail!("the spool's segment numbers are exhausted: empty the spool directory");
        }
        let path = self.seg_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        self.next_segment = id + 1;
        self.segments.insert(id, Segment::default());
        self.active = Some(Active { id, file });
        Ok((id, 0, true))
    }

    /// Writes `buf` at `base` in the active segment `id` and syncs it (and the directory for a
    /// new file). On failure the segment is sealed: later records go to a new one.
    fn write_segment(
        &mut self,
        id: u32,
        base: u64,
        buf: &[u8],
        created: bool,
    ) -> anyhow::Result<()> {
        let Some(active) = self.active.as_ref().filter(|a| a.id == id) else {
            bail!("spool segment {id:08x} is not the active one");
        };
        let mut result = active
            .file
            .write_all_at(buf, base)
            .and_then(|()| active.file.sync_data());
        self.stats.syncs += 1;
        if result.is_ok() && created {
            result = File::open(&self.dir).and_then(|d| d.sync_all());
            self.stats.syncs += 1;
        }
        if let Err(e) = result {
            self.active = None;
            if let Ok(meta) = fs::metadata(self.seg_path(id)) {
                if let Some(seg) = self.segments.get_mut(&id) {
                    self.disk_bytes = self.disk_bytes - seg.size + meta.len().max(seg.size);
                    seg.size = meta.len().max(seg.size);
                }
            }
            return Err(e).with_context(|| {
                format!(
                    "writing to the spool segment {}",
                    self.seg_path(id).display()
                )
            });
        }
        Ok(())
    }

    /// Brings the files down so that `incoming` more bytes fit under `max_bytes`: deletes
    /// segments with nothing needed in them, then compacts the most reclaimable ones until
    /// half a segment below the limit (so that the next flushes do not compact again at once).
    fn make_room(&mut self, incoming: u64) -> anyhow::Result<()> {
        if self.disk_bytes + incoming <= self.max_bytes {
            return Ok(());
        }
        self.collect_free(true)?;
        let target = self.max_bytes - self.segment_bytes / 2;
        let mut futile = BTreeSet::new();
        while self.disk_bytes + incoming > target {
            let Some((_, id)) = self
                .segments
                .iter()
                .filter(|(id, _)| !futile.contains(*id))
                .map(|(&id, s)| (s.reclaimable(), id))
                .filter(|&(r, _)| r > 0)
                .max_by_key(|&(r, id)| (r, std::cmp::Reverse(id)))
            else {
                break;
            };
            let before = self.disk_bytes;
            if let Err(e) = self.compact(id) {
                // Try the others; a segment that cannot be read must not stop the spool.
                log::warn!("spool: {e:#}");
            }
            self.collect_free(true)?;
            if self.disk_bytes >= before {
                futile.insert(id);
            }
        }
        Ok(())
    }

    /// Rewrites segment `id` with only its waiting records and the tombstones still needed
    /// (write to a temporary file, sync, rename over, sync the directory), or deletes it when
    /// nothing is left.
    fn compact(&mut self, id: u32) -> anyhow::Result<()> {
        let path = self.seg_path(id);
        let buf = read_segment(&path)?;
        let scanned = scan(&buf);
        let mut out = Vec::new();
        let mut moved = BTreeMap::new();
        let mut kept_ranges = Vec::new();
        for found in &scanned.found {
            match *found {
                Found::Alert { seq, off, len, .. } => {
                    let keep = self
                        .index
                        .get(&seq)
                        .is_some_and(|r| r.seg == id && r.off == off && r.tomb == LIVE);
                    if keep {
                        moved.insert(seq, out.len() as u32);
                        out.extend_from_slice(&buf[off as usize..(off + len) as usize]);
                    }
                }
                Found::Gone { ref ranges, .. } => {
                    for &(first, last) in ranges {
                        let needed = self
                            .index
                            .range(first..=last)
                            .any(|(_, r)| r.tomb == id && r.seg != id);
                        if needed {
                            kept_ranges.push((first, last));
                        }
                    }
                }
            }
        }
        let tombs = encode_gone(&kept_ranges, self.segment_bytes);
        let tomb_bytes: u64 = tombs.iter().map(|t| t.len() as u64).sum();
        for t in &tombs {
            out.extend_from_slice(t);
        }
        let old_size = self.segments.get(&id).map_or(0, |s| s.size);
        let leaving: Vec<u64> = self
            .index
            .iter()
            .filter(|(s, r)| r.seg == id && !moved.contains_key(s))
            .map(|(&s, _)| s)
            .collect();
        if out.len() as u64 == old_size && leaving.is_empty() {
            return Ok(());
        }

        if out.is_empty() {
            remove_file(&path)?;
            sync_dir(&self.dir)?;
            self.stats.syncs += 1;
        } else {
            let tmp = path.with_extension("tmp");
            let write = || -> io::Result<()> {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all_at(&out, 0)?;
                file.sync_data()?;
                fs::rename(&tmp, &path)?;
                File::open(&self.dir)?.sync_all()
            };
            if let Err(e) = write() {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("compacting {}", path.display()));
            }
            self.stats.syncs += 2;
            if self.active.as_ref().is_some_and(|a| a.id == id) {
                // The old file is gone: append to the new one.
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                self.active = Some(Active { id, file });
            }
        }

        // The files changed: bring the index along.
        for (seq, off) in &moved {
            if let Some(rec) = self.index.get_mut(seq) {
                rec.off = *off;
            }
        }
        for seq in leaving {
            self.forget_record(seq, id);
        }
        // Tombstones of this segment that were damaged on disk: write them again.
        for (&seq, rec) in self.index.iter_mut() {
            if rec.tomb == id && rec.seg != id && !in_ranges(&kept_ranges, seq) {
                rec.tomb = TOMB_PENDING;
                self.tombs_pending.push(seq);
                if let Some(seg) = self.segments.get_mut(&id) {
                    seg.refs -= 1;
                }
            }
        }
        self.disk_bytes = self.disk_bytes - old_size + out.len() as u64;
        if out.is_empty() {
            self.segments.remove(&id);
            if self.active.as_ref().is_some_and(|a| a.id == id) {
                self.active = None;
            }
        } else if let Some(seg) = self.segments.get_mut(&id) {
            seg.size = out.len() as u64;
            seg.tomb_bytes = tomb_bytes;
            self.stats.compactions += 1;
            self.stats.rewritten_bytes += out.len() as u64;
        }
        Ok(())
    }

    /// Drops an alert record of segment `seg` from the index once it is no longer on disk.
    fn forget_record(&mut self, seq: u64, seg: u32) {
        let Some(rec) = self.index.remove(&seq) else {
            return;
        };
        match rec.tomb {
            LIVE => {
                // Still waiting, yet no longer readable: damaged on disk.
                log::warn!("spool: alert {seq} was damaged on disk and is lost");
                self.order.remove(&(rec.severity, seq));
                self.pending_bytes -= u64::from(rec.len);
                if let Some(s) = self.segments.get_mut(&seg) {
                    s.live -= 1;
                    s.live_bytes -= u64::from(rec.len);
                }
                self.count_dropped(1);
                self.stats.corrupt += 1;
            }
            TOMB_PENDING => {}
            t if t != seg => {
                if let Some(s) = self.segments.get_mut(&t) {
                    s.refs -= 1;
                }
            }
            _ => {}
        }
    }

    /// Deletes the segments holding nothing needed: no waiting record, and no tombstone of a
    /// record still on disk elsewhere. The active segment only when `include_active` (it is
    /// otherwise kept and filled, sparing the creation of files).
    /// A file that cannot be deleted is logged and left for later.
    fn collect_free(&mut self, include_active: bool) -> anyhow::Result<()> {
        let mut stuck = BTreeSet::new();
        loop {
            let active = self.active.as_ref().map(|a| a.id);
            let free: Vec<u32> = self
                .segments
                .iter()
                .filter(|(&id, s)| {
                    s.live == 0
                        && s.refs == 0
                        && (include_active || Some(id) != active)
                        && !stuck.contains(&id)
                })
                .map(|(&id, _)| id)
                .collect();
            let mut removed = Vec::new();
            for id in free {
                match remove_file(&self.seg_path(id)) {
                    Ok(()) => removed.push(id),
                    Err(e) => {
                        log::warn!("spool: {e:#}");
                        stuck.insert(id);
                    }
                }
            }
            if removed.is_empty() {
                return Ok(());
            }
            // Durable before the deletions they allow (tombstones that become unneeded).
            sync_dir(&self.dir)?;
            self.stats.syncs += 1;
            for id in removed {
                let seqs: Vec<u64> = self
                    .index
                    .iter()
                    .filter(|(_, r)| r.seg == id)
                    .map(|(&s, _)| s)
                    .collect();
                for seq in seqs {
                    self.forget_record(seq, id);
                }
                if let Some(seg) = self.segments.remove(&id) {
                    self.disk_bytes -= seg.size;
                }
                if active == Some(id) {
                    self.active = None;
                }
            }
        }
    }

    fn seg_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08x}.seg"))
    }
}

fn parse_id(stem: &str) -> Option<u32> {
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(stem, 16)
        .ok()
        .filter(|&id| id <= MAX_SEGMENT_ID)
}

fn read_segment(path: &Path) -> anyhow::Result<Vec<u8>> {
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

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

/// Appends one record.
fn encode(out: &mut Vec<u8>, kind: u8, severity: u8, seq: u64, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind, severity, 0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..start + 24]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
}

/// Sorted sequence numbers as inclusive ranges of consecutive numbers.
fn to_ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match ranges.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(s) => *last = s,
            _ => ranges.push((s, s)),
        }
    }
    ranges
}

fn in_ranges(ranges: &[(u64, u64)], seq: u64) -> bool {
    ranges.iter().any(|&(f, l)| (f..=l).contains(&seq))
}

/// Tombstone records for `ranges`, each small enough for a segment of `segment_bytes`.
fn encode_gone(ranges: &[(u64, u64)], segment_bytes: u64) -> Vec<Vec<u8>> {
    let per_record = (segment_bytes as usize - HEADER) / RANGE;
    let mut records = Vec::new();
    let mut pieces = Vec::new();
    // A range longer than u32::MAX is split.
    for &(first, last) in ranges {
        let mut f = first;
        loop {
            let count = (last - f).min(u64::from(u32::MAX) - 1) + 1;
            pieces.push((f, count as u32));
            if f + (count - 1) == last {
                break;
            }
            f += count;
        }
    }
    for chunk in pieces.chunks(per_record) {
        let mut body = Vec::with_capacity(chunk.len() * RANGE);
        for &(first, count) in chunk {
            body.extend_from_slice(&first.to_le_bytes());
            body.extend_from_slice(&count.to_le_bytes());
        }
        let mut rec = Vec::with_capacity(HEADER + body.len());
        encode(&mut rec, KIND_GONE, 0, 0, &body);
        records.push(rec);
    }
    records
}

/// The ranges of a tombstone body, as inclusive ranges; `None` if malformed.
fn parse_ranges(body: &[u8]) -> Option<Vec<(u64, u64)>> {
    if body.is_empty() || body.len() % RANGE != 0 {
        return None;
    }
    body.chunks_exact(RANGE)
        .map(|c| {
            let first = u64::from_le_bytes(c[..8].try_into().ok()?);
            let count = u32::from_le_bytes(c[8..].try_into().ok()?);
            let last = first.checked_add(u64::from(count).checked_sub(1)?)?;
            Some((first, last))
        })
        .collect()
}

/// A valid record found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Alert {
        seq: u64,
        severity: u8,
        off: u32,
        len: u32,
    },
    Gone {
        ranges: Vec<(u64, u64)>,
        len: u32,
    },
}

enum Read {
    /// A valid record, and where the next one starts.
    Ok(Found, usize),
    /// A valid header whose body is damaged; the next record starts at the given offset.
    BadBody(usize),
    /// No valid record starts here.
    Nothing,
}

/// Reads the record at `pos` of `buf`.
fn read_record(buf: &[u8], pos: usize) -> Read {
    let Some(h) = buf.get(pos..pos + HEADER) else {
        return Read::Nothing;
    };
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[..4] != MAGIC || h[6..8] != [0, 0] || crc32fast::hash(&h[..24]) != word(24) {
        return Read::Nothing;
    }
    let (kind, severity) = (h[4], h[5]);
    let len = word(8) as usize;
    let seq = u64::from(word(12)) | u64::from(word(16)) << 32;
    let end = pos + HEADER + len;
    let Some(body) = buf.get(pos + HEADER..end) else {
        // Runs past the end of the file: a torn write.
        return Read::Nothing;
    };
    if crc32fast::hash(body) != word(20) {
        return Read::BadBody(end);
    }
    let total = (HEADER + len) as u32;
    match kind {
        KIND_ALERT if seq != 0 => Read::Ok(
            Found::Alert {
                seq,
                severity,
                off: pos as u32,
                len: total,
            },
            end,
        ),
        KIND_GONE if seq == 0 && severity == 0 => match parse_ranges(body) {
            Some(ranges) => Read::Ok(Found::Gone { ranges, len: total }, end),
            None => Read::BadBody(end),
        },
        _ => Read::BadBody(end),
    }
}

struct Scanned {
    found: Vec<Found>,
    /// Damaged stretches skipped.
    torn: usize,
    /// Where the last valid record ends.
    valid_end: usize,
}

/// Reads every valid record of a segment, skipping damage: a record with a valid header and a
/// damaged body is skipped by its length; after anything else, the reader moves on to the
/// next magic that starts a valid header.
fn scan(buf: &[u8]) -> Scanned {
    let mut scanned = Scanned {
        found: Vec::new(),
        torn: 0,
        valid_end: 0,
    };
    let mut pos = 0;
    let mut in_damage = false;
    while pos < buf.len() {
        match read_record(buf, pos) {
            Read::Ok(found, end) => {
                scanned.found.push(found);
                scanned.valid_end = end;
                pos = end;
                in_damage = false;
            }
            Read::BadBody(end) => {
                scanned.torn += 1;
                pos = end;
                in_damage = false;
            }
            Read::Nothing => {
                if !in_damage {
                    scanned.torn += 1;
                    in_damage = true;
                }
                pos = buf[pos + 1..]
                    .windows(MAGIC.len())
                    .position(|w| w == MAGIC)
                    .map_or(buf.len(), |i| pos + 1 + i);
            }
        }
    }
    scanned
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A directory removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("picket-spool-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A small deterministic random number generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The payload of alert `seq`: its length and bytes follow from the number.
    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seq.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
            .collect()
    }

    fn open(dir: &Path, max_bytes: u64) -> (Spool, Recovered) {
        Spool::open(dir, SpoolLimits { max_bytes }).unwrap()
    }

    fn all(spool: &mut Spool) -> Vec<Entry> {
        spool.peek(None, usize::MAX).unwrap()
    }

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    /// Bytes of the files in `dir`.
    fn dir_size(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    /// Copies the spool files of `from` into a new directory.
    fn copy_spool(from: &Path, name: &str) -> TempDir {
        let to = TempDir::new(name);
        fs::create_dir_all(&to.0).unwrap();
        for f in segment_files(from) {
            fs::copy(&f, to.0.join(f.file_name().unwrap())).unwrap();
        }
        to
    }

    #[test]
    fn delivers_in_sequence_order() {
        let dir = TempDir::new("order");
        let (mut spool, recovered) = open(&dir.0, 64 * 1024);
        assert_eq!(
            recovered,
            Recovered {
                records: 0,
                torn: 0,
                bytes: 0
            }
        );
        for seq in 1..=20 {
            spool
                .push(seq, (seq % 3) as u8, &payload(seq, seq as usize * 10))
                .unwrap();
        }
        assert!(
            all(&mut spool).is_empty(),
            "nothing is delivered before it is durable"
        );
        spool.flush().unwrap();
        spool.push(21, 1, b"not flushed").unwrap();
        let entries = all(&mut spool);
        assert_eq!(seqs(&entries), (1..=20).collect::<Vec<_>>());
        for e in &entries {
            assert_eq!(e.payload, payload(e.seq, e.seq as usize * 10));
            assert_eq!(e.severity, (e.seq % 3) as u8);
        }
        assert_eq!(seqs(&spool.peek(Some(5), 3).unwrap()), [6, 7, 8]);
        assert_eq!(seqs(&spool.peek(Some(19), 10).unwrap()), [20]);
        assert!(spool.peek(Some(20), 10).unwrap().is_empty());
        assert!(spool.peek(Some(u64::MAX), 10).unwrap().is_empty());
        let stats = spool.stats();
        assert_eq!((stats.pending, stats.unflushed, stats.pushed), (21, 1, 21));
        assert_eq!(stats.disk_bytes, dir_size(&dir.0));
    }

    #[test]
    fn ack_removes() {
        let dir = TempDir::new("ack");
        let (mut spool, _) = open(&dir.0, 64 * 1024);
        for seq in 1..=5 {
            spool.push(seq, 1, &payload(seq, 30)).unwrap();
        }
        spool.flush().unwrap();
        assert!(spool.ack(3).unwrap());
        assert!(!spool.ack(3).unwrap(), "a second ack finds nothing");
        assert!(
            !spool.ack(99).unwrap(),
            "an unknown sequence number finds nothing"
        );
        assert_eq!(seqs(&all(&mut spool)), [1, 2, 4, 5]);
        spool.push(6, 1, b"six").unwrap();
        assert!(spool.ack(6).unwrap(), "an unflushed record can be acked");
        spool.flush().unwrap();
        assert_eq!(seqs(&all(&mut spool)), [1, 2, 4, 5]);
        for seq in [5, 1, 2, 4] {
            assert!(spool.ack(seq).unwrap());
        }
        spool.flush().unwrap();
        assert!(all(&mut spool).is_empty());
        let stats = spool.stats();
        assert_eq!((stats.pending, stats.acked, stats.dropped), (0, 6, 0));
    }

    #[test]
    fn restart_keeps_waiting_records_and_forgets_acked_ones() {
        let dir = TempDir::new("restart");
        {
            let (mut spool, _) = open(&dir.0, 64 * 1024);
            for seq in 1..=10 {
                spool
                    .push(seq, (seq % 4) as u8, &payload(seq, 100))
                    .unwrap();
            }
            spool.flush().unwrap();
            for seq in [7, 2, 9] {
                assert!(spool.ack(seq).unwrap());
            }
            spool.flush().unwrap();
            // Not flushed: the ack is re-delivered, the push is lost.
            assert!(spool.ack(4).unwrap());
            spool.push(11, 1, b"lost").unwrap();
        }
        let (mut spool, recovered) = open(&dir.0, 64 * 1024);
        assert_eq!(recovered.records, 7);
        assert_eq!(recovered.torn, 0);
        assert_eq!(recovered.bytes, dir_size(&dir.0));
        let entries = all(&mut spool);
        assert_eq!(seqs(&entries), [1, 3, 4, 5, 6, 8, 10]);
        for e in &entries {
            assert_eq!(e.payload, payload(e.seq, 100));
            assert_eq!(e.severity, (e.seq % 4) as u8);
        }
        assert_eq!(spool.stats().last_seq, 10);
        let err = spool.push(10, 1, b"again").unwrap_err().to_string();
        assert!(err.contains("not above"), "{err}");
        spool.push(12, 1, b"twelve").unwrap();
        spool.flush().unwrap();
        drop(spool);
        let (mut spool, _) = open(&dir.0, 64 * 1024);
        assert_eq!(seqs(&all(&mut spool)), [1, 3, 4, 5, 6, 8, 10, 12]);
    }

    #[test]
    fn eviction_drops_the_oldest_of_the_lowest_severity_first() {
        let dir = TempDir::new("evict");
        // 32 KiB: 4 KiB segments, 28 KiB of records: 28 records of 1 KiB.
        let (mut spool, _) = open(&dir.0, 32 * 1024);
        let body = |seq| payload(seq, 1024 - HEADER);
        for seq in 1..=28 {
            let severity = match seq {
                1..=10 => 1,
                11..=20 => 2,
                _ => 3,
            };
            spool.push(seq, severity, &body(seq)).unwrap();
        }
        spool.flush().unwrap();
        assert_eq!(spool.take_dropped(), 0, "28 records fit");
        for seq in 29..=33 {
            spool.push(seq, 3, &body(seq)).unwrap();
        }
        assert_eq!(
            spool.take_dropped(),
            5,
            "the five oldest of severity 1 made room"
        );
        spool.flush().unwrap();
        for seq in 34..=36 {
            spool.push(seq, 0, &body(seq)).unwrap();
        }
        assert_eq!(
            spool.take_dropped(),
            3,
            "less severe than everything: dropped itself"
        );
        for seq in 37..=46 {
            spool.push(seq, 2, &body(seq)).unwrap();
        }
        assert_eq!(
            spool.take_dropped(),
            10,
            "severity 1 gone, then the oldest of 2"
        );
        assert_eq!(spool.take_dropped(), 0);
        spool.flush().unwrap();
        let expected: Vec<u64> = (16..=33).chain(37..=46).collect();
        let entries = all(&mut spool);
        assert_eq!(seqs(&entries), expected);
        assert!(entries.iter().all(|e| e.payload == body(e.seq)));
        assert_eq!(spool.stats().dropped, 18);
        assert!(dir_size(&dir.0) <= 32 * 1024);
        drop(spool);

        let (mut spool, recovered) = open(&dir.0, 32 * 1024);
        assert_eq!((recovered.records, recovered.torn), (28, 0));
        assert_eq!(seqs(&all(&mut spool)), expected);
        assert_eq!(spool.take_dropped(), 0);
        drop(spool);

        // A smaller limit (20 records of 1 KiB): the oldest of the lowest severity go at open.
        let (mut spool, recovered) = open(&dir.0, 24 * 1024);
        assert_eq!(recovered.records, 28);
        assert_eq!(spool.take_dropped(), 8);
        let expected: Vec<u64> = (21..=33).chain(40..=46).collect();
        assert_eq!(seqs(&all(&mut spool)), expected);
        assert!(dir_size(&dir.0) <= 24 * 1024, "{}", dir_size(&dir.0));
        drop(spool);
        let (mut spool, recovered) = open(&dir.0, 24 * 1024);
        assert_eq!((recovered.records, recovered.torn), (20, 0));
        assert_eq!(spool.take_dropped(), 0);
        assert_eq!(seqs(&all(&mut spool)), expected);
        drop(spool);
    }

    /// The eviction policy, written plainly: what the spool must hold.
    struct Model {
        budget: u64,
        records: BTreeMap<u64, (u8, usize)>,
        dropped: u64,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.records
                .values()
                .map(|&(_, len)| (HEADER + len) as u64)
                .sum()
        }
        fn push(&mut self, seq: u64, severity: u8, len: usize) {
            while self.bytes() + (HEADER + len) as u64 > self.budget {
                let (&victim, &(lowest, _)) = self
                    .records
                    .iter()
                    .min_by_key(|(&seq, &(sev, _))| (sev, seq))
                    .unwrap();
                self.dropped += 1;
                if severity < lowest {
                    return;
                }
                self.records.remove(&victim);
            }
            self.records.insert(seq, (severity, len));
        }
    }

    #[test]
    fn disk_stays_within_the_bound_through_push_ack_evict_cycles() {
        const MAX: u64 = 64 * 1024;
        let dir = TempDir::new("bound");
        let (mut spool, _) = open(&dir.0, MAX);
        let mut model = Model {
            budget: MAX - MAX / 8,
            records: BTreeMap::new(),
            dropped: 0,
        };
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (mut seq, mut compactions, mut dropped, mut syncs, mut peak) = (0u64, 0, 0, 0, 0);
        let rounds = 800;
        for round in 0..rounds {
            for _ in 0..rng.below(8) + 1 {
                seq += 1;
                let len = rng.below(1500) as usize;
                let severity = rng.below(4) as u8;
                spool.push(seq, severity, &payload(seq, len)).unwrap();
                model.push(seq, severity, len);
            }
            // The broker acknowledges some of what was published, in any order; some records
            // wait for long (severity 3 when the broker is slow, every fifth round).
            // Every 200 rounds the broker is away for 50 rounds: the spool fills up.
            let offline = round % 200 >= 150;
            let published = all(&mut spool);
            for e in &published {
                let slow = round % 5 != 0 && e.severity == 3;
                if !offline && !slow && rng.below(100) < 35 {
                    assert!(spool.ack(e.seq).unwrap());
                    model.records.remove(&e.seq);
                }
            }
            spool.flush().unwrap();
            let size = dir_size(&dir.0);
            peak = peak.max(size);
            assert!(
                size <= MAX,
                "round {round}: {size} bytes on disk, over {MAX}"
            );
            assert_eq!(spool.stats().disk_bytes, size, "round {round}");
            if round % 100 == 99 {
                let entries = all(&mut spool);
                assert_eq!(
                    seqs(&entries),
                    model.records.keys().copied().collect::<Vec<_>>(),
                    "round {round}"
                );
                for e in &entries {
                    let (severity, len) = model.records[&e.seq];
                    assert_eq!((e.severity, &e.payload), (severity, &payload(e.seq, len)));
                }
            }
            if round % 200 == 199 {
                compactions += spool.stats().compactions;
                dropped += spool.stats().dropped;
                syncs += spool.stats().syncs;
                drop(spool);
                let recovered;
                (spool, recovered) = open(&dir.0, MAX);
                assert_eq!(recovered.torn, 0);
                assert_eq!(recovered.records, model.records.len());
                assert_eq!(
                    seqs(&all(&mut spool)),
                    model.records.keys().copied().collect::<Vec<_>>()
                );
            }
        }
        assert_eq!(dropped, model.dropped, "every drop is counted");
        assert!(
            dropped > 100,
            "the workload filled the spool: {dropped} drops"
        );
        assert!(compactions > 0, "the workload made holes to compact");
        eprintln!("{rounds} rounds: {compactions} compactions, {syncs} syncs, peak {peak} bytes");
        assert!(peak > MAX / 2, "peak {peak}");
    }

    #[test]
    fn in_order_acks_free_whole_segments_without_rewriting() {
        const MAX: u64 = 64 * 1024;
        let dir = TempDir::new("inorder");
        let (mut spool, _) = open(&dir.0, MAX);
        let mut seq = 0;
        for _ in 0..300 {
            for _ in 0..5 {
                seq += 1;
                spool.push(seq, 2, &payload(seq, 200)).unwrap();
            }
            spool.flush().unwrap();
            for e in all(&mut spool) {
                assert!(spool.ack(e.seq).unwrap());
            }
            spool.flush().unwrap();
            assert!(spool.stats().segments <= 2, "{:?}", spool.stats());
        }
        let stats = spool.stats();
        assert_eq!((stats.compactions, stats.dropped, stats.pending), (0, 0, 0));
        // 600 flushes: one sync each, and a few for the segments started and deleted.
        assert!(stats.syncs < 600 * 13 / 10, "{stats:?}");
        assert!(dir_size(&dir.0) <= MAX / 8 + 1000);
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_record() {
        let dir = TempDir::new("torn-src");
        let (mut spool, _) = open(&dir.0, 64 * 1024);
        for seq in 1..=5 {
            spool.push(seq, 1, &payload(seq, 60)).unwrap();
        }
        spool.flush().unwrap();
        let last = spool.index[&5];
        drop(spool);
        let files = segment_files(&dir.0);
        assert_eq!(files.len(), 1);
        let full = fs::read(&files[0]).unwrap();
        assert_eq!(full.len(), (last.off + last.len) as usize);

        for cut in last.off as usize..full.len() {
            let copy = TempDir::new("torn");
            fs::create_dir_all(&copy.0).unwrap();
            let seg = copy.0.join(files[0].file_name().unwrap());
            fs::write(&seg, &full[..cut]).unwrap();
            let (mut spool, recovered) = open(&copy.0, 64 * 1024);
            let torn = usize::from(cut > last.off as usize);
            assert_eq!(
                (recovered.records, recovered.torn),
                (4, torn),
                "cut at {cut}"
            );
            let entries = all(&mut spool);
            assert_eq!(seqs(&entries), [1, 2, 3, 4], "cut at {cut}");
            assert!(entries.iter().all(|e| e.payload == payload(e.seq, 60)));
            assert_eq!(fs::metadata(&seg).unwrap().len(), u64::from(last.off));
            // Records written after the cut are found after the next restart.
            spool.push(6, 1, &payload(6, 60)).unwrap();
            spool.flush().unwrap();
            drop(spool);
            let (mut spool, recovered) = open(&copy.0, 64 * 1024);
            assert_eq!((recovered.records, recovered.torn), (5, 0), "cut at {cut}");
            assert_eq!(seqs(&all(&mut spool)), [1, 2, 3, 4, 6]);
        }
    }

    /// A spool of `n` records of 60 bytes (several segments when `max_bytes` is small), with
    /// the records in `acked` acknowledged.
    fn sample(name: &str, n: u64, max_bytes: u64, acked: &[u64]) -> (TempDir, BTreeMap<u64, Rec>) {
        let dir = TempDir::new(name);
        let (mut spool, _) = open(&dir.0, max_bytes);
        for seq in 1..=n {
            spool.push(seq, (seq % 3) as u8, &payload(seq, 60)).unwrap();
            if seq % 10 == 0 {
                spool.flush().unwrap();
            }
        }
        spool.flush().unwrap();
        for &seq in acked {
            assert!(spool.ack(seq).unwrap());
        }
        spool.flush().unwrap();
        let index = spool.index.clone();
        (dir, index)
    }

    /// Opens a damaged copy; checks that every record returned is intact and in order.
    fn open_damaged(dir: &Path, max_bytes: u64) -> (Vec<u64>, Recovered) {
        let (mut spool, recovered) = Spool::open(dir, SpoolLimits { max_bytes })
            .unwrap_or_else(|e| panic!("opening a damaged spool failed: {e:#}"));
        let entries = all(&mut spool);
        for w in entries.windows(2) {
            assert!(
                w[0].seq < w[1].seq,
                "out of order: {} then {}",
                w[0].seq,
                w[1].seq
            );
        }
        for e in &entries {
            assert_eq!(e.payload, payload(e.seq, 60), "alert {} altered", e.seq);
            assert_eq!(e.severity, (e.seq % 3) as u8);
        }
        (seqs(&entries), recovered)
    }

    #[test]
    fn damage_in_the_middle_skips_only_the_damaged_records() {
        let (src, index) = sample("damage-src", 9, 64 * 1024, &[]);
        let file = segment_files(&src.0).remove(0);
        let name = file.file_name().unwrap().to_owned();
        let rec5 = index[&5];
        let (off5, end5) = (rec5.off as usize, (rec5.off + rec5.len) as usize);
        let damage = |f: &dyn Fn(&mut Vec<u8>)| {
            let copy = copy_spool(&src.0, "damage");
            let path = copy.0.join(&name);
            let mut bytes = fs::read(&path).unwrap();
            f(&mut bytes);
            fs::write(&path, &bytes).unwrap();
            copy
        };
        let without =
            |gone: &[u64]| -> Vec<u64> { (1..=9).filter(|s| !gone.contains(s)).collect() };

        // One bit of the header (the length field), then one of the payload.
        for at in [off5 + 9, off5 + HEADER + 20] {
            let copy = damage(&|b| b[at] ^= 0x10);
            let (found, recovered) = open_damaged(&copy.0, 64 * 1024);
            assert_eq!(found, without(&[5]), "bit flip at {at}");
            assert_eq!(recovered.torn, 1);
        }
        // Random bytes over the end of record 4 and the start of record 5.
        let copy = damage(&|b| {
            let mut rng = Rng(77);
            for x in &mut b[off5 - 30..off5 + 40] {
                *x = rng.next() as u8;
            }
        });
        let (found, recovered) = open_damaged(&copy.0, 64 * 1024);
        assert_eq!(found, without(&[4, 5]));
        assert!(recovered.torn >= 1);
        // A copy of record 5 over record 4: a duplicate, not delivered twice.
        let copy = damage(&|b| {
            let rec5 = b[off5..end5].to_vec();
            let off4 = index[&4].off as usize;
            b[off4..off4 + rec5.len()].copy_from_slice(&rec5);
        });
        let (found, _) = open_damaged(&copy.0, 64 * 1024);
        assert_eq!(found, without(&[4]));
        // Garbage or zeros after the last record (a power cut during a write): cut off.
        for fill in [None, Some(0u8)] {
            let copy = damage(&|b| {
                let mut rng = Rng(99);
                b.extend((0..100).map(|_| fill.unwrap_or(rng.next() as u8)));
            });
            let (found, recovered) = open_damaged(&copy.0, 64 * 1024);
            assert_eq!((found, recovered.torn), (without(&[]), 1));
            let (found, recovered) = open_damaged(&copy.0, 64 * 1024);
            assert_eq!(
                (found, recovered.torn),
                (without(&[]), 0),
                "the torn end was cut"
            );
        }
    }

    #[test]
    fn damage_in_an_older_segment_keeps_the_other_segments() {
        let (src, index) = sample("older-src", 120, 32 * 1024, &[]);
        let files = segment_files(&src.0);
        assert!(files.len() >= 3, "{files:?}");
        let rec = index[&3];
        assert_eq!(rec.seg, 0);
        let path = src.0.join(&files[0]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[rec.off as usize + 2] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let (found, recovered) = open_damaged(&src.0, 32 * 1024);
        assert_eq!(found, (1..=120).filter(|&s| s != 3).collect::<Vec<_>>());
        assert_eq!(recovered.torn, 1);
    }

    #[test]
    fn random_damage_never_panics_and_never_alters_a_record() {
        const MAX: u64 = 32 * 1024;
        let acked: Vec<u64> = (1..=200).filter(|s| s % 7 == 0 || s % 11 == 0).collect();
        let (src, _) = sample("fuzz-src", 200, MAX, &acked);
        let files = segment_files(&src.0);
        assert!(files.len() >= 3);
        let mut rng = Rng(0xdead_beef_0042);
        for round in 0..300 {
            let copy = copy_spool(&src.0, "fuzz");
            for _ in 0..rng.below(5) + 1 {
                let file = &files[rng.below(files.len() as u64) as usize];
                let path = copy.0.join(file.file_name().unwrap());
                let mut bytes = fs::read(&path).unwrap();
                if bytes.is_empty() {
                    continue;
                }
                let at = rng.below(bytes.len() as u64) as usize;
                match rng.below(4) {
                    0 => bytes[at] ^= 1 << rng.below(8),
                    1 => {
                        let end = (at + rng.below(200) as usize).min(bytes.len());
                        for x in &mut bytes[at..end] {
                            *x = rng.next() as u8;
                        }
                    }
                    2 => bytes.truncate(at),
                    _ => {
                        let end = (at + rng.below(200) as usize).min(bytes.len());
                        bytes[at..end].fill(0);
                    }
                }
                fs::write(&path, &bytes).unwrap();
            }
            let (found, _) = open_damaged(&copy.0, MAX);
            assert!(found.len() <= 200, "round {round}");
            if round % 5 != 0 {
                continue;
            }
            // A damaged spool goes on working: new records, compaction, restart.
            let (mut spool, _) = open(&copy.0, MAX);
            let mut seq = spool.stats().last_seq;
            for _ in 0..150 {
                seq += 1;
                spool.push(seq, (seq % 3) as u8, &payload(seq, 60)).unwrap();
                if seq % 7 == 0 {
                    spool.ack(seq).unwrap();
                }
                if seq % 25 == 0 {
                    spool.flush().unwrap();
                }
            }
            spool.flush().unwrap();
            assert!(dir_size(&copy.0) <= MAX, "round {round}");
            drop(spool);
            let (found_again, recovered) = open_damaged(&copy.0, MAX);
            assert!(found_again.len() > 100, "round {round}");
            assert!(found_again.contains(&seq) || seq % 7 == 0, "round {round}");
            let _ = recovered;
        }
    }

    #[test]
    fn missing_or_empty_directories_and_files() {
        let base = TempDir::new("dirs");
        let dir = base.0.join("a/b/spool");
        let (mut spool, recovered) = open(&dir, 64 * 1024);
        assert_eq!(
            recovered,
            Recovered {
                records: 0,
                torn: 0,
                bytes: 0
            }
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&dir).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        assert!(all(&mut spool).is_empty());
        drop(spool);

        // Empty segment files, a stray temporary file, an unknown file.
        let dir = base.0.join("empty");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("00000000.seg"), b"").unwrap();
        fs::write(dir.join("00000003.seg"), b"").unwrap();
        fs::write(dir.join("00000002.tmp"), b"half a compaction").unwrap();
        fs::write(dir.join("notes.txt"), b"left by someone").unwrap();
        let (mut spool, recovered) = open(&dir, 64 * 1024);
        assert_eq!(
            recovered,
            Recovered {
                records: 0,
                torn: 0,
                bytes: 0
            }
        );
        assert!(!dir.join("00000002.tmp").exists());
        assert!(dir.join("notes.txt").exists());
        spool.push(1, 1, b"one").unwrap();
        spool.flush().unwrap();
        drop(spool);
        let (mut spool, recovered) = open(&dir, 64 * 1024);
        assert_eq!(recovered.records, 1);
        assert_eq!(all(&mut spool)[0].payload, b"one");
        assert!(
            !dir.join("00000000.seg").exists(),
            "empty sealed segments are deleted"
        );
    }

    #[test]
    fn refuses_huge_payloads_small_limits_and_backward_sequence_numbers() {
        let dir = TempDir::new("refuse");
        let err = Spool::open(&dir.0, SpoolLimits { max_bytes: 1000 })
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("too small"), "{err}");
        let (mut spool, _) = open(&dir.0, 64 * 1024);
        let max = spool.max_payload();
        assert_eq!(max, 8 * 1024 - HEADER);
        let err = spool.push(1, 1, &vec![0; max + 1]).unwrap_err().to_string();
        assert!(err.contains(&format!("{} bytes", max + 1)), "{err}");
        assert!(err.contains(&format!("limit of {max} bytes")), "{err}");
        spool.push(1, 1, &vec![7; max]).unwrap();
        spool.flush().unwrap();
        assert_eq!(all(&mut spool)[0].payload, vec![7; max]);
        assert!(spool.push(1, 1, b"again").is_err());
        assert!(spool.push(0, 1, b"zero").is_err());
    }

    #[test]
    fn one_process_per_spool() {
        let dir = TempDir::new("lock");
        let (spool, _) = open(&dir.0, 64 * 1024);
        let err = Spool::open(
            &dir.0,
            SpoolLimits {
                max_bytes: 64 * 1024,
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("in use by another process"), "{err}");
        drop(spool);
        open(&dir.0, 64 * 1024);
    }

    #[test]
    fn a_record_damaged_after_open_is_dropped_when_read() {
        let dir = TempDir::new("late-damage");
        let (mut spool, _) = open(&dir.0, 64 * 1024);
        for seq in 1..=3 {
            spool.push(seq, 1, &payload(seq, 60)).unwrap();
        }
        spool.flush().unwrap();
        let rec = spool.index[&2];
        let path = spool.seg_path(rec.seg);
        let mut bytes = fs::read(&path).unwrap();
        bytes[rec.off as usize + HEADER + 5] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(seqs(&all(&mut spool)), [1, 3]);
        assert_eq!(spool.take_dropped(), 1);
        assert_eq!(spool.stats().corrupt, 1);
        spool.flush().unwrap();
        drop(spool);
        let (mut spool, _) = open(&dir.0, 64 * 1024);
        assert_eq!(seqs(&all(&mut spool)), [1, 3]);
    }

    #[test]
    fn an_unreadable_segment_is_skipped() {
        let (dir, _) = sample("foreign", 5, 64 * 1024, &[]);
        // Too large to be a segment (sparse), and one that cannot be read.
        File::create(dir.0.join("00000005.seg"))
            .unwrap()
            .set_len(MAX_FILE + 1)
            .unwrap();
        fs::create_dir(dir.0.join("00000007.seg")).unwrap();
        let (found, recovered) = open_damaged(&dir.0, 64 * 1024);
        assert_eq!(found, [1, 2, 3, 4, 5]);
        assert_eq!(recovered.torn, 2);
        let (mut spool, _) = open(&dir.0, 64 * 1024);
        spool.push(6, 0, &payload(6, 60)).unwrap();
        spool.flush().unwrap();
        assert!(dir.0.join("00000008.seg").exists(), "new segments go above");
        assert_eq!(
            fs::metadata(dir.0.join("00000005.seg")).unwrap().len(),
            MAX_FILE + 1
        );
        drop(spool);
        let (found, _) = open_damaged(&dir.0, 64 * 1024);
        assert_eq!(found, [1, 2, 3, 4, 5, 6]);
    }
}
