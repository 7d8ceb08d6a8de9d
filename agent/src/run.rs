//! `picket run`: the daemon a device runs from boot. It verifies the policy, checks the protected
//! files, loads the sensors and raises an alert for every deviation from the baseline.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use picket_common::Sensor;
use picket_policy::{
    keys::TrustStore,
    store::{Accepted, PolicyStore},
};
use serde_json::json;

use crate::{
    alert::{AlertSink, Alerter, Draft, JsonLinesSink, Kind, Sequence, Severity},
    canary::Canary,
    config::AgentConfig,
    detect::Detector,
    enrich::Event,
    hash::HashCache,
    integrity,
    sensors::SensorSet,
    session::{self, Sink},
    SensorArgs,
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
    let sinks: Vec<Box<dyn AlertSink>> = vec![Box::new(JsonLinesSink::new(
        config.output.stdout,
        config.output.file.as_deref(),
    )?)];
    let mut alerter = Alerter::new(
        config.device_id.clone(),
        Sequence::open(&config.state_dir)?,
        config.alerts.window,
        config.alerts.max_tracked,
        sinks,
    );

    // The configured bundle goes through the same checks as any update; if it is refused, the
    // last good policy stays in force and the refusal is an alert.
    let offered = fs::read(&config.policy)
        .with_context(|| format!("reading the policy {}", config.policy.display()))
        .and_then(|bytes| store.accept(&bytes, &trust).map_err(anyhow::Error::from));
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
    let active = store
        .active(&trust)
        .context("checking the policy in force")?
        .context("no valid policy: the configured one was refused and none was accepted before")?;
    let meta = &active.policy.metadata;
    let purpose = format!("running with policy `{}` serial {}", meta.name, meta.serial);

    let mut own = vec![
        args.config.clone(),
        config.trust_dir.clone(),
        config.state_dir.clone(),
    ];
    if let Ok(exe) = std::env::current_exe() {
        own.push(exe);
    }
    let modes = config.modes.over(active.policy.modes);
    if modes != active.policy.modes {
        log::warn!(
            "the configuration overrides the policy's modes: {modes:?} (policy: {:?})",
            active.policy.modes
        );
    }
    let detector = Detector::new(active.policy, modes, own);
    let mut hashes = HashCache::new(8192);
    let mut snapshot = integrity::Snapshot::load(&config.state_dir);
    let drift = integrity::scan(detector.policy(), modes.files, &mut hashes)
        .into_iter()
        .chain(snapshot.scan_globs(detector.policy(), modes.files, &mut hashes));
    for drift in drift {
        alerter.raise(drift)?;
    }

    let mut sink = Detecting {
        detector,
        alerter,
        hashes,
        snapshot,
        canary: Canary::new(config.canary_interval),
        rescan_interval: config.rescan_interval,
        last_scan: Instant::now(),
    };
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
    // Repeats still counted in open windows are reported before leaving.
    sink.alerter.flush()?;
    result.map(|_| ())
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
}

impl Sink for Detecting {
    fn event(&mut self, event: Event) -> anyhow::Result<()> {
        if self.canary.consume(&event) {
            return Ok(());
        }
        for draft in self.detector.check(&event) {
            self.alerter.raise(draft)?;
        }
        Ok(())
    }

    fn lost(&mut self, sensor: Sensor, new: u64, total: u64) -> anyhow::Result<()> {
        self.alerter.raise(Draft {
            kind: Kind::SensorDataLoss,
            severity: Severity::Medium,
            rule: "sensors".into(),
            path: None,
            details: json!({ "sensor": sensor.name(), "lost": new, "total": total }),
            process: None,
        })
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        self.alerter.tick()?;
        if let Some(tamper) = self.canary.tick(Instant::now()) {
            log::error!("the sensors stopped delivering events");
            self.alerter.raise(tamper)?;
        }
        if self.last_scan.elapsed() >= self.rescan_interval {
            self.last_scan = Instant::now();
            let (policy, files) = (self.detector.policy(), self.detector.modes().files);
            let drift = integrity::scan(policy, files, &mut self.hashes)
                .into_iter()
                .chain(self.snapshot.scan_globs(policy, files, &mut self.hashes));
            for drift in drift {
                self.alerter.raise(drift)?;
            }
        }
        Ok(())
    }
}
