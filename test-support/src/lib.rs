//! Picket's end-to-end tests (`tests/`, this crate's test targets) and what they share: the
//! binaries under test ([`bin`], built by `cargo xtask e2e`), a throw-away PKI ([`pki`]), a
//! Mosquitto with mutual TLS and the backend's own configuration and ACL ([`mosquitto`]), an MQTT v5 test client ([`subscriber`]), a runner for
//! the `picket` binary that collects its JSON lines and log ([`agent`]), a headless Chromium for
//! the console's tests ([`browser`]), and small helpers for processes, files and digests.
//!
//! The agent's tests run as root, with real sensors: the agent sees every process on the
//! machine, so tests select events by pid, path or port, never by position in the stream.

// Test support: a failure anywhere here is the test's failure, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod bin;
pub mod browser;
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

/// The `[[executable]]` entry (TOML) of this machine's dynamic loader, by its canonical path:
/// the kernel opens it for every dynamically linked exec, and enforcement (and its dry run in
/// alert mode) judges it like the program, so a test baseline lists it as a device's does
/// (`picket baseline scan` and `learn` add it).
pub fn loader_entry() -> String {
    let interp = picket_agent::enrich::hash::elf_interp_of(Path::new("/usr/bin/true"))
        .expect("/usr/bin/true is dynamically linked");
    let loader = std::fs::canonicalize(&interp)
        .unwrap_or_else(|e| panic!("the loader {}: {e}", interp.display()));
    format!(
        "[[executable]]\npath = {}\nsha256 = \"{}\"\n\n",
        serde_json::to_string(loader.to_str().expect("a UTF-8 loader path")).unwrap(),
        sha256_file(&loader)
    )
}
