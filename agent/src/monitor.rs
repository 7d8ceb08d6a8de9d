//! `picket monitor`: load the sensors and print every event as one JSON line on stdout, until
//! interrupted. Logs go to stderr, so stdout stays machine-readable.
//!
//! Losses are never silent: every second the in-kernel loss counters are read and any increase
//! is printed as a `lost` line; at shutdown a `summary` line gives the totals.

use std::{
    io::{self, BufWriter, Write},
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use picket_common::Sensor;
use serde_json::json;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    enrich::{Category, Enricher},
    preflight,
    sensors::{self, decode, KernelCounters, SensorSet, Sensors},
    SensorArgs,
};

/// Arguments of `picket monitor`.
#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// Only print these kinds of events (comma-separated): exec (also fork and exit), net, file.
    #[arg(long, value_name = "KINDS", default_value = "exec,net,file")]
    filter: Filter,

    #[command(flatten)]
    sensors: SensorArgs,
}

/// Which event categories to print.
#[derive(Debug, Clone, Copy)]
struct Filter {
    exec: bool,
    net: bool,
    file: bool,
}

impl FromStr for Filter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut f = Filter {
            exec: false,
            net: false,
            file: false,
        };
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "exec" | "process" => f.exec = true,
                "net" | "network" => f.net = true,
                "file" | "files" => f.file = true,
                other => {
                    return Err(format!(
                        "unknown event kind `{other}` (expected exec, net or file)"
                    ))
                }
            }
        }
        if !(f.exec || f.net || f.file) {
            return Err("the filter selects nothing (expected exec, net and/or file)".into());
        }
        Ok(f)
    }
}

impl Filter {
    fn allows(self, category: Category) -> bool {
        match category {
            Category::Exec => self.exec,
            Category::Net => self.net,
            Category::File => self.file,
        }
    }

    /// The process sensor always runs: it keeps the process table that gives every event its
    /// context.
    fn sensors(self) -> SensorSet {
        let mut set = SensorSet::empty().with(Sensor::Process);
        if self.net {
            set = set.with(Sensor::Network);
        }
        if self.file {
            set = set.with(Sensor::File);
        }
        set
    }
}

/// Runs the monitor until SIGINT or SIGTERM.
pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    preflight::check()?;
    let mut sensors = Sensors::load(
        args.sensors.bpf_object.as_ref(),
        args.sensors.ring_buffer_size,
        args.filter.sensors(),
    )
    .context("starting the sensors")?;
    let ring = sensors
        .take_ring()
        .context("the ring buffer was already taken")?;
    // SAFETY: the ring buffer owns its map fd and keeps it open for as long as it lives, which
    // is as long as the `AsyncFd` that owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with the event loop")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));

    log::info!(
        "sensors attached ({}), monitoring (filter: {})",
        sensors::describe(sensors.enabled()),
        describe_filter(args.filter)
    );

    let mut out = Output::new(args.filter);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("waiting for the ring buffer")?;
                    out.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                _ = tick.tick() => out.report_losses(&sensors)?,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        // What arrived before the signal still gets printed.
        out.drain(ring.get_mut())?;
        out.report_losses(&sensors)?;
        out.summary()
    }
    .await;
    match result {
        // The reader went away (`picket monitor | head`): a normal way to stop.
        Err(e) if is_broken_pipe(&e) => log::info!("stdout closed, stopping"),
        other => other?,
    }
    let (hits, misses) = out.enricher.hash_stats();
    log::info!(
        "stopped: {} events, {} processes tracked, hash cache {hits} hits / {misses} misses",
        out.received,
        out.enricher.processes()
    );
    Ok(())
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(io::ErrorKind::BrokenPipe)
    })
}

fn describe_filter(f: Filter) -> String {
    let mut parts = Vec::new();
    if f.exec {
        parts.push("exec");
    }
    if f.net {
        parts.push("net");
    }
    if f.file {
        parts.push("file");
    }
    parts.join(",")
}

/// Turns records into JSON lines and keeps the counts.
struct Output {
    filter: Filter,
    enricher: Enricher,
    stdout: BufWriter<io::Stdout>,
    received: u64,
    undecodable: u64,
    reported: KernelCounters,
}

impl Output {
    fn new(filter: Filter) -> Self {
        Self {
            filter,
            enricher: Enricher::new(),
            stdout: BufWriter::with_capacity(64 * 1024, io::stdout()),
            received: 0,
            undecodable: 0,
            reported: KernelCounters::default(),
        }
    }

    /// Handles every record available now, then flushes.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        while let Some(item) = ring.next() {
            self.received += 1;
            match decode::decode(&item) {
                Ok(raw) => {
                    if let Some(event) = self.enricher.enrich(raw) {
                        if self.filter.allows(event.category) {
                            self.line(&serde_json::Value::Object(event.fields))?;
                        }
                    }
                }
                Err(err) => {
                    self.undecodable += 1;
                    // Log the first few, then one in a thousand: a flood must not flood the log.
                    if self.undecodable <= 10 || self.undecodable % 1000 == 0 {
                        log::warn!(
                            "undecodable record #{} ({} bytes): {err}",
                            self.undecodable,
                            item.len()
                        );
                    }
                }
            }
        }
        self.flush()
    }

    /// Prints a `lost` line for each sensor whose loss counter grew.
    fn report_losses(&mut self, sensors: &Sensors) -> anyhow::Result<()> {
        let now = sensors
            .counters()
            .context("reading the in-kernel counters")?;
        for sensor in Sensor::ALL {
            let i = sensor as usize;
            let new = now.lost[i].saturating_sub(self.reported.lost[i]);
            if new > 0 {
                log::warn!(
                    "{} sensor: {new} events lost (ring buffer full; total {})",
                    sensor.name(),
                    now.lost[i]
                );
                self.line(&json!({
                    "event": "lost",
                    "sensor": sensor.name(),
                    "count": new,
                    "total": now.lost[i],
                }))?;
            }
        }
        if now.argv_missing > self.reported.argv_missing {
            log::debug!("{} execs reported without arguments", now.argv_missing);
        }
        self.reported = now;
        self.flush()
    }

    fn summary(&mut self) -> anyhow::Result<()> {
        let lost = self.reported.lost;
        self.line(&json!({
            "event": "summary",
            "received": self.received,
            "lost": {
                "process": lost[Sensor::Process as usize],
                "network": lost[Sensor::Network as usize],
                "file": lost[Sensor::File as usize],
            },
            "undecodable": self.undecodable,
        }))?;
        self.flush()
    }

    fn line(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.stdout, value).context("writing to stdout")?;
        self.stdout.write_all(b"\n").context("writing to stdout")
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.stdout.flush().context("writing to stdout")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters() {
        let f: Filter = "exec, file".parse().unwrap();
        assert!(f.exec && f.file && !f.net);
        assert!(f.sensors().contains(Sensor::Process));
        assert!(!f.sensors().contains(Sensor::Network));
        assert!("exec,bogus"
            .parse::<Filter>()
            .unwrap_err()
            .contains("bogus"));
        assert!("".parse::<Filter>().is_err());
    }
}
