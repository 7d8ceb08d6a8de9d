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
//! rate, 0 for as fast as possible), `lost_end`, `startup_peak_kib`, `load_rss_kib`; `hash_file`
//! ("MIB COUNT", one per file size hashed), per round `hash_MIB_picket_ns` and
//! `hash_MIB_openssl_ns` (COUNT hashes of the file by each), `hash_blocks_picket_bps` and
//! `openssl_kbs` (16 KiB blocks in memory; OpenSSL's absent without it); `stripped_bytes`,
//! `cross_sizes` (a path);
//! the kernel's statistics of the agent's programs, `STORM_bpf_*` (see `kernel.rs`).

use super::footprint::{ceiling, hashing};
use super::{ms, range_in_parens, rounds_of, Env, Report};
use crate::samples::{number, Samples};
use crate::stats::{median, num, ratio, rounded, verdict, Spread, NOISE_LIMIT};
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
machine, other people's freshly built binaries, some of them large). Times: the median, then
the lowest and highest of the rounds. Slowdowns: the ratio of the medians, then the lowest and
highest of the rounds' own ratios (this storm with the agent over the same round's without);
CPU per record: the median, then the rounds' lowest and highest. A figure whose rounds spread
over more than {noise_limit:.0} % of its median (highest less lowest) is marked noisy: its verdict
is not to be trusted.

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
        noise_limit = NOISE_LIMIT * 100.0,
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

/// The storms' table; appends the targets it misses to `missed`, and a paragraph naming the
/// judged figures whose rounds are too noisy to trust.
fn storms(s: &Samples, missed: &mut String) -> Result<String> {
    let mut table = "| storm | without agent | with `picket run` | slowdown (target ≤ 1.05) | records received (storm's) | files hashed | agent CPU per record received (target < 10 µs) |
| --- | --- | --- | --- | --- | --- | --- |"
        .to_string();
    let mut noisy = Vec::new();
    let mut rounds = 0;
    for storm in STORMS {
        let (what, events) = described(s, storm)?;
        let key = |k: &str| format!("{storm}_{k}");
        let withouts = ms(&s.nums(&key("without_ns"))?);
        let without = median(&withouts).context(key("without_ns"))?;
        let with = agent_run(s, storm, "with_ns", "")?;
        rounds = rounds.max(withouts.len().min(with.rounds_ms.len()));
        let slowdown = ratio(without, with.ms);
        let (per, _) = rounded(with.cpu_per_record, 1);
        // A storm that sends no record has no CPU per record of its own to judge.
        let per_verdict = if events > 0.0 {
            verdict(&per, 9.99)
        } else {
            "no target: the storm sends none"
        };
        let slowdowns = Spread::of_ratios(&withouts, &with.rounds_ms);
        let per_rounds = Spread::of(&with.rounds_per_record).ok();
        table += &format!(
            "\n| {what} | {} ms{} | {} ms{} | {slowdown} ({}{}) | {} ({}) | {} | {per} µs ({per_verdict}{}) |",
            num(without),
            range_in_parens(&withouts, 0),
            num(with.ms),
            range_in_parens(&with.rounds_ms, 0),
            verdict(&slowdown, 1.05),
            rounds_of(slowdowns, 2, "; "),
            num(with.received),
            num(events),
            num(with.hashed),
            rounds_of(per_rounds, 1, "; "),
        );
        if verdict(&slowdown, 1.05) != "met" {
            *missed += &format!(" {storm} storm slowdown {slowdown};");
        }
        if events > 0.0 && per_verdict != "met" {
            *missed += &format!(" {storm} CPU per record {per} µs;");
        }
        if let Some(r) = slowdowns.filter(Spread::noisy) {
            noisy.push(format!(
                "{storm} storm slowdown (rounds {}: {})",
                r.range(2),
                r.width_percent()
            ));
        }
        if let Some(r) = per_rounds.filter(|r| events > 0.0 && r.noisy()) {
            noisy.push(format!(
                "{storm} CPU per record (rounds {} µs: {})",
                r.range(1),
                r.width_percent()
            ));
        }
    }
    Ok(format!("{table}\n\n{}", noise(rounds, &noisy)))
}

/// What the run says of its noise: nothing with one round; else which judged figures spread
/// past [`NOISE_LIMIT`], or that none did.
fn noise(rounds: usize, noisy: &[String]) -> String {
    let limit = format!("{:.0} %", NOISE_LIMIT * 100.0);
    if rounds < 2 {
        "One round: no spread to judge the noise by.".to_string()
    } else if noisy.is_empty() {
        format!(
            "Every judged figure (slowdowns, CPU per record) is steady: its rounds spread over at \
             most {limit} of its median (highest less lowest)."
        )
    } else {
        format!(
            "**Too noisy to trust** (rounds spread over more than {limit} of the median, highest \
             less lowest; the machine's other work varied between rounds): {}. Their verdicts \
             say little; run again on a quieter machine or with more rounds (`ROUNDS=`).",
            noisy.join("; ")
        )
    }
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
/// `sep` (", noisy" after it when they spread past [`NOISE_LIMIT`]); empty with fewer than two
/// rounds.
fn spread(sep: &str, a: &[f64], b: &[f64]) -> String {
    rounds_of(Spread::of_ratios(a, b), 2, sep)
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

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
