//! Enforcement: what the signed policy does not allow is refused before it happens.
//!
//! Two guards, each in one of three modes taken from the policy's mode for its category
//! ([`GuardMode::of`]): `off` (not judged), dry run (the policy's `alert` mode: nothing is
//! refused, each decision enforcement would make is reported as `would_block`) and enforce:
//!
//! - executables ([`exec::ExecGuard`]): a fanotify permission group (`FAN_OPEN_EXEC_PERM` on
//!   every filesystem) holds each exec until the agent answers; the file is judged from the
//!   very descriptor the kernel opened ([`crate::detect::ExecBaseline::refusal`], the same
//!   judgement detection makes) and refused with `EPERM`;
//! - network (`crate::sensors::guard`): cgroup `sock_addr` programs on the root of the cgroup v2
//!   hierarchy refuse connects, sends and binds in the kernel, from rules kept in maps.
//!
//! Both fail open: when the agent dies, the kernel closes its fanotify group (every exec waiting
//! for an answer is allowed) and its program links (the programs are detached).
//! docs/ENFORCEMENT.md says what is covered, what is not, and why.

pub mod exec;

use picket_policy::model::Mode;

/// What a guard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// Nothing judged.
    Off,
    /// Judged and reported (`would_block`), never refused.
    DryRun,
    /// Refused (`blocked_*`).
    Enforce,
}

impl GuardMode {
    /// The guard's mode for a category in `mode`: `alert` is the dry run of `enforce`.
    pub fn of(mode: Mode) -> Self {
        match mode {
            Mode::Off => GuardMode::Off,
            Mode::Alert => GuardMode::DryRun,
            Mode::Enforce => GuardMode::Enforce,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GuardMode::Off => "off",
            GuardMode::DryRun => "dry run",
            GuardMode::Enforce => "enforce",
        }
    }
}
