//! What the device says about itself: the retained status (online; offline on a clean stop;
//! lost, the last will) and the periodic heartbeat with its counters.

use std::{fs, sync::atomic::Ordering::Relaxed, time::Duration};

use picket_common::Sensor;
use picket_proto::{AlertCounters, Format, Heartbeat, Presence, SensorCounters, Status};

use crate::{alert, counters::Counters};

pub(super) fn status_payload(
    device_id: &str,
    format: Format,
    state: Presence,
    (policy_name, policy_serial): (String, u64),
    boot_id: &str,
) -> Vec<u8> {
    let status = Status {
        state,
        time_ms: alert::now_ms(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        policy_serial,
        policy_name,
        boot_id: boot_id.into(),
    };
    // Encoding a status cannot fail: plain strings and numbers.
    picket_proto::encode(format, device_id, &status).unwrap_or_default()
}

/// The heartbeat: the agent's counters, uptime and memory, and the spool's waiting records and
/// bytes (`spool`).
pub(super) fn heartbeat(
    c: &Counters,
    uptime: Duration,
    policy_serial: u64,
    (pending, bytes): (u64, u64),
) -> Heartbeat {
    Heartbeat {
        time_ms: alert::now_ms(),
        uptime_s: uptime.as_secs(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        policy_serial,
        rss_bytes: rss_bytes(),
        sensors: [Sensor::Process, Sensor::Network, Sensor::File]
            .iter()
            .enumerate()
            .map(|(i, s)| SensorCounters {
                sensor: s.name().into(),
                seen: c.seen[i].load(Relaxed),
                lost: c.lost[i].load(Relaxed),
            })
            .collect(),
        alerts: AlertCounters {
            raised: c.raised.load(Relaxed),
            aggregated: c.aggregated.load(Relaxed),
            spooled: c.spooled.load(Relaxed),
            sent: c.sent.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
        },
        spool_pending: pending,
        spool_bytes: bytes,
        exec_unverified: Some(c.exec_unverified.load(Relaxed)),
    }
}

/// The agent's resident memory, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let pages = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}
