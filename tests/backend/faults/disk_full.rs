//! The filesystem of the agent's state directory and spool full (`ENOSPC`), then freed; then
//! gone read-only under the agent, then repaired.
//!
//! The state directory is a small ext4 filesystem of its own (an image on a loop device,
//! `errors=remount-ro` as a device's data partition would be). **Full**: a filler file takes
//! every free block while alerts are raised; the spool cannot flush, the alert counter cannot
//! reserve its next block. The agent must keep running, say so once (not once per alert),
//! keep the alerts in memory within the spool's bound, and once the filler is removed store
//! every alert exactly once. **Read-only**: a filesystem does not go read-only under a process
//! holding files open for writing by `mount -o remount,ro` (refused, `EBUSY`): it does when the
//! kernel finds an error (`errors=remount-ro`), and then stays so until it is unmounted and
//! repaired. So the fault is an ext4 error (`trigger_fs_error`), the agent keeps running and
//! says so, and the cure is what a device does: a restart of the agent over the repaired
//! filesystem (`e2fsck`, mounted again). The alerts raised while read-only were never durable
//! and end with that run: that loss is by design, and the agent says how many at its stop.
//! The restart also finds the policy's anti-rollback serial damaged, which it sets again from
//! the policy in force.
//!
//! `PICKET_FAULT_FULL=1`: more fill/free cycles, longer, and a burst while full larger than
//! the spool may hold in memory, whose oldest alerts are dropped and reported
//! (`alerts_dropped`), exactly as many as are missing.

use std::io::Write as _;

use super::*;

/// The state filesystem's size.
const VOLUME_BYTES: u64 = 8 << 20;

/// The spool's size limit in this scenario: small, so that a burst while full reaches it (an
/// alert of these takes about 650 bytes in the spool: about 340 wait in memory at most).
const SMALL_SPOOL: u64 = 256 << 10;

/// What the agent logs when a spool flush fails, when it succeeds again, when the counter
/// cannot be written, and when it is again.
const SPOOL_FAILING: &str = "writing the spool to disk";
const SPOOL_BACK: &str = "the spool is written to disk again";
const SEQ_FAILING: &str = "alerts are numbered on without a reservation";
const SEQ_BACK: &str = "is written again";

/// A small ext4 filesystem mounted over a directory; unmounted and deleted when dropped.
struct Volume {
    image: PathBuf,
    mount: PathBuf,
}

impl Volume {
    fn new(mount: &Path) -> Volume {
        let image = mount.with_extension("img");
        fs::File::create(&image)
            .unwrap()
            .set_len(VOLUME_BYTES)
            .unwrap();
        // No blocks reserved for root: the filler, like the agent, runs as root.
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image),
        );
        fs::create_dir_all(mount).unwrap();
        let volume = Volume {
            image,
            mount: mount.to_path_buf(),
        };
        volume.attach();
        volume
    }

    fn attach(&self) {
        run_ok(
            Command::new("mount")
                .args(["-o", "loop,errors=remount-ro"])
                .arg(&self.image)
                .arg(&self.mount),
        );
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Takes every free block; returns the bytes taken. Written and synced until a round
    /// takes nothing more: ext4 gives back blocks it had reserved for delayed allocation once
    /// the data is written out.
    fn fill(&self) -> u64 {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap();
        let chunk = vec![0xa5u8; 1024];
        let mut taken = 0;
        loop {
            let mut round = 0;
            loop {
                match f.write(&chunk) {
                    Ok(0) => break,
                    Ok(n) => round += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", self.mount.display()),
                }
            }
            let _ = f.sync_all();
            taken += round;
            if round == 0 {
                return taken;
            }
        }
    }

    fn free(&self) {
        fs::remove_file(self.filler()).unwrap();
    }

    /// An ext4 error: the kernel makes the filesystem read-only (`errors=remount-ro`).
    fn break_read_only(&self) {
        let source = command_text(
            Command::new("findmnt")
                .args(["-no", "SOURCE"])
                .arg(&self.mount),
        );
        let device = Path::new(source.trim()).file_name().unwrap().to_owned();
        let trigger = Path::new("/sys/fs/ext4")
            .join(device)
            .join("trigger_fs_error");
        fs::write(&trigger, "picket fault scenario").unwrap();
        let options = command_text(
            Command::new("findmnt")
                .args(["-no", "OPTIONS"])
                .arg(&self.mount),
        );
        assert!(
            options
                .trim()
                .split(',')
                .any(|o| o == "ro" || o == "emergency_ro"),
            "{}: still writable after an error: {options}",
            self.mount.display()
        );
    }

    /// What a device does after such an error: unmounted, checked and repaired, mounted again.
    fn repair(&self) {
        run_ok(Command::new("umount").arg(&self.mount));
        let out = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .output()
            .unwrap();
        // 0: clean; 1: errors corrected.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck: {}",
            text(&out)
        );
        self.attach();
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.filler());
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a failing test left a process in it): detached once it lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = fs::remove_file(&self.image);
    }
}

fn command_text(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Whether process `pid` runs (and is not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// The resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An alert as the device raised it and the store holds it: its number and its path (numbers
/// used while the counter could not be written may be used again by the next run, for other
/// alerts, when they were never durable: see `Sequence::take`).
type Key = (u64, Option<String>);

fn key(a: &Value) -> Key {
    (
        a["seq"].as_u64().unwrap(),
        a["path"].as_str().map(String::from),
    )
}

/// The device's own alerts in the store, by key, and how many times each.
fn stored_keys(backend: &Backend) -> BTreeMap<Key, usize> {
    let alerts = backend.query(&["alerts", "--device", DEVICE, "--limit", "100000", "--json"]);
    let mut counts = BTreeMap::new();
    for a in alerts.as_array().unwrap() {
        if a["format"] != "backend" {
            *counts.entry(key(a)).or_insert(0) += 1;
        }
    }
    counts
}

/// Changes `n` more watched files (2 ms apart) and waits until the agent raised an alert for
/// each; returns those alerts.
fn raise(site: &mut Site, agent: &Agent, n: usize) -> Vec<Value> {
    let before = site.raised_alerts().0.len();
    let files = site.take(n);
    chmod_all(&files, Duration::from_millis(2));
    let start = Instant::now();
    loop {
        let (alerts, torn) = site.raised_alerts();
        assert_eq!(torn, 0, "lines of the alert file that are not alerts");
        let new: Vec<Value> = alerts[before..]
            .iter()
            .filter(|a| a["alert"] == "protected_file_changed")
            .cloned()
            .collect();
        if new.len() >= n {
            assert_eq!(new.len(), n, "one alert per change");
            return new;
        }
        assert!(start.elapsed() < TIMEOUT, "{}", agent.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises alerts 10 at a time until the agent logged `what` `times` times; returns them.
fn raise_until_logged(site: &mut Site, agent: &Agent, what: &str, times: usize) -> Vec<Value> {
    let mut raised = Vec::new();
    while count(&agent.log(), what) < times {
        assert!(
            raised.len() < 400,
            "{} alerts raised and the agent never logged `{what}`:\n{}",
            raised.len(),
            agent.describe()
        );
        raised.extend(raise(site, agent, 10));
        // The writer tries to flush what it was handed within a second.
        let start = Instant::now();
        while count(&agent.log(), what) < times && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    raised
}

/// Waits until every alert of `want` is stored.
fn wait_keys(backend: &Backend, want: &[Value], what: &str) -> BTreeMap<Key, usize> {
    let start = Instant::now();
    loop {
        let stored = stored_keys(backend);
        let missing: Vec<Key> = want
            .iter()
            .map(key)
            .filter(|k| !stored.contains_key(k))
            .collect();
        if missing.is_empty() {
            return stored;
        }
        assert!(
            start.elapsed() < DRAIN_TIMEOUT,
            "{what}: {} alert(s) never stored: {missing:?}",
            missing.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn segments(spool: &Path) -> usize {
    fs::read_dir(spool)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

/// The figures of one fill/free cycle.
struct Cycle {
    raised_while_full: usize,
    recover: Duration,
}

/// Fills the volume while the agent raises alerts (`extra` more once the spool failed), frees
/// it, and checks that all of them are stored exactly once, the agent saying so once.
fn fill_and_free(
    site: &mut Site,
    agent: &Agent,
    backend: &Backend,
    volume: &Volume,
    cycle: usize,
    extra: usize,
) -> Cycle {
    let spool = site.root.join("state/spool");
    let segments_before = segments(&spool);
    volume.fill();
    let mut full = raise_until_logged(site, agent, SPOOL_FAILING, cycle);
    let failing_at = full.len();
    // More than a counter block (64), so that the counter must be written while full.
    full.extend(raise(site, agent, extra.max(70)));
    assert!(alive(agent.pid()), "{}", agent.describe());
    let log = agent.log();
    assert_eq!(
        count(&log, SPOOL_FAILING),
        cycle,
        "said once per fill, not per alert:\n{log}"
    );
    assert!(log.contains("No space left on device"), "{log}");
    assert_eq!(count(&log, SEQ_FAILING), cycle, "{log}");
    // Not durable, so not sent: none of the alerts raised once the spool failed is stored.
    let stored = stored_keys(backend);
    let early: Vec<Key> = full[failing_at..]
        .iter()
        .map(key)
        .filter(|k| stored.contains_key(k))
        .collect();
    assert!(early.is_empty(), "stored while not durable: {early:?}");
    // A failed write is retried in the same segment, not in a new file each time.
    assert!(
        segments(&spool) <= segments_before + 1,
        "{} segments, {segments_before} before the disk was full",
        segments(&spool)
    );

    volume.free();
    let freed = Instant::now();
    wait_keys(backend, &full, "raised while the disk was full");
    let recover = freed.elapsed();
    // The counter is written again at a number taken once its retry is due (every second).
    let mut tries = 0;
    while count(&agent.log(), SEQ_BACK) < cycle {
        tries += 1;
        assert!(
            tries <= 10,
            "the counter never written again:\n{}",
            agent.describe()
        );
        raise(site, agent, 1);
        let start = Instant::now();
        while count(&agent.log(), SEQ_BACK) < cycle && start.elapsed() < Duration::from_millis(1500)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let log = agent.log();
    assert_eq!(count(&log, SPOOL_BACK), cycle, "{log}");
    assert_eq!(count(&log, SEQ_BACK), cycle, "{log}");
    Cycle {
        raised_while_full: full.len(),
        recover,
    }
}

#[test]
fn faults_state_filesystem_full_then_read_only_keeps_the_agent_running_and_loses_only_what_is_said()
{
    let _serial = serial();
    let cycles = rounds(1, 3);
    let broker = Broker::start();
    let backend = Backend::start(&broker, "disk-full", "");
    let burst = if full() { 600 } else { 0 };
    // Alerts per fill once the spool failed: within what the spool holds in memory.
    let extra = if full() { 200 } else { 70 };
    let mut site = Site::new(&broker, 200 + cycles * (extra + 40) + burst);
    let toml = site.root.join("picket.toml");
    let config = fs::read_to_string(&toml).unwrap();
    fs::write(
        &toml,
        config.replace(
            &format!("max_bytes = {SPOOL_BYTES}"),
            &format!("max_bytes = {SMALL_SPOOL}"),
        ),
    )
    .unwrap();
    let volume = Volume::new(&site.root.join("state"));
    let agent = site.start();

    // Healthy first.
    let warm = raise(&mut site, &agent, 10);
    wait_keys(&backend, &warm, "before any fault");
    assert_eq!(count(&agent.log(), SPOOL_FAILING), 0, "{}", agent.log());

    // Full, then freed.
    let mut full_raised = 0;
    let mut recover_full = Duration::ZERO;
    for cycle in 1..=cycles {
        let c = fill_and_free(&mut site, &agent, &backend, &volume, cycle, extra);
        full_raised += c.raised_while_full;
        recover_full = recover_full.max(c.recover);
    }

    // A burst while full larger than the spool may hold: memory stays within its bound, the
    // oldest alerts of the burst are dropped, counted and reported.
    let mut burst_lost = 0;
    let mut burst_lost_keys = BTreeSet::new();
    let mut rss = (0, 0);
    if burst > 0 {
        volume.fill();
        let mut raised = raise_until_logged(&mut site, &agent, SPOOL_FAILING, cycles + 1);
        rss.0 = rss_kib(agent.pid());
        raised.extend(raise(&mut site, &agent, burst));
        rss.1 = rss_kib(agent.pid());
        assert!(alive(agent.pid()), "{}", agent.describe());
        volume.free();
        // The report of the drops is an alert of its own, stored like the others.
        let start = Instant::now();
        let reported = loop {
            let alerts = backend.query(&[
                "alerts",
                "--device",
                DEVICE,
                "--kind",
                "alerts_dropped",
                "--json",
            ]);
            let n: u64 = alerts
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["details"]["dropped"].as_u64().unwrap())
                .sum();
            let stored = stored_keys(&backend);
            let missing = raised
                .iter()
                .filter(|a| !stored.contains_key(&key(a)))
                .count();
            if n > 0 && n as usize == missing {
                break n as usize;
            }
            assert!(
                start.elapsed() < DRAIN_TIMEOUT,
                "{missing} alerts of the burst missing, {n} reported dropped\n{}",
                agent.describe()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        // The dropped ones are the oldest waiting: every stored alert of the burst is newer
        // than every lost one.
        let stored = stored_keys(&backend);
        let (lost, kept): (Vec<&Value>, Vec<&Value>) =
            raised.iter().partition(|a| !stored.contains_key(&key(a)));
        let newest_lost = lost
            .iter()
            .map(|a| a["seq"].as_u64().unwrap())
            .max()
            .unwrap();
        let oldest_kept_after = kept
            .iter()
            .map(|a| a["seq"].as_u64().unwrap())
            .filter(|&s| s > newest_lost)
            .count();
        assert!(oldest_kept_after > 0, "nothing of the burst kept");
        let kept_before: Vec<u64> = kept
            .iter()
            .map(|a| a["seq"].as_u64().unwrap())
            .filter(|&s| s < newest_lost && s > lost[0]["seq"].as_u64().unwrap())
            .collect();
        assert!(
            kept_before.is_empty(),
            "dropped out of order: {kept_before:?}"
        );
        burst_lost = reported;
        burst_lost_keys = lost.iter().map(|a| key(a)).collect();
    }

    // Read-only: the kernel's answer to an error on the filesystem.
    let before_ro = raise(&mut site, &agent, 10);
    wait_keys(&backend, &before_ro, "before the filesystem went read-only");
    let failing = count(&agent.log(), SPOOL_FAILING);
    // Every alert raised from here to the stop (the test's and the agent's own) is not durable.
    let ro_from = site.raised_alerts().0.len();
    volume.break_read_only();
    let mut read_only = raise_until_logged(&mut site, &agent, SPOOL_FAILING, failing + 1);
    read_only.extend(raise(&mut site, &agent, 20));
    assert!(alive(agent.pid()), "{}", agent.describe());
    let log = agent.log();
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(count(&log, SPOOL_FAILING), failing + 1, "{log}");
    let out = agent.stop();
    let ro_to = site.raised_alerts().0.len();
    let status = out.status.unwrap();
    assert!(status.success(), "exit {status}:\n{}", out.log());
    // It says how many it could not write, and those are the ones lost.
    let lost_lines: Vec<usize> = out
        .log()
        .lines()
        .filter_map(|l| {
            let end = l.find(" alert(s) never written are lost")?;
            l[..end].rsplit(' ').next()?.parse().ok()
        })
        .collect();
    assert_eq!(
        lost_lines.len(),
        1,
        "one count of the alerts lost at the stop:\n{}",
        out.log()
    );
    let said = lost_lines[0];

    volume.repair();
    // What such an error may also leave: a damaged anti-rollback serial. The agent sets it
    // again from the policy in force, says so, and runs.
    let serial = site.root.join("state/policy/serial");
    fs::write(&serial, b"\xff\x00garbage").unwrap();
    let restarted = Instant::now();
    let agent = site.start();
    let started = restarted.elapsed();
    assert!(
        agent.log().contains("policy/serial is corrupt"),
        "{}",
        agent.log()
    );
    assert_eq!(fs::read_to_string(&serial).unwrap(), "1\n");
    let after = raise(&mut site, &agent, 10);
    wait_keys(&backend, &after, "after the repair");
    let recover_ro = restarted.elapsed();
    stop(agent);

    // Everything the device raised, against the store.
    let (raised, torn) = site.raised_alerts();
    assert_eq!(torn, 0);
    let stored = stored_keys(&backend);
    let twice: Vec<(&Key, &usize)> = stored.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let raised_keys: BTreeSet<Key> = raised.iter().map(key).collect();
    assert_eq!(raised_keys.len(), raised.len(), "an alert raised twice");
    let foreign: Vec<&Key> = stored.keys().filter(|k| !raised_keys.contains(k)).collect();
    assert!(foreign.is_empty(), "stored, never raised: {foreign:?}");
    let lost: Vec<&Key> = raised_keys
        .iter()
        .filter(|k| !stored.contains_key(k))
        .collect();
    let ro_keys: BTreeSet<Key> = raised[ro_from..ro_to].iter().map(key).collect();
    let lost_ro: Vec<&&Key> = lost.iter().filter(|k| ro_keys.contains(k)).collect();
    let unexplained: Vec<&Value> = raised
        .iter()
        .filter(|a| {
            let k = key(a);
            !stored.contains_key(&k) && !ro_keys.contains(&k) && !burst_lost_keys.contains(&k)
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "lost other than while read-only or dropped from the burst: {unexplained:#?}"
    );
    assert_eq!(lost.len(), lost_ro.len() + burst_lost);
    assert_eq!(
        lost_ro.len(),
        said,
        "lost while read-only, against what the agent said"
    );
    // What the backend reports of the numbers it never received.
    let gaps = backend.query(&["gaps", "--json"]);
    let gap_missing = |restart: bool| -> u64 {
        gaps.as_array()
            .unwrap()
            .iter()
            .filter(|g| g["device_id"] == DEVICE && g["restart"] == restart)
            .map(|g| g["missing"].as_u64().unwrap())
            .sum()
    };
    let (gap_lost, gap_restart) = (gap_missing(false), gap_missing(true));
    backend.stop();
    drop(volume);

    let others: BTreeMap<String, usize> = raised
        .iter()
        .filter(|a| a["alert"] != "protected_file_changed")
        .fold(BTreeMap::new(), |mut m, a| {
            *m.entry(a["alert"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
            m
        });
    println!(
        "FAULTS scenario=disk_full raised={} stored={} lost={} duplicated=0 recover_ms={} \
         fills={cycles} raised_while_full={full_raised} burst={burst} burst_dropped={burst_lost} \
         rss_kib_before_burst={} rss_kib_after_burst={} raised_read_only={} lost_read_only={} \
         recover_read_only_ms={} (agent started in {} ms) backend_gap_missing={gap_lost} backend_restart_gap_missing={gap_restart} \
         other_alerts={others:?}",
        raised.len(),
        stored.len(),
        lost.len(),
        recover_full.as_millis(),
        rss.0,
        rss.1,
        ro_keys.len(),
        lost_ro.len(),
        recover_ro.as_millis(),
        started.as_millis(),
    );
}
