//! Unit tests of the spool under damage: torn writes, damaged records and segments, odd
//! directories and files, limits it refuses, the lock.

use std::fs::File;

use super::{super::files::MAX_FILE, *};

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
    let without = |gone: &[u64]| -> Vec<u64> { (1..=9).filter(|s| !gone.contains(s)).collect() };

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
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&dir).unwrap().permissions());
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
