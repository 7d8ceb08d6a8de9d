//! `picket monitor`: load the sensors and print every event as one JSON line on stdout, until
//! interrupted. Logs go to stderr, so stdout stays machine-readable.
//!
//! Losses are never silent: any increase of the in-kernel loss counters is printed as a `lost`
//! line; at shutdown a `summary` line gives the totals.

use std::{
    io::{self, BufWriter, Write},
    str::FromStr,
};

use anyhow::Context as _;
use picket_common::Sensor;
use serde_json::json;

use crate::{
    cmd::session::{self, Loss, Sink, Stats},
    enrich::{Category, Event},
    sensors::{SensorArgs, SensorSet},
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
    let mut out = JsonLines {
        filter: args.filter,
        stdout: BufWriter::with_capacity(64 * 1024, io::stdout()),
    };
    let purpose = format!("monitoring (filter: {})", describe_filter(args.filter));
    let stop = std::future::pending::<()>();
    let result = session::run(
        &args.sensors,
        args.filter.sensors(),
        &purpose,
        stop,
        &mut out,
    )
    .await
    .and_then(|stats| out.summary(&stats));
    match result {
        // The reader went away (`picket monitor | head`): a normal way to stop.
        Err(e) if is_broken_pipe(&e) => {
            log::info!("stdout closed, stopping");
            Ok(())
        }
        other => other,
    }
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

/// Prints events as JSON lines on stdout.
struct JsonLines {
    filter: Filter,
    stdout: BufWriter<io::Stdout>,
}

impl Sink for JsonLines {
    fn event(&mut self, event: Event) -> anyhow::Result<()> {
        if self.filter.allows(event.category) {
            match event.record() {
                // Written straight from the typed record: no JSON object built per event.
                Some(record) => {
                    record
                        .write_json(&mut self.stdout)
                        .context("writing to stdout")?;
                    self.stdout.write_all(b"\n").context("writing to stdout")?;
                }
                None => self.line(&*event.fields)?,
            }
        }
        Ok(())
    }

    fn lost(&mut self, loss: &Loss) -> anyhow::Result<()> {
        self.line(&json!({
            "event": "lost",
            "sensor": loss.sensor.name(),
            "count": loss.new,
            "total": loss.total,
            "cgroups": loss.cgroups,
        }))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.stdout.flush().context("writing to stdout")
    }
}

impl JsonLines {
    /// The last line: totals of the session.
    fn summary(&mut self, stats: &Stats) -> anyhow::Result<()> {
        let lost = stats.lost;
        self.line(&json!({
            "event": "summary",
            "received": stats.received,
            "lost": {
                "process": lost[Sensor::Process as usize],
                "network": lost[Sensor::Network as usize],
                "file": lost[Sensor::File as usize],
            },
            "undecodable": stats.undecodable,
            "lost_by_cgroup": {
                "process": stats.lost_by_cgroup[Sensor::Process as usize],
                "network": stats.lost_by_cgroup[Sensor::Network as usize],
                "file": stats.lost_by_cgroup[Sensor::File as usize],
            },
        }))?;
        self.flush()
    }

    fn line(&mut self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.stdout, value).context("writing to stdout")?;
        self.stdout.write_all(b"\n").context("writing to stdout")
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
