//! The fleet backend as a library: what `picket-backend` (`src/main.rs`) runs. Documented in
//! `docs/BACKEND.md`. An alert goes, in folders: [`ingest`] (the MQTT subscription, each
//! message checked or refused) → [`store`] (SQLite or PostgreSQL) → [`api`] (the HTTP JSON
//! API) and [`cmd`] (the commands: `serve`, the queries, `policy push`), with [`export`] (OCSF)
//! for both; [`broker`] configures and runs the managed Mosquitto.

#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod cmd;
pub mod config;
pub mod console;
pub mod export;
pub mod forward;
pub mod ingest;
pub mod newest;
pub mod store;
pub mod tls;

/// `ms` (since the epoch) in RFC 3339, to the millisecond or the second; `None` past the year
/// 9999, which RFC 3339 cannot write (a device's clock, and so its alerts' times, are its own).
pub fn rfc3339(ms: u64, millis: bool) -> Option<String> {
    const LAST_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    (ms <= LAST_MS).then(|| {
        if millis {
            humantime::format_rfc3339_millis(t).to_string()
        } else {
            humantime::format_rfc3339_seconds(t).to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_past_the_year_9999_have_no_rfc3339_form() {
        assert_eq!(
            super::rfc3339(253_402_300_799_999, true).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        assert_eq!(super::rfc3339(253_402_300_800_000, true), None);
        assert_eq!(super::rfc3339(u64::MAX, false), None);
        assert_eq!(
            super::rfc3339(0, false).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
    }
}
