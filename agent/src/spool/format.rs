//! Records: encoding and decoding of the on-disk format described in the [module
//! documentation](super): the 28-byte header with its two CRC-32s, the two kinds of record
//! (alert, tombstones), tombstone ranges, and reading records back while skipping damage.

/// Starts every record; lets a reader find the next record after damage.
const MAGIC: [u8; 4] = *b"PkS1";
/// Bytes of a record header.
pub const HEADER: usize = 28;
pub(super) const KIND_ALERT: u8 = 1;
const KIND_GONE: u8 = 2;
/// Bytes of one tombstone range: first sequence number (u64) and count (u32).
const RANGE: usize = 12;

/// Appends one record.
pub(super) fn encode(out: &mut Vec<u8>, kind: u8, severity: u8, seq: u64, body: &[u8]) {
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
pub(super) fn to_ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match ranges.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(s) => *last = s,
            _ => ranges.push((s, s)),
        }
    }
    ranges
}

pub(super) fn in_ranges(ranges: &[(u64, u64)], seq: u64) -> bool {
    ranges.iter().any(|&(f, l)| (f..=l).contains(&seq))
}

/// Tombstone records for `ranges`, each small enough for a segment of `segment_bytes`.
pub(super) fn encode_gone(ranges: &[(u64, u64)], segment_bytes: u64) -> Vec<Vec<u8>> {
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
pub(super) fn parse_ranges(body: &[u8]) -> Option<Vec<(u64, u64)>> {
    if body.is_empty() || !body.len().is_multiple_of(RANGE) {
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
pub(super) enum Found {
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

pub(super) enum Read {
    /// A valid record, and where the next one starts.
    Ok(Found, usize),
    /// A valid header whose body is damaged; the next record starts at the given offset.
    BadBody(usize),
    /// No valid record starts here.
    Nothing,
}

/// Reads the record at `pos` of `buf`.
pub(super) fn read_record(buf: &[u8], pos: usize) -> Read {
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

/// What [`scan`] found in a segment.
pub(super) struct Scanned {
    pub(super) found: Vec<Found>,
    /// Damaged stretches skipped.
    pub(super) torn: usize,
    /// Where the last valid record ends.
    pub(super) valid_end: usize,
}

/// Reads every valid record of a segment, skipping damage: a record with a valid header and a
/// damaged body is skipped by its length; after anything else, the reader moves on to the
/// next magic that starts a valid header.
pub(super) fn scan(buf: &[u8]) -> Scanned {
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
