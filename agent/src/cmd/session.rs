//! A sensor session: load the sensors, read and enrich every record in kernel order, and hand
//! the results to a [`Sink`] until interrupted or told to stop. `picket monitor` prints them;
//! `picket baseline learn` collects them into a draft policy.
//!
//! Losses are never silent: every second the in-kernel loss counters are read and any increase
//! goes to the sink.

use std::{collections::HashMap, future::Future, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use picket_common::{loss, EventKind, Sensor};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    enforce::{
        exec::{set_kill_switch, ExecGuard, ExecRules, GuardReport, KernelSide, Settings},
        GuardMode,
    },
    enrich::{identity::ExecFiles, Enricher, Event},
    sensors::{
        self,
        cgroup::CgroupNames,
        decode,
        fanotify::{ExecWatch, OpenWatch},
        guard::NetGuard,
        preflight, CgroupLosses, KernelCounters, SensorArgs, SensorSet, Sensors,
    },
};

/// Where a session's output goes.
pub trait Sink {
    /// An enriched event.
    fn event(&mut self, event: Event) -> anyhow::Result<()>;
    /// More records of a sensor were lost in the kernel (ring buffer full).
    fn lost(&mut self, loss: &Loss) -> anyhow::Result<()>;
    /// A batch of records has been handled.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Called every second, for work on a timer.
    fn tick(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The files whose opens to report (as `read` events), when that changed since the last
    /// call (the first call gives the initial list). Asked at start and every second.
    fn watched_files(&mut self) -> Option<Vec<PathBuf>> {
        None
    }
    /// What the guards are to do, when that changed since the last call (the first call gives
    /// the initial state). Asked at start and after every tick: a policy installed in a tick
    /// is enforced before the next record is read.
    fn guards(&mut self) -> Option<Guards> {
        None
    }
    /// The sensors are attached and the stop signals handled: the session runs (said in the
    /// log right after).
    fn attached(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// A guard the sink asked for could not start: its category is not enforced.
    fn guard_unavailable(&mut self, category: &'static str, error: String) -> anyhow::Result<()> {
        log::error!("{category} are not guarded: {error}");
        Ok(())
    }
}

/// What the guards are to do.
pub struct Guards {
    pub exec: GuardMode,
    pub exec_rules: ExecRules,
    pub exec_settings: Settings,
    pub net: GuardMode,
    pub network: picket_policy::model::Network,
}

/// Records of one sensor lost in the kernel since the last report.
#[derive(Debug)]
pub struct Loss {
    pub sensor: Sensor,
    /// Lost since the last report.
    pub new: u64,
    /// Lost since the sensors started.
    pub total: u64,
    /// The cgroups whose tasks caused the records lost since the last report, most first (at
    /// most [`LOSS_CGROUPS_SAID`]); empty when the kernel side does not count by cgroup.
    pub cgroups: Vec<CgroupLoss>,
}

/// Records lost by the tasks of one cgroup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CgroupLoss {
    /// cgroup v2 id, as in the records.
    pub cgroup_id: u64,
    /// Its path in the cgroup v2 hierarchy; `None` when it is gone.
    pub cgroup: Option<String>,
    /// Records lost, by kind (`exec`, `fork`, `exit`, `net`, `file`, `privilege`).
    pub lost: std::collections::BTreeMap<&'static str, u64>,
}

impl CgroupLoss {
    fn total(&self) -> u64 {
        self.lost.values().sum()
    }
}

/// The cgroups a [`Loss`] names, at most.
pub const LOSS_CGROUPS_SAID: usize = 8;

/// What a session saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Records read from the ring buffer.
    pub received: u64,
    /// Records that could not be decoded (counted and logged, never fatal).
    pub undecodable: u64,
    /// Records lost in the kernel, by sensor.
    pub lost: [u64; 3],
    /// Records lost in the kernel, by sensor and cgroup (those the kernel still counts).
    pub lost_by_cgroup: [Vec<CgroupLoss>; 3],
}

/// Runs the sensors in `set` until SIGINT, SIGTERM or `stop`; `purpose` is logged once ready.
pub async fn run(
    args: &SensorArgs,
    set: SensorSet,
    purpose: &str,
    stop: impl Future<Output = ()>,
    sink: &mut impl Sink,
) -> anyhow::Result<Stats> {
    preflight::check()?;
    // Listening before the tracepoints attach: every exec they report was seen opening.
    let files = ExecFiles::new(set.contains(Sensor::Process).then(exec_watch).flatten());
    let mut sensors = Sensors::load(args.bpf_object.as_ref(), args.ring_buffer_size, set)
        .context("starting the sensors")?;
    let ring = sensors
        .take_ring()
        .context("the ring buffer was already taken")?;
    // SAFETY: the ring buffer owns its map fd and keeps it open for as long as it lives, which
    // is as long as the `AsyncFd` that owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with the event loop")?;
    let mut opens = open_watch(sink);
    let (decided, mut decisions) = tokio::sync::mpsc::channel(DECISIONS_QUEUED);
    let mut guarding = Guarding {
        exec: None,
        net: None,
        decided,
        kernel: None,
    };
    match sensors.exec_tokens() {
        Ok(t) => guarding.kernel = Some(std::sync::Arc::new(std::sync::Mutex::new(t))),
        Err(e) => log::warn!(
            "programs run from memory are not killed while executables are enforced: {e}"
        ),
    }
    guarding.apply(&mut sensors, sink)?;
    release_startup_memory();
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(stop);

    sink.attached()?;
    log::info!(
        "sensors attached ({}), {purpose}",
        sensors::describe(sensors.enabled())
    );
    let mut pump = Pump {
        enricher: Enricher::with_exec_files(files),
        stats: Stats::default(),
        reported: KernelCounters::default(),
        reported_cgroups: HashMap::new(),
        last_by_cgroup: Vec::new(),
        map_behind: false,
        cgroup_names: CgroupNames::default(),
    };
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for the ring buffer")?;
                pump.drain(guard.get_inner_mut(), sink)?;
                guard.clear_ready();
            }
            guard = readable(&mut opens) => {
                let mut guard = guard.context("waiting for the open listener")?;
                // The exec records queued before these opens first: an open is judged by what
                // its process runs.
                pump.drain(ring.get_mut(), sink)?;
                pump.opened(guard.get_inner_mut(), sink)?;
                guard.clear_ready();
            }
            Some(report) = decisions.recv() => {
                let mut next = Some(report);
                while let Some(report) = next {
                    match report {
                        GuardReport::Decision(decision) => {
                            // The records queued before each decision first: its process's
                            // fork.
                            pump.drain(ring.get_mut(), sink)?;
                            sink.event(pump.enricher.refused(decision))?;
                        }
                        GuardReport::Note(line) => log::warn!("{line}"),
                    }
                    next = decisions.try_recv().ok();
                }
                sink.flush()?;
            }
            _ = tick.tick() => {
                // What the ring holds first: the tick judges time-outs (the canary's), and a
                // record already queued is not late (after a pause of the agent, say).
                pump.drain(ring.get_mut(), sink)?;
                pump.report_losses(&sensors, sink)?;
                sink.tick()?;
                guarding.apply(&mut sensors, sink)?;
                if let Some(w) = opens.as_mut() {
                    let w = w.get_mut();
                    if let Some(files) = sink.watched_files() {
                        w.set(files);
                    }
                    w.refresh();
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = &mut stop => break,
        }
    }
    // What arrived before the stop is still handled: the ring's records, then the guard's
    // decisions queued by then.
    pump.drain(ring.get_mut(), sink)?;
    while let Ok(report) = decisions.try_recv() {
        match report {
            GuardReport::Decision(decision) => sink.event(pump.enricher.refused(decision))?,
            GuardReport::Note(line) => log::warn!("{line}"),
        }
    }
    pump.report_losses(&sensors, sink)?;
    pump.stats.lost_by_cgroup = pump.lost_by_cgroup();
    let (hits, misses) = pump.enricher.hash_stats();
    log::info!(
        "stopped: {} events, {} processes tracked, hash cache {hits} hits / {misses} misses",
        pump.stats.received,
        pump.enricher.processes()
    );
    if let Some(g) = &guarding.exec {
        let n = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::Relaxed);
        log::info!(
            "exec guard ({}): {} execs judged, {} refused, {} given the default answer, {} \
             decisions not reported (queue full)",
            g.mode().name(),
            n(&g.stats.judged),
            n(&g.stats.refused),
            n(&g.stats.timed_out),
            n(&g.stats.unreported)
        );
    }
    Ok(pump.stats)
}

/// The cgroups whose losses of `sensor` grew from `before` to `now`, with how much, most first
/// (at most [`LOSS_CGROUPS_SAID`]).
fn grown(
    before: &HashMap<(u64, u32), loss::Counts>,
    now: &[CgroupLosses],
    sensor: Sensor,
) -> Vec<(u64, loss::Counts)> {
    let mut grown: Vec<(u64, loss::Counts)> = now
        .iter()
        .filter(|l| l.sensor == sensor)
        .filter_map(|l| {
            // A count below the last one: forgotten by the kernel and counted afresh.
            let before = before
                .get(&(l.cgroup_id, sensor as u32))
                .filter(|b| b.iter().zip(&l.counts).all(|(b, n)| b <= n));
            let mut delta = l.counts;
            if let Some(before) = before {
                for (d, b) in delta.iter_mut().zip(before) {
                    *d -= b;
                }
            }
            delta.iter().any(|n| *n > 0).then_some((l.cgroup_id, delta))
        })
        .collect();
    let total = |c: &loss::Counts| c.iter().sum::<u64>();
    grown.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(&b.0)));
    grown.truncate(LOSS_CGROUPS_SAID);
    grown
}

/// Decisions of the exec guard waiting for the event loop; beyond, they are counted and not
/// reported (the exec is answered all the same).
const DECISIONS_QUEUED: usize = 1024;

/// The running guards.
struct Guarding {
    exec: Option<ExecGuard>,
    net: Option<NetGuard>,
    decided: tokio::sync::mpsc::Sender<GuardReport>,
    /// The exec program's side of the exec guard (see [`crate::sensors::ExecTokens`]).
    kernel: Option<KernelSide>,
}

impl Drop for Guarding {
    /// The exec program stops killing execs before the exec guard, which gives their tokens,
    /// stops.
    fn drop(&mut self) {
        if let Some(Err(e)) = self.kernel.as_ref().map(|k| set_kill_switch(k, false)) {
            log::warn!("{e}");
        }
    }
}

impl Guarding {
    /// Does what the sink asks of the guards, if that changed. A guard whose mode changes is
    /// replaced by one started first: the old one judges until the new one does.
    fn apply(&mut self, sensors: &mut Sensors, sink: &mut impl Sink) -> anyhow::Result<()> {
        self.check_exec(sink)?;
        let Some(wanted) = sink.guards() else {
            return Ok(());
        };
        self.apply_net(sensors, sink, wanted.net, &wanted.network)?;
        // The exec program kills token-less execs through a descriptor only while an enforcing
        // guard gives tokens: an enforcing guard switches it on once it has marked every
        // filesystem, off when it ends; before another guard takes over, it is switched off
        // here.
        if wanted.exec != GuardMode::Enforce {
            if let Some(Err(e)) = self.kernel.as_ref().map(|k| set_kill_switch(k, false)) {
                log::warn!("{e}");
            }
        }
        match (&self.exec, wanted.exec) {
            (_, GuardMode::Off) => self.exec = None,
            (Some(g), mode) if g.mode() == mode => g.set_rules(wanted.exec_rules),
            (_, mode) => {
                match ExecGuard::start(
                    mode,
                    wanted.exec_rules,
                    wanted.exec_settings,
                    self.decided.clone(),
                    self.kernel.clone(),
                ) {
                    Ok(g) => {
                        // The guard it replaces is gone (its thread and group) before the
                        // line that says the new one judges.
                        drop(self.exec.replace(g));
                        log::info!("executables: guard started ({})", mode.name());
                    }
                    Err(e) => {
                        // A dry run judging on is better than nothing; an enforcing guard the
                        // policy no longer wants is not kept.
                        if self
                            .exec
                            .as_ref()
                            .is_some_and(|g| g.mode() != GuardMode::DryRun)
                        {
                            self.exec = None;
                        }
                        sink.guard_unavailable(
                            "executables",
                            format!(
                                "the exec guard could not start ({e}; it needs fanotify \
                                 permission events: Linux 5.0 with \
                                 CONFIG_FANOTIFY_ACCESS_PERMISSIONS, and CAP_SYS_ADMIN)"
                            ),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// An exec guard whose thread ended on an error is gone: the sink is told.
    fn check_exec(&mut self, sink: &mut impl Sink) -> anyhow::Result<()> {
        if self.exec.as_ref().is_some_and(|g| !g.running()) {
            self.exec = None;
            sink.guard_unavailable(
                "executables",
                "the exec guard stopped on an error (see the log); executables are not \
                 judged until the next policy or restart"
                    .into(),
            )?;
        }
        Ok(())
    }

    /// The network guard in `mode` with `network`'s rules: attached the first time it is
    /// needed (the network sensor's object holds its programs), detached when off. The
    /// previous rules stay in force until the new ones are written.
    fn apply_net(
        &mut self,
        sensors: &mut Sensors,
        sink: &mut impl Sink,
        mode: GuardMode,
        network: &picket_policy::model::Network,
    ) -> anyhow::Result<()> {
        if mode == GuardMode::Off {
            if self.net.take().is_some() {
                log::info!("network: guard detached (off)");
            }
            return Ok(());
        }
        if self.net.is_none() {
            if !sensors.enabled().contains(Sensor::Network) {
                return sink.guard_unavailable(
                    "network",
                    "the network sensor is not loaded: its programs hold the guard's".into(),
                );
            }
            match sensors.net_guard() {
                Ok(g) => self.net = Some(g),
                Err(e) => {
                    return sink.guard_unavailable(
                        "network",
                        format!(
                            "the network guard could not attach ({e}; it needs cgroup v2, \
                             CONFIG_CGROUP_BPF and Linux 5.7)"
                        ),
                    );
                }
            }
        }
        if let Some(g) = self.net.as_mut() {
            match g.apply(mode, network) {
                Ok(()) => log::info!(
                    "network: guard in force ({}, cgroup {})",
                    mode.name(),
                    g.cgroup().display()
                ),
                Err(e) => sink.guard_unavailable(
                    "network",
                    format!("the new rules could not be written, the previous ones stay: {e:#}"),
                )?,
            }
        }
        Ok(())
    }
}

/// The open listener for the files `sink` watches, or `None`: none to watch, or (said once)
/// this kernel or these privileges do not allow it.
fn open_watch(sink: &mut impl Sink) -> Option<AsyncFd<OpenWatch>> {
    let files = sink.watched_files().unwrap_or_default();
    let mut watch = match OpenWatch::start() {
        Ok(w) => w,
        Err(e) => {
            if !files.is_empty() {
                log::warn!(
                    "sensitive files are not watched: the open listener could not start ({e})"
                );
            }
            return None;
        }
    };
    watch.set(files);
    // SAFETY: the listener owns its group's descriptor and keeps it open for as long as it
    // lives, which is as long as the `AsyncFd` that owns it.
    match unsafe { AsyncFd::register_with_interest(watch, Interest::READABLE) } {
        Ok(w) => Some(w),
        Err(e) => {
            let e = e.into_parts().1;
            log::warn!("sensitive files are not watched: {e}");
            None
        }
    }
}

/// Waits until the open listener has events; never, without one.
async fn readable(
    opens: &mut Option<AsyncFd<OpenWatch>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, OpenWatch>> {
    match opens {
        Some(w) => w.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// The exec listener, or `None` (said once) when this kernel or these privileges do not allow
/// it: executed files are then identified through `/proc`, which misses processes that exit at
/// once.
fn exec_watch() -> Option<ExecWatch> {
    match ExecWatch::start() {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!(
                "executed files are identified through /proc, not at exec time: the fanotify \
                 exec listener could not start ({e}; it needs Linux 5.0 and CAP_SYS_ADMIN)"
            );
            None
        }
    }
}

/// Hands back to the kernel the heap that start-up used and freed (the parsed eBPF object and
/// kernel BTF, several MiB): the allocator keeps freed memory for reuse otherwise, and it would
/// stay resident for the life of the agent.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the kernel; no live allocation moves.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Turns records into events and keeps the counts.
struct Pump {
    enricher: Enricher,
    stats: Stats,
    reported: KernelCounters,
    /// Losses by (cgroup, sensor) at the last report.
    reported_cgroups: HashMap<(u64, u32), loss::Counts>,
    /// The losses by cgroup last read.
    last_by_cgroup: Vec<CgroupLosses>,
    /// Records were lost between the last read of the losses by cgroup and that of the
    /// totals: the map is behind them.
    map_behind: bool,
    cgroup_names: CgroupNames,
}

impl Pump {
    /// Handles every record available now, then flushes the sink.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, sink: &mut impl Sink) -> anyhow::Result<()> {
        while let Some(item) = ring.next() {
            self.stats.received += 1;
            match decode::decode(&item) {
                Ok(raw) => {
                    if let Some(event) = self.enricher.enrich(raw) {
                        sink.event(event)?;
                    }
                }
                Err(err) => {
                    self.stats.undecodable += 1;
                    // Log the first few, then one in a thousand: a flood must not flood the log.
                    let n = self.stats.undecodable;
                    if n <= 10 || n.is_multiple_of(1000) {
                        log::warn!("undecodable record #{n} ({} bytes): {err}", item.len());
                    }
                }
            }
        }
        sink.flush()
    }

    /// Hands the opens of watched files queued now to the sink, as `read` events; not the
    /// agent's own (its rescans hash protected files, which may be sensitive ones).
    fn opened(&mut self, watch: &mut OpenWatch, sink: &mut impl Sink) -> anyhow::Result<()> {
        let me = std::process::id();
        let lost = watch.lost;
        // All of them: the readiness is cleared next, and the kernel's queue is bounded.
        for (pid, path) in watch.drain(usize::MAX) {
            if pid != me {
                sink.event(self.enricher.read(pid, path))?;
            }
        }
        if watch.lost > lost {
            log::warn!(
                "sensitive files: {} opens lost (queue overflow), {} in all",
                watch.lost - lost,
                watch.lost
            );
        }
        sink.flush()
    }

    /// Tells the sink about each sensor whose loss counter grew.
    fn report_losses(&mut self, sensors: &Sensors, sink: &mut impl Sink) -> anyhow::Result<()> {
        let read = || sensors.counters().context("reading the in-kernel counters");
        let first = read()?;
        let mut now = first;
        // The map only when something was lost (it is walked), and before the counters are
        // read again: both only grow, so the cgroups never name more than the totals count.
        // What was lost between the two reads is in the totals, not in the map: the map is
        // read again next time, whatever the totals say then.
        let by_cgroup = if first.lost != self.reported.lost || self.map_behind {
            let by_cgroup = sensors
                .losses_by_cgroup()
                .context("reading the losses by cgroup")?;
            now = read()?;
            self.map_behind = now.lost != first.lost;
            by_cgroup
        } else {
            Vec::new()
        };
        let mut said = false;
        for sensor in Sensor::ALL {
            let i = sensor as usize;
            let new = now.lost[i].saturating_sub(self.reported.lost[i]);
            if new > 0 {
                said = true;
                let cgroups = self.cgroups_losing(sensor, &by_cgroup);
                let from = cgroups
                    .iter()
                    .map(|c| {
                        let name = c.cgroup.clone().unwrap_or_else(|| c.cgroup_id.to_string());
                        format!("{name} {}", c.total())
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                log::warn!(
                    "{} sensor: {new} events lost (ring buffer full; total {}){}",
                    sensor.name(),
                    now.lost[i],
                    if from.is_empty() {
                        String::new()
                    } else {
                        format!("; by cgroup: {from}")
                    }
                );
                sink.lost(&Loss {
                    sensor,
                    new,
                    total: now.lost[i],
                    cgroups,
                })?;
            }
        }
        if !by_cgroup.is_empty() {
            // The cgroups are said with the next loss: a catch-up read with none (the map was
            // behind) is kept for the summary and named by the next alert.
            if said {
                self.reported_cgroups = by_cgroup
                    .iter()
                    .map(|l| ((l.cgroup_id, l.sensor as u32), l.counts))
                    .collect();
            }
            self.last_by_cgroup = by_cgroup;
        }
        if now.argv_missing > self.reported.argv_missing {
            log::debug!("{} execs reported without arguments", now.argv_missing);
        }
        self.reported = now;
        self.stats.lost = now.lost;
        sink.flush()
    }

    /// The cgroups that lost records of `sensor` since the last report, most first, named.
    fn cgroups_losing(&mut self, sensor: Sensor, now: &[CgroupLosses]) -> Vec<CgroupLoss> {
        grown(&self.reported_cgroups, now, sensor)
            .iter()
            .map(|(id, delta)| self.cgroup_loss(*id, delta))
            .collect()
    }

    /// The losses by cgroup so far, named: the session's last word.
    fn lost_by_cgroup(&mut self) -> [Vec<CgroupLoss>; 3] {
        let mut out: [Vec<CgroupLoss>; 3] = Default::default();
        for l in std::mem::take(&mut self.last_by_cgroup) {
            let named = self.cgroup_loss(l.cgroup_id, &l.counts);
            out[l.sensor as usize].push(named);
        }
        out
    }

    /// `counts` (those not zero) lost by cgroup `id`, named.
    fn cgroup_loss(&mut self, id: u64, counts: &loss::Counts) -> CgroupLoss {
        CgroupLoss {
            cgroup_id: id,
            cgroup: self.cgroup_names.name(id),
            lost: EventKind::ALL
                .iter()
                .filter(|k| counts[**k as usize] > 0)
                .map(|k| (k.name(), counts[*k as usize]))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(file: u64, exec: u64) -> loss::Counts {
        let mut c = [0; loss::KINDS];
        c[EventKind::File as usize] = file;
        c[EventKind::Exec as usize] = exec;
        c
    }

    fn losses(cgroup_id: u64, sensor: Sensor, file: u64, exec: u64) -> CgroupLosses {
        CgroupLosses {
            cgroup_id,
            sensor,
            counts: counts(file, exec),
        }
    }

    #[test]
    fn losses_by_cgroup_are_told_since_the_last_report_most_first() {
        let (file, process) = (Sensor::File as u32, Sensor::Process as u32);
        let before = HashMap::from([
            ((1, file), counts(10, 0)),
            ((2, process), counts(0, 3)),
            ((2, file), counts(5, 0)),
            ((3, file), counts(7, 0)),
        ]);
        let now = [
            losses(1, Sensor::File, 12, 0),   // 2 more
            losses(2, Sensor::File, 5, 0),    // no more
            losses(2, Sensor::Process, 0, 4), // one more exec
            losses(3, Sensor::File, 2, 0),    // forgotten by the kernel since: 2 afresh
            losses(4, Sensor::File, 9, 0),    // new: 9
        ];
        let file = grown(&before, &now, Sensor::File);
        let ids: Vec<(u64, u64)> = file
            .iter()
            .map(|(id, c)| (*id, c[EventKind::File as usize]))
            .collect();
        assert_eq!(ids, [(4, 9), (1, 2), (3, 2)]);
        let exec = grown(&before, &now, Sensor::Process);
        assert_eq!(exec.len(), 1);
        assert_eq!((exec[0].0, exec[0].1[EventKind::Exec as usize]), (2, 1));
    }

    #[test]
    fn at_most_a_few_cgroups_are_named() {
        let now: Vec<CgroupLosses> = (1..=20).map(|id| losses(id, Sensor::File, id, 0)).collect();
        let file = grown(&HashMap::new(), &now, Sensor::File);
        assert_eq!(file.len(), LOSS_CGROUPS_SAID);
        assert_eq!(file[0].0, 20, "the cgroup that lost most first");
    }
}
