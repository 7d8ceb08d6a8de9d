//! The probes of the running kernel: tracefs, fanotify, cgroup2, and what they share.

use super::*;

/// The probes, with what they share: the kernel release and tracefs.
pub(super) struct Probes {
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
    pub(super) fn new(release: String) -> Self {
        Self {
            release,
            mounted: mounted_tracefs(),
            tracefs: None,
            own_mount: None,
        }
    }

    pub(super) fn version(&mut self) -> Evidence {
        match parse_version(&self.release) {
            Some(v) if v >= (5, 8) => Evidence::present(format!("running {}", self.release)),
            Some(_) => Evidence::missing(format!("running {}", self.release)),
            None => Evidence::unknown(format!(
                "running {}, a version not understood",
                self.release
            )),
        }
    }

    pub(super) fn bpf_syscall(&mut self) -> Evidence {
        // BPF_MAP_CREATE with a zeroed attribute block is always invalid: EINVAL means the
        // syscall is there and we may call it.
        let attr = [0u8; 128];
        match bpf(BPF_MAP_CREATE, &attr) {
            Ok(_) | Err(Errno::EINVAL) => Evidence::present("bpf() answers"),
            Err(Errno::ENOSYS) => Evidence::missing("bpf(): ENOSYS"),
            Err(e) => Evidence::unknown(format!("bpf(): {e}")),
        }
    }

    pub(super) fn ring_buffer(&mut self) -> Evidence {
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

    pub(super) fn tracepoint_programs(&mut self) -> Evidence {
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

    pub(super) fn sensor_helpers(&mut self) -> Evidence {
        helpers_probe(BPF_PROG_TYPE_TRACEPOINT, 0, SENSOR_HELPERS, "a tracepoint")
    }

    pub(super) fn tracefs(&mut self) -> Evidence {
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

    pub(super) fn event_tracepoints(&mut self) -> Evidence {
        self.tracepoints(&[
            ("sched", "sched_process_exec"),
            ("sched", "sched_process_fork"),
            ("sched", "sched_process_exit"),
            ("signal", "signal_deliver"),
            ("sock", "inet_sock_set_state"),
        ])
    }

    pub(super) fn syscall_tracepoints(&mut self) -> Evidence {
        self.tracepoints(&[
            ("syscalls", "sys_enter_execve"),
            ("syscalls", "sys_exit_execve"),
            ("syscalls", "sys_enter_openat"),
            ("syscalls", "sys_enter_connect"),
        ])
    }

    pub(super) fn tracepoints(&mut self, names: &[(&str, &str)]) -> Evidence {
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

    pub(super) fn jit(&mut self) -> Evidence {
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

    pub(super) fn fanotify_exec(&mut self) -> Evidence {
        fanotify_probe(
            InitFlags::FAN_CLASS_NOTIF,
            MaskFlags::FAN_OPEN_EXEC,
            "FAN_CLASS_NOTIF",
            "FAN_OPEN_EXEC",
        )
    }

    pub(super) fn fanotify_permissions(&mut self) -> Evidence {
        fanotify_probe(
            InitFlags::FAN_CLASS_CONTENT,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            "FAN_CLASS_CONTENT",
            "FAN_OPEN_EXEC_PERM",
        )
    }

    pub(super) fn cgroup_bpf(&mut self) -> Evidence {
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

    pub(super) fn cgroup2(&mut self) -> Evidence {
        if let Some(point) = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| m.lines().find_map(crate::sensors::guard::cgroup2_mount))
        {
            return Evidence::present(format!("mounted at {}", point.display()));
        }
        match fs::read_to_string("/proc/filesystems") {
            Ok(list) if filesystem_listed(&list, "cgroup2") => Evidence::present(
                "not mounted (the agent mounts one at /run/picket/cgroup2 when a policy needs it)",
            ),
            Ok(_) => Evidence::missing("cgroup2 is not in /proc/filesystems"),
            Err(e) => Evidence::unknown(format!("reading /proc/filesystems: {e}")),
        }
    }

    pub(super) fn sock_addr_helpers(&mut self) -> Evidence {
        helpers_probe(
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            BPF_CGROUP_INET4_CONNECT,
            GUARD_HELPERS,
            "a cgroup connect4",
        )
    }

    /// tracefs's mount point: the one mounted, else one this command mounts for the time of
    /// the check (and unmounts at the end).
    pub(super) fn tracefs_root(&mut self) -> Result<PathBuf, String> {
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
pub(super) fn mounted_tracefs() -> Option<PathBuf> {
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
pub(super) fn filesystem_listed(list: &str, name: &str) -> bool {
    list.lines()
        .any(|l| l.split_whitespace().next_back() == Some(name))
}

/// `major.minor` of a kernel release string.
pub(super) fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Opens a fanotify group of `class` and marks the root directory itself (an inode mark: no
/// file under it, so no exec, is held by the probe) for `mask`.
pub(super) fn fanotify_probe(
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
