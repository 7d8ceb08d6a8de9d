//! End-to-end tests of the broker set-up the product relies on: a real Mosquitto with mutual
//! TLS and the topic ACL (device id = certificate CN = MQTT username = client id = topic
//! segment), reached by real MQTT v5 clients over rustls. These are the security requirements
//! of the MQTT link: only certificates of the device CA get in, a device writes only its own
//! topics and reads only its own policy, and clients survive a broker crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use picket_test_support::pki::{tls_client_config_without_certificate, BROKER_HOST};
use picket_test_support::subscriber::{tls_alert, try_connect};
use picket_test_support::{Mosquitto, Pki, Subscriber};
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;

/// How long a test waits for a message that should arrive.
const DELIVERY: Duration = Duration::from_secs(5);
/// How long a refused client gets to (not) connect.
const REFUSAL: Duration = Duration::from_secs(5);
/// Every device and backend topic lives under this prefix.
const BACKEND_FILTER: &str = "picket/v1/+/#";

/// A broker with a backend subscribed to every device topic.
fn broker_with_backend() -> (Pki, Mosquitto, Subscriber) {
    let pki = Pki::new();
    let backend = pki.backend("picket-backend-1");
    let broker = Mosquitto::start(&pki);
    let subscriber = Subscriber::connect(broker.port(), &backend, &[BACKEND_FILTER]);
    assert_eq!(
        subscriber.suback(),
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "the backend must be allowed to subscribe to {BACKEND_FILTER}"
    );
    (pki, broker, subscriber)
}

#[test]
fn device_publishes_under_its_own_topic_and_the_backend_receives_it() {
    let (pki, broker, backend) = broker_with_backend();
    let device = Subscriber::connect(broker.port(), &pki.device("dev-a"), &[]);

    let reason = device.publish("picket/v1/dev-a/alert", b"alert 1".to_vec(), false);
    assert_eq!(reason, PubAckReason::Success);
    let reason = device.publish("picket/v1/dev-a/status", b"online".to_vec(), true);
    assert_eq!(reason, PubAckReason::Success);

    let got = backend.wait_for(2, DELIVERY);
    assert_eq!(got[0].topic, "picket/v1/dev-a/alert");
    assert_eq!(got[0].payload, b"alert 1");
    assert_eq!(got[1].topic, "picket/v1/dev-a/status");
    assert_eq!(got[1].payload, b"online");
}

#[test]
fn device_certificate_from_another_ca_is_refused_with_a_tls_alert() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki);

    let foreign = pki.foreign_device("dev-a");
    let error = try_connect(broker.port(), foreign.tls_config(), "dev-a", REFUSAL)
        .expect_err("a device certificate from an unrelated CA must not get a connection");
    let alert = tls_alert(&error)
        .unwrap_or_else(|| panic!("expected a TLS alert from the broker, got: {error:?}"));
    eprintln!("refused with TLS alert {alert:?}");

    // The same id with a certificate of the device CA is accepted: the refusal is the CA's.
    try_connect(
        broker.port(),
        pki.device("dev-a").tls_config(),
        "dev-a",
        REFUSAL,
    )
    .expect("a certificate of the device CA must be accepted");
}

#[test]
fn client_without_certificate_is_refused_with_a_tls_alert() {
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki);

    let tls = tls_client_config_without_certificate(pki.ca_cert());
    let error = try_connect(broker.port(), tls, "dev-a", REFUSAL)
        .expect_err("a client without a certificate must not get a connection");
    let alert = tls_alert(&error)
        .unwrap_or_else(|| panic!("expected a TLS alert from the broker, got: {error:?}"));
    eprintln!("refused with TLS alert {alert:?}");

    try_connect(
        broker.port(),
        pki.device("dev-a").tls_config(),
        "dev-a",
        REFUSAL,
    )
    .expect("the same client with a device certificate must be accepted");
}

#[test]
fn device_cannot_publish_under_another_devices_topic() {
    let (pki, broker, backend) = broker_with_backend();
    let device_a = Subscriber::connect(broker.port(), &pki.device("dev-a"), &[]);

    for topic in [
        "picket/v1/dev-b/alert",
        "picket/v1/dev-b/status",
        "picket/v1/dev-b/policy",
        // Its own policy topic is read-only: only the backend sends policies.
        "picket/v1/dev-a/policy",
        "picket/v1/dev-b/policy/result",
        "picket/v1/alert",
        "picket/other",
    ] {
        let reason = device_a.publish(topic, b"forged".to_vec(), false);
        assert_eq!(
            reason,
            PubAckReason::NotAuthorized,
            "dev-a publishing to {topic}"
        );
    }
    // Sent after the forged ones on the same connection, so delivered after them, if at all.
    let reason = device_a.publish("picket/v1/dev-a/alert", b"genuine".to_vec(), false);
    assert_eq!(reason, PubAckReason::Success);

    backend
        .wait_for_message(DELIVERY, |m| m.payload == b"genuine")
        .expect("the backend must receive dev-a's publish to its own topic");
    let messages = backend.messages();
    assert!(
        messages.iter().all(|m| m.payload != b"forged"),
        "forged publishes reached the backend: {messages:?}"
    );
    assert_eq!(messages.len(), 1, "{messages:?}");
}

/// MQTT 3.1.1 has no reason codes: Mosquitto acknowledges a refused publish like any other
/// and drops it. A device speaking 3.1.1 must not get through either.
#[test]
fn device_cannot_publish_under_another_devices_topic_with_mqtt_3_1_1() {
    let (pki, broker, backend) = broker_with_backend();
    let device_a = pki.device("dev-a");

    let mut options = rumqttc::MqttOptions::new("dev-a", BROKER_HOST, broker.port());
    options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        Arc::new(device_a.tls_config()),
    )));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 8);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (topic, payload) in [
            ("picket/v1/dev-b/alert", "forged"),
            ("picket/v1/dev-a/alert", "genuine"),
        ] {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        let mut pubacks = 0;
        while pubacks < 2 {
            let event = tokio::time::timeout(DELIVERY, eventloop.poll())
                .await
                .expect("the broker acknowledges both publishes in time")
                .expect("the 3.1.1 connection stays up");
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event {
                pubacks += 1;
            }
        }
    });

    backend
        .wait_for_message(DELIVERY, |m| m.payload == b"genuine")
        .expect("the backend must receive dev-a's publish to its own topic");
    let messages = backend.messages();
    assert!(
        messages.iter().all(|m| m.payload != b"forged"),
        "a forged 3.1.1 publish reached the backend: {messages:?}"
    );
}

#[test]
fn device_receives_only_its_own_policy_topic() {
    let (pki, broker, backend) = broker_with_backend();
    let device_a = Subscriber::connect(
        broker.port(),
        &pki.device("dev-a"),
        &[
            "picket/v1/dev-a/policy",
            "picket/v1/dev-b/policy",
            "picket/v1/+/alert",
            "#",
        ],
    );
    let device_b = Subscriber::connect(
        broker.port(),
        &pki.device("dev-b"),
        &["picket/v1/dev-b/policy"],
    );
    // Mosquitto grants the subscriptions and applies the read ACL to each delivery.
    assert_eq!(device_a.suback().len(), 4);

    // dev-b's alert and policy, then dev-a's policy: ordered on the backend's connection.
    assert_eq!(
        device_b.publish("picket/v1/dev-b/alert", b"b alert".to_vec(), false),
        PubAckReason::Success
    );
    assert_eq!(
        backend.publish("picket/v1/dev-b/policy", b"policy for b".to_vec(), false),
        PubAckReason::Success
    );
    assert_eq!(
        backend.publish("picket/v1/dev-a/policy", b"policy for a".to_vec(), false),
        PubAckReason::Success
    );

    // The policy for dev-b did go out: dev-b gets it.
    device_b
        .wait_for_message(DELIVERY, |m| m.payload == b"policy for b")
        .expect("dev-b must receive its own policy");
    device_a
        .wait_for_message(DELIVERY, |m| m.payload == b"policy for a")
        .expect("dev-a must receive its own policy");
    // Each matching filter delivers its own copy: own policy via its topic and via `#`.
    let got = device_a.messages();
    assert!(
        got.iter()
            .all(|m| m.topic == "picket/v1/dev-a/policy" && m.payload == b"policy for a"),
        "dev-a received more than its own policy: {got:?}"
    );
}

#[test]
fn device_cannot_take_over_another_devices_client_id() {
    let (pki, broker, backend) = broker_with_backend();
    let device_b = Subscriber::connect(
        broker.port(),
        &pki.device("dev-b"),
        &["picket/v1/dev-b/policy"],
    );

    // dev-a asks for dev-b's client id; the broker replaces it with dev-a's CN.
    try_connect(
        broker.port(),
        pki.device("dev-a").tls_config(),
        "dev-b",
        REFUSAL,
    )
    .expect("dev-a connects under its own identity");

    // Had dev-a taken over dev-b's session, dev-b would have been disconnected by now and
    // would miss this or receive it only after reconnecting.
    assert_eq!(
        backend.publish("picket/v1/dev-b/policy", b"policy for b".to_vec(), false),
        PubAckReason::Success
    );
    device_b
        .wait_for_message(DELIVERY, |m| m.payload == b"policy for b")
        .expect("dev-b must still receive its policy");
    assert_eq!(
        (device_b.connections(), device_b.errors()),
        (1, vec![]),
        "dev-b's connection must not be taken over"
    );
}

#[test]
fn clients_reconnect_after_the_broker_is_killed_and_restarted_on_the_same_port() {
    let (pki, mut broker, backend) = broker_with_backend();
    let device = Subscriber::connect(
        broker.port(),
        &pki.device("dev-a"),
        &["picket/v1/dev-a/policy"],
    );
    let port = broker.port();

    broker.stop();
    assert!(!broker.is_running());
    broker.restart();
    assert_eq!(broker.port(), port);

    device.wait_connected(2, Duration::from_secs(10));
    backend.wait_connected(2, Duration::from_secs(10));
    assert!(
        !device.errors().is_empty(),
        "the device never saw the broker go away"
    );

    assert_eq!(
        device.publish("picket/v1/dev-a/alert", b"after restart".to_vec(), false),
        PubAckReason::Success
    );
    backend
        .wait_for_message(DELIVERY, |m| m.payload == b"after restart")
        .expect("the backend must receive the device's publish after the restart");
    assert_eq!(
        backend.publish("picket/v1/dev-a/policy", b"policy".to_vec(), false),
        PubAckReason::Success
    );
    device
        .wait_for_message(DELIVERY, |m| m.payload == b"policy")
        .expect("the device must be subscribed again after the restart");
}
