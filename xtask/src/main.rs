//! Picket's development tasks, run as `cargo xtask TASK` (an alias in .cargo/config.toml) or,
//! from the benchmark scripts, as the built binary `target/debug/xtask`.
//!
//! The scripts in `bench/` drive the outside tools (the agent, Mosquitto, PostgreSQL, OpenSSL,
//! the page cache) and record what they measure as samples; `bench-report` turns the samples
//! into figures (medians, ratios, percentiles, verdicts against targets) and rewrites the
//! benchmark's sections of docs/PERFORMANCE.md; `probe` takes the readings the scripts need
//! while they run. `e2e` builds the binaries and runs the end-to-end tests against them.

mod doc;
mod e2e;
mod probe;
mod report;
mod samples;
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Picket's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Makes a benchmark's figures from the samples its script recorded, prints them and
    /// rewrites its sections of the performance document.
    BenchReport {
        #[arg(value_enum)]
        bench: report::Bench,
        /// The samples, one `KEY VALUE` line each.
        #[arg(long)]
        samples: PathBuf,
        /// The document whose sections are rewritten.
        #[arg(long, default_value = "docs/PERFORMANCE.md")]
        doc: PathBuf,
        /// Print the figures only (the smoke runs of report.sh and backend.sh).
        #[arg(long)]
        no_write: bool,
    },
    /// Builds the agent and the backend, then runs the end-to-end tests against them (as
    /// root: the agent's tests load eBPF programs). The arguments go to `cargo test`, for
    /// example `--test sensors -- --test-threads=4`.
    E2e {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A reading taken while a benchmark runs, printed on one line.
    #[command(subcommand)]
    Probe(probe::Probe),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::BenchReport {
            bench,
            samples,
            doc,
            no_write,
        } => report::run(bench, &samples, (!no_write).then_some(doc.as_path())),
        Task::Probe(p) => probe::run(p),
        Task::E2e { args } => std::process::exit(e2e::run(&args)?),
    }
}
