//! Query parameters shared by the CLI and the HTTP API, and the tables the CLI prints.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::store::{AlertFilter, AlertRow, DeviceRow, Gap, PolicyResultRow, RefusedRow};

/// The most alerts one query returns.
pub const MAX_LIMIT: u64 = 100_000;
/// What a query returns when it names no limit.
pub const DEFAULT_LIMIT: u64 = 1000;

/// `since`: a duration back from now (`90s`, `15m`, `1h`, `7d`) or an RFC 3339 time
/// (`2026-01-31T12:00:00Z`). Returns milliseconds since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    if s.contains('-') && s.contains('T') {
        let t = humantime::parse_rfc3339_weak(s)
            .map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))?;
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("`{s}` is before 1970"))?
            .as_millis();
        return Ok(ms as u64);
    }
    let d = crate::config::parse_duration(s)
        .map_err(|e| format!("since: {e} (or give an RFC 3339 time)"))?;
    Ok(now_ms.saturating_sub(d.as_millis() as u64))
}

/// Checks that `kind` is an alert kind of the protocol.
pub fn check_kind(kind: &str) -> Result<(), String> {
    serde_json::from_value::<picket_proto::AlertKind>(Value::String(kind.into()))
        .map(|_| ())
        .map_err(|_| format!("unknown alert kind `{kind}`"))
}

pub fn check_severity(severity: &str) -> Result<(), String> {
    serde_json::from_value::<picket_proto::Severity>(Value::String(severity.into()))
        .map(|_| ())
        .map_err(|_| format!("unknown severity `{severity}` (medium, high or critical)"))
}

/// Builds and checks an alert filter from its textual parts.
pub fn alert_filter(
    device: Option<String>,
    since: Option<&str>,
    kind: Option<String>,
    severity: Option<String>,
    limit: Option<u64>,
    now_ms: u64,
) -> Result<AlertFilter, String> {
    if let Some(d) = &device {
        picket_proto::topic::check_device_id(d).map_err(|e| e.to_string())?;
    }
    if let Some(k) = &kind {
        check_kind(k)?;
    }
    if let Some(s) = &severity {
        check_severity(s)?;
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(format!("limit must be between 1 and {MAX_LIMIT}"));
    }
    Ok(AlertFilter {
        device,
        since_ms: since.map(|s| parse_since(s, now_ms)).transpose()?,
        kind,
        severity,
        limit: Some(limit),
    })
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
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
                opt(&counter(&["rss_bytes"]).map(|b| format!("{} KiB", b / 1024))),
                opt(&lost),
                opt(&counter(&["spool_pending"])),
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
            "RSS",
            "LOST EVENTS",
            "SPOOLED",
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
                a.seq.to_string(),
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
                if g.restart {
                    "agent restart (rest of a reserved block)".into()
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
    fn parses_since_and_checks_filters() {
        assert_eq!(parse_since("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(
            parse_since("2026-01-01T00:00:00Z", 0),
            Ok(1_767_225_600_000)
        );
        assert!(parse_since("yesterday", 0).is_err());
        assert!(alert_filter(None, None, Some("nope".into()), None, None, 0).is_err());
        assert!(alert_filter(None, None, None, Some("low".into()), None, 0).is_err());
        assert!(alert_filter(Some("a/b".into()), None, None, None, None, 0).is_err());
        assert!(alert_filter(None, None, None, None, Some(0), 0).is_err());
        let f = alert_filter(
            Some("gw-1".into()),
            Some("10s"),
            Some("unknown_executable".into()),
            Some("high".into()),
            None,
            20_000,
        )
        .unwrap();
        assert_eq!(f.since_ms, Some(10_000));
        assert_eq!(f.limit, Some(DEFAULT_LIMIT));
    }

    #[test]
    fn tables_align() {
        let t = gaps_table(&[Gap {
            device_id: "gw-1".into(),
            first_missing: 4,
            last_missing: 6,
            missing: 3,
            restart: false,
        }]);
        assert_eq!(
            t,
            "DEVICE  MISSING SEQ  COUNT  CAUSE\ngw-1    4-6          3      missing\n"
        );
    }
}
