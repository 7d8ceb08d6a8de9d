//! bench/agent.sh's footprint: the event-rate ceiling and memory, hashing and size. Two
//! sections of docs/PERFORMANCE.md, made by [`super::agent::report`] (its samples are listed
//! there).

use super::{ms, Env};
use crate::samples::{number, Samples};
use crate::stats::{median, mib, ratio, rounded, verdict};
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

/// The "Hashing and size" section.
pub(super) fn hashing(s: &Samples, env: &Env) -> Result<String> {
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

    #[test]
    fn cross_sizes_are_aligned() {
        let tsv = "target\tprofile\tbytes\tgzip_bytes\tlinkage\naarch64-unknown-linux-musl\trelease-small\t3871144\t1813768\tstatic\n";
        assert_eq!(
            cross_table(tsv),
            "    target                           profile             bytes gzip_bytes  linkage\n    aarch64-unknown-linux-musl       release-small     3871144    1813768  static"
        );
    }
}
