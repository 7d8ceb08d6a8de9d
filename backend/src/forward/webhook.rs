//! Webhooks: each batch POSTed as JSON on a connection of its own (HTTP/1.1, TLS for
//! `https`), signed with HMAC-SHA256: `X-Picket-Signature: sha256=HEX` of
//! `TIMESTAMP.BODY`, with `X-Picket-Timestamp: TIMESTAMP` (seconds since the epoch). A 2xx
//! answer acknowledges the batch.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hyper::http::{header, Request, Uri};
use ring::hmac;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{alert_json, Failure};
use crate::config::{WebhookConfig, WebhookFormat};
use crate::store::StoredAlert;

/// The CA certificates of an `https` receiver when its entry names none.
pub const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

pub(crate) struct Webhook {
    name: String,
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    key: hmac::Key,
    format: WebhookFormat,
    timeout: Duration,
}

/// The key in a secret file: its content, without the line end an editor adds.
pub(crate) fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut secret = picket_policy::keys::read_private(path)
        .with_context(|| format!("reading the secret {}", path.display()))?;
    while secret.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        secret.pop();
    }
    anyhow::ensure!(
        secret.len() >= 16,
        "the secret {} is shorter than 16 bytes",
        path.display()
    );
    Ok(secret)
}

/// `sha256=HEX` of HMAC-SHA256(`key`, `timestamp.body`): what a receiver computes.
#[cfg(test)]
pub(crate) fn signature(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    sign(&key, timestamp, body)
}

fn sign(key: &hmac::Key, timestamp: &str, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Webhook {
    pub(crate) fn new(c: &WebhookConfig) -> anyhow::Result<Webhook> {
        let uri: Uri = c.url.parse().with_context(|| format!("url `{}`", c.url))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .context("the url has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let ca = c.ca.as_deref().unwrap_or(Path::new(SYSTEM_CAS));
            let mut config = crate::tls::client_config_for(ca, None)?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())
                .with_context(|| format!("`{host}` is not a server name"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let secret = read_secret(&c.secret)?;
        Ok(Webhook {
            name: c.name.clone(),
            uri,
            host,
            port,
            tls,
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            format: c.format,
            timeout: c.timeout,
        })
    }

    /// The body of a batch: `{"receiver", "format", "alerts"}`.
    fn body(&self, alerts: &[StoredAlert]) -> String {
        let (format, alerts): (&str, Vec<Value>) = match self.format {
            WebhookFormat::Picket => ("picket", alerts.iter().map(alert_json).collect()),
            WebhookFormat::Ocsf => (
                "ocsf",
                alerts
                    .iter()
                    .map(|a| crate::export::ocsf::finding(&a.alert))
                    .collect(),
            ),
        };
        json!({"receiver": self.name, "format": format, "alerts": alerts}).to_string()
    }

    pub(crate) async fn deliver(&self, alerts: &[StoredAlert]) -> Result<(), Failure> {
        let body = self.body(alerts);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let signature = sign(&self.key, &timestamp, body.as_bytes());
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = Request::post(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("picket-backend/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-picket-timestamp", timestamp)
            .header("x-picket-signature", signature)
            .body(body)
            .map_err(|e| Failure::Refused(format!("building the request: {e}")))?;
        let retry = |what: &str, e: &dyn std::fmt::Display| {
            Failure::Retry(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let tcp = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(retry("connecting to", &e)),
            Err(_) => return Err(retry("connecting to", &"timed out")),
        };
        let status = match &self.tls {
            None => self.post(tcp, request).await,
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), tcp);
                match tokio::time::timeout(self.timeout, handshake).await {
                    Ok(Ok(tls)) => self.post(tls, request).await,
                    Ok(Err(e)) => return Err(retry("TLS with", &e)),
                    Err(_) => return Err(retry("TLS with", &"timed out")),
                }
            }
        }
        .map_err(|e| retry("POST to", &e))?;
        // Not the URL: its path or query may hold a token of the receiver's.
        let answered = format!("{}:{} answered {status}", self.host, self.port);
        match status.as_u16() {
            200..=299 => Ok(()),
            // Busy or slow: the receiver asks to be tried again.
            408 | 429 => Err(Failure::Retry(answered)),
            // A redirection (not followed: the URL is to be fixed) or a refusal of the request.
            300..=499 => Err(Failure::Refused(answered)),
            _ => Err(Failure::Retry(answered)),
        }
    }

    /// Sends `request` on `stream`; the status of the answer, within the timeout.
    async fn post<S>(
        &self,
        stream: S,
        request: Request<String>,
    ) -> anyhow::Result<hyper::StatusCode>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let response = sender.send_request(request).await;
            driver.abort();
            anyhow::Ok(response?.status())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", self.timeout))?
    }
}
