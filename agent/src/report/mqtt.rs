//! One MQTT connection over mutual TLS, in MQTT v5 or 3.1.1, behind one small interface: the
//! reporter ([`super::Reporter`]) publishes, subscribes and reads normalised events without caring which
//! protocol the broker speaks.
//!
//! Sessions are always clean: after any reconnection nothing from the previous connection is
//! replayed by the client library (it drops its in-flight messages when the broker reports no
//! session), and the reporter re-sends what the broker never acknowledged from its spool. That
//! keeps one owner of "what is still to deliver": the spool.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use rumqttc::{v5, Outgoing, TlsConfiguration, Transport};
use rustls::ClientConfig;

/// Which MQTT version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Protocol {
    /// MQTT v5 first; 3.1.1 if the broker refuses v5.
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "v5")]
    V5,
    #[serde(rename = "v3.1.1")]
    V311,
}

/// What a connection needs.
#[derive(Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    pub tls: Arc<ClientConfig>,
    /// Topic and payload of the last will (published retained, QoS 1, by the broker).
    pub will: (String, Vec<u8>),
    /// Largest packet accepted from the broker.
    pub max_incoming: usize,
    /// QoS 1 messages in flight at once.
    pub inflight: u16,
}

/// What the connection reports.
#[derive(Debug)]
pub enum Ev {
    /// The broker accepted the connection (a fresh session).
    Connected,
    /// A QoS 1 message was acknowledged; `refused` holds the broker's reason if it refused it
    /// (MQTT v5 only).
    PubAck { pkid: u16, refused: Option<String> },
    /// A publish went out with this packet id (0 for QoS 0), in the order they were requested.
    Sent { pkid: u16 },
    /// A message on a subscribed topic.
    Message { topic: String, payload: Bytes },
    /// The DISCONNECT packet went out.
    Disconnected,
    /// Anything else (pings, subscription acknowledgements, ...).
    Other,
}

/// The client library's error, whichever protocol it speaks.
pub type LibraryError = Box<dyn std::error::Error + Send + Sync>;

/// Why the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The broker seems not to speak the protocol tried: it refused the version, answered the
    /// CONNECT with something else than a CONNACK or with what does not decode, or (MQTT v5)
    /// closed the connection before any CONNACK (switch in `Auto`).
    #[error(transparent)]
    Protocol(LibraryError),
    /// Anything else: the network, TLS, the broker refusing the client, a lost connection.
    #[error(transparent)]
    Connection(LibraryError),
}

impl Failure {
    /// The connection failed, `protocol` when for the MQTT version tried.
    fn new(err: impl Into<LibraryError>, protocol: bool) -> Self {
        if protocol {
            Failure::Protocol(err.into())
        } else {
            Failure::Connection(err.into())
        }
    }

    /// Whether the broker seems not to speak the protocol tried.
    pub fn is_protocol(&self) -> bool {
        matches!(self, Failure::Protocol(_))
    }
}

/// The client half: queue requests for the event loop.
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event loop half: drives the connection.
pub enum Events {
    V4(Box<rumqttc::EventLoop>),
    /// `accepted`: the broker sent a CONNACK on the current connection.
    V5 {
        events: Box<v5::EventLoop>,
        accepted: bool,
    },
}

/// Creates a connection (not yet connected: the first `Events::next` connects).
pub fn connect(options: &Options, v5: bool, capacity: usize) -> (Client, Events) {
    let tls = Transport::Tls(TlsConfiguration::Rustls(options.tls.clone()));
    let mut network = rumqttc::NetworkOptions::new();
    // Alerts are small and latency matters more than packet count.
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    if v5 {
        let mut o = v5::MqttOptions::new(&options.client_id, &options.host, options.port);
        o.set_transport(tls)
            .set_keep_alive(options.keep_alive)
            .set_clean_start(true)
            .set_max_packet_size(Some(options.max_incoming as u32))
            .set_outgoing_inflight_upper_limit(options.inflight)
            .set_request_channel_capacity(capacity)
            .set_network_options(network)
            .set_last_will(v5::mqttbytes::v5::LastWill::new(
                &options.will.0,
                options.will.1.clone(),
                v5::mqttbytes::QoS::AtLeastOnce,
                true,
                None,
            ));
        let (client, events) = v5::AsyncClient::new(o, capacity);
        let events = Events::V5 {
            events: Box::new(events),
            accepted: false,
        };
        (Client::V5(client), events)
    } else {
        let mut o = rumqttc::MqttOptions::new(&options.client_id, &options.host, options.port);
        o.set_transport(tls)
            .set_keep_alive(options.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(options.max_incoming, options.max_incoming)
            .set_inflight(options.inflight)
            .set_request_channel_capacity(capacity)
            .set_last_will(rumqttc::LastWill::new(
                &options.will.0,
                options.will.1.clone(),
                rumqttc::QoS::AtLeastOnce,
                true,
            ));
        let (client, mut events) = rumqttc::AsyncClient::new(o, capacity);
        events.set_network_options(network);
        (Client::V4(client), Events::V4(Box::new(events)))
    }
}

impl Client {
    /// Queues a publish; fails only if the request queue is full or the loop is gone.
    pub fn publish(
        &self,
        topic: &str,
        qos1: bool,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let qos = if qos1 {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.try_publish(topic, qos, retain, payload)
                    .map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let qos = if qos1 {
                    v5::mqttbytes::QoS::AtLeastOnce
                } else {
                    v5::mqttbytes::QoS::AtMostOnce
                };
                c.try_publish(topic, qos, retain, payload)
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub fn subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(topic, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    pub fn disconnect(&self) {
        // A full queue or a closed loop both mean there is nothing left to say goodbye on.
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl Events {
    /// The next event; after a failure, the next call reconnects.
    pub async fn next(&mut self) -> Result<Ev, Failure> {
        match self {
            Events::V4(e) => match e.poll().await {
                Ok(rumqttc::Event::Incoming(p)) => Ok(match p {
                    rumqttc::Packet::ConnAck(_) => Ev::Connected,
                    rumqttc::Packet::PubAck(a) => Ev::PubAck {
                        pkid: a.pkid,
                        refused: None,
                    },
                    rumqttc::Packet::Publish(p) => Ev::Message {
                        topic: p.topic,
                        payload: p.payload,
                    },
                    _ => Ev::Other,
                }),
                Ok(rumqttc::Event::Outgoing(o)) => Ok(outgoing(o)),
                Err(err) => {
                    use rumqttc::{ConnectReturnCode, ConnectionError, StateError};
                    let protocol = matches!(
                        err,
                        ConnectionError::ConnectionRefused(
                            ConnectReturnCode::RefusedProtocolVersion
                        ) | ConnectionError::NotConnAck(_)
                            | ConnectionError::MqttState(StateError::Deserialization(_))
                    );
                    Err(Failure::new(err, protocol))
                }
            },
            Events::V5 { events, accepted } => match events.poll().await {
                Ok(v5::Event::Incoming(p)) => {
                    use v5::mqttbytes::v5::{Packet, PubAckReason};
                    Ok(match p {
                        Packet::ConnAck(_) => {
                            *accepted = true;
                            Ev::Connected
                        }
                        Packet::PubAck(a) => Ev::PubAck {
                            pkid: a.pkid,
                            refused: match a.reason {
                                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                                other => Some(format!("{other:?}")),
                            },
                        },
                        Packet::Publish(p) => Ev::Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                        },
                        _ => Ev::Other,
                    })
                }
                Ok(v5::Event::Outgoing(o)) => Ok(outgoing(o)),
                Err(err) => {
                    use v5::mqttbytes::v5::ConnectReturnCode;
                    use v5::{ConnectionError, StateError};
                    // The next poll connects anew.
                    let before_connack = !std::mem::take(accepted);
                    // A broker that does not speak v5 answers the v5 CONNECT with a CONNACK of
                    // its own version (MQTT 3.1.1: return code 0x01, unacceptable protocol
                    // version) and closes the connection. The client library cannot read a
                    // CONNACK without v5 properties and reports only the connection closed:
                    // closed after the TLS handshake and before any CONNACK is that refusal.
                    if before_connack
                        && matches!(
                            err,
                            ConnectionError::MqttState(StateError::ConnectionAborted)
                        )
                    {
                        return Err(Failure::Protocol(
                            format!(
                                "the broker closed the connection before answering the MQTT \
                                 v5 CONNECT, as a broker without v5 does (or one refusing this \
                                 client, or stopping) ({err})"
                            )
                            .into(),
                        ));
                    }
                    let protocol = matches!(
                        err,
                        ConnectionError::ConnectionRefused(
                            ConnectReturnCode::UnsupportedProtocolVersion
                                | ConnectReturnCode::RefusedProtocolVersion
                        ) | ConnectionError::NotConnAck(_)
                            | ConnectionError::MqttState(StateError::Deserialization(_))
                    );
                    Err(Failure::new(err, protocol))
                }
            },
        }
    }
}

fn outgoing(o: Outgoing) -> Ev {
    match o {
        Outgoing::Publish(pkid) => Ev::Sent { pkid },
        Outgoing::Disconnect => Ev::Disconnected,
        _ => Ev::Other,
    }
}
