//! One message: its topic and size checked, its body decoded and checked against its topic,
//! then stored; or refused ([`Refused`]) and counted in the store by reason. An alert is also
//! checked against its device's rate limit, and stored within its quota; a heartbeat or a
//! status against its device's limit of those ([`Limits`]); a policy result against the
//! bundles pushed to its device.

use picket_proto::topic::{self, Channel};
use picket_proto::{Alert, PolicyOutcome, PolicyResult, Status, MAX_MESSAGE_BYTES};
use serde::de::DeserializeOwned;

use super::limit::Limits;
use crate::store::Store;

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    Duplicate,
    Refused(Refusal),
}

/// Why a message was refused: the reason the store counts it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The topic is not a device topic of ours.
    ForeignTopic,
    /// A device topic the backend does not consume (e.g. a device's policy topic).
    UnexpectedChannel,
    /// Over [`MAX_MESSAGE_BYTES`].
    Oversized,
    /// Not a message of a known format, or a body that does not decode.
    Malformed,
    /// A protocol version this backend does not speak.
    Version,
    /// The envelope's device id is not the one in the topic.
    DeviceMismatch,
    /// An alert over its device's rate limit (`limits.alerts_per_second`, `alert_burst`).
    RateLimited,
    /// A heartbeat, or a status repeating the device's state, over its device's limit
    /// (`limits.presence_per_minute`, `presence_burst`).
    PresenceLimited,
    /// A policy result for a bundle never pushed to its device.
    UnknownPolicy,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ForeignTopic => "foreign_topic",
            Refusal::UnexpectedChannel => "unexpected_channel",
            Refusal::Oversized => "oversized",
            Refusal::Malformed => "malformed",
            Refusal::Version => "version",
            Refusal::DeviceMismatch => "device_mismatch",
            Refusal::RateLimited => "rate_limited",
            Refusal::PresenceLimited => "presence_limited",
            Refusal::UnknownPolicy => "unknown_policy",
        }
    }
}

/// A refused message: what was wrong with it (its [`Refused::reason`] and message).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    ForeignTopic(String),
    #[error("the backend does not consume policy topics")]
    UnexpectedChannel,
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE_BYTES}")]
    Oversized(usize),
    /// The envelope did not decode: oversized, of another version or malformed.
    #[error("{0}")]
    Decode(#[from] picket_proto::Error),
    #[error("sequence number {0} is out of range")]
    SeqOutOfRange(u64),
    /// The device id the envelope claims (at most 80 characters of it).
    #[error("the message says it is from {0:?}")]
    DeviceMismatch(String),
    /// The alert's sequence number and the limits it is over.
    #[error("alert {0} is over the device's rate limit ({1}): not stored")]
    RateLimited(u64, String),
    /// What it is (`heartbeat`, `status online`) and the limit it is over.
    #[error("{0} over the device's limit of heartbeats and statuses ({1}): not stored")]
    PresenceLimited(String, String),
    /// The bundle's SHA-256 (at most 80 characters of it) and the outcome the result claims.
    #[error("a result ({1}) for bundle {0}, which was never pushed to this device: not stored")]
    UnknownPolicy(String, &'static str),
}

impl Refused {
    /// The reason it is counted under.
    pub fn reason(&self) -> Refusal {
        match self {
            Refused::ForeignTopic(_) => Refusal::ForeignTopic,
            Refused::UnexpectedChannel => Refusal::UnexpectedChannel,
            Refused::Oversized(_) | Refused::Decode(picket_proto::Error::TooLarge(_)) => {
                Refusal::Oversized
            }
            Refused::Decode(picket_proto::Error::Version(_)) => Refusal::Version,
            Refused::Decode(_) | Refused::SeqOutOfRange(_) => Refusal::Malformed,
            Refused::DeviceMismatch(_) => Refusal::DeviceMismatch,
            Refused::RateLimited(..) => Refusal::RateLimited,
            Refused::PresenceLimited(..) => Refusal::PresenceLimited,
            Refused::UnknownPolicy(..) => Refusal::UnknownPolicy,
        }
    }
}

/// Checks and stores one message received at `now_ms` (ms since the epoch) and `clock_ms`
/// (the monotonic clock of `limits`). `Err` only when the store failed (the message must
/// then not be acknowledged); a bad message is `Ok(Outcome::Refused(_))`, counted in the
/// store.
pub fn handle(
    store: &mut dyn Store,
    limits: &mut Limits,
    topic_name: &str,
    payload: &[u8],
    now_ms: u64,
    clock_ms: u64,
) -> anyhow::Result<Outcome> {
    let (device, channel) = match topic::parse(topic_name) {
        Ok(parsed) => parsed,
        Err(e) => {
            let refused = Refused::ForeignTopic(e.to_string());
            return refuse(store, limits, topic_name, (now_ms, clock_ms), None, refused);
        }
    };
    if payload.len() > MAX_MESSAGE_BYTES {
        let refused = Refused::Oversized(payload.len());
        return refuse(
            store,
            limits,
            topic_name,
            (now_ms, clock_ms),
            Some(device),
            refused,
        );
    }
    let message = Message {
        store,
        limits,
        device,
        payload,
        now_ms,
        clock_ms,
    };
    match message.store(channel) {
        Ok(stored) => stored,
        Err(refused @ Refused::RateLimited(seq, _)) => {
            // A copy of an alert stored already (the broker delivers again what it did not see
            // acknowledged) is not lost to the limit.
            if !store.note_rate_limited(device, seq)? {
                log::debug!("alert {device}#{seq} received again");
                return Ok(Outcome::Duplicate);
            }
            // Logged by [`Limits`], at most once a minute per device: a flood does not flood
            // the log too.
            store.count_refused(
                Refusal::RateLimited.name(),
                Some(device),
                topic_name,
                &refused.to_string(),
                now_ms,
            )?;
            Ok(Outcome::Refused(Refusal::RateLimited))
        }
        Err(refused) => refuse(
            store,
            limits,
            topic_name,
            (now_ms, clock_ms),
            Some(device),
            refused,
        ),
    }
}

/// Counts a refused message in the store, and logs it: the first of a device for a reason,
/// then at most one line a minute with how many since the previous one, so that a device
/// sending garbage does not flood the log.
fn refuse(
    store: &mut dyn Store,
    limits: &mut Limits,
    topic_name: &str,
    (now_ms, clock_ms): (u64, u64),
    device: Option<&str>,
    refused: Refused,
) -> anyhow::Result<Outcome> {
    let reason = refused.reason();
    let error = refused.to_string();
    if let Some(n) = limits.refused(device.unwrap_or(""), reason.name(), clock_ms) {
        let more = if n > 1 {
            format!(" ({n} refused for this reason from this device since the last report)")
        } else {
            String::new()
        };
        log::warn!(
            "refused a message on `{topic_name}` ({}): {error}{more}",
            reason.name()
        );
    }
    store.count_refused(reason.name(), device, topic_name, &error, now_ms)?;
    Ok(Outcome::Refused(reason))
}

/// A message from a device topic, of a size the backend accepts.
struct Message<'a> {
    store: &'a mut dyn Store,
    limits: &'a mut Limits,
    device: &'a str,
    payload: &'a [u8],
    now_ms: u64,
    clock_ms: u64,
}

/// The body of an envelope from `device`, and its format's name.
fn decode<T: DeserializeOwned>(payload: &[u8], device: &str) -> Result<(&'static str, T), Refused> {
    checked(picket_proto::decode::<T>(payload)?, device)
}

/// The body of a decoded envelope if it is from `device`, and its format's name.
fn checked<T>(
    (format, envelope): (picket_proto::Format, picket_proto::Envelope<T>),
    device: &str,
) -> Result<(&'static str, T), Refused> {
    if envelope.device_id != device {
        let claimed: String = envelope.device_id.chars().take(80).collect();
        return Err(Refused::DeviceMismatch(claimed));
    }
    let format = match format {
        picket_proto::Format::Postcard => "postcard",
        picket_proto::Format::Json => "json",
    };
    Ok((format, envelope.body))
}

impl Message<'_> {
    /// Decodes the body `channel` carries and stores it: `Err` for a refused message, `Ok` with
    /// what the store did (itself `Err` if the store failed).
    fn store(self, channel: Channel) -> Result<anyhow::Result<Outcome>, Refused> {
        let (store, device, now_ms) = (self.store, self.device, self.now_ms);
        Ok(match channel {
            Channel::Alert => {
                let (format, alert) = decode::<Alert>(self.payload, device)?;
                // Stores keep it as a signed 64-bit integer.
                if alert.seq > i64::MAX as u64 {
                    return Err(Refused::SeqOutOfRange(alert.seq));
                }
                let limits = self.limits;
                if !limits.admit(device, self.clock_ms) {
                    if let Some(n) = limits.limited(device, self.clock_ms) {
                        log::warn!(
                            "{device} is over its alert rate limit ({}): {n} alert(s) not stored \
                             since the last report (`picket-backend refused`, reason rate_limited)",
                            limits.describe()
                        );
                    }
                    return Err(Refused::RateLimited(alert.seq, limits.describe()));
                }
                store_alert(
                    store,
                    limits,
                    device,
                    &alert,
                    format,
                    (now_ms, self.clock_ms),
                )
            }
            Channel::Heartbeat => {
                // From this agent version or an older one (without the newer counters).
                let (_, hb) = checked(picket_proto::decode_heartbeat(self.payload)?, device)?;
                if !self.limits.admit_heartbeat(device, self.clock_ms) {
                    let limit = self.limits.describe_presence();
                    return Err(Refused::PresenceLimited("heartbeat".into(), limit));
                }
                store
                    .record_heartbeat(device, &hb, now_ms)
                    .map(|()| Outcome::Stored)
            }
            Channel::Status => {
                let (_, status) = decode::<Status>(self.payload, device)?;
                let state = status.state.name();
                if !self.limits.admit_status(device, state, self.clock_ms) {
                    let limit = self.limits.describe_presence();
                    return Err(Refused::PresenceLimited(format!("status {state}"), limit));
                }
                log::info!("{device} is {:?}", status.state);
                store
                    .record_status(device, &status, now_ms)
                    .map(|()| Outcome::Stored)
            }
            Channel::PolicyResult => {
                let (_, result) = decode::<PolicyResult>(self.payload, device)?;
                // The agent sends a result only in answer to a bundle on its policy topic,
                // which only `policy push` publishes (and records): one for a bundle never
                // pushed there is made up.
                match store.policy_pushed(device, &result.bundle_sha256) {
                    Ok(true) => {}
                    Ok(false) => {
                        let sha: String = result.bundle_sha256.chars().take(80).collect();
                        return Err(Refused::UnknownPolicy(sha, outcome_name(&result.outcome)));
                    }
                    Err(e) => return Ok(Err(e)),
                }
                log::info!("{device}: policy {:?}", result.outcome);
                store
                    .insert_policy_result(device, &result, now_ms)
                    .map(|new| {
                        if new {
                            Outcome::Stored
                        } else {
                            Outcome::Duplicate
                        }
                    })
            }
            Channel::Policy => return Err(Refused::UnexpectedChannel),
        })
    }
}

/// What a policy result says, as the store names it.
fn outcome_name(outcome: &PolicyOutcome) -> &'static str {
    match outcome {
        PolicyOutcome::Applied { .. } => "applied",
        PolicyOutcome::Unchanged { .. } => "unchanged",
        PolicyOutcome::Refused { .. } => "refused",
    }
}

/// Stores an alert, logging a new one, and removes the device's oldest beyond its quota.
fn store_alert(
    store: &mut dyn Store,
    limits: &mut Limits,
    device: &str,
    alert: &Alert,
    format: &str,
    (now_ms, clock_ms): (u64, u64),
) -> anyhow::Result<Outcome> {
    let new = store.insert_alert(device, alert, format, now_ms)?;
    if new {
        let removed = store.enforce_quota(device, limits.max_alerts_per_device)?;
        if removed > 0 {
            if let Some(n) = limits.removed(device, removed, clock_ms) {
                log::warn!(
                    "{device} is over its quota of {} stored alerts: removed its {n} oldest \
                     since the last report",
                    limits.max_alerts_per_device
                );
            }
        }
        log::info!(
            "alert {device}#{} {} {} {}",
            alert.seq,
            alert.severity.name(),
            alert.kind.name(),
            alert.path.as_deref().unwrap_or("-")
        );
        Ok(Outcome::Stored)
    } else {
        log::debug!("alert {device}#{} received again", alert.seq);
        Ok(Outcome::Duplicate)
    }
}
