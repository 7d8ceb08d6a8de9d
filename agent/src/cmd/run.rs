//! `picket run`: the daemon a device runs from boot. It verifies the policy, checks the protected
//! files, loads the sensors and raises an alert for every deviation from the baseline.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use picket_common::Sensor;
use picket_policy::{
    keys::TrustStore,
    model::Mode,
    store::{Accepted, PolicyStore},
    Policy,
};
use picket_proto::topic::{topic, Channel};
use serde_json::json;
use tokio::sync::{mpsc, Notify};

use crate::{
    alert::{AlertSink, Alerter, Draft, JsonLinesSink, Kind, Sequence, Severity},
    cmd::{
        run_marker::RunMarker,
        session::{self, Guards, Loss, Sink},
    },
    config::{AgentConfig, EnforceConfig, ModesConfig, MqttConfig, OnTimeout},
    counters::Counters,
    detect::{canary::Canary, integrity, Detector},
    enforce::{
        exec::{ExecRules, Settings},
        GuardMode,
    },
    enrich::{hash::HashCache, Category, Detail, Event, Record},
    report::{self, mqtt, tls::Identity, PolicyEvent, Reporter, ReporterConfig, Shared, SpoolSink},
    sensors::{SensorArgs, SensorSet},
    spool::{Spool, SpoolLimits},
};

/// Arguments of `picket run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The configuration file (see docs/CONFIGURATION.md).
    #[arg(long, value_name = "FILE", default_value = "/etc/picket/picket.toml")]
    config: PathBuf,

    #[command(flatten)]
    sensors: SensorArgs,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)?;
    fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            config.state_dir.display()
        )
    })?;
    let trust = TrustStore::load_dir(&config.trust_dir)?;
    let store = PolicyStore::open(&config.state_dir, Some(config.device_class.clone()))?;
    // A damaged anti-rollback serial would refuse every policy, the one in force included:
    // set again from the bundle in force, and said.
    match store.repair_serial(&trust) {
        Ok(None) => {}
        Ok(Some(done)) => log::error!("{done}"),
        Err(e) => log::error!("repairing the policy state: {e:#}"),
    }
    let identity = match &config.mqtt {
        Some(m) => Some(Identity::load(&m.ca, &m.cert, &m.key)?),
        None => None,
    };
    let device_id = device_id(&args.config, &config, identity.as_ref())?;

    let counters = Arc::new(Counters::default());
    let (mut alerter, shared) = alerting(&config, &device_id, &counters)?;
    install_configured_policy(&config, &store, &trust, &mut alerter)?;
    let active = store
        .active(&trust)
        .context("checking the policy in force")?
        .context("no valid policy: the configured one was refused and none was accepted before")?;
    let meta = &active.policy.metadata;
    let purpose = format!("running with policy `{}` serial {}", meta.name, meta.serial);

    // Reporting runs beside detection, on the same thread: it only waits on the network.
    let stop = Arc::new(Notify::new());
    let (policy_tx, policy_rx) = mpsc::unbounded_channel();
    let reporter = match (&config.mqtt, identity, &shared) {
        (Some(m), Some(identity), Some(shared)) => {
            let policy = (meta.name.clone(), meta.serial);
            *shared.policy.lock().unwrap_or_else(|e| e.into_inner()) = policy.clone();
            let config = reporter_config(m, identity, &device_id, &alerter, policy)?;
            let reporter = Reporter::new(config, shared.clone(), store, trust, policy_tx);
            Some(tokio::spawn(reporter.run(stop.clone())))
        }
        _ => None,
    };

    let mut sink = Detecting::start(
        &args.config,
        &config,
        active.policy,
        alerter,
        counters,
        policy_rx,
    )?;
    let all = SensorSet::empty()
        .with(Sensor::Process)
        .with(Sensor::Network)
        .with(Sensor::File);
    let result = session::run(
        &args.sensors,
        all,
        &purpose,
        std::future::pending::<()>(),
        &mut sink,
    )
    .await;
    // However the session ended (a stop signal, an error), it ended through here: not killed.
    if let Some(marker) = sink.run_marker.take() {
        if let Err(e) = marker.release() {
            log::warn!("{e:#}");
        }
    }
    shut_down(&mut sink.alerter, reporter, &stop).await?;
    result.map(|_| ())
}

/// The device id: the certificate's CN when reporting (a configured `device_id` must agree),
/// else the configured one.
fn device_id(
    path: &Path,
    config: &AgentConfig,
    identity: Option<&Identity>,
) -> anyhow::Result<String> {
    Ok(match (identity, &config.device_id) {
        (Some(i), Some(id)) if *id != i.device_id => anyhow::bail!(
            "{}: device_id `{id}` differs from the device certificate's CN `{}`",
            path.display(),
            i.device_id
        ),
        (Some(i), _) => i.device_id.clone(),
        (None, Some(id)) => id.clone(),
        (None, None) => anyhow::bail!("{}: no device_id", path.display()),
    })
}

/// The alerter and its sinks: JSON lines if configured, and the spool of the reporter when
/// `[mqtt]` is (returned as the state the reporter shares).
fn alerting(
    config: &AgentConfig,
    device_id: &str,
    counters: &Arc<Counters>,
) -> anyhow::Result<(Alerter, Option<Arc<Shared>>)> {
    let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
    if config.output.stdout || config.output.file.is_some() {
        sinks.push(Box::new(JsonLinesSink::new(
            config.output.stdout,
            config.output.file.as_deref(),
        )?));
    }
    let mut sequence = Sequence::open(&config.state_dir)?;
    let mut torn = 0;
    let shared = match &config.mqtt {
        Some(_) => {
            let (spool, damaged) = open_spool(config)?;
            torn = damaged;
            // Numbers never go back, even if the counter's file was lost and the spool was not.
            sequence.skip_past(spool.stats().last_seq);
            let shared = Shared::new(counters.clone(), spool, (String::new(), 0));
            sinks.push(Box::new(SpoolSink::new(shared.clone())?));
            Some(shared)
        }
        None => None,
    };
    let mut alerter = Alerter::new(
        device_id.to_string(),
        sequence,
        config.alerts.window,
        config.alerts.max_tracked,
        sinks,
        counters.clone(),
    );
    // Damaged records are alerts that will never be delivered: the first report says so.
    alerter.count_dropped(torn);
    Ok((alerter, shared))
}

/// Opens the spool of the reporter; also returns how many damaged records were skipped.
fn open_spool(config: &AgentConfig) -> anyhow::Result<(Spool, u64)> {
    let dir = config
        .spool
        .dir
        .clone()
        .unwrap_or_else(|| report::default_spool_dir(&config.state_dir));
    let (spool, recovered) = Spool::open(
        &dir,
        SpoolLimits {
            max_bytes: config.spool.max_bytes,
        },
    )
    .with_context(|| format!("opening the spool {}", dir.display()))?;
    if recovered.torn > 0 {
        log::warn!(
            "spool {}: {} damaged record(s) skipped (an interrupted write, or damage \
             on the medium)",
            dir.display(),
            recovered.torn
        );
    }
    if recovered.records > 0 {
        log::info!(
            "spool {}: {} alert(s) from a previous run await delivery",
            dir.display(),
            recovered.records
        );
    }
    Ok((spool, recovered.torn as u64))
}

/// The configured bundle goes through the same checks as any update; if it is refused, the
/// last good policy stays in force and the refusal is an alert.
fn install_configured_policy(
    config: &AgentConfig,
    store: &PolicyStore,
    trust: &TrustStore,
    alerter: &mut Alerter,
) -> anyhow::Result<()> {
    let offered = fs::read(&config.policy)
        .with_context(|| format!("reading the policy {}", config.policy.display()))
        .and_then(|bytes| store.accept(&bytes, trust).map_err(anyhow::Error::from));
    match offered {
        Ok(Accepted::Installed(v)) => log::info!(
            "policy `{}` serial {} installed (signed by key {})",
            v.policy.metadata.name,
            v.policy.metadata.serial,
            v.signer
        ),
        Ok(Accepted::Unchanged(_)) => {}
        Err(e) => {
            log::error!("policy {} refused: {e:#}", config.policy.display());
            alerter.raise(Draft {
                kind: Kind::PolicyRejected,
                severity: Severity::High,
                rule: "policy".into(),
                path: Some(config.policy.display().to_string()),
                details: json!({ "reason": format!("{e:#}") }),
                process: None,
            })?;
        }
    }
    Ok(())
}

/// How the reporter of `[mqtt]` connects and reports, for the policy in force.
fn reporter_config(
    m: &MqttConfig,
    identity: Identity,
    device_id: &str,
    alerter: &Alerter,
    policy: (String, u64),
) -> anyhow::Result<ReporterConfig> {
    let (host, port) = m.address()?;
    let will = Reporter::will_status(device_id, m.format, policy, alerter.boot_id());
    let options = mqtt::Options {
        host,
        port,
        client_id: device_id.to_string(),
        keep_alive: m.keep_alive,
        tls: identity.config,
        will: (topic(device_id, Channel::Status), will),
        // Larger than a bundle may be, so that an oversized one is refused and reported.
        max_incoming: 2 * picket_proto::MAX_POLICY_BYTES,
        inflight: report::WINDOW as u16,
    };
    Ok(ReporterConfig {
        options,
        protocol: m.protocol,
        format: m.format,
        heartbeat: m.heartbeat_interval,
        reconnect_min: m.reconnect_min,
        reconnect_max: m.reconnect_max,
        boot_id: alerter.boot_id().to_string(),
    })
}

/// After the sensors stopped: repeats still counted in open windows are reported and made
/// durable, then the reporter says goodbye.
async fn shut_down(
    alerter: &mut Alerter,
    reporter: Option<tokio::task::JoinHandle<()>>,
    stop: &Notify,
) -> anyhow::Result<()> {
    alerter.flush()?;
    alerter.sync_sinks()?;
    if let Some(reporter) = reporter {
        stop.notify_one();
        if tokio::time::timeout(Duration::from_secs(5), reporter)
            .await
            .is_err()
        {
            log::warn!("the reporter did not stop in time; undelivered alerts stay spooled");
        }
        // What the broker acknowledged while saying goodbye is not sent again next time.
        alerter.sync_sinks()?;
    }
    Ok(())
}

/// The session sink of `picket run`: events in, alerts out.
struct Detecting {
    detector: Detector,
    alerter: Alerter,
    hashes: HashCache,
    snapshot: integrity::Snapshot,
    canary: Canary,
    rescan_interval: Duration,
    last_scan: Instant,
    counters: Arc<Counters>,
    /// Policies received over MQTT, already verified and persisted by the reporter.
    policies: mpsc::UnboundedReceiver<PolicyEvent>,
    modes: ModesConfig,
    own: Vec<PathBuf>,
    /// The sensitive files changed (a new policy): the open listener is to be told.
    watched_changed: bool,
    /// The policy or its modes changed: the guards are to be told.
    guards_changed: bool,
    enforce: EnforceConfig,
    /// The agent's executable as it started (canonical): never refused by the exec guard, even
    /// once an update has replaced it on disk.
    own_exe: Option<PathBuf>,
    state_dir: PathBuf,
    /// Written once the session runs, removed when it ends: the next start tells a run that
    /// was killed or crashed.
    run_marker: Option<RunMarker>,
}

impl Detecting {
    /// Detection for `policy`, after a first scan of the protected files (drift while the
    /// agent was stopped is raised now).
    fn start(
        config_path: &Path,
        config: &AgentConfig,
        policy: Policy,
        mut alerter: Alerter,
        counters: Arc<Counters>,
        policies: mpsc::UnboundedReceiver<PolicyEvent>,
    ) -> anyhow::Result<Self> {
        let mut own = vec![
            config_path.to_path_buf(),
            config.trust_dir.clone(),
            config.state_dir.clone(),
        ];
        if let Ok(exe) = std::env::current_exe() {
            own.push(exe);
        }
        let modes = config.modes.over(policy.modes);
        if modes != policy.modes {
            log::warn!(
                "the configuration overrides the policy's modes: {modes:?} (policy: {:?})",
                policy.modes
            );
        }
        let weakened = weakened(policy.modes, modes);
        let detector = Detector::new(policy, modes, own.clone());
        let mut hashes = HashCache::new(8192);
        let mut snapshot = integrity::Snapshot::load(&config.state_dir);
        let drift = integrity::scan(detector.policy(), modes.files, &mut hashes)
            .into_iter()
            .chain(snapshot.scan_globs(detector.policy(), modes.files, &mut hashes));
        for drift in drift.chain(weakened) {
            alerter.raise(drift)?;
        }
        alerter.flush_sinks()?;
        Ok(Self {
            detector,
            alerter,
            hashes,
            snapshot,
            state_dir: config.state_dir.clone(),
            run_marker: None,
            canary: Canary::new(config.canary_interval),
            rescan_interval: config.rescan_interval,
            last_scan: Instant::now(),
            watched_changed: true,
            guards_changed: true,
            enforce: config.enforce,
            own_exe: std::env::current_exe()
                .ok()
                .and_then(|p| std::fs::canonicalize(p).ok()),
            counters,
            policies,
            modes: config.modes,
            own,
        })
    }

    /// Hashes the protected files again and raises an alert for each drift.
    fn rescan(&mut self) -> anyhow::Result<()> {
        self.last_scan = Instant::now();
        let (policy, files) = (self.detector.policy(), self.detector.modes().files);
        let drift = integrity::scan(policy, files, &mut self.hashes)
            .into_iter()
            .chain(self.snapshot.scan_globs(policy, files, &mut self.hashes));
        for drift in drift {
            self.alerter.raise(drift)?;
        }
        Ok(())
    }

    fn policy_event(&mut self, event: PolicyEvent) -> anyhow::Result<()> {
        match event {
            PolicyEvent::Installed(v) => {
                let modes = self.modes.over(v.policy.modes);
                log::info!(
                    "now enforcing policy `{}` serial {}",
                    v.policy.metadata.name,
                    v.policy.metadata.serial
                );
                for draft in weakened(v.policy.modes, modes) {
                    self.alerter.raise(draft)?;
                }
                self.detector = Detector::new(v.policy, modes, self.own.clone());
                self.watched_changed = true;
                self.guards_changed = true;
                // The new policy may protect other files, or the same ones with other hashes.
                self.rescan()
            }
            PolicyEvent::Refused { reason, sha256 } => self.alerter.raise(Draft {
                kind: Kind::PolicyRejected,
                severity: Severity::High,
                rule: "policy".into(),
                path: None,
                details: json!({ "reason": reason, "source": "mqtt", "bundle_sha256": sha256 }),
                process: None,
            }),
        }
    }
}

fn sensor_index(sensor: Sensor) -> usize {
    match sensor {
        Sensor::Process => 0,
        Sensor::Network => 1,
        Sensor::File => 2,
    }
}

impl Sink for Detecting {
    fn attached(&mut self) -> anyhow::Result<()> {
        // A state directory that cannot take the marker (full, read-only) costs only this:
        // the agent runs on.
        let claimed = RunMarker::claim(
            &self.state_dir,
            self.alerter.boot_id(),
            crate::alert::now_ms(),
        );
        let (marker, previous) = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                log::warn!("{e:#}: if this run is killed, the next one will not say so");
                return Ok(());
            }
        };
        self.run_marker = Some(marker);
        if let Some(draft) = previous.alert() {
            self.alerter.raise(draft)?;
            self.alerter.flush_sinks()?;
        }
        Ok(())
    }

    fn event(&mut self, event: Event) -> anyhow::Result<()> {
        let i = match event.category {
            Category::Exec => 0,
            Category::Net => 1,
            Category::File => 2,
        };
        Counters::add(&self.counters.seen[i], 1);
        if let Some(Record {
            detail:
                Detail::Exec {
                    hash_error: Some(_),
                    ..
                },
            ..
        }) = event.record()
        {
            Counters::add(&self.counters.exec_unverified, 1);
        }
        if self.canary.consume(&event) {
            return Ok(());
        }
        for draft in self.detector.check(&event) {
            self.alerter.raise(draft)?;
        }
        Ok(())
    }

    fn lost(&mut self, loss: &Loss) -> anyhow::Result<()> {
        Counters::add(&self.counters.lost[sensor_index(loss.sensor)], loss.new);
        self.alerter.raise(Draft {
            kind: Kind::SensorDataLoss,
            severity: Severity::Medium,
            rule: "sensors".into(),
            path: None,
            details: json!({
                "sensor": loss.sensor.name(),
                "lost": loss.new,
                "total": loss.total,
                "cgroups": loss.cgroups,
            }),
            process: None,
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.alerter.flush_sinks()
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        self.alerter.tick()?;
        while let Ok(event) = self.policies.try_recv() {
            self.policy_event(event)?;
        }
        if let Some(tamper) = self.canary.tick(Instant::now()) {
            log::error!(
                "{}",
                tamper.details["reason"].as_str().unwrap_or("agent tamper")
            );
            self.alerter.raise(tamper)?;
        }
        if self.last_scan.elapsed() >= self.rescan_interval {
            self.rescan()?;
        }
        self.alerter.flush_sinks()
    }

    fn watched_files(&mut self) -> Option<Vec<PathBuf>> {
        std::mem::take(&mut self.watched_changed).then(|| self.detector.sensitive_files())
    }

    fn guards(&mut self) -> Option<Guards> {
        if !std::mem::take(&mut self.guards_changed) {
            return None;
        }
        let modes = self.detector.modes();
        // Until the guard says otherwise (`guard_unavailable`), the kernel refuses what the
        // network rules do not allow: detection leaves those to the guard's own records.
        self.detector
            .set_network_guarded(modes.network == Mode::Enforce);
        let own_exe = self.own_exe.clone();
        Some(Guards {
            exec: GuardMode::of(modes.executables),
            exec_rules: ExecRules {
                baseline: self.detector.exec_baseline(),
                own_exe,
            },
            exec_settings: Settings {
                decision_time: self.enforce.decision_time,
                allow_on_timeout: self.enforce.on_timeout == OnTimeout::Allow,
            },
            net: GuardMode::of(modes.network),
            network: self.detector.policy().network.clone(),
        })
    }

    fn guard_unavailable(&mut self, category: &'static str, error: String) -> anyhow::Result<()> {
        log::error!("{category} are not guarded: {error}");
        if category == "network" {
            self.detector.set_network_guarded(false);
        }
        let modes = self.detector.modes();
        let effective = match category {
            "executables" => modes.executables,
            _ => modes.network,
        };
        // Only enforcement in force loses something worth an alert (one the configuration
        // lowered was said at start); a dry run that cannot start is said in the log.
        if effective != Mode::Enforce {
            return Ok(());
        }
        self.alerter.raise(weakened_alert(category, "none", &error))
    }
}

/// The `enforcement_weakened` alert of `category`, now `effective`, for `reason`.
fn weakened_alert(category: &str, effective: &str, reason: &str) -> Draft {
    Draft {
        kind: Kind::EnforcementWeakened,
        severity: Severity::High,
        rule: format!("modes.{category}"),
        path: None,
        details: json!({
            "category": category,
            "policy": "enforce",
            "effective": effective,
            "reason": reason,
        }),
        process: None,
    }
}

/// An `enforcement_weakened` alert for each category the policy enforces and the local
/// configuration does not (`modes` are the modes in force).
fn weakened(policy: picket_policy::model::Modes, modes: picket_policy::model::Modes) -> Vec<Draft> {
    [
        ("executables", policy.executables, modes.executables),
        ("network", policy.network, modes.network),
    ]
    .into_iter()
    .filter(|(_, policy, effective)| *policy == Mode::Enforce && *effective != Mode::Enforce)
    .map(|(category, _, effective)| {
        log::warn!(
            "the configuration weakens modes.{category} from enforce to {}",
            effective.name()
        );
        weakened_alert(
            category,
            effective.name(),
            "the device's configuration overrides the mode",
        )
    })
    .collect()
}
