//! `picket-backend serve`: the managed broker (if configured), the ingest into the store, the
//! HTTP API, the integrations and the retention task, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::config::{self, Config};
use crate::store::{self, Store};
use crate::{api, broker, forward, ingest, newest, tls};

/// Runs `serve` with `config`, into the SQLite database `db` if given.
pub fn serve(config: Config, db: Option<PathBuf>) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        // Allowed (development, scripts/run.sh), but said: whoever takes over a backend
        // running as root owns its host too.
        log::warn!(
            "running as root: outside development, run `serve` as a user of its own, as \
             backend/dist/picket-backend.service does (docs/BACKEND.md, \"Running as a service\")"
        );
    }
    let mut mqtt = config.mqtt()?.clone();
    if let Some(broker) = &config.broker {
        if broker::points_at(&mqtt.host, mqtt.port, broker.listen) {
            // The managed broker's only receiver: plain subscriptions, which Mosquitto keeps
            // with the session across its restarts (shared ones it does not keep).
            mqtt.share_group.clear();
        }
    }
    let store = store::open(&config.store, db.as_deref(), true)?;
    let store = Arc::new(Mutex::new(store));
    let location = match (&config.store.postgres, &db) {
        (Some(_), None) => "PostgreSQL".to_string(),
        (_, Some(path)) => path.display().to_string(),
        (None, None) => config.store.sqlite().display().to_string(),
    };
    // Fail early on unreadable certificates rather than in the reconnection loop.
    tls::client_config(&mqtt.ca, &mqtt.cert, &mqtt.key)?;
    // The API's own connection, so that queries do not wait for the ingest's.
    let reader = match &config.http {
        Some(_) => Some(store::open(&config.store, db.as_deref(), false)?),
        None => None,
    };
    // The integrations' own connection too, if any are configured.
    let forwarder = match forward::configured(&config).is_empty() {
        false => Some(store::open(&config.store, db.as_deref(), false)?),
        true => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Caught from here on: a SIGINT or SIGTERM while the managed broker starts stops it
        // once it listens, instead of ending `serve` and leaving the broker running.
        let signals = Signals::new()?;
        // The managed broker first: when the HTTP API answers, the broker listens too.
        let broker = match &config.broker {
            Some(b) => Some(broker::Broker::start(&config, b).await?),
            None => None,
        };
        let served = serve_with(&config, mqtt, store, [reader, forwarder], location, signals).await;
        if let Some(broker) = broker {
            broker.stop().await;
        }
        served
    })
}

/// The signals that stop `serve`, caught from their creation on.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }
}

/// `serve` once the store is open (and the managed broker, if any, is listening): until a
/// signal or an error.
async fn serve_with(
    config: &Config,
    mqtt: config::MqttConfig,
    store: Arc<Mutex<Box<dyn Store>>>,
    [reader, forwarder]: [Option<Box<dyn Store>>; 2],
    location: String,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let shared = |s: Box<dyn Store>| Arc::new(Mutex::new(s));
    let (reader, forwarder) = (reader.map(shared), forwarder.map(shared));
    // The newest alert id, read for both the integrations and the live events, on the
    // integrations' connection (else the API's).
    let newest = forwarder
        .as_ref()
        .or(reader.as_ref())
        .map(|s| newest::start(s.clone()));
    // Held until `serve` ends: dropping it stops the integrations. Started before the API: an
    // entry that is wrong (an unreadable secret or certificate) fails `serve` before it
    // answers anything.
    let _integrations = match (forwarder, &newest) {
        (Some(connection), Some(newest)) => {
            Some(forward::start(config, connection, newest.clone())?)
        }
        _ => None,
    };
    if let (Some(http), Some(reader), Some(newest)) = (&config.http, reader, newest) {
        spawn_api(http, reader, newest, config).await?;
    }
    if let Some(retention) = config.store.retention {
        spawn_retention(store.clone(), retention, config.store.retention_interval);
    }
    log::info!(
        "ingesting from {}:{} as `{}` into {}",
        mqtt.host,
        mqtt.port,
        mqtt.client_id,
        location
    );
    let limits = &config.limits;
    log::info!(
        "per device: at most {} alert(s) per second (burst {}), {} stored",
        limits.alerts_per_second,
        limits.alert_burst,
        limits.max_alerts_per_device
    );
    let connected = Arc::new(AtomicU64::new(0));
    spawn_timeouts(
        store.clone(),
        config.devices.heartbeat_timeout,
        connected.clone(),
    );
    tokio::select! {
        r = ingest::run(mqtt, limits, store, connected) => r,
        _ = signals.interrupt.recv() => { log::info!("interrupted; stopping"); Ok(()) }
        _ = signals.terminate.recv() => { log::info!("terminated; stopping"); Ok(()) }
    }
}

/// Binds the HTTP API's address and answers it from a task, with `reader` and its live events
/// woken by `newest`: plain HTTP, or HTTPS with `tls_cert` and `tls_key`.
async fn spawn_api(
    http: &config::HttpConfig,
    reader: Arc<Mutex<Box<dyn Store>>>,
    newest: newest::Newest,
    config: &Config,
) -> anyhow::Result<()> {
    // Read before binding: unreadable certificates fail `serve` with their name.
    let tls = match http.tls() {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
            cert, key,
        )?))),
        None => None,
    };
    let app = api::router(reader, config, newest)?;
    let listener = tokio::net::TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("binding the HTTP API to {}", http.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    log::info!(
        "HTTP API and console on {scheme}://{}/",
        listener.local_addr()?
    );
    match tls {
        None => {
            tokio::spawn(async move {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(e) = axum::serve(listener, app).await {
                    log::error!("HTTP API: {e}");
                }
            });
        }
        Some(acceptor) => {
            tokio::spawn(serve_tls(listener, acceptor, app));
        }
    }
    Ok(())
}

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections and answers each, once its TLS handshake is done, from a task of its
/// own (a slow handshake does not hold up the others).
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
) {
    use tower::ServiceExt;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, for instance: wait rather than spin.
                log::error!("HTTP API: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    log::debug!("HTTP API: TLS handshake with {peer}: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                app.clone().oneshot(request.map(axum::body::Body::new))
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                log::debug!("HTTP API: connection of {peer}: {e}");
            }
        });
    }
}

/// The HTTPS listener's configuration: the certificate chain in `cert` and the private key in
/// `key` (PEM), no client certificate.
pub(crate) fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading http.tls_cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing http.tls_cert {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{}: no certificate found",
        cert.display()
    );
    let key = crate::tls::private_key(key).context("http.tls_key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("http.tls_cert and http.tls_key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Records as timed out (once each, with the backend's `device_silent` alert) the devices that
/// said they were online and sent nothing for longer than `timeout`: checked every quarter of
/// it (1 s to 30 s), once the ingest has been connected for at least `timeout` (a backend that
/// was away, or an ingest that just reconnected, has not heard what the devices sent
/// meanwhile, and must not take its own absence for theirs).
fn spawn_timeouts(store: Arc<Mutex<Box<dyn Store>>>, timeout: Duration, connected: Arc<AtomicU64>) {
    let every = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = ingest::now_ms();
            let since = connected.load(Ordering::Relaxed);
            if since == 0 || now.saturating_sub(since) < timeout_ms {
                continue;
            }
            let store = store.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let mut s = crate::store::lock(&store);
                s.check_timeouts(now, timeout)
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("timeout task: {e}")));
            if let Err(e) = checked {
                log::error!("checking the devices' heartbeats: {e:#}");
            }
        }
    });
}

/// Every `every`, deletes what was received longer than `retention` ago.
fn spawn_retention(store: Arc<Mutex<Box<dyn Store>>>, retention: Duration, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let cutoff = ingest::now_ms().saturating_sub(retention.as_millis() as u64);
            let store = store.clone();
            let deleted = tokio::task::spawn_blocking(move || {
                let mut s = crate::store::lock(&store);
                s.delete_before(cutoff)
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("retention task: {e}")));
            match deleted {
                Ok(0) => {}
                Ok(n) => log::info!("retention: deleted {n} alert(s)"),
                Err(e) => log::error!("retention: {e:#}"),
            }
        }
    });
}
