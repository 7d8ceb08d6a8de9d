//! The alert spool under `kill -9`.
//!
//! A child process (this test binary again, told so by an environment variable) pushes,
//! flushes and acknowledges alerts in a loop over one spool directory and reports on a pipe
//! what it saw become durable. The parent kills it with SIGKILL at a random moment, twenty
//! times over the same directory. After each kill the spool must open, and hold every alert
//! whose flush returned exactly once, in order, with its payload intact, and none whose
//! acknowledgement was flushed.
//!
//! Acknowledgements that were not flushed may come back (the wire tolerates duplicates);
//! pushes that were not flushed may be lost.
//!
//! This test has its own `main` (no libtest harness): the child must not run the harness.
// Without the harness clippy does not see a test here; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use picket_agent::spool::{Spool, SpoolLimits};

const NAME: &str = "spool_survives_kill_9";
const CHILD_ENV: &str = "PICKET_SPOOL_CRASH_CHILD";
const MAX_BYTES: u64 = 64 * 1024;
const ROUNDS: usize = 20;

fn main() -> ExitCode {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    // The arguments libtest would take: `--list`, flags (some with a value), name filters.
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => {
                println!("{NAME}: test");
                return ExitCode::SUCCESS;
            }
            "--test-threads" | "--skip" | "--color" | "--format" | "--logfile" | "-Z"
            | "--shuffle-seed" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("\nrunning 0 tests\n");
        return ExitCode::SUCCESS;
    }
    println!("\nrunning 1 test");
    let started = Instant::now();
    match std::panic::catch_unwind(parent) {
        Ok(()) => {
            println!(
                "test {NAME} ... ok ({:.1} s)\n",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!("test {NAME} ... FAILED\n");
            ExitCode::FAILURE
        }
    }
}

/// xorshift64*
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

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()) << 32) | 1
}

/// Alert `seq`'s severity and payload follow from its number, so the parent can check them.
fn alert(seq: u64) -> (u8, Vec<u8>) {
    let h = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let len = (h >> 40) as usize % 700;
    let payload = (0..len)
        .map(|i| (h >> (i % 7 * 8)) as u8 ^ i as u8)
        .collect();
    ((h >> 60) as u8 % 4, payload)
}

/// The child: pushes and acknowledges until killed. Reports on stdout, one line at a time:
/// `D n` once every alert up to `n` is durable; `a s1 s2 ...` before acknowledging those;
/// `A` once those acknowledgements are durable; `C n` the compactions so far.
fn child(dir: &Path) -> ! {
    let fail = |what: &str, e: anyhow::Error| -> ! {
        eprintln!("child: {what}: {e:#}");
        std::process::exit(2)
    };
    let (mut spool, _) = Spool::open(
        dir,
        SpoolLimits {
            max_bytes: MAX_BYTES,
        },
    )
    .unwrap_or_else(|e| fail("open", e));
    let mut out = std::io::stdout().lock();
    let mut report = |line: String| {
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(4);
        }
    };
    let mut rng = Rng(seed());
    let mut seq = spool.stats().last_seq;
    loop {
        for _ in 0..rng.below(20) + 1 {
            seq += 1;
            let (severity, payload) = alert(seq);
            spool
                .push(seq, severity, &payload)
                .unwrap_or_else(|e| fail("push", e));
        }
        spool.flush().unwrap_or_else(|e| fail("flush", e));
        report(format!("D {seq}"));
        if spool.take_dropped() != 0 {
            eprintln!("child: records were dropped: the test's limits are wrong");
            std::process::exit(3);
        }
        // The broker acknowledges about half of what waits, in any order; every tenth alert
        // waits for 300 more, which leaves holes to compact.
        let waiting = spool
            .peek(None, usize::MAX)
            .unwrap_or_else(|e| fail("peek", e));
        let mut acks: Vec<u64> = waiting
            .iter()
            .map(|e| e.seq)
            .filter(|&s| s % 10 != 0 || s + 300 < seq)
            .filter(|_| rng.below(2) == 0)
            .collect();
        for i in (1..acks.len()).rev() {
            acks.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let list: Vec<String> = acks.iter().map(u64::to_string).collect();
        report(format!("a {}", list.join(" ")));
        for s in acks {
            if !spool.ack(s).unwrap_or_else(|e| fail("ack", e)) {
                eprintln!("child: alert {s} was waiting, yet ack() did not find it");
                std::process::exit(3);
            }
        }
        spool.flush().unwrap_or_else(|e| fail("flush", e));
        report("A".to_string());
        report(format!("C {}", spool.stats().compactions));
    }
}

/// What the parent knows from the child's reports.
#[derive(Default)]
struct Known {
    /// Every alert up to this number was durable (unless acknowledged).
    durable: u64,
    /// Acknowledgements made durable: these alerts must never come back.
    acked: BTreeSet<u64>,
    /// Acknowledgements that may or may not have been flushed.
    maybe_acked: BTreeSet<u64>,
    /// Compactions by the current child so far.
    compactions: u64,
    flushes: u64,
}

impl Known {
    fn read(&mut self, reports: &str) {
        // A line cut by the kill has no newline: ignore it.
        let complete = reports.rfind('\n').map_or("", |end| &reports[..end]);
        for line in complete.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("D") => {
                    let n: u64 = words.next().and_then(|w| w.parse().ok()).unwrap();
                    self.durable = self.durable.max(n);
                    self.flushes += 1;
                }
                Some("a") => self.maybe_acked.extend(
                    words
                        .filter(|w| !w.is_empty())
                        .map(|w| w.parse::<u64>().unwrap()),
                ),
                Some("A") => {
                    self.acked.append(&mut self.maybe_acked);
                    self.flushes += 1;
                }
                Some("C") => {
                    self.compactions = words.next().and_then(|w| w.parse().ok()).unwrap();
                }
                _ => panic!("unexpected report from the child: {line:?}"),
            }
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn parent() {
    let dir = std::env::temp_dir().join(format!("picket-spool-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = Cleanup(dir.clone());
    let seed = seed();
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut known = Known::default();
    let mut compactions = 0;
    let mut progress_rounds = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).unwrap();
            text
        });
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        // SIGKILL: no destructor, no flush, no unwinding.
        let _ = child.kill();
        let status = child.wait().unwrap();
        let reports = reader.join().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            status.code().is_none(),
            "round {round}: the child exited by itself ({status}) instead of being killed:\n{stderr}"
        );
        let before = known.flushes;
        known.compactions = 0;
        known.read(&reports);
        if known.flushes > before {
            progress_rounds += 1;
        }
        compactions += known.compactions;
        check(&dir, round, &mut known);
    }
    println!(
        "{ROUNDS} kills: {} alerts durable, {} acknowledged, {compactions} compactions",
        known.durable,
        known.acked.len()
    );
    assert!(
        progress_rounds >= ROUNDS / 2,
        "the child flushed in only {progress_rounds} of {ROUNDS} rounds"
    );
    assert!(!known.acked.is_empty(), "no acknowledgement was flushed");
    assert!(
        compactions > 0,
        "no segment was compacted: the test did not reach the bound"
    );
}

/// Opens the spool the child left and compares it with what the child reported.
fn check(dir: &Path, round: usize, known: &mut Known) {
    let (mut spool, recovered) = Spool::open(
        dir,
        SpoolLimits {
            max_bytes: MAX_BYTES,
        },
    )
    .unwrap_or_else(|e| panic!("round {round}: the spool does not open after a kill: {e:#}"));
    // A kill leaves the page cache whole: no record is torn (power cuts are the unit tests').
    assert_eq!(
        recovered.torn, 0,
        "round {round}: damaged records after a kill: {recovered:?}"
    );
    let entries = spool.peek(None, usize::MAX).unwrap();
    assert_eq!(
        recovered.records,
        entries.len(),
        "round {round}: the records said waiting are not those read: {recovered:?}"
    );
    assert_eq!(
        spool.take_dropped(),
        0,
        "round {round}: records were dropped"
    );
    let mut present = BTreeSet::new();
    let mut last = 0;
    for e in &entries {
        assert!(
            e.seq > last,
            "round {round}: alert {} follows {last}: out of order or twice",
            e.seq
        );
        last = e.seq;
        let (severity, payload) = alert(e.seq);
        assert_eq!(
            (e.severity, &e.payload),
            (severity, &payload),
            "round {round}: alert {} altered",
            e.seq
        );
        assert!(
            !known.acked.contains(&e.seq),
            "round {round}: alert {} came back after its acknowledgement was flushed",
            e.seq
        );
        present.insert(e.seq);
    }
    for seq in 1..=known.durable {
        if !known.acked.contains(&seq) && !known.maybe_acked.contains(&seq) {
            assert!(
                present.contains(&seq),
                "round {round}: alert {seq} was flushed and is gone \
                 (recovered {recovered:?}, durable up to {})",
                known.durable
            );
        }
    }
    let size = dir_size(dir);
    assert!(size <= MAX_BYTES, "round {round}: {size} bytes on disk");
    // What is on disk now is durable; unflushed acknowledgements either took or did not.
    known.durable = known.durable.max(last);
    let maybe = std::mem::take(&mut known.maybe_acked);
    known
        .acked
        .extend(maybe.into_iter().filter(|s| !present.contains(s)));
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
