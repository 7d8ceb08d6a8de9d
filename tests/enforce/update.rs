//! A policy update over MQTT switches enforcement at once: enforce → alert lets the refused file
//! run from the next exec, alert → enforce refuses it again.

use std::time::Duration;

use picket_proto::topic::{topic, Channel};
use picket_test_support::{Mosquitto, Pki, Subscriber};

use crate::support::*;

const DEVICE: &str = "test-device";

#[test]
fn an_update_over_mqtt_switches_enforcement_at_once() {
    let _serial = serial();
    let lab = Lab::new("update");
    let unknown = lab.install("/usr/bin/true", "unknown");
    let bundle = |serial: u64, mode: &str| {
        let text = policy(&lab, &format!("executables = \"{mode}\""))
            .replace("serial = 1", &format!("serial = {serial}"));
        lab.sign(&format!("policy-{serial}"), &text)
    };
    let enforcing = bundle(1, "enforce");
    let alerting = std::fs::read(bundle(2, "alert")).unwrap();
    let enforcing_again = std::fs::read(bundle(3, "enforce")).unwrap();

    let pki = Pki::new();
    let device = pki.device(DEVICE);
    // Issued before the broker starts: its ACL names the backends issued so far.
    let backend = pki.backend("picket-backend");
    let broker = Mosquitto::start(&pki);
    let q = |p: &std::path::Path| toml_str(p);
    let mqtt = format!(
        "[mqtt]\nbroker = \"localhost:{}\"\nca = {}\ncert = {}\nkey = {}\n\
         reconnect_min = \"1s\"\nreconnect_max = \"2s\"\n",
        broker.port(),
        q(&device.ca),
        q(&device.cert),
        q(&device.key),
    );
    let agent = lab.run(&lab.config(&enforcing, &mqtt));
    agent.wait_log("executables: guard started (enforce)", ALERT_TIMEOUT);
    assert!(is_eperm(&try_run(&unknown)), "enforced at start");

    let fleet = Subscriber::connect(broker.port(), &backend, &[&format!("picket/v1/{DEVICE}/#")]);
    let policy_topic = topic(DEVICE, Channel::Policy);
    // Retained, as `picket-backend policy push` sends them: the agent takes it whenever its
    // subscription is up.
    fleet.publish(&policy_topic, alerting, true);
    agent.wait_log("executables: guard started (dry run)", ALERT_TIMEOUT);
    assert_eq!(try_run(&unknown).unwrap(), 0, "alert mode after the update");

    fleet.publish(&policy_topic, enforcing_again, true);
    agent.wait_log(
        "now enforcing policy `enforce-test` serial 3",
        ALERT_TIMEOUT,
    );
    // The first guard's line was logged at start: the one wanted follows serial 3's.
    let started = std::time::Instant::now();
    loop {
        let log = agent.log();
        let after = &log[log.find("serial 3").unwrap()..];
        if after.contains("guard started (enforce)") {
            break;
        }
        assert!(
            started.elapsed() < ALERT_TIMEOUT,
            "no enforcing guard after serial 3:\n{after}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(is_eperm(&try_run(&unknown)), "enforced again");
    let out = agent.stop();
    let blocked = out
        .events
        .iter()
        .filter(|a| kind(a) == "blocked_exec" && path(a) == unknown.to_str())
        .count();
    assert!(blocked >= 1, "blocked_exec alerts: {blocked}");
}
