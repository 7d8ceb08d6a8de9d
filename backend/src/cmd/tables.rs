//! The tables the query commands print.

use serde_json::Value;

use crate::store::{AlertRow, DeviceRow, Gap, PolicyResultRow, PresenceChange, RefusedRow};

fn time(ms: u64) -> String {
    crate::rfc3339(ms, false).unwrap_or_else(|| format!("{ms} ms"))
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    out
}

pub fn devices_table(devices: &[DeviceRow]) -> String {
    let rows = devices
        .iter()
        .map(|d| {
            let counter = |path: &[&str]| {
                let mut v = d.counters.as_ref();
                for p in path {
                    v = v.and_then(|v| v.get(p));
                }
                v.and_then(Value::as_u64)
            };
            let lost: Option<u64> = d
                .counters
                .as_ref()
                .and_then(|c| c.get("sensors"))
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(|s| s["lost"].as_u64()).sum());
            vec![
                d.device_id.clone(),
                d.state.to_string(),
                time(d.last_seen_ms),
                opt(&d.agent_version),
                match (&d.policy_name, d.policy_serial) {
                    (Some(n), Some(s)) => format!("{n} #{s}"),
                    (None, Some(s)) => format!("#{s}"),
                    _ => "-".into(),
                },
                d.alerts.to_string(),
                d.rate_limited.to_string(),
                d.quota_removed.to_string(),
                d.presence_limited.to_string(),
                opt(&counter(&["rss_bytes"]).map(|b| format!("{} KiB", b / 1024))),
                opt(&lost),
                opt(&counter(&["spool_pending"])),
                opt(&counter(&["exec_unverified"])),
            ]
        })
        .collect();
    table(
        &[
            "DEVICE",
            "STATE",
            "LAST SEEN",
            "AGENT",
            "POLICY",
            "ALERTS",
            "RATE LIMITED",
            "OVER QUOTA",
            "PRESENCE LIMITED",
            "RSS",
            "LOST EVENTS",
            "SPOOLED",
            "UNVERIFIED EXECS",
        ],
        rows,
    )
}

pub fn alerts_table(alerts: &[AlertRow]) -> String {
    let rows = alerts
        .iter()
        .map(|a| {
            let process = a.process.as_ref().map(|p| {
                let exe = p["exe"].as_str().unwrap_or("?");
                match p["pid"].as_u64() {
                    Some(pid) => format!("{exe} [{pid}]"),
                    None => exe.to_string(),
                }
            });
            vec![
                time(a.received_ms),
                a.device_id.clone(),
                if a.format == crate::store::presence::BACKEND_FORMAT {
                    // Raised by the backend: not in the device's sequence.
                    "backend".to_string()
                } else {
                    a.seq.to_string()
                },
                a.severity.clone(),
                a.kind.clone(),
                if a.count > 1 {
                    format!("{} (x{})", opt(&a.path), a.count)
                } else {
                    opt(&a.path)
                },
                opt(&process),
            ]
        })
        .collect();
    table(
        &[
            "RECEIVED", "DEVICE", "SEQ", "SEVERITY", "KIND", "PATH", "PROCESS",
        ],
        rows,
    )
}

pub fn presence_table(changes: &[PresenceChange]) -> String {
    let rows = changes
        .iter()
        .map(|c| {
            vec![
                time(c.time_ms),
                c.device_id.clone(),
                c.state.clone(),
                opt(&c.previous),
                opt(&c.boot_id),
                opt(&c.agent_version),
                opt(&c.alert_id),
            ]
        })
        .collect();
    table(
        &[
            "TIME", "DEVICE", "STATE", "PREVIOUS", "BOOT", "AGENT", "ALERT",
        ],
        rows,
    )
}

pub fn gaps_table(gaps: &[Gap]) -> String {
    let rows = gaps
        .iter()
        .map(|g| {
            vec![
                g.device_id.clone(),
                if g.first_missing == g.last_missing {
                    g.first_missing.to_string()
                } else {
                    format!("{}-{}", g.first_missing, g.last_missing)
                },
                g.missing.to_string(),
                if g.reset {
                    "counter reset (the device's state was lost)".into()
                } else if g.restart {
                    "agent restart (rest of a reserved block)".into()
                } else if g.rate_limited == g.missing {
                    "rate limited".into()
                } else if g.rate_limited > 0 {
                    format!("missing ({} rate limited)", g.rate_limited)
                } else {
                    "missing".into()
                },
            ]
        })
        .collect();
    table(&["DEVICE", "MISSING SEQ", "COUNT", "CAUSE"], rows)
}

pub fn refused_table(refused: &[RefusedRow]) -> String {
    let rows = refused
        .iter()
        .map(|r| {
            vec![
                r.reason.clone(),
                if r.device_id.is_empty() {
                    "-".into()
                } else {
                    r.device_id.clone()
                },
                r.count.to_string(),
                time(r.last_ms),
                r.last_error.clone(),
            ]
        })
        .collect();
    table(&["REASON", "DEVICE", "COUNT", "LAST", "LAST ERROR"], rows)
}

pub fn policy_results_table(results: &[PolicyResultRow]) -> String {
    let rows = results
        .iter()
        .map(|r| {
            vec![
                time(r.received_ms),
                r.device_id.clone(),
                r.outcome.clone(),
                match (&r.name, r.serial, &r.reason) {
                    (_, _, Some(reason)) => reason.clone(),
                    (Some(n), Some(s), _) => format!("{n} #{s}"),
                    (None, Some(s), _) => format!("#{s}"),
                    _ => "-".into(),
                },
                r.bundle_sha256.chars().take(16).collect(),
            ]
        })
        .collect();
    table(&["RECEIVED", "DEVICE", "OUTCOME", "POLICY", "BUNDLE"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = gaps_table(&[Gap {
            device_id: "gw-1".into(),
            first_missing: 4,
            last_missing: 6,
            missing: 3,
            restart: false,
            reset: false,
            rate_limited: 0,
        }]);
        assert_eq!(
            t,
            "DEVICE  MISSING SEQ  COUNT  CAUSE\ngw-1    4-6          3      missing\n"
        );
        let gap = |rate_limited| Gap {
            device_id: "gw-1".into(),
            first_missing: 4,
            last_missing: 6,
            missing: 3,
            restart: false,
            reset: false,
            rate_limited,
        };
        let reset = Gap {
            missing: 0,
            reset: true,
            ..gap(0)
        };
        let causes = gaps_table(&[gap(3), gap(2), reset]);
        let causes: Vec<&str> = causes.lines().map(|l| &l[28..]).collect();
        assert_eq!(
            causes[1..],
            [
                "rate limited",
                "missing (2 rate limited)",
                "counter reset (the device's state was lost)"
            ],
            "{causes:?}"
        );
    }

    #[test]
    fn devices_show_the_heartbeat_counters() {
        let device = |id: &str, counters| DeviceRow {
            device_id: id.into(),
            state: "online",
            online: true,
            first_seen_ms: 0,
            last_seen_ms: 0,
            status_ms: None,
            agent_version: Some("0.1.0".into()),
            policy_serial: Some(3),
            policy_name: Some("base".into()),
            boot_id: None,
            heartbeat_ms: None,
            uptime_s: None,
            counters,
            alerts: 2,
            rate_limited: 7,
            quota_removed: 1,
            presence_limited: 4,
        };
        let counters = serde_json::json!({
            "rss_bytes": 4 << 20, "sensors": [{"sensor": "process", "seen": 9, "lost": 1}],
            "spool_pending": 0, "exec_unverified": 5
        });
        // An older agent's heartbeat has no unverified count: shown unknown.
        let mut older = counters.clone();
        older["exec_unverified"] = Value::Null;
        let t = devices_table(&[
            device("gw-1", Some(counters)),
            device("gw-2", Some(older)),
            device("gw-3", None),
        ]);
        let lines: Vec<Vec<&str>> = t
            .lines()
            .map(|l| {
                l.split("  ")
                    .filter(|c| !c.is_empty())
                    .map(str::trim)
                    .collect()
            })
            .collect();
        assert_eq!(lines[0].last(), Some(&"UNVERIFIED EXECS"));
        assert_eq!(
            lines[0][5..9],
            ["ALERTS", "RATE LIMITED", "OVER QUOTA", "PRESENCE LIMITED"]
        );
        assert_eq!(
            lines[1][5..],
            ["2", "7", "1", "4", "4096 KiB", "1", "0", "5"]
        );
        assert_eq!(
            lines[2][5..],
            ["2", "7", "1", "4", "4096 KiB", "1", "0", "-"]
        );
        assert_eq!(lines[3][5..], ["2", "7", "1", "4", "-", "-", "-", "-"]);
    }
}
