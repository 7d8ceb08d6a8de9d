//! An alert query's parameters as the CLI and the HTTP API take them (text), checked and
//! turned into an [`AlertFilter`].

use std::time::UNIX_EPOCH;

use serde_json::Value;

use crate::store::AlertFilter;

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

/// Checks that `kind` is an alert kind of the protocol, or of the alerts the backend raises
/// itself ([`crate::store::presence::BACKEND_KINDS`]).
pub fn check_kind(kind: &str) -> Result<(), String> {
    if crate::store::presence::BACKEND_KINDS.contains(&kind) {
        return Ok(());
    }
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
        ..Default::default()
    })
}

/// Checks a triage state (`open`, `acknowledged` or `resolved`).
pub fn check_triage(state: &str) -> Result<(), String> {
    if crate::store::TRIAGE_STATES.contains(&state) {
        Ok(())
    } else {
        Err(format!(
            "unknown triage state `{state}` (open, acknowledged or resolved)"
        ))
    }
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
}
