//! `picket`: the runtime security agent for embedded Linux.
//!
//! The binary's entry point: command-line parsing, logging, and dispatch to the subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use picket_agent::cmd::{baseline, kernel_check, monitor, policy as policy_cmd, run};
use picket_agent::detect::canary;

/// Picket watches process execution, network connections and file changes with eBPF.
#[derive(Parser)]
#[command(name = "picket", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: enforce the signed baseline policy and raise alerts for deviations.
    Run(run::RunArgs),
    /// Load the sensors and print every event as one JSON line, until interrupted.
    Monitor(monitor::MonitorArgs),
    /// Generate an Ed25519 key pair for signing policies: NAME.key (secret) and NAME.pub.
    Keygen(policy_cmd::KeygenArgs),
    /// Sign, verify, show and apply baseline policies.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Produce a baseline policy from a root filesystem.
    #[command(subcommand)]
    Baseline(baseline::BaselineCommand),
    /// Tell which kernel features Picket uses the running kernel has, and what degrades without
    /// each.
    ///
    /// Reads the kernel's build configuration (/proc/config.gz, else /boot/config-RELEASE) and
    /// probes the running kernel (bpf(), a ring buffer map, programs loaded but never attached,
    /// tracefs, fanotify, cgroup v2); a probe's answer wins. Run it as root. One line per
    /// feature: present, missing or unknown. Exit status: 0 when every required feature is
    /// present, 1 when one is missing, 2 when one could not be checked.
    KernelCheck(kernel_check::KernelCheckArgs),
    /// The sensor liveness check's test exec (internal): exits at once.
    #[command(name = canary::SUBCOMMAND, hide = true)]
    Canary { nonce: String },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    // kernel-check's exit status is its answer.
    if let Command::KernelCheck(args) = cli.command {
        return match kernel_check::run(args) {
            Ok(status) => ExitCode::from(status),
            Err(err) => report(Err(err)),
        };
    }
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
    report(runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Monitor(args) => monitor::run(args).await,
            Command::Keygen(args) => policy_cmd::keygen(args),
            Command::Policy(cmd) => policy_cmd::run(cmd),
            Command::Baseline(cmd) => baseline::run(cmd).await,
            Command::Canary { .. } | Command::KernelCheck(_) => Ok(()),
        }
    }))
}

/// Logs an error with its chain of causes and turns the result into an exit code.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole chain of causes on one line.
            log::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
