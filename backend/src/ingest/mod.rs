//! The MQTT ingest: subscribes to every device's topics (alerts, heartbeats and policy results
//! through a shared subscription, so that several instances split them, except from the
//! managed broker; statuses directly, since a broker does not hand retained messages to shared
//! subscriptions), checks each message, and stores it. A message is acknowledged to the broker
//! only once stored. `handle.rs` checks and stores one message, or refuses it; `limit.rs`
//! keeps each device's alert rate limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_proto::topic::{self, Channel};
use picket_proto::MAX_MESSAGE_BYTES;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

mod handle;
pub mod limit;

pub use handle::{handle, Outcome, Refusal, Refused};
pub use limit::Limits;

use crate::config::{LimitsConfig, MqttConfig};
use crate::store::Store;

/// The largest packet the backend accepts from the broker. Larger than a valid message, so
/// that oversized ones arrive and are counted; beyond it the broker drops them (MQTT v5
/// maximum packet size).
pub const MAX_PACKET_BYTES: u32 = 4 * MAX_MESSAGE_BYTES as u32;

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
/// `connected` is the time (ms since the epoch) the current connection was accepted by the
/// broker, 0 while there is none: a device's silence means something only while the ingest
/// was there to hear it.
pub async fn run(
    config: MqttConfig,
    limits: &LimitsConfig,
    store: Arc<Mutex<Box<dyn Store>>>,
    connected: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    // Kept across connections: a device does not get a full bucket by making the ingest
    // reconnect.
    let limits = Arc::new(Mutex::new(Limits::new(limits)));
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
        let error = session(
            &options,
            &filters,
            &store,
            &limits,
            &mut backoff,
            &connected,
        )
        .await;
        connected.store(0, Ordering::Relaxed);
        log::warn!("{}", session_end(&error, &config, backoff));
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
    limits: &Arc<Mutex<Limits>>,
    backoff: &mut Duration,
    connected: &AtomicU64,
) -> anyhow::Error {
    let (client, mut eventloop) = AsyncClient::new(options.clone(), REQUEST_CAPACITY);
    let (messages, received) = tokio::sync::mpsc::unbounded_channel();
    let mut storing = tokio::spawn(storage(
        client.clone(),
        store.clone(),
        limits.clone(),
        received,
    ));
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
                connected.store(now_ms(), Ordering::Relaxed);
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

/// What the log says when a session ended with `error`: the store's failure or the
/// connection's, and when the ingest reconnects.
fn session_end(error: &anyhow::Error, config: &MqttConfig, backoff: Duration) -> String {
    match error.downcast_ref::<StoreFailed>() {
        // Not the connection's fault: the broker delivers the batch again once the ingest has
        // reconnected.
        Some(StoreFailed(e)) => format!(
            "the store failed: {e:#}; nothing of that batch was acknowledged; reconnecting in \
             {}s to the broker {}:{}, which delivers it again",
            backoff.as_secs(),
            config.host,
            config.port
        ),
        None => format!(
            "MQTT {}:{}: {error:#}; reconnecting in {}s",
            config.host,
            config.port,
            backoff.as_secs()
        ),
    }
}

/// The store failed to store a batch (not the MQTT connection): what the ingest logs says so.
#[derive(Debug, thiserror::Error)]
#[error("the store failed: {0:#}")]
struct StoreFailed(anyhow::Error);

/// Stores what [`session`] receives: everything already received (up to
/// [`RECEIVE_MAXIMUM`]) in one transaction, then acknowledges each message. `Err` when the
/// store failed (nothing of that batch is acknowledged: the broker delivers it again after
/// the reconnection) or the connection is gone.
async fn storage(
    client: AsyncClient,
    store: Arc<Mutex<Box<dyn Store>>>,
    limits: Arc<Mutex<Limits>>,
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
            let (store, limits) = (store.clone(), limits.clone());
            tokio::task::spawn_blocking(move || {
                // A batch that panicked (a bug) was not acknowledged and comes again: the
                // limits it left go on (at worst a few tokens spent on it), and so does the
                // store, its transaction rolled back ([`crate::store::lock`]).
                let mut limits = limits.lock().unwrap_or_else(|poisoned| {
                    log::error!("storing a batch panicked earlier: going on");
                    limits.clear_poison();
                    poisoned.into_inner()
                });
                let stored = store_batch(&store, &mut limits, &publishes);
                drop(limits);
                (publishes, stored)
            })
            .await
            .map_err(|e| anyhow::Error::new(StoreFailed(anyhow::anyhow!("store task: {e}"))))?
        };
        stored.map_err(|e| anyhow::Error::new(StoreFailed(e)))?;
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
/// deadlock. When the transaction fails, the buckets of its devices are put back as they
/// were: the broker delivers the batch again, and it must not be counted twice.
pub fn store_batch(
    store: &Mutex<Box<dyn Store>>,
    limits: &mut Limits,
    publishes: &[Publish],
) -> anyhow::Result<()> {
    store_batch_at(store, limits, publishes, limits.now_ms())
}

/// [`store_batch`] at `clock_ms` on the limits' clock.
pub fn store_batch_at(
    store: &Mutex<Box<dyn Store>>,
    limits: &mut Limits,
    publishes: &[Publish],
    clock_ms: u64,
) -> anyhow::Result<()> {
    let mut order: Vec<(&[u8], usize)> = publishes
        .iter()
        .enumerate()
        .map(|(i, p)| (device_part(&p.topic), i))
        .collect();
    order.sort();
    let mut store = crate::store::lock(store);
    let started = std::time::Instant::now();
    let saved = limits.snapshot(order.iter().map(|(device, _)| *device));
    let stored = store.in_transaction(&mut |store| {
        for &(_, i) in &order {
            let publish = &publishes[i];
            let topic_name = String::from_utf8_lossy(&publish.topic);
            handle(
                store,
                limits,
                &topic_name,
                &publish.payload,
                now_ms(),
                clock_ms,
            )
            .map_err(|e| e.context(format!("storing a message from `{topic_name}`")))?;
        }
        Ok(())
    });
    if stored.is_err() {
        limits.restore(saved);
    }
    stored?;
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
mod tests;
