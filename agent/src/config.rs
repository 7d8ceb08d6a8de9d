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
    /// This device's id (its certificate's CN once reporting exists).
    pub device_id: String,
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
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub output: OutputConfig,
}

/// Local overrides of the policy's modes; an absent key keeps the policy's.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModesConfig {
    pub executables: Option<Mode>,
    pub network: Option<Mode>,
    pub files: Option<Mode>,
}

impl ModesConfig {
    /// The modes in force: these overrides over the policy's.
    pub fn over(self, policy: Modes) -> Modes {
        Modes {
            executables: self.executables.unwrap_or(policy.executables),
            network: self.network.unwrap_or(policy.network),
            files: self.files.unwrap_or(policy.files),
        }
    }
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
        Ok(config)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(de::Error::custom)
}

/// `90s`, `15m`, `2h`, `1d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 15m, 2h"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (use s, m, h or d)")),
    }
    .ok_or_else(|| format!("`{s}` is too long"))?;
    if seconds == 0 {
        return Err("a duration must be longer than zero".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
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
}
