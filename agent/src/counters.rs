//! What the agent counts along the path of an event, for its heartbeat: every step adds to
//! these; the reporter reads them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the agent counts for its heartbeat.
#[derive(Default)]
pub struct Counters {
    /// Events delivered per sensor (process, network, file).
    pub seen: [AtomicU64; 3],
    pub lost: [AtomicU64; 3],
    pub raised: AtomicU64,
    pub aggregated: AtomicU64,
    pub spooled: AtomicU64,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    /// Execs whose executed file could not be verified: no SHA-256 was established for it.
    pub exec_unverified: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
