//! `picket kernel-check`: which of the kernel features Picket uses the running kernel has, and
//! what degrades without each.
//!
//! Each feature is judged two ways: from the kernel's build configuration (`/proc/config.gz`,
//! else `/boot/config-RELEASE`, or the file given with `--kernel-config`), and by probing the
//! running kernel for real: calling `bpf()`, creating a ring buffer map, loading small programs
//! that are never attached, opening a tracepoint perf event, opening fanotify groups, looking at
//! tracefs and the mounted cgroup hierarchies. A probe's answer wins over the configuration: it
//! is what the agent will meet. A probe that cannot tell (not privileged, say) leaves the
//! configuration's answer, and without either the feature is `unknown`.
//!
//! The features and their consequences are those of docs/KERNEL.md; the Yocto layer's fragment
//! (`yocto-layer/meta-picket/recipes-kernel/linux/files/picket.cfg`) sets their options.

use std::{
    collections::HashMap,
    fs,
    io::Read,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::Args;
use nix::{
    errno::Errno,
    sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags},
};

/// Where the kernel's configuration usually is; `{release}` is `uname -r`.
const CONFIG_PROC: &str = "/proc/config.gz";
const CONFIG_BOOT: &str = "/boot/config-{release}";
/// Where tracefs is usually mounted (the first one is where the agent mounts it).
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Arguments of `picket kernel-check`.
#[derive(Args, Debug)]
pub struct KernelCheckArgs {
    /// Read the kernel's build configuration from this file (a `.config`, plain or gzip)
    /// instead of /proc/config.gz or /boot/config-$(uname -r). The probes still examine the
    /// running kernel.
    #[arg(long, value_name = "PATH")]
    pub kernel_config: Option<PathBuf>,
}

/// What is known of one feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Present,
    Missing,
    Unknown,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Present => "present",
            Status::Missing => "missing",
            Status::Unknown => "unknown",
        }
    }
}

/// A probe's answer, with what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub status: Status,
    pub text: String,
}

impl Evidence {
    fn present(text: impl Into<String>) -> Self {
        Self {
            status: Status::Present,
            text: text.into(),
        }
    }
    fn missing(text: impl Into<String>) -> Self {
        Self {
            status: Status::Missing,
            text: text.into(),
        }
    }
    fn unknown(text: impl Into<String>) -> Self {
        Self {
            status: Status::Unknown,
            text: text.into(),
        }
    }
}

/// One feature of the kernel that Picket uses.
pub struct Feature {
    pub name: &'static str,
    /// Whether the agent refuses to start without it.
    pub required: bool,
    /// Build options it needs (`CONFIG_…`), all of them.
    pub options: &'static [&'static str],
    /// What the agent does, or cannot do, without it.
    pub without: &'static str,
    probe: fn(&mut Probes) -> Evidence,
}

/// Every feature, required ones first.
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "Linux 5.8 or later",
        required: true,
        options: &[],
        without: "the agent refuses to start: its sensors send their records through a BPF \
                  ring buffer (Linux 5.8)",
        probe: Probes::version,
    },
    Feature {
        name: "bpf() syscall",
        required: true,
        options: &["CONFIG_BPF_SYSCALL"],
        without: "the agent refuses to start: no eBPF at all",
        probe: Probes::bpf_syscall,
    },
    Feature {
        name: "BPF ring buffer",
        required: true,
        options: &["CONFIG_BPF_SYSCALL"],
        without: "the agent refuses to start: the sensors' ring buffer cannot be created",
        probe: Probes::ring_buffer,
    },
    Feature {
        name: "BPF programs on tracepoints",
        required: true,
        options: &["CONFIG_BPF_EVENTS", "CONFIG_PERF_EVENTS"],
        without: "the agent refuses to start: the sensors cannot be loaded or attached",
        probe: Probes::tracepoint_programs,
    },
    Feature {
        name: "BPF helpers the sensors call",
        required: true,
        options: &["CONFIG_CGROUPS"],
        without: "the agent refuses to start: the verifier refuses the sensors (a helper is \
                  not offered: too old a kernel, no CONFIG_CGROUPS for the cgroup id, or kernel \
                  lockdown `confidentiality`, which forbids reading kernel memory)",
        probe: Probes::sensor_helpers,
    },
    Feature {
        name: "tracefs",
        required: true,
        options: &["CONFIG_TRACING"],
        without: "the agent refuses to start: it reads the tracepoints' record layouts from \
                  tracefs",
        probe: Probes::tracefs,
    },
    Feature {
        name: "scheduler, signal and socket tracepoints",
        required: true,
        options: &["CONFIG_TRACEPOINTS", "CONFIG_NET", "CONFIG_INET"],
        without: "the agent refuses to start: process and network sensors have nothing to \
                  attach to",
        probe: Probes::event_tracepoints,
    },
    Feature {
        name: "syscall tracepoints",
        required: true,
        options: &["CONFIG_FTRACE_SYSCALLS"],
        without: "the agent refuses to start: exec, file and network sensors attach to \
                  syscalls:sys_enter_*/sys_exit_*",
        probe: Probes::syscall_tracepoints,
    },
    Feature {
        name: "BPF JIT",
        required: false,
        options: &["CONFIG_BPF_JIT"],
        without: "the kernel interprets the sensors' programs: several times the CPU per event",
        probe: Probes::jit,
    },
    Feature {
        name: "fanotify exec events (FAN_OPEN_EXEC, Linux 5.0)",
        required: false,
        options: &["CONFIG_FANOTIFY"],
        without: "execs are identified through /proc/PID/exe: the exec of a process that exits \
                  at once is reported as not verified",
        probe: Probes::fanotify_exec,
    },
    Feature {
        name: "fanotify permission events (FAN_OPEN_EXEC_PERM)",
        required: false,
        options: &["CONFIG_FANOTIFY_ACCESS_PERMISSIONS"],
        without: "a policy's executables cannot be enforced: the exec guard does not start \
                  (enforcement_weakened when the policy enforces); detection goes on",
        probe: Probes::fanotify_permissions,
    },
    Feature {
        name: "cgroup BPF (sock_addr programs)",
        required: false,
        options: &["CONFIG_CGROUP_BPF"],
        without: "a policy's network rules cannot be enforced: the network guard does not start \
                  (enforcement_weakened when the policy enforces); detection goes on",
        probe: Probes::cgroup_bpf,
    },
    Feature {
        name: "cgroup v2",
        required: false,
        options: &["CONFIG_CGROUPS"],
        without: "a policy's network rules cannot be enforced: the network guard attaches to \
                  the root of the cgroup v2 hierarchy",
        probe: Probes::cgroup2,
    },
    Feature {
        name: "process context in sock_addr programs",
        required: false,
        options: &["CONFIG_CGROUP_BPF"],
        without: "a policy's network rules cannot be enforced: the kernel refuses the network \
                  guard's programs (enforcement_weakened when the policy enforces); detection \
                  goes on",
        probe: Probes::sock_addr_helpers,
    },
];

/// A kernel build configuration: `CONFIG_X=value` lines and `# CONFIG_X is not set`.
#[derive(Debug, Default, Clone)]
pub struct KernelConfig {
    values: HashMap<String, String>,
}

impl KernelConfig {
    /// Parses a `.config`. Lines that are neither an assignment nor a "not set" comment are
    /// ignored, as the kernel's own tools do.
    pub fn parse(text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("# ") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    if name.starts_with("CONFIG_") && !name.contains(' ') {
                        values.insert(name.to_string(), "n".to_string());
                    }
                }
            } else if let Some((name, value)) = line.split_once('=') {
                if name.starts_with("CONFIG_") && !name.contains(' ') {
                    values.insert(name.to_string(), value.trim_matches('"').to_string());
                }
            }
        }
        Self { values }
    }

    /// Reads a configuration file, decompressing it when it is gzip (`/proc/config.gz`).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let text = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut text)
                .with_context(|| format!("decompressing {}", path.display()))?;
            text
        } else {
            String::from_utf8(bytes)
                .with_context(|| format!("{} is not a text file", path.display()))?
        };
        let config = Self::parse(&text);
        if config.values.is_empty() {
            anyhow::bail!(
                "{} has no CONFIG_ line: it is not a kernel configuration",
                path.display()
            );
        }
        Ok(config)
    }

    /// Whether `option` is built in or a module.
    pub fn enabled(&self, option: &str) -> bool {
        matches!(self.values.get(option).map(String::as_str), Some("y" | "m"))
    }

    /// `CONFIG_X=y`, or `CONFIG_X is not set` (also for an option the file does not list: its
    /// dependencies are not met).
    pub fn describe(&self, option: &str) -> String {
        match self.values.get(option).map(String::as_str) {
            Some("n") | None => format!("{option} is not set"),
            Some(value) => format!("{option}={value}"),
        }
    }
}

/// The verdict on one feature from the configuration and the probe: the probe wins when it
/// can tell; the text gives both.
pub fn judge(config: Option<&KernelConfig>, options: &[&str], probe: &Evidence) -> Evidence {
    let from_config = match config {
        Some(config) if !options.is_empty() => {
            let status = if options.iter().all(|o| config.enabled(o)) {
                Status::Present
            } else {
                Status::Missing
            };
            let text = options
                .iter()
                .map(|o| config.describe(o))
                .collect::<Vec<_>>()
                .join(", ");
            Some((status, text))
        }
        _ => None,
    };
    let status = match (probe.status, &from_config) {
        (Status::Unknown, Some((status, _))) => *status,
        (status, _) => status,
    };
    let probed = if probe.status == Status::Unknown {
        format!("not probed: {}", probe.text)
    } else {
        probe.text.clone()
    };
    let text = match from_config {
        Some((_, text)) => format!("{text}; {probed}"),
        None => probed,
    };
    Evidence { status, text }
}

/// The verdicts and the exit status: 0 when every required feature is present, 1 when one is
/// missing, 2 when none is missing but one could not be told.
pub fn exit_status(verdicts: &[(&Feature, Evidence)]) -> u8 {
    let required = || verdicts.iter().filter(|(f, _)| f.required);
    if required().any(|(_, e)| e.status == Status::Missing) {
        1
    } else if required().any(|(_, e)| e.status == Status::Unknown) {
        2
    } else {
        0
    }
}

/// Runs the check, prints one line per feature, and returns the exit status.
pub fn run(args: KernelCheckArgs) -> anyhow::Result<u8> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .context("uname")?;
    let (config, source) = match &args.kernel_config {
        Some(path) => (Some(KernelConfig::read(path)?), path.display().to_string()),
        None => {
            let boot = PathBuf::from(CONFIG_BOOT.replace("{release}", &release));
            let mut found = (
                None,
                format!("none found ({CONFIG_PROC}, {})", boot.display()),
            );
            for path in [PathBuf::from(CONFIG_PROC), boot] {
                if !path.exists() {
                    continue;
                }
                match KernelConfig::read(&path) {
                    Ok(config) => {
                        found = (Some(config), path.display().to_string());
                        break;
                    }
                    Err(err) => log::warn!("{err:#}"),
                }
            }
            found
        }
    };
    println!("kernel {release}; build configuration: {source}");
    if !nix::unistd::geteuid().is_root() {
        println!(
            "not running as root: probes that need privileges cannot tell, the configuration \
             alone answers for them"
        );
    }
    let mut probes = Probes::new(release);
    let verdicts: Vec<(&Feature, Evidence)> = FEATURES
        .iter()
        .map(|feature| {
            let probe = (feature.probe)(&mut probes);
            (feature, judge(config.as_ref(), feature.options, &probe))
        })
        .collect();
    drop(probes);
    for (feature, verdict) in &verdicts {
        let kind = if feature.required {
            "required"
        } else {
            "optional"
        };
        let mut line = format!(
            "{:<8} {kind}  {}: {}",
            verdict.status.word(),
            feature.name,
            verdict.text
        );
        if verdict.status != Status::Present {
            line.push_str(&format!(" -- without it, {}", feature.without));
        }
        println!("{line}");
    }
    let status = exit_status(&verdicts);
    println!(
        "{}",
        match status {
            0 => "every required feature is present",
            1 => "a required feature is missing: picket cannot run on this kernel",
            _ if nix::unistd::geteuid().is_root() => {
                "a required feature could not be checked: its probe failed (see its line)"
            }
            _ => "a required feature could not be checked (run as root)",
        }
    );
    Ok(status)
}

mod bpf;
mod probes;

use bpf::*;
use probes::*;

#[cfg(test)]
mod tests;
