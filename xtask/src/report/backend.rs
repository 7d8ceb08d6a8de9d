//! bench/backend.sh: the fleet backend's ingest rate into SQLite and PostgreSQL, and the
//! latency of alert queries. The "Backend" section.
//!
//! Samples: `profile`, `alerts`, `rows`, `devices`, `runs`, `deadline`; `sqlite_ingest` and
//! `pg_ingest` (the JSON result of `bench_publish`), `sqlite_reconnections`,
//! `pg_reconnections` (one per instance), `share` (alerts each PostgreSQL instance stored, one
//! per instance), `serve_cpu_before`, `serve_cpu_after`, `broker_cpu_before`,
//! `broker_cpu_after` (seconds, around the SQLite ingest); `fill_ns`, `db_mib`; per query run
//! `q_dev_ns`, `q_kind_ns`, `q_rare_ns`, `q_all_ns`, `q_http_ns`, `q_http_rare_ns`; `rare`
//! (alerts_dropped alerts in the last hour); per request of the console, its server time
//! (`api_*_ns`, see [`API`]); `live_ns`, per alert published, the time until it reached an open
//! `/api/events` stream.

use super::{us, Env, Report};
use crate::samples::{number, Samples};
use crate::stats::{median, percent, percentile, rounded};
use anyhow::{Context, Result};

/// One ingest run, from `bench_publish`'s JSON result.
struct Ingest {
    rate: String,
    publish_rate: String,
    secs: (String, f64),
    stored: u64,
}

fn ingest(json: &str) -> Result<Ingest> {
    let r: serde_json::Value = serde_json::from_str(json).context("bench_publish's result")?;
    let field = |k: &str| {
        r[k].as_f64()
            .with_context(|| format!("no {k} in bench_publish's result"))
    };
    let span = (field("last_received_ms")? - field("first_publish_ms")?).max(1.0) / 1000.0;
    let publish = (field("published_ms")? - field("first_publish_ms")?).max(1.0) / 1000.0;
    let stored = field("stored")?;
    Ok(Ingest {
        rate: format!("{:.0}", stored / span),
        publish_rate: format!("{:.0}", field("published")? / publish),
        secs: rounded(span, 1),
        stored: stored as u64,
    })
}

/// The median of the query times recorded under `key` (ns, each taken in whole µs), in
/// milliseconds with one decimal.
fn query_ms(s: &Samples, key: &str) -> Result<String> {
    let us = median(&us(&s.nums(key)?)).with_context(|| key.to_string())?;
    Ok(format!("{:.1}", us / 1000.0))
}

/// The console's requests measured: sample key and what the row says.
const API: &[(&str, &str)] = &[
    ("api_overview_ns", "`GET /api/overview`"),
    (
        "api_first_ns",
        "`GET /api/alerts?limit=50` (first page, no filter)",
    ),
    ("api_device_ns", "… `&device=q-0042` (1 alert in 100)"),
    ("api_kind_ns", "… `&kind=alerts_dropped` (1 in 10007)"),
    ("api_severity_ns", "… `&severity=critical` (1 in 7)"),
    ("api_text_ns", "… `&q=tool42` (text, 1 in 500)"),
    ("api_triage_ns", "… `&triage=acknowledged` (1 in 1000)"),
    ("api_open_ns", "… `&triage=open`"),
    ("api_before_ns", "… `&triage=open&before=ID` (second page)"),
    (
        "api_alert_ns",
        "`GET /api/alerts/ID` (one alert, with its OCSF finding)",
    ),
];

/// The median and range of the times recorded under `key` (ns), in milliseconds.
fn api_ms(s: &Samples, key: &str) -> Result<String> {
    let v = us(&s.nums(key)?);
    let m = median(&v).with_context(|| key.to_string())? / 1000.0;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min) / 1000.0;
    let max = v.iter().copied().fold(0.0, f64::max) / 1000.0;
    Ok(format!("{m:.1} ms ({min:.1}–{max:.1})"))
}

/// The table of the console's requests, on SQLite and PostgreSQL.
fn console_table(s: &Samples) -> Result<String> {
    let mut out = format!(
        "| console request: server time, median (min–max) of {} | SQLite, {} alerts | PostgreSQL, {} alerts |\n| --- | --- | --- |",
        s.text("runs")?,
        s.text("rows")?,
        s.text("pg_rows")?
    );
    for (key, what) in API {
        out.push_str(&format!(
            "\n| {what} | {} | {} |",
            api_ms(s, key)?,
            api_ms(s, &format!("pg_{key}"))?
        ));
    }
    Ok(out)
}

/// The row of the live stream.
fn live_row(s: &Samples) -> Result<String> {
    let mut out = String::new();
    let mut live: Vec<f64> = us(&s.nums("live_ns")?).iter().map(|v| v / 1000.0).collect();
    live.sort_by(f64::total_cmp);
    out.push_str(&format!(
        "\n| live: alert published → on an open `/api/events` stream, median / p99 / max of {} | {:.0} / {:.0} / {:.0} ms |",
        live.len(),
        median(&live)?,
        percentile(&live, 0.99)?,
        live.last().copied().unwrap_or(0.0),
    ));
    Ok(out)
}

fn table(s: &Samples) -> Result<String> {
    let sq = ingest(s.text("sqlite_ingest")?)?;
    let pg = ingest(s.text("pg_ingest")?)?;
    let alerts = s.text("alerts")?;
    let sum = |key: &str| -> Result<f64> { Ok(s.nums(key)?.iter().sum()) };
    let shares = s.all("share").join(" / ");
    let cpu = |who: &str| -> Result<String> {
        let used = s.num(&format!("{who}_cpu_after"))? - s.num(&format!("{who}_cpu_before"))?;
        Ok(percent(used, sq.secs.1))
    };
    let (fill_secs, fill_value) = rounded(s.num("fill_ns")? / 1e9, 1);
    let fill_rate = format!(
        "{:.0}",
        if fill_value > 0.0 {
            s.num("rows")? / fill_value
        } else {
            0.0
        }
    );
    Ok(format!(
        "| measure | value |
| --- | --- |
| ingest, SQLite, 1 instance | {sq_rate} alerts/s ({sq_stored} of {alerts} stored in {sq_secs} s; {sq_reconn} reconnections) |
| ingest, PostgreSQL, 2 instances sharing the load | {pg_rate} alerts/s ({pg_stored} of {alerts} stored in {pg_secs} s, shares {shares}; {pg_reconn} reconnections) |
| publishers → broker alone (QoS 1 acknowledged), SQLite run / PostgreSQL run | {sq_pub} / {pg_pub} alerts/s |
| CPU during the SQLite ingest: `serve` / Mosquitto | {cpu_serve} % / {cpu_broker} % of one core |
| filling the query store: {rows} alerts, python3 sqlite3, one transaction | {fill_rate} alerts/s ({fill_secs} s, {db_mib} MiB) |
| `alerts --device D --since 1h --limit 100 --json` | {q_dev} ms |
| `alerts --kind suspicious_exec --since 1h --limit 100 --json` (1 alert in 10) | {q_kind} ms |
| `alerts --kind alerts_dropped --since 1h --limit 100 --json` (1 in 10007; {rare} in the last hour) | {q_rare} ms |
| `alerts --limit 100 --json` (no filter) | {q_all} ms |
| `GET /api/alerts?device=D&since=1h&limit=100` | {q_http} ms |
| `GET /api/alerts?kind=alerts_dropped&since=1h&limit=100` | {q_http_rare} ms |{live}",
        sq_rate = sq.rate,
        sq_stored = sq.stored,
        sq_secs = sq.secs.0,
        sq_reconn = sum("sqlite_reconnections")?,
        pg_rate = pg.rate,
        pg_stored = pg.stored,
        pg_secs = pg.secs.0,
        pg_reconn = sum("pg_reconnections")?,
        sq_pub = sq.publish_rate,
        pg_pub = pg.publish_rate,
        cpu_serve = cpu("serve")?,
        cpu_broker = cpu("broker")?,
        rows = s.text("rows")?,
        db_mib = s.text("db_mib")?,
        q_dev = query_ms(s, "q_dev_ns")?,
        q_kind = query_ms(s, "q_kind_ns")?,
        rare = number(s.text("rare")?)?,
        q_rare = query_ms(s, "q_rare_ns")?,
        q_all = query_ms(s, "q_all_ns")?,
        q_http = query_ms(s, "q_http_ns")?,
        q_http_rare = query_ms(s, "q_http_rare_ns")?,
        live = live_row(s)?,
    ))
}

pub fn report(s: &Samples, env: &Env) -> Result<Report> {
    let table = format!("{}\n\n{}", table(s)?, console_table(s)?);
    let section = format!(
        "## Backend

`bench/backend.sh` ({machine}), {profile} build. The machine is shared with other
builds and its figures vary from run to run: read them as orders of magnitude.

Ingest: a real Mosquitto with mutual TLS on loopback (certificate CN as user name,
the same per-device ACL as `serve`'s managed broker), {devices} devices publishing {alerts} Postcard alerts (QoS 1,
about 400 bytes each, with a process context) all at once from `backend/examples/bench_publish.rs`,
which then polls the store. Rate = alerts stored / time from the first publish to the latest
`received_ms` in the store. SQLite: one `serve`. PostgreSQL: a cluster started for the run
with its default durability (fsync, synchronous commit), two `serve` instances in one share
group (shares: alerts each stored).

Queries: a SQLite store of {rows} alerts (100 devices, received evenly over the last 24 hours,
so `--since 1h` matches about 1 in 24) created by `serve` and filled by a python3 sqlite3
script with the backend's schema; median wall time of {runs} runs, the CLI's including its
start and the opening of the database, the HTTP API's through curl with `serve` idle.
The ingest stops waiting for the store {deadline} s after the first publish, or when it has not
grown for 30 s: fewer alerts stored than published means the backend did not keep up.

Console: the requests of the console's pages to `serve`'s HTTP API (with an API token), over
the same SQLite store (severities in turn, `critical` 1 alert in 7; 1 in 1000 acknowledged)
and over a PostgreSQL store of {pg_rows} alerts made alike by SQL in the cluster of the ingest
run (then `VACUUM ANALYZE`); server time as curl sees it on loopback (its time to the first byte
of the response less its time to the end of the request), `serve` idle. Live: alerts published
one at a time by `mosquitto_pub` (JSON, QoS 1, a device certificate) while `/api/events` is
open, each after the previous one arrived and a random pause; the time from just before
`mosquitto_pub` starts (its TLS connection included) to the event on the stream.

{table}

{analysis}",
        machine = env.machine,
        profile = s.text("profile")?,
        devices = s.text("devices")?,
        alerts = s.text("alerts")?,
        rows = s.text("rows")?,
        runs = s.text("runs")?,
        pg_rows = s.text("pg_rows")?,
        deadline = s.text("deadline")?,
        analysis = ANALYSIS,
    );
    Ok(Report {
        printed: table,
        sections: vec![("Backend", section)],
    })
}

/// What the figures mean, kept with them in the section.
const ANALYSIS: &str = "What is slow, and why:

- **The ingest takes a burst.** `serve` announces an MQTT receive maximum of 256: the broker
  has at most that many messages in flight to it and queues the rest (which is why the broker
  needs a queue as large as the bursts, `max_queued_messages`, see docs/BACKEND.md). One task
  polls the connection without waiting for the store; a second stores everything received so
  far (up to 256) in one transaction and acknowledges it after the commit, through a request
  queue twice the receive maximum, which cannot fill. No reconnection in either run (before:
  19 alerts/s into SQLite, 113 into PostgreSQL, with 70 and 133 reconnections, when each
  message had its own transaction and a full acknowledgement queue dropped the connection).
- **SQLite keeps up with the publishers; PostgreSQL's commits are what is left.** Into SQLite
  the ingest stored the burst about 1 s after the devices had published it (in about 0.9 s),
  with `serve` using a bit over half a core (TLS, decoding, logging each alert, SQLite). Into PostgreSQL at its default durability, each batch's commit waits
  for a WAL flush (an fsync) on this machine's disk; two instances share the messages, so each
  commits its own smaller batches. More instances or `synchronous_commit = off` would trade
  durability or resources for rate; not measured here.
- **Alert queries read only what their filters select.** The `WHERE` clause has only the
  filters given, and the alerts are ordered `received_ms DESC, device_id DESC, seq DESC`,
  the order in which the indexes on `received_ms`, `(device_id, received_ms)` and
  `(kind, received_ms)` are read backwards (their entries end with the primary key), so a query
  reads its first `--limit` rows through the index of its filters and stops (the store tests
  check the plans with `EXPLAIN QUERY PLAN`). Before: every query read the whole store, about
  250 ms per million alerts whatever the filter. What is left of the CLI's time is mostly its
  own start and the opening of the database; the HTTP API's includes the JSON of 100 alerts.
  Filling the store is slower than before (three secondary indexes to maintain instead of one):
  the price of these queries on every insert.
- **The overview reads counts, not alerts.** `GET /api/overview` counted the alerts by
  severity, and the last 24 hours' by hour, severity and kind, by reading every one: 1.45 s
  (1.42–1.51) over the 1,000,000 alerts of SQLite (all received in the last 24 hours, its worst
  case), and its device list counted each device's alerts again. The store now keeps these
  counts as it stores and removes alerts, in the same transaction: `alert_totals` per device
  and severity, `alert_hours` per hour, device, severity and kind (the quota and retention
  subtract what they delete; the store tests check, on SQLite and PostgreSQL, that they equal a
  count of the alerts after each), and the device list takes `devices.stored_alerts`. The
  overview now reads at most one row per device and severity, and one per device, hour,
  severity and kind of the last 24 hours (here 100 devices × 24 hours × the 35 pairs of
  severity and kind the fill gives: most of what is left of its time); the price is two small
  writes more per alert stored. A fleet of many more devices, each with many kinds of alert
  every hour, makes the overview slower in proportion.
- **Every request of the console reads through an index.** Each filter has one that bounds it
  and gives the order asked for (`received_ms`, `(device_id, received_ms)`,
  `(kind, received_ms)`, and now `(severity, received_ms)`, all ending with `id`): a page reads
  its 50 rows and stops; `before` reads the cursor's alert by id. The text filter (`q`) and the
  triage filters read the alerts newest first until the page is full: quick when matches are
  common, as here, but a text found in no alert reads every alert (of the `since`/`until`
  window, when given). `triage=open` was `t.state IS NULL OR t.state = 'open'` on the join,
  which PostgreSQL answered by joining every alert before the limit (621 ms here); it is now
  `NOT EXISTS` a triage other than open, read per alert through the triage's key. The SQLite
  plans are checked by the store tests (`EXPLAIN QUERY PLAN`); PostgreSQL's by these figures.
- **A live alert reaches an open page within a poll.** `/api/events` polls the store every
  250 ms for alerts of a higher id, so an alert stored just after a poll waits for the next:
  the median is about half a poll plus `mosquitto_pub`'s start and TLS connection and the
  batch's commit, the slowest about a poll plus these.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_env;

    const SAMPLES: &str = r#"profile release
alerts 10000
rows 1000000
pg_rows 100000
devices 10
runs 3
deadline 90
sqlite_ingest {"stored":10000,"published":10000,"first_publish_ms":1000,"published_ms":1896,"last_received_ms":3150}
serve_cpu_before 1.5
broker_cpu_before 0.25
serve_cpu_after 2.77
broker_cpu_after 0.87
sqlite_reconnections 0
pg_ingest {"stored":10000,"published":10000,"first_publish_ms":1000,"published_ms":1433,"last_received_ms":11480}
pg_reconnections 1
pg_reconnections 2
share 5000
share 5000
fill_ns 60300000000
db_mib 524
rare 0
q_dev_ns 11800000
q_dev_ns 12000000
q_dev_ns 11000000
q_kind_ns 17200000
q_rare_ns 6500000
q_all_ns 13900000
q_http_ns 23500000
q_http_rare_ns 14700000
api_overview_ns 3100000
api_overview_ns 2900000
api_overview_ns 12000000
api_first_ns 2500000
api_device_ns 2500000
api_kind_ns 2500000
api_severity_ns 2500000
api_text_ns 2500000
api_triage_ns 2500000
api_open_ns 2500000
api_before_ns 2500000
api_alert_ns 2500000
pg_api_overview_ns 4000000
pg_api_first_ns 4000000
pg_api_device_ns 4000000
pg_api_kind_ns 4000000
pg_api_severity_ns 4000000
pg_api_text_ns 4000000
pg_api_triage_ns 4000000
pg_api_open_ns 4000000
pg_api_before_ns 4000000
pg_api_alert_ns 4000000
live_ns 120000000
live_ns 180000000
live_ns 260000000
"#;

    #[test]
    fn backend_section() {
        let r = report(&Samples::parse(SAMPLES), &test_env()).unwrap();
        let lines: Vec<&str> = r.printed.lines().collect();
        assert_eq!(lines[2], "| ingest, SQLite, 1 instance | 4651 alerts/s (10000 of 10000 stored in 2.1 s; 0 reconnections) |");
        assert_eq!(lines[3], "| ingest, PostgreSQL, 2 instances sharing the load | 954 alerts/s (10000 of 10000 stored in 10.5 s, shares 5000 / 5000; 3 reconnections) |");
        assert_eq!(lines[4], "| publishers → broker alone (QoS 1 acknowledged), SQLite run / PostgreSQL run | 11161 / 23095 alerts/s |");
        assert_eq!(
            lines[5],
            "| CPU during the SQLite ingest: `serve` / Mosquitto | 60 % / 30 % of one core |"
        );
        assert_eq!(lines[6], "| filling the query store: 1000000 alerts, python3 sqlite3, one transaction | 16584 alerts/s (60.3 s, 524 MiB) |");
        assert_eq!(
            lines[7],
            "| `alerts --device D --since 1h --limit 100 --json` | 11.8 ms |"
        );
        assert_eq!(lines[9], "| `alerts --kind alerts_dropped --since 1h --limit 100 --json` (1 in 10007; 0 in the last hour) | 6.5 ms |");
        assert_eq!(lines[13], "| live: alert published → on an open `/api/events` stream, median / p99 / max of 3 | 180 / 260 / 260 ms |");
        assert_eq!(lines[15], "| console request: server time, median (min–max) of 3 | SQLite, 1000000 alerts | PostgreSQL, 100000 alerts |");
        assert_eq!(
            lines[17],
            "| `GET /api/overview` | 3.1 ms (2.9–12.0) | 4.0 ms (4.0–4.0) |"
        );
        assert_eq!(lines.len(), 27);
        let section = &r.sections[0].1;
        assert!(section.starts_with("## Backend\n\n`bench/backend.sh` (2 cores, 24 GiB, kernel 6.1.0, commit abc1234), release build."));
        assert!(section.contains("), 10 devices publishing 10000 Postcard alerts (QoS 1,\n"));
        assert!(section.contains(&format!("\n\n{}\n\nWhat is slow, and why:\n", r.printed)));
        assert!(section.ends_with("batch's commit, the slowest about a poll plus these."));
    }

    #[test]
    fn an_ingest_result_without_its_fields_is_an_error() {
        let text = SAMPLES.replace(r#""stored":10000,"published":10000,"first"#, r#""first"#);
        assert!(report(&Samples::parse(&text), &test_env()).is_err());
    }
}
