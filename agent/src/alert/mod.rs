//! Alerts: what they carry, their persisted sequence numbers, aggregation of repeats, and the
//! sinks they go to.
//!
//! An alert gets its sequence number when it is emitted, from a counter persisted in the state
//! directory in blocks (one write per [`SEQ_BLOCK`] alerts, to spare flash): after a restart
//! numbering resumes past the last block, so numbers only ever grow, possibly with a gap. A new
//! counter (a first start, or a lost state directory) begins at a random point, far from any
//! other counter of the device ([`SEQ_RESET_JUMP`]).

use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use crate::counters::Counters;
use serde_json::Value;

/// How many sequence numbers are reserved per write of the counter.
const SEQ_BLOCK: u64 = 64;

pub use picket_proto::{AlertKind as Kind, ProcessContext, Severity, SEQ_RESET_JUMP};

/// An alert before it is numbered and aggregated.
#[derive(Debug, Clone)]
pub struct Draft {
    pub kind: Kind,
    pub severity: Severity,
    /// The rule category or baseline entry involved.
    pub rule: String,
    /// The executable, file or peer the alert is about.
    pub path: Option<String>,
    pub details: Value,
    /// The acting process's context (pid, ppid, uid, exe, sha256, argv, ancestry, cgroup_id),
    /// as it goes on the wire.
    pub process: Option<ProcessContext>,
}

impl Draft {
    /// What makes two alerts "the same" for aggregation: kind, subject, details, executable.
    fn key(&self) -> String {
        let exe = self
            .process
            .as_ref()
            .and_then(|p| p.exe.as_deref())
            .unwrap_or("");
        format!(
            "{:?}\u{0}{}\u{0}{}\u{0}{exe}",
            self.kind,
            self.path.as_deref().unwrap_or(""),
            self.details
        )
    }
}

/// A numbered alert, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub alert: Kind,
    pub severity: Severity,
    pub seq: u64,
    pub boot_id: String,
    pub time_ms: u64,
    pub device_id: String,
    pub rule: String,
    pub path: Option<String>,
    pub details: Value,
    /// Occurrences this alert stands for (more than 1 for an aggregate).
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub process: Option<ProcessContext>,
}

impl Alert {
    /// The alert as delivered to the fleet (see `picket_proto::Alert`).
    pub fn to_wire(&self) -> picket_proto::Alert {
        picket_proto::Alert {
            seq: self.seq,
            boot_id: self.boot_id.clone(),
            time_ms: self.time_ms,
            kind: self.alert,
            severity: self.severity,
            rule: self.rule.clone(),
            path: self.path.clone(),
            details: picket_proto::Details(self.details.clone()),
            count: self.count,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            process: self.process.clone(),
        }
    }
}

/// Where alerts go: JSON lines, the spool of the MQTT reporter.
pub trait AlertSink {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()>;
    /// Hands what was sent on to be made durable (called once per batch of events); must
    /// not wait for the disk where that can be avoided.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Makes what was sent durable before returning (at shutdown).
    fn sync(&mut self) -> anyhow::Result<()> {
        self.flush()
    }
    /// Alerts this sink had to give up (a full spool) since the last call.
    fn take_dropped(&mut self) -> u64 {
        0
    }
}

/// Alerts as JSON lines, on stdout and/or appended to a file.
pub struct JsonLinesSink {
    stdout: Option<io::Stdout>,
    file: Option<(PathBuf, fs::File)>,
    /// While lines cannot be written: since when the failure was last said, and the lines
    /// not written since the first failure.
    failing: Option<(Instant, u64)>,
}

/// How often a sink whose writes keep failing says so again.
const FAILING_REPEAT: Duration = Duration::from_secs(60);

impl JsonLinesSink {
    pub fn new(stdout: bool, file: Option<&Path>) -> anyhow::Result<Self> {
        let file = match file {
            Some(path) => {
                let f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the alert file {}", path.display()))?;
                Some((path.to_path_buf(), f))
            }
            None => None,
        };
        Ok(Self {
            stdout: stdout.then(io::stdout),
            file,
            failing: None,
        })
    }

    /// Writes `line` to stdout and to the file, each whatever becomes of the other; the first
    /// failure is returned.
    fn write(&mut self, line: &[u8]) -> anyhow::Result<()> {
        let mut failed = None;
        if let Some(out) = &mut self.stdout {
            let mut out = out.lock();
            if let Err(e) = out.write_all(line).and_then(|()| out.flush()) {
                failed = Some(anyhow::Error::new(e).context("writing an alert to stdout"));
            }
        }
        if let Some((path, f)) = &mut self.file {
            let before = f.metadata().map(|m| m.len());
            if let Err(e) = f.write_all(line) {
                // A line cut short (a full disk) would have the next one glued to it: it is
                // cut off.
                if let Ok(len) = before {
                    let _ = f.set_len(len);
                }
                failed.get_or_insert(
                    anyhow::Error::new(e)
                        .context(format!("writing an alert to {}", path.display())),
                );
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl AlertSink for JsonLinesSink {
    /// Never fails the detection loop: a line that cannot be written (a full or read-only
    /// disk, a closed stdout) is lost to this sink only, the other sinks still get the alert.
    /// Said at the first failure, once a minute while it lasts, and when lines are written
    /// again.
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(alert).context("encoding an alert")?;
        line.push(b'\n');
        match (self.write(&line), &mut self.failing) {
            (Ok(()), None) => {}
            (Ok(()), Some((_, lost))) => {
                log::info!("alert lines are written again ({lost} could not be written)");
                self.failing = None;
            }
            (Err(e), None) => {
                log::error!(
                    "{e:#}: the alerts go on to the other sinks; said again every minute while \
                     it lasts"
                );
                self.failing = Some((Instant::now(), 1));
            }
            (Err(e), Some((said, lost))) => {
                *lost += 1;
                if said.elapsed() >= FAILING_REPEAT {
                    log::error!("{e:#}: {lost} alert line(s) not written so far");
                    *said = Instant::now();
                }
            }
        }
        Ok(())
    }
}

/// Where a new counter begins: a random multiple of [`SEQ_BLOCK`] between 2^33 and
/// 2^53 - 2^33, so that a device whose state was lost (wiped, reflashed, a corrupt counter)
/// does not number its alerts from 1 again, where the backend would take them for copies of
/// the ones it holds (see [`SEQ_RESET_JUMP`]).
fn fresh_start() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| {
        anyhow::anyhow!("no random numbers from the kernel for a new alert counter")
    })?;
    let span = (1u64 << 53) - 2 * (SEQ_RESET_JUMP << 1);
    let start = (SEQ_RESET_JUMP << 1) + u64::from_le_bytes(b) % span;
    // The last number of a reserved block: the first taken is a block's first.
    Ok(start - start % SEQ_BLOCK)
}

/// How many characters of a corrupt counter's content its warning quotes.
const QUOTED_MAX: usize = 64;

/// `text` escaped for a log line, cut after `max` characters (with `...` when it was).
fn quoted(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

/// The persisted alert counter.
pub struct Sequence {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
    /// While the counter cannot be written (a full or read-only state directory): when to
    /// try again.
    retry_at: Option<Instant>,
}

/// How long a counter that could not be written waits before the next try.
const SEQ_RETRY: Duration = Duration::from_secs(1);

impl Sequence {
    /// Opens the counter in `state_dir`, resuming past what a previous run reserved. Without
    /// a counter (the first start, or the state directory was lost) or with one whose content
    /// is not a number, or that cannot be read (`EIO`, `EACCES`, ...), a new counter begins at
    /// a random point (see [`fresh_start`]): never at 1 again, where the fleet already holds
    /// this device's first numbers. An agent that did not start over an unreadable counter
    /// would watch nothing; a new sequence costs a reset the backend reports.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join("alert.seq");
        let start = match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                match text.trim().parse::<u64>() {
                    Ok(n) => n,
                    Err(_) => {
                        let start = fresh_start()?;
                        log::warn!(
                            "{} is corrupt (`{}` is not a number): alerts are numbered from {} \
                             on, a new sequence (the backend reports it as a reset)",
                            path.display(),
                            quoted(text.trim(), QUOTED_MAX),
                            start + 1
                        );
                        start
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let start = fresh_start()?;
                log::info!(
                    "no alert counter in {} (a first start, or the state was lost): \
                     alerts are numbered from {} on",
                    state_dir.display(),
                    start + 1
                );
                start
            }
            // Unreadable (a failing flash, its mode changed): a security agent that did not
            // start over it would watch nothing. A new sequence, which the backend reports as a
            // reset, costs only that report.
            Err(e) => {
                let start = fresh_start()?;
                log::warn!(
                    "cannot read the alert counter {}: {e}: alerts are numbered from {} on, a \
                     new sequence (the backend reports it as a reset)",
                    path.display(),
                    start + 1
                );
                start
            }
        };
        Ok(Self {
            path,
            next: start + 1,
            reserved_until: start,
            retry_at: None,
        })
    }

    /// Makes the next number greater than `n` (a number found elsewhere, in the spool, that
    /// this counter must not reuse if its own file was lost).
    pub fn skip_past(&mut self, n: u64) {
        self.next = self.next.max(n.saturating_add(1));
    }

    /// The next number, reserving a new block on disk when the current one is used up.
    ///
    /// Never fails: a counter that cannot be written (the state directory full or read-only)
    /// costs no alert. Numbering goes on past the reservation, the failure is logged once, and
    /// the write is tried again at most once a second until it succeeds (logged too). The
    /// numbers used meanwhile are recorded by the first write that succeeds, at the next alert
    /// or at the alerter's next tick ([`Sequence::catch_up`]), whichever comes first: the
    /// spool's own numbers do not last (acknowledged records are compacted away), so a run
    /// stopped before either would leave the next to use them again.
    pub fn take(&mut self) -> u64 {
        if self.next > self.reserved_until {
            self.reserve();
        }
        let n = self.next;
        self.next += 1;
        n
    }

    /// Writes the reservation again when numbers were used past it (the counter could not be
    /// written then), once its retry is due. The alerter calls it at every tick, so that a run
    /// with no further alert still records what it used.
    pub fn catch_up(&mut self) {
        if self.next > self.reserved_until.saturating_add(1) {
            self.reserve();
        }
    }

    /// Reserves the numbers from `next` to a block past it on disk, unless a failed write's
    /// retry is not due yet; a failure is logged once, a success after failures once.
    fn reserve(&mut self) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let until = self.next + SEQ_BLOCK - 1;
        match self.persist(until) {
            Ok(()) => {
                if self.retry_at.take().is_some() {
                    log::info!("the alert counter {} is written again", self.path.display());
                }
                self.reserved_until = until;
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    log::error!(
                        "{e:#}: alerts are numbered on without a reservation on disk until it \
                         can be written (tried again every second, said once)"
                    );
                }
                self.retry_at = Some(Instant::now() + SEQ_RETRY);
            }
        }
    }

    /// Writes `until` as the last number reserved (a temporary file renamed over the counter).
    fn persist(&self, until: u64) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(format!("{until}\n").as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            // A full disk: the partial file would hold space it needs.
            let _ = fs::remove_file(&tmp);
            anyhow::Error::new(e).context(format!("persisting {}", self.path.display()))
        })
    }
}

/// Numbers, aggregates and sends alerts.
pub struct Alerter {
    device_id: String,
    boot_id: String,
    seq: Sequence,
    window: Duration,
    max_tracked: usize,
    /// Alerts seen in the current window, by key: the first was sent; repeats are counted.
    open: HashMap<String, Open>,
    sinks: Vec<Box<dyn AlertSink>>,
    counters: Arc<Counters>,
    /// Alerts the sinks dropped and no alert has reported yet.
    dropped_unreported: u64,
}

struct Open {
    draft: Draft,
    opened: Instant,
    first_ms: u64,
    last_ms: u64,
    repeats: u64,
}

impl Alerter {
    pub fn new(
        device_id: String,
        seq: Sequence,
        window: Duration,
        max_tracked: usize,
        sinks: Vec<Box<dyn AlertSink>>,
        counters: Arc<Counters>,
    ) -> Self {
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Self {
            device_id,
            boot_id,
            seq,
            window,
            max_tracked: max_tracked.max(1),
            open: HashMap::new(),
            sinks,
            counters,
            dropped_unreported: 0,
        }
    }

    /// The kernel's boot id, as stamped on alerts.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Hands every alert sent so far on to the sinks' storage (the spool writes it in the
    /// background).
    pub fn flush_sinks(&mut self) -> anyhow::Result<()> {
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        Ok(())
    }

    /// Makes every alert sent so far durable in the sinks that keep them, waiting for it.
    pub fn sync_sinks(&mut self) -> anyhow::Result<()> {
        for sink in &mut self.sinks {
            sink.sync()?;
        }
        Ok(())
    }

    /// Raises `draft`: sent now if it is new in its window, counted otherwise.
    pub fn raise(&mut self, draft: Draft) -> anyhow::Result<()> {
        let now = now_ms();
        let key = draft.key();
        Counters::add(&self.counters.raised, 1);
        if let Some(open) = self.open.get_mut(&key) {
            Counters::add(&self.counters.aggregated, 1);
            open.repeats += 1;
            open.last_ms = now;
            return Ok(());
        }
        if self.open.len() >= self.max_tracked {
            // Bounded: close the oldest window early.
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, o)| o.opened)
                .map(|(k, _)| k.clone())
            {
                if let Some(o) = self.open.remove(&oldest) {
                    self.close(o)?;
                }
            }
        }
        self.emit(&draft, 1, now, now)?;
        self.open.insert(
            key,
            Open {
                draft,
                opened: Instant::now(),
                first_ms: now,
                last_ms: now,
                repeats: 0,
            },
        );
        Ok(())
    }

    /// Closes the windows that have ended, reporting their repeats as one alert each.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.seq.catch_up();
        let window = self.window;
        let ended: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.opened.elapsed() >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(o) = self.open.remove(&key) {
                self.close(o)?;
            }
        }
        self.report_dropped()
    }

    /// Reports every open window's repeats (at shutdown).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        let open: Vec<Open> = self.open.drain().map(|(_, o)| o).collect();
        for o in open {
            self.close(o)?;
        }
        self.report_dropped()
    }

    fn close(&mut self, o: Open) -> anyhow::Result<()> {
        if o.repeats > 0 {
            self.emit(&o.draft, o.repeats, o.first_ms, o.last_ms)?;
        }
        Ok(())
    }

    fn emit(&mut self, d: &Draft, count: u64, first_ms: u64, last_ms: u64) -> anyhow::Result<()> {
        let alert = Alert {
            alert: d.kind,
            severity: d.severity,
            seq: self.seq.take(),
            boot_id: self.boot_id.clone(),
            time_ms: now_ms(),
            device_id: self.device_id.clone(),
            rule: d.rule.clone(),
            path: d.path.clone(),
            details: d.details.clone(),
            count,
            first_ms,
            last_ms,
            process: d.process.clone(),
        };
        log::warn!(
            "alert #{} {:?}: {}",
            alert.seq,
            alert.alert,
            alert.path.as_deref().unwrap_or("")
        );
        for sink in &mut self.sinks {
            sink.send(&alert)?;
        }
        // A full spool made room by dropping older, less severe alerts: counted here, reported
        // once a second by `tick` (a report per drop would itself fill the spool).
        self.dropped_unreported += self.sinks.iter_mut().map(|s| s.take_dropped()).sum::<u64>();
        Ok(())
    }

    /// Counts alerts lost outside the sinks' view (damaged spool records found at start-up);
    /// the next report says so.
    pub fn count_dropped(&mut self, n: u64) {
        self.dropped_unreported += n;
        Counters::add(&self.counters.dropped, n);
    }

    /// Reports the alerts the spool dropped since the last report, as one alert.
    fn report_dropped(&mut self) -> anyhow::Result<()> {
        // The spool makes room as it writes, after the alerts were emitted.
        self.dropped_unreported += self.sinks.iter_mut().map(|s| s.take_dropped()).sum::<u64>();
        let dropped = std::mem::take(&mut self.dropped_unreported);
        if dropped == 0 {
            return Ok(());
        }
        log::error!("the spool is full: {dropped} undelivered alerts were dropped");
        let report = Draft {
            kind: Kind::AlertsDropped,
            severity: Severity::Critical,
            rule: "spool".into(),
            path: None,
            details: serde_json::json!({ "dropped": dropped }),
            process: None,
        };
        let now = now_ms();
        self.emit(&report, 1, now, now)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
