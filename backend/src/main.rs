//! `picket-backend`: the fleet backend. `serve` ingests what devices publish over MQTT into a
//! store and answers an HTTP JSON API; the other commands query the store, push policies or
//! manage the API's users.
//! Documented in `docs/BACKEND.md`. This file parses the arguments; the library
//! (`src/lib.rs`, the commands in `src/cmd/`) does the work.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use picket_backend::cmd::query::{self, AlertFormat};
use picket_backend::cmd::{self, push, serve, user};
use picket_backend::{broker, config, ingest, store};

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
    /// The devices' presence changes (online, offline, lost, timed out), newest first.
    Presence {
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
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
    /// The users of the HTTP API and the console.
    #[command(subcommand)]
    User(UserCommand),
    /// Writes the managed broker's ACL for these backend certificate CNs to standard output
    /// (`bench/backend.sh` configures its Mosquitto with it).
    #[command(hide = true)]
    BrokerAcl {
        #[arg(required = true, value_name = "CN")]
        backend_cn: Vec<String>,
    },
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

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password is the first line of standard input, or generated and printed
    /// once with --generate.
    Add {
        name: String,
        /// `viewer` (reads), `operator` (and triage) or `admin` (and policy push, audit log).
        #[arg(long)]
        role: String,
        #[arg(long)]
        generate: bool,
    },
    /// Print a new API token of a user (shown once; kept hashed).
    Token { name: String },
    /// The users and their roles.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user, with its sessions and API tokens.
    Remove { name: String },
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

fn run(cli: Cli) -> anyhow::Result<i32> {
    let open = || query::open(cli.config.as_deref(), cli.db.as_deref());
    let required =
        || cmd::load_config(cli.config.as_deref(), true)?.context("a configuration is required");
    match &cli.command {
        Command::Serve => serve::serve(required()?, cli.db.clone())?,
        Command::Devices { json } => {
            let (mut store, config) = open()?;
            query::devices(&mut *store, &config, *json)?;
        }
        Command::Alerts(a) => {
            let (mut store, _) = open()?;
            let filter = store::filter::alert_filter(
                a.device.clone(),
                a.since.as_deref(),
                a.kind.clone(),
                a.severity.clone(),
                a.limit,
                ingest::now_ms(),
            )
            .map_err(anyhow::Error::msg)?;
            let format = match (a.ocsf, a.json) {
                (true, _) => AlertFormat::Ocsf,
                (false, true) => AlertFormat::Json,
                (false, false) => AlertFormat::Table,
            };
            query::alerts(&mut *store, &filter, format)?;
        }
        Command::Gaps { device, json } => {
            if let Some(d) = device {
                picket_proto::topic::check_device_id(d)?;
            }
            let (mut store, _) = open()?;
            query::gaps(&mut *store, device.as_deref(), *json)?;
        }
        Command::Presence {
            device,
            limit,
            json,
        } => {
            if let Some(d) = device {
                picket_proto::topic::check_device_id(d)?;
            }
            anyhow::ensure!(*limit >= 1, "--limit must be at least 1");
            query::presence(&mut *open()?.0, device.as_deref(), *limit, *json)?;
        }
        Command::Refused { json } => query::refused(&mut *open()?.0, *json)?,
        Command::Policy(PolicyCommand::Results { device, json }) => {
            query::policy_results(&mut *open()?.0, device.as_deref(), *json)?;
        }
        Command::Policy(PolicyCommand::Push {
            device,
            group,
            timeout,
            bundle,
        }) => {
            let all_good = push::run(
                &required()?,
                cli.db.as_deref(),
                device,
                group,
                *timeout,
                bundle,
            )?;
            return Ok(if all_good { 0 } else { 2 });
        }
        Command::User(command) => {
            // `user add` may come before the first `serve`: it creates the store.
            let config = match cmd::load_config(cli.config.as_deref(), false)? {
                Some(c) => c,
                None => config::Config::parse("")?,
            };
            let mut store = store::open(&config.store, cli.db.as_deref(), true)?;
            match command {
                UserCommand::Add {
                    name,
                    role,
                    generate,
                } => user::add(&mut *store, name, role, *generate)?,
                UserCommand::Token { name } => user::token(&mut *store, name)?,
                UserCommand::List { json } => user::list(&mut *store, *json)?,
                UserCommand::Remove { name } => user::remove(&mut *store, name)?,
            }
        }
        Command::BrokerAcl { backend_cn } => {
            let cns: Vec<&str> = backend_cn.iter().map(String::as_str).collect();
            print!("{}", broker::acl(&cns));
        }
    }
    Ok(0)
}
