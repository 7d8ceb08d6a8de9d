use std::{fs, sync::atomic::Ordering::Relaxed};

use super::*;
use crate::spool::Spool;

#[test]
fn oversized_alerts_are_cut_to_fit() {
    let long = "x".repeat(5000);
    let wire = picket_proto::Alert {
        seq: 1,
        boot_id: "b".into(),
        time_ms: 0,
        kind: picket_proto::AlertKind::UnknownExecutable,
        severity: picket_proto::Severity::High,
        rule: "executables".into(),
        path: Some(long.clone()),
        details: picket_proto::Details(serde_json::json!({ "sha256": long })),
        count: 1,
        first_ms: 0,
        last_ms: 0,
        process: Some(picket_proto::ProcessContext {
            exe: Some(long.clone()),
            argv: vec![long.clone(); 16],
            ancestry: vec![
                picket_proto::Ancestor {
                    pid: 1,
                    exe: Some(long.clone())
                };
                8
            ],
            ..Default::default()
        }),
    };
    let small = postcard::to_allocvec(&wire).unwrap().len();
    assert!(small > 100_000);
    let body = fit(wire.clone(), 4096).unwrap();
    assert!(body.len() <= 4096);
    let back: picket_proto::Alert = postcard::from_bytes(&body).unwrap();
    assert_eq!(back.seq, 1);
    assert!(back.path.unwrap().ends_with('…'));
    assert!(back.details.0["truncated"].is_string());
    // What fits is left alone.
    let mut fine = wire;
    fine.path = Some("/tmp/x".into());
    fine.details = picket_proto::Details(serde_json::json!({}));
    fine.process = None;
    let body = fit(fine.clone(), 4096).unwrap();
    assert_eq!(
        postcard::from_bytes::<picket_proto::Alert>(&body).unwrap(),
        fine
    );
    assert!(fit(fine, 10).is_err());
}

fn alert(seq: u64, severity: alert::Severity, path: &str) -> alert::Alert {
    alert::Alert {
        alert: alert::Kind::UnknownExecutable,
        severity,
        seq,
        boot_id: "b".into(),
        time_ms: 0,
        device_id: "gw".into(),
        rule: "executables".into(),
        path: Some(path.into()),
        details: serde_json::json!({}),
        count: 1,
        first_ms: 0,
        last_ms: 0,
        process: None,
    }
}

#[test]
fn the_spool_writer_makes_alerts_durable_in_order_and_reports_drops() {
    let dir = std::env::temp_dir().join(format!("picket-writer-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let limits = crate::spool::SpoolLimits {
        max_bytes: crate::spool::MIN_MAX_BYTES,
    };
    let (spool, _) = Spool::open(&dir, limits).unwrap();
    let counters = Arc::new(Counters::default());
    let shared = Shared::new(counters.clone(), spool, ("p".into(), 1));
    let mut sink = SpoolSink::new(shared.clone()).unwrap();
    for seq in 1..=10 {
        sink.send(&alert(seq, alert::Severity::High, "/tmp/x"))
            .unwrap();
    }
    // Handed over, not waited for; durable once `sync` returns.
    sink.flush().unwrap();
    sink.sync().unwrap();
    let seqs: Vec<u64> = shared
        .spool()
        .peek(None, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(counters.spooled.load(Relaxed), 10);
    assert_eq!(sink.take_dropped(), 0);

    // Past its bound the spool drops the least severe first; the sink reports how many.
    let long = "p".repeat(1000);
    for seq in 11..=60 {
        sink.send(&alert(seq, alert::Severity::Medium, &long))
            .unwrap();
    }
    sink.sync().unwrap();
    let dropped = sink.take_dropped();
    assert!(dropped > 0, "16 KiB cannot hold 50 alerts of 1 KiB");
    assert_eq!(counters.dropped.load(Relaxed), dropped);
    let kept = shared.spool().peek(None, 100).unwrap();
    assert_eq!(kept.len() as u64, 60 - dropped);
    assert!(kept.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        kept.iter()
            .filter(|e| e.severity == alert::Severity::High.rank())
            .count(),
        10,
        "the severe alerts stay"
    );

    // Durable: a new spool on the same directory finds them (the writer has let go of it
    // once its sender is gone).
    drop(sink);
    let mut shared = shared;
    let spool = loop {
        match Arc::try_unwrap(shared) {
            Ok(s) => break s.spool.into_inner().unwrap(),
            Err(again) => {
                shared = again;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    drop(spool);
    let (mut spool, recovered) = Spool::open(&dir, limits).unwrap();
    assert_eq!(recovered.torn, 0);
    assert_eq!(spool.peek(None, 100).unwrap().len() as u64, 60 - dropped);
    drop(spool);
    let _ = fs::remove_dir_all(&dir);
}
