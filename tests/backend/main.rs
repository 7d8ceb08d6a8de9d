//! End-to-end tests of `picket-backend` against a real Mosquitto with mutual TLS: test
//! devices (each with its own certificate) publish messages built with `picket_proto::encode`,
//! the backend runs as a child process, and the tests read what it stored through its CLI and
//! HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The tests, by what they exercise: ingest and storage, per-device limits and quotas, policy
// distribution and the configuration, the managed broker, a real agent (policy push,
// retention, gaps of a restart and of a full spool), what the backend makes of a device's
// silence (a killed agent, a clean stop, a connection that carries nothing), the HTTP API's
// authentication, HTTPS and live events, the fleet console in a real browser (fed by test
// devices and a real agent), the integrations (webhooks); faults over the whole pipe (kills,
// restarts and a flapping broker while alerts flow, counted against the store).
mod auth;
mod browser;
mod browser_agent;
mod faults;
mod ingest;
mod integrations;
mod limits;
mod managed_broker;
mod policy;
mod presence;
mod real_agent;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use picket_proto::topic::Channel;
use picket_proto::{
    Alert, AlertCounters, AlertKind, Ancestor, Details, Format, Heartbeat, PolicyOutcome,
    PolicyResult, Presence, ProcessContext, SensorCounters, Severity, Status,
};
use picket_test_support::Identity;
use serde_json::Value;
use support::*;

fn alert(seq: u64) -> Alert {
    Alert {
        seq,
        boot_id: "boot-1".into(),
        time_ms: 1_700_000_000_000 + seq,
        kind: AlertKind::UnknownExecutable,
        severity: Severity::High,
        rule: "executables".into(),
        path: Some(format!("/tmp/dropped-{seq}")),
        details: Details(serde_json::json!({"sha256": "ab".repeat(32)})),
        count: 1,
        first_ms: 1_700_000_000_000,
        last_ms: 1_700_000_000_000 + seq,
        process: Some(ProcessContext {
            pid: Some(4242),
            ppid: Some(1),
            uid: Some(0),
            exe: Some(format!("/tmp/dropped-{seq}")),
            sha256: Some("ab".repeat(32)),
            argv: vec![format!("dropped-{seq}"), "--now".into()],
            argv_dropped: 0,
            ancestry: vec![Ancestor {
                pid: 1,
                exe: Some("/sbin/init".into()),
            }],
            cgroup_id: Some(77),
        }),
    }
}

fn status(state: Presence) -> Status {
    Status {
        state,
        time_ms: 1,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        policy_name: "base".into(),
        boot_id: "boot-1".into(),
    }
}

fn seqs(alerts: &Value) -> Vec<u64> {
    let mut s: Vec<u64> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    s.sort();
    s
}
