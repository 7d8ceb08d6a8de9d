//! The Mosquitto that `serve` runs: its ACL, restarts, stops, failures.

use super::*;

/// The pid in the managed broker's pid file, once it is a running Mosquitto.
fn managed_broker_pid(broker: &Broker) -> u32 {
    let pid: u32 = std::fs::read_to_string(broker.path("managed/mosquitto.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("mosquitto"),
        "pid {pid} is not mosquitto: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    pid
}

/// Whether a TLS client presenting `who` (trusting the fleet CA) gets a CONNACK.
async fn connects(broker: &Broker, who: &Identity, client_id: &str) -> bool {
    use rumqttc::v5::{mqttbytes::v5::Packet, AsyncClient, Event, MqttOptions};
    use rumqttc::{TlsConfiguration, Transport};
    let file = who.cert.display();
    let tls = who.tls_config();
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        std::sync::Arc::new(tls),
    )));
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => true,
        Ok(other) => {
            eprintln!("{file}: {other:?}");
            false
        }
        Err(_) => panic!("{file}: neither accepted nor refused within 5 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_its_own_broker_with_the_per_device_acl() {
    let broker = Broker::pki();
    let mut backend = Backend::start(&broker, "managed", &broker.managed_section());
    let log = backend.log();
    assert!(
        log.contains("broker: ") && log.contains("listening on"),
        "{log}"
    );
    assert!(!log.contains("not at the managed broker"), "{log}");
    let pid = managed_broker_pid(&broker);
    let conf = std::fs::read_to_string(broker.path("managed/mosquitto.conf")).unwrap();
    assert!(conf.contains("require_certificate true"), "{conf}");
    let acl = std::fs::read_to_string(broker.path("managed/acl")).unwrap();
    assert!(acl.starts_with(&format!("user {BACKEND_ID}\n")), "{acl}");

    // A device writes under its own id: stored.
    let mut device = Device::connect(&broker, "gw-a", None).await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(1), false)
        .await;
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| seqs(v) == [1]);

    // The same device writes under another device's topic, with an envelope of that device:
    // the broker's ACL drops it (the backend would store it: it is well-formed), while the
    // device's next own alert gets through.
    let forged = picket_proto::encode(Format::Postcard, "gw-b", &alert(7)).unwrap();
    device
        .client
        .publish(
            picket_proto::topic::topic("gw-b", Channel::Alert),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            forged,
        )
        .await
        .unwrap();
    device
        .publish(Channel::Alert, Format::Postcard, &alert(2), false)
        .await;
    backend.wait_for(&["alerts", "--json"], |v| seqs(v) == [1, 2]);
    let all = backend.query(&["alerts", "--json"]);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|a| a["device_id"] == "gw-a"),
        "{all:#}"
    );
    assert_eq!(backend.query(&["refused", "--json"]), serde_json::json!([]));

    // A certificate from another CA, even with a known device's CN, cannot connect; one from
    // the fleet CA can.
    let foreign = broker.pki.foreign_device("gw-a");
    assert!(!connects(&broker, &foreign, "gw-a").await);
    assert!(connects(&broker, &broker.pki.device("gw-c"), "gw-c").await);

    // The broker dies: `serve` logs it, starts it again, and the ingest resumes.
    kill("KILL", pid);
    backend.wait_log("the broker exited", 1);
    backend.wait_log("broker restarted", 1);
    backend.wait_log("subscribed to", 2);
    let pid = managed_broker_pid(&broker);
    drop(device);
    let mut device = Device::connect(&broker, "gw-a", None).await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(3), false)
        .await;
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| seqs(v) == [1, 2, 3]);
    drop(device);

    // SIGTERM: `serve` stops its broker before it exits; the port is free.
    backend.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the broker (pid {pid}) outlived serve"
    );
    std::net::TcpListener::bind(("127.0.0.1", broker.port))
        .expect("the broker's port is still in use after serve exited");
}

/// Sends `signal` (a name, as `kill -<signal>` takes it) to `pid`.
fn kill(signal: &str, pid: u32) {
    assert!(std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Waits until `pid` has exited (gone, or a zombie its stopped parent has not reaped).
fn wait_exited(pid: u32) {
    let start = Instant::now();
    loop {
        let exited = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        };
        if exited {
            return;
        }
        assert!(start.elapsed() < TIMEOUT, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_sent_while_the_backend_is_away_from_its_restarted_broker_are_stored() {
    let broker = Broker::pki();
    let mut backend = Backend::start(&broker, "managed", &broker.managed_section());
    // The managed broker's only receiver subscribes without sharing: Mosquitto keeps plain
    // subscriptions across its restarts, not shared ones.
    let log = backend.log();
    assert!(log.contains("subscribed to picket/v1/+/alert,"), "{log}");
    assert!(!log.contains("$share/"), "{log}");

    // The broker restarts and a device is back before the backend is: `serve` (with its
    // ingest) is stopped, the broker exits (SIGTERM: it saves its state), and a broker with
    // the configuration `serve` wrote (and its saved state) comes back in its place.
    let serve = backend.pid();
    let managed = managed_broker_pid(&broker);
    kill("STOP", serve);
    kill("TERM", managed);
    wait_exited(managed);
    let mut restarted = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(broker.path("managed/mosquitto.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", broker.port)).is_err() {
        assert!(start.elapsed() < TIMEOUT, "the broker did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut device = Device::connect(&broker, "gw-a", None).await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(1), false)
        .await;
    device.flush().await;
    drop(device);

    // That broker stops too (saving the alert it keeps for the backend's session); `serve`
    // resumes, starts its broker again, and the ingest gets and stores the alert.
    kill("TERM", restarted.id());
    restarted.wait().unwrap();
    kill("CONT", serve);
    backend.wait_log("broker restarted", 1);
    backend.wait_for(&["alerts", "--json"], |v| seqs(v) == [1]);
    backend.stop();
}

#[test]
fn a_sigterm_while_the_managed_broker_starts_leaves_no_broker() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Broker::pki();
    // A Mosquitto slow to start: `serve` is told to stop while it waits for it to listen.
    let started = broker.path("wrapper-started");
    let wrapper = broker.path("slow-mosquitto");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntouch '{}'\nsleep 2\nexec mosquitto \"$@\"\n",
            started.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = broker.backend_config(
        "slow",
        &format!(
            "{}mosquitto = \"{}\"\n",
            broker.managed_section(),
            wrapper.display()
        ),
    );
    let serve = backend_bin()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !(started.exists() && broker.path("managed/mosquitto.pid").exists()) {
        assert!(start.elapsed() < TIMEOUT, "the broker was never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = managed_broker_pid(&broker);
    kill("TERM", serve.id());
    let out = serve.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("terminated; stopping"),
        "{}",
        text(&out)
    );
    wait_exited(pid);
    std::net::TcpListener::bind(("127.0.0.1", broker.port))
        .expect("the broker's port is still in use after serve exited");
}

#[test]
fn a_managed_broker_that_cannot_start_is_reported() {
    let broker = Broker::pki();
    // The port is taken.
    let taken = std::net::TcpListener::bind(("127.0.0.1", broker.port)).unwrap();
    let config = broker.backend_config("taken", &broker.managed_section());
    let started = std::time::Instant::now();
    let out = backend_bin()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("port in use"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(taken);
    // No Mosquitto where it is said to be.
    let config = broker.backend_config(
        "missing",
        &format!(
            "{}mosquitto = \"/nonexistent/mosquitto\"\n",
            broker.managed_section()
        ),
    );
    let out = backend_bin()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("install mosquitto (scripts/setup.sh does)"),
        "{}",
        text(&out)
    );
    // A broker certificate Mosquitto cannot use: it exits at its start, and its log says why.
    let section = broker.managed_section().replace(
        &broker.pki.server_key().display().to_string(),
        &broker.backend.key.display().to_string(),
    );
    let config = broker.backend_config("mismatch", &section);
    let out = backend_bin()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("exited at its start") && text(&out).contains("mosquitto.log"),
        "{}",
        text(&out)
    );
    assert!(std::net::TcpListener::bind(("127.0.0.1", broker.port)).is_ok());
}
