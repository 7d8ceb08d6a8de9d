//! `policy push`: publishes a signed policy bundle to devices (QoS 1, retained, so that a
//! device that is offline gets it when it connects) and shows what each device did with it.
//! Each push is recorded in the store first ([`record`]): the ingest stores a device's policy
//! result only for a bundle pushed to it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use picket_proto::topic::{self, Channel};
use picket_proto::{PolicyOutcome, PolicyResult, MAX_POLICY_BYTES};
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAck, PubAckReason, Publish, SubAck, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};

use crate::config::Config;

/// The devices `--device`/`--group` name, checked.
pub fn targets(
    config: &Config,
    devices: &[String],
    groups: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for d in devices {
        topic::check_device_id(d)?;
        out.insert(d.clone());
    }
    for g in groups {
        let members = config.groups.get(g).with_context(|| {
            let known: Vec<&str> = config.groups.keys().map(String::as_str).collect();
            format!(
                "no group `{g}` in the configuration (groups: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        anyhow::ensure!(!members.is_empty(), "group `{g}` has no devices");
        out.extend(members.iter().cloned());
    }
    anyhow::ensure!(!out.is_empty(), "name at least one --device or --group");
    Ok(out.into_iter().collect())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `policy push`: reads the bundle, records the push in the store of the configuration (or the
/// SQLite file `db`), publishes it to the devices `devices` and `groups` name and waits up to
/// `timeout` for their results. Returns whether every device applied it (or already had it).
pub fn run(
    config: &Config,
    db: Option<&Path>,
    devices: &[String],
    groups: &[String],
    timeout: Duration,
    bundle: &Path,
) -> anyhow::Result<bool> {
    let targets = targets(config, devices, groups)?;
    let bytes = std::fs::read(bundle)
        .with_context(|| format!("reading the bundle {}", bundle.display()))?;
    check_bundle(&bytes)?;
    {
        // Not created: a push recorded in a store no `serve` reads would have its results
        // refused.
        let mut store = crate::store::open(&config.store, db, false)
            .context("recording the push in the store")?;
        record(&mut *store, &targets, &bytes, crate::ingest::now_ms())
            .context("recording the push in the store")?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(push(config, &targets, &bytes, timeout))
}

/// Records in `store` that `bundle` is pushed to `targets` at `now_ms`, with its policy's name
/// and serial when it reads as a bundle (the devices verify it; the backend holds no trust
/// store). Before it is published, so that no result can come first.
pub fn record(
    store: &mut dyn crate::store::Store,
    targets: &[String],
    bundle: &[u8],
    now_ms: u64,
) -> anyhow::Result<()> {
    let policy = picket_policy::bundle::inspect(bundle)
        .ok()
        .map(|(p, _)| (p.metadata.name, p.metadata.serial));
    store.record_push(
        targets,
        &sha256_hex(bundle),
        policy.as_ref().map(|(n, s)| (n.as_str(), *s)),
        now_ms,
    )
}

/// Publishes `bundle` to every target and waits up to `timeout` for their results. Returns
/// whether every device applied it (or already had it).
pub async fn push(
    config: &Config,
    targets: &[String],
    bundle: &[u8],
    timeout: Duration,
) -> anyhow::Result<bool> {
    println!(
        "pushing bundle {} ({} bytes) to {} device(s)",
        &sha256_hex(bundle)[..16],
        bundle.len(),
        targets.len()
    );
    let push = exchange(config, targets, bundle, timeout, true).await?;
    Ok(all_good(targets, &push, timeout))
}

/// Publishes `bundle` (retained, QoS 1) to every target and returns once the broker
/// acknowledged each, without waiting for the devices' results (they reach the store through
/// the ingest): for each target, `None` when the broker took the bundle, else why it refused
/// it. The HTTP API's push.
pub async fn publish(
    config: &Config,
    targets: &[String],
    bundle: &[u8],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let results = exchange(config, targets, bundle, timeout, false).await?;
    Ok(targets
        .iter()
        .map(|d| {
            let refusal = match results.get(d) {
                Some(PolicyOutcome::Refused { reason }) => Some(reason.clone()),
                _ => None,
            };
            (d.clone(), refusal)
        })
        .collect())
}

/// Subscribes to the targets' results, publishes the bundle to each, and collects until every
/// target has a result (`results`) or, without it, until the broker acknowledged every bundle;
/// at most `timeout`. Prints what happens with `results`.
async fn exchange(
    config: &Config,
    targets: &[String],
    bundle: &[u8],
    timeout: Duration,
    results: bool,
) -> anyhow::Result<BTreeMap<String, PolicyOutcome>> {
    check_bundle(bundle)?;
    let mqtt = config.mqtt()?;
    let client_id = format!(
        "{}-push-{}-{}",
        mqtt.client_id,
        std::process::id(),
        PUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut options = crate::ingest::mqtt_options(mqtt, &client_id)?;
    options.set_clean_start(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64 + 2 * targets.len());
    let mut push = Push::new(client, targets, bundle);
    push.quiet = !results;
    let deadline = tokio::time::Instant::now() + timeout;
    while if results {
        push.results.len() < targets.len()
    } else {
        push.acked < targets.len()
    } {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => anyhow::bail!("MQTT {}:{}: {e}", mqtt.host, mqtt.port),
            Ok(Ok(event)) => event,
        };
        push.on_event(event)?;
    }
    let _ = push.client.try_disconnect();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    anyhow::ensure!(
        push.published,
        "could not publish within {}s",
        timeout.as_secs()
    );
    anyhow::ensure!(
        results || push.acked == targets.len(),
        "the broker did not acknowledge every bundle within {}s",
        timeout.as_secs()
    );
    Ok(push.results)
}

/// Pushes made by this process: each has a client id of its own.
static PUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A bundle a device may accept: not empty, not over [`MAX_POLICY_BYTES`].
fn check_bundle(bundle: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(!bundle.is_empty(), "the bundle is empty");
    anyhow::ensure!(
        bundle.len() <= MAX_POLICY_BYTES,
        "the bundle is {} bytes, over the {MAX_POLICY_BYTES} bytes a device accepts",
        bundle.len()
    );
    Ok(())
}

/// A push under way: subscribed to the targets' results, then the bundle published to each,
/// then the results collected.
struct Push<'a> {
    client: AsyncClient,
    targets: &'a [String],
    bundle: &'a [u8],
    sha: String,
    published: bool,
    acked: usize,
    /// Which device each outgoing publish (by packet id) was for, to name refusals.
    sending: VecDeque<&'a str>,
    in_flight: BTreeMap<u16, &'a str>,
    refused_by_broker: BTreeSet<String>,
    results: BTreeMap<String, PolicyOutcome>,
    /// Prints nothing (the HTTP API's push).
    quiet: bool,
}

impl<'a> Push<'a> {
    fn new(client: AsyncClient, targets: &'a [String], bundle: &'a [u8]) -> Self {
        Push {
            client,
            targets,
            bundle,
            sha: sha256_hex(bundle),
            published: false,
            acked: 0,
            sending: VecDeque::new(),
            in_flight: BTreeMap::new(),
            refused_by_broker: BTreeSet::new(),
            results: BTreeMap::new(),
            quiet: false,
        }
    }

    fn on_event(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                // Results first, so that none is missed.
                let filters = self
                    .targets
                    .iter()
                    .map(|d| Filter::new(topic::topic(d, Channel::PolicyResult), QoS::AtLeastOnce));
                self.client.try_subscribe_many(filters)?;
            }
            Event::Incoming(Packet::SubAck(ack)) if !self.published => self.publish(&ack)?,
            Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                if let Some(d) = self.sending.pop_front() {
                    self.in_flight.insert(pkid, d);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => self.on_puback(&ack),
            Event::Incoming(Packet::Publish(p)) => self.on_result(&p),
            _ => {}
        }
        Ok(())
    }

    /// Once subscribed to the results: publishes the bundle (retained) to every target.
    fn publish(&mut self, ack: &SubAck) -> anyhow::Result<()> {
        if let Some(code) = ack
            .return_codes
            .iter()
            .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
        {
            anyhow::bail!("the broker refused the subscription to the results: {code:?}");
        }
        for d in self.targets {
            self.sending.push_back(d);
            self.client.try_publish(
                topic::topic(d, Channel::Policy),
                QoS::AtLeastOnce,
                true,
                self.bundle.to_vec(),
            )?;
        }
        self.published = true;
        Ok(())
    }

    /// The broker's acknowledgement of one device's bundle; a refusal is that device's result.
    fn on_puback(&mut self, ack: &PubAck) {
        let device = self.in_flight.remove(&ack.pkid).unwrap_or("?");
        if !matches!(
            ack.reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ) {
            if !self.quiet {
                println!("{device}: the broker refused the bundle: {:?}", ack.reason);
            }
            self.refused_by_broker.insert(device.to_string());
            // No result will come for it.
            self.results.insert(
                device.to_string(),
                PolicyOutcome::Refused {
                    reason: format!("refused by the broker: {:?}", ack.reason),
                },
            );
        }
        self.acked += 1;
        if self.acked == self.targets.len() && self.refused_by_broker.is_empty() && !self.quiet {
            println!("the broker accepted the bundle for every device; waiting for results");
        }
    }

    /// A device's policy result: kept if it is for this bundle.
    fn on_result(&mut self, p: &Publish) {
        let topic_name = String::from_utf8_lossy(&p.topic).to_string();
        let Ok((device, Channel::PolicyResult)) = topic::parse(&topic_name) else {
            return;
        };
        match picket_proto::decode::<PolicyResult>(&p.payload) {
            Ok((_, env)) if env.device_id != device => {
                log::warn!(
                    "`{topic_name}`: a result that says it is from `{}`",
                    env.device_id
                )
            }
            Ok((_, env)) if env.body.bundle_sha256 != self.sha => {
                log::debug!("{device}: a result for another bundle")
            }
            Ok((_, env)) => {
                if !self.quiet {
                    println!("{device}: {}", describe(&env.body.outcome));
                }
                self.results.insert(device.to_string(), env.body.outcome);
            }
            Err(e) => log::warn!("`{topic_name}`: unreadable result: {e}"),
        }
    }
}

/// Whether every target applied the bundle or had it already; names those that sent nothing.
fn all_good(
    targets: &[String],
    results: &BTreeMap<String, PolicyOutcome>,
    timeout: Duration,
) -> bool {
    let mut all_good = true;
    for d in targets {
        match results.get(d) {
            Some(PolicyOutcome::Refused { .. }) => all_good = false,
            Some(_) => {}
            None => {
                all_good = false;
                println!(
                    "{d}: no result within {}s (the bundle stays retained: the device gets it when it connects)",
                    timeout.as_secs()
                );
            }
        }
    }
    all_good
}

fn describe(outcome: &PolicyOutcome) -> String {
    match outcome {
        PolicyOutcome::Applied { name, serial } => format!("applied `{name}` serial {serial}"),
        PolicyOutcome::Unchanged { serial } => {
            format!("unchanged (serial {serial} already in force)")
        }
        PolicyOutcome::Refused { reason } => format!("REFUSED: {reason}"),
    }
}
