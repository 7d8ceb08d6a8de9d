//! `picket`: the runtime security agent for embedded Linux.
//!
//! The binary's entry point: command-line parsing, logging, and dispatch to the subcommands.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod enrich;
mod hash;
mod monitor;
mod paths;
mod preflight;
mod process;
mod sensors;

/// Picket watches process execution, network connections and file changes with eBPF.
#[derive(Parser)]
#[command(name = "picket", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the sensors and print every event as one JSON line, until interrupted.
    Monitor(monitor::MonitorArgs),
}

/// Options shared by every command that loads the sensors.
#[derive(clap::Args, Debug, Clone)]
pub struct SensorArgs {
    /// Load the eBPF object from this file instead of the one built into the binary.
    #[arg(long, value_name = "PATH")]
    pub bpf_object: Option<PathBuf>,

    /// Size of the kernel-to-agent ring buffer in bytes (a power of two, at least one page).
    #[arg(long, value_name = "BYTES", default_value_t = sensors::DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_size: u32,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Monitor(args) => monitor::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole chain of causes on one line.
            log::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
