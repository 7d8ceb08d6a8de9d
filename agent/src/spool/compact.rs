//! Reclaiming space: deleting the segments holding nothing needed, and compacting the others
//! (rewriting them with only their waiting records and the tombstones still needed) when the
//! files would go over `max_bytes`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
};

use anyhow::Context as _;

use super::{
    files::{read_segment, remove_file, sync_dir},
    format::{encode_gone, in_ranges, scan, Found},
    Active, Spool, LIVE, TOMB_PENDING,
};

/// What a compaction keeps of a segment.
struct Kept {
    /// The new contents of the file: the waiting records, then the tombstones still needed.
    out: Vec<u8>,
    /// The waiting records, by sequence number, and their offsets in `out`.
    moved: BTreeMap<u64, u32>,
    /// The tombstone ranges still needed.
    ranges: Vec<(u64, u64)>,
    /// Bytes of the tombstone records in `out`.
    tomb_bytes: u64,
}

impl Spool {
    /// Brings the files down so that `incoming` more bytes fit under `max_bytes`: deletes
    /// segments with nothing needed in them, then compacts the most reclaimable ones until
    /// half a segment below the limit (so that the next flushes do not compact again at once).
    pub(super) fn make_room(&mut self, incoming: u64) -> anyhow::Result<()> {
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
                self.warn(&e);
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
        let kept = self.keep(id, &buf);
        let old_size = self.segments.get(&id).map_or(0, |s| s.size);
        let leaving: Vec<u64> = self
            .index
            .iter()
            .filter(|(s, r)| r.seg == id && !kept.moved.contains_key(s))
            .map(|(&s, _)| s)
            .collect();
        if kept.out.len() as u64 == old_size && leaving.is_empty() {
            return Ok(());
        }

        if kept.out.is_empty() {
            remove_file(&path)?;
            sync_dir(&self.dir)?;
            self.stats.syncs += 1;
        } else {
            self.rewrite(id, &path, &kept.out)?;
        }
        self.reindex_compacted(id, &kept, leaving);
        self.resize_compacted(id, old_size, &kept);
        Ok(())
    }

    /// What compacting segment `id`, whose contents are `buf`, keeps: the records still
    /// waiting (those the index places there) and the tombstones of records still on disk in
    /// other segments.
    fn keep(&self, id: u32, buf: &[u8]) -> Kept {
        let scanned = scan(buf);
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
        Kept {
            out,
            moved,
            ranges: kept_ranges,
            tomb_bytes,
        }
    }

    /// Replaces segment `id` (at `path`) with `out`: written to a temporary file, synced,
    /// renamed over, the directory synced. The active segment goes on in the new file.
    fn rewrite(&mut self, id: u32, path: &Path, out: &[u8]) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let write = || -> io::Result<()> {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all_at(out, 0)?;
            file.sync_data()?;
            fs::rename(&tmp, path)?;
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
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            self.active = Some(Active {
                id,
                file,
                entry_synced: true,
            });
        }
        Ok(())
    }

    /// The files changed: brings the index along. The kept records get their new offsets, the
    /// `leaving` ones are forgotten, and the records whose tombstones in this segment were
    /// damaged on disk get them written again by the next flush.
    fn reindex_compacted(&mut self, id: u32, kept: &Kept, leaving: Vec<u64>) {
        for (seq, off) in &kept.moved {
            if let Some(rec) = self.index.get_mut(seq) {
                rec.off = *off;
            }
        }
        for seq in leaving {
            self.forget_record(seq, id);
        }
        // Tombstones of this segment that were damaged on disk: write them again.
        for (&seq, rec) in self.index.iter_mut() {
            if rec.tomb == id && rec.seg != id && !in_ranges(&kept.ranges, seq) {
                rec.tomb = TOMB_PENDING;
                self.tombs_pending.push(seq);
                if let Some(seg) = self.segments.get_mut(&id) {
                    seg.refs -= 1;
                }
            }
        }
    }

    /// Accounts for segment `id`, `old_size` bytes before, now holding `kept` (or deleted
    /// when that is empty).
    fn resize_compacted(&mut self, id: u32, old_size: u64, kept: &Kept) {
        let size = kept.out.len() as u64;
        self.disk_bytes = self.disk_bytes - old_size + size;
        if kept.out.is_empty() {
            self.segments.remove(&id);
            if self.active.as_ref().is_some_and(|a| a.id == id) {
                self.active = None;
            }
        } else if let Some(seg) = self.segments.get_mut(&id) {
            seg.size = size;
            seg.tomb_bytes = kept.tomb_bytes;
            self.stats.compactions += 1;
            self.stats.rewritten_bytes += size;
        }
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
    pub(super) fn collect_free(&mut self, include_active: bool) -> anyhow::Result<()> {
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
                        self.warn(&e);
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
}
