//! The backend's configuration file (`backend.toml`), documented in `docs/BACKEND.md`.
//! Unknown keys are refused, with the line they are on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{de, Deserialize, Deserializer};

use crate::forward::config::check_integrations;
pub use crate::forward::config::{SyslogConfig, WebhookConfig, WebhookFormat};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mqtt: Option<MqttConfig>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub devices: DevicesConfig,
    /// What one device may send and keep (`docs/BACKEND.md`, "Limits and quotas").
    #[serde(default)]
    pub limits: LimitsConfig,
    pub http: Option<HttpConfig>,
    /// A Mosquitto that `serve` starts and supervises (`docs/BACKEND.md`, "Managed broker").
    pub broker: Option<BrokerConfig>,
    /// Group name → device ids, for `policy push --group`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Receivers of the stored alerts (`docs/INTEGRATIONS.md`): webhooks...
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    /// ...and syslog servers.
    #[serde(default)]
    pub syslog: Vec<SyslogConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address; also the name its certificate must carry.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id; unique per backend instance.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// CA certificate(s) (PEM) that signed the broker's certificate.
    pub ca: PathBuf,
    /// This backend's client certificate (PEM) and its private key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Shared-subscription group: instances with the same group split the messages between
    /// them. Empty: every instance receives every message. Not used when ingesting from the
    /// managed broker (`[broker]`), whose only receiver `serve` is.
    #[serde(default = "default_share_group")]
    pub share_group: String,
    #[serde(default = "default_keep_alive", deserialize_with = "duration")]
    pub keep_alive: Duration,
    /// How long the broker keeps this instance's session (and queues its messages) while it
    /// is disconnected.
    #[serde(default = "default_session_expiry", deserialize_with = "duration")]
    pub session_expiry: Duration,
    /// Longest wait between reconnection attempts (the wait doubles from 1 s up to this).
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite database file (default `/var/lib/picket-backend/picket.db`).
    sqlite: Option<PathBuf>,
    /// A PostgreSQL connection string; when set, the store is PostgreSQL, not SQLite.
    pub postgres: Option<String>,
    /// The CA certificates (PEM) that sign the PostgreSQL server's certificate: when set, the
    /// connection must use TLS and the server's certificate must be valid for the host named
    /// in `postgres`.
    pub postgres_ca: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for a server that asks for one.
    pub postgres_cert: Option<PathBuf>,
    pub postgres_key: Option<PathBuf>,
    /// Alerts older than this (by time received) are deleted. Absent: kept forever.
    #[serde(default, deserialize_with = "opt_duration")]
    pub retention: Option<Duration>,
    /// How often the retention runs.
    #[serde(default = "default_retention_interval", deserialize_with = "duration")]
    pub retention_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            sqlite: None,
            postgres: None,
            postgres_ca: None,
            postgres_cert: None,
            postgres_key: None,
            retention: None,
            retention_interval: default_retention_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// A device that said it is online but sent nothing for this long is shown offline.
    #[serde(default = "default_heartbeat_timeout", deserialize_with = "duration")]
    pub heartbeat_timeout: Duration,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            heartbeat_timeout: default_heartbeat_timeout(),
        }
    }
}

/// Per-device limits: a token bucket on the alerts each device sends, and a quota on the
/// alerts stored for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Alerts per second a device may send, sustained.
    #[serde(default = "default_alerts_per_second")]
    pub alerts_per_second: u32,
    /// Alerts a device may send at once beyond the sustained rate (the bucket's size).
    #[serde(default = "default_alert_burst")]
    pub alert_burst: u32,
    /// Alerts kept per device; beyond it the device's oldest (first received) are
    /// removed.
    #[serde(default = "default_max_alerts_per_device")]
    pub max_alerts_per_device: u64,
    /// Heartbeats and statuses per minute a device may send, sustained.
    #[serde(default = "default_presence_per_minute")]
    pub presence_per_minute: u32,
    /// Heartbeats and statuses a device may send at once beyond the sustained rate.
    #[serde(default = "default_presence_burst")]
    pub presence_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            alerts_per_second: default_alerts_per_second(),
            alert_burst: default_alert_burst(),
            max_alerts_per_device: default_max_alerts_per_device(),
            presence_per_minute: default_presence_per_minute(),
            presence_burst: default_presence_burst(),
        }
    }
}

fn default_alerts_per_second() -> u32 {
    10
}
/// More than a full spool of the agent's default size (8 MiB) holds, even of the smallest
/// alerts (about 100 bytes with the spool's record header): a device draining its spool
/// after an outage is never limited.
fn default_alert_burst() -> u32 {
    100_000
}
fn default_max_alerts_per_device() -> u64 {
    1_000_000
}
/// Twice what an agent with a heartbeat every second sends (60 s by default), with room for a
/// status at each of its connections.
fn default_presence_per_minute() -> u32 {
    120
}
fn default_presence_burst() -> u32 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP JSON API and the console.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Certificate chain (PEM) and private key (PEM) of the listener: HTTPS. Required to
    /// listen beyond the loopback interface.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A session ends after this long without a request...
    #[serde(default = "default_session_idle", deserialize_with = "duration")]
    pub session_idle: Duration,
    /// ...and this long after the login in any case.
    #[serde(default = "default_session_lifetime", deserialize_with = "duration")]
    pub session_lifetime: Duration,
    /// Failed logins of one user name, and from one client address, within
    /// `login_window`, after which logins are answered 429 until the window has passed.
    #[serde(default = "default_login_failures_per_user")]
    pub login_failures_per_user: u32,
    #[serde(default = "default_login_failures_per_address")]
    pub login_failures_per_address: u32,
    #[serde(default = "default_login_window", deserialize_with = "duration")]
    pub login_window: Duration,
}

impl HttpConfig {
    /// With `tls_cert` and `tls_key`: HTTPS.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }
}

fn default_session_idle() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_login_failures_per_user() -> u32 {
    5
}
fn default_login_failures_per_address() -> u32 {
    20
}
fn default_login_window() -> Duration {
    Duration::from_secs(15 * 60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address and port of the broker's TLS listener.
    #[serde(default = "default_broker_listen")]
    pub listen: SocketAddr,
    /// The fleet CA (PEM): it signed the devices' and the backend's certificates.
    pub ca: PathBuf,
    /// The broker's certificate (PEM) and its private key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The Mosquitto executable (default: `mosquitto` on `PATH`, or in `/usr/sbin`).
    pub mosquitto: Option<PathBuf>,
    /// Messages Mosquitto queues per client beyond those in flight.
    #[serde(default = "default_max_queued_messages")]
    pub max_queued_messages: u64,
    /// Where the generated configuration, ACL and log go.
    dir: Option<PathBuf>,
}

impl BrokerConfig {
    /// `broker.dir`, by default `broker/` next to the SQLite database, or
    /// `/var/lib/picket-backend/broker` with PostgreSQL.
    pub fn dir(&self, store: &StoreConfig) -> PathBuf {
        if let Some(dir) = &self.dir {
            return dir.clone();
        }
        match &store.postgres {
            Some(_) => PathBuf::from("/var/lib/picket-backend/broker"),
            None => store
                .sqlite()
                .parent()
                .map(|p| p.join("broker"))
                .unwrap_or_else(|| PathBuf::from("broker")),
        }
    }
}

fn default_broker_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8883))
}
fn default_max_queued_messages() -> u64 {
    100_000
}
fn default_port() -> u16 {
    8883
}
fn default_client_id() -> String {
    "picket-backend".into()
}
fn default_share_group() -> String {
    "picket-backend".into()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(86_400)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
impl StoreConfig {
    /// The SQLite database (when `postgres` is not set).
    pub fn sqlite(&self) -> PathBuf {
        self.sqlite
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/picket-backend/picket.db"))
    }
}
fn default_retention_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_heartbeat_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Config {
    /// Reads and checks the configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        if let Some(mqtt) = &config.mqtt {
            anyhow::ensure!(!mqtt.host.is_empty(), "mqtt.host is empty");
            anyhow::ensure!(!mqtt.client_id.is_empty(), "mqtt.client_id is empty");
            anyhow::ensure!(
                !mqtt.share_group.contains(['/', '+', '#']),
                "mqtt.share_group `{}` may not contain `/`, `+` or `#`",
                mqtt.share_group
            );
            anyhow::ensure!(
                mqtt.keep_alive >= Duration::from_secs(5),
                "mqtt.keep_alive must be at least 5s"
            );
        }
        anyhow::ensure!(
            config.store.sqlite.is_none() || config.store.postgres.is_none(),
            "store.sqlite and store.postgres are both set: choose one"
        );
        let store = &config.store;
        anyhow::ensure!(
            store.postgres.is_some()
                || (store.postgres_ca.is_none()
                    && store.postgres_cert.is_none()
                    && store.postgres_key.is_none()),
            "store.postgres_ca, store.postgres_cert and store.postgres_key need store.postgres"
        );
        anyhow::ensure!(
            store.postgres_cert.is_some() == store.postgres_key.is_some(),
            "store.postgres_cert and store.postgres_key go together: set both or neither"
        );
        anyhow::ensure!(
            store.postgres_cert.is_none() || store.postgres_ca.is_some(),
            "store.postgres_cert needs store.postgres_ca (the client certificate is sent over TLS)"
        );
        if let Some(broker) = &config.broker {
            anyhow::ensure!(broker.listen.port() != 0, "broker.listen needs a port");
            anyhow::ensure!(
                broker.max_queued_messages > 0,
                "broker.max_queued_messages = 0 (no limit) is refused: with it Mosquitto 2.0.11 \
                 drops the connection of a client whose publication its ACL refuses"
            );
        }
        if let Some(http) = &config.http {
            anyhow::ensure!(
                http.tls_cert.is_some() == http.tls_key.is_some(),
                "http.tls_cert and http.tls_key go together: set both or neither"
            );
            anyhow::ensure!(
                http.listen.ip().is_loopback() || http.tls().is_some(),
                "http.listen = \"{}\" is beyond the loopback interface: set http.tls_cert and \
                 http.tls_key (passwords and session cookies must not cross a network in clear), \
                 or listen on 127.0.0.1",
                http.listen
            );
            anyhow::ensure!(
                http.login_failures_per_user > 0 && http.login_failures_per_address > 0,
                "http.login_failures_per_user and http.login_failures_per_address must be at \
                 least 1"
            );
        }
        let limits = &config.limits;
        anyhow::ensure!(
            limits.alerts_per_second > 0,
            "limits.alerts_per_second must be at least 1"
        );
        anyhow::ensure!(
            limits.alert_burst > 0,
            "limits.alert_burst must be at least 1"
        );
        anyhow::ensure!(
            limits.max_alerts_per_device > 0,
            "limits.max_alerts_per_device must be at least 1"
        );
        anyhow::ensure!(
            limits.presence_per_minute > 0 && limits.presence_burst > 0,
            "limits.presence_per_minute and limits.presence_burst must be at least 1"
        );
        check_integrations(&config)?;
        for (group, devices) in &config.groups {
            for id in devices {
                picket_proto::topic::check_device_id(id)
                    .map_err(|e| anyhow::anyhow!("groups.{group}: {e}"))?;
            }
        }
        Ok(config)
    }

    pub fn mqtt(&self) -> anyhow::Result<&MqttConfig> {
        self.mqtt
            .as_ref()
            .context("the configuration has no [mqtt] section")
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub use picket_proto::duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_configuration() {
        let config = Config::parse(
            r#"
[mqtt]
host = "broker.example"
client_id = "be-1"
ca = "ca.pem"
cert = "be.pem"
key = "be.key"
share_group = "g"

[store]
sqlite = "/tmp/x.db"
retention = "30d"

[devices]
heartbeat_timeout = "90s"

[http]
listen = "127.0.0.1:9000"

[groups]
lab = ["gw-1", "gw-2"]
"#,
        )
        .unwrap();
        let mqtt = config.mqtt().unwrap();
        assert_eq!(mqtt.port, 8883);
        assert_eq!(mqtt.share_group, "g");
        assert_eq!(
            config.store.retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(config.devices.heartbeat_timeout, Duration::from_secs(90));
        assert_eq!(config.http.unwrap().listen.port(), 9000);
        assert_eq!(config.groups["lab"], ["gw-1", "gw-2"]);
    }

    #[test]
    fn the_documented_configuration_parses() {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/BACKEND.md"),
        )
        .unwrap();
        let block = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a TOML block in docs/BACKEND.md");
        let config = Config::parse(block).unwrap();
        assert_eq!(config.mqtt().unwrap().client_id, "picket-backend-1");
        assert_eq!(
            config.devices.heartbeat_timeout,
            default_heartbeat_timeout()
        );
        assert_eq!(config.http.unwrap().listen, default_listen());
        let broker = config.broker.unwrap();
        assert_eq!(broker.listen, default_broker_listen());
        assert_eq!(broker.max_queued_messages, default_max_queued_messages());
        let limits = config.limits;
        assert_eq!(limits.alerts_per_second, default_alerts_per_second());
        assert_eq!(limits.alert_burst, default_alert_burst());
        assert_eq!(
            limits.max_alerts_per_device,
            default_max_alerts_per_device()
        );
        assert_eq!(limits.presence_per_minute, default_presence_per_minute());
        assert_eq!(limits.presence_burst, default_presence_burst());
    }

    #[test]
    fn the_broker_section() {
        let config = Config::parse(
            "[store]\nsqlite = \"/srv/fleet/picket.db\"\n\n\
             [broker]\nca = \"ca.pem\"\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        )
        .unwrap();
        let broker = config.broker.as_ref().unwrap();
        assert_eq!(broker.listen, "127.0.0.1:8883".parse().unwrap());
        assert_eq!(broker.max_queued_messages, 100_000);
        assert_eq!(broker.mosquitto, None);
        assert_eq!(
            broker.dir(&config.store),
            PathBuf::from("/srv/fleet/broker")
        );
        let pg = Config::parse(
            "[store]\npostgres = \"dbname=p\"\n[broker]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
        assert_eq!(
            pg.broker.as_ref().unwrap().dir(&pg.store),
            PathBuf::from("/var/lib/picket-backend/broker")
        );
        let err = Config::parse("[broker]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nport = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 5") && err.contains("port"), "{err}");
        let err = Config::parse(
            "[broker]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nmax_queued_messages = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_queued_messages"), "{err}");
        let err = Config::parse(
            "[broker]\nlisten = \"localhost\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn refuses_unknown_keys_with_their_line() {
        let err = Config::parse("[store]\nsqlite = \"a.db\"\nretension = \"3d\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("retension"), "{err}");
        let err = Config::parse("[groups]\nlab = [\"a/b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("groups.lab"), "{err}");
        for (bad, key) in [
            ("alerts_per_second = 0", "limits.alerts_per_second"),
            ("alert_burst = 0", "limits.alert_burst"),
            ("max_alerts_per_device = 0", "limits.max_alerts_per_device"),
        ] {
            let err = Config::parse(&format!("[limits]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
        let err = Config::parse("[limits]\nalerts_per_second = 2.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("[devices]\nheartbeat_timeout = \"3y\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("unknown unit"),
            "{err}"
        );
    }
}
