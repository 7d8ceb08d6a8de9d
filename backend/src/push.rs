//! `policy push`: publishes a signed policy bundle to devices (QoS 1, retained, so that a
//! device that is offline gets it when it connects) and shows what each device did with it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use picket_proto::topic::{self, Channel};
use picket_proto::{PolicyOutcome, PolicyResult, MAX_POLICY_BYTES};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
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

/// Publishes `bundle` to every target and waits up to `timeout` for their results. Returns
/// whether every device applied it (or already had it).
pub async fn push(
    config: &Config,
    targets: &[String],
    bundle: &[u8],
    timeout: Duration,
) -> anyhow::Result<bool> {
    anyhow::ensure!(!bundle.is_empty(), "the bundle is empty");
    anyhow::ensure!(
        bundle.len() <= MAX_POLICY_BYTES,
        "the bundle is {} bytes, over the {MAX_POLICY_BYTES} bytes a device accepts",
        bundle.len()
    );
    let mqtt = config.mqtt()?;
    let sha = sha256_hex(bundle);
    let client_id = format!("{}-push-{}", mqtt.client_id, std::process::id());
    let mut options = crate::ingest::mqtt_options(mqtt, &client_id)?;
    options.set_clean_start(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64 + 2 * targets.len());
    println!(
        "pushing bundle {} ({} bytes) to {} device(s)",
        &sha[..16],
        bundle.len(),
        targets.len()
    );

    let deadline = tokio::time::Instant::now() + timeout;
    let mut published = false;
    let mut acked = 0usize;
    // Which device each outgoing publish (by packet id) was for, to name refusals.
    let mut sending: std::collections::VecDeque<&str> = std::collections::VecDeque::new();
    let mut in_flight: BTreeMap<u16, &str> = BTreeMap::new();
    let mut refused_by_broker: BTreeSet<String> = BTreeSet::new();
    let mut results: BTreeMap<String, PolicyOutcome> = BTreeMap::new();
    while results.len() < targets.len() {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                anyhow::bail!("MQTT {}:{}: {e}", mqtt.host, mqtt.port)
            }
            Ok(Ok(event)) => event,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                // Results first, so that none is missed.
                let filters = targets
                    .iter()
                    .map(|d| Filter::new(topic::topic(d, Channel::PolicyResult), QoS::AtLeastOnce));
                client.try_subscribe_many(filters)?;
            }
            Event::Incoming(Packet::SubAck(ack)) if !published => {
                use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
                if let Some(code) = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    anyhow::bail!("the broker refused the subscription to the results: {code:?}");
                }
                for d in targets {
                    sending.push_back(d);
                    client.try_publish(
                        topic::topic(d, Channel::Policy),
                        QoS::AtLeastOnce,
                        true,
                        bundle.to_vec(),
                    )?;
                }
                published = true;
            }
            Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                if let Some(d) = sending.pop_front() {
                    in_flight.insert(pkid, d);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                use rumqttc::v5::mqttbytes::v5::PubAckReason;
                let device = in_flight.remove(&ack.pkid).unwrap_or("?");
                if !matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) {
                    println!("{device}: the broker refused the bundle: {:?}", ack.reason);
                    refused_by_broker.insert(device.to_string());
                    // No result will come for it.
                    results.insert(
                        device.to_string(),
                        PolicyOutcome::Refused {
                            reason: format!("refused by the broker: {:?}", ack.reason),
                        },
                    );
                }
                acked += 1;
                if acked == targets.len() && refused_by_broker.is_empty() {
                    println!(
                        "the broker accepted the bundle for every device; waiting for results"
                    );
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let topic_name = String::from_utf8_lossy(&p.topic).to_string();
                let Ok((device, Channel::PolicyResult)) = topic::parse(&topic_name) else {
                    continue;
                };
                match picket_proto::decode::<PolicyResult>(&p.payload) {
                    Ok((_, env)) if env.device_id != device => {
                        log::warn!(
                            "`{topic_name}`: a result that says it is from `{}`",
                            env.device_id
                        )
                    }
                    Ok((_, env)) if env.body.bundle_sha256 != sha => {
                        log::debug!("{device}: a result for another bundle")
                    }
                    Ok((_, env)) => {
                        println!("{device}: {}", describe(&env.body.outcome));
                        results.insert(device.to_string(), env.body.outcome);
                    }
                    Err(e) => log::warn!("`{topic_name}`: unreadable result: {e}"),
                }
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            if eventloop.poll().await.is_err() {
                break;
            }
        }
    })
    .await;
    anyhow::ensure!(published, "could not publish within {}s", timeout.as_secs());
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
    Ok(all_good)
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
