//! End-to-end tests of `picket run`, the detection daemon: each test signs its own baseline
//! policy with a fresh key, starts the real agent with the real eBPF sensors, plays the device
//! (or the attacker) and checks the alerts printed as JSON lines on stdout.
//!
//! Runs as root. The agent sees every process on the machine, and anything that runs there
//! (other tests of this binary, cargo, shells) raises alerts against these small policies, so
//! alerts are always selected by the pids and paths the test itself caused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use picket_test_support::agent::Waited;
use picket_test_support::bin::picket;
use picket_test_support::process::{exec_memfd, spawn_fresh_executable};
use picket_test_support::{sha256_file, unique, TempDir};
use serde_json::Value;

/// How long a test waits for the alert its action should cause.
const ALERT_TIMEOUT: Duration = Duration::from_secs(15);
/// What `picket run` logs on stderr once its sensors are attached.
const READY: &str = "running with policy";

/// Alert kinds a test never causes on purpose (agent health, policy updates): tolerated in the
/// checks that no other alert came, since tests running in parallel in this process signal and
/// start other agents.
const HEALTH_KINDS: [&str; 3] = ["agent_tamper", "sensor_data_loss", "policy_rejected"];

// The tests: one scenario of attacks and a healthy workload; integrity and anti-rollback across
// restarts; the agent's own checks (periodic rescan, canary, its own files, the aggregation
// bound, truncate, chown and rename away). The agent runner, keys, policies and configuration
// are in `support`.
mod agent_checks;
mod behaviour;
mod canonical;
mod loader;
mod privilege;
mod restarts;
mod scenario;
mod support;

use support::*;
