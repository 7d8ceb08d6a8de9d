//! Opening: reading every segment a previous run left back into the index, skipping damage,
//! cutting a torn end off the newest segment, and resuming appending where it stopped.

use std::{fs, fs::OpenOptions, path::Path};

use anyhow::Context as _;

use super::{
    files::{parse_id, read_segment},
    format::{scan, Found},
    Active, Rec, Segment, Spool, LIVE, MAX_SEGMENT_ID,
};

impl Spool {
    /// Reads every segment, oldest first, into the index. Returns the damaged records skipped.
    pub(super) fn recover(&mut self) -> anyhow::Result<usize> {
        let ids = self.list_segments()?;
        let mut torn = 0;
        let mut last_alert = 0u64;
        for (n, &id) in ids.iter().enumerate() {
            let newest = n + 1 == ids.len();
            torn += self.recover_segment(id, newest, &mut last_alert)?;
        }
        self.last_seq = self.last_seq.max(last_alert);
        if let Some(&last) = ids.last() {
            self.resume_after(last)?;
        }
        Ok(torn)
    }

    /// The segment numbers in the spool directory, in order. Removes the temporary files of
    /// interrupted compactions; logs and ignores files that are not the spool's.
    fn list_segments(&self) -> anyhow::Result<Vec<u32>> {
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
        Ok(ids)
    }

    /// Reads segment `id` into the index and the segment table (`newest`: the last one, whose
    /// torn end is cut off). `last_alert` is the highest sequence number read so far; an alert
    /// not above it is counted as damage. Returns the damaged records skipped.
    fn recover_segment(
        &mut self,
        id: u32,
        newest: bool,
        last_alert: &mut u64,
    ) -> anyhow::Result<usize> {
        let path = self.seg_path(id);
        let buf = match read_segment(&path) {
            Ok(buf) => buf,
            Err(e) => {
                // Its records are lost; the others are not held hostage.
                log::warn!("spool: skipping a segment: {e:#}");
                return Ok(1);
            }
        };
        let scanned = scan(&buf);
        let mut torn = scanned.torn;
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
                    if seq <= *last_alert {
                        // Out of order or repeated: not something this spool wrote.
                        torn += 1;
                        continue;
                    }
                    *last_alert = seq;
                    let rec = Rec {
                        seg: id,
                        off,
                        len,
                        severity,
                        tomb: LIVE,
                    };
                    self.recover_alert(&mut seg, seq, rec);
                }
                Found::Gone { ranges, len } => {
                    seg.tomb_bytes += u64::from(len);
                    self.recover_tombstones(id, &mut seg, &ranges);
                }
            }
        }
        if newest && (scanned.valid_end as u64) < seg.size {
            self.cut_torn_end(&path, &mut seg, scanned.valid_end as u64)?;
        }
        self.disk_bytes += seg.size;
        self.segments.insert(id, seg);
        Ok(torn)
    }

    /// Indexes a waiting alert found in `seg`, the segment being read.
    fn recover_alert(&mut self, seg: &mut Segment, seq: u64, rec: Rec) {
        self.index.insert(seq, rec);
        self.order.insert((rec.severity, seq));
        seg.live += 1;
        seg.live_bytes += u64::from(rec.len);
        self.pending_bytes += u64::from(rec.len);
    }

    /// Applies a tombstone record of segment `id` (`seg`, the segment being read): the records
    /// it names are gone, and while they are on disk elsewhere this segment is needed.
    fn recover_tombstones(&mut self, id: u32, seg: &mut Segment, ranges: &[(u64, u64)]) {
        for &(first, last) in ranges {
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

    /// Cuts the newest segment (`seg`, at `path`) at `valid_end`, the end of its last good
    /// record. It is the only one a crash can tear: new records then follow the last good one.
    fn cut_torn_end(
        &mut self,
        path: &Path,
        seg: &mut Segment,
        valid_end: u64,
    ) -> anyhow::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.set_len(valid_end)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("truncating the torn end of {}", path.display()))?;
        seg.size = valid_end;
        self.stats.syncs += 1;
        Ok(())
    }

    /// Continues after the newest segment `last`: new segments are numbered above it, and it
    /// stays the active one while it has room.
    fn resume_after(&mut self, last: u32) -> anyhow::Result<()> {
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
            self.active = Some(Active {
                id: last,
                file,
                entry_synced: true,
            });
        }
        Ok(())
    }

    /// Brings what a previous run left within this run's limits (its `max_bytes` may have been
    /// larger): drops the records over the budget, deletes the segments holding nothing needed,
    /// and compacts and flushes when the files are still too large or tombstones are due.
    pub(super) fn fit_limits(&mut self) -> anyhow::Result<()> {
        while self.pending_bytes > self.budget {
            let Some(&(_, seq)) = self.order.first() else {
                break;
            };
            self.remove(seq);
            self.count_dropped(1);
        }
        self.collect_free(false)?;
        if self.disk_bytes > self.max_bytes || !self.tombs_pending.is_empty() {
            self.make_room(0)?;
            self.flush()?;
        }
        Ok(())
    }
}
