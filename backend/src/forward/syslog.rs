//! Syslog: each alert an RFC 5424 message, framed by octet counting (RFC 6587) over TCP, or
//! TLS (RFC 5425) with the server's certificate verified. Syslog over TCP has no
//! acknowledgement of its own, so each batch goes on a connection of its own, closed by this
//! side once written (TLS: with its `close_notify`), and is acknowledged when the server
//! closes it in turn: it then has read every byte of the batch. What the server did with them
//! after reading them (its queue, its disk) is its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{alert_json, Failure};
use crate::config::SyslogConfig;
use crate::store::StoredAlert;

/// The SD-ID of the structured data: `picket` at Picket's private enterprise number.
pub const SD_ID: &str = "picket@32473";

pub(crate) struct Syslog {
    address: String,
    host: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    facility: u8,
    app_name: String,
    hostname: Option<String>,
    timeout: Duration,
}

/// The syslog severity of an alert's severity: critical 2, high 3 (error), medium 4
/// (warning), anything else 5 (notice).
pub fn severity(s: &str) -> u8 {
    match s {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        _ => 5,
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424, 6.3.3).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Printable ASCII only (a HOSTNAME, a MSGID), at most `max` characters; `-` if none.
fn header_field(value: &str, max: usize) -> String {
    let v: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v
    }
}

impl Syslog {
    pub(crate) fn new(c: &SyslogConfig) -> anyhow::Result<Syslog> {
        let (host, _) = c
            .address
            .rsplit_once(':')
            .context("the address is not host:port")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = if c.tls {
            let ca =
                c.ca.as_deref()
                    .unwrap_or(Path::new(super::webhook::SYSTEM_CAS));
            let client = c.cert.as_deref().zip(c.key.as_deref());
            let config = crate::tls::client_config_for(ca, client)?;
            let name = ServerName::try_from(host.clone())
                .with_context(|| format!("`{host}` is not a server name"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Syslog {
            address: c.address.clone(),
            host,
            tls,
            facility: c.facility_code(),
            app_name: c.app_name.clone(),
            hostname: c.hostname.clone(),
            timeout: c.timeout,
        })
    }

    /// The RFC 5424 message of an alert.
    pub(crate) fn message(&self, a: &StoredAlert) -> String {
        let alert = &a.alert;
        let pri = u16::from(self.facility) * 8 + u16::from(severity(&alert.severity));
        // The device's time; past the year 9999, RFC 5424's NILVALUE.
        let time = crate::rfc3339(alert.time_ms, true).unwrap_or_else(|| "-".into());
        let hostname = header_field(self.hostname.as_deref().unwrap_or(&alert.device_id), 255);
        let msgid = header_field(&alert.kind, 32);
        let mut sd = format!(
            "[{SD_ID} id=\"{}\" device=\"{}\" seq=\"{}\" kind=\"{}\" severity=\"{}\" rule=\"{}\"",
            a.id,
            escape(&alert.device_id),
            alert.seq,
            escape(&alert.kind),
            escape(&alert.severity),
            escape(&alert.rule)
        );
        if let Some(path) = &alert.path {
            sd.push_str(&format!(" path=\"{}\"", escape(path)));
        }
        sd.push(']');
        format!(
            "<{pri}>1 {time} {hostname} {} - {msgid} {sd} {}",
            self.app_name,
            alert_json(a)
        )
    }

    pub(crate) async fn deliver(&self, alerts: &[StoredAlert]) -> Result<(), Failure> {
        let mut frames = Vec::new();
        for a in alerts {
            let message = self.message(a);
            frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
            frames.extend_from_slice(message.as_bytes());
        }
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Failure::Retry(format!("{what} {}: {e}", self.address))
        };
        let connect = tokio::net::TcpStream::connect(self.address.as_str());
        let tcp = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(fail("connecting to", &e)),
            Err(_) => return Err(fail("connecting to", &"timed out")),
        };
        let sent = match &self.tls {
            None => self.send(tcp, &frames).await,
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), tcp);
                match tokio::time::timeout(self.timeout, handshake).await {
                    Ok(Ok(tls)) => self.send(tls, &frames).await,
                    Ok(Err(e)) => return Err(fail("TLS with", &e)),
                    Err(_) => return Err(fail("TLS with", &"timed out")),
                }
            }
        };
        sent.map_err(|e| fail("sending to", &format!("{e:#}")))
    }

    /// Writes `frames`, closes this side and waits for the server to close its own.
    async fn send<S>(&self, mut stream: S, frames: &[u8]) -> anyhow::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let exchange = async {
            stream.write_all(frames).await?;
            stream.flush().await?;
            stream.shutdown().await?;
            let mut buf = [0u8; 512];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return anyhow::Ok(()),
                    Ok(_) => {}
                    // A TLS server that closes the connection without its close_notify has
                    // read everything too.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} did not close the connection within {:?} of the batch",
                    self.host,
                    self.timeout
                )
            })?
    }
}
