//! End-to-end tests of event accounting under load: a burst of file opens and a burst of execs,
//! far more than the ring buffer holds at once. Loss is allowed; silent loss is not: every
//! action must show up either as an event or in the monitor's lost count.
//!
//! A separate test binary so that its floods do not disturb the sensor tests; the tests here
//! also run one at a time (see [`serial`]) since every monitor sees every burst.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use picket_test_support::agent::is_file_op;
use picket_test_support::bin::picket;
use picket_test_support::{unique, Event, Monitor, Output, TempDir};
use serde_json::Value;

const FILE_BURST: usize = 100_000;
const EXEC_BURST: usize = 20_000;

#[test]
fn file_burst_is_delivered_or_counted_lost() {
    let _serial = serial();
    let out = file_burst(&["--filter", "file"]);
    assert!(out.received + out.lost >= FILE_BURST as u64, "{out}");
}

#[test]
fn file_burst_with_tiny_ring_buffer_counts_loss() {
    let _serial = serial();
    let out = file_burst(&["--filter", "file", "--ring-buffer-size", "4096"]);
    assert!(out.received + out.lost >= FILE_BURST as u64, "{out}");
    assert!(
        out.lost > 0,
        "a 4 KiB ring buffer cannot hold a burst of {FILE_BURST}: {out}"
    );
}

#[test]
fn exec_burst_is_delivered_or_counted_lost() {
    let _serial = serial();
    let mon = Monitor::start(picket(), &["--filter", "exec"]);
    let marker = unique("picket-burst");
    let started = Instant::now();
    for _ in 0..EXEC_BURST {
        let status = Command::new("/bin/true")
            .arg(&marker)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let burst_time = started.elapsed();

    drain_with_sentinel(
        &mon,
        "exec sentinel",
        |tag| {
            Command::new("/bin/true").arg(tag).status().unwrap();
        },
        |e, tag| e.kind() == "exec" && e.argv().iter().any(|a| a == tag),
    );

    let out = mon.stop();
    let received = out
        .events
        .iter()
        .filter(|e| e.kind() == "exec" && e.argv() == ["/bin/true", marker.as_str()])
        .count();
    let counts = Counts::new(&out, "process", received, burst_time);
    println!("exec burst of {EXEC_BURST}: {counts}");
    assert!(
        counts.received <= EXEC_BURST as u64,
        "more events than execs: {counts}"
    );
    assert!(
        counts.received + counts.lost >= EXEC_BURST as u64,
        "{counts}"
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What a burst produced.
struct Counts {
    /// Events of the burst itself that reached stdout.
    received: u64,
    /// Events the sensor lost, all processes included (the summary's count).
    lost: u64,
    /// All records the monitor received (the summary's count).
    received_all: u64,
    burst_time: Duration,
}

impl Counts {
    fn new(out: &Output, sensor: &str, received: usize, burst_time: Duration) -> Counts {
        let lost = out.lost(sensor);
        check_lost_lines(out, sensor, lost);
        let received_all = out.summary()["received"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}", out.summary()));
        Counts {
            received: received as u64,
            lost,
            received_all,
            burst_time,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {} of the burst, lost {} (sensor total), {} records received in all, burst took {:?}",
            self.received, self.lost, self.received_all, self.burst_time
        )
    }
}

/// Opens (O_WRONLY|O_CREAT) and closes one file FILE_BURST times in this process, under a
/// monitor started with `args`, and counts what the monitor saw.
fn file_burst(args: &[&str]) -> Counts {
    let mon = Monitor::start(picket(), args);
    let dir = TempDir::new();
    let path = dir.join("burst.txt");
    let path_c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let started = Instant::now();
    for _ in 0..FILE_BURST {
        // SAFETY: plain open/close of a NUL-terminated path.
        unsafe {
            let fd = libc::open(
                path_c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            );
            assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    }
    let burst_time = started.elapsed();

    drain_with_sentinel(
        &mon,
        "file sentinel",
        |tag| {
            std::fs::File::create(dir.join(tag)).unwrap();
        },
        |e, tag| {
            e.kind() == "file"
                && e.str_field("path")
                    .is_some_and(|p| Path::new(p) == dir.join(tag))
        },
    );

    let out = mon.stop();
    let me = std::process::id();
    let received = out
        .events
        .iter()
        .filter(|e| e.pid() == Some(me) && is_file_op(e, "open", &path))
        .count();
    let counts = Counts::new(&out, "file", received, burst_time);
    println!("file burst of {FILE_BURST} with {args:?}: {counts}");
    assert!(
        counts.received <= FILE_BURST as u64,
        "more events than opens: {counts}"
    );
    counts
}

/// Waits until the monitor has read everything the burst put in the ring buffer: the buffer is
/// FIFO, so once an action done after the burst shows up, every burst record before it has been
/// read. The sentinel action is repeated because it may itself be lost while the buffer is full.
fn drain_with_sentinel(
    mon: &Monitor,
    what: &str,
    act: impl Fn(&str),
    seen: impl Fn(&Value, &str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tags = Vec::new();
    while Instant::now() < deadline {
        let tag = unique("picket-sentinel");
        act(&tag);
        tags.push(tag);
        let found = mon.try_wait_for(Duration::from_millis(250), |e| {
            tags.iter().any(|t| seen(e, t))
        });
        if found.is_some() {
            return;
        }
    }
    mon.wait_for(
        &format!("{what} after the burst (tried {} times)", tags.len()),
        |e| tags.iter().any(|t| seen(e, t)),
    );
}

/// The `lost` lines for `sensor` must add up to the summary's total, the last one carrying it.
fn check_lost_lines(out: &Output, sensor: &str, total: u64) {
    let lines: Vec<&Value> = out
        .events
        .iter()
        .filter(|e| e.kind() == "lost" && e["sensor"] == sensor)
        .collect();
    let counted: u64 = lines
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or_else(|| panic!("{e}")))
        .sum();
    assert_eq!(
        counted, total,
        "lost lines for {sensor} do not add up to the summary's {total}: {lines:?}"
    );
    if total > 0 {
        let last = lines.last().unwrap();
        assert_eq!(
            last["total"], total,
            "the final lost line must carry the total: {last}"
        );
    }
}

/// One burst at a time: every monitor sees every burst.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
