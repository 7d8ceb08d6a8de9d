//! The agent's configuration file (`/etc/picket/picket.toml`), documented in
//! `docs/CONFIGURATION.md`. Unknown keys are refused with their line: a misspelt setting must
//! not silently fall back to a default.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use picket_policy::model::{Mode, Modes};
use serde::{de, Deserialize, Deserializer};

/// `picket run`'s configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This device's id. With `[mqtt]` it is the CN of the device certificate, and may be
    /// left out (if given, it must match).
    #[serde(default)]
    pub device_id: Option<String>,
    /// The class of device; policies for another class are refused.
    pub device_class: String,
    /// The signed policy bundle to enforce.
    pub policy: PathBuf,
    /// Directory of trusted public keys (`*.pub`).
    pub trust_dir: PathBuf,
    /// Where the agent keeps its state: active policy, highest serial, alert sequence.
    pub state_dir: PathBuf,
    /// How often protected files are hashed again (they also are at start-up).
    #[serde(default = "default_rescan", deserialize_with = "duration")]
    pub rescan_interval: Duration,
    /// How often the agent checks that its sensors still deliver (see `canary.rs`).
    #[serde(default = "default_canary", deserialize_with = "duration")]
    pub canary_interval: Duration,
    /// Per-category modes overriding the policy's (for example `files = "off"` while a device
    /// is being commissioned).
    #[serde(default)]
    pub modes: ModesConfig,
    /// How the exec guard answers when the agent cannot decide in time.
    #[serde(default)]
    pub enforce: EnforceConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub output: OutputConfig,
    /// Reporting to the fleet; without it alerts only go to `[output]`.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    #[serde(default)]
    pub spool: SpoolConfig,
}

/// The broker and the device's TLS identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `host:port` of the broker's TLS listener.
    pub broker: String,
    /// PEM: the fleet CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// PEM: this device's certificate (its CN is the device id).
    pub cert: PathBuf,
    /// PEM: this device's private key.
    pub key: PathBuf,
    /// `auto` (v5, falling back to 3.1.1), `v5` or `v3.1.1`.
    #[serde(default = "default_protocol")]
    pub protocol: crate::report::mqtt::Protocol,
    /// `postcard` (compact) or `json` (for third-party consumers).
    #[serde(default)]
    pub format: picket_proto::Format,
    #[serde(default = "default_keep_alive", deserialize_with = "duration")]
    pub keep_alive: Duration,
    #[serde(default = "default_heartbeat", deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// First delay before reconnecting; it doubles up to `reconnect_max`, with jitter.
    #[serde(default = "default_reconnect_min", deserialize_with = "duration")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", deserialize_with = "duration")]
    pub reconnect_max: Duration,
}

impl MqttConfig {
    /// The broker's host and port.
    pub fn address(&self) -> anyhow::Result<(String, u16)> {
        let (host, port) = self
            .broker
            .rsplit_once(':')
            .with_context(|| format!("mqtt.broker `{}` is not host:port", self.broker))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("mqtt.broker `{}`: `{port}` is not a port", self.broker))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        anyhow::ensure!(
            !host.is_empty(),
            "mqtt.broker `{}` has no host",
            self.broker
        );
        Ok((host.to_string(), port))
    }
}

/// The on-disk queue of alerts awaiting the broker's acknowledgement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Default: `spool/` in the state directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Most disk space the spool uses: a number of bytes or `512KiB`, `16MiB`.
    #[serde(default = "default_spool_bytes", deserialize_with = "size")]
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: default_spool_bytes(),
        }
    }
}

/// Local overrides of the policy's modes; an absent key keeps the policy's.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModesConfig {
    pub executables: Option<Mode>,
    pub network: Option<Mode>,
    pub files: Option<Mode>,
    pub behaviour: Option<Mode>,
}

impl ModesConfig {
    /// The modes in force: these overrides over the policy's.
    pub fn over(self, policy: Modes) -> Modes {
        Modes {
            executables: self.executables.unwrap_or(policy.executables),
            network: self.network.unwrap_or(policy.network),
            files: self.files.unwrap_or(policy.files),
            behaviour: self.behaviour.unwrap_or(policy.behaviour),
        }
    }
}

/// The exec guard's answer when a decision takes too long.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforceConfig {
    /// Longest time an exec waits for its file to be hashed before the default answer.
    #[serde(default = "default_decision_time", deserialize_with = "duration")]
    pub decision_time: Duration,
    /// The default answer: `allow` (fail open) or `deny`.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        Self {
            decision_time: default_decision_time(),
            on_timeout: OnTimeout::Allow,
        }
    }
}

/// What an exec not decided within `enforce.decision_time` gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    #[default]
    Allow,
    Deny,
}

fn default_decision_time() -> Duration {
    Duration::from_secs(1)
}

/// Alert aggregation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Identical alerts within this window are reported once, then as one alert with a count.
    #[serde(default = "default_window", deserialize_with = "duration")]
    pub window: Duration,
    /// Most distinct alerts tracked for aggregation at once; beyond it the oldest is closed.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            window: default_window(),
            max_tracked: default_max_tracked(),
        }
    }
}

/// Where alerts go until the MQTT publisher exists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// JSON lines on stdout.
    #[serde(default = "yes")]
    pub stdout: bool,
    /// JSON lines appended to this file.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            stdout: true,
            file: None,
        }
    }
}

fn default_protocol() -> crate::report::mqtt::Protocol {
    crate::report::mqtt::Protocol::Auto
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(60)
}
fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(300)
}
fn default_spool_bytes() -> u64 {
    8 << 20
}
fn yes() -> bool {
    true
}
fn default_rescan() -> Duration {
    Duration::from_secs(3600)
}
fn default_canary() -> Duration {
    Duration::from_secs(60)
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_max_tracked() -> usize {
    4096
}

impl AgentConfig {
    /// Reads and checks the configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let config: AgentConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        anyhow::ensure!(
            config.alerts.max_tracked > 0,
            "{}: alerts.max_tracked must be at least 1",
            path.display()
        );
        let m = config.modes;
        for (name, mode) in [
            ("executables", m.executables),
            ("network", m.network),
            ("files", m.files),
            ("behaviour", m.behaviour),
        ] {
            anyhow::ensure!(
                mode != Some(Mode::Enforce),
                "{}: modes.{name} = \"enforce\": only the signed policy can enforce; the \
                 configuration can only weaken a mode (to \"alert\" or \"off\")",
                path.display()
            );
        }
        anyhow::ensure!(
            (Duration::from_millis(10)..=Duration::from_secs(60))
                .contains(&config.enforce.decision_time),
            "{}: enforce.decision_time must be between 10ms and 60s",
            path.display()
        );
        anyhow::ensure!(
            config.spool.max_bytes >= 64 * 1024,
            "{}: spool.max_bytes must be at least 64KiB",
            path.display()
        );
        match (&config.mqtt, &config.device_id) {
            (Some(mqtt), _) => {
                mqtt.address()
                    .with_context(|| format!("{}", path.display()))?;
                // The MQTT client refuses a shorter keep-alive (it would stop reporting).
                anyhow::ensure!(
                    mqtt.keep_alive >= Duration::from_secs(5),
                    "{}: mqtt.keep_alive must be at least 5s",
                    path.display()
                );
            }
            (None, Some(id)) => picket_proto::topic::check_device_id(id)
                .with_context(|| format!("{}: device_id", path.display()))?,
            (None, None) => anyhow::bail!(
                "{}: device_id is required without [mqtt] (with it, the certificate's CN is the id)",
                path.display()
            ),
        }
        Ok(config)
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(t) => parse_size(&t).map_err(de::Error::custom),
    }
}

/// `4096`, `512KiB`, `16MiB`, `1GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 4096, 512KiB, 16MiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(de::Error::custom)
}

pub use picket_proto::duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("16MB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn the_shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/picket.toml");
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.device_class, "acme-gw-v2");
        assert_eq!(config.alerts.window, Duration::from_secs(60));
        assert_eq!(config.rescan_interval, Duration::from_secs(3600));
        assert!(config.output.stdout && config.output.file.is_some());
        let policy = Modes::default();
        let modes = config.modes.over(policy);
        assert_eq!(modes.files, Mode::Alert);
        assert_eq!(modes.executables, Mode::Alert);
        let mqtt = config.mqtt.as_ref().unwrap();
        assert_eq!(
            mqtt.address().unwrap(),
            ("fleet.example.com".to_string(), 8883)
        );
        assert_eq!(mqtt.format, picket_proto::Format::Postcard);
        assert_eq!(mqtt.protocol, crate::report::mqtt::Protocol::Auto);
        assert_eq!(config.spool.max_bytes, 8 << 20);
    }

    #[test]
    fn refuses_unknown_keys_with_their_line() {
        let dir = std::env::temp_dir().join(format!("picket-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("picket.toml");
        std::fs::write(
            &path,
            "device_id = \"d\"\ndevice_class = \"c\"\npolicy = \"/p\"\ntrust_dir = \"/t\"\n\
             state_dir = \"/s\"\nrescan_intervall = \"1h\"\n",
        )
        .unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 6"), "{err}");
        assert!(err.contains("rescan_intervall"), "{err}");
        std::fs::write(
            &path,
            "device_id = \"d\"\ndevice_class = \"c\"\npolicy = \"/p\"\ntrust_dir = \"/t\"\n\
             state_dir = \"/s\"\n[alerts]\nwindow = \"10x\"\n",
        )
        .unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown unit"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_configuration_can_weaken_modes_not_enforce_them() {
        let dir = std::env::temp_dir().join(format!("picket-config-modes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("picket.toml");
        let base = "device_id = \"d\"\ndevice_class = \"c\"\npolicy = \"/p\"\ntrust_dir = \"/t\"\n\
                    state_dir = \"/s\"\n";
        let load = |extra: &str| {
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            AgentConfig::load(&path)
        };
        let weakened = load("[modes]\nexecutables = \"alert\"\nnetwork = \"off\"\n").unwrap();
        let enforcing = Modes {
            executables: Mode::Enforce,
            network: Mode::Enforce,
            ..Modes::default()
        };
        let modes = weakened.modes.over(enforcing);
        assert_eq!((modes.executables, modes.network), (Mode::Alert, Mode::Off));
        for category in ["executables", "network", "files", "behaviour"] {
            let err = load(&format!("[modes]\n{category} = \"enforce\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("modes.{category}")), "{err}");
            assert!(err.contains("only the signed policy can enforce"), "{err}");
        }
        let defaults = load("").unwrap();
        assert_eq!(defaults.enforce.decision_time, Duration::from_secs(1));
        assert_eq!(defaults.enforce.on_timeout, OnTimeout::Allow);
        let set = load("[enforce]\ndecision_time = \"250ms\"\non_timeout = \"deny\"\n").unwrap();
        assert_eq!(set.enforce.decision_time, Duration::from_millis(250));
        assert_eq!(set.enforce.on_timeout, OnTimeout::Deny);
        let err = load("[enforce]\ndecision_time = \"5ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enforce.decision_time"), "{err}");
        let err = load("[enforce]\non_timeout = \"maybe\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("on_timeout"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
