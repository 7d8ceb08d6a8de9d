//! An attack suite against a device-like world: the baseline made as a manufacturer makes one
//! (scan, learn, the entries written by hand by design, signed), then attacker techniques of
//! MITRE ATT&CK for Linux played through the web server's command injection, each checked for
//! exactly the alerts its own processes raise; and a benign soak of the device's workload that
//! must raise none. docs/DETECTION.md is the coverage table of these scenarios.
//!
//! Runs as root, with the real sensors. Other things on the machine raise alerts too: alerts are
//! selected by the scenario's shell, its descendants (the alert's ancestry) and the world's
//! paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use picket_test_support::agent::Waited;
use picket_test_support::bin::picket;
use picket_test_support::process::spawn_fresh_executable;
use picket_test_support::unique;
use serde_json::Value;

/// How long a test waits for the alert its action should cause.
const ALERT_TIMEOUT: Duration = Duration::from_secs(15);
/// What `picket run` logs on stderr once its sensors are attached.
const READY: &str = "running with policy";
/// Alert kinds no scenario causes (agent health, policy updates).
const HEALTH_KINDS: [&str; 3] = ["agent_tamper", "sensor_data_loss", "policy_rejected"];

mod scenarios;
mod soak;
#[path = "../detection/support.rs"]
#[allow(dead_code)]
mod support;
mod world;

use support::*;
use world::World;

/// The agent's configuration for `bundle`, with an aggregation window longer than the run: an
/// alert identical to an earlier one (same kind, subject, details and executable) is counted
/// into it and never printed again while the test runs, whatever the timing.
fn config(lab: &Lab, bundle: &Path) -> PathBuf {
    let path = lab.config(bundle, None);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("window = \"60s\""), "{text}");
    fs::write(&path, text.replace("window = \"60s\"", "window = \"1h\"")).unwrap();
    path
}

/// Whether alert `a` was raised by process `root` or one of its descendants.
fn of_tree(a: &Value, root: u32) -> bool {
    pid(a) == Some(root)
        || a["process"]["ppid"].as_u64() == Some(u64::from(root))
        || a["process"]["ancestry"].as_array().is_some_and(|anc| {
            anc.iter()
                .any(|p| p["pid"].as_u64() == Some(u64::from(root)))
        })
}
