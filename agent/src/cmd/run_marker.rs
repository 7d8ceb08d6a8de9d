//! Whether the agent's previous run ended without going through its own exit path: a marker in
//! the state directory, written once `picket run` has its sensors attached and its stop signals
//! handled, and removed as soon as the session ends, whatever ended it (`SIGTERM`, `SIGINT`, an
//! error, which the run logs itself).
//!
//! A marker found at the next session's start that names the same boot is a run killed
//! (`SIGKILL`, the OOM killer) or crashed in this boot: `agent_interrupted`. One of another boot
//! is the device losing power or resetting with the agent running, which is not a signal: a line
//! in the log. So is a marker whose process still runs `picket` (another run on the same state
//! directory), and any marker when the boot id cannot be read.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::alert::{Kind, Severity};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alert::Draft;

/// The marker's name in the state directory.
pub const FILE: &str = "running";

/// What the marker says of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    boot_id: String,
    pid: u32,
    started_ms: u64,
}

/// How the previous run ended, as far as its marker tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// No marker: it stopped cleanly, or there was none.
    Clean,
    /// Its marker names another boot: it ran when the device went down.
    OtherBoot,
    /// Its marker names this boot: it ended without a clean stop.
    Interrupted { pid: u32, started_ms: u64 },
    /// Its marker names a process that still runs `picket`: another run on this state directory.
    Running { pid: u32 },
    /// The boot id could not be read: no boot can be told from another.
    NoBootId,
    /// A marker that does not parse (torn by a power cut, or written by someone else).
    Unreadable(String),
}

/// This run's marker: [`RunMarker::release`] on a clean stop.
#[derive(Debug)]
pub struct RunMarker {
    path: PathBuf,
}

impl RunMarker {
    /// Reads what the previous run left in `state_dir`, then writes this run's marker (a
    /// temporary file renamed over the old one: never torn).
    pub fn claim(
        state_dir: &Path,
        boot_id: &str,
        started_ms: u64,
    ) -> anyhow::Result<(RunMarker, Previous)> {
        let path = state_dir.join(FILE);
        let previous = match fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Previous::Clean,
            Err(e) => Previous::Unreadable(format!("reading {}: {e}", path.display())),
            Ok(_) if boot_id.is_empty() => Previous::NoBootId,
            Ok(bytes) => match serde_json::from_slice::<Marker>(&bytes) {
                Ok(m) if m.boot_id == boot_id && runs_picket(m.pid) => {
                    Previous::Running { pid: m.pid }
                }
                Ok(m) if m.boot_id == boot_id => Previous::Interrupted {
                    pid: m.pid,
                    started_ms: m.started_ms,
                },
                Ok(_) => Previous::OtherBoot,
                Err(e) => Previous::Unreadable(format!("{}: {e}", path.display())),
            },
        };
        let marker = Marker {
            boot_id: boot_id.to_string(),
            pid: std::process::id(),
            started_ms,
        };
        let tmp = state_dir.join(format!(".{FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec(&marker)?)
            .and_then(|()| fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok((RunMarker { path }, previous))
    }

    /// The session ended through its exit path: the next start finds no marker (unless another
    /// run on the same state directory wrote its own since).
    pub fn release(self) -> anyhow::Result<()> {
        let ours = fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
            .is_some_and(|m| m.pid == std::process::id());
        if !ours {
            return Ok(());
        }
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// Whether process `pid` runs `picket` now.
fn runs_picket(pid: u32) -> bool {
    pid != std::process::id()
        && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "picket")
}

impl Previous {
    /// The alert for a previous run interrupted in this boot, after saying in the log how the
    /// previous run ended.
    pub fn alert(&self) -> Option<Draft> {
        match self {
            Previous::Clean => None,
            Previous::OtherBoot => {
                log::info!(
                    "the previous run was going when the device went down (another boot): no \
                     clean stop, not a signal"
                );
                None
            }
            Previous::Unreadable(e) => {
                log::warn!("the previous run's marker is unreadable ({e}): taken as a clean stop");
                None
            }
            Previous::Running { pid } => {
                log::warn!(
                    "another picket run (pid {pid}) uses this state directory: two runs share its \
                     policy, sequence numbers and spool; give each its own `state_dir`"
                );
                None
            }
            Previous::NoBootId => {
                log::warn!(
                    "the boot id cannot be read (/proc/sys/kernel/random/boot_id): how the previous \
                     run ended is not judged"
                );
                None
            }
            Previous::Interrupted { pid, started_ms } => {
                log::warn!(
                    "the previous run in this boot (pid {pid}) ended without going through its \
                     exit path: killed or crashed"
                );
                Some(Draft {
                    kind: Kind::AgentInterrupted,
                    severity: Severity::High,
                    rule: "agent".into(),
                    path: None,
                    details: json!({
                        "previous_pid": pid,
                        "previous_started_ms": started_ms,
                        "reason": "the agent's previous run in this boot ended without going \
                                   through its exit path: killed (SIGKILL, the OOM killer) or \
                                   crashed",
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

    #[test]
    fn a_run_is_interrupted_only_when_its_marker_stays_in_the_same_boot() {
        let dir = std::env::temp_dir().join(format!("picket-run-marker-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (first, previous) = RunMarker::claim(&dir, "boot-a", 1_000).unwrap();
        assert_eq!(previous, Previous::Clean, "a first run");
        assert!(previous.alert().is_none());

        // Killed: its marker stays; the next run of the same boot says so.
        drop(first);
        let (second, previous) = RunMarker::claim(&dir, "boot-a", 2_000).unwrap();
        assert_eq!(
            previous,
            Previous::Interrupted {
                pid: std::process::id(),
                started_ms: 1_000
            }
        );
        let alert = previous.alert().unwrap();
        assert_eq!(alert.kind, Kind::AgentInterrupted);
        assert_eq!(alert.details["previous_started_ms"], 2_000 - 1_000);

        // A clean stop leaves nothing.
        second.release().unwrap();
        assert!(!dir.join(FILE).exists());
        let (third, previous) = RunMarker::claim(&dir, "boot-a", 3_000).unwrap();
        assert_eq!(previous, Previous::Clean);

        // The device went down with the agent running: another boot, no alert.
        drop(third);
        let (_, previous) = RunMarker::claim(&dir, "boot-b", 4_000).unwrap();
        assert_eq!(previous, Previous::OtherBoot);
        assert!(previous.alert().is_none());

        // No boot id: nothing is judged.
        let (_, previous) = RunMarker::claim(&dir, "", 4_500).unwrap();
        assert_eq!(previous, Previous::NoBootId);
        assert!(previous.alert().is_none());

        // A marker of a process that runs picket now: another run, not an interruption. (This
        // test's own pid is never taken for one: it is the claiming run.)
        fs::write(
            dir.join(FILE),
            format!(
                "{{\"boot_id\":\"boot-b\",\"pid\":{},\"started_ms\":1}}",
                std::process::id()
            ),
        )
        .unwrap();
        let (mine, previous) = RunMarker::claim(&dir, "boot-b", 4_600).unwrap();
        assert!(
            matches!(previous, Previous::Interrupted { .. }),
            "{previous:?}"
        );
        // A marker another run wrote since is not removed by this one's release.
        fs::write(
            dir.join(FILE),
            b"{\"boot_id\":\"boot-b\",\"pid\":4000000001,\"started_ms\":1}",
        )
        .unwrap();
        mine.release().unwrap();
        assert!(dir.join(FILE).exists());

        // Torn or foreign: said in the log, no alert, and replaced by this run's marker.
        fs::write(dir.join(FILE), b"{\"boot_id\":").unwrap();
        let (_, previous) = RunMarker::claim(&dir, "boot-b", 5_000).unwrap();
        assert!(matches!(previous, Previous::Unreadable(_)), "{previous:?}");
        assert!(previous.alert().is_none());
        let (_, previous) = RunMarker::claim(&dir, "boot-b", 6_000).unwrap();
        assert!(matches!(
            previous,
            Previous::Interrupted {
                started_ms: 5_000,
                ..
            }
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
