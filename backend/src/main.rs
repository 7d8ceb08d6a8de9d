//! `picket-backend`: the fleet backend. `serve` ingests what devices publish over MQTT into a
//! store and answers an HTTP JSON API; the other commands query the store or push policies.
//! Documented in `docs/BACKEND.md`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use picket_backend::config::{self, Config};
use picket_backend::store::{self, Store};
use picket_backend::{api, broker, ingest, ocsf, push, query, tls};

const DEFAULT_CONFIG: &str = "/etc/picket-backend/backend.toml";

#[derive(Parser)]
#[command(name = "picket-backend", version, about = "Picket's fleet backend")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The SQLite database to query (default: `store.sqlite` of the configuration).
    #[arg(long, global = true, value_name = "FILE")]
    db: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest from the broker into the store, and answer the HTTP API if configured.
    Serve,
    /// The devices: presence, agent version, policy, latest counters.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Stored alerts, newest first.
    Alerts(AlertsArgs),
    /// Sequence numbers missing from the devices' alerts.
    Gaps {
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Messages refused, by reason and device.
    Refused {
        #[arg(long)]
        json: bool,
    },
    /// Policy distribution.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Args)]
struct AlertsArgs {
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Received within this long (`90s`, `15m`, `1h`, `7d`) or since an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// `unknown_executable`, `unexpected_connection`, ...
    #[arg(long)]
    kind: Option<String>,
    /// `medium`, `high` or `critical`.
    #[arg(long)]
    severity: Option<String>,
    /// At most this many (default 1000).
    #[arg(long)]
    limit: Option<u64>,
    /// One JSON array (for scripts).
    #[arg(long, conflicts_with = "ocsf")]
    json: bool,
    /// One JSON array of OCSF Detection Findings.
    #[arg(long)]
    ocsf: bool,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Publish a signed bundle to devices and show what each one did with it.
    Push {
        /// A device (repeatable).
        #[arg(long, value_name = "ID")]
        device: Vec<String>,
        /// A group of the configuration's [groups] (repeatable).
        #[arg(long, value_name = "NAME")]
        group: Vec<String>,
        /// How long to wait for the devices' results.
        #[arg(long, default_value = "60s", value_parser = config::parse_duration)]
        timeout: Duration,
        /// The signed bundle (`picket policy sign` writes it).
        bundle: PathBuf,
    },
    /// What devices did with the bundles they received.
    Results {
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("picket-backend: {e:#}");
            std::process::exit(1);
        }
    }
}

fn load_config(path: Option<&Path>, required: bool) -> anyhow::Result<Option<Config>> {
    match path {
        Some(p) => Config::load(p).map(Some),
        None if required || Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(Path::new(DEFAULT_CONFIG)).map(Some)
        }
        None => Ok(None),
    }
}

/// The store the query commands read.
fn open_for_query(cli: &Cli) -> anyhow::Result<(Box<dyn Store>, Config)> {
    let config = if cli.db.is_some() && cli.config.is_none() {
        None
    } else {
        load_config(cli.config.as_deref(), true)?
    };
    let config = match config {
        Some(c) => c,
        None => Config::parse("")?,
    };
    let store = store::open(&config.store, cli.db.as_deref(), false)?;
    Ok((store, config))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Serve => {
            let config =
                load_config(cli.config.as_deref(), true)?.context("a configuration is required")?;
            serve(config, cli.db.clone())?;
            Ok(0)
        }
        Command::Devices { json } => {
            let (mut store, config) = open_for_query(&cli)?;
            let devices = store.devices(ingest::now_ms(), config.devices.heartbeat_timeout)?;
            if *json {
                print_json(&devices)?;
            } else {
                print!("{}", query::devices_table(&devices));
            }
            Ok(0)
        }
        Command::Alerts(a) => {
            let (mut store, _) = open_for_query(&cli)?;
            let filter = query::alert_filter(
                a.device.clone(),
                a.since.as_deref(),
                a.kind.clone(),
                a.severity.clone(),
                a.limit,
                ingest::now_ms(),
            )
            .map_err(anyhow::Error::msg)?;
            let alerts = store.alerts(&filter)?;
            if a.ocsf {
                print_json(&alerts.iter().map(ocsf::finding).collect::<Vec<_>>())?;
            } else if a.json {
                print_json(&alerts)?;
            } else {
                print!("{}", query::alerts_table(&alerts));
            }
            Ok(0)
        }
        Command::Gaps { device, json } => {
            if let Some(d) = device {
                picket_proto::topic::check_device_id(d)?;
            }
            let (mut store, _) = open_for_query(&cli)?;
            let gaps = store.gaps(device.as_deref())?;
            if *json {
                print_json(&gaps)?;
            } else {
                print!("{}", query::gaps_table(&gaps));
            }
            Ok(0)
        }
        Command::Refused { json } => {
            let (mut store, _) = open_for_query(&cli)?;
            let refused = store.refused()?;
            if *json {
                print_json(&refused)?;
            } else {
                print!("{}", query::refused_table(&refused));
            }
            Ok(0)
        }
        Command::Policy(PolicyCommand::Results { device, json }) => {
            let (mut store, _) = open_for_query(&cli)?;
            let results = store.policy_results(device.as_deref())?;
            if *json {
                print_json(&results)?;
            } else {
                print!("{}", query::policy_results_table(&results));
            }
            Ok(0)
        }
        Command::Policy(PolicyCommand::Push {
            device,
            group,
            timeout,
            bundle,
        }) => {
            let config =
                load_config(cli.config.as_deref(), true)?.context("a configuration is required")?;
            let targets = push::targets(&config, device, group)?;
            let bytes = std::fs::read(bundle)
                .with_context(|| format!("reading the bundle {}", bundle.display()))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let all_good = runtime.block_on(push::push(&config, &targets, &bytes, *timeout))?;
            Ok(if all_good { 0 } else { 2 })
        }
    }
}

fn serve(config: Config, db: Option<PathBuf>) -> anyhow::Result<()> {
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
        let served = serve_with(&config, mqtt, store, reader, location, signals).await;
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
    reader: Option<Box<dyn Store>>,
    location: String,
    mut signals: Signals,
) -> anyhow::Result<()> {
    {
        if let (Some(http), Some(reader)) = (&config.http, reader) {
            let app = api::router(reader, config.devices.heartbeat_timeout);
            let listener = tokio::net::TcpListener::bind(http.listen)
                .await
                .with_context(|| format!("binding the HTTP API to {}", http.listen))?;
            log::info!("HTTP API on http://{}", listener.local_addr()?);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    log::error!("HTTP API: {e}");
                }
            });
        }
        if let Some(retention) = config.store.retention {
            let store = store.clone();
            let every = config.store.retention_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let cutoff = ingest::now_ms().saturating_sub(retention.as_millis() as u64);
                    let store = store.clone();
                    let deleted = tokio::task::spawn_blocking(move || match store.lock() {
                        Ok(mut s) => s.delete_before(cutoff),
                        Err(_) => Err(anyhow::anyhow!("the store lock is poisoned")),
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
        log::info!(
            "ingesting from {}:{} as `{}` into {}",
            mqtt.host,
            mqtt.port,
            mqtt.client_id,
            location
        );
        tokio::select! {
            r = ingest::run(mqtt, store) => r,
            _ = signals.interrupt.recv() => { log::info!("interrupted; stopping"); Ok(()) }
            _ = signals.terminate.recv() => { log::info!("terminated; stopping"); Ok(()) }
        }
    }
}
