//! Readings the benchmark scripts take while they run, each printed as one line for the scripts
//! to record: a process's CPU time and memory from /proc, its BPF maps and programs, a free port,
//! counts in logs and JSON.

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum Probe {
    /// CPU time of every thread of PID, in nanoseconds (from /proc/PID/task/*/schedstat).
    CpuNs { pid: u32 },
    /// User + system CPU time of the PIDs so far, in seconds (from /proc/PID/stat).
    CpuSeconds { pids: Vec<u32> },
    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    Kib { pid: u32, field: String },
    /// The highest VmRSS of PID, sampled every 50 ms until it exits, in KiB.
    PeakRss { pid: u32 },
    /// PID's BPF maps (from /proc/PID/fdinfo): "COUNT TOTAL_BYTES RINGBUF_BYTES".
    BpfMaps { pid: u32 },
    /// PID's attached BPF programs and the kernel's statistics of each (from /proc/PID/fdinfo,
    /// counted only while `kernel.bpf_stats_enabled` is 1), on one line: `NAME=RUNS:NANOSECONDS`
    /// for each, by name. A tracepoint program is named by its tracepoint, any other by its
    /// link's type and program id (`cgroup#42`).
    BpfPrograms { pid: u32 },
    /// A free TCP port on 127.0.0.1.
    FreePort,
    /// The records lost so far according to an agent's log: the sum of the totals of every
    /// "events lost (ring buffer full; total N)" line.
    Lost { log: PathBuf },
    /// "EVENTS MISSES" from the "stopped:" line of an agent's log (nothing if absent).
    Stopped { log: PathBuf },
    /// The execs the exec guard judged, from the "exec guard (MODE): N execs judged" line of an
    /// agent's log (nothing if absent).
    Judged { log: PathBuf },
    /// OpenSSL's SHA-256 throughput, kB/s, from `openssl speed` output on stdin.
    OpensslSha256,
    /// Field KEY of the JSON object in FILE ("-": standard input).
    Json { file: PathBuf, key: String },
    /// Fails unless FILE holds a JSON array of EXPECTED or EXPECTED - 1 elements.
    JsonCount {
        file: PathBuf,
        #[arg(long)]
        expect: usize,
    },
}

pub fn run(probe: Probe) -> Result<()> {
    let line = match probe {
        Probe::CpuNs { pid } => cpu_ns(pid)?.to_string(),
        Probe::CpuSeconds { pids } => {
            let mut total = 0.0;
            for pid in pids {
                total += cpu_seconds(pid)?;
            }
            format!("{total}")
        }
        Probe::Kib { pid, field } => status_kib(pid, &field)?.to_string(),
        Probe::PeakRss { pid } => peak_rss(pid).to_string(),
        Probe::BpfMaps { pid } => {
            let (count, total, ring) = bpf_maps(pid)?;
            format!("{count} {total} {ring}")
        }
        Probe::BpfPrograms { pid } => bpf_programs(pid)?
            .iter()
            .map(|(name, (runs, ns))| format!("{name}={runs}:{ns}"))
            .collect::<Vec<_>>()
            .join(" "),
        Probe::FreePort => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
            .to_string(),
        Probe::Lost { log } => lost(&read(&log)?).to_string(),
        Probe::Stopped { log } => match stopped(&read(&log)?) {
            Some((events, misses)) => format!("{events} {misses}"),
            None => String::new(),
        },
        Probe::Judged { log } => judged(&read(&log)?)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        Probe::OpensslSha256 => {
            let text = std::io::read_to_string(std::io::stdin())?;
            format!("{}", openssl_sha256_kbs(&text))
        }
        Probe::Json { file, key } => {
            let value = json(&file)?;
            match value.get(&key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => bail!("no {key:?} in {}", file.display()),
            }
        }
        Probe::JsonCount { file, expect } => {
            let n = json(&file)?
                .as_array()
                .map(Vec::len)
                .ok_or_else(|| anyhow!("{} is not a JSON array", file.display()))?;
            // One may have left the last hour since it was counted.
            if n > expect || n + 1 < expect {
                bail!("expected {expect} elements in {}, got {n}", file.display());
            }
            n.to_string()
        }
    };
    println!("{line}");
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn json(file: &Path) -> Result<serde_json::Value> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        read(file)?
    };
    serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))
}

fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may have ended since the directory was read.
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    let ticks = stat_ticks(&read(Path::new(&format!("/proc/{pid}/stat")))?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz.max(1) as f64)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command name, in
/// parentheses, may contain spaces.
fn stat_ticks(stat: &str) -> Result<u64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/PID/stat: {stat:?}"))?;
    // After the name: field 3 (state) is the first.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {n} in /proc/PID/stat"))
    };
    Ok(field(14)? + field(15)?)
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    status_field(&read(Path::new(&format!("/proc/{pid}/status")))?, field)
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

fn peak_rss(pid: u32) -> u64 {
    let mut peak = 0;
    while let Ok(kib) = status_kib(pid, "VmRSS") {
        peak = peak.max(kib);
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

/// (maps, memlock bytes of all, memlock bytes of ring buffers), each map counted once however
/// many descriptors the process holds for it.
fn bpf_maps(pid: u32) -> Result<(usize, u64, u64)> {
    let mut maps = std::collections::BTreeMap::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        if let Ok(text) = std::fs::read_to_string(fd?.path()) {
            if let Some((id, kind, memlock)) = bpf_map(&text) {
                maps.insert(id, (kind, memlock));
            }
        }
    }
    const BPF_MAP_TYPE_RINGBUF: u64 = 27;
    let total = maps.values().map(|(_, m)| m).sum();
    let ring = maps
        .values()
        .filter(|(k, _)| *k == BPF_MAP_TYPE_RINGBUF)
        .map(|(_, m)| m)
        .sum();
    Ok((maps.len(), total, ring))
}

/// (map_id, map_type, memlock) of an fdinfo that describes a BPF map.
fn bpf_map(fdinfo: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| {
        fdinfo.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.trim().parse::<u64>().ok()
        })
    };
    Some((
        field("map_id")?,
        field("map_type").unwrap_or(0),
        field("memlock").unwrap_or(0),
    ))
}

/// PID's attached programs: name → (runs, nanoseconds in them), from the fdinfo of its program
/// descriptors (the statistics) and of its link descriptors (what each program is attached to).
fn bpf_programs(pid: u32) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let mut stats = std::collections::BTreeMap::new();
    let mut links = std::collections::BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for fd in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(fd?.path()) else {
            continue; // closed meanwhile
        };
        match fdinfo_program(&text) {
            Some(FdinfoProgram::Program { id, runs, ns }) => {
                stats.insert(id, (runs, ns));
            }
            Some(FdinfoProgram::Link { id, name }) => {
                links.entry(id).or_insert(name);
            }
            None => {}
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for (id, name) in links {
        if let Some(&(runs, ns)) = stats.get(&id) {
            let entry = out.entry(name).or_insert((0, 0));
            entry.0 += runs;
            entry.1 += ns;
        }
    }
    Ok(out)
}

/// What one fdinfo says about a BPF program.
#[derive(Debug, PartialEq, Eq)]
enum FdinfoProgram {
    /// A program's descriptor: its id and statistics.
    Program { id: u64, runs: u64, ns: u64 },
    /// A link's descriptor: the id of its program and what it is attached to.
    Link { id: u64, name: String },
}

fn fdinfo_program(fdinfo: &str) -> Option<FdinfoProgram> {
    let text = |name: &str| {
        fdinfo.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            Some(value.trim())
        })
    };
    let number = |name: &str| text(name)?.parse::<u64>().ok();
    let id = number("prog_id")?;
    if let Some(kind) = text("link_type") {
        // The cgroup attach points of the network guard (`enum bpf_attach_type`).
        let cgroup = match number("attach_type") {
            Some(8) => Some("bind4"),
            Some(9) => Some("bind6"),
            Some(10) => Some("connect4"),
            Some(11) => Some("connect6"),
            Some(14) => Some("sendmsg4"),
            Some(15) => Some("sendmsg6"),
            _ => None,
        };
        let name = match (text("tp_name"), cgroup) {
            (Some(tp), _) if !tp.is_empty() => tp.to_string(),
            (_, Some(point)) if kind == "cgroup" => format!("cgroup/{point}"),
            _ => format!("{kind}#{id}"),
        };
        return Some(FdinfoProgram::Link { id, name });
    }
    Some(FdinfoProgram::Program {
        id,
        runs: number("run_cnt")?,
        ns: number("run_time_ns")?,
    })
}

/// The sum of the totals of the ring-buffer loss lines of the log (each sensor's running
/// total, as logged).
fn lost(log: &str) -> u64 {
    const LOST: &str = " events lost (ring buffer full; total ";
    log.lines()
        .filter_map(|line| leading_number(&line[line.find(LOST)? + LOST.len()..]))
        .sum()
}

/// The last "total N" in the log: what report.sh reads as the sensors' losses.
pub fn last_total(log: &str) -> u64 {
    log.lines()
        .flat_map(|line| {
            line.match_indices("total ")
                .map(move |(i, _)| &line[i + 6..])
        })
        .filter_map(leading_number)
        .last()
        .unwrap_or(0)
}

fn leading_number(s: &str) -> Option<u64> {
    let digits: &str = &s[..s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len())];
    digits.parse().ok()
}

/// (events, hash cache misses) from "stopped: N events, ..., hash cache H hits / M misses".
fn stopped(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("stopped: "))?;
    let events = leading_number(&line[line.find("stopped: ")? + 9..])?;
    let misses_at = line.find(" hits / ")? + 8;
    Some((events, leading_number(&line[misses_at..])?))
}

/// N from the last "exec guard (MODE): N execs judged, ..." line.
fn judged(log: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("execs judged"))?;
    let rest = &line[line.find("exec guard (")?..];
    leading_number(&rest[rest.find("): ")? + 3..])
}

/// The last field of the last `sha256` line of `openssl speed` (kB/s at the largest block size),
/// without its "k"; 0 if there is none.
fn openssl_sha256_kbs(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("sha256") || l.starts_with("SHA256"))
        .filter_map(|l| l.split_whitespace().next_back())
        .next_back()
        .and_then(|v| v.replacen('k', "", 1).parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_user_plus_system_time() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0";
        assert_eq!(stat_ticks(stat).unwrap(), 287);
        assert!(stat_ticks("garbage").is_err());
    }

    #[test]
    fn status_fields_in_kib() {
        let status = "Name:\tpicket\nVmHWM:\t   21904 kB\nVmRSS:\t    8908 kB\n";
        assert_eq!(status_field(status, "VmRSS"), Some(8908));
        assert_eq!(status_field(status, "VmHWM"), Some(21904));
        assert_eq!(status_field(status, "VmPeak"), None);
    }

    #[test]
    fn bpf_maps_are_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmap_type:\t27\nkey_size:\t0\nmemlock:\t1056768\nmap_id:\t42\n";
        assert_eq!(bpf_map(fdinfo), Some((42, 27, 1_056_768)));
        assert_eq!(bpf_map("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn bpf_programs_are_read_from_fdinfo() {
        let program = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_jited:\t1\n\
                       prog_tag:\tdbd1b110b015c111\nmemlock:\t4096\nprog_id:\t266464\n\
                       run_time_ns:\t81234\nrun_cnt:\t321\nrecursion_misses:\t0\n";
        assert_eq!(
            fdinfo_program(program),
            Some(FdinfoProgram::Program {
                id: 266_464,
                runs: 321,
                ns: 81_234
            })
        );
        let tracepoint = "pos:\t0\nlink_type:\tperf\nlink_id:\t246958\n\
                          prog_tag:\tdea1045deee13fb4\nprog_id:\t266462\n\
                          tp_name:\tsys_enter_umount\nevent_type:\ttracepoint\n";
        assert_eq!(
            fdinfo_program(tracepoint),
            Some(FdinfoProgram::Link {
                id: 266_462,
                name: "sys_enter_umount".into()
            })
        );
        let connect = "pos:\t0\nlink_type:\tcgroup\nlink_id:\t7\nprog_id:\t42\n\
                       cgroup_id:\t1\nattach_type:\t10\n";
        assert_eq!(
            fdinfo_program(connect),
            Some(FdinfoProgram::Link {
                id: 42,
                name: "cgroup/connect4".into()
            })
        );
        // A kernel that does not say what a link is attached to: its type and program id.
        let unnamed = "pos:\t0\nlink_type:\tperf\nlink_id:\t7\nprog_id:\t43\n";
        assert_eq!(
            fdinfo_program(unnamed),
            Some(FdinfoProgram::Link {
                id: 43,
                name: "perf#43".into()
            })
        );
        // A map, or a program from a kernel without statistics.
        assert_eq!(
            fdinfo_program("pos:\t0\nmap_type:\t27\nmap_id:\t42\n"),
            None
        );
        assert_eq!(fdinfo_program("pos:\t0\nprog_id:\t42\n"), None);
    }

    #[test]
    fn lost_sums_every_logged_total() {
        let log = "x\nexec sensor: 3 events lost (ring buffer full; total 3)\n\
                   file sensor: 5 events lost (ring buffer full; total 12)\nother total 7\n";
        assert_eq!(lost(log), 15);
        assert_eq!(lost(""), 0);
    }

    #[test]
    fn last_total_is_the_last_one_logged() {
        assert_eq!(last_total("a total 3\nb total 9 and\nc\n"), 9);
        assert_eq!(last_total("nothing\n"), 0);
    }

    #[test]
    fn stopped_line_gives_events_and_misses() {
        let log = "running with policy\n[INFO] stopped: 15359 events, 12 processes tracked, \
                   hash cache 80 hits / 19 misses\n";
        assert_eq!(stopped(log), Some((15359, 19)));
        assert_eq!(stopped("running\n"), None);
    }

    #[test]
    fn exec_guard_line_gives_execs_judged() {
        let log = "running with policy\n[INFO] stopped: 15359 events, 12 processes tracked, \
                   hash cache 80 hits / 19 misses\n[INFO] exec guard (enforce): 10012 execs \
                   judged, 0 refused, 0 given the default answer, 0 decisions not reported \
                   (queue full)\n";
        assert_eq!(judged(log), Some(10012));
        assert_eq!(judged("running\n[INFO] stopped: 1 events\n"), None);
    }

    #[test]
    fn openssl_speed_output() {
        let out = "The 'numbers' are in 1000s of bytes per second processed.\n\
                   type             16384 bytes\nsha256          1058000.00k\n";
        assert_eq!(openssl_sha256_kbs(out), 1_058_000.0);
        assert_eq!(openssl_sha256_kbs("nothing"), 0.0);
    }
}
