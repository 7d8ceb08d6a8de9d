//! Unit tests of the spool: order, acknowledgements, restarts, eviction, the disk bound.
//! `damage` has the tests of torn writes, damage on the medium and odd directories.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::*;

mod damage;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("picket-spool-{name}-{}-{n}", std::process::id()));
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
