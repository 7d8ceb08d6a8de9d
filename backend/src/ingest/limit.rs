//! Per-device limits of the ingest: a token bucket on the alerts each device sends, so that
//! one device flooding alerts cannot have them all stored, and the throttling of what is
//! logged about a device over its limit or its quota. No I/O: the time is given (ms of a
//! monotonic clock), so that the arithmetic is tested without waiting.

use std::collections::HashMap;

use crate::config::LimitsConfig;

/// How often, at most, a device over its limit or quota is logged.
pub const LOG_EVERY_MS: u64 = 60_000;

/// Tokens are counted in thousandths: a second refills `alerts_per_second` alerts, that is
/// `alerts_per_second` thousandths per millisecond, exactly.
const MILLI: u64 = 1000;

/// The limits and every device's bucket.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Thousandths of a token per ms (= alerts per second).
    rate: u64,
    /// The bucket's size in thousandths.
    capacity: u64,
    /// Stored alerts kept per device.
    pub max_alerts_per_device: u64,
    devices: HashMap<String, DeviceState>,
    /// Refused messages by device (empty when the topic named none) and reason.
    refusals: HashMap<(String, &'static str), Reported>,
    /// The origin of [`Limits::now_ms`].
    epoch: std::time::Instant,
}

/// Some devices' buckets, as they were ([`Limits::snapshot`]).
#[derive(Debug)]
pub struct Snapshot(Vec<(String, Option<DeviceState>)>);

#[derive(Debug, Clone)]
struct DeviceState {
    /// Thousandths of a token, at `at_ms`.
    tokens: u64,
    at_ms: u64,
    limited: Reported,
    removed: Reported,
}

/// What was not stored since it was last logged, and when that was.
#[derive(Debug, Clone, Default)]
struct Reported {
    unlogged: u64,
    logged_ms: Option<u64>,
}

impl Reported {
    /// Counts `n` more; `Some(count since the last log line)` when a line is due now.
    fn add(&mut self, n: u64, now_ms: u64) -> Option<u64> {
        self.unlogged += n;
        let due = self
            .logged_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= LOG_EVERY_MS);
        due.then(|| {
            self.logged_ms = Some(now_ms);
            std::mem::take(&mut self.unlogged)
        })
    }
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            rate: u64::from(config.alerts_per_second),
            capacity: u64::from(config.alert_burst) * MILLI,
            max_alerts_per_device: config.max_alerts_per_device,
            devices: HashMap::new(),
            refusals: HashMap::new(),
            epoch: std::time::Instant::now(),
        }
    }

    /// Milliseconds since these limits were made, on the monotonic clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The limits as the log says them (`10/s, burst 100000`).
    pub fn describe(&self) -> String {
        format!("{}/s, burst {}", self.rate, self.capacity / MILLI)
    }

    fn device(&mut self, device: &str, now_ms: u64) -> &mut DeviceState {
        if !self.devices.contains_key(device) {
            // A device first heard of has a full bucket.
            self.devices.insert(
                device.to_string(),
                DeviceState {
                    tokens: self.capacity,
                    at_ms: now_ms,
                    limited: Reported::default(),
                    removed: Reported::default(),
                },
            );
        }
        let (rate, capacity) = (self.rate, self.capacity);
        let state = self
            .devices
            .get_mut(device)
            .expect("inserted above when missing");
        let elapsed = now_ms.saturating_sub(state.at_ms);
        state.tokens = state
            .tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        state.at_ms = state.at_ms.max(now_ms);
        state
    }

    /// Takes one alert of `device` at `now_ms`: `true` when it is within the limit.
    pub fn admit(&mut self, device: &str, now_ms: u64) -> bool {
        let state = self.device(device, now_ms);
        if state.tokens >= MILLI {
            state.tokens -= MILLI;
            true
        } else {
            false
        }
    }

    /// The state of `devices` (topics' device parts), for [`Limits::restore`].
    pub fn snapshot<'a>(&self, devices: impl Iterator<Item = &'a [u8]>) -> Snapshot {
        let mut saved: Vec<(String, Option<DeviceState>)> = Vec::new();
        for device in devices {
            let device = String::from_utf8_lossy(device);
            if saved.last().is_some_and(|(d, _)| *d == device) {
                continue;
            }
            let state = self.devices.get(device.as_ref()).cloned();
            saved.push((device.into_owned(), state));
        }
        Snapshot(saved)
    }

    /// Puts the devices of `snapshot` back as they were.
    pub fn restore(&mut self, snapshot: Snapshot) {
        for (device, state) in snapshot.0 {
            match state {
                Some(state) => self.devices.insert(device, state),
                None => self.devices.remove(&device),
            };
        }
    }

    /// Notes an alert of `device` over its limit: `Some(how many since the last line)` when
    /// a log line is due (the first, then at most one per [`LOG_EVERY_MS`]).
    pub fn limited(&mut self, device: &str, now_ms: u64) -> Option<u64> {
        self.device(device, now_ms).limited.add(1, now_ms)
    }

    /// Notes a message of `device` refused for `reason`, as [`Limits::limited`].
    pub fn refused(&mut self, device: &str, reason: &'static str, now_ms: u64) -> Option<u64> {
        self.refusals
            .entry((device.to_string(), reason))
            .or_default()
            .add(1, now_ms)
    }

    /// Notes `n` alerts of `device` removed over its quota, as [`Limits::limited`].
    pub fn removed(&mut self, device: &str, n: u64, now_ms: u64) -> Option<u64> {
        self.device(device, now_ms).removed.add(n, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32) -> Limits {
        Limits::new(&LimitsConfig {
            alerts_per_second: per_second,
            alert_burst: burst,
            max_alerts_per_device: u64::from(burst),
        })
    }

    /// How many of `n` alerts at `now_ms` are admitted.
    fn admitted(l: &mut Limits, device: &str, n: u32, now_ms: u64) -> u32 {
        (0..n).filter(|_| l.admit(device, now_ms)).count() as u32
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_refills_at_the_rate() {
        let mut l = limits(10, 50);
        assert_eq!(admitted(&mut l, "gw-1", 80, 1_000), 50);
        // 10 per second: one every 100 ms, none in between.
        assert_eq!(admitted(&mut l, "gw-1", 5, 1_099), 0);
        assert_eq!(admitted(&mut l, "gw-1", 5, 1_100), 1);
        assert_eq!(admitted(&mut l, "gw-1", 5, 1_150), 0);
        // Half a token kept across calls: 1_150 + 50 ms completes it.
        assert_eq!(admitted(&mut l, "gw-1", 5, 1_200), 1);
        // 2.5 s: 25 alerts.
        assert_eq!(admitted(&mut l, "gw-1", 100, 3_700), 25);
        // A long silence refills the bucket to its size, never beyond.
        assert_eq!(admitted(&mut l, "gw-1", 200, 1_000_000), 50);
    }

    #[test]
    fn a_steady_device_under_the_rate_is_never_limited() {
        let mut l = limits(10, 20);
        // 9 per second for an hour, evenly spread.
        for i in 0..9 * 3600u64 {
            assert!(l.admit("gw-1", 1_000 + i * 1000 / 9), "alert {i}");
        }
    }

    #[test]
    fn devices_have_buckets_of_their_own() {
        let mut l = limits(1, 3);
        assert_eq!(admitted(&mut l, "flood", 100, 0), 3);
        assert_eq!(admitted(&mut l, "quiet", 3, 0), 3);
        assert_eq!(admitted(&mut l, "flood", 1, 0), 0);
        assert_eq!(admitted(&mut l, "quiet", 1, 1_000), 1);
    }

    #[test]
    fn the_clock_going_back_refills_nothing() {
        let mut l = limits(1, 2);
        assert_eq!(admitted(&mut l, "gw-1", 2, 5_000), 2);
        assert_eq!(admitted(&mut l, "gw-1", 1, 4_000), 0);
        // The refill resumes from the latest time seen.
        assert_eq!(admitted(&mut l, "gw-1", 1, 5_999), 0);
        assert_eq!(admitted(&mut l, "gw-1", 1, 6_000), 1);
    }

    #[test]
    fn log_lines_are_limited_to_one_a_minute_per_device_and_kind() {
        let mut l = limits(1, 1);
        assert_eq!(l.limited("gw-1", 0), Some(1), "the first one is logged");
        assert_eq!(l.limited("gw-1", 1), None);
        assert_eq!(l.limited("gw-1", LOG_EVERY_MS - 1), None);
        assert_eq!(l.removed("gw-1", 4, 10), Some(4), "quota removals apart");
        assert_eq!(l.limited("gw-2", 2), Some(1), "another device apart");
        // The next line says how many since the previous one.
        assert_eq!(l.limited("gw-1", LOG_EVERY_MS), Some(3));
        assert_eq!(l.removed("gw-1", 1, LOG_EVERY_MS), None);
        assert_eq!(l.removed("gw-1", 2, LOG_EVERY_MS + 10), Some(3));
        // Refusals, by device and reason.
        assert_eq!(l.refused("gw-1", "malformed", 0), Some(1));
        assert_eq!(l.refused("gw-1", "malformed", 5), None);
        assert_eq!(l.refused("gw-1", "oversized", 5), Some(1));
        assert_eq!(l.refused("", "foreign_topic", 5), Some(1));
        assert_eq!(l.refused("gw-1", "malformed", LOG_EVERY_MS), Some(2));
    }
}
