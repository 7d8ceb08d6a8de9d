//! The figures of each benchmark and their sections of docs/PERFORMANCE.md, made from the
//! samples its script recorded.

mod agent;
mod backend;
mod footprint;
mod kernel;
mod reporting;
mod scan;

use crate::{doc, samples::Samples, stats, stats::Spread};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Bench {
    /// bench/agent.sh: storms, event-rate ceiling and memory, hashing and size.
    Agent,
    /// bench/scan.sh: the integrity scan and policy verification.
    Scan,
    /// bench/report.sh: reporting over MQTT/TLS.
    Report,
    /// bench/backend.sh: the fleet backend's ingest and queries.
    Backend,
}

/// Where the figures were taken: the machine line and the day.
pub struct Env {
    pub machine: String,
    pub today: String,
}

/// What a benchmark prints, and the sections (title, text) it writes.
pub struct Report {
    pub printed: String,
    pub sections: Vec<(&'static str, String)>,
}

pub fn run(bench: Bench, samples: &Path, doc: Option<&Path>) -> Result<()> {
    let samples = Samples::read(samples)?;
    let env = Env::current();
    let report = match bench {
        Bench::Agent => agent::report(&samples, &env)?,
        Bench::Scan => scan::report(&samples, &env)?,
        Bench::Report => reporting::report(&samples, &env)?,
        Bench::Backend => backend::report(&samples, &env)?,
    };
    println!("{}", report.printed);
    if let Some(doc) = doc {
        for (title, text) in &report.sections {
            doc::write_section(doc, title, text)?;
        }
    }
    Ok(())
}

impl Env {
    fn current() -> Self {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400);
        let (y, m, d) = stats::civil_date(days as i64);
        Env {
            machine: machine(),
            today: format!("{y:04}-{m:02}-{d:02}"),
        }
    }
}

/// "2 cores, 24 GiB, kernel 6.1.0, commit abc1234".
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cores} cores, {:.0} GiB, kernel {}, commit {commit}",
        mem_kib / 1_048_576.0,
        kernel.trim()
    )
}

/// Nanoseconds as whole milliseconds (rounded down), each sample apart.
fn ms(ns: &[f64]) -> Vec<f64> {
    ns.iter().map(|v| (v / 1e6).floor()).collect()
}

/// Nanoseconds as whole microseconds (rounded down), each sample apart.
fn us(ns: &[f64]) -> Vec<f64> {
    ns.iter().map(|v| (v / 1e3).floor()).collect()
}

/// "rounds LO–HI" of `spread` after `sep`, with ", noisy" when it is; empty without a spread of
/// two rounds or more.
pub(super) fn rounds_of(spread: Option<Spread>, decimals: usize, sep: &str) -> String {
    match spread {
        Some(r) if r.rounds > 1 => format!(
            "{sep}rounds {}{}",
            r.range(decimals),
            if r.noisy() { ", noisy" } else { "" }
        ),
        _ => String::new(),
    }
}

/// " (LO–HI)", the lowest and highest of `values`, with `decimals` decimals; empty with fewer
/// than two.
pub(super) fn range_in_parens(values: &[f64], decimals: usize) -> String {
    match Spread::of(values) {
        Ok(r) if r.rounds > 1 => format!(" ({})", r.range(decimals)),
        _ => String::new(),
    }
}

#[cfg(test)]
fn test_env() -> Env {
    Env {
        machine: "2 cores, 24 GiB, kernel 6.1.0, commit abc1234".to_string(),
        today: "2026-11-22".to_string(),
    }
}
