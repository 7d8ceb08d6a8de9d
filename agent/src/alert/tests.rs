//! Unit tests of the alert counter, the sinks and the alerter's windows.

use super::*;
use std::sync::{Arc, Mutex};

struct Collect(Arc<Mutex<Vec<Alert>>>);
impl AlertSink for Collect {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(alert.clone());
        Ok(())
    }
}

fn draft(path: &str) -> Draft {
    Draft {
        kind: Kind::UnknownExecutable,
        severity: Severity::High,
        rule: "executables".into(),
        path: Some(path.into()),
        details: Value::Null,
        process: None,
    }
}

#[test]
fn numbers_persist_across_restarts_and_repeats_aggregate() {
    let dir = std::env::temp_dir().join(format!("picket-alert-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut a = Alerter::new(
        "d".into(),
        Sequence::open(&dir).unwrap(),
        Duration::from_millis(0),
        8,
        vec![Box::new(Collect(seen.clone()))],
        Arc::default(),
    );
    a.raise(draft("/tmp/x")).unwrap();
    a.raise(draft("/tmp/x")).unwrap();
    a.raise(draft("/tmp/x")).unwrap();
    a.raise(draft("/tmp/y")).unwrap();
    a.tick().unwrap();
    {
        let seen = seen.lock().unwrap();
        let counts: Vec<(Option<&str>, u64)> =
            seen.iter().map(|a| (a.path.as_deref(), a.count)).collect();
        assert_eq!(
            counts,
            vec![
                (Some("/tmp/x"), 1),
                (Some("/tmp/y"), 1),
                (Some("/tmp/x"), 2)
            ]
        );
        assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
    }
    let last = seen.lock().unwrap().last().unwrap().seq;
    drop(a);
    // A restart: numbering resumes above anything the first run could have used.
    let mut seq = Sequence::open(&dir).unwrap();
    assert!(seq.take() > last);
    seq.skip_past(last + 1000);
    assert_eq!(seq.take(), last + 1001);
    drop(seq);
    assert!(Sequence::open(&dir).unwrap().take() > last + 1001);
    // A counter of an older agent, numbered from 1: it goes on.
    fs::write(dir.join("alert.seq"), "64\n").unwrap();
    assert_eq!(Sequence::open(&dir).unwrap().take(), 65);
    // A corrupt counter: a new one, far from the old numbers, rather than no agent.
    fs::write(dir.join("alert.seq"), "garbage").unwrap();
    let mut fresh = Sequence::open(&dir).unwrap();
    let first = fresh.take();
    assert!(first > 65 + SEQ_RESET_JUMP, "{first}");
    assert_eq!(first % SEQ_BLOCK, 1, "{first} begins a block");
    drop(fresh);
    assert!(Sequence::open(&dir).unwrap().take() > first);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_counter_that_cannot_be_read_or_holds_no_number_begins_anew() {
    let dir = std::env::temp_dir().join(format!("picket-seq-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let counter = dir.join("alert.seq");
    fs::write(&counter, "128\n").unwrap();
    assert_eq!(Sequence::open(&dir).unwrap().take(), 129);
    // An I/O error other than absence (here EISDIR; EIO and EACCES take the same path): a
    // new counter (whose first reservation then fails here, writing over a directory).
    fs::remove_file(&counter).unwrap();
    fs::create_dir(&counter).unwrap();
    let mut unreadable = Sequence::open(&dir).unwrap();
    assert!(unreadable.next > SEQ_RESET_JUMP, "{}", unreadable.next);
    // Its reservation cannot be written over the directory: it numbers on regardless.
    let n = unreadable.take();
    assert_eq!(unreadable.take(), n + 1);
    assert!(counter.is_dir());
    fs::remove_dir(&counter).unwrap();
    // Content that is not UTF-8 is not a number: a new counter.
    fs::write(&counter, b"\xff\xfe12").unwrap();
    let first = Sequence::open(&dir).unwrap().take();
    assert!(first > SEQ_RESET_JUMP, "{first}");
    // Absent: a new counter too.
    fs::remove_file(&counter).unwrap();
    assert!(Sequence::open(&dir).unwrap().take() > SEQ_RESET_JUMP);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_counter_that_cannot_be_written_costs_no_alert_and_is_written_once_it_can() {
    let dir = std::env::temp_dir().join(format!("picket-seq-full-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let counter = dir.join("alert.seq");
    fs::write(&counter, "128\n").unwrap();
    let mut seq = Sequence::open(&dir).unwrap();
    assert_eq!(seq.take(), 129);
    assert_eq!(fs::read_to_string(&counter).unwrap(), "192\n");
    // The counter's temporary file cannot be created (a directory in its place: the write
    // fails as on a full or read-only state directory, even for root).
    let tmp = dir.join("alert.tmp");
    fs::create_dir(&tmp).unwrap();
    let taken: Vec<u64> = (0..3 * SEQ_BLOCK).map(|_| seq.take()).collect();
    assert_eq!(taken, (130..130 + 3 * SEQ_BLOCK).collect::<Vec<_>>());
    assert_eq!(fs::read_to_string(&counter).unwrap(), "192\n");
    assert!(seq.retry_at.is_some(), "a retry is due");
    // Not due yet: a tick does not write.
    seq.catch_up();
    assert_eq!(fs::read_to_string(&counter).unwrap(), "192\n");
    // Writable again, and no alert comes: the tick records what was used, so that a run
    // stopped now leaves the next one above it.
    fs::remove_dir(&tmp).unwrap();
    seq.retry_at = Some(Instant::now());
    seq.catch_up();
    assert!(seq.retry_at.is_none());
    let used = 130 + 3 * SEQ_BLOCK - 1;
    let reserved: u64 = fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(reserved, used + SEQ_BLOCK);
    // Caught up: a tick writes nothing more, and numbering goes on in the reservation.
    seq.catch_up();
    assert_eq!(
        fs::read_to_string(&counter).unwrap().trim(),
        reserved.to_string()
    );
    let next = seq.take();
    assert_eq!(next, 130 + 3 * SEQ_BLOCK);
    assert!(seq.retry_at.is_none());
    drop(seq);
    assert!(Sequence::open(&dir).unwrap().take() > reserved);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_alert_file_that_cannot_be_written_loses_no_alert_to_the_other_sinks() {
    let dir = std::env::temp_dir().join(format!("picket-lines-full-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    let full = JsonLinesSink::new(false, Some(Path::new("/dev/full"))).unwrap();
    let mut a = Alerter::new(
        "d".into(),
        Sequence::open(&dir).unwrap(),
        Duration::from_millis(0),
        8,
        vec![Box::new(full), Box::new(Collect(seen.clone()))],
        Arc::default(),
    );
    for i in 0..3 {
        a.raise(draft(&format!("/tmp/{i}"))).unwrap();
    }
    a.tick().unwrap();
    let paths: Vec<Option<String>> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.path.clone())
        .collect();
    assert_eq!(
        paths,
        vec![
            Some("/tmp/0".into()),
            Some("/tmp/1".into()),
            Some("/tmp/2".into())
        ]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_counter_is_quoted_within_bounds() {
    assert_eq!(quoted("abc", 64), "abc");
    let long = "x".repeat(10_000);
    let q = quoted(&long, 64);
    assert_eq!(q, format!("{}...", "x".repeat(64)));
    assert_eq!(quoted("a\nb", 64), "a\\nb");
    assert_eq!(
        quoted(&"é".repeat(65), 64),
        format!("{}...", "é".repeat(64))
    );
}
