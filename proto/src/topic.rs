//! MQTT topics. A device `<id>` publishes under `picket/v1/<id>/` and subscribes to its policy
//! topic; the broker's ACL lets it write nowhere else, and receivers check the topic's id
//! against the message's.

use std::fmt;

/// The prefix of every topic.
pub const ROOT: &str = "picket/v1";

/// The longest device id (it is also a certificate CN, at most 64 characters).
pub const MAX_DEVICE_ID: usize = 64;

/// The topics under a device's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Alerts, QoS 1, from the spool.
    Alert,
    /// Counters, QoS 0, every heartbeat interval.
    Heartbeat,
    /// Online/offline, QoS 1, retained; the last will sets it offline.
    Status,
    /// Signed policy bundles for the device, QoS 1 (may be retained).
    Policy,
    /// What the device did with each bundle, QoS 1.
    PolicyResult,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Alert,
        Channel::Heartbeat,
        Channel::Status,
        Channel::Policy,
        Channel::PolicyResult,
    ];

    /// The last topic level(s).
    pub fn suffix(self) -> &'static str {
        match self {
            Channel::Alert => "alert",
            Channel::Heartbeat => "heartbeat",
            Channel::Status => "status",
            Channel::Policy => "policy",
            Channel::PolicyResult => "policy/result",
        }
    }
}

/// The topic of `channel` for `device_id`.
pub fn topic(device_id: &str, channel: Channel) -> String {
    format!("{ROOT}/{device_id}/{}", channel.suffix())
}

/// Why a topic or a device id is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("`{0}` is not under {ROOT}/")]
    Foreign(String),
    #[error("`{0}` names no known channel")]
    UnknownChannel(String),
    #[error("invalid device id `{id}`: {reason}")]
    DeviceId { id: String, reason: &'static str },
}

/// Checks that `id` can be a device id: 1 to 64 characters among `A-Z a-z 0-9 . _ -`, so that it
/// is one topic level and never a wildcard.
pub fn check_device_id(id: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::DeviceId {
            id: id.chars().take(80).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_DEVICE_ID {
        return bad("longer than 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Splits a topic into its device id and channel.
pub fn parse(topic: &str) -> Result<(&str, Channel), TopicError> {
    let rest = topic
        .strip_prefix(ROOT)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| TopicError::Foreign(topic.into()))?;
    let (device, suffix) = rest
        .split_once('/')
        .ok_or_else(|| TopicError::UnknownChannel(topic.into()))?;
    check_device_id(device)?;
    let channel = Channel::ALL
        .into_iter()
        .find(|c| c.suffix() == suffix)
        .ok_or_else(|| TopicError::UnknownChannel(topic.into()))?;
    Ok((device, channel))
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for channel in Channel::ALL {
            let t = topic("gw-01.eu", channel);
            assert_eq!(parse(&t), Ok(("gw-01.eu", channel)));
        }
        assert_eq!(
            topic("d", Channel::PolicyResult),
            "picket/v1/d/policy/result"
        );
    }

    #[test]
    fn refuses_what_is_not_ours() {
        assert!(matches!(
            parse("other/v1/d/alert"),
            Err(TopicError::Foreign(_))
        ));
        assert!(matches!(
            parse("picket/v1/d"),
            Err(TopicError::UnknownChannel(_))
        ));
        assert!(matches!(
            parse("picket/v1/d/x"),
            Err(TopicError::UnknownChannel(_))
        ));
        assert!(matches!(
            parse("picket/v1/+/alert"),
            Err(TopicError::DeviceId { .. })
        ));
        assert!(check_device_id("").is_err());
        assert!(check_device_id(&"a".repeat(65)).is_err());
        assert!(check_device_id("a#").is_err());
        assert!(check_device_id("gw_1-a.b").is_ok());
    }
}
