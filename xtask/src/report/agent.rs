//! bench/agent.sh: the storms (slowdown, CPU per record), the event-rate ceiling and memory,
//! hashing and size. Three sections of docs/PERFORMANCE.md.
//!
//! Samples: `smoke`, `rounds`, `execs`, `writes`, `connects`, `reads`, `read_files`,
//! `ceiling_seconds`, `hash_mib`; per round and storm (`exec`, `write`, `connect`, `read`)
//! `STORM_without_ns`, `STORM_with_ns`, `STORM_cpu_ns_before`, `STORM_cpu_ns_after` (the agent's
//! CPU time around the storm) and `STORM_stopped` ("EVENTS MISSES" from the agent's log); when
//! this agent also ran with the policy without its behavioural section, `STORM_plain_ns`,
//! `STORM_plain_cpu_ns_before`, `STORM_plain_cpu_ns_after`, `STORM_plain_stopped`, the same
//! readings of that run; when this agent also ran enforcing the policy (its exec and network
//! guards refusing what it does not allow), `STORM_enforce_ns`, `STORM_enforce_cpu_ns_before`,
//! `STORM_enforce_cpu_ns_after`, `STORM_enforce_stopped`, the same readings of that run,
//! `STORM_enforce_judged` (the execs its exec guard judged, empty when its log does not say), and
//! `enforce_refused` (the alerts saying it refused something or could not enforce, over all the
//! enforcing runs); when an earlier agent was measured too
//! (`BEFORE`), `before_commit` (what it was built from) and per round and storm
//! `STORM_before_ns`, `STORM_before_cpu_ns_before`, `STORM_before_cpu_ns_after`,
//! `STORM_before_stopped`, the same readings with it; `idle_rss_kib`, `bpf_maps` ("COUNT
//! TOTAL_BYTES RINGBUF_BYTES"), `step` ("RATE COUNT SECONDS LOST_BEFORE LOST_AFTER", one per
//! rate, 0 for as fast as possible), `lost_end`, `startup_peak_kib`, `load_rss_kib`; `hash_ns`
//! per round, `openssl_kbs` (absent without OpenSSL), `stripped_bytes`, `cross_sizes` (a path);
//! the kernel's statistics of the agent's programs, `STORM_bpf_*` (see `kernel.rs`).

use super::{ms, Env, Report};
use crate::samples::{number, Samples};
use crate::stats::{median, mib, num, ratio, rounded, verdict};
use anyhow::{bail, Context, Result};

pub(super) const STORMS: [&str; 4] = ["exec", "write", "connect", "read"];

pub fn report(s: &Samples, env: &Env) -> Result<Report> {
    let mut missed = String::new();
    let storms = storms(s, &mut missed)?;
    let behaviour = behaviour(s)?;
    let enforcement = enforcement(s, &mut missed)?;
    let before_after = before_after(s)?;
    let kernel = super::kernel::kernel(s)?;
    let ceiling = ceiling(s, env, &mut missed)?;
    let hashing = hashing(s, env)?;
    let mode = if s.yes("smoke") {
        "smoke run, figures meaningless".to_string()
    } else {
        format!("{} rounds, medians", s.text("rounds")?)
    };
    let targets = if missed.is_empty() {
        "Every target is met.".to_string()
    } else {
        format!("Targets missed:{missed}")
    };
    let cost = format!(
        "## Agent cost

Measured by `bench/agent.sh` ({mode}) on {today}: {machine}.
Each storm runs alone, then with `picket run` and a policy that allows it (full per-event work,
no alerts; `alert` mode, so its guards judge as a dry run), alternately. CPU per record is the
agent's CPU time (all threads, from `/proc/PID/task/*/schedstat`) over the storm and one second
after it, divided by the records it received in its life (the storm's: 3 per spawn, fork, exec
and exit; 1 per open; 2 per connection, connect and accept; none per read-only open, which the
kernel drops at its entry; plus what else ran on the machine meanwhile). Files hashed:
executables the agent had not seen before, each hashed once when first run (on a shared
machine, other people's freshly built binaries, some of them large). Slowdowns: the ratio of
the medians, then the lowest and highest of the rounds' own ratios (this storm with the agent
over the same round's without).

The policy lists the storms' executables (`/usr/bin/true`, the system's perl and python3, the C
loop of the ceiling below) with their dynamic loader, and the loopback port, and has a
behavioural section (format 2): perl and python3 as interpreters; lineage from the bench script
(and its shell) to perl and python3, and perl → `/usr/bin/true`, so that every exec of a storm
is checked against its parent's program and allowed (a smoke run fails on any alert about the
storms); 10 sensitive files (fanotify open marks) that no storm opens; an append-only glob over
a directory no storm writes. The privileged-action programs are attached whatever the policy;
no storm calls them.

{storms}

{targets}
{behaviour}{enforcement}{before_after}{kernel}",
        today = env.today,
        machine = env.machine,
    );
    Ok(Report {
        printed: format!("{cost}\n{ceiling}\n{hashing}"),
        sections: vec![
            ("Agent cost", cost),
            ("Event-rate ceiling and memory", ceiling),
            ("Hashing and size", hashing),
        ],
    })
}

/// The storms' table; appends the targets it misses to `missed`.
fn storms(s: &Samples, missed: &mut String) -> Result<String> {
    let mut table = "| storm | without agent | with `picket run` | slowdown (target ≤ 1.05) | records received (storm's) | files hashed | agent CPU per record received (target < 10 µs) |
| --- | --- | --- | --- | --- | --- | --- |"
        .to_string();
    for storm in STORMS {
        let (what, events) = described(s, storm)?;
        let key = |k: &str| format!("{storm}_{k}");
        let withouts = ms(&s.nums(&key("without_ns"))?);
        let without = median(&withouts).context(key("without_ns"))?;
        let with = agent_run(s, storm, "with_ns", "")?;
        let slowdown = ratio(without, with.ms);
        let (per, _) = rounded(with.cpu_per_record, 1);
        // A storm that sends no record has no CPU per record of its own to judge.
        let per_verdict = if events > 0.0 {
            verdict(&per, 9.99)
        } else {
            "no target: the storm sends none"
        };
        table += &format!(
            "\n| {what} | {} ms | {} ms | {slowdown} ({}{}) | {} ({}) | {} | {per} µs ({per_verdict}) |",
            num(without),
            num(with.ms),
            verdict(&slowdown, 1.05),
            spread("; ", &withouts, &with.rounds_ms),
            num(with.received),
            num(events),
            num(with.hashed),
        );
        if verdict(&slowdown, 1.05) != "met" {
            *missed += &format!(" {storm} storm slowdown {slowdown};");
        }
        if events > 0.0 && per_verdict != "met" {
            *missed += &format!(" {storm} CPU per record {per} µs;");
        }
    }
    Ok(table)
}

/// What a storm does, and the records it makes the agent receive.
fn described(s: &Samples, storm: &str) -> Result<(String, f64)> {
    Ok(match storm {
        "exec" => {
            let n = s.text("execs")?;
            (
                format!("{n} spawns of /usr/bin/true (perl `system`)"),
                number(n)? * 3.0,
            )
        }
        "write" => {
            let n = s.text("writes")?;
            (format!("{n} opens for writing (python)"), number(n)?)
        }
        "connect" => {
            let n = s.text("connects")?;
            let what = format!("{n} TCP connections to a loopback listener (python)");
            (what, number(n)? * 2.0)
        }
        _ => {
            let n = s.text("reads")?;
            let files = s.text("read_files")?;
            let what = format!("{n} read-only opens of {files} files (python)");
            (what, 0.0)
        }
    })
}

/// One agent's figures over the rounds of a storm (medians).
struct AgentRun {
    /// The storm's wall time with this agent running, ms.
    ms: f64,
    /// Records the agent received in its life.
    received: f64,
    /// Files it hashed.
    hashed: f64,
    /// Its CPU time over the storm (and the second after it), µs.
    cpu: f64,
    /// Its CPU time over the storm per record received, µs.
    cpu_per_record: f64,
    /// Per round: the storm's wall time, ms, and the CPU time per record received, µs.
    rounds_ms: Vec<f64>,
    rounds_per_record: Vec<f64>,
}

/// [`spread`] in parentheses after a space, or nothing.
fn spread_in_parens(a: &[f64], b: &[f64]) -> String {
    match spread("", a, b) {
        r if r.is_empty() => r,
        r => format!(" ({r})"),
    }
}

/// The lowest and highest of the rounds' own ratios `b[i] / a[i]`, as "rounds LO–HI" after
/// `sep`; empty with fewer than two rounds.
fn spread(sep: &str, a: &[f64], b: &[f64]) -> String {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| b / a)
        .collect();
    if ratios.len() < 2 {
        return String::new();
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{sep}rounds {lo:.2}–{hi:.2}")
}

/// The figures of the agent whose samples are `STORM_{time}` (the storm's wall time) and
/// `STORM_{prefix}cpu_ns_before`, `..._after`, `STORM_{prefix}stopped`.
fn agent_run(s: &Samples, storm: &str, time: &str, prefix: &str) -> Result<AgentRun> {
    let key = |k: &str| format!("{storm}_{prefix}{k}");
    let time = format!("{storm}_{time}");
    let rounds_ms = ms(&s.nums(&time)?);
    let wall = median(&rounds_ms).context(time)?;
    let cpu_us = differences_us(
        &s.nums(&key("cpu_ns_before"))?,
        &s.nums(&key("cpu_ns_after"))?,
    );
    let cpu = median(&cpu_us).context(key("cpu_ns"))?;
    let stopped = s.rows(&key("stopped"));
    let column = |i: usize| -> Result<Vec<f64>> {
        stopped
            .iter()
            .map(|r| {
                r.get(i)
                    .with_context(|| format!("{} needs EVENTS MISSES", key("stopped")))
                    .and_then(|v| number(v))
            })
            .collect()
    };
    let events = column(0)?;
    let received = median(&events).context(key("stopped"))?;
    let hashed = median(&column(1)?).context(key("stopped"))?;
    if received <= 0.0 {
        bail!(
            "the agent received no records during the {storm} storm ({})",
            key("stopped")
        );
    }
    Ok(AgentRun {
        ms: wall,
        received,
        hashed,
        cpu,
        cpu_per_record: cpu / received,
        rounds_per_record: cpu_us.iter().zip(&events).map(|(c, e)| c / e).collect(),
        rounds_ms,
    })
}

/// The subsection comparing this agent with and without the policy's behavioural section,
/// after a blank line, when it ran without it too (`STORM_plain_*`); empty otherwise.
fn behaviour(s: &Samples) -> Result<String> {
    let measured = STORMS
        .iter()
        .any(|storm| !s.all(&format!("{storm}_plain_ns")).is_empty());
    if !measured {
        return Ok(String::new());
    }
    let mut table = "### What the behavioural section costs (same run)

This agent ran every storm a second time in every round, right after the run above, with the
same policy less its behavioural section (bundle format 1: the same executables and network;
no interpreters, lineage, sensitive or append-only files: the open listener's fanotify group
is there, without marks) and its own state directory. Both slowdowns are against the runs
without agent of the same rounds; agent CPU is over the storm and the second after it; the last
column is the CPU per record received with the section over without it. Medians of the rounds,
and the lowest and highest of the rounds' own ratios.

| storm | without agent | policy without behaviour | policy with behaviour | slowdown, without behaviour | slowdown, with | agent CPU, without behaviour | agent CPU, with | CPU per record, without behaviour | CPU per record, with | CPU per record, with / without |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        .to_string();
    for storm in STORMS {
        let (what, _) = described(s, storm)?;
        let without_key = format!("{storm}_without_ns");
        let withouts = ms(&s.nums(&without_key)?);
        let without = median(&withouts).context(without_key)?;
        let plain = agent_run(s, storm, "plain_ns", "plain_")?;
        let this = agent_run(s, storm, "with_ns", "")?;
        table += &format!(
            "\n| {what} | {} ms | {} ms | {} ms | {}{} | {}{} | {} ms | {} ms | {} µs | {} µs | {}{} |",
            num(without),
            num(plain.ms),
            num(this.ms),
            ratio(without, plain.ms),
            spread_in_parens(&withouts, &plain.rounds_ms),
            ratio(without, this.ms),
            spread_in_parens(&withouts, &this.rounds_ms),
            rounded(plain.cpu / 1e3, 1).0,
            rounded(this.cpu / 1e3, 1).0,
            rounded(plain.cpu_per_record, 1).0,
            rounded(this.cpu_per_record, 1).0,
            ratio(plain.cpu_per_record, this.cpu_per_record),
            spread_in_parens(&plain.rounds_per_record, &this.rounds_per_record),
        );
    }
    Ok(format!("\n{table}\n"))
}

/// The exec storm's slowdown with the agent enforcing, at most (the cache warm).
const ENFORCE_EXEC_TARGET: f64 = 1.10;

/// The enforcement decisions a storm's actions ask for, and the agent's CPU per decision
/// (`cpu`, µs, over the storm): the exec guard's are the agent's own, counted by it
/// (`STORM_enforce_judged`, when its log gave them; else the storm's); the network guard judges
/// in the kernel, in the storm's time.
fn decisions(s: &Samples, storm: &str, cpu: f64) -> Result<(String, String)> {
    Ok(match storm {
        "exec" => {
            let storms = number(s.text("execs")?)? * 2.0;
            let judged = s
                .all(&format!("{storm}_enforce_judged"))
                .into_iter()
                .filter(|v| !v.is_empty())
                .map(number)
                .collect::<Result<Vec<f64>>>()?;
            match median(&judged) {
                Ok(n) if n > 0.0 => (
                    format!("{} judged ({})", num(n), num(storms)),
                    format!("{} µs", rounded(cpu / n, 1).0),
                ),
                _ => (
                    format!("{} (the storm's; not counted)", num(storms)),
                    format!("{} µs", rounded(cpu / storms, 1).0),
                ),
            }
        }
        "connect" => (
            format!(
                "{} in the kernel (each connect, and the listener's bind)",
                num(number(s.text("connects")?)? + 1.0)
            ),
            "none: the kernel judges".to_string(),
        ),
        _ => ("none".to_string(), "none".to_string()),
    })
}

/// The "Enforcement (same run)" subsection, after a blank line, when this agent also ran the
/// storms enforcing (`STORM_enforce_*`, for the storms that have them); empty otherwise.
/// Appends the target it misses to `missed`.
fn enforcement(s: &Samples, missed: &mut String) -> Result<String> {
    let storms: Vec<&str> = STORMS
        .into_iter()
        .filter(|storm| !s.all(&format!("{storm}_enforce_ns")).is_empty())
        .collect();
    if storms.is_empty() {
        return Ok(String::new());
    }
    let mut table = "### Enforcement (same run)

This agent ran every storm once more in every round, right after the runs above, with the
policy above in `enforce` mode (`[modes] executables = \"enforce\"`, `network = \"enforce\"`,
its own state directory): a fanotify permission group holds every exec on the machine until the
agent answers, and the cgroup programs judge every connect, send and bind in the kernel. So
that nothing else on the machine is refused meanwhile, that policy also allows every file under
every top-level directory but `/proc` and `/sys` by location (`executable_glob`; the storms'
programs and their dynamic loader stay listed by SHA-256, which goes first) and every outbound
destination. Before each timed storm the agent's guards are in force and each of the storms'
programs has run once, so its hash is cached (the goal is for a warm cache: the first exec of
each file is hashed once, by a worker thread). The main runs above are the `alert` mode: the
same judgement as a dry run (a fanotify notification group, nothing waits; the same cgroup
programs, nothing refused). Slowdowns are against the runs without agent of the same rounds,
with the lowest and highest of the rounds' own ratios; agent CPU is over the storm and the
second after it. Decisions: the exec guard's, answered by the agent, the execs it judged in its
life as its log counts them (the storm's in parentheses: 2 per spawn, the file and its loader,
each held and judged); CPU per decision is all the agent's CPU over the storm, its records
included, over them. The network guard's are judged in the kernel (in the storm's time, not the
agent's CPU).

| storm | without agent | alert (dry run) | enforce | slowdown, alert | slowdown, enforce | enforce / alert | agent CPU, alert | agent CPU, enforce | CPU per record, alert | CPU per record, enforce | decisions (the storm's) | agent CPU per decision, enforce |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        .to_string();
    for storm in storms {
        let (what, _) = described(s, storm)?;
        let without_key = format!("{storm}_without_ns");
        let withouts = ms(&s.nums(&without_key)?);
        let without = median(&withouts).context(without_key)?;
        let alert = agent_run(s, storm, "with_ns", "")?;
        let enforce = agent_run(s, storm, "enforce_ns", "enforce_")?;
        let slowdown = ratio(without, enforce.ms);
        let judged = if storm == "exec" {
            let v = verdict(&slowdown, ENFORCE_EXEC_TARGET);
            if v != "met" {
                *missed += &format!(" {storm} storm slowdown enforcing {slowdown};");
            }
            format!(
                " (target ≤ {ENFORCE_EXEC_TARGET:.2}: {v}{})",
                spread("; ", &withouts, &enforce.rounds_ms)
            )
        } else {
            spread_in_parens(&withouts, &enforce.rounds_ms)
        };
        let (counted, per_decision) = decisions(s, storm, enforce.cpu)?;
        table += &format!(
            "\n| {what} | {} ms | {} ms | {} ms | {}{} | {slowdown}{judged} | {}{} | {} ms | {} ms | {} µs | {} µs | {counted} | {per_decision} |",
            num(without),
            num(alert.ms),
            num(enforce.ms),
            ratio(without, alert.ms),
            spread_in_parens(&withouts, &alert.rounds_ms),
            ratio(alert.ms, enforce.ms),
            spread_in_parens(&alert.rounds_ms, &enforce.rounds_ms),
            rounded(alert.cpu / 1e3, 1).0,
            rounded(enforce.cpu / 1e3, 1).0,
            rounded(alert.cpu_per_record, 1).0,
            rounded(enforce.cpu_per_record, 1).0,
        );
    }
    let refused = match s.get("enforce_refused") {
        Some(n) if number(n)? == 0.0 => {
            "\n\nNothing on the machine was refused during the enforcing runs, and both guards \
             were in force."
                .to_string()
        }
        Some(n) => format!(
            "\n\n**{n} alerts** during the enforcing runs say that something on the machine was \
             refused or that a guard could not enforce (`blocked_*`, `enforcement_weakened`: \
             printed by the run)."
        ),
        None => String::new(),
    };
    Ok(format!("\n{table}{refused}\n"))
}

/// The "Before and after (same run)" subsection, after a blank line, when an earlier agent
/// (`BEFORE`) ran each storm too; empty otherwise.
fn before_after(s: &Samples) -> Result<String> {
    let measured = STORMS
        .iter()
        .any(|storm| !s.all(&format!("{storm}_before_ns")).is_empty());
    if !measured {
        return Ok(String::new());
    }
    let mut table = format!(
        "### Before and after (same run)

An earlier agent (`{before}`) ran every storm too (`BEFORE=/path/to/picket bench/agent.sh`):
in every round, right after this one, with the same config, its own state directory and the
policy without its behavioural section (which it does not read). Both slowdowns are against the
runs without agent of the same rounds; the last column is this agent's CPU per record received
over the earlier one's (< 1: cheaper now). Medians of the rounds, and the lowest and highest of
the rounds' own ratios.

| storm | without agent | with the earlier agent | with this agent | slowdown, earlier | slowdown, this | CPU per record, earlier | CPU per record, this | CPU per record, this / earlier |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        before = s.text("before_commit")?,
    );
    for storm in STORMS {
        let (what, _) = described(s, storm)?;
        let without_key = format!("{storm}_without_ns");
        let withouts = ms(&s.nums(&without_key)?);
        let without = median(&withouts).context(without_key)?;
        let earlier = agent_run(s, storm, "before_ns", "before_")?;
        let this = agent_run(s, storm, "with_ns", "")?;
        table += &format!(
            "\n| {what} | {} ms | {} ms | {} ms | {}{} | {}{} | {} µs | {} µs | {}{} |",
            num(without),
            num(earlier.ms),
            num(this.ms),
            ratio(without, earlier.ms),
            spread_in_parens(&withouts, &earlier.rounds_ms),
            ratio(without, this.ms),
            spread_in_parens(&withouts, &this.rounds_ms),
            rounded(earlier.cpu_per_record, 1).0,
            rounded(this.cpu_per_record, 1).0,
            ratio(earlier.cpu_per_record, this.cpu_per_record),
            spread_in_parens(&earlier.rounds_per_record, &this.rounds_per_record),
        );
    }
    Ok(format!("\n{table}\n"))
}

/// Whole microseconds between pairs of nanosecond readings.
fn differences_us(before: &[f64], after: &[f64]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| ((a - b) / 1e3).floor())
        .collect()
}

/// The ceiling steps' table and the highest rate without loss.
fn steps(s: &Samples) -> Result<(String, u64)> {
    let mut table = "| asked (opens/s) | achieved (opens/s) | events | lost | lost % |
| --- | --- | --- | --- | --- |"
        .to_string();
    let mut ceiling = 0;
    for row in s.rows("step") {
        let [rate, count, secs, before, after] = row[..] else {
            bail!("a step sample needs RATE COUNT SECONDS LOST_BEFORE LOST_AFTER: {row:?}");
        };
        let count: u64 = count.parse().context("step count")?;
        let lost = after.parse::<u64>()?.saturating_sub(before.parse()?);
        let achieved = (count as f64 / number(secs)?) as u64;
        let asked = if rate == "0" {
            "as fast as possible"
        } else {
            rate
        };
        let pct = format!("{:.1}", 100.0 * lost as f64 / count as f64);
        table += &format!("\n| {asked} | {achieved} | {count} | {lost} | {pct} |");
        if lost == 0 && achieved > ceiling {
            ceiling = achieved;
        }
    }
    Ok((table, ceiling))
}

/// The "Event-rate ceiling and memory" section; appends the memory targets it misses.
fn ceiling(s: &Samples, env: &Env, missed: &mut String) -> Result<String> {
    let (steps, ceiling) = steps(s)?;
    let no_loss = if s.num("lost_end")? == 0.0 {
        " Nothing was lost at any step: the agent's ceiling is above the highest rate
the loop reached here."
    } else {
        ""
    };
    let idle = mib(s.num("idle_rss_kib")?);
    let load = mib(s.num("load_rss_kib")?);
    if verdict(&idle, 7.99) != "met" {
        *missed += &format!(" idle RSS {idle} MiB;");
    }
    if verdict(&load, 15.99) != "met" {
        *missed += &format!(" RSS at the ceiling {load} MiB;");
    }
    let bpf = s.rows("bpf_maps");
    let Some([count, total, ring]) = bpf.last().map(|r| &r[..]) else {
        bail!("the bpf_maps sample needs COUNT TOTAL_BYTES RINGBUF_BYTES");
    };
    let bytes_mib = |b: &str| -> Result<String> { Ok(format!("{:.1}", number(b)? / 1_048_576.0)) };
    Ok(format!(
        "## Event-rate ceiling and memory

Measured by `bench/agent.sh` on {today}: {machine}.
One `picket run` with the default ring buffer; file opens (a loop in C, `bench/flood.c`) at
rising rates for {seconds} s each; losses are the agent's own count (ring buffer full),
never silent.

{steps}

Highest rate without loss: **{ceiling} opens/s**.{no_loss}

| memory | measured | target |
| --- | --- | --- |
| RSS idle (5 s after start) | {idle} MiB | < 8 MiB ({idle_verdict}) |
| RSS under load (highest of samples every 50 ms through the ceiling steps) | {load} MiB | < 16 MiB ({load_verdict}) |
| RSS peak over the agent's life (VmHWM: start-up, loading the sensors) | {peak} MiB | |
| BPF maps, {count} maps (memlock, from `/proc/PID/fdinfo`) | {total} MiB, of which the ring buffer {ring} MiB | kernel memory, not in RSS |
",
        today = env.today,
        machine = env.machine,
        seconds = s.text("ceiling_seconds")?,
        idle_verdict = verdict(&idle, 7.99),
        load_verdict = verdict(&load, 15.99),
        peak = mib(s.num("startup_peak_kib")?),
        total = bytes_mib(total)?,
        ring = bytes_mib(ring)?,
    ))
}

/// The "Hashing and size" section.
fn hashing(s: &Samples, env: &Env) -> Result<String> {
    let hash_mib = s.num("hash_mib")?;
    let hash_ms = median(&ms(&s.nums("hash_ns")?)).context("hash_ns")?;
    if hash_ms <= 0.0 {
        bail!("hashing {hash_mib} MiB took no measurable time");
    }
    let (picket, picket_value) = rounded(hash_mib * 1.048576 / (hash_ms / 1000.0), 0);
    let (openssl, openssl_value) = match s.get("openssl_kbs") {
        Some(kbs) => rounded(number(kbs)? / 1000.0, 0),
        None => ("0".to_string(), 0.0),
    };
    let size_kib = s.num("stripped_bytes")? as u64 / 1024;
    let cross = s
        .get("cross_sizes")
        .and_then(|p| std::fs::read_to_string(p).ok());
    let cross = match cross {
        Some(tsv) => cross_table(&tsv),
        None => "    not built (run `scripts/cross.sh build`, which writes target/cross/sizes.tsv)"
            .to_string(),
    };
    Ok(format!(
        "## Hashing and size

Measured by `bench/agent.sh` on {today}: {machine}.

| measure | picket | baseline | ratio (picket / baseline) |
| --- | --- | --- | --- |
| SHA-256, one thread, {mib} MiB in memory (`picket baseline scan`, process start included) | {picket} MB/s | {openssl} MB/s (`openssl speed -evp sha256`, 16 KiB blocks) | {ratio} |

Stripped `picket` (x86_64, release): {size_kib} KiB. ARM builds (from `target/cross/sizes.tsv`, written by `scripts/cross.sh`):

{cross}
",
        today = env.today,
        machine = env.machine,
        mib = s.text("hash_mib")?,
        ratio = ratio(openssl_value, picket_value),
    ))
}

/// target/cross/sizes.tsv (target, profile, bytes, gzip bytes, linkage) as an indented table.
fn cross_table(tsv: &str) -> String {
    tsv.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let f = |i: usize| f.get(i).copied().unwrap_or("");
            format!(
                "    {:<32} {:<14} {:>10} {:>10}  {}",
                f(0),
                f(1),
                f(2),
                f(3),
                f(4)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_env;

    const SAMPLES: &str = "smoke no\nrounds 2\nexecs 5000\nwrites 20000\nconnects 5000
reads 100000\nread_files 1000\nceiling_seconds 2\nhash_mib 512
exec_without_ns 7632400000\nexec_with_ns 7136900000\nexec_cpu_ns_before 1000\nexec_cpu_ns_after 468451000
exec_stopped 15359 19
exec_without_ns 7640000000\nexec_with_ns 7137000000\nexec_cpu_ns_before 0\nexec_cpu_ns_after 468451000
exec_stopped 15361 21
write_without_ns 323000000\nwrite_with_ns 387000000\nwrite_cpu_ns_before 0\nwrite_cpu_ns_after 95085000
write_stopped 20231 22
connect_without_ns 598000000\nconnect_with_ns 647000000\nconnect_cpu_ns_before 0\nconnect_cpu_ns_after 147133000
connect_stopped 10289 27
read_without_ns 500000000\nread_with_ns 510000000\nread_cpu_ns_before 0\nread_cpu_ns_after 2000000
read_stopped 40 3
idle_rss_kib 8908\nbpf_maps 15 3774873 1056768
step 10000 20000 2.000100 0 0
step 0 1000000 2.672 0 3
lost_end 3\nstartup_peak_kib 21913\nload_rss_kib 9830
hash_ns 632000000\nopenssl_kbs 1058000.00\nstripped_bytes 4277500\ncross_sizes /nonexistent/sizes.tsv
";

    #[test]
    fn agent_sections() {
        let r = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
        let titles: Vec<_> = r.sections.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            titles,
            [
                "Agent cost",
                "Event-rate ceiling and memory",
                "Hashing and size"
            ]
        );
        let cost = &r.sections[0].1;
        assert!(cost.starts_with("## Agent cost\n\nMeasured by `bench/agent.sh` (2 rounds, medians) on 2026-11-22: 2 cores, 24 GiB, kernel 6.1.0, commit abc1234.\n"), "{cost}");
        assert!(cost.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms | 7136.5 ms | 0.93 (met; rounds 0.93–0.94) | 15360 (15000) | 20 | 30.5 µs (**missed**) |\n"), "{cost}");
        assert!(cost.contains("\n| 20000 opens for writing (python) | 323 ms | 387 ms | 1.20 (**missed**) | 20231 (20000) | 22 | 4.7 µs (met) |\n"), "{cost}");
        assert!(cost.contains("\n| 100000 read-only opens of 1000 files (python) | 500 ms | 510 ms | 1.02 (met) | 40 (0) | 3 | 50.0 µs (no target: the storm sends none) |\n"), "{cost}");
        assert!(cost.ends_with("\n\nTargets missed: exec CPU per record 30.5 µs; write storm slowdown 1.20; connect storm slowdown 1.08; connect CPU per record 14.3 µs; idle RSS 8.7 MiB;\n"), "{cost}");
        let ceiling = &r.sections[1].1;
        assert!(ceiling.contains("\n| 10000 | 9999 | 20000 | 0 | 0.0 |\n| as fast as possible | 374251 | 1000000 | 3 | 0.0 |\n"), "{ceiling}");
        assert!(
            ceiling.contains("Highest rate without loss: **9999 opens/s**.\n"),
            "{ceiling}"
        );
        assert!(ceiling.contains("| RSS under load (highest of samples every 50 ms through the ceiling steps) | 9.6 MiB | < 16 MiB (met) |"));
        assert!(ceiling.contains("| BPF maps, 15 maps (memlock, from `/proc/PID/fdinfo`) | 3.6 MiB, of which the ring buffer 1.0 MiB |"));
        let hashing = &r.sections[2].1;
        assert!(
            hashing.contains(
                "| 849 MB/s | 1058 MB/s (`openssl speed -evp sha256`, 16 KiB blocks) | 0.80 |\n"
            ),
            "{hashing}"
        );
        assert!(hashing.contains("(x86_64, release): 4177 KiB."));
        assert!(hashing.ends_with(":\n\n    not built (run `scripts/cross.sh build`, which writes target/cross/sizes.tsv)\n"));
        assert_eq!(r.printed, format!("{cost}\n{ceiling}\n{hashing}"));
    }

    #[test]
    fn every_target_met_and_no_loss() {
        let text = SAMPLES
            .replace("exec_cpu_ns_after 468451000", "exec_cpu_ns_after 46845100")
            .replace("write_with_ns 387000000", "write_with_ns 330000000")
            .replace("connect_with_ns 647000000", "connect_with_ns 600000000")
            .replace(
                "connect_cpu_ns_after 147133000",
                "connect_cpu_ns_after 14713300",
            )
            .replace("idle_rss_kib 8908", "idle_rss_kib 7000")
            .replace("lost_end 3", "lost_end 0");
        let r = report(&Samples::parse(&text), &test_env()).unwrap();
        assert!(
            r.sections[0].1.ends_with("\n\nEvery target is met.\n"),
            "{}",
            r.sections[0].1
        );
        assert!(r.sections[1]
            .1
            .contains("**9999 opens/s**. Nothing was lost at any step"));
    }

    /// What `BEFORE=... bench/agent.sh` adds to [`SAMPLES`]: the earlier agent's readings.
    const BEFORE: &str = "before_commit f100d4e
exec_before_ns 7900000000\nexec_before_cpu_ns_before 0\nexec_before_cpu_ns_after 921600000
exec_before_stopped 15360 30
exec_before_ns 7800000000\nexec_before_cpu_ns_before 1000\nexec_before_cpu_ns_after 921601000
exec_before_stopped 15360 30
write_before_ns 400000000\nwrite_before_cpu_ns_before 0\nwrite_before_cpu_ns_after 190170000
write_before_stopped 20231 22
connect_before_ns 700000000\nconnect_before_cpu_ns_before 0
connect_before_cpu_ns_after 102890000\nconnect_before_stopped 10289 27
read_before_ns 505000000\nread_before_cpu_ns_before 0\nread_before_cpu_ns_after 1000000
read_before_stopped 50 3
";

    #[test]
    fn without_an_earlier_agent_there_is_no_before_and_after_table() {
        let r = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
        assert!(
            !r.sections[0].1.contains("Before and after"),
            "{}",
            r.sections[0].1
        );
        assert!(!r.sections[0].1.contains("earlier"), "{}", r.sections[0].1);
    }

    #[test]
    fn an_earlier_agent_gets_a_before_and_after_table() {
        let without = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
        let r = report(&Samples::parse(&format!("{SAMPLES}{BEFORE}")), &test_env()).unwrap();
        let cost = &r.sections[0].1;
        // The storms' table and the targets are those of this agent, as without BEFORE; the
        // comparison follows them.
        let table = cost
            .strip_prefix(without.sections[0].1.as_str())
            .unwrap_or_else(|| panic!("{cost}"));
        assert!(table.starts_with("\n### Before and after (same run)\n\nAn earlier agent (`f100d4e`) ran every storm too (`BEFORE=/path/to/picket bench/agent.sh`):\n"), "{table}");
        assert!(table.contains("\n| storm | without agent | with the earlier agent | with this agent | slowdown, earlier | slowdown, this | CPU per record, earlier | CPU per record, this | CPU per record, this / earlier |\n"), "{table}");
        assert!(table.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms | 7850 ms | 7136.5 ms | 1.03 (rounds 1.02–1.04) | 0.93 (rounds 0.93–0.94) | 60.0 µs | 30.5 µs | 0.51 (rounds 0.51–0.51) |\n"), "{table}");
        assert!(table.contains("\n| 20000 opens for writing (python) | 323 ms | 400 ms | 387 ms | 1.24 | 1.20 | 9.4 µs | 4.7 µs | 0.50 |\n"), "{table}");
        assert!(table.contains("\n| 5000 TCP connections to a loopback listener (python) | 598 ms | 700 ms | 647 ms | 1.17 | 1.08 | 10.0 µs | 14.3 µs | 1.43 |\n"), "{table}");
        assert!(table.ends_with("\n| 100000 read-only opens of 1000 files (python) | 500 ms | 505 ms | 510 ms | 1.01 | 1.02 | 20.0 µs | 50.0 µs | 2.50 |\n"), "{table}");
        // The other sections do not change.
        assert_eq!(r.sections[1..], without.sections[1..]);
    }

    /// What this agent's runs with the policy without its behavioural section add.
    const PLAIN: &str =
        "exec_plain_ns 7400000000\nexec_plain_cpu_ns_before 0\nexec_plain_cpu_ns_after 437000000
exec_plain_stopped 15360 19
exec_plain_ns 7400000000\nexec_plain_cpu_ns_before 0\nexec_plain_cpu_ns_after 437000000
exec_plain_stopped 15360 19
write_plain_ns 380000000\nwrite_plain_cpu_ns_before 0\nwrite_plain_cpu_ns_after 95085000
write_plain_stopped 20231 22
connect_plain_ns 640000000\nconnect_plain_cpu_ns_before 0\nconnect_plain_cpu_ns_after 147133000
connect_plain_stopped 10289 27
read_plain_ns 505000000\nread_plain_cpu_ns_before 0\nread_plain_cpu_ns_after 2000000
read_plain_stopped 40 3
";

    #[test]
    fn runs_without_the_behavioural_section_get_their_table() {
        let without = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
        assert!(
            !without.sections[0].1.contains("behavioural section costs"),
            "{}",
            without.sections[0].1
        );
        let r = report(&Samples::parse(&format!("{SAMPLES}{PLAIN}")), &test_env()).unwrap();
        let cost = &r.sections[0].1;
        let table = cost
            .strip_prefix(without.sections[0].1.as_str())
            .unwrap_or_else(|| panic!("{cost}"));
        assert!(
            table.starts_with("\n### What the behavioural section costs (same run)\n\n"),
            "{table}"
        );
        assert!(table.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms | 7400 ms | 7136.5 ms | 0.97 (rounds 0.97–0.97) | 0.93 (rounds 0.93–0.94) | 437.0 ms | 468.5 ms | 28.5 µs | 30.5 µs | 1.07 (rounds 1.07–1.07) |\n"), "{table}");
        assert!(table.ends_with("\n| 100000 read-only opens of 1000 files (python) | 500 ms | 505 ms | 510 ms | 1.01 | 1.02 | 2.0 ms | 2.0 ms | 50.0 µs | 50.0 µs | 1.00 |\n"), "{table}");
        // With an earlier agent too, its table follows.
        let r = report(
            &Samples::parse(&format!("{SAMPLES}{PLAIN}{BEFORE}")),
            &test_env(),
        )
        .unwrap();
        let cost = &r.sections[0].1;
        let costs = cost.find("### What the behavioural section costs").unwrap();
        let before = cost.find("### Before and after").unwrap();
        assert!(costs < before, "{cost}");
        let text = format!("{SAMPLES}{PLAIN}").replace("read_plain_stopped", "other");
        let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
        assert!(format!("{err:#}").contains("read_plain_stopped"), "{err:#}");
    }

    /// What this agent's enforcing runs add, for the exec and connect storms only.
    const ENFORCE: &str = "exec_enforce_ns 8000000000\nexec_enforce_cpu_ns_before 0
exec_enforce_cpu_ns_after 500000000\nexec_enforce_stopped 15370 4\nexec_enforce_judged 10200
exec_enforce_ns 8100000000\nexec_enforce_cpu_ns_before 1000\nexec_enforce_cpu_ns_after 520001000
exec_enforce_stopped 15370 4\nexec_enforce_judged 10000
connect_enforce_ns 610000000\nconnect_enforce_cpu_ns_before 0\nconnect_enforce_cpu_ns_after 140000000
connect_enforce_stopped 10000 4
connect_enforce_ns 620000000\nconnect_enforce_cpu_ns_before 0\nconnect_enforce_cpu_ns_after 140000000
connect_enforce_stopped 10000 4
enforce_refused 0
";

    #[test]
    fn enforcing_runs_get_their_table() {
        let without = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
        assert!(
            !without.sections[0].1.contains("Enforcement"),
            "{}",
            without.sections[0].1
        );
        let r = report(&Samples::parse(&format!("{SAMPLES}{ENFORCE}")), &test_env()).unwrap();
        let cost = &r.sections[0].1;
        // The exec storm meets the enforcing target: the targets are those without the runs,
        // and the table follows them.
        let head = &without.sections[0].1;
        let table = cost
            .strip_prefix(head.as_str())
            .and_then(|t| t.strip_prefix("\n### Enforcement (same run)\n\n"))
            .unwrap_or_else(|| panic!("{cost}"));
        assert!(table.contains("\n| storm | without agent | alert (dry run) | enforce | slowdown, alert | slowdown, enforce | enforce / alert | agent CPU, alert | agent CPU, enforce | CPU per record, alert | CPU per record, enforce | decisions (the storm's) | agent CPU per decision, enforce |\n"), "{table}");
        assert!(table.contains("\n| 5000 spawns of /usr/bin/true (perl `system`) | 7636 ms | 7136.5 ms | 8050 ms | 0.93 (rounds 0.93–0.94) | 1.05 (target ≤ 1.10: met; rounds 1.05–1.06) | 1.13 (rounds 1.12–1.13) | 468.5 ms | 510.0 ms | 30.5 µs | 33.2 µs | 10100 judged (10000) | 50.5 µs |\n"), "{table}");
        // Without the agent's count, the storm's decisions.
        let text = format!("{SAMPLES}{ENFORCE}")
            .replace("exec_enforce_judged 10200", "exec_enforce_judged")
            .replace("exec_enforce_judged 10000", "exec_enforce_judged");
        let r = report(&Samples::parse(&text), &test_env()).unwrap();
        assert!(
            r.sections[0]
                .1
                .contains(" | 30.5 µs | 33.2 µs | 10000 (the storm's; not counted) | 51.0 µs |\n"),
            "{}",
            r.sections[0].1
        );
        assert!(table.contains("\n| 5000 TCP connections to a loopback listener (python) | 598 ms | 647 ms | 615 ms | 1.08 | 1.03 | 0.95 | 147.1 ms | 140.0 ms | 14.3 µs | 14.0 µs | 5001 in the kernel (each connect, and the listener's bind) | none: the kernel judges |\n"), "{table}");
        // Only the storms that ran enforcing have a row.
        assert!(!table.contains("opens for writing"), "{table}");
        assert!(!table.contains("read-only opens"), "{table}");
        assert!(table.ends_with("\n\nNothing on the machine was refused during the enforcing runs, and both guards were in force.\n"), "{table}");
        // The other sections do not change.
        assert_eq!(r.sections[1..], without.sections[1..]);
    }

    #[test]
    fn enforcing_past_its_target_or_refusing_is_reported() {
        let text = format!("{SAMPLES}{ENFORCE}")
            .replace("exec_enforce_ns 8000000000", "exec_enforce_ns 9000000000")
            .replace("exec_enforce_ns 8100000000", "exec_enforce_ns 9100000000")
            .replace("enforce_refused 0", "enforce_refused 2");
        let r = report(&Samples::parse(&text), &test_env()).unwrap();
        let cost = &r.sections[0].1;
        assert!(
            cost.contains(" connect CPU per record 14.3 µs; exec storm slowdown enforcing 1.19; idle RSS 8.7 MiB;\n"),
            "{cost}"
        );
        assert!(
            cost.contains(" | 1.19 (target ≤ 1.10: **missed**; rounds 1.18–1.19) | "),
            "{cost}"
        );
        assert!(cost.contains("\n\n**2 alerts** during the enforcing runs say that something on the machine was refused"), "{cost}");
        let text = format!("{SAMPLES}{ENFORCE}").replace("connect_enforce_stopped", "other");
        let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
        assert!(
            format!("{err:#}").contains("connect_enforce_stopped"),
            "{err:#}"
        );
    }

    #[test]
    fn missing_samples_of_the_earlier_agent_are_an_error() {
        let text = format!("{SAMPLES}{BEFORE}").replace("write_before_stopped", "other");
        let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
        assert!(
            format!("{err:#}").contains("write_before_stopped"),
            "{err:#}"
        );
        let text = format!("{SAMPLES}{BEFORE}").replace("before_commit", "other");
        let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
        assert!(format!("{err:#}").contains("before_commit"), "{err:#}");
    }

    #[test]
    fn missing_samples_are_an_error() {
        let text = SAMPLES.replace("write_with_ns", "other");
        let err = report(&Samples::parse(&text), &test_env()).err().unwrap();
        assert!(format!("{err:#}").contains("write_with_ns"), "{err:#}");
    }

    #[test]
    fn cross_sizes_are_aligned() {
        let tsv = "target\tprofile\tbytes\tgzip_bytes\tlinkage\naarch64-unknown-linux-musl\trelease-small\t3871144\t1813768\tstatic\n";
        assert_eq!(
            cross_table(tsv),
            "    target                           profile             bytes gzip_bytes  linkage\n    aarch64-unknown-linux-musl       release-small     3871144    1813768  static"
        );
    }
}
