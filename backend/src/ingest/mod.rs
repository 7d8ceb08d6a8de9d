//! The MQTT ingest: subscribes to every device's topics (alerts, heartbeats and policy results
//! through a shared subscription, so that several instances split them, except from the
//! managed broker; statuses directly, since a broker does not hand retained messages to shared
//! subscriptions), checks each message, and stores it. A message is acknowledged to the broker
//! only once stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_proto::topic::{self, Channel};
use picket_proto::{Alert, Heartbeat, PolicyResult, Status, MAX_MESSAGE_BYTES};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
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

/// The most QoS 1 messages the broker may have sent to the ingest without their
/// acknowledgement (MQTT v5 receive maximum), and so the most one transaction stores. Large
/// enough that a transaction's cost is spread over many messages and that the broker is
/// not kept waiting for each commit; small enough that a batch (at most 256 messages of
/// at most 256 KiB, typically under 1 KiB) stays a short transaction.
pub const RECEIVE_MAXIMUM: u16 = 256;

/// The capacity of rumqttc's request queue (the acknowledgements on their way to the
/// connection). At most [`RECEIVE_MAXIMUM`] messages are unacknowledged at any time, so at
/// most that many acknowledgements wait in it, with the subscription: twice that never fills.
const REQUEST_CAPACITY: usize = 2 * RECEIVE_MAXIMUM as usize;

/// Runs the ingest until the process ends: connects, subscribes, stores; reconnects with a
/// doubling wait (1 s up to `max_backoff`) whenever the connection or the store fails.
pub async fn run(config: MqttConfig, store: Arc<Mutex<Box<dyn Store>>>) -> anyhow::Result<()> {
    let mut options = mqtt_options(&config, &config.client_id)?;
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX),
        ))
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        .set_manual_acks(true);
    let filters = filters(&config.share_group);
    let mut backoff = Duration::from_secs(1);
    loop {
        let error = session(&options, &filters, &store, &mut backoff).await;
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

/// One connection, until it fails: this task polls the event loop without ever waiting for
/// the store, and hands each message to [`storage`], which stores and acknowledges them.
///
/// The channel between them is unbounded so that this loop never waits on it: it must keep
/// polling, since that is what sends the acknowledgements queued by [`storage`]. What it
/// holds is bounded all the same, by the broker: no more than [`RECEIVE_MAXIMUM`] messages
/// are unacknowledged, whether in the channel, being stored or with their acknowledgement
/// queued.
async fn session(
    options: &MqttOptions,
    filters: &[String],
    store: &Arc<Mutex<Box<dyn Store>>>,
    backoff: &mut Duration,
) -> anyhow::Error {
    let (client, mut eventloop) = AsyncClient::new(options.clone(), REQUEST_CAPACITY);
    let (messages, received) = tokio::sync::mpsc::unbounded_channel();
    let mut storing = tokio::spawn(storage(client.clone(), store.clone(), received));
    let error = loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            ended = &mut storing => {
                let error = match ended {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("the store task ended"),
                    Err(e) => anyhow::anyhow!("the store task failed: {e}"),
                };
                return error;
            }
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => break e.into(),
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
                    break anyhow::anyhow!("subscribing: {e}");
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
                // Fails only when the store task has ended: its result comes with the next
                // turn of the loop.
                let _ = messages.send(publish);
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                break anyhow::anyhow!("the broker disconnected: {:?}", d.reason_code);
            }
            _ => {}
        }
    };
    // The store task finishes the batch it has begun (its acknowledgements, if any, go
    // nowhere: the broker delivers those messages again on the next connection, and they are
    // stored once), so that it does not write after the next session's messages.
    drop(eventloop);
    drop(messages);
    match storing.await {
        Ok(Err(e)) => log::debug!("store task after the disconnection: {e:#}"),
        Err(e) => log::error!("store task: {e}"),
        Ok(Ok(())) => {}
    }
    error
}

/// Stores what [`session`] receives: everything already received (up to
/// [`RECEIVE_MAXIMUM`]) in one transaction, then acknowledges each message. `Err` when the
/// store failed (nothing of that batch is acknowledged: the broker delivers it again after
/// the reconnection) or the connection is gone.
async fn storage(
    client: AsyncClient,
    store: Arc<Mutex<Box<dyn Store>>>,
    mut received: tokio::sync::mpsc::UnboundedReceiver<Publish>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(RECEIVE_MAXIMUM as usize);
    while received
        .recv_many(&mut batch, RECEIVE_MAXIMUM as usize)
        .await
        > 0
    {
        let publishes = std::mem::take(&mut batch);
        // The store may block (disk, network): off the async threads.
        let (publishes, stored) = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let stored = store_batch(&store, &publishes);
                (publishes, stored)
            })
            .await
            .map_err(|e| anyhow::anyhow!("store task: {e}"))?
        };
        stored?;
        for publish in &publishes {
            // Never waits in practice (see REQUEST_CAPACITY); fails only once the event loop
            // is gone.
            client
                .ack(publish)
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
        }
        batch = publishes;
        batch.clear();
    }
    Ok(())
}

/// Stores `publishes` in one transaction, each as [`handle`] does.
///
/// In the order of their devices (each device's messages in the order received), so that two
/// instances sharing a PostgreSQL store lock the `devices` rows in the same order and do not
/// deadlock.
pub fn store_batch(store: &Mutex<Box<dyn Store>>, publishes: &[Publish]) -> anyhow::Result<()> {
    let mut order: Vec<(&[u8], usize)> = publishes
        .iter()
        .enumerate()
        .map(|(i, p)| (device_part(&p.topic), i))
        .collect();
    order.sort();
    let mut store = store
        .lock()
        .map_err(|_| anyhow::anyhow!("the store lock is poisoned"))?;
    let started = std::time::Instant::now();
    store.in_transaction(&mut |store| {
        for &(_, i) in &order {
            let publish = &publishes[i];
            let topic_name = String::from_utf8_lossy(&publish.topic);
            handle(store, &topic_name, &publish.payload, now_ms())
                .map_err(|e| e.context(format!("storing a message from `{topic_name}`")))?;
        }
        Ok(())
    })?;
    log::debug!(
        "stored {} message(s) in one transaction in {:?}",
        publishes.len(),
        started.elapsed()
    );
    Ok(())
}

/// The device id part of a topic (`picket/v1/<device>/...`), or the whole topic.
fn device_part(topic: &[u8]) -> &[u8] {
    topic.split(|b| *b == b'/').nth(2).unwrap_or(topic)
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

    /// A batch is stored in one transaction: all of it, or (when the store fails part way)
    /// none of it, refusals included, so that the broker's redelivery counts nothing twice.
    #[test]
    fn a_batch_is_stored_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let store: Mutex<Box<dyn Store>> = Mutex::new(Box::new(SqliteStore::open(&path).unwrap()));
        // The store fails on the third alert of gw-2, after writing others.
        let admin = rusqlite::Connection::open(&path).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER fail BEFORE INSERT ON alerts
                 WHEN NEW.device_id = 'gw-2' AND NEW.seq = 3
                 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
            .unwrap();
        let publish = |device: &str, payload: Vec<u8>| {
            Publish::new(
                topic::topic(device, Channel::Alert),
                QoS::AtLeastOnce,
                payload,
                None,
            )
        };
        let mut batch = Vec::new();
        for seq in 1..=3 {
            for device in ["gw-2", "gw-1"] {
                let alert = picket_proto::encode(Format::Postcard, device, &alert(seq)).unwrap();
                batch.push(publish(device, alert));
            }
        }
        batch.push(publish("gw-1", b"garbage".to_vec()));
        let stored = |store: &Mutex<Box<dyn Store>>| {
            let mut s = store.lock().unwrap();
            let refused: u64 = s.refused().unwrap().iter().map(|r| r.count).sum();
            (s.alerts(&AlertFilter::default()).unwrap().len(), refused)
        };
        let error = store_batch(&store, &batch).unwrap_err();
        assert!(format!("{error:#}").contains("disk on fire"), "{error:#}");
        assert_eq!(stored(&store), (0, 0), "nothing of the failed batch");
        // Delivered again once the store works: all of it, once; then a duplicate.
        admin.execute_batch("DROP TRIGGER fail").unwrap();
        store_batch(&store, &batch).unwrap();
        assert_eq!(stored(&store), (6, 1));
        store_batch(&store, &batch[..2]).unwrap();
        assert_eq!(stored(&store), (6, 1));
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
