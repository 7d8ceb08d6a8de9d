//! bench/agent.sh's footprint: the event-rate ceiling and memory, hashing and size. Two
//! sections of docs/PERFORMANCE.md, made by [`super::agent::report`] (its samples are listed
//! there).

use super::{rounds_of, Env};
use crate::samples::{number, Samples};
use crate::stats::{mib, ratio, verdict, Spread};
use anyhow::{bail, Context, Result};

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
pub(super) fn ceiling(s: &Samples, env: &Env, missed: &mut String) -> Result<String> {
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

/// SHA-256 at least this fast as OpenSSL's on the same work.
const HASH_TARGET: f64 = 0.95;

/// One row of the hashing table: picket's and OpenSSL's rates per round (MB/s, OpenSSL's empty
/// when it was not measured).
fn hash_row(what: &str, key: &str, picket: &[f64], openssl: &[f64]) -> Result<String> {
    let ours = Spread::of(picket).with_context(|| format!("no {key} sample ({what})"))?;
    let mb = |r: &Spread| match r.rounds {
        1 => format!("{:.0} MB/s", r.median),
        _ => format!("{:.0} MB/s ({})", r.median, r.range(0)),
    };
    let Ok(theirs) = Spread::of(openssl) else {
        return Ok(format!("\n| {what} | {} | not measured | |", mb(&ours)));
    };
    let shown = ratio(theirs.median, ours.median);
    Ok(format!(
        "\n| {what} | {} | {} | {shown} ({}{}) |",
        mb(&ours),
        mb(&theirs),
        verdict_at_least(&shown, HASH_TARGET),
        rounds_of(Spread::of_ratios(openssl, picket), 2, "; "),
    ))
}

/// "met" when the figure as shown is at least `target`.
fn verdict_at_least(shown: &str, target: f64) -> &'static str {
    if shown.trim().parse::<f64>().unwrap_or(0.0) >= target {
        "met"
    } else {
        "**missed**"
    }
}

/// The "Hashing and size" section.
pub(super) fn hashing(s: &Samples, env: &Env) -> Result<String> {
    let mut table = format!(
        "| SHA-256, one thread | picket | OpenSSL | picket / OpenSSL (target ≥ {HASH_TARGET:.2}) |
| --- | --- | --- | --- |"
    );
    let rate = |bytes: f64, ns: &[f64]| -> Vec<f64> {
        ns.iter()
            .map(|ns| if *ns > 0.0 { bytes / ns * 1e3 } else { 0.0 })
            .collect()
    };
    let files = s.rows("hash_file");
    if files.is_empty() {
        bail!("no hash_file sample (MIB COUNT) was recorded");
    }
    for row in files {
        let [mib, count] = row[..] else {
            bail!("a hash_file sample needs MIB COUNT: {row:?}");
        };
        let bytes = number(mib)? * 1_048_576.0 * number(count)?;
        let key = format!("hash_{mib}_picket_ns");
        let times = match count {
            "1" => "once".to_string(),
            n => format!("{n} times"),
        };
        let picket = rate(bytes, &s.nums(&key)?);
        let openssl = rate(bytes, &s.nums(&format!("hash_{mib}_openssl_ns"))?);
        table += &hash_row(
            &format!(
                "a {mib} MiB file in memory (tmpfs), hashed {times} in one process: \
                 the agent's `digest_of_file`; `openssl dgst -sha256` with the file {times}"
            ),
            &format!("{key}, for the hash_file {mib} {count}"),
            &picket,
            &openssl,
        )?;
    }
    let blocks: Vec<f64> = s
        .nums("hash_blocks_picket_bps")?
        .iter()
        .map(|b| b / 1e6)
        .collect();
    let speed: Vec<f64> = s.nums("openssl_kbs")?.iter().map(|k| k / 1e3).collect();
    table += &hash_row(
        "one 16 KiB block in memory, over and over: the agent's `sha256_chunks`; \
         `openssl speed -evp sha256 -bytes 16384`",
        "hash_blocks_picket_bps",
        &blocks,
        &speed,
    )?;
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
Picket and OpenSSL alternately in every round, on the same work. Rates in CPU time (user and
system, of the process; `openssl speed` divides by its user time, and the block loop of
`agent/examples/hash_speed.rs` by its own CPU time), which the machine's other work disturbs
far less than wall time: medians of the rounds (MB: 10⁶ bytes), then their lowest and highest;
the ratio is of the medians, then the lowest and highest of the rounds' own ratios. The files'
runs include one process start each (`hash_speed`, OpenSSL's `dgst`), and the reads of the file
from the page cache; both digests are checked equal.

{table}

Stripped `picket` (x86_64, release): {size_kib} KiB. ARM builds (from `target/cross/sizes.tsv`, written by `scripts/cross.sh`):

{cross}
",
        today = env.today,
        machine = env.machine,
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

    #[test]
    fn cross_sizes_are_aligned() {
        let tsv = "target\tprofile\tbytes\tgzip_bytes\tlinkage\naarch64-unknown-linux-musl\trelease-small\t3871144\t1813768\tstatic\n";
        assert_eq!(
            cross_table(tsv),
            "    target                           profile             bytes gzip_bytes  linkage\n    aarch64-unknown-linux-musl       release-small     3871144    1813768  static"
        );
    }
}
