//! Writing: the flush that makes the batch and the tombstones durable, one write and one
//! `fdatasync` per segment written to, and the choice of the segment to append to.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::{FileExt, OpenOptionsExt},
};

use anyhow::{bail, Context as _};

use super::{
    format::{encode, encode_gone, parse_ranges, to_ranges, HEADER, KIND_ALERT},
    Active, Pending, Rec, Segment, Spool, LIVE, MAX_SEGMENT_ID, TOMB_PENDING,
};

/// The records of one write to one segment, encoded.
struct Group {
    buf: Vec<u8>,
    /// The alerts in `buf`: sequence number, severity, offset in `buf`, length.
    alerts: Vec<(u64, u8, u64, u64)>,
    /// The tombstone records in `buf`: offset in `buf`, length.
    tombs: Vec<(usize, usize)>,
}

impl Spool {
    /// Makes the batch and the acknowledgements since the last flush durable: one write and one
    /// `fdatasync` (more only when a segment fills up). May delete or compact segments first
    /// to stay within `max_bytes`.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.retain_needed_tombs();
        if self.batch.is_empty() && self.tombs_pending.is_empty() {
            return Ok(());
        }
        self.make_room_for_flush()?;
        let tombs = encode_gone(&to_ranges(&self.tombs_pending), self.segment_bytes);

        // The records to write, in order: alerts first, then tombstones. Normally all in one
        // segment; a group per segment when the active one fills up.
        let mut next_tomb = 0;
        while !self.batch.is_empty() || next_tomb < tombs.len() {
            next_tomb += self.write_group(&tombs[next_tomb..])?;
        }
        self.tombs_pending.clear();
        // The batch is durable: failing to delete what is no longer needed does not undo that.
        if let Err(e) = self.collect_free(false) {
            self.warn(&e);
        }
        Ok(())
    }

    /// Makes room under `max_bytes` for the batch and the pending tombstones, then keeps the
    /// pending tombstones still needed (making room may have deleted their records).
    fn make_room_for_flush(&mut self) -> anyhow::Result<()> {
        let batch_bytes: u64 = self.batch.iter().map(Pending::len).sum();
        let tomb_bytes: u64 = encode_gone(&to_ranges(&self.tombs_pending), self.segment_bytes)
            .iter()
            .map(|r| r.len() as u64)
            .sum();
        self.make_room(batch_bytes + tomb_bytes)?;
        self.retain_needed_tombs();
        Ok(())
    }

    /// Writes the head of the batch, then of `tombs`, as much as fits in the segment to
    /// append to, durably, and accounts for it. Returns the tombstone records written.
    fn write_group(&mut self, tombs: &[Vec<u8>]) -> anyhow::Result<usize> {
        let first_len = match self.batch.first() {
            Some(p) => p.len(),
            None => tombs[0].len() as u64,
        };
        let (id, base, created) = self.writable_segment(first_len)?;
        let group = self.fill_group(base, tombs);
        if group.buf.is_empty() {
            bail!("a spool record of {first_len} bytes does not fit in a segment");
        }
        self.write_segment(id, base, &group.buf, created)?;
        self.account_written(id, base, &group);
        Ok(group.tombs.len())
    }

    /// Encodes the head of the batch, then of `tombs`, while it fits in a segment whose size
    /// is `base`.
    fn fill_group(&self, base: u64, tombs: &[Vec<u8>]) -> Group {
        let mut group = Group {
            buf: Vec::new(),
            alerts: Vec::new(),
            tombs: Vec::new(),
        };
        let buf = &mut group.buf;
        loop {
            let (len, alert) = match self.batch.get(group.alerts.len()) {
                Some(p) => (p.len(), Some(p)),
                None => match tombs.get(group.tombs.len()) {
                    Some(t) => (t.len() as u64, None),
                    None => break,
                },
            };
            if base + buf.len() as u64 + len > self.segment_bytes {
                break;
            }
            match alert {
                Some(p) => {
                    group
                        .alerts
                        .push((p.seq, p.severity, buf.len() as u64, len));
                    encode(buf, KIND_ALERT, p.severity, p.seq, &p.payload);
                }
                None => {
                    group.tombs.push((buf.len(), len as usize));
                    buf.extend_from_slice(&tombs[group.tombs.len() - 1]);
                }
            }
        }
        group
    }

    /// Accounts for a group now durable at `base` in segment `id`: its size, the alerts in
    /// the index (out of the batch), and the records its tombstones name.
    fn account_written(&mut self, id: u32, base: u64, group: &Group) {
        let seg = self.segments.entry(id).or_default();
        seg.size = base + group.buf.len() as u64;
        self.disk_bytes += group.buf.len() as u64;
        for &(seq, severity, off, len) in &group.alerts {
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
        self.batch.drain(..group.alerts.len());
        for &(off, len) in &group.tombs {
            seg.tomb_bytes += len as u64;
            let body = &group.buf[off + HEADER..off + len];
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
    }

    /// The segment to append a record of `len` bytes to, starting a new one when the active
    /// one is full: (segment, its size, whether its directory entry is still to be synced: a
    /// new file, or one whose first write failed).
    fn writable_segment(&mut self, len: u64) -> anyhow::Result<(u32, u64, bool)> {
        if let Some(active) = &self.active {
            let size = self.segments.get(&active.id).map_or(0, |s| s.size);
            if size + len <= self.segment_bytes {
                return Ok((active.id, size, !active.entry_synced));
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
        self.active = Some(Active {
            id,
            file,
            entry_synced: false,
        });
        Ok((id, 0, true))
    }

    /// Writes `buf` at `base` in the active segment `id` and syncs it (and the directory for a
    /// new file). A write that fails (a full or read-only disk) is cut off again and the
    /// segment stays the one appended to; if it cannot be cut, or the sync fails, the segment
    /// is sealed: later records go to a new one.
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
        let mut result = active.file.write_all_at(buf, base);
        if let Err(e) = result {
            // Nothing of it was synced: cut what landed and go on in this segment (a full
            // disk is tried again every second, without a new file each time). The cut is
            // synced: records of the failed write coming back after a power cut would be
            // copies of records written later elsewhere. If it cannot be cut, the segment is
            // sealed below.
            if active
                .file
                .set_len(base)
                .and_then(|()| active.file.sync_data())
                .is_ok()
            {
                return Err(e).with_context(|| {
                    format!(
                        "writing to the spool segment {}",
                        self.seg_path(id).display()
                    )
                });
            }
            result = Err(e);
        }
        if result.is_ok() {
            result = active.file.sync_data();
            self.stats.syncs += 1;
        }
        if result.is_ok() && created {
            result = File::open(&self.dir).and_then(|d| d.sync_all());
            self.stats.syncs += 1;
            if result.is_ok() {
                if let Some(active) = self.active.as_mut() {
                    active.entry_synced = true;
                }
            }
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
}
