//! The configuration of the integrations (`[[webhook]]` and `[[syslog]]` entries of the
//! backend's configuration, `docs/INTEGRATIONS.md`), and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{duration, Config};

/// An HTTP(S) receiver of the stored alerts, POSTed to it in signed batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names this receiver (its cursor in the store): unique among the integrations.
    pub name: String,
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// A file holding the HMAC-SHA256 key of the signatures, readable by its owner only.
    pub secret: PathBuf,
    /// CA certificate(s) (PEM) that signed an `https` receiver's certificate (default: the
    /// system's, `/etc/ssl/certs/ca-certificates.crt`).
    pub ca: Option<PathBuf>,
    /// `picket` (the HTTP API's alert JSON) or `ocsf` (OCSF findings).
    #[serde(default)]
    pub format: WebhookFormat,
    /// The most alerts POSTed at once.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Longest wait between two attempts (the wait doubles from 1 s up to this).
    #[serde(default = "default_forward_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// How long a connection and then a response may take.
    #[serde(default = "default_forward_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// A receiver new to the store starts with every stored alert, not the next one stored.
    #[serde(default)]
    pub backfill: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Picket,
    Ocsf,
}

/// A syslog server receiving the stored alerts as RFC 5424 messages over TCP (RFC 6587
/// octet counting), or TLS (RFC 5425).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Names this receiver (its cursor in the store): unique among the integrations.
    pub name: String,
    /// `host:port` of the server; with TLS, the name its certificate must carry is the host.
    pub address: String,
    #[serde(default)]
    pub tls: bool,
    /// With TLS: the CA certificate(s) (PEM) that signed the server's certificate (default:
    /// the system's), and a client certificate and key (PEM) if the server asks for one.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `kern`, `user`, ..., `local0` to `local7`.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// The APP-NAME of the messages.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// The HOSTNAME of the messages; by default the id of the device that raised the alert.
    pub hostname: Option<String>,
    /// The most alerts sent on one connection.
    #[serde(default = "default_batch")]
    pub batch: u32,
    #[serde(default = "default_forward_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    #[serde(default = "default_forward_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub backfill: bool,
}

fn default_batch() -> u32 {
    100
}
fn default_forward_backoff() -> Duration {
    Duration::from_secs(300)
}
fn default_forward_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_facility() -> String {
    "local0".into()
}
fn default_app_name() -> String {
    "picket".into()
}

/// The syslog facilities, by their number.
pub const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl SyslogConfig {
    pub fn facility_code(&self) -> u8 {
        FACILITIES
            .iter()
            .position(|f| *f == self.facility)
            .unwrap_or(16) as u8
    }
}

/// Checks the integrations: names unique and usable, URLs, addresses and options coherent.
pub(crate) fn check_integrations(config: &Config) -> anyhow::Result<()> {
    let mut names = std::collections::BTreeSet::new();
    let webhooks = config.webhook.iter().map(|w| ("webhook", &w.name));
    let syslogs = config.syslog.iter().map(|s| ("syslog", &s.name));
    for (kind, name) in webhooks.chain(syslogs) {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "[[{kind}]] name `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
        );
        anyhow::ensure!(
            names.insert(name.as_str()),
            "[[{kind}]] name `{name}` is used by another integration: names are unique"
        );
    }
    for w in &config.webhook {
        let at = format!("[[webhook]] `{}`", w.name);
        let uri: hyper::Uri = w
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("{at}: url `{}`: {e}", w.url))?;
        let scheme = uri.scheme_str().unwrap_or("");
        anyhow::ensure!(
            matches!(scheme, "http" | "https") && uri.host().is_some(),
            "{at}: url `{}` is not an http:// or https:// URL",
            w.url
        );
        anyhow::ensure!(
            !uri.authority().is_some_and(|a| a.as_str().contains('@')),
            "{at}: url has a user name or password, which webhooks do not send: put a token in \
             the path or query, or let the receiver check the signature"
        );
        anyhow::ensure!(
            w.ca.is_none() || scheme == "https",
            "{at}: `ca` is for an https:// url"
        );
        anyhow::ensure!(w.batch > 0, "{at}: batch must be at least 1");
    }
    for s in &config.syslog {
        let at = format!("[[syslog]] `{}`", s.name);
        let port = s
            .address
            .rsplit_once(':')
            .map(|(h, p)| (h, p.parse::<u16>()));
        anyhow::ensure!(
            matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0),
            "{at}: address `{}` is not host:port",
            s.address
        );
        anyhow::ensure!(
            s.tls || (s.ca.is_none() && s.cert.is_none() && s.key.is_none()),
            "{at}: `ca`, `cert` and `key` are for `tls = true`"
        );
        anyhow::ensure!(
            s.cert.is_some() == s.key.is_some(),
            "{at}: `cert` and `key` go together: set both or neither"
        );
        anyhow::ensure!(
            FACILITIES.contains(&s.facility.as_str()),
            "{at}: unknown facility `{}` (one of {})",
            s.facility,
            FACILITIES.join(", ")
        );
        anyhow::ensure!(
            !s.app_name.is_empty()
                && s.app_name.len() <= 48
                && s.app_name.bytes().all(|b| b.is_ascii_graphic()),
            "{at}: app_name must be 1 to 48 printable ASCII characters"
        );
        if let Some(h) = &s.hostname {
            anyhow::ensure!(
                !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()),
                "{at}: hostname must be 1 to 255 printable ASCII characters"
            );
        }
        anyhow::ensure!(s.batch > 0, "{at}: batch must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_integrations() {
        let config = Config::parse(
            "[[webhook]]\nname = \"siem\"\nurl = \"https://siem.example/in\"\n\
             secret = \"s\"\nformat = \"ocsf\"\n\
             [[syslog]]\nname = \"rsyslog-1\"\naddress = \"log.example:6514\"\ntls = true\n",
        )
        .unwrap();
        assert_eq!(config.webhook[0].format, WebhookFormat::Ocsf);
        assert_eq!(config.webhook[0].batch, 100);
        assert_eq!(config.syslog[0].facility_code(), 16);
        assert_eq!(config.syslog[0].app_name, "picket");
        let hook = |extra: &str| {
            format!("[[webhook]]\nname = \"a\"\nurl = \"http://h/\"\nsecret = \"s\"\n{extra}")
        };
        let log = |extra: &str| format!("[[syslog]]\nname = \"b\"\naddress = \"h:514\"\n{extra}");
        for (bad, expected) in [
            (
                format!("{}{}", hook(""), hook("")),
                "[[webhook]] name `a` is used",
            ),
            (
                format!("{}[[syslog]]\nname = \"a\"\naddress = \"h:1\"\n", hook("")),
                "[[syslog]] name `a` is used",
            ),
            (
                hook("").replace("name = \"a\"", "name = \"a b\""),
                "name `a b`",
            ),
            (
                hook("").replace("http://h/", "ftp://h/"),
                "`a`: url `ftp://h/`",
            ),
            (
                hook("").replace("http://h/", "http://u:p@h/"),
                "`a`: url has a user name or password",
            ),
            (hook("ca = \"ca.pem\""), "`a`: `ca` is for an https"),
            (hook("batch = 0"), "`a`: batch"),
            (hook("format = \"xml\""), "line 5"),
            (log("").replace("h:514", "h"), "`b`: address `h`"),
            (
                log("ca = \"ca.pem\""),
                "`b`: `ca`, `cert` and `key` are for `tls = true`",
            ),
            (
                log("tls = true\ncert = \"c\""),
                "`b`: `cert` and `key` go together",
            ),
            (
                log("facility = \"local9\""),
                "`b`: unknown facility `local9`",
            ),
            (log("app_name = \"a b\""), "`b`: app_name"),
            (log("hostname = \"\""), "`b`: hostname"),
        ] {
            let err = Config::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn the_documented_integrations_parse() {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/INTEGRATIONS.md"),
        )
        .unwrap();
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .collect();
        assert!(!blocks.is_empty());
        let config = Config::parse(&blocks.concat()).unwrap();
        assert!(!config.webhook.is_empty() && !config.syslog.is_empty());
    }
}
