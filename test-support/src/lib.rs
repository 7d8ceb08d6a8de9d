//! Picket's end-to-end tests (`tests/`, this crate's test targets) and what they share: the
//! binaries under test ([`bin`], built by `cargo xtask e2e`), a throw-away PKI ([`pki`]), a
//! Mosquitto with mutual TLS and the backend's own configuration and ACL ([`mosquitto`]), an MQTT v5 test client ([`subscriber`]), a runner for
//! the `picket` binary that collects its JSON lines and log ([`agent`]), and small helpers for
//! processes, files and digests.
//!
//! The agent's tests run as root, with real sensors: the agent sees every process on the
//! machine, so tests select events by pid, path or port, never by position in the stream.

// Test support: a failure anywhere here is the test's failure, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod bin;
pub mod mosquitto;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod subscriber;
pub mod temp;

pub use agent::{Agent, Event, Monitor, Output};
pub use mosquitto::Mosquitto;
pub use pki::{Identity, Pki};
pub use subscriber::{Message, Subscriber};
pub use temp::{unique, TempDir};

use std::fmt::Write as _;
use std::path::Path;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// SHA-256 of the file at `path`, in lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}
