//! Per-device limits of the ingest: a token bucket on the alerts each device sends, so that
//! one device flooding alerts cannot have them all stored; another on its heartbeats and
//! statuses, so that one looping them cannot make the store write at will; and the throttling
//! of what is logged about a device over its limit or its quota. No I/O: the time is given (ms
//! of a monotonic clock), so that the arithmetic is tested without waiting.

use std::collections::HashMap;

use crate::config::LimitsConfig;

/// How often, at most, a device over its limit or quota is logged.
pub const LOG_EVERY_MS: u64 = 60_000;

/// A token bucket's arithmetic, in integers: a message costs `cost` units, `rate` units refill
/// per ms, up to `capacity`. Alerts are counted in thousandths (a second refills
/// `alerts_per_second` alerts: that many thousandths per ms, exactly); heartbeats and statuses
/// in sixty-thousandths (a minute refills `presence_per_minute`: that many per ms).
#[derive(Debug, Clone, Copy)]
struct Rate {
    cost: u64,
    rate: u64,
    capacity: u64,
}

impl Rate {
    fn new(per_period: u32, burst: u32, period_ms: u64) -> Rate {
        Rate {
            cost: period_ms,
            rate: u64::from(per_period),
            capacity: u64::from(burst) * period_ms,
        }
    }

    /// A full bucket at `now_ms`.
    fn full(&self, now_ms: u64) -> Bucket {
        Bucket {
            units: self.capacity,
            at_ms: now_ms,
        }
    }

    /// `bucket` refilled up to `now_ms` (a clock going back refills nothing).
    fn refill(&self, bucket: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(bucket.at_ms);
        bucket.units = bucket
            .units
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
        bucket.at_ms = bucket.at_ms.max(now_ms);
    }

    /// Takes one message's worth from `bucket` (refilled): `true` when there was that much.
    fn take(&self, bucket: &mut Bucket, now_ms: u64) -> bool {
        self.refill(bucket, now_ms);
        if bucket.units >= self.cost {
            bucket.units -= self.cost;
            true
        } else {
            false
        }
    }

    /// As the log says it: `per/unit, burst N`.
    fn describe(&self, unit: &str) -> String {
        format!("{}/{unit}, burst {}", self.rate, self.capacity / self.cost)
    }
}

/// A device's tokens in one bucket, as of `at_ms`.
#[derive(Debug, Clone)]
struct Bucket {
    units: u64,
    at_ms: u64,
}

/// The limits and every device's buckets.
#[derive(Debug, Clone)]
pub struct Limits {
    alerts: Rate,
    /// Heartbeats and statuses together.
    presence: Rate,
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
    alerts: Bucket,
    presence: Bucket,
    /// The state of the device's latest status admitted (`online`, `offline`, `lost`).
    status: Option<String>,
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
            alerts: Rate::new(config.alerts_per_second, config.alert_burst, 1000),
            presence: Rate::new(config.presence_per_minute, config.presence_burst, 60_000),
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

    /// The alert limit as the log says it (`10/s, burst 100000`).
    pub fn describe(&self) -> String {
        self.alerts.describe("s")
    }

    /// The limit of heartbeats and statuses as the log says it (`120/min, burst 60`).
    pub fn describe_presence(&self) -> String {
        self.presence.describe("min")
    }

    fn device(&mut self, device: &str, now_ms: u64) -> &mut DeviceState {
        let (alerts, presence) = (self.alerts, self.presence);
        // A device first heard of has full buckets.
        self.devices
            .entry(device.to_string())
            .or_insert_with(|| DeviceState {
                alerts: alerts.full(now_ms),
                presence: presence.full(now_ms),
                status: None,
                limited: Reported::default(),
                removed: Reported::default(),
            })
    }

    /// Takes one alert of `device` at `now_ms`: `true` when it is within the limit.
    pub fn admit(&mut self, device: &str, now_ms: u64) -> bool {
        let rate = self.alerts;
        rate.take(&mut self.device(device, now_ms).alerts, now_ms)
    }

    /// Takes one heartbeat of `device` at `now_ms`: `true` when it is within the limit of
    /// heartbeats and statuses.
    pub fn admit_heartbeat(&mut self, device: &str, now_ms: u64) -> bool {
        let rate = self.presence;
        rate.take(&mut self.device(device, now_ms).presence, now_ms)
    }

    /// Takes one status of `device` saying `state` at `now_ms`: `true` when it is within the
    /// limit of heartbeats and statuses, or when it says another state than the device's
    /// latest status admitted. A change of presence is never refused (it takes a token if
    /// there is one): refusing it would leave the device shown in a state it has left, for
    /// good if it says nothing more (a clean stop, a lost connection). Only the repeats of a
    /// state are limited.
    pub fn admit_status(&mut self, device: &str, state: &str, now_ms: u64) -> bool {
        let rate = self.presence;
        let d = self.device(device, now_ms);
        let within = rate.take(&mut d.presence, now_ms);
        if d.status.as_deref() == Some(state) {
            return within;
        }
        d.status = Some(state.to_string());
        true
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
            ..LimitsConfig::default()
        })
    }

    fn presence_limits(per_minute: u32, burst: u32) -> Limits {
        Limits::new(&LimitsConfig {
            presence_per_minute: per_minute,
            presence_burst: burst,
            ..LimitsConfig::default()
        })
    }

    /// How many of `n` heartbeats at `now_ms` are admitted.
    fn heartbeats(l: &mut Limits, device: &str, n: u32, now_ms: u64) -> u32 {
        (0..n).filter(|_| l.admit_heartbeat(device, now_ms)).count() as u32
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
    fn heartbeats_have_a_bucket_per_minute_apart_from_the_alerts() {
        let mut l = presence_limits(6, 3);
        assert_eq!(heartbeats(&mut l, "gw-1", 10, 0), 3);
        // 6 a minute: one every 10 s, none in between; fractions kept across calls.
        assert_eq!(heartbeats(&mut l, "gw-1", 5, 9_999), 0);
        assert_eq!(heartbeats(&mut l, "gw-1", 5, 10_000), 1);
        assert_eq!(heartbeats(&mut l, "gw-1", 5, 15_000), 0);
        assert_eq!(heartbeats(&mut l, "gw-1", 5, 20_000), 1);
        // 25 s: two and a half.
        assert_eq!(heartbeats(&mut l, "gw-1", 5, 45_000), 2);
        assert_eq!(heartbeats(&mut l, "gw-1", 5, 50_000), 1);
        // Never beyond the burst; the clock going back refills nothing.
        assert_eq!(heartbeats(&mut l, "gw-1", 10, 10_000_000), 3);
        assert_eq!(heartbeats(&mut l, "gw-1", 1, 9_000_000), 0);
        // The alerts' bucket is another, and so is another device's.
        assert!(l.admit("gw-1", 10_000_000));
        assert_eq!(heartbeats(&mut l, "gw-2", 10, 10_000_000), 3);
        assert_eq!(l.describe_presence(), "6/min, burst 3");
    }

    #[test]
    fn a_healthy_agent_s_heartbeats_and_statuses_are_never_limited_by_default() {
        // The agent's heartbeat every second (the shortest the tests use; 60 s by default),
        // and a new connection (an online status) every 5 s, with a lost will before it, for
        // an hour: under the default 120 a minute.
        let mut l = Limits::new(&LimitsConfig::default());
        for s in 0..3600u64 {
            assert!(l.admit_heartbeat("gw-1", s * 1000), "heartbeat {s}");
            if s % 5 == 0 {
                assert!(l.admit_status("gw-1", "lost", s * 1000 + 1), "will {s}");
                assert!(l.admit_status("gw-1", "online", s * 1000 + 2), "status {s}");
            }
        }
    }

    #[test]
    fn a_status_changing_state_is_admitted_over_the_limit_its_repeats_are_not() {
        let mut l = presence_limits(1, 2);
        assert!(l.admit_status("gw-1", "online", 0));
        assert!(l.admit_status("gw-1", "online", 0));
        // The bucket is empty: repeats are refused, heartbeats too.
        assert!(!l.admit_status("gw-1", "online", 0));
        assert!(!l.admit_heartbeat("gw-1", 0));
        // A change is admitted all the same, and its repeats are not.
        assert!(l.admit_status("gw-1", "offline", 1));
        assert!(!l.admit_status("gw-1", "offline", 2));
        assert!(l.admit_status("gw-1", "lost", 3));
        assert!(l.admit_status("gw-1", "online", 4));
        assert!(!l.admit_status("gw-1", "online", 5));
        // The bucket refills as before: a minute, one more.
        assert!(l.admit_status("gw-1", "online", 60_005));
        assert!(!l.admit_status("gw-1", "online", 60_005));
        // Another device's first status, and a state once refused, are admitted.
        assert!(l.admit_status("gw-2", "online", 5));
    }

    #[test]
    fn a_snapshot_puts_back_the_presence_bucket_and_the_latest_status() {
        let mut l = presence_limits(1, 1);
        assert!(l.admit_status("gw-1", "online", 0));
        let saved = l.snapshot([b"gw-1".as_slice(), b"gw-2".as_slice()].into_iter());
        assert!(l.admit_status("gw-1", "offline", 1));
        assert!(!l.admit_heartbeat("gw-1", 1));
        assert!(l.admit_heartbeat("gw-2", 1));
        l.restore(saved);
        // As before: offline is still a change, gw-2 has a full bucket again.
        assert!(!l.admit_status("gw-1", "online", 1));
        assert!(l.admit_status("gw-1", "offline", 1));
        assert!(l.admit_heartbeat("gw-2", 1));
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
