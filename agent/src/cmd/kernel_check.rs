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

/// The probes, with what they share: the kernel release and tracefs.
struct Probes {
    release: String,
    /// Where tracefs was mounted before the check, if it was.
    mounted: Option<PathBuf>,
    tracefs: Option<Result<PathBuf, String>>,
    /// A tracefs this command mounted, unmounted when done.
    own_mount: Option<PathBuf>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        if let Some(dir) = self.own_mount.take() {
            if let Err(err) = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH) {
                log::warn!("unmounting {}: {err}", dir.display());
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

impl Probes {
    fn new(release: String) -> Self {
        Self {
            release,
            mounted: mounted_tracefs(),
            tracefs: None,
            own_mount: None,
        }
    }

    fn version(&mut self) -> Evidence {
        match parse_version(&self.release) {
            Some(v) if v >= (5, 8) => Evidence::present(format!("running {}", self.release)),
            Some(_) => Evidence::missing(format!("running {}", self.release)),
            None => Evidence::unknown(format!(
                "running {}, a version not understood",
                self.release
            )),
        }
    }

    fn bpf_syscall(&mut self) -> Evidence {
        // BPF_MAP_CREATE with a zeroed attribute block is always invalid: EINVAL means the
        // syscall is there and we may call it.
        let attr = [0u8; 128];
        match bpf(BPF_MAP_CREATE, &attr) {
            Ok(_) | Err(Errno::EINVAL) => Evidence::present("bpf() answers"),
            Err(Errno::ENOSYS) => Evidence::missing("bpf(): ENOSYS"),
            Err(e) => Evidence::unknown(format!("bpf(): {e}")),
        }
    }

    fn ring_buffer(&mut self) -> Evidence {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u32;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_MAP_TYPE_RINGBUF);
        put_u32(&mut attr, 12, page);
        match bpf(BPF_MAP_CREATE, &attr) {
            Ok(_) => Evidence::present("a ring buffer map was created"),
            Err(e @ (Errno::EINVAL | Errno::ENOSYS)) => {
                Evidence::missing(format!("creating a ring buffer map: {e}"))
            }
            Err(e) => Evidence::unknown(format!("creating a ring buffer map: {e}")),
        }
    }

    fn tracepoint_programs(&mut self) -> Evidence {
        let load = match prog_load(BPF_PROG_TYPE_TRACEPOINT, 0, &[mov_imm(0, 0), exit()]) {
            Ok(_) => "a tracepoint program was loaded".to_string(),
            Err((e @ (Errno::EINVAL | Errno::ENOSYS), _)) => {
                return Evidence::missing(format!("loading a tracepoint program: {e}"))
            }
            Err((e, _)) => return Evidence::unknown(format!("loading a tracepoint program: {e}")),
        };
        // The agent attaches through a perf event of the tracepoint.
        let tracefs = match self.tracefs_root() {
            Ok(root) => root,
            Err(why) => return Evidence::unknown(format!("{load}; {why}")),
        };
        let id_path = tracefs.join("events/sched/sched_process_exec/id");
        let Some(id) = fs::read_to_string(&id_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            return Evidence::unknown(format!("{load}; no {}", id_path.display()));
        };
        match perf_event_open_tracepoint(id) {
            Ok(_) => Evidence::present(format!("{load}, a tracepoint perf event opened")),
            Err(e @ (Errno::ENOSYS | Errno::ENOENT | Errno::EINVAL)) => {
                Evidence::missing(format!("{load}; perf_event_open of a tracepoint: {e}"))
            }
            Err(e) => Evidence::unknown(format!("{load}; perf_event_open of a tracepoint: {e}")),
        }
    }

    fn sensor_helpers(&mut self) -> Evidence {
        helpers_probe(BPF_PROG_TYPE_TRACEPOINT, 0, SENSOR_HELPERS, "a tracepoint")
    }

    fn tracefs(&mut self) -> Evidence {
        // As found: another probe may have mounted it for the check since.
        if let Some(root) = &self.mounted {
            return Evidence::present(format!("mounted at {}", root.display()));
        }
        match fs::read_to_string("/proc/filesystems") {
            Ok(list) if filesystem_listed(&list, "tracefs") => Evidence::present(format!(
                "not mounted (the agent mounts it at {})",
                TRACEFS[0]
            )),
            Ok(_) => Evidence::missing("tracefs is not in /proc/filesystems"),
            Err(e) => Evidence::unknown(format!("reading /proc/filesystems: {e}")),
        }
    }

    fn event_tracepoints(&mut self) -> Evidence {
        self.tracepoints(&[
            ("sched", "sched_process_exec"),
            ("sched", "sched_process_fork"),
            ("sched", "sched_process_exit"),
            ("signal", "signal_deliver"),
            ("sock", "inet_sock_set_state"),
        ])
    }

    fn syscall_tracepoints(&mut self) -> Evidence {
        self.tracepoints(&[
            ("syscalls", "sys_enter_execve"),
            ("syscalls", "sys_exit_execve"),
            ("syscalls", "sys_enter_openat"),
            ("syscalls", "sys_enter_connect"),
        ])
    }

    fn tracepoints(&mut self, names: &[(&str, &str)]) -> Evidence {
        let root = match self.tracefs_root() {
            Ok(root) => root,
            Err(why) => return Evidence::unknown(why),
        };
        let events = root.join("events");
        if let Err(e) = fs::read_dir(&events) {
            return Evidence::unknown(format!("reading {}: {e}", events.display()));
        }
        let absent: Vec<String> = names
            .iter()
            .filter(|(category, name)| !events.join(category).join(name).is_dir())
            .map(|(category, name)| format!("{category}:{name}"))
            .collect();
        if absent.is_empty() {
            let all: Vec<String> = names.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            Evidence::present(format!("{} in tracefs", all.join(", ")))
        } else {
            Evidence::missing(format!("not in tracefs: {}", absent.join(", ")))
        }
    }

    fn jit(&mut self) -> Evidence {
        const SYSCTL: &str = "/proc/sys/net/core/bpf_jit_enable";
        match fs::read_to_string(SYSCTL) {
            Ok(v) if v.trim() == "0" => Evidence::missing(format!("{SYSCTL} is 0 (turned off)")),
            Ok(v) => Evidence::present(format!("{SYSCTL} is {}", v.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Evidence::missing(format!("no {SYSCTL}"))
            }
            Err(e) => Evidence::unknown(format!("reading {SYSCTL}: {e}")),
        }
    }

    fn fanotify_exec(&mut self) -> Evidence {
        fanotify_probe(
            InitFlags::FAN_CLASS_NOTIF,
            MaskFlags::FAN_OPEN_EXEC,
            "FAN_CLASS_NOTIF",
            "FAN_OPEN_EXEC",
        )
    }

    fn fanotify_permissions(&mut self) -> Evidence {
        fanotify_probe(
            InitFlags::FAN_CLASS_CONTENT,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            "FAN_CLASS_CONTENT",
            "FAN_OPEN_EXEC_PERM",
        )
    }

    fn cgroup_bpf(&mut self) -> Evidence {
        match prog_load(
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            BPF_CGROUP_INET4_CONNECT,
            &[mov_imm(0, 1), exit()],
        ) {
            Ok(_) => Evidence::present("a cgroup connect4 program was loaded"),
            Err((e @ (Errno::EINVAL | Errno::ENOSYS), _)) => {
                Evidence::missing(format!("loading a cgroup connect4 program: {e}"))
            }
            Err((e, _)) => Evidence::unknown(format!("loading a cgroup connect4 program: {e}")),
        }
    }

    fn cgroup2(&mut self) -> Evidence {
        if let Some(point) = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| m.lines().find_map(cgroup2_mount))
        {
            return Evidence::present(format!("mounted at {point}"));
        }
        match fs::read_to_string("/proc/filesystems") {
            Ok(list) if filesystem_listed(&list, "cgroup2") => Evidence::present(
                "not mounted (the agent mounts one at /run/picket/cgroup2 when a policy needs it)",
            ),
            Ok(_) => Evidence::missing("cgroup2 is not in /proc/filesystems"),
            Err(e) => Evidence::unknown(format!("reading /proc/filesystems: {e}")),
        }
    }

    fn sock_addr_helpers(&mut self) -> Evidence {
        helpers_probe(
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            BPF_CGROUP_INET4_CONNECT,
            GUARD_HELPERS,
            "a cgroup connect4",
        )
    }

    /// tracefs's mount point: the one mounted, else one this command mounts for the time of
    /// the check (and unmounts at the end).
    fn tracefs_root(&mut self) -> Result<PathBuf, String> {
        if let Some(root) = &self.tracefs {
            return root.clone();
        }
        let root = mounted_tracefs().map(Ok).unwrap_or_else(|| {
            let dir = std::env::temp_dir().join(format!(
                "picket-kernel-check-tracefs.{}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            // Not read-only: tracefs has one superblock, and older kernels (5.10, 6.1) apply a
            // new mount's flags to it, whatever else mounts it (debugfs's tracing directory).
            match nix::mount::mount(
                Some("nodev"),
                &dir,
                Some("tracefs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            ) {
                Ok(()) => {
                    self.own_mount = Some(dir.clone());
                    Ok(dir)
                }
                Err(e) => {
                    let _ = fs::remove_dir(&dir);
                    Err(format!(
                        "tracefs is not mounted and mounting it failed: {e}"
                    ))
                }
            }
        });
        self.tracefs = Some(root.clone());
        root
    }
}

/// Where tracefs is mounted (`/proc/self/mounts`), the usual places first.
fn mounted_tracefs() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let point = f.nth(1)?;
            (f.next()? == "tracefs").then_some(point)
        })
        .collect();
    TRACEFS
        .iter()
        .find(|c| points.contains(c))
        .or(points.first())
        .map(PathBuf::from)
}

/// Whether `/proc/filesystems` lists the file system type `name`.
fn filesystem_listed(list: &str, name: &str) -> bool {
    list.lines()
        .any(|l| l.split_whitespace().next_back() == Some(name))
}

/// The mount point of a `/proc/self/mountinfo` line that mounts the root of a cgroup v2
/// hierarchy (escapes left as they are: the point is only shown).
fn cgroup2_mount(line: &str) -> Option<String> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    (after.split(' ').next() == Some("cgroup2") && fields.get(3) == Some(&"/"))
        .then(|| fields.get(4).map(|p| p.to_string()))
        .flatten()
}

/// `major.minor` of a kernel release string.
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Opens a fanotify group of `class` and marks the root directory itself (an inode mark: no
/// file under it, so no exec, is held by the probe) for `mask`.
fn fanotify_probe(
    class: InitFlags,
    mask: MaskFlags,
    class_name: &str,
    mask_name: &str,
) -> Evidence {
    let group = match Fanotify::init(
        class | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
        EventFFlags::O_RDONLY,
    ) {
        Ok(group) => group,
        Err(e @ (Errno::ENOSYS | Errno::EINVAL)) => {
            return Evidence::missing(format!("fanotify_init({class_name}): {e}"))
        }
        Err(e) => return Evidence::unknown(format!("fanotify_init({class_name}): {e}")),
    };
    match group.mark(MarkFlags::FAN_MARK_ADD, mask, None, Some("/")) {
        Ok(()) => Evidence::present(format!(
            "fanotify_init({class_name}) and a {mask_name} mark"
        )),
        Err(e @ Errno::EINVAL) => Evidence::missing(format!(
            "fanotify_init({class_name}) works, a {mask_name} mark does not: {e}"
        )),
        Err(e) => Evidence::unknown(format!("a {mask_name} mark: {e}")),
    }
}

// --- bpf() -----------------------------------------------------------------------------------

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// A helper a program calls, and how the probe calls it.
#[derive(Clone, Copy)]
struct Helper {
    name: &'static str,
    id: i32,
    /// Takes a stack buffer and its size as its first two arguments.
    buffer: bool,
}

const fn helper(name: &'static str, id: i32, buffer: bool) -> Helper {
    Helper { name, id, buffer }
}

/// The helpers the sensors' tracepoint programs call (ebpf/src; ring buffer helpers come with
/// the ring buffer): a unit test keeps this list complete.
const SENSOR_HELPERS: &[Helper] = &[
    helper("bpf_get_current_pid_tgid", 14, false),
    helper("bpf_get_current_uid_gid", 15, false),
    helper("bpf_get_current_comm", 16, true),
    helper("bpf_get_current_cgroup_id", 80, false),
    helper("bpf_send_signal", 109, false),
    helper("bpf_probe_read_user", 112, true),
    helper("bpf_probe_read_kernel", 113, true),
    helper("bpf_probe_read_user_str", 114, true),
    helper("bpf_probe_read_kernel_str", 115, true),
    helper("bpf_ktime_get_boot_ns", 125, false),
];

/// The helpers the network guard's sock_addr programs call to know the calling process.
const GUARD_HELPERS: &[Helper] = &[
    helper("bpf_get_current_pid_tgid", 14, false),
    helper("bpf_get_current_uid_gid", 15, false),
    helper("bpf_get_current_comm", 16, true),
    helper("bpf_get_current_cgroup_id", 80, false),
    helper("bpf_ktime_get_boot_ns", 125, false),
];

/// One BPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    // The register nibbles follow the byte order's bitfield layout.
    let regs = if cfg!(target_endian = "little") {
        dst | (src << 4)
    } else {
        (dst << 4) | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}
const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm) // BPF_ALU64 | BPF_ADD | BPF_K
}
const fn call(id: i32) -> Insn {
    insn(0x85, 0, 0, 0, id) // BPF_JMP | BPF_CALL
}
const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0) // BPF_JMP | BPF_EXIT
}

/// A program that calls each helper once and returns `ret`.
fn calling(helpers: &[Helper], ret: i32) -> Vec<Insn> {
    let mut prog = Vec::new();
    for h in helpers {
        if h.buffer {
            // r1 = a 16-byte stack buffer, r2 = its size, r3 = an (unused) source address.
            prog.extend([
                mov_reg(1, 10),
                add_imm(1, -16),
                mov_imm(2, 16),
                mov_imm(3, 0),
            ]);
        } else {
            prog.push(mov_imm(1, 0));
        }
        prog.push(call(h.id));
    }
    prog.extend([mov_imm(0, ret), exit()]);
    prog
}

/// Loads a program calling `helpers`; on refusal, names the helpers the verifier did not know.
fn helpers_probe(prog_type: u32, attach: u32, helpers: &[Helper], what: &str) -> Evidence {
    let names = || {
        helpers
            .iter()
            .map(|h| h.name.trim_start_matches("bpf_"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ret = i32::from(prog_type == BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
    match prog_load(prog_type, attach, &calling(helpers, ret)) {
        Ok(_) => Evidence::present(format!("{what} program calling {} was loaded", names())),
        Err((e @ (Errno::EINVAL | Errno::EACCES), log)) => {
            let refused: Vec<&str> = helpers
                .iter()
                .filter(|h| log.contains(&format!("{}#{}", h.name, h.id)))
                .map(|h| h.name)
                .collect();
            let why = if refused.is_empty() {
                format!("{e}, verifier: {}", last_line(&log))
            } else {
                format!("{e}, not offered: {}", refused.join(", "))
            };
            Evidence::missing(format!(
                "{what} program calling the helpers was refused ({why})"
            ))
        }
        Err((e, _)) => Evidence::unknown(format!("loading {what} program: {e}")),
    }
}

fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no log)")
}

fn put_u32(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}
fn put_u64(attr: &mut [u8], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

/// `bpf(cmd, attr)`: the new descriptor, closed when dropped.
fn bpf(cmd: libc::c_int, attr: &[u8; 128]) -> Result<OwnedFd, Errno> {
    // SAFETY: the kernel reads at most `attr.len()` bytes of `attr`, and any addresses in it
    // point to buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

/// `BPF_PROG_LOAD`: the program's descriptor, or the error and the verifier's log.
fn prog_load(prog_type: u32, attach: u32, insns: &[Insn]) -> Result<OwnedFd, (Errno, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    put_u32(&mut attr, 68, attach); // expected_attach_type
    bpf(BPF_PROG_LOAD, &attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        (e, String::from_utf8_lossy(&log[..end]).into_owned())
    })
}

/// `perf_event_open` of tracepoint `id` on CPU 0 for every process, as the agent attaches.
fn perf_event_open_tracepoint(id: u64) -> Result<OwnedFd, Errno> {
    const PERF_TYPE_TRACEPOINT: u32 = 2;
    const PERF_ATTR_SIZE_VER0: u32 = 64;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, PERF_TYPE_TRACEPOINT);
    put_u32(&mut attr, 4, PERF_ATTR_SIZE_VER0);
    put_u64(&mut attr, 8, id);
    // SAFETY: the kernel reads `size` (64) bytes of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_BPF=y
CONFIG_BPF_SYSCALL=y
CONFIG_FANOTIFY=m
# CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set
CONFIG_LOCALVERSION=\"-acme\"
CONFIG_LOG_BUF_SHIFT=17
not a line of a configuration
";

    #[test]
    fn parses_assignments_and_not_set() {
        let c = KernelConfig::parse(CONFIG);
        assert!(c.enabled("CONFIG_BPF_SYSCALL"));
        assert!(c.enabled("CONFIG_FANOTIFY"), "a module counts");
        assert!(!c.enabled("CONFIG_FANOTIFY_ACCESS_PERMISSIONS"));
        assert!(
            !c.enabled("CONFIG_CGROUP_BPF"),
            "an option not listed is not set"
        );
        assert!(!c.enabled("CONFIG_LOG_BUF_SHIFT"), "a number is not y or m");
        assert_eq!(c.describe("CONFIG_FANOTIFY"), "CONFIG_FANOTIFY=m");
        assert_eq!(
            c.describe("CONFIG_LOCALVERSION"),
            "CONFIG_LOCALVERSION=-acme"
        );
        assert_eq!(
            c.describe("CONFIG_FANOTIFY_ACCESS_PERMISSIONS"),
            "CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set"
        );
        assert_eq!(
            c.describe("CONFIG_CGROUP_BPF"),
            "CONFIG_CGROUP_BPF is not set"
        );
    }

    #[test]
    fn reads_plain_and_gzip_files_and_refuses_others() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("picket-kconfig-test.{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("config");
        fs::write(&plain, CONFIG).unwrap();
        assert!(KernelConfig::read(&plain).unwrap().enabled("CONFIG_BPF"));
        let gz = dir.join("config.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(CONFIG.as_bytes()).unwrap();
        fs::write(&gz, enc.finish().unwrap()).unwrap();
        let c = KernelConfig::read(&gz).unwrap();
        assert!(c.enabled("CONFIG_FANOTIFY"));
        assert!(!c.enabled("CONFIG_FANOTIFY_ACCESS_PERMISSIONS"));
        let other = dir.join("other");
        fs::write(&other, "hello\n").unwrap();
        let err = KernelConfig::read(&other).unwrap_err().to_string();
        assert!(err.contains("not a kernel configuration"), "{err}");
        let truncated = dir.join("truncated.gz");
        fs::write(&truncated, &fs::read(&gz).unwrap()[..20]).unwrap();
        let err = format!("{:#}", KernelConfig::read(&truncated).unwrap_err());
        assert!(err.contains("decompressing"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_probe_wins_and_the_configuration_fills_in() {
        let c = KernelConfig::parse(CONFIG);
        let opts = ["CONFIG_FANOTIFY_ACCESS_PERMISSIONS"];
        // No probe answer: the configuration's.
        let v = judge(Some(&c), &opts, &Evidence::unknown("EPERM"));
        assert_eq!(v.status, Status::Missing);
        assert_eq!(
            v.text,
            "CONFIG_FANOTIFY_ACCESS_PERMISSIONS is not set; not probed: EPERM"
        );
        // A probe that saw it: present, whatever the file says.
        let v = judge(Some(&c), &opts, &Evidence::present("a mark"));
        assert_eq!(v.status, Status::Present);
        // Configured, but the running kernel refuses: missing.
        let v = judge(
            Some(&c),
            &["CONFIG_BPF_SYSCALL"],
            &Evidence::missing("ENOSYS"),
        );
        assert_eq!(v.status, Status::Missing);
        assert_eq!(v.text, "CONFIG_BPF_SYSCALL=y; ENOSYS");
        // Every option is needed.
        let v = judge(
            Some(&c),
            &["CONFIG_BPF", "CONFIG_CGROUP_BPF"],
            &Evidence::unknown("?"),
        );
        assert_eq!(v.status, Status::Missing);
        // Neither: unknown.
        let v = judge(None, &opts, &Evidence::unknown("EPERM"));
        assert_eq!(v.status, Status::Unknown);
        assert_eq!(v.text, "not probed: EPERM");
    }

    #[test]
    fn exit_status_follows_the_required_features() {
        let required = &FEATURES[0];
        let optional = FEATURES.iter().find(|f| !f.required).unwrap();
        assert!(required.required);
        let p = || Evidence::present("");
        assert_eq!(
            exit_status(&[(required, p()), (optional, Evidence::missing(""))]),
            0
        );
        assert_eq!(
            exit_status(&[(required, Evidence::missing("")), (optional, p())]),
            1
        );
        assert_eq!(
            exit_status(&[(required, Evidence::unknown("")), (optional, p())]),
            2
        );
        assert_eq!(
            exit_status(&[
                (required, Evidence::unknown("")),
                (required, Evidence::missing(""))
            ]),
            1
        );
    }

    #[test]
    fn versions_mounts_and_filesystems() {
        assert_eq!(parse_version("5.10.0-28-arm64"), Some((5, 10)));
        assert_eq!(parse_version("vendor"), None);
        let line = "35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount(line).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let sub = "35 24 0:30 /init.scope /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        assert_eq!(cgroup2_mount(sub), None, "not the hierarchy's root");
        let v1 = "36 24 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_mount(v1), None);
        let list = "nodev\tsysfs\nnodev\ttracefs\n\text4\n";
        assert!(filesystem_listed(list, "tracefs"));
        assert!(filesystem_listed(list, "ext4"));
        assert!(!filesystem_listed(list, "cgroup2"));
    }

    #[test]
    fn probe_programs_are_well_formed() {
        let prog = calling(&SENSOR_HELPERS[..3], 0);
        // Two no-argument calls (mov, call) and one with a buffer (4 movs, call), then mov, exit.
        assert_eq!(prog.len(), 2 + 2 + 5 + 2);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let last = prog.last().unwrap();
        assert_eq!((last.code, last.imm), (0x95, 0));
        let stack = &prog[4];
        assert_eq!(
            (stack.code, stack.regs),
            (
                0xbf,
                if cfg!(target_endian = "little") {
                    0xa1
                } else {
                    0x1a
                }
            )
        );
    }

    /// Every helper the sensors call (a `bpf_…` name in ebpf/src) is in the probe's list, so
    /// that `kernel-check` loads what the sensors need.
    #[test]
    fn the_probe_calls_every_helper_of_the_sensors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/src");
        let mut used = std::collections::BTreeSet::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let text = fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("bpf_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let boundary = at == 0
                    || !rest[..at]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                if boundary {
                    used.insert(name.clone());
                }
                rest = &rest[at + name.len()..];
            }
        }
        // aya's wrappers, by the helper they call; names that are not helpers.
        let wrapper = |n: &str| match n {
            "bpf_probe_read_kernel_str_bytes" => "bpf_probe_read_kernel_str".to_string(),
            "bpf_probe_read_user_str_bytes" => "bpf_probe_read_user_str".to_string(),
            other => other.to_string(),
        };
        let not_helpers = ["bpf_target_arch"];
        assert!(used.contains("bpf_probe_read_user"), "scan found {used:?}");
        for name in used.iter().filter(|n| !not_helpers.contains(&n.as_str())) {
            let helper = wrapper(name);
            assert!(
                SENSOR_HELPERS.iter().any(|h| h.name == helper),
                "ebpf/src calls {name}, which kernel-check's SENSOR_HELPERS does not probe"
            );
        }
    }
}
