//! End-to-end tests of event accounting under load: a burst of file opens and a burst of execs,
//! far more than the ring buffer holds at once. Loss is allowed; silent loss is not: every
//! action of the burst must show up either as an event or in the losses the kernel counted
//! for the burst's own cgroup (each burst runs in a cgroup of its own, so that losses caused by
//! other processes of the machine cannot stand in for the burst's).
//!
//! A separate test binary so that its floods do not disturb the sensor tests; the tests here
//! also run one at a time (see [`serial`]) since every monitor sees every burst.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
    assert_eq!(out.received + out.lost, FILE_BURST as u64, "{out}");
}

#[test]
fn file_burst_with_tiny_ring_buffer_counts_loss() {
    let _serial = serial();
    let out = file_burst(&["--filter", "file", "--ring-buffer-size", "4096"]);
    assert_eq!(out.received + out.lost, FILE_BURST as u64, "{out}");
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
    let cgroup = BurstCgroup::new();
    let started = Instant::now();
    cgroup.enter();
    for _ in 0..EXEC_BURST {
        let status = Command::new("/bin/true")
            .arg(&marker)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    cgroup.leave();
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
    // Every exec record of the burst's cgroup, each of which must be one of the burst's.
    let received = cgroup.records(&out, "exec", |e| e.argv() == ["/bin/true", marker.as_str()]);
    let counts = Counts::new(&out, "process", &cgroup, "exec", received, burst_time);
    println!("exec burst of {EXEC_BURST}: {counts}");
    assert!(
        counts.received <= EXEC_BURST as u64,
        "more events than execs: {counts}"
    );
    assert_eq!(counts.received + counts.lost, EXEC_BURST as u64, "{counts}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What a burst produced.
struct Counts {
    /// Events of the burst itself that reached stdout.
    received: u64,
    /// Records of the burst's kind the kernel counted lost for the burst's cgroup.
    lost: u64,
    /// Records of the sensor lost, all processes included (the summary's count).
    lost_all: u64,
    /// All records the monitor received (the summary's count).
    received_all: u64,
    burst_time: Duration,
}

impl Counts {
    fn new(
        out: &Output,
        sensor: &str,
        cgroup: &BurstCgroup,
        kind: &str,
        received: usize,
        burst_time: Duration,
    ) -> Counts {
        let lost_all = out.lost(sensor);
        check_lost_lines(out, sensor, lost_all);
        let lost = cgroup.lost(out, sensor, kind);
        assert!(
            lost <= lost_all,
            "the burst's cgroup lost {lost} {kind} records, more than the sensor's {lost_all}"
        );
        let received_all = out.summary()["received"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}", out.summary()));
        Counts {
            received: received as u64,
            lost,
            lost_all,
            received_all,
            burst_time,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {} of the burst, lost {} of the burst ({} by the sensor in all), {} records \
             received in all, burst took {:?}",
            self.received, self.lost, self.lost_all, self.received_all, self.burst_time
        )
    }
}

/// A cgroup v2 of the burst's own, under the root of the hierarchy; removed when dropped.
struct BurstCgroup {
    dir: PathBuf,
    /// Its id: the inode number of its directory (on a 64-bit kernel, which the tests run on).
    id: u64,
    /// The cgroup this process came from.
    home: PathBuf,
    /// Its `cgroup.procs`, opened before the burst: an open for writing inside the burst's
    /// cgroup would be a file record of the burst's.
    home_procs: std::fs::File,
}

impl BurstCgroup {
    fn new() -> BurstCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mountinfo
            .lines()
            .find_map(picket_agent::sensors::guard::cgroup2_mount)
            .unwrap_or_else(|| panic!("no cgroup v2 hierarchy mounted:\n{mountinfo}"));
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("not in a cgroup v2 hierarchy: {own}"));
        let home = root.join(rel.trim_start_matches('/'));
        let dir = root.join(unique("picket-burst"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let id = std::fs::metadata(&dir).unwrap().ino();
        let home_procs = std::fs::OpenOptions::new()
            .write(true)
            .open(home.join("cgroup.procs"))
            .unwrap();
        BurstCgroup {
            dir,
            id,
            home,
            home_procs,
        }
    }

    /// Moves this process (every thread) into the cgroup: what it does next is the burst's.
    fn enter(&self) {
        move_to(&self.dir);
    }

    /// Moves this process back where it came from.
    fn leave(&self) {
        use std::io::Write as _;
        (&self.home_procs)
            .write_all(std::process::id().to_string().as_bytes())
            .unwrap_or_else(|e| panic!("moving back into {}: {e}", self.home.display()));
    }

    /// The monitor's events of `kind` caused by this cgroup's tasks; each must be `burst`'s.
    fn records(&self, out: &Output, kind: &str, burst: impl Fn(&Value) -> bool) -> usize {
        let ours: Vec<&Value> = out
            .events
            .iter()
            .filter(|e| e.kind() == kind && e["cgroup_id"] == self.id)
            .collect();
        if let Some(other) = ours.iter().find(|e| !burst(e)) {
            panic!("a {kind} record of the burst's cgroup that is not the burst's: {other}");
        }
        ours.len()
    }

    /// Records of `kind` the kernel counted lost for this cgroup by `sensor`, by the monitor's
    /// summary.
    fn lost(&self, out: &Output, sensor: &str, kind: &str) -> u64 {
        let summary = out.summary();
        let by_cgroup = summary["lost_by_cgroup"][sensor]
            .as_array()
            .unwrap_or_else(|| panic!("the summary has no lost_by_cgroup.{sensor}: {summary}"));
        let ours: Vec<&Value> = by_cgroup
            .iter()
            .filter(|c| c["cgroup_id"] == self.id)
            .collect();
        match ours.as_slice() {
            [] => 0,
            [one] => {
                let name = format!("/{}", self.dir.file_name().unwrap().to_string_lossy());
                assert_eq!(one["cgroup"], name.as_str(), "named by its path: {one}");
                one["lost"][kind].as_u64().unwrap_or(0)
            }
            _ => panic!("cgroup {} listed twice: {summary}", self.id),
        }
    }
}

impl Drop for BurstCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        // Busy while the burst's last children are being released.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&self.dir) {
            if Instant::now() > deadline {
                eprintln!("cannot remove {}: {e}", self.dir.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn move_to(cgroup: &Path) {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .unwrap_or_else(|e| panic!("moving into {}: {e}", procs.display()));
}

/// Opens (O_WRONLY|O_CREAT) and closes one file FILE_BURST times in this process, under a
/// monitor started with `args`, and counts what the monitor saw.
fn file_burst(args: &[&str]) -> Counts {
    let mon = Monitor::start(picket(), args);
    let dir = TempDir::new();
    let path = dir.join("burst.txt");
    let path_c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let cgroup = BurstCgroup::new();
    let started = Instant::now();
    cgroup.enter();
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
    cgroup.leave();
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
    // Every file record of the burst's cgroup, each of which must be an open of the burst's
    // file by this process.
    let received = cgroup.records(&out, "file", |e| {
        e.pid() == Some(me) && is_file_op(e, "open", &path)
    });
    let counts = Counts::new(&out, "file", &cgroup, "file", received, burst_time);
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
