//! bench/agent.sh: the time each of the agent's BPF programs spends in the kernel per action of
//! each storm, from the kernel's BPF statistics. A subsection of "Agent cost".
//!
//! Samples, per round and storm (`exec`, `write`, `connect`, `read`): `STORM_bpf_before` and
//! `STORM_bpf_after`, the agent's programs before and after the storm as `xtask probe
//! bpf-programs` prints them (`NAME=RUNS:NANOSECONDS ...`); when an earlier agent was measured
//! too (`BEFORE`), `STORM_before_bpf_before` and `STORM_before_bpf_after`, the same of it.

use crate::samples::Samples;
use crate::stats::{median, ratio, rounded};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

use super::agent::STORMS;

/// Programs that ran less often than this per action of a storm are the machine's other work,
/// not the storm's: left out of the table (their time stays in the total).
const RUNS_PER_ACTION_SHOWN: f64 = 0.01;

/// The subsection, after a blank line, when the samples have the programs' statistics; empty
/// otherwise.
pub fn kernel(s: &Samples) -> Result<String> {
    let measured = STORMS
        .iter()
        .any(|storm| !s.all(&format!("{storm}_bpf_after")).is_empty());
    if !measured {
        return Ok(String::new());
    }
    let earlier = STORMS
        .iter()
        .any(|storm| !s.all(&format!("{storm}_before_bpf_after")).is_empty());
    let mut table = "### In the kernel: each program's time (same run)

This agent ran every storm once more in every round, after the runs above, with the kernel's
BPF statistics on (`kernel.bpf_stats_enabled`, set to 1 for that run alone and restored after
it: it adds two clock reads to every program run on the machine, so the timed runs above go
without it). For each program the agent attached, the runs and the time spent in it over the
storm, from the agent's `/proc/PID/fdinfo` (`run_cnt` and `run_time_ns` of each program, the
tracepoint of each from its link), per action of the storm (a spawn, an open, a connection);
medians of the rounds. The programs run for every process on the machine: those that ran less
than once per 100 actions (other work meanwhile) are left out of the rows and counted in the
total. Not counted: what a program costs outside its own instructions (the tracepoint's
dispatch and the call into the program, the syscall's slow path while any syscall tracepoint
is in use), the fanotify groups, and the agent's own work and wakeups."
        .to_string();
    if earlier {
        table += &format!(
            " The earlier agent (`{}`) ran the same way, right after this one; the last column is
this agent's time per action over the earlier one's.",
            s.text("before_commit")?
        );
        table += "

| storm | program | runs per action | ns per run | ns per action | runs per action, earlier | ns per run, earlier | ns per action, earlier | ns per action, this / earlier |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |";
    } else {
        table += "

| storm | program | runs per action | ns per run | ns per action |
| --- | --- | --- | --- | --- |";
    }
    for storm in STORMS {
        if s.all(&format!("{storm}_bpf_after")).is_empty() {
            continue;
        }
        let actions = actions(s, storm)?;
        let this = programs(s, storm, "", actions)?;
        let before = if earlier {
            Some(programs(s, storm, "before_", actions)?)
        } else {
            None
        };
        let mut names: Vec<&String> = this
            .rows
            .iter()
            .chain(before.iter().flat_map(|b| b.rows.iter()))
            .filter(|(_, p)| p.runs_per_action >= RUNS_PER_ACTION_SHOWN)
            .map(|(name, _)| name)
            .collect();
        names.sort_by(|a, b| {
            let key = |n: &String| this.rows.get(n).map_or(0.0, |p| p.ns_per_action);
            key(b).total_cmp(&key(a)).then(a.cmp(b))
        });
        names.dedup();
        let what = format!("{} ({})", storm, action_name(storm));
        for name in names {
            let p = this.rows.get(name).copied().unwrap_or_default();
            table += &format!("\n| {what} | `{name}` | {} |", figures(&p));
            if let Some(b) = &before {
                let e = b.rows.get(name).copied().unwrap_or_default();
                table += &format!(
                    " {} | {} |",
                    figures(&e),
                    ratio(e.ns_per_action, p.ns_per_action)
                );
            }
        }
        table += &format!(
            "\n| {what} | all programs | | | **{}** |",
            rounded(this.total_ns_per_action, 0).0
        );
        if let Some(b) = &before {
            table += &format!(
                " | | **{}** | {} |",
                rounded(b.total_ns_per_action, 0).0,
                ratio(b.total_ns_per_action, this.total_ns_per_action)
            );
        }
    }
    Ok(format!("\n{table}\n"))
}

/// "runs per action | ns per run | ns per action" of one program.
fn figures(p: &Program) -> String {
    format!(
        "{} | {} | {}",
        rounded(p.runs_per_action, 2).0,
        if p.runs_per_action > 0.0 {
            rounded(p.ns_per_run, 0).0
        } else {
            "–".to_string()
        },
        rounded(p.ns_per_action, 0).0
    )
}

/// The actions of a storm: spawns, opens, connections.
fn actions(s: &Samples, storm: &str) -> Result<f64> {
    let key = match storm {
        "exec" => "execs",
        "write" => "writes",
        "connect" => "connects",
        _ => "reads",
    };
    s.num(key)
}

fn action_name(storm: &str) -> &'static str {
    match storm {
        "exec" => "per spawn",
        "write" => "per open for writing",
        "connect" => "per connection",
        _ => "per read-only open",
    }
}

/// One program's figures over a storm, medians of the rounds.
#[derive(Debug, Default, Clone, Copy)]
struct Program {
    runs_per_action: f64,
    ns_per_run: f64,
    ns_per_action: f64,
}

/// Every program's figures over a storm, and the time of all of them per action.
struct Programs {
    rows: BTreeMap<String, Program>,
    total_ns_per_action: f64,
}

/// The figures of the agent whose samples are `STORM_{prefix}bpf_before` and `..._after`.
fn programs(s: &Samples, storm: &str, prefix: &str, actions: f64) -> Result<Programs> {
    let key = |k: &str| format!("{storm}_{prefix}{k}");
    let befores = s.all(&key("bpf_before"));
    let afters = s.all(&key("bpf_after"));
    if afters.is_empty() || befores.len() != afters.len() {
        bail!(
            "{} and {} need one sample each per round ({} and {})",
            key("bpf_before"),
            key("bpf_after"),
            befores.len(),
            afters.len()
        );
    }
    if actions <= 0.0 {
        bail!("the {storm} storm has no actions to divide by");
    }
    // Per round: program → (runs, ns) over the storm.
    let mut rounds = Vec::new();
    for (before, after) in befores.iter().zip(&afters) {
        let before = parse(before).with_context(|| key("bpf_before"))?;
        let after = parse(after).with_context(|| key("bpf_after"))?;
        let delta: BTreeMap<String, (f64, f64)> = after
            .into_iter()
            .map(|(name, (runs, ns))| {
                let (r0, n0) = before.get(&name).copied().unwrap_or((0, 0));
                let d = (runs.saturating_sub(r0) as f64, ns.saturating_sub(n0) as f64);
                (name, d)
            })
            .collect();
        rounds.push(delta);
    }
    let names: std::collections::BTreeSet<&String> = rounds.iter().flat_map(|r| r.keys()).collect();
    let mut rows = BTreeMap::new();
    for name in names {
        let each = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
            rounds
                .iter()
                .map(|r| r.get(name).map_or(0.0, |&(runs, ns)| f(runs, ns)))
                .collect()
        };
        let per_run: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.get(name))
            .filter(|(runs, _)| *runs > 0.0)
            .map(|(runs, ns)| ns / runs)
            .collect();
        rows.insert(
            name.clone(),
            Program {
                runs_per_action: median(&each(&|runs, _| runs / actions))?,
                ns_per_run: median(&per_run).unwrap_or(0.0),
                ns_per_action: median(&each(&|_, ns| ns / actions))?,
            },
        );
    }
    let totals: Vec<f64> = rounds
        .iter()
        .map(|r| r.values().map(|(_, ns)| ns).sum::<f64>() / actions)
        .collect();
    Ok(Programs {
        rows,
        total_ns_per_action: median(&totals)?,
    })
}

/// `NAME=RUNS:NANOSECONDS ...` as `xtask probe bpf-programs` prints it.
fn parse(line: &str) -> Result<BTreeMap<String, (u64, u64)>> {
    line.split_whitespace()
        .map(|field| {
            let (name, figures) = field
                .split_once('=')
                .with_context(|| format!("{field:?} is not NAME=RUNS:NANOSECONDS"))?;
            let (runs, ns) = figures
                .split_once(':')
                .with_context(|| format!("{field:?} is not NAME=RUNS:NANOSECONDS"))?;
            Ok((
                name.to_string(),
                (
                    runs.parse().with_context(|| format!("runs in {field:?}"))?,
                    ns.parse()
                        .with_context(|| format!("nanoseconds in {field:?}"))?,
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rounds of the read storm (100000 opens): two programs of the storm, one of the
    /// machine's other work.
    const SAMPLES: &str = "reads 100000
read_bpf_before sys_enter_openat=10:1000 sys_exit_openat=10:3000 sched_process_exec=0:0
read_bpf_after sys_enter_openat=100010:20001000 sys_exit_openat=100010:60003000 sched_process_exec=2:30000
read_bpf_before sys_enter_openat=0:0 sys_exit_openat=0:0 sched_process_exec=0:0
read_bpf_after sys_enter_openat=100000:30000000 sys_exit_openat=100000:50000000 sched_process_exec=0:0
";

    #[test]
    fn per_program_time_per_action() {
        let text = kernel(&Samples::parse(SAMPLES)).unwrap();
        assert!(text.starts_with("\n### In the kernel: each program's time (same run)\n"));
        // Medians of the rounds: (200 + 300) / 2 and (600 + 500) / 2 ns per open.
        assert!(
            text.contains("\n| read (per read-only open) | `sys_exit_openat` | 1.00 | 550 | 550 |\n| read (per read-only open) | `sys_enter_openat` | 1.00 | 250 | 250 |\n"),
            "{text}"
        );
        // The exec of other work is left out of the rows, in the total: (800.3 + 800) / 2.
        assert!(!text.contains("sched_process_exec"), "{text}");
        assert!(
            text.ends_with("\n| read (per read-only open) | all programs | | | **800** |\n"),
            "{text}"
        );
        assert!(!text.contains("earlier"), "{text}");
    }

    #[test]
    fn an_earlier_agent_gets_its_columns() {
        let text = format!(
            "{SAMPLES}before_commit f100d4e
read_before_bpf_before sys_enter_openat=0:0 sys_exit_openat=0:0
read_before_bpf_after sys_enter_openat=100000:40000000 sys_exit_openat=100000:60000000
read_before_bpf_before sys_enter_openat=0:0 sys_exit_openat=0:0
read_before_bpf_after sys_enter_openat=100000:40000000 sys_exit_openat=100000:60000000
"
        );
        let text = kernel(&Samples::parse(&text)).unwrap();
        assert!(text.contains("The earlier agent (`f100d4e`)"), "{text}");
        assert!(
            text.contains("\n| read (per read-only open) | `sys_enter_openat` | 1.00 | 250 | 250 | 1.00 | 400 | 400 | 0.62 |\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\n| read (per read-only open) | all programs | | | **800** | | | **1000** | 0.80 |\n"),
            "{text}"
        );
    }

    #[test]
    fn without_statistics_there_is_no_table() {
        assert_eq!(kernel(&Samples::parse("reads 100000\n")).unwrap(), "");
    }

    #[test]
    fn unpaired_or_malformed_samples_are_errors() {
        let unpaired = "reads 10\nread_bpf_after a=1:2\n";
        assert!(kernel(&Samples::parse(unpaired)).is_err());
        let malformed = "reads 10\nread_bpf_before a=1\nread_bpf_after a=1:2\n";
        let err = kernel(&Samples::parse(malformed)).unwrap_err();
        assert!(
            format!("{err:#}").contains("NAME=RUNS:NANOSECONDS"),
            "{err:#}"
        );
    }
}
