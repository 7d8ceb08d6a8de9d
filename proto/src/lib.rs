//! Picket's wire protocol: the MQTT topics a device and the backend use, and the versioned
//! messages they exchange. Documented for third parties in `docs/PROTOCOL.md`; this crate is
//! the one definition both sides compile against.
//!
//! Every message is an [`Envelope`]: protocol version, the sender's device id, and a body whose
//! type the topic determines ([`Alert`], [`Heartbeat`], [`Status`], [`PolicyResult`]). It is
//! encoded either as postcard (compact, the default on cellular links) or as JSON (for
//! third-party consumers); the first byte tells which (see [`Format`]). Policy bundles sent to a
//! device are not wrapped: the bundle is already a signed, versioned envelope of its own.

#![forbid(unsafe_code)]

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};

/// The protocol version this crate speaks; carried in every envelope.
pub const VERSION: u16 = 1;

/// The largest message (any topic but the policy one) a receiver accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The largest policy bundle a device accepts over MQTT.
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// The first byte of a postcard-encoded message. JSON messages start with `{`.
pub const POSTCARD_MARKER: u8 = 0x00;

pub mod duration;
pub mod topic;

/// What went wrong decoding a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("unknown message format (first byte 0x{0:02x}; expected 0x00 for postcard or `{{` for JSON)")]
    UnknownFormat(u8),
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u16),
    #[error("malformed {format} message: {reason}")]
    Malformed {
        format: &'static str,
        reason: String,
    },
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// How a message is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `0x00` followed by the postcard encoding of the envelope.
    #[default]
    Postcard,
    /// A JSON object.
    Json,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Postcard => "postcard",
            Format::Json => "JSON",
        }
    }
}

/// Every message: version, sender, body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Protocol version ([`VERSION`]).
    pub v: u16,
    /// The sending device's id; must equal the device id in the topic.
    pub device_id: String,
    pub body: T,
}

/// Encodes `body` from `device_id` as `format`.
pub fn encode<T: Serialize>(format: Format, device_id: &str, body: &T) -> Result<Vec<u8>, Error> {
    // The same fields as `Envelope`, borrowed.
    #[derive(Serialize)]
    struct EnvelopeRef<'a, T> {
        v: u16,
        device_id: &'a str,
        body: &'a T,
    }
    let envelope = EnvelopeRef {
        v: VERSION,
        device_id,
        body,
    };
    match format {
        Format::Postcard => {
            let mut out = vec![POSTCARD_MARKER];
            postcard::to_io(&envelope, &mut out).map_err(|e| Error::Encode(e.to_string()))?;
            Ok(out)
        }
        Format::Json => serde_json::to_vec(&envelope).map_err(|e| Error::Encode(e.to_string())),
    }
}

/// Decodes a message whose body is a `T`, telling which format it came in.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<(Format, Envelope<T>), Error> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(Error::TooLarge(payload.len()));
    }
    let first = *payload.first().ok_or(Error::Empty)?;
    let format = match first {
        POSTCARD_MARKER => Format::Postcard,
        b'{' | b' ' | b'\t' | b'\r' | b'\n' => Format::Json,
        other => return Err(Error::UnknownFormat(other)),
    };
    let malformed = |reason: String| Error::Malformed {
        format: format.name(),
        reason,
    };
    // The version first: a newer sender's body may not parse, and that deserves its own error.
    let version = match format {
        Format::Postcard => {
            postcard::take_from_bytes::<u16>(&payload[1..])
                .map_err(|e| malformed(e.to_string()))?
                .0
        }
        Format::Json => {
            #[derive(Deserialize)]
            struct Versioned {
                v: u16,
            }
            serde_json::from_slice::<Versioned>(payload)
                .map_err(|e| malformed(e.to_string()))?
                .v
        }
    };
    if version != VERSION {
        return Err(Error::Version(version));
    }
    let envelope = match format {
        Format::Postcard => {
            let (envelope, rest) =
                postcard::take_from_bytes(&payload[1..]).map_err(|e| malformed(e.to_string()))?;
            if !rest.is_empty() {
                return Err(malformed(format!("{} bytes after the message", rest.len())));
            }
            envelope
        }
        Format::Json => serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?,
    };
    Ok((format, envelope))
}

/// The kinds of alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    UnknownExecutable,
    ModifiedExecutable,
    SuspiciousExec,
    UnexpectedConnection,
    UnexpectedListener,
    ProtectedFileChanged,
    IntegrityDrift,
    AgentTamper,
    SensorDataLoss,
    PolicyRejected,
    /// The spool was full: this many older, less severe alerts were dropped undelivered.
    AlertsDropped,
    /// A baselined executable ran but the file that ran could not be hashed (details say why):
    /// it could not be verified, which is not evidence of a modification.
    UnverifiedExecutable,
    /// An executable was started by a parent the behavioural baseline does not expect it from.
    UnexpectedLineage,
    /// The setuid or setgid bit was set on a file.
    SetuidBitSet,
    /// File capabilities (`security.capability`) were set on a file.
    FileCapabilitySet,
    /// An exec's environment sets the dynamic loader's hooks (`LD_PRELOAD`, `LD_AUDIT`,
    /// `LD_LIBRARY_PATH`).
    LoaderEnvironment,
    /// A kernel module was loaded.
    KernelModuleLoaded,
    /// A process attached to another or wrote its memory (`ptrace`, `process_vm_writev`).
    ProcessInjection,
    /// A filesystem was mounted, remounted or unmounted.
    MountChanged,
    /// An append-only file (a log) was truncated, renamed away or deleted.
    AppendOnlyViolated,
    /// A sensitive file was opened by an executable not allowed to read it.
    SensitiveFileRead,
    /// An exec was refused before it ran (enforce mode): the caller got `EPERM`.
    BlockedExec,
    /// An outbound connection or send was refused (enforce mode).
    BlockedConnection,
    /// A bind to a port the policy does not list was refused (enforce mode).
    BlockedListener,
    /// What enforce mode would have refused, in alert mode (the dry run).
    WouldBlock,
    /// The device's configuration weakens a mode the signed policy enforces.
    EnforcementWeakened,
    /// The agent's previous run in this boot ended without a clean stop (killed, crashed, or
    /// stopped on an error).
    AgentInterrupted,
}

impl AlertKind {
    /// The name used on the wire and in the backend (`unknown_executable`, ...).
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::UnknownExecutable => "unknown_executable",
            AlertKind::ModifiedExecutable => "modified_executable",
            AlertKind::SuspiciousExec => "suspicious_exec",
            AlertKind::UnexpectedConnection => "unexpected_connection",
            AlertKind::UnexpectedListener => "unexpected_listener",
            AlertKind::ProtectedFileChanged => "protected_file_changed",
            AlertKind::IntegrityDrift => "integrity_drift",
            AlertKind::AgentTamper => "agent_tamper",
            AlertKind::SensorDataLoss => "sensor_data_loss",
            AlertKind::PolicyRejected => "policy_rejected",
            AlertKind::AlertsDropped => "alerts_dropped",
            AlertKind::UnverifiedExecutable => "unverified_executable",
            AlertKind::UnexpectedLineage => "unexpected_lineage",
            AlertKind::SetuidBitSet => "setuid_bit_set",
            AlertKind::FileCapabilitySet => "file_capability_set",
            AlertKind::LoaderEnvironment => "loader_environment",
            AlertKind::KernelModuleLoaded => "kernel_module_loaded",
            AlertKind::ProcessInjection => "process_injection",
            AlertKind::MountChanged => "mount_changed",
            AlertKind::AppendOnlyViolated => "append_only_violated",
            AlertKind::SensitiveFileRead => "sensitive_file_read",
            AlertKind::BlockedExec => "blocked_exec",
            AlertKind::BlockedConnection => "blocked_connection",
            AlertKind::BlockedListener => "blocked_listener",
            AlertKind::WouldBlock => "would_block",
            AlertKind::EnforcementWeakened => "enforcement_weakened",
            AlertKind::AgentInterrupted => "agent_interrupted",
        }
    }
}

/// How urgent an alert is; ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Medium,
    High,
    Critical,
}

impl Severity {
    /// 1 (medium) to 3 (critical): the order in which a full spool gives alerts up.
    pub fn rank(self) -> u8 {
        match self {
            Severity::Medium => 1,
            Severity::High => 2,
            Severity::Critical => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The jump between two sequence numbers of a device that means a new counter, not missing
/// alerts. An agent without a counter (its first start, or its state directory was lost:
/// wiped, reflashed, a corrupt counter file) begins at a random multiple of 64 between 2^33
/// and 2^53 - 2^33, never at 1 again where the backend already holds the device's first numbers
/// (it identifies an alert by device and number, and would take the new alerts for copies of
/// the old). Two counters of one device thus begin at least this far apart but for a chance of
/// about 2^-20 (and overlap for a far smaller one); no counter skips this many numbers. Below
/// 2^53, numbers stay exact in every JSON reader.
pub const SEQ_RESET_JUMP: u64 = 1 << 32;

/// An alert as delivered to the fleet. `(device_id, seq)` identifies it: a device's sequence
/// numbers only grow (possibly with gaps after a restart), and a message received twice carries
/// the same number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub seq: u64,
    /// The kernel's boot id when the alert was raised.
    pub boot_id: String,
    /// When it was raised, in milliseconds since the Unix epoch (device clock).
    pub time_ms: u64,
    pub kind: AlertKind,
    pub severity: Severity,
    /// The policy rule category or entry involved.
    pub rule: String,
    /// The executable, file or peer the alert is about.
    pub path: Option<String>,
    /// Kind-specific details (see docs/PROTOCOL.md).
    pub details: Details,
    /// How many occurrences this alert stands for (more than 1 for an aggregate).
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub process: Option<ProcessContext>,
}

/// The process that caused an alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessContext {
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub exe: Option<String>,
    pub sha256: Option<String>,
    /// The first arguments (bounded); `argv_dropped` says how many more there were.
    pub argv: Vec<String>,
    pub argv_dropped: u32,
    /// Parent, grandparent, ... as far as the agent knows them.
    pub ancestry: Vec<Ancestor>,
    pub cgroup_id: Option<u64>,
}

/// One ancestor of an alert's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: Option<String>,
}

/// Kind-specific alert details: a JSON object. JSON messages carry it as an object; postcard
/// ones as its JSON text (postcard cannot carry self-describing values).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Details(pub serde_json::Value);

impl Serialize for Details {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(Details)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text)
                .map(Details)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// Published every heartbeat interval (not retained, not spooled: the next one supersedes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub time_ms: u64,
    pub uptime_s: u64,
    pub agent_version: String,
    /// Serial of the policy in force.
    pub policy_serial: u64,
    /// Resident memory of the agent, in bytes.
    pub rss_bytes: u64,
    pub sensors: Vec<SensorCounters>,
    pub alerts: AlertCounters,
    /// Alerts waiting in the spool for the broker's acknowledgement.
    pub spool_pending: u64,
    pub spool_bytes: u64,
    /// Execs since the agent started whose executed file could not be verified (no SHA-256
    /// established). `None` from an agent that does not count them: an older one, whose
    /// heartbeat ends before this field (see [`decode_heartbeat`]).
    #[serde(default)]
    pub exec_unverified: Option<u64>,
}

/// A heartbeat as agents before [`Heartbeat::exec_unverified`] encode it: the same fields
/// without the last one.
#[derive(Deserialize)]
struct HeartbeatBeforeExecUnverified {
    time_ms: u64,
    uptime_s: u64,
    agent_version: String,
    policy_serial: u64,
    rss_bytes: u64,
    sensors: Vec<SensorCounters>,
    alerts: AlertCounters,
    spool_pending: u64,
    spool_bytes: u64,
}

impl From<HeartbeatBeforeExecUnverified> for Heartbeat {
    fn from(h: HeartbeatBeforeExecUnverified) -> Self {
        Heartbeat {
            time_ms: h.time_ms,
            uptime_s: h.uptime_s,
            agent_version: h.agent_version,
            policy_serial: h.policy_serial,
            rss_bytes: h.rss_bytes,
            sensors: h.sensors,
            alerts: h.alerts,
            spool_pending: h.spool_pending,
            spool_bytes: h.spool_bytes,
            exec_unverified: None,
        }
    }
}

/// Decodes a heartbeat, from this version of the agent or an older one. Postcard is
/// positional: an older agent's heartbeat ends before [`Heartbeat::exec_unverified`], so a
/// postcard heartbeat that does not decode as the current layout is tried as the older one
/// (and refused with the error of the current layout if that fails too). In JSON the missing
/// field is simply `None`.
pub fn decode_heartbeat(payload: &[u8]) -> Result<(Format, Envelope<Heartbeat>), Error> {
    match decode::<Heartbeat>(payload) {
        Err(
            e @ Error::Malformed {
                format: "postcard", ..
            },
        ) => match decode::<HeartbeatBeforeExecUnverified>(payload) {
            Ok((format, env)) => Ok((
                format,
                Envelope {
                    v: env.v,
                    device_id: env.device_id,
                    body: env.body.into(),
                },
            )),
            Err(_) => Err(e),
        },
        other => other,
    }
}

/// Events one sensor delivered and lost since the agent started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorCounters {
    /// `process`, `network` or `file`.
    pub sensor: String,
    pub seen: u64,
    pub lost: u64,
}

/// What became of alerts since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertCounters {
    /// Raised by detection (each occurrence).
    pub raised: u64,
    /// Occurrences folded into an aggregate instead of being sent on their own.
    pub aggregated: u64,
    /// Written to the spool.
    pub spooled: u64,
    /// Acknowledged by the broker.
    pub sent: u64,
    /// Dropped from a full spool.
    pub dropped: u64,
}

/// The device's presence, retained on its status topic: `Online` at each connection, `Offline`
/// on a clean stop, and `Lost` as the last will, which the broker publishes when the device goes
/// away without saying so (killed, crashed, its link cut, powered off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: Presence,
    pub time_ms: u64,
    pub agent_version: String,
    pub policy_serial: u64,
    pub policy_name: String,
    pub boot_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    /// A clean stop: the agent said goodbye.
    Offline,
    /// The last will: the connection ended without a goodbye. Appended (postcard index 2), so
    /// that `Online` and `Offline` keep theirs; agents before it leave an `Offline` will.
    Lost,
}

impl Presence {
    /// The name used on the wire in JSON and in the backend (`online`, `offline`, `lost`).
    pub fn name(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
            Presence::Lost => "lost",
        }
    }
}

/// What a device did with a policy bundle it received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyResult {
    pub time_ms: u64,
    /// SHA-256 of the bundle as received (hex), to match a result with what was sent.
    pub bundle_sha256: String,
    pub outcome: PolicyOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyOutcome {
    /// Verified and now in force.
    Applied { name: String, serial: u64 },
    /// Identical to the policy in force.
    Unchanged { serial: u64 },
    /// Refused; the policy in force stays.
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert() -> Alert {
        Alert {
            seq: 42,
            boot_id: "b".into(),
            time_ms: 1_700_000_000_000,
            kind: AlertKind::UnknownExecutable,
            severity: Severity::High,
            rule: "executables".into(),
            path: Some("/tmp/x".into()),
            details: Details(json!({"sha256": "ab", "n": 3, "nested": {"a": [1, 2]}})),
            count: 1,
            first_ms: 1,
            last_ms: 2,
            process: Some(ProcessContext {
                pid: Some(7),
                exe: Some("/tmp/x".into()),
                argv: vec!["x".into(), "--y".into()],
                ancestry: vec![Ancestor {
                    pid: 1,
                    exe: Some("/sbin/init".into()),
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn both_formats_round_trip() {
        for format in [Format::Postcard, Format::Json] {
            let bytes = encode(format, "gw-1", &alert()).unwrap();
            let (got, env) = decode::<Alert>(&bytes).unwrap();
            assert_eq!(got, format);
            assert_eq!(env.v, VERSION);
            assert_eq!(env.device_id, "gw-1");
            assert_eq!(env.body, alert());
        }
        let json: serde_json::Value =
            serde_json::from_slice(&encode(Format::Json, "gw-1", &alert()).unwrap()).unwrap();
        assert_eq!(json["body"]["kind"], "unknown_executable");
        assert_eq!(json["body"]["details"]["nested"]["a"][1], 2);
        let postcard = encode(Format::Postcard, "gw-1", &alert()).unwrap();
        assert!(postcard.len() < serde_json::to_vec(&json).unwrap().len());
    }

    #[test]
    fn unverified_executable_round_trips_with_its_details() {
        let mut a = alert();
        a.kind = AlertKind::UnverifiedExecutable;
        a.severity = Severity::Medium;
        a.details = Details(json!({"expected": "ab12", "reason": "the process exited first"}));
        a.process.as_mut().unwrap().sha256 = None;
        for format in [Format::Postcard, Format::Json] {
            let bytes = encode(format, "gw-1", &a).unwrap();
            assert_eq!(decode::<Alert>(&bytes).unwrap().1.body, a);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&encode(Format::Json, "gw-1", &a).unwrap()).unwrap();
        assert_eq!(json["body"]["kind"], "unverified_executable");
        assert_eq!(json["body"]["kind"], a.kind.name());
        assert_eq!(json["body"]["severity"], "medium");
        // Appended: every earlier kind keeps its postcard variant index.
        let postcard = |kind| postcard::to_stdvec(&kind).unwrap();
        assert_eq!(postcard(AlertKind::AlertsDropped), [10]);
        assert_eq!(postcard(AlertKind::UnverifiedExecutable), [11]);
        assert_eq!(postcard(AlertKind::AppendOnlyViolated), [19]);
        assert_eq!(postcard(AlertKind::SensitiveFileRead), [20]);
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            time_ms: 1_700_000_000_000,
            uptime_s: 60,
            agent_version: "0.1.0".into(),
            policy_serial: 3,
            rss_bytes: 4 << 20,
            sensors: vec![SensorCounters {
                sensor: "process".into(),
                seen: 1000,
                lost: 2,
            }],
            alerts: AlertCounters {
                raised: 9,
                ..Default::default()
            },
            spool_pending: 1,
            spool_bytes: 300,
            exec_unverified: Some(5),
        }
    }

    #[test]
    fn heartbeats_round_trip_with_the_unverified_exec_count() {
        for format in [Format::Postcard, Format::Json] {
            let bytes = encode(format, "gw-1", &heartbeat()).unwrap();
            let (got, env) = decode_heartbeat(&bytes).unwrap();
            assert_eq!(got, format);
            assert_eq!(env.body, heartbeat());
            assert_eq!(decode::<Heartbeat>(&bytes).unwrap().1.body, heartbeat());
        }
        let json: serde_json::Value =
            serde_json::from_slice(&encode(Format::Json, "gw-1", &heartbeat()).unwrap()).unwrap();
        assert_eq!(json["body"]["exec_unverified"], 5);
    }

    #[test]
    fn a_heartbeat_without_the_unverified_exec_count_is_accepted() {
        // An older agent's postcard heartbeat: the same bytes without the last field
        // (`Some(5)`: the bytes 1, 5).
        let current = encode(Format::Postcard, "gw-1", &heartbeat()).unwrap();
        assert_eq!(current[current.len() - 2..], [1, 5]);
        let older = &current[..current.len() - 2];
        let expected = Heartbeat {
            exec_unverified: None,
            ..heartbeat()
        };
        let (format, env) = decode_heartbeat(older).unwrap();
        assert_eq!(
            (format, env.v, env.device_id.as_str()),
            (Format::Postcard, 1, "gw-1")
        );
        assert_eq!(env.body, expected);
        // In JSON, the field is missing.
        let mut json: serde_json::Value =
            serde_json::from_slice(&encode(Format::Json, "gw-1", &heartbeat()).unwrap()).unwrap();
        json["body"]
            .as_object_mut()
            .unwrap()
            .remove("exec_unverified");
        let older = serde_json::to_vec(&json).unwrap();
        assert_eq!(decode_heartbeat(&older).unwrap().1.body, expected);
        assert_eq!(decode::<Heartbeat>(&older).unwrap().1.body, expected);
        // Any other truncation is refused, with the error of the current layout.
        for len in 1..current.len() - 2 {
            assert!(
                matches!(
                    decode_heartbeat(&current[..len]),
                    Err(Error::Malformed {
                        format: "postcard",
                        ..
                    })
                ),
                "prefix of {len}"
            );
        }
        assert!(decode_heartbeat(&current[..current.len() - 1]).is_err());
        let mut longer = current.clone();
        longer.push(0);
        assert!(decode_heartbeat(&longer).is_err());
        // A heartbeat of another version is refused as such, not tried as an older layout.
        let future = br#"{"v": 9, "device_id": "d", "body": {}}"#;
        assert_eq!(decode_heartbeat(future), Err(Error::Version(9)));
    }

    #[test]
    fn outcomes_and_status_round_trip() {
        for outcome in [
            PolicyOutcome::Applied {
                name: "p".into(),
                serial: 3,
            },
            PolicyOutcome::Unchanged { serial: 3 },
            PolicyOutcome::Refused {
                reason: "rollback".into(),
            },
        ] {
            let r = PolicyResult {
                time_ms: 1,
                bundle_sha256: "00".into(),
                outcome,
            };
            for format in [Format::Postcard, Format::Json] {
                let bytes = encode(format, "d", &r).unwrap();
                assert_eq!(decode::<PolicyResult>(&bytes).unwrap().1.body, r);
            }
        }
    }

    #[test]
    fn the_lost_presence_is_appended_and_round_trips() {
        for state in [Presence::Online, Presence::Offline, Presence::Lost] {
            let s = Status {
                state,
                time_ms: 1,
                agent_version: "0.1.0".into(),
                policy_serial: 2,
                policy_name: "base".into(),
                boot_id: "b".into(),
            };
            for format in [Format::Postcard, Format::Json] {
                let bytes = encode(format, "d", &s).unwrap();
                assert_eq!(decode::<Status>(&bytes).unwrap().1.body, s);
            }
            let json: serde_json::Value =
                serde_json::from_slice(&encode(Format::Json, "d", &s).unwrap()).unwrap();
            assert_eq!(json["body"]["state"], state.name());
        }
        // Postcard indexes: the earlier states keep theirs.
        let postcard = |p| postcard::to_stdvec(&p).unwrap();
        assert_eq!(postcard(Presence::Online), [0]);
        assert_eq!(postcard(Presence::Offline), [1]);
        assert_eq!(postcard(Presence::Lost), [2]);
    }

    #[test]
    fn refuses_bad_input_with_the_reason() {
        assert_eq!(decode::<Alert>(&[]), Err(Error::Empty));
        assert_eq!(decode::<Alert>(b"\xffabc"), Err(Error::UnknownFormat(0xff)));
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode::<Alert>(&big), Err(Error::TooLarge(big.len())));
        let future = br#"{"v": 9, "device_id": "d", "body": {}}"#;
        assert_eq!(decode::<Alert>(future), Err(Error::Version(9)));
        assert!(matches!(
            decode::<Alert>(br#"{"v": 1, "device_id": "d"}"#),
            Err(Error::Malformed { format: "JSON", .. })
        ));
        // Every truncation of a valid postcard message is refused, none panics.
        let bytes = encode(Format::Postcard, "gw-1", &alert()).unwrap();
        for len in 1..bytes.len() {
            assert!(decode::<Alert>(&bytes[..len]).is_err(), "prefix of {len}");
        }
        // Trailing bytes are refused, not ignored.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Alert>(&longer).is_err());
    }
}
