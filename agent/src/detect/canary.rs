//! Sensor liveness: now and then the agent starts a short-lived copy of itself
//! (`picket __canary NONCE`) and expects to see its exec come back through the sensors. If it
//! does not within the timeout, the sensors have stopped delivering (programs detached, ring
//! buffer wedged, tracing disabled): that is raised as agent tampering.
//!
//! The canary's own exec is consumed here and never reaches detection.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    alert::{Draft, Kind, Severity},
    enrich::Event,
};

/// The hidden subcommand the canary runs: it exits at once.
pub const SUBCOMMAND: &str = "__canary";

/// How long the canary's exec may take to come back.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Canaries in a row whose start failed because the agent's binary is gone (moved, replaced,
/// no longer executable) before it is said as tamper: the check is then blind.
const START_FAILURES: u32 = 3;

/// The liveness check's state.
pub struct Canary {
    exe: Option<PathBuf>,
    interval: Duration,
    last: Instant,
    /// The nonce in flight and when it was sent.
    pending: Option<(String, Instant)>,
    sent: u64,
    /// Canaries in a row that could not be started.
    failures: u32,
}

impl Canary {
    pub fn new(interval: Duration) -> Self {
        Self {
            exe: std::env::current_exe().ok(),
            interval,
            last: Instant::now(),
            pending: None,
            sent: 0,
            failures: 0,
        }
    }

    /// If `event` is the canary's exec: marks it seen and returns true (the caller drops it).
    pub fn consume(&mut self, event: &Event) -> bool {
        let Some((nonce, _)) = &self.pending else {
            return false;
        };
        let f = &event.fields;
        let is_exec = f.get("event").and_then(Value::as_str) == Some("exec");
        let argv = f.get("argv").and_then(Value::as_array);
        let ours = is_exec
            && argv.is_some_and(|a| {
                a.get(1).and_then(Value::as_str) == Some(SUBCOMMAND)
                    && a.get(2).and_then(Value::as_str) == Some(nonce.as_str())
            });
        if ours {
            self.pending = None;
            self.last = Instant::now();
        }
        ours
    }

    /// Called every second: starts a canary when one is due, and returns an alert when the one
    /// in flight is overdue.
    pub fn tick(&mut self, now: Instant) -> Option<Draft> {
        if let Some((nonce, sent)) = &self.pending {
            if now.duration_since(*sent) < TIMEOUT {
                return None;
            }
            let draft = Draft {
                kind: Kind::AgentTamper,
                severity: Severity::Critical,
                rule: "agent.sensors".into(),
                path: None,
                details: json!({
                    "reason": "the sensors stopped delivering events: a test exec was not seen",
                    "nonce": nonce,
                    "waited_s": TIMEOUT.as_secs(),
                }),
                process: None,
            };
            self.pending = None;
            self.last = now;
            return Some(draft);
        }
        if now.duration_since(self.last) >= self.interval {
            return self.send(now);
        }
        None
    }

    /// Starts a canary; after [`START_FAILURES`] failures in a row, returns the alert that the
    /// check is blind (once, until one starts again).
    fn send(&mut self, now: Instant) -> Option<Draft> {
        self.sent += 1;
        let nonce = format!("{}-{}", std::process::id(), self.sent);
        // Err: why, and whether it is the binary that is gone (counted) rather than a
        // passing shortage (no process or memory to spare: not counted).
        let started = match &self.exe {
            None => Err(("the agent's own executable is unknown".to_string(), true)),
            Some(exe) => Command::new(exe)
                .args([SUBCOMMAND, &nonce])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    let gone = matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::EACCES | libc::ENOEXEC | libc::ENOTDIR)
                    );
                    (format!("{}: {e}", exe.display()), gone)
                }),
        };
        match started {
            Ok(mut child) => {
                // Reap it without blocking the event loop.
                std::thread::spawn(move || child.wait());
                self.pending = Some((nonce, now));
                self.failures = 0;
                None
            }
            Err((error, gone)) => {
                log::warn!("cannot start the sensor canary: {error}");
                self.last = now;
                if !gone {
                    return None;
                }
                self.failures += 1;
                (self.failures == START_FAILURES).then(|| Draft {
                    kind: Kind::AgentTamper,
                    severity: Severity::High,
                    rule: "agent.sensors".into(),
                    path: None,
                    details: json!({
                        "reason": "the sensor canary cannot start: whether the sensors deliver \
                                   events is no longer checked",
                        "error": error,
                        "attempts": START_FAILURES,
                    }),
                    process: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::Category;

    fn exec(argv: &[&str]) -> Event {
        let Value::Object(fields) = json!({"event": "exec", "argv": argv}) else {
            unreachable!()
        };
        Event {
            category: Category::Exec,
            fields: fields.into(),
        }
    }

    #[test]
    fn an_unseen_canary_is_tamper_and_a_seen_one_is_consumed() {
        let mut c = Canary::new(Duration::from_secs(1));
        c.exe = Some(PathBuf::from("/bin/true"));
        let t0 = Instant::now();
        assert!(c.tick(t0).is_none(), "not due yet");
        let t1 = t0 + Duration::from_secs(2);
        assert!(c.tick(t1).is_none(), "sent");
        let nonce = c.pending.clone().unwrap().0;
        assert!(!c.consume(&exec(&["/x", SUBCOMMAND, "other"])));
        assert!(c.consume(&exec(&["/x", SUBCOMMAND, &nonce])));
        assert!(c.pending.is_none());

        // Next one never comes back.
        let t2 = t1 + Duration::from_secs(2);
        assert!(c.tick(t2).is_none());
        assert!(c.pending.is_some());
        assert!(
            c.tick(t2 + Duration::from_secs(5)).is_none(),
            "still within the timeout"
        );
        let alert = c.tick(t2 + TIMEOUT).expect("overdue canary");
        assert_eq!(alert.kind, Kind::AgentTamper);
        assert!(
            !c.consume(&exec(&["/x", SUBCOMMAND, &nonce])),
            "no longer pending"
        );
    }

    #[test]
    fn a_canary_that_cannot_start_is_said_once_after_a_few_tries() {
        let mut c = Canary::new(Duration::from_secs(1));
        c.exe = Some(PathBuf::from("/nonexistent/picket"));
        let mut t = Instant::now();
        let mut alerts = Vec::new();
        for _ in 0..(START_FAILURES * 3) {
            t += Duration::from_secs(2);
            alerts.extend(c.tick(t));
        }
        assert_eq!(alerts.len(), 1, "said once: {alerts:?}");
        assert_eq!(alerts[0].kind, Kind::AgentTamper);
        assert_eq!(alerts[0].details["attempts"], START_FAILURES);
        assert!(alerts[0].details["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/picket")));
        assert!(c.pending.is_none());

        // Started again: counted afresh, said again only after as many failures.
        c.exe = Some(PathBuf::from("/bin/true"));
        t += Duration::from_secs(2);
        assert!(c.tick(t).is_none());
        assert_eq!(c.failures, 0);
    }
}
