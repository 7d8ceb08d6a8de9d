//! Durations as the agent's and the backend's configuration files and command lines write
//! them: `250ms`, `90s`, `15m`, `2h`, `7d`, or a bare number of seconds.

use std::time::Duration;

/// Parses a duration; the error says what is wrong with the text, for the caller to place.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 15m, 2h, 7d"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m, h or d)"
            ))
        }
    }
    .ok_or_else(|| format!("`{s}` is too long"))?;
    if millis == 0 {
        return Err("a duration must be longer than zero".into());
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse(" 5 "), Ok(Duration::from_secs(5)));
        assert!(parse("5y").unwrap_err().contains("unknown unit `y`"));
        assert!(parse("0s").is_err());
        assert!(parse("soon").unwrap_err().contains("not a duration"));
        assert!(parse("").is_err());
        assert!(parse("99999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }
}
