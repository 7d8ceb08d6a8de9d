//! An MQTT v5 test client over mutual TLS that collects what it receives, and single
//! connection attempts that report how the broker refused them.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use rustls::{AlertDescription, ClientConfig};

use crate::pki::{Identity, BROKER_HOST};

/// How long a test client may take to connect and have its subscription acknowledged.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test client waits for the broker to acknowledge a publish.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two connection attempts of a test client.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Largest packet a test client accepts (policies are larger than rumqttc's 10 KiB default).
const MAX_PACKET: u32 = 1 << 20;

/// A message a [`Subscriber`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// An MQTT v5 test client over mutual TLS, run by its own thread: subscribes to its filters
/// (again after every reconnection), collects every message it receives, reconnects when the
/// connection drops, and publishes at QoS 1 on request.
pub struct Subscriber {
    client: AsyncClient,
    shared: Arc<ClientShared>,
    publish_lock: Mutex<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    id: String,
    has_filters: bool,
}

#[derive(Default)]
struct ClientShared {
    state: Mutex<ClientState>,
    changed: Condvar,
}

#[derive(Default)]
struct ClientState {
    messages: Vec<Message>,
    /// Successful CONNACKs so far.
    connections: u32,
    /// SUBACKs so far, each with one reason code per filter.
    subacks: Vec<Vec<SubscribeReasonCode>>,
    /// The connection (counted like `connections`) of the latest SUBACK.
    subscribed_in: u32,
    /// Packet ids of sent publishes, in order.
    published: Vec<u16>,
    pubacks: HashMap<u16, PubAckReason>,
    /// Connection errors, rendered, in order.
    errors: Vec<String>,
}

impl Subscriber {
    /// Connects to the broker on `port` as `who` and subscribes to `filters` at QoS 1 (none is
    /// fine: a publish-only client). Returns once connected and, if there are filters,
    /// subscribed; panics after [`CONNECT_TIMEOUT`] otherwise. The subscription reason codes
    /// are in [`Subscriber::suback`]: a refused filter does not make this fail.
    pub fn connect(port: u16, who: &Identity, filters: &[&str]) -> Subscriber {
        let mut options = MqttOptions::new(who.id.clone(), BROKER_HOST, port);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            who.tls_config(),
        ))));
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(Some(MAX_PACKET));
        let (client, eventloop) = AsyncClient::new(options, 64);
        let shared = Arc::new(ClientShared::default());
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let thread = {
            let client = client.clone();
            let shared = Arc::clone(&shared);
            let filters = filters.clone();
            std::thread::Builder::new()
                .name(format!("mqtt-{}", who.id))
                .spawn(move || run_client(eventloop, client, filters, shared, stop_rx))
                .expect("spawn the MQTT client thread")
        };
        let subscriber = Subscriber {
            client,
            shared,
            publish_lock: Mutex::new(()),
            stop: Some(stop),
            thread: Some(thread),
            id: who.id.clone(),
            has_filters: !filters.is_empty(),
        };
        subscriber.wait_connected(1, CONNECT_TIMEOUT);
        subscriber
    }

    /// Waits until the client has connected `n` times in all (reconnections count) and, if it
    /// has filters, the subscription of that connection was acknowledged.
    pub fn wait_connected(&self, n: u32, timeout: Duration) {
        let ok = self.wait_until(timeout, |s| {
            s.connections >= n && (!self.has_filters || s.subscribed_in == s.connections)
        });
        if !ok {
            let state = self.lock();
            panic!(
                "MQTT client {} did not connect (connection {n}) within {timeout:?}: \
                 {} connections, {} SUBACKs; errors: {:?}",
                self.id,
                state.connections,
                state.subacks.len(),
                state.errors
            );
        }
    }

    /// How many times the client has connected (1 after [`Subscriber::connect`]).
    pub fn connections(&self) -> u32 {
        self.lock().connections
    }

    /// The reason codes of the latest SUBACK, one per filter in order.
    pub fn suback(&self) -> Vec<SubscribeReasonCode> {
        self.lock().subacks.last().cloned().unwrap_or_default()
    }

    /// Connection errors seen so far (the broker going away, refusals), rendered.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    /// Every message received so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// Waits until at least `n` messages arrived and returns all of them; panics after
    /// `timeout` with what did arrive.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        if !self.wait_until(timeout, |s| s.messages.len() >= n) {
            let got = self.messages();
            panic!(
                "MQTT client {} received {} of {n} messages within {timeout:?}: {got:?}",
                self.id,
                got.len()
            );
        }
        self.messages()
    }

    /// The first message (received so far or within `timeout`) that satisfies `pred`.
    pub fn wait_for_message(
        &self,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Option<Message> {
        let mut found = None;
        self.wait_until(timeout, |s| {
            found = s.messages.iter().find(|m| pred(m)).cloned();
            found.is_some()
        });
        found
    }

    /// Publishes `payload` to `topic` at QoS 1 and returns the reason code of the broker's
    /// PUBACK (`NotAuthorized` when the ACL refuses the topic). Panics if no PUBACK comes
    /// within 10 s (a publish queued while reconnecting goes out once connected). One publish
    /// at a time per client. If the client's own filters match `topic`, it receives the
    /// message too.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) -> PubAckReason {
        let _one_at_a_time = self.publish_lock.lock().unwrap();
        let sent_before = self.lock().published.len();
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .unwrap_or_else(|e| panic!("MQTT client {} cannot queue a publish: {e}", self.id));
        let mut pkid = None;
        let ok = self.wait_until(PUBACK_TIMEOUT, |s| {
            pkid = s.published.get(sent_before).copied();
            pkid.is_some_and(|p| s.pubacks.contains_key(&p))
        });
        let state = self.lock();
        if !ok {
            panic!(
                "MQTT client {}: no PUBACK for the publish to {topic} within {PUBACK_TIMEOUT:?} \
                 (packet id {pkid:?}); errors: {:?}",
                self.id, state.errors
            );
        }
        state.pubacks[&pkid.expect("checked above")]
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.shared.state.lock().unwrap()
    }

    /// Waits until `done` holds for the state; false on timeout.
    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&ClientState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap()
                .0;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The client thread: polls the event loop, records what happens, reconnects on errors.
fn run_client(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    shared: Arc<ClientShared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for the MQTT client");
    runtime.block_on(async {
        loop {
            let event = tokio::select! {
                _ = &mut stop => return,
                event = eventloop.poll() => event,
            };
            let failed = event.is_err();
            {
                let mut state = shared.state.lock().unwrap();
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        state.connections += 1;
                        if !filters.is_empty() {
                            let subscribe = filters.iter().map(|f| {
                                rumqttc::v5::mqttbytes::v5::Filter::new(f, QoS::AtLeastOnce)
                            });
                            if let Err(e) = client.try_subscribe_many(subscribe) {
                                state.errors.push(format!("cannot queue SUBSCRIBE: {e}"));
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(suback))) => {
                        state.subacks.push(suback.return_codes);
                        state.subscribed_in = state.connections;
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        state.messages.push(Message {
                            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                            payload: publish.payload.to_vec(),
                            retain: publish.retain,
                        });
                    }
                    Ok(Event::Incoming(Packet::PubAck(puback))) => {
                        state.pubacks.insert(puback.pkid, puback.reason);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        state.pubacks.remove(&pkid);
                        state.published.push(pkid);
                    }
                    Ok(_) => {}
                    Err(e) => state.errors.push(e.to_string()),
                }
            }
            shared.changed.notify_all();
            if failed {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                }
            }
        }
    });
}

/// One connection attempt to the broker on `port` with the TLS configuration `tls` and MQTT
/// v5 client id `client_id`: `Ok` once the broker accepted the connection (CONNACK success),
/// otherwise the error that ended the attempt (a timeout is `ConnectionError::Timeout`).
pub fn try_connect(
    port: u16,
    tls: ClientConfig,
    client_id: &str,
    timeout: Duration,
) -> Result<(), ConnectionError> {
    let mut options = MqttOptions::new(client_id, BROKER_HOST, port);
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    options.set_connection_timeout(timeout.as_secs().max(1));
    let (_client, mut eventloop) = AsyncClient::new(options, 8);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for the MQTT client");
    runtime.block_on(async {
        match tokio::time::timeout(timeout, eventloop.poll()).await? {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(()),
            Ok(other) => panic!("first MQTT event was not a CONNACK: {other:?}"),
            Err(e) => Err(e),
        }
    })
}

/// The TLS alert the broker sent, if `error` is the client learning of a TLS alert (how
/// the broker refuses a client certificate: during the handshake with TLS 1.2, on the first
/// read after it with TLS 1.3).
pub fn tls_alert(error: &ConnectionError) -> Option<AlertDescription> {
    use rumqttc::v5::mqttbytes::Error as PacketError;
    use rumqttc::v5::{StateError, TlsError};
    let io = match error {
        ConnectionError::Io(e)
        | ConnectionError::Tls(TlsError::Io(e))
        | ConnectionError::MqttState(StateError::Io(e))
        | ConnectionError::MqttState(StateError::Deserialization(PacketError::Io(e))) => e,
        ConnectionError::Tls(TlsError::TLS(rustls::Error::AlertReceived(alert))) => {
            return Some(*alert)
        }
        _ => return None,
    };
    match io.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}
