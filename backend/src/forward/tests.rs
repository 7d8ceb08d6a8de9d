//! The integrations against real receivers, fed from a real store (an SQLite file that the test
//! writes to through a connection of its own, as the ingest does): a webhook server on
//! loopback (axum) that checks the signatures, and rsyslogd (Debian's `rsyslog`) over TCP and
//! TLS (`syslog_tests.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use picket_proto::{Alert, AlertKind, Details, Severity};
use serde_json::Value;

use super::webhook::signature;
use crate::config::Config;
use crate::store::{ForwardRow, SqliteStore, Store};

pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    /// The test's own connection: it stores alerts as the ingest does.
    pub writer: SqliteStore,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("picket.db");
        let writer = SqliteStore::open(&db).unwrap();
        Fixture { dir, db, writer }
    }

    /// A file with `content`, readable by its owner only.
    pub fn secret(&self, name: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Starts the integrations of `config` on a connection of their own, as `serve` does.
    pub fn start(&self, config: &str) -> super::Integrations {
        self.try_start(&Config::parse(config).unwrap()).unwrap()
    }

    /// [`Fixture::start`], or its error. In a tokio runtime.
    pub fn try_start(&self, config: &Config) -> anyhow::Result<super::Integrations> {
        let store: Box<dyn Store> = Box::new(SqliteStore::open_existing(&self.db).unwrap());
        let store = Arc::new(Mutex::new(store));
        let newest = crate::newest::start(store.clone());
        super::start(config, store, newest)
    }

    /// Stores alert `seq` of `device`; returns its id.
    pub fn store(&mut self, device: &str, seq: u64, path: &str) -> u64 {
        let alert = Alert {
            seq,
            boot_id: "boot-1".into(),
            time_ms: 1_700_000_000_000 + seq,
            kind: AlertKind::UnknownExecutable,
            severity: if seq.is_multiple_of(2) {
                Severity::High
            } else {
                Severity::Critical
            },
            rule: "executables".into(),
            path: Some(path.into()),
            details: Details(serde_json::json!({"sha256": "00"})),
            count: 1,
            first_ms: 1,
            last_ms: 1,
            process: None,
        };
        assert!(self
            .writer
            .insert_alert(device, &alert, "json", 1_700_000_000_000)
            .unwrap());
        self.writer.last_alert_id().unwrap()
    }

    /// Stores `n` alerts of each device, interleaved, from sequence number `first`.
    pub fn store_many(&mut self, devices: &[&str], first: u64, n: u64) -> Vec<u64> {
        let mut ids = Vec::new();
        for seq in first..first + n {
            for d in devices {
                ids.push(self.store(d, seq, &format!("/tmp/{d}-{seq}")));
            }
        }
        ids
    }

    pub fn row(&mut self, name: &str) -> Option<ForwardRow> {
        self.writer
            .forward_rows()
            .unwrap()
            .into_iter()
            .find(|r| r.name == name)
    }
}

/// Waits until `done` holds, checking every 20 ms; fails after a minute (a bound on a hung
/// test, not a measure of speed).
pub(super) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A webhook receiver: checks each request's signature with its secret, answers `status`
/// to those that verify (401 to the others), and keeps the bodies it answered 2xx.
#[derive(Clone)]
struct Receiver {
    secret: Vec<u8>,
    status: Arc<AtomicU16>,
    accepted: Arc<Mutex<Vec<Value>>>,
    forged: Arc<Mutex<u64>>,
}

impl Receiver {
    fn new(secret: &str) -> Receiver {
        Receiver {
            secret: secret.as_bytes().to_vec(),
            status: Arc::new(AtomicU16::new(200)),
            accepted: Arc::default(),
            forged: Arc::default(),
        }
    }

    /// Listens on `port` from a task; aborting it stops the server.
    async fn listen(&self, port: u16) -> tokio::task::JoinHandle<()> {
        let app = self.router();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        })
    }

    fn router(&self) -> axum::Router {
        async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
            let header = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let timestamp = header("x-picket-timestamp");
            let expected = signature(&r.secret, &timestamp, body.as_bytes());
            if timestamp.is_empty() || header("x-picket-signature") != expected {
                *r.forged.lock().unwrap() += 1;
                return StatusCode::UNAUTHORIZED;
            }
            let status = StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap();
            if status.is_success() {
                r.accepted
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
            }
            status
        }
        axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.clone())
    }

    /// Listens on `port` with HTTPS (the test PKI's server certificate) from a task.
    async fn listen_tls(
        &self,
        port: u16,
        pki: &picket_test_support::Pki,
    ) -> tokio::task::JoinHandle<()> {
        use tower::ServiceExt;
        let config = crate::cmd::serve::server_config(pki.server_cert(), pki.server_key()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let app = self.router();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                        app.clone().oneshot(request.map(axum::body::Body::new))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        })
    }

    /// The ids of the alerts accepted, in the order received.
    fn ids(&self) -> Vec<u64> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["alerts"].as_array().unwrap().clone())
            .map(|a| a["id"].as_u64().unwrap())
            .collect()
    }
}

fn webhook(name: &str, port: u16, secret: &Path, extra: &str) -> String {
    webhook_at(
        name,
        &format!("http://127.0.0.1:{port}/hook"),
        secret,
        extra,
    )
}

fn webhook_at(name: &str, url: &str, secret: &Path, extra: &str) -> String {
    format!(
        "[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\n\
         secret = \"{}\"\nbatch = 7\nmax_backoff = \"1s\"\n{extra}\n",
        secret.display()
    )
}

const SECRET: &str = "a webhook secret of some length";

/// Every alert stored once the receiver is up is delivered once, in id order (so in order per
/// device), in signed batches of at most `batch`; a receiver with another secret refuses the
/// signature (401), which is retried, not skipped; OCSF is delivered as findings.
#[test]
fn webhook_delivers_each_alert_once_in_order_and_signed() {
    let runtime = runtime();
    runtime.block_on(async {
        let mut f = Fixture::new();
        let before = f.store("gw-0", 1, "/tmp/before");
        let port = picket_test_support::ports::free_port();
        let receiver = Receiver::new(SECRET);
        let _server = receiver.listen(port).await;
        let good = f.secret("good.secret", &format!("{SECRET}\n"));
        let wrong = f.secret("wrong.secret", "another secret, not the receiver's");
        let config = format!(
            "{}{}{}",
            webhook("siem", port, &good, ""),
            webhook("forger", port, &wrong, ""),
            webhook(
                "findings",
                port,
                &good,
                "format = \"ocsf\"\nbackfill = true"
            ),
        );
        let _running = f.start(&config);
        until("the receivers to start", || {
            f.writer.forward_rows().unwrap().len() == 3
        })
        .await;
        // A new receiver starts after what was stored (unless it backfills: below).
        assert_eq!(f.row("siem").unwrap().last_id, before);
        let mut ids = f.store_many(&["gw-1", "gw-2"], 1, 10);
        ids.extend(f.store_many(&["gw-1", "gw-2"], 11, 5));
        let last = *ids.last().unwrap();
        until("every alert at the receivers", || {
            f.row("siem").unwrap().last_id == last && f.row("findings").unwrap().last_id == last
        })
        .await;
        let bodies = receiver.accepted.lock().unwrap().clone();
        let (picket, ocsf): (Vec<_>, Vec<_>) = bodies.iter().partition(|b| b["format"] == "picket");
        let delivered: Vec<u64> = picket
            .iter()
            .flat_map(|b| b["alerts"].as_array().unwrap().clone())
            .map(|a| a["id"].as_u64().unwrap())
            .collect();
        assert_eq!(delivered, ids, "each alert once, in the order stored");
        assert!(picket.iter().all(|b| b["receiver"] == "siem"));
        assert!(picket
            .iter()
            .all(|b| (1..=7).contains(&b["alerts"].as_array().unwrap().len())));
        let first = &picket[0]["alerts"][0];
        assert_eq!(
            (first["device_id"].as_str(), first["seq"].as_u64()),
            (Some("gw-1"), Some(1))
        );
        assert_eq!(first["path"], "/tmp/gw-1-1");
        let findings: usize = ocsf
            .iter()
            .map(|b| b["alerts"].as_array().unwrap().len())
            .sum();
        assert_eq!(findings, ids.len() + 1, "the backfill and the new ones");
        assert_eq!(ocsf[0]["alerts"][0]["class_uid"], 2004);
        // The wrong secret: refused every time, nothing marked delivered, the error kept.
        let forger = f.row("forger").unwrap();
        assert_eq!(forger.last_id, before);
        assert_eq!(forger.success_ms, None);
        let error = forger.error.unwrap();
        assert!(error.contains("401"), "{error}");
        assert!(*receiver.forged.lock().unwrap() >= 1);
        assert_eq!(f.row("siem").unwrap().error, None);
        assert_eq!(f.writer.alerts_behind(before).unwrap(), ids.len() as u64);
    });
}

/// A receiver refusing connections, then answering 500, while alerts are stored and `serve`
/// restarts: nothing is marked delivered until it takes them, then every one arrives, in order,
/// none twice.
#[test]
fn webhook_down_then_up_across_a_restart_loses_nothing() {
    let runtime = runtime();
    runtime.block_on(async {
        let mut f = Fixture::new();
        let port = picket_test_support::ports::free_port();
        let secret = f.secret("s", SECRET);
        let config = webhook("siem", port, &secret, "");
        let running = f.start(&config);
        until("the receiver to start", || f.row("siem").is_some()).await;
        let mut ids = f.store_many(&["gw-1", "gw-2"], 1, 6);
        until("the refused connection noted", || {
            f.row("siem").unwrap().error.is_some()
        })
        .await;
        let row = f.row("siem").unwrap();
        assert!(
            row.error.as_deref().unwrap().contains("connecting to"),
            "{row:?}"
        );
        assert_eq!((row.last_id, row.success_ms), (0, None));
        // `serve` stops and starts again while the receiver is still down.
        drop(running);
        ids.extend(f.store_many(&["gw-1", "gw-2"], 7, 6));
        let _running = f.start(&config);
        assert_eq!(f.row("siem").unwrap().last_id, 0, "the cursor survives");
        // The receiver comes up, failing.
        let receiver = Receiver::new(SECRET);
        receiver.status.store(500, Ordering::SeqCst);
        let _server = receiver.listen(port).await;
        until("the 500 noted", || {
            f.row("siem")
                .unwrap()
                .error
                .is_some_and(|e| e.contains("500"))
        })
        .await;
        assert_eq!(f.row("siem").unwrap().last_id, 0);
        assert!(receiver.ids().is_empty());
        ids.extend(f.store_many(&["gw-1", "gw-2"], 13, 3));
        // It recovers.
        receiver.status.store(204, Ordering::SeqCst);
        let last = *ids.last().unwrap();
        until("every alert delivered", || {
            f.row("siem").unwrap().last_id == last
        })
        .await;
        assert_eq!(receiver.ids(), ids);
        let row = f.row("siem").unwrap();
        assert_eq!(row.error, None);
        assert!(row.success_ms.is_some());
        assert_eq!(f.writer.alerts_behind(row.last_id).unwrap(), 0);
    });
}

/// Over HTTPS, the receiver's certificate is verified: a receiver whose certificate chains to
/// the entry's `ca` gets every alert; an entry that trusts another CA refuses it, and nothing is
/// marked delivered to it.
#[test]
fn webhook_over_https_verifies_the_receiver() {
    let runtime = runtime();
    runtime.block_on(async {
        let mut f = Fixture::new();
        let pki = picket_test_support::Pki::new();
        let port = picket_test_support::ports::free_port();
        let receiver = Receiver::new(SECRET);
        let _server = receiver.listen_tls(port, &pki).await;
        let secret = f.secret("s", SECRET);
        let url = format!("https://127.0.0.1:{port}/hook");
        let ca = |path: &Path| format!("ca = \"{}\"\nbackfill = true", path.display());
        let config = format!(
            "{}{}",
            webhook_at("tls", &url, &secret, &ca(pki.ca_cert())),
            webhook_at("stranger", &url, &secret, &ca(pki.other_ca_cert())),
        );
        let ids = f.store_many(&["gw-1", "gw-2"], 1, 5);
        let _running = f.start(&config);
        let last = *ids.last().unwrap();
        until("every alert over HTTPS", || {
            f.row("tls").is_some_and(|r| r.last_id == last)
        })
        .await;
        until("the other CA's refusal", || {
            f.row("stranger")
                .and_then(|r| r.error)
                .is_some_and(|e| e.contains("UnknownIssuer"))
        })
        .await;
        assert_eq!(receiver.ids(), ids, "from `tls` only, each once");
        let stranger = f.row("stranger").unwrap();
        assert_eq!((stranger.last_id, stranger.success_ms), (0, None));
    });
}

/// A configuration that names an unusable secret is refused, naming the entry.
#[test]
fn an_unusable_secret_is_refused_naming_the_entry() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let secret = f.secret("open.secret", SECRET);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = Config::parse(&webhook("siem", 1, &secret, "")).unwrap();
    let runtime = runtime();
    let _guard = runtime.enter();
    let error = format!("{:#}", f.try_start(&config).err().unwrap());
    assert!(
        error.contains("[[webhook]] `siem`") && error.contains("chmod 600"),
        "{error}"
    );
    let short = f.secret("short.secret", "short");
    let config = Config::parse(&webhook("siem", 1, &short, "")).unwrap();
    let error = format!("{:#}", f.try_start(&config).err().unwrap());
    assert!(error.contains("shorter than 16 bytes"), "{error}");
}

/// The signature is HMAC-SHA256 of `timestamp.body`, in hex (the value Python's `hmac` gives,
/// as docs/INTEGRATIONS.md verifies it), and another key or body does not give it.
#[test]
fn the_signature_is_hmac_sha256_of_the_timestamp_and_body() {
    let sig = signature(b"Jefe", "1700000000", br#"{"alerts":[]}"#);
    assert_eq!(
        sig,
        "sha256=136f8c44ea568569e59a46c69f445291ba9371b15959d03dc6d930b9205c14fb"
    );
    assert_ne!(sig, signature(b"Jefg", "1700000000", br#"{"alerts":[]}"#));
    assert_ne!(sig, signature(b"Jefe", "1700000001", br#"{"alerts":[]}"#));
    assert_ne!(sig, signature(b"Jefe", "1700000000", br#"{"alerts":[{}]}"#));
}

/// The receivers whose task panics before its next delivery, once each (by name: the tests run
/// side by side).
static PANIC_BEFORE_DELIVERY: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Panics if a panic is armed for the receiver `name` (and disarms it).
pub(super) fn panic_if_armed(name: &str) {
    let mut armed = PANIC_BEFORE_DELIVERY.lock().unwrap();
    if let Some(i) = armed.iter().position(|n| n == name) {
        armed.remove(i);
        drop(armed);
        panic!("a panic armed for `{name}`");
    }
}

/// A receiver's task that panics is started again (after a backoff) from its cursor: every
/// alert is delivered, once, in order; the other receivers go on meanwhile.
#[test]
fn a_task_that_panics_is_restarted_and_delivery_resumes() {
    let runtime = runtime();
    runtime.block_on(async {
        let mut f = Fixture::new();
        let port = picket_test_support::ports::free_port();
        let receiver = Receiver::new(SECRET);
        let _server = receiver.listen(port).await;
        let secret = f.secret("s", SECRET);
        let config = format!(
            "{}{}",
            webhook("panicky", port, &secret, ""),
            webhook("steady", port, &secret, ""),
        );
        PANIC_BEFORE_DELIVERY.lock().unwrap().push("panicky".into());
        let _running = f.start(&config);
        until("the receivers to start", || {
            f.writer.forward_rows().unwrap().len() == 2
        })
        .await;
        let ids = f.store_many(&["gw-1", "gw-2"], 1, 5);
        let last = *ids.last().unwrap();
        until("every alert delivered to both", || {
            f.row("panicky").unwrap().last_id == last && f.row("steady").unwrap().last_id == last
        })
        .await;
        assert!(
            PANIC_BEFORE_DELIVERY.lock().unwrap().is_empty(),
            "the task panicked"
        );
        let by = |name: &str| -> Vec<u64> {
            receiver
                .accepted
                .lock()
                .unwrap()
                .iter()
                .filter(|b| b["receiver"] == name)
                .flat_map(|b| b["alerts"].as_array().unwrap().clone())
                .map(|a| a["id"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(by("panicky"), ids, "each alert once, in order");
        assert_eq!(by("steady"), ids);
    });
}
