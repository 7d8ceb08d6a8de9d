//! The subcommands: each puts the steps of the pipeline together for one job.

pub mod baseline;
pub mod kernel_check;
pub mod monitor;
pub mod policy;
pub mod run;
pub mod run_marker;
pub mod session;
