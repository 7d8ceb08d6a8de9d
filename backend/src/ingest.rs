//! The MQTT ingest: subscribes to every device's topics (alerts, heartbeats and policy results
//! through a shared subscription, so that several instances split them; statuses directly,
//! since a broker does not hand retained messages to shared subscriptions), checks each
//! message, and stores it. A message is acknowledged to the broker only once stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_proto::topic::{self, Channel};
use picket_proto::{Alert, Heartbeat, PolicyResult, Status, MAX_MESSAGE_BYTES};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde::de::DeserializeOwned;

use crate::config::MqttConfig;
use crate::store::Store;

/// The largest packet the backend accepts from the broker. Larger than a valid message, so
/// that oversized ones arrive and are counted; beyond it the broker drops them (MQTT v5
/// maximum packet size).
pub const MAX_PACKET_BYTES: u32 = 4 * MAX_MESSAGE_BYTES as u32;

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    Duplicate,
    Refused(Refusal),
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The topic is not a device topic of ours.
    ForeignTopic,
    /// A device topic the backend does not consume (e.g. a device's policy topic).
    UnexpectedChannel,
    /// Over [`MAX_MESSAGE_BYTES`].
    Oversized,
    /// Not a message of a known format, or a body that does not decode.
    Malformed,
    /// A protocol version this backend does not speak.
    Version,
    /// The envelope's device id is not the one in the topic.
    DeviceMismatch,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ForeignTopic => "foreign_topic",
            Refusal::UnexpectedChannel => "unexpected_channel",
            Refusal::Oversized => "oversized",
            Refusal::Malformed => "malformed",
            Refusal::Version => "version",
            Refusal::DeviceMismatch => "device_mismatch",
        }
    }
}

/// Checks and stores one message. `Err` only when the store failed (the message must then
/// not be acknowledged); a bad message is `Ok(Outcome::Refused(_))`, counted in the store.
pub fn handle(
    store: &mut dyn Store,
    topic_name: &str,
    payload: &[u8],
    now_ms: u64,
) -> anyhow::Result<Outcome> {
    fn refuse(
        store: &mut dyn Store,
        topic_name: &str,
        now_ms: u64,
        reason: Refusal,
        device: Option<&str>,
        error: String,
    ) -> anyhow::Result<Outcome> {
        log::warn!(
            "refused a message on `{topic_name}` ({}): {error}",
            reason.name()
        );
        store.count_refused(reason.name(), device, topic_name, &error, now_ms)?;
        Ok(Outcome::Refused(reason))
    }
    let (device, channel) = match topic::parse(topic_name) {
        Ok(parsed) => parsed,
        Err(e) => {
            return refuse(
                store,
                topic_name,
                now_ms,
                Refusal::ForeignTopic,
                None,
                e.to_string(),
            )
        }
    };
    if payload.len() > MAX_MESSAGE_BYTES {
        return refuse(
            store,
            topic_name,
            now_ms,
            Refusal::Oversized,
            Some(device),
            format!(
                "message of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
                payload.len()
            ),
        );
    }
    fn decode<T: DeserializeOwned>(
        payload: &[u8],
        device: &str,
    ) -> Result<(&'static str, T), (Refusal, String)> {
        match picket_proto::decode::<T>(payload) {
            Ok((format, envelope)) => {
                if envelope.device_id != device {
                    let claimed: String = envelope.device_id.chars().take(80).collect();
                    return Err((
                        Refusal::DeviceMismatch,
                        format!("the message says it is from {claimed:?}"),
                    ));
                }
                let format = match format {
                    picket_proto::Format::Postcard => "postcard",
                    picket_proto::Format::Json => "json",
                };
                Ok((format, envelope.body))
            }
            Err(e @ picket_proto::Error::TooLarge(_)) => Err((Refusal::Oversized, e.to_string())),
            Err(e @ picket_proto::Error::Version(_)) => Err((Refusal::Version, e.to_string())),
            Err(e) => Err((Refusal::Malformed, e.to_string())),
        }
    }
    let result = match channel {
        Channel::Alert => decode::<Alert>(payload, device)
            .and_then(|(format, alert)| {
                // Stores keep it as a signed 64-bit integer.
                if alert.seq > i64::MAX as u64 {
                    Err((
                        Refusal::Malformed,
                        format!("sequence number {} is out of range", alert.seq),
                    ))
                } else {
                    Ok((format, alert))
                }
            })
            .map(|(format, alert)| {
                store
                    .insert_alert(device, &alert, format, now_ms)
                    .map(|new| {
                        if new {
                            log::info!(
                                "alert {device}#{} {} {} {}",
                                alert.seq,
                                alert.severity.name(),
                                alert.kind.name(),
                                alert.path.as_deref().unwrap_or("-")
                            );
                            Outcome::Stored
                        } else {
                            log::debug!("alert {device}#{} received again", alert.seq);
                            Outcome::Duplicate
                        }
                    })
            }),
        Channel::Heartbeat => decode::<Heartbeat>(payload, device).map(|(_, hb)| {
            store
                .record_heartbeat(device, &hb, now_ms)
                .map(|()| Outcome::Stored)
        }),
        Channel::Status => decode::<Status>(payload, device).map(|(_, status)| {
            log::info!("{device} is {:?}", status.state);
            store
                .record_status(device, &status, now_ms)
                .map(|()| Outcome::Stored)
        }),
        Channel::PolicyResult => decode::<PolicyResult>(payload, device).map(|(_, result)| {
            log::info!("{device}: policy {:?}", result.outcome);
            store
                .insert_policy_result(device, &result, now_ms)
                .map(|new| {
                    if new {
                        Outcome::Stored
                    } else {
                        Outcome::Duplicate
                    }
                })
        }),
        Channel::Policy => Err((
            Refusal::UnexpectedChannel,
            "the backend does not consume policy topics".to_string(),
        )),
    };
    match result {
        Ok(stored) => stored,
        Err((reason, error)) => refuse(store, topic_name, now_ms, reason, Some(device), error),
    }
}

/// The topic filters the ingest subscribes to.
pub fn filters(share_group: &str) -> Vec<String> {
    let shared = |channel: Channel| {
        let t = format!("{}/+/{}", topic::ROOT, channel.suffix());
        if share_group.is_empty() {
            t
        } else {
            format!("$share/{share_group}/{t}")
        }
    };
    vec![
        shared(Channel::Alert),
        shared(Channel::Heartbeat),
        shared(Channel::PolicyResult),
        format!("{}/+/{}", topic::ROOT, Channel::Status.suffix()),
    ]
}

/// MQTT v5 options for a TLS connection as `client_id`.
pub fn mqtt_options(config: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    let tls = crate::tls::client_config(&config.ca, &config.cert, &config.key)?;
    let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
    options
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )))
        .set_keep_alive(config.keep_alive)
        .set_connection_timeout(10)
        .set_max_packet_size(Some(MAX_PACKET_BYTES));
    Ok(options)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the ingest until the process ends: connects, subscribes, stores; reconnects with a
/// doubling wait (1 s up to `max_backoff`) whenever the connection or the store fails.
pub async fn run(config: MqttConfig, store: Arc<Mutex<Box<dyn Store>>>) -> anyhow::Result<()> {
    let mut options = mqtt_options(&config, &config.client_id)?;
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX),
        ))
        .set_manual_acks(true);
    let filters = filters(&config.share_group);
    let mut backoff = Duration::from_secs(1);
    loop {
        let (client, eventloop) = AsyncClient::new(options.clone(), 256);
        let error = session(&client, eventloop, &filters, &store, &mut backoff).await;
        log::warn!(
            "MQTT {}:{}: {error:#}; reconnecting in {}s",
            config.host,
            config.port,
            backoff.as_secs()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff.max(Duration::from_secs(1)));
    }
}

/// One connection, until it fails.
async fn session(
    client: &AsyncClient,
    mut eventloop: EventLoop,
    filters: &[String],
    store: &Arc<Mutex<Box<dyn Store>>>,
    backoff: &mut Duration,
) -> anyhow::Error {
    loop {
        let event = match eventloop.poll().await {
            Ok(event) => event,
            Err(e) => return e.into(),
        };
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                log::info!(
                    "connected to the broker (session present: {})",
                    ack.session_present
                );
                *backoff = Duration::from_secs(1);
                let subscriptions = filters
                    .iter()
                    .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(subscriptions) {
                    return anyhow::anyhow!("subscribing: {e}");
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
                let mut refused = 0;
                for (code, filter) in ack.return_codes.iter().zip(filters) {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        refused += 1;
                        log::error!("the broker refused the subscription to `{filter}`: {code:?}");
                    }
                }
                if refused == 0 {
                    log::info!("subscribed to {}", filters.join(", "));
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                if let Err(e) = receive(client, store, publish).await {
                    return e;
                }
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                return anyhow::anyhow!("the broker disconnected: {:?}", d.reason_code);
            }
            _ => {}
        }
    }
}

async fn receive(
    client: &AsyncClient,
    store: &Arc<Mutex<Box<dyn Store>>>,
    publish: Publish,
) -> Result<(), anyhow::Error> {
    let topic_name = String::from_utf8_lossy(&publish.topic).to_string();
    // The store may block (disk, network): off the async threads.
    let outcome = {
        let store = store.clone();
        let topic_name = topic_name.clone();
        let payload = publish.payload.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store
                .lock()
                .map_err(|_| anyhow::anyhow!("the store lock is poisoned"))?;
            handle(store.as_mut(), &topic_name, &payload, now_ms())
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("store task: {e}")))
    };
    match outcome {
        Ok(_) => client
            .try_ack(&publish)
            .map_err(|e| anyhow::anyhow!("acknowledging: {e}")),
        // Not acknowledged: the broker delivers it again after the reconnection.
        Err(e) => Err(e.context(format!("storing a message from `{topic_name}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AlertFilter, SqliteStore};
    use picket_proto::{AlertKind, Details, Format, Severity};

    fn alert(seq: u64) -> Alert {
        Alert {
            seq,
            boot_id: "b".into(),
            time_ms: 1,
            kind: AlertKind::SuspiciousExec,
            severity: Severity::Critical,
            rule: "r".into(),
            path: None,
            details: Details(serde_json::json!({})),
            count: 1,
            first_ms: 1,
            last_ms: 1,
            process: None,
        }
    }

    #[test]
    fn checks_every_message() {
        let mut s = SqliteStore::memory().unwrap();
        let t = topic::topic("gw-1", Channel::Alert);
        let ok = picket_proto::encode(Format::Postcard, "gw-1", &alert(1)).unwrap();
        assert_eq!(handle(&mut s, &t, &ok, 1).unwrap(), Outcome::Stored);
        assert_eq!(handle(&mut s, &t, &ok, 2).unwrap(), Outcome::Duplicate);
        let json = picket_proto::encode(Format::Json, "gw-1", &alert(2)).unwrap();
        assert_eq!(handle(&mut s, &t, &json, 3).unwrap(), Outcome::Stored);
        let other = picket_proto::encode(Format::Json, "gw-2", &alert(3)).unwrap();
        let refused = |r| Ok::<_, ()>(Outcome::Refused(r));
        let mut check = |t: &str, p: &[u8], r| {
            assert_eq!(handle(&mut s, t, p, 4).map_err(|_| ()), refused(r), "{t}");
        };
        check(&t, &other, Refusal::DeviceMismatch);
        check(&t, b"garbage", Refusal::Malformed);
        check(&t, b"", Refusal::Malformed);
        check(&t, &ok[..ok.len() - 1], Refusal::Malformed);
        let mut huge = alert(1);
        huge.seq = u64::MAX;
        let huge = picket_proto::encode(Format::Postcard, "gw-1", &huge).unwrap();
        check(&t, &huge, Refusal::Malformed);
        check(&t, &vec![b'{'; MAX_MESSAGE_BYTES + 1], Refusal::Oversized);
        check(
            &t,
            br#"{"v": 2, "device_id": "gw-1", "body": {}}"#,
            Refusal::Version,
        );
        check("elsewhere/x", &ok, Refusal::ForeignTopic);
        check(
            &topic::topic("gw-1", Channel::Policy),
            &ok,
            Refusal::UnexpectedChannel,
        );
        // A heartbeat's payload on the alert topic does not decode as an alert.
        check(
            &topic::topic("gw-1", Channel::Status),
            &ok,
            Refusal::Malformed,
        );
        assert_eq!(s.alerts(&AlertFilter::default()).unwrap().len(), 2);
        let refused = s.refused().unwrap();
        let count = |reason: &str| {
            refused
                .iter()
                .filter(|r| r.reason == reason)
                .map(|r| r.count)
                .sum::<u64>()
        };
        assert_eq!(count("malformed"), 5);
        assert_eq!(count("device_mismatch"), 1);
        assert_eq!(count("oversized"), 1);
        assert_eq!(count("foreign_topic"), 1);
    }

    #[test]
    fn subscribes_shared_except_to_statuses() {
        assert_eq!(
            filters("g"),
            [
                "$share/g/picket/v1/+/alert",
                "$share/g/picket/v1/+/heartbeat",
                "$share/g/picket/v1/+/policy/result",
                "picket/v1/+/status"
            ]
        );
        assert_eq!(filters("")[0], "picket/v1/+/alert");
    }
}
