//! The eBPF sensors: loading the object, attaching its tracepoint programs, and reading what
//! they send.
//!
//! The object is embedded in the binary at build time (see `build.rs`) or loaded from a file with
//! `--bpf-object`. Before loading, the record layouts of the tracepoints are read from tracefs
//! and written into the object's `LAYOUT` global, so that the programs read the right offsets
//! on this kernel.

pub mod cgroup;
pub mod decode;
pub mod fanotify;
pub mod guard;
pub mod preflight;
mod programs;
pub mod tracefs;

use std::{collections::BTreeSet, fs, io, path::PathBuf};

use aya::{
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProgramError, TracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use picket_common::{counter, loss, Layout, Sensor};
use thiserror::Error;

pub use guard::{GuardMode, NetGuard};
pub use programs::SensorSet;
use tracefs::{Tracefs, TracefsError};

/// Default size of the ring buffer: room for about 7,000 typical records (a burst the agent
/// absorbs while it catches up). The buffer is mapped into the agent twice (the kernel's
/// wrap-around mapping), so it counts double in the agent's resident memory.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 1 << 20;

/// The object built by `build.rs` (empty when built with `AYA_BUILD_SKIP`).
static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/picket-sensors"));

/// Errors while loading and attaching the sensors. Each says what the user can do about it.
#[derive(Debug, Error)]
pub enum SensorError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// No object given and none embedded.
    #[error(
        "this picket was built without an embedded eBPF object (AYA_BUILD_SKIP); \
         pass --bpf-object PATH"
    )]
    NoObject,
    /// `--bpf-object` could not be read.
    #[error("reading the eBPF object {path}")]
    ReadObject {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--ring-buffer-size` is not acceptable to the kernel.
    #[error("--ring-buffer-size {0} must be a power of two and at least the page size ({1})")]
    RingBufferSize(u32, u64),
    /// The object could not be parsed or its maps created.
    #[error("loading the eBPF object ({origin}): is it a Picket sensors object for this version?")]
    Load {
        origin: String,
        #[source]
        source: Box<EbpfError>,
    },
    /// A program the object should have is missing: object and agent do not match.
    #[error("the eBPF object has no program `{0}`: it does not match this agent version")]
    MissingProgram(&'static str),
    /// A required tracepoint does not exist on this kernel.
    #[error(
        "tracepoint {category}:{name} does not exist on this kernel; {hint} \
         (tracepoints present are listed under {tracefs}/events)"
    )]
    MissingTracepoint {
        category: &'static str,
        name: &'static str,
        hint: &'static str,
        tracefs: String,
    },
    /// The verifier rejected a program, or attaching failed.
    #[error("loading or attaching program `{name}`{log}")]
    Program {
        name: &'static str,
        log: String,
        #[source]
        source: Box<ProgramError>,
    },
    /// The network guard could not be attached; the sensors keep working without it.
    #[error("the network guard cannot be attached: {0}")]
    Guard(String),
    /// A map the object should have is missing or of the wrong type.
    #[error("eBPF map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

/// Loaded and attached sensors. Dropping this detaches every program.
pub struct Sensors {
    /// Owns the programs and their links.
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    /// Absent from an object built before losses were counted by cgroup.
    lost_by_cgroup: Option<PerCpuHashMap<MapData, loss::Key, loss::Counts>>,
    enabled: SensorSet,
}

impl Sensors {
    /// Loads the object and attaches the programs of the `enabled` sensors.
    pub fn load(
        object: Option<&PathBuf>,
        ring_buffer_bytes: u32,
        enabled: SensorSet,
    ) -> Result<Self, SensorError> {
        let page = page_size();
        if !ring_buffer_bytes.is_power_of_two() || u64::from(ring_buffer_bytes) < page {
            return Err(SensorError::RingBufferSize(ring_buffer_bytes, page));
        }
        let bytes: std::borrow::Cow<'_, [u8]> = match object {
            Some(path) => fs::read(path)
                .map_err(|source| SensorError::ReadObject {
                    path: path.clone(),
                    source,
                })?
                .into(),
            None if EMBEDDED_OBJECT.is_empty() => return Err(SensorError::NoObject),
            None => EMBEDDED_OBJECT.into(),
        };

        // Cheap checks first; tracefs (which may need mounting) only once they pass.
        let tracefs = Tracefs::find_or_mount()?;
        let layout = layout(&tracefs)?;
        log::debug!("tracepoint layout: {layout:?}");
        let mut ebpf = EbpfLoader::new()
            .set_global("LAYOUT", &layout, true)
            .set_max_entries("EVENTS", ring_buffer_bytes)
            .load(&bytes)
            .map_err(|source| SensorError::Load {
                origin: object.map_or_else(|| "embedded".to_string(), |p| p.display().to_string()),
                source: Box::new(source),
            })?;

        let mut attached = 0usize;
        for program in programs::PROGRAMS {
            if !enabled.contains(program.sensor) {
                continue;
            }
            if !tracefs.exists(program.category, program.name) {
                match program.missing {
                    programs::IfMissing::Skip(why) => {
                        log::debug!(
                            "tracepoint {}:{} not present ({why}), skipped",
                            program.category,
                            program.name
                        );
                        continue;
                    }
                    programs::IfMissing::Fail(hint) => {
                        return Err(SensorError::MissingTracepoint {
                            category: program.category,
                            name: program.name,
                            hint,
                            tracefs: tracefs.root().display().to_string(),
                        })
                    }
                }
            }
            attach(&mut ebpf, program)?;
            attached += 1;
        }
        log::debug!("{attached} programs attached");

        let ring = take_map(&mut ebpf, "EVENTS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let lost_by_cgroup = take_map(&mut ebpf, "LOST_BY_CGROUP")
            .inspect_err(|e| log::warn!("losses will not be told by cgroup: {e}"))
            .ok();
        Ok(Self {
            ebpf,
            ring: Some(ring),
            counters,
            lost_by_cgroup,
            enabled,
        })
    }

    /// The ring buffer, to be read by one consumer. `None` after the first call.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// Attaches the network guard's programs to the root of the cgroup v2 hierarchy (mounting
    /// one at [`guard::OWN_CGROUP2`] if none is), mode off until [`NetGuard::apply`]. Once per
    /// `Sensors`. An error (no cgroup v2, no `CONFIG_CGROUP_BPF`, a verifier that refuses the
    /// programs' helpers) leaves the sensors as they were.
    pub fn net_guard(&mut self) -> Result<NetGuard, SensorError> {
        let root = guard::cgroup2_root()?;
        self.net_guard_at(&root)
    }

    /// [`Sensors::net_guard`] on the cgroup `cgroup` and its descendants only.
    pub fn net_guard_at(&mut self, cgroup: &std::path::Path) -> Result<NetGuard, SensorError> {
        NetGuard::attach(&mut self.ebpf, cgroup)
    }

    /// The exec program's side of the exec guard: the tokens the guard writes for each exec it
    /// allows, and the switch that has the program kill an exec through a descriptor that
    /// brought the guard none (a memory file). Taken once.
    pub fn exec_tokens(&mut self) -> Result<ExecTokens, SensorError> {
        Ok(ExecTokens {
            tokens: take_map(&mut self.ebpf, "EXEC_TOKENS")?,
            switch: take_map(&mut self.ebpf, "EXEC_GUARD")?,
        })
    }

    /// The sensors that were attached.
    pub fn enabled(&self) -> SensorSet {
        self.enabled
    }

    /// The in-kernel counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, MapError> {
        let read = |index: u32| -> Result<u64, MapError> {
            Ok(self.counters.get(&index, 0)?.iter().sum())
        };
        let mut lost = [0u64; 3];
        for sensor in Sensor::ALL {
            lost[sensor as usize] = read(counter::LOST_BASE + sensor as u32)?;
        }
        Ok(KernelCounters {
            lost,
            argv_missing: read(counter::ARGV_STASH_EVICTED)?,
        })
    }

    /// Records lost in the kernel so far, by the cgroup of the task that caused them and the
    /// sensor that counted them (the [`loss::CGROUPS_MAX`] pairs that lost most recently),
    /// summed over CPUs.
    pub fn losses_by_cgroup(&self) -> Result<Vec<CgroupLosses>, MapError> {
        let Some(map) = &self.lost_by_cgroup else {
            return Ok(Vec::new());
        };
        // By key: an entry evicted during the walk starts it over, and would come twice.
        let mut out = std::collections::BTreeMap::new();
        for entry in map.iter() {
            let (key, per_cpu) = match entry {
                Ok(entry) => entry,
                // Evicted between the key and its value: lost by no one now.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e),
            };
            let Some(sensor) = Sensor::ALL.into_iter().find(|s| *s as u32 == key.sensor) else {
                continue;
            };
            let mut counts = [0u64; loss::KINDS];
            for cpu in per_cpu.iter() {
                for (sum, n) in counts.iter_mut().zip(cpu) {
                    *sum += n;
                }
            }
            out.insert(
                (key.cgroup_id, sensor as u32),
                CgroupLosses {
                    cgroup_id: key.cgroup_id,
                    sensor,
                    counts,
                },
            );
        }
        Ok(out.into_values().collect())
    }
}

/// Records of one sensor lost in the kernel by one cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLosses {
    /// cgroup v2 id, as in the records (the inode number of the cgroup's directory on 64-bit
    /// kernels; on 32-bit ones the inode number is its low half).
    pub cgroup_id: u64,
    pub sensor: Sensor,
    /// Counts indexed by [`picket_common::EventKind`] value.
    pub counts: loss::Counts,
}

/// The exec guard's maps in the kernel (see [`Sensors::exec_tokens`]).
pub struct ExecTokens {
    /// Thread group id → when its exec was allowed (`CLOCK_MONOTONIC`, nanoseconds).
    pub tokens: aya::maps::HashMap<MapData, u32, u64>,
    /// Index 0: 1 while the guard enforces.
    pub switch: aya::maps::Array<MapData, u32>,
}

/// Counters kept in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records dropped because the ring buffer was full, by [`Sensor`].
    pub lost: [u64; 3],
    /// Execs reported without their arguments.
    pub argv_missing: u64,
}

/// Takes the map `name` out of the object, as the type the agent expects.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, SensorError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| MapError::InvalidName {
        name: name.to_string(),
    });
    map.and_then(T::try_from)
        .map_err(|source| SensorError::Map {
            name,
            source: Box::new(source),
        })
}

fn attach(ebpf: &mut Ebpf, program: &programs::Program) -> Result<(), SensorError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program.name)
        .ok_or(SensorError::MissingProgram(program.name))?
        .try_into()
        .map_err(|source| SensorError::Program {
            name: program.name,
            log: String::new(),
            source: Box::new(source),
        })?;
    prog.load()
        .map_err(|source| load_error(program.name, source))?;
    prog.attach(program.category, program.name)
        .map_err(|source| SensorError::Program {
            name: program.name,
            log: String::new(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// A program that could not be loaded or attached, with the end of the verifier's log if it
/// refused the program.
fn load_error(name: &'static str, source: ProgramError) -> SensorError {
    let log = match &source {
        ProgramError::LoadError { verifier_log, .. } => {
            // The end of the verifier's log says why it refused.
            let text = verifier_log.to_string();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(": verifier said:\n{}", tail.join("\n"))
        }
        _ => String::new(),
    };
    SensorError::Program {
        name,
        log,
        source: Box::new(source),
    }
}

/// Reads, from tracefs, where each field the programs use sits on this kernel.
fn layout(tracefs: &Tracefs) -> Result<Layout, TracefsError> {
    let enter = tracefs.format("syscalls", "sys_enter_openat")?;
    // The first argument follows `__syscall_nr`; every argument has the kernel's `long` size.
    let nr = enter.field("__syscall_nr")?.clone();
    let first = enter
        .fields()
        .iter()
        .find(|f| f.offset > nr.offset)
        .ok_or_else(|| TracefsError::MissingField {
            tracepoint: "syscalls:sys_enter_openat".into(),
            field: "dfd".into(),
        })?
        .clone();
    let exit = tracefs.format("syscalls", "sys_exit_openat")?;
    let exec = tracefs.format("sched", "sched_process_exec")?;
    let fork = tracefs.format("sched", "sched_process_fork")?;
    let proc_exit = tracefs.format("sched", "sched_process_exit")?;
    let signal = tracefs.format("signal", "signal_deliver")?;
    let sock = tracefs.format("sock", "inet_sock_set_state")?;
    let handler = signal.field("sa_handler")?;
    Ok(Layout {
        agent_tgid: std::process::id(),
        syscall_args: first.offset,
        syscall_arg_size: first.size,
        syscall_ret: exit.offset("ret")?,
        exec_filename: exec.offset("filename")?,
        exec_old_pid: exec.offset("old_pid")?,
        fork_parent_pid: fork.offset("parent_pid")?,
        fork_child_pid: fork.offset("child_pid")?,
        exit_group_dead: proc_exit.optional_offset("group_dead"),
        signal_sig: signal.offset("sig")?,
        signal_sa_handler: handler.offset,
        signal_sa_handler_size: handler.size,
        sock_oldstate: sock.offset("oldstate")?,
        sock_newstate: sock.offset("newstate")?,
        sock_sport: sock.offset("sport")?,
        sock_dport: sock.offset("dport")?,
        sock_family: sock.offset("family")?,
        sock_protocol: sock.offset("protocol")?,
        sock_saddr: sock.offset("saddr")?,
        sock_daddr: sock.offset("daddr")?,
        sock_saddr_v6: sock.offset("saddr_v6")?,
        sock_daddr_v6: sock.offset("daddr_v6")?,
    })
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

/// Names of the sensors in `set`, for messages.
pub fn describe(set: SensorSet) -> String {
    let names: BTreeSet<&str> = Sensor::ALL
        .into_iter()
        .filter(|s| set.contains(*s))
        .map(Sensor::name)
        .collect();
    names.into_iter().collect::<Vec<_>>().join(",")
}

/// Options shared by every command that loads the sensors.
#[derive(clap::Args, Debug, Clone)]
pub struct SensorArgs {
    /// Load the eBPF object from this file instead of the one built into the binary.
    #[arg(long, value_name = "PATH")]
    pub bpf_object: Option<PathBuf>,

    /// Size of the kernel-to-agent ring buffer in bytes (a power of two, at least one page).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_size: u32,
}
