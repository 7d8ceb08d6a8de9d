//! bench/report.sh: reporting over MQTT with mutual TLS, latency from exec to subscriber and
//! the spool's drain rate after an outage. The "Reporting" section.
//!
//! Samples: `profile`, `backlog`, `sent` ("NANOSECONDS PATH" per exec, just before it),
//! `latency_out` and `drain_out` (the subscriber's output files, `%U %p` lines), `agent_log`,
//! `got` (backlog alerts that arrived), `rss_kib` (the agent's VmHWM).

use super::{Env, Report};
use crate::probe::last_total;
use crate::samples::Samples;
use crate::stats::{percentile, verdict};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;

pub fn report(s: &Samples, env: &Env) -> Result<Report> {
    let sent = s
        .all("sent")
        .into_iter()
        .map(|line| {
            let (t, path) = line
                .split_once(' ')
                .ok_or_else(|| anyhow!("sent {line:?}"))?;
            Ok((path.trim().to_string(), t.parse::<i128>()?))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    let latency = read(s.text("latency_out")?)?;
    let mut lat = latencies_ms(&sent, &latency)?;
    lat.sort_by(f64::total_cmp);
    let p50 = format!("{:.2}", percentile(&lat, 0.5)?);
    let p99 = format!("{:.2}", percentile(&lat, 0.99)?);
    let rate = drain_rate(&read(s.text("drain_out")?)?)?;
    let lost = last_total(&read(s.text("agent_log")?)?);
    let rss = s.num("rss_kib")? as u64 / 1024;
    let (got, backlog) = (s.text("got")?, s.text("backlog")?);
    let table = format!(
        "| measure | value | target |
| --- | --- | --- |
| exec → subscriber latency, p50 | {p50} ms | |
| exec → subscriber latency, p99 | {p99} ms | < 50 ms: {verdict} |
| spool drain rate after an outage ({got} of {backlog} unknown executables arrived; events lost by the sensors meanwhile: {lost}) | {rate} alerts/s | |
| agent peak RSS during the run | {rss} MiB | |",
        verdict = verdict(&p99, 50.0),
    );
    let section = format!(
        "## Reporting

`bench/report.sh` ({machine}), {profile} build: a real Mosquitto with mutual TLS on loopback,
{n} execs of unknown binaries one at a time (latency: from just before the exec to the alert's
arrival at a subscriber, through the sensors, detection, the spool's fsync and the broker),
then {backlog} alerts raised with the broker down and the time to deliver them all once it is
back (QoS 1, 32 in flight).

{table}",
        machine = env.machine,
        profile = s.text("profile")?,
        n = lat.len(),
    );
    Ok(Report {
        printed: table,
        sections: vec![("Reporting", section)],
    })
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// Milliseconds from each exec (`sent`: path → nanoseconds) to its unknown-executable alert in
/// the subscriber's output (`SECONDS.FRACTION JSON` lines); each exec counted once.
fn latencies_ms(sent: &HashMap<String, i128>, received: &str) -> Result<Vec<f64>> {
    let mut sent = sent.clone();
    let mut lat = Vec::new();
    for line in received.lines() {
        let Some((t, payload)) = line.split_once(' ') else {
            continue;
        };
        let message: serde_json::Value = serde_json::from_str(payload)
            .with_context(|| format!("a message that is not JSON: {payload:?}"))?;
        let body = &message["body"];
        let Some(path) = body["path"].as_str() else {
            continue;
        };
        if body["kind"] != "unknown_executable" {
            continue;
        }
        if let Some(t0) = sent.remove(path) {
            lat.push((unix_ns(t)? - t0) as f64 / 1e6);
        }
    }
    Ok(lat)
}

/// "1732233600.123456789" (mosquitto_sub's `%U`) as nanoseconds.
fn unix_ns(t: &str) -> Result<i128> {
    let (secs, frac) = t.split_once('.').unwrap_or((t, "0"));
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    Ok(secs.parse::<i128>()? * 1_000_000_000 + frac.parse::<i128>()?)
}

/// Messages per second from the first received to the last (`%U` times first on each line).
fn drain_rate(received: &str) -> Result<String> {
    let times = received
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|t| Ok(unix_ns(t)? as f64 / 1e9))
        .collect::<Result<Vec<f64>>>()?;
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        bail!("nothing arrived after the outage");
    };
    if last <= first {
        bail!("the messages after the outage arrived at one instant: no rate");
    }
    Ok(format!("{:.0}", (times.len() - 1) as f64 / (last - first)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_env;

    fn alert(path: &str) -> String {
        format!(r#"{{"body":{{"kind":"unknown_executable","path":"{path}"}}}}"#)
    }

    #[test]
    fn latencies_match_execs_to_their_alerts_once() {
        let sent = HashMap::from([("/w/bin/l1".to_string(), 1_000_000_000_000_000_000i128)]);
        let received = format!(
            "1000000000.003240 {}\n1000000000.004000 {}\n1000000000.005 {}\n",
            alert("/w/bin/l1"),
            alert("/w/bin/l1"),
            alert("/other")
        );
        assert_eq!(latencies_ms(&sent, &received).unwrap(), vec![3.24]);
    }

    #[test]
    fn drain_rate_counts_intervals() {
        assert_eq!(drain_rate("10.0 a\n10.5 b\n11.0 c\n").unwrap(), "2");
        assert!(drain_rate("").is_err());
        assert!(drain_rate("10.0 a\n").is_err());
    }

    #[test]
    fn reporting_section() {
        let dir = std::env::temp_dir().join(format!("xtask-reporting-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let latency = file(
            "latency.out",
            &format!("1.003 {}\n1.010 {}\n", alert("/b/l1"), alert("/b/l2")),
        );
        let drain = file("drain.out", "5.0 x\n5.1 y\n5.2 z\n");
        let log = file(
            "agent.log",
            "sensor: 2 events lost (ring buffer full; total 2)\n",
        );
        let samples = format!(
            "profile release\nbacklog 3\nsent 1000000000 /b/l1\nsent 1000000000 /b/l2\n\
             latency_out {latency}\ndrain_out {drain}\nagent_log {log}\ngot 3\nrss_kib 41000\n"
        );
        let r = report(&Samples::parse(&samples), &test_env()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            r.printed,
            "| measure | value | target |
| --- | --- | --- |
| exec → subscriber latency, p50 | 10.00 ms | |
| exec → subscriber latency, p99 | 10.00 ms | < 50 ms: met |
| spool drain rate after an outage (3 of 3 unknown executables arrived; events lost by the sensors meanwhile: 2) | 10 alerts/s | |
| agent peak RSS during the run | 40 MiB | |"
        );
        assert!(r.sections[0].1.starts_with("## Reporting\n\n`bench/report.sh` (2 cores, 24 GiB, kernel 6.1.0, commit abc1234), release build: a real"));
        assert!(r.sections[0].1.contains("\n2 execs of unknown binaries"));
        assert!(r.sections[0].1.ends_with(&format!("\n\n{}", r.printed)));
    }
}
