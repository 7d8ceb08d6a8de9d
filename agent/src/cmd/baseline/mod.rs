//! `picket baseline`: producing a baseline policy from what a device is or does.

mod config;
mod hasher;
pub mod learn;
pub mod scan;
mod walk;

/// `picket baseline ...`
#[derive(clap::Subcommand, Debug)]
pub enum BaselineCommand {
    /// Walk a root filesystem and write a policy listing its executables and protected files
    /// with their SHA-256.
    Scan(scan::ScanArgs),
    /// Run the sensors for a while and write what the device did as a draft policy.
    Learn(learn::LearnArgs),
}

/// Runs a `picket baseline` subcommand.
pub async fn run(command: BaselineCommand) -> anyhow::Result<()> {
    match command {
        BaselineCommand::Scan(args) => scan::run(args),
        BaselineCommand::Learn(args) => learn::run(args).await,
    }
}
