//! End-to-end tests of `picket-backend` against a real Mosquitto with mutual TLS: test
//! devices (each with its own certificate) publish messages built with `picket_proto::encode`,
//! the backend runs as a child process, and the tests read what it stored through its CLI and
//! HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::path::PathBuf;
    use std::process::{Child, Command, Output};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use picket_proto::topic::{topic, Channel};
    use picket_proto::Format;
    use picket_test_support::mosquitto::{free_port, Options};
    use picket_test_support::{Identity, Mosquitto, Pki, TempDir};
    use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::{TlsConfiguration, Transport};
    use serde_json::Value;

    pub const TIMEOUT: Duration = Duration::from_secs(15);
    pub const BACKEND_ID: &str = "picket-backend";

    /// A test PKI and a Mosquitto with the managed broker's configuration and ACL (TLS
    /// listener on a free loopback port, client certificates required, CN = user name), with
    /// room for 100000 queued messages per client, as docs/BACKEND.md asks of a broker. Unlike
    /// the managed broker it keeps the client id a client asks for (several `serve` instances
    /// and `policy push` share the backend's certificate, as they may at an external broker),
    /// and it denies the backend `picket/v1/locked/policy` (a refusal for `policy push` to
    /// report). Killed when dropped.
    pub struct Broker {
        pub pki: Pki,
        /// The backend's certificate (CN [`BACKEND_ID`]).
        pub backend: Identity,
        pub port: u16,
        /// Configurations, logs and databases of the backends run against this broker.
        dir: TempDir,
        mosquitto: Option<Mosquitto>,
    }

    impl Broker {
        pub fn start() -> Broker {
            let mut broker = Broker::pki();
            let options = Options {
                max_queued_messages: 100_000,
                username_as_client_id: false,
                denied: vec![(BACKEND_ID.into(), "picket/v1/locked/policy".into())],
            };
            let mosquitto = Mosquitto::start_with(&broker.pki, &options);
            broker.port = mosquitto.port();
            broker.mosquitto = Some(mosquitto);
            broker
        }

        /// The PKI and a free port, without starting Mosquitto (for `serve`'s managed broker,
        /// configured by [`Broker::managed_section`]).
        pub fn pki() -> Broker {
            let pki = Pki::new();
            let backend = pki.backend(BACKEND_ID);
            Broker {
                pki,
                backend,
                port: free_port(),
                dir: TempDir::new(),
                mosquitto: None,
            }
        }

        /// A `[broker]` section for `serve` to run Mosquitto itself on this PKI and port.
        pub fn managed_section(&self) -> String {
            format!(
                "[broker]\nlisten = \"127.0.0.1:{port}\"\nca = \"{ca}\"\ncert = \"{cert}\"\n\
                 key = \"{key}\"\ndir = \"{dir}\"\n",
                port = self.port,
                ca = self.pki.ca_cert().display(),
                cert = self.pki.server_cert().display(),
                key = self.pki.server_key().display(),
                dir = self.path("managed").display(),
            )
        }

        /// Stops the broker and starts it again on the same port (sessions are lost).
        pub fn restart(&mut self) {
            self.mosquitto
                .as_mut()
                .expect("a broker started by Broker::start")
                .restart();
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        /// A backend configuration for this broker.
        pub fn backend_config(&self, name: &str, extra: &str) -> PathBuf {
            let path = self.path(&format!("{name}.toml"));
            std::fs::write(
                &path,
                format!(
                    "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{name}\"\n\
                     ca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{store}{extra}",
                    store = if extra.contains("[store]") {
                        String::new()
                    } else {
                        format!(
                            "[store]\nsqlite = \"{}\"\n",
                            self.path(&format!("{name}.db")).display()
                        )
                    },
                    port = self.port,
                    ca = self.backend.ca.display(),
                    cert = self.backend.cert.display(),
                    key = self.backend.key.display(),
                ),
            )
            .unwrap();
            path
        }
    }

    /// A running `picket-backend serve`; killed when dropped.
    pub struct Backend {
        child: Child,
        pub config: PathBuf,
        /// The SQLite database (none when the store is PostgreSQL).
        pub db: Option<PathBuf>,
        log: PathBuf,
    }

    pub fn backend_bin() -> Command {
        Command::new(env!("CARGO_BIN_EXE_picket-backend"))
    }

    impl Backend {
        /// Starts `serve` with `name.toml` and waits until it has subscribed.
        pub fn start(broker: &Broker, name: &str, extra: &str) -> Backend {
            let config = broker.backend_config(name, extra);
            let log = broker.path(&format!("{name}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let child = backend_bin()
                .arg("--config")
                .arg(&config)
                .arg("serve")
                .env("RUST_LOG", "info")
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            let mut backend = Backend {
                child,
                config,
                db: (!extra.contains("[store]")).then(|| broker.path(&format!("{name}.db"))),
                log,
            };
            backend.wait_log("subscribed to", 1);
            backend
        }

        pub fn log(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// Waits until `needle` appears `times` times in the log.
        pub fn wait_log(&mut self, needle: &str, times: usize) {
            let start = Instant::now();
            while self.log().matches(needle).count() < times {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("the backend exited ({status}):\n{}", self.log());
                }
                assert!(
                    start.elapsed() < TIMEOUT,
                    "no `{needle}` in the backend's log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// SIGTERM, and checks that it exits cleanly (status 0) within the timeout.
        pub fn stop(mut self) {
            let pid = self.child.id().to_string();
            assert!(Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success());
            let start = Instant::now();
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    assert!(status.success(), "exit {status}:\n{}", self.log());
                    assert!(
                        self.log().contains("terminated; stopping"),
                        "{}",
                        self.log()
                    );
                    return;
                }
                assert!(start.elapsed() < TIMEOUT, "still running after SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        pub fn assert_running(&mut self) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the backend exited:\n{}",
                self.log()
            );
        }

        /// Runs a query command on this backend's database and parses its JSON output.
        pub fn query(&self, args: &[&str]) -> Value {
            let mut command = backend_bin();
            match &self.db {
                Some(db) => command.arg("--db").arg(db),
                None => command.arg("--config").arg(&self.config),
            };
            let out = command.args(args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", text(&out));
            serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
        }

        /// Polls a query until `done` accepts its result.
        pub fn wait_for(&self, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
            let start = Instant::now();
            loop {
                let v = self.query(args);
                if done(&v) {
                    return v;
                }
                assert!(
                    start.elapsed() < TIMEOUT,
                    "{args:?} never gave the expected result; last:\n{v:#}\nlog:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    impl Drop for Backend {
        /// SIGTERM first, so that a `serve` with a managed broker stops it (a failed test
        /// leaves no Mosquitto behind), then SIGKILL.
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(8) {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub fn text(out: &Output) -> String {
        format!(
            "status {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// A test device: an MQTT v5 client with its own certificate (CN = id), its event loop in
    /// a task. Dropping the task drops the TCP connection without an MQTT DISCONNECT.
    pub struct Device {
        pub id: String,
        pub client: AsyncClient,
        task: tokio::task::JoinHandle<()>,
        acks: Arc<AtomicUsize>,
        pub received: Arc<Mutex<Vec<Publish>>>,
        published: usize,
    }

    impl Device {
        pub async fn connect(broker: &Broker, id: &str, will: Option<Vec<u8>>) -> Device {
            let tls = broker.pki.device(id).tls_config();
            let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
            options
                .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                    Arc::new(tls),
                )))
                .set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(Some(8 << 20));
            if let Some(will) = will {
                options.set_last_will(LastWill::new(
                    topic(id, Channel::Status),
                    will,
                    QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let acks = Arc::new(AtomicUsize::new(0));
            let received = Arc::new(Mutex::new(Vec::new()));
            let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
            let task = {
                let acks = acks.clone();
                let received = received.clone();
                let mut connected_tx = Some(connected_tx);
                tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                if let Some(tx) = connected_tx.take() {
                                    let _ = tx.send(());
                                }
                            }
                            Ok(Event::Incoming(Packet::PubAck(_))) => {
                                acks.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                received.lock().unwrap().push(p);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                eprintln!("test device: {e}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                })
            };
            tokio::time::timeout(TIMEOUT, connected_rx)
                .await
                .expect("the device did not connect")
                .unwrap();
            Device {
                id: id.to_string(),
                client,
                task,
                acks,
                received,
                published: 0,
            }
        }

        /// Publishes raw bytes on one of this device's topics (QoS 1).
        pub async fn publish_raw(&mut self, channel: Channel, payload: Vec<u8>, retain: bool) {
            self.client
                .publish(topic(&self.id, channel), QoS::AtLeastOnce, retain, payload)
                .await
                .unwrap();
            self.published += 1;
        }

        /// Publishes `body` in an envelope from this device.
        pub async fn publish<T: serde::Serialize>(
            &mut self,
            channel: Channel,
            format: Format,
            body: &T,
            retain: bool,
        ) {
            let bytes = picket_proto::encode(format, &self.id, body).unwrap();
            self.publish_raw(channel, bytes, retain).await;
        }

        /// Waits until the broker acknowledged everything published so far.
        pub async fn flush(&self) {
            let start = Instant::now();
            while self.acks.load(Ordering::SeqCst) < self.published {
                assert!(start.elapsed() < TIMEOUT, "the broker did not acknowledge");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// Drops the connection without DISCONNECT: the broker publishes the last will.
        pub fn vanish(self) {
            self.task.abort();
        }
    }

    /// A GET on the backend's HTTP API: (status code, JSON body).
    pub fn http_get(port: u16, path: &str) -> (u16, Value) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (
            status,
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
        )
    }

    pub fn free_http_port() -> u16 {
        free_port()
    }
}

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use picket_proto::topic::Channel;
use picket_proto::{
    Alert, AlertCounters, AlertKind, Ancestor, Details, Format, Heartbeat, PolicyOutcome,
    PolicyResult, Presence, ProcessContext, SensorCounters, Severity, Status,
};
use picket_test_support::Identity;
use serde_json::Value;
use support::*;

fn alert(seq: u64) -> Alert {
    Alert {
        seq,
        boot_id: "boot-1".into(),
        time_ms: 1_700_000_000_000 + seq,
        kind: AlertKind::UnknownExecutable,
        severity: Severity::High,
        rule: "executables".into(),
        path: Some(format!("/tmp/dropped-{seq}")),
        details: Details(serde_json::json!({"sha256": "ab".repeat(32)})),
        count: 1,
        first_ms: 1_700_000_000_000,
        last_ms: 1_700_000_000_000 + seq,
        process: Some(ProcessContext {
            pid: Some(4242),
            ppid: Some(1),
            uid: Some(0),
            exe: Some(format!("/tmp/dropped-{seq}")),
            sha256: Some("ab".repeat(32)),
            argv: vec![format!("dropped-{seq}"), "--now".into()],
            argv_dropped: 0,
            ancestry: vec![Ancestor {
                pid: 1,
                exe: Some("/sbin/init".into()),
            }],
            cgroup_id: Some(77),
        }),
    }
}

fn status(state: Presence) -> Status {
    Status {
        state,
        time_ms: 1,
        agent_version: "0.1.0".into(),
        policy_serial: 3,
        policy_name: "base".into(),
        boot_id: "boot-1".into(),
    }
}

fn seqs(alerts: &Value) -> Vec<u64> {
    let mut s: Vec<u64> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_stored_once_with_their_context_and_gaps_reported() {
    let broker = Broker::start();
    let http = free_http_port();
    let backend = Backend::start(
        &broker,
        "be",
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
    let mut device = Device::connect(&broker, "gw-1", None).await;
    for seq in [1, 2, 3] {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    // At-least-once delivery: the same alert again.
    device
        .publish(Channel::Alert, Format::Postcard, &alert(3), false)
        .await;
    device
        .publish(Channel::Alert, Format::Json, &alert(6), false)
        .await;
    device.flush().await;

    let alerts = backend.wait_for(&["alerts", "--device", "gw-1", "--json"], |v| {
        seqs(v).contains(&6)
    });
    assert_eq!(seqs(&alerts), [1, 2, 3, 6], "each alert stored once");
    let a6 = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["seq"] == 6)
        .unwrap();
    assert_eq!(a6["format"], "json");
    assert_eq!(a6["kind"], "unknown_executable");
    assert_eq!(a6["severity"], "high");
    assert_eq!(a6["process"]["pid"], 4242);
    assert_eq!(a6["process"]["exe"], "/tmp/dropped-6");
    assert_eq!(a6["process"]["argv"][1], "--now");
    assert_eq!(a6["process"]["ancestry"][0]["exe"], "/sbin/init");
    assert_eq!(a6["details"]["sha256"], "ab".repeat(32));
    // Filters.
    let none = backend.query(&[
        "alerts",
        "--device",
        "gw-1",
        "--kind",
        "agent_tamper",
        "--json",
    ]);
    assert_eq!(none.as_array().unwrap().len(), 0);
    let recent = backend.query(&["alerts", "--since", "1h", "--severity", "high", "--json"]);
    assert_eq!(recent.as_array().unwrap().len(), 4);

    let gaps = backend.query(&["gaps", "--json"]);
    assert_eq!(
        gaps,
        serde_json::json!([{"device_id": "gw-1", "first_missing": 4, "last_missing": 5, "missing": 2, "restart": false}])
    );

    // The HTTP API says the same, and exports OCSF.
    let (code, api_alerts) = http_get(http, "/api/alerts?device=gw-1&limit=2");
    assert_eq!(code, 200);
    assert_eq!(api_alerts.as_array().unwrap().len(), 2);
    let (code, ocsf) = http_get(http, "/api/alerts?device=gw-1&format=ocsf");
    assert_eq!(code, 200);
    let ocsf = ocsf.as_array().unwrap();
    assert_eq!(ocsf.len(), 4);
    assert!(ocsf.iter().all(|f| f["class_uid"] == 2004));
    assert!(ocsf.iter().any(|f| f["finding_info"]["uid"] == "gw-1:6"
        && f["evidences"][0]["process"]["cmd_line"] == "dropped-6 --now"));
    let (code, api_gaps) = http_get(http, "/api/devices/gw-1/gaps");
    assert_eq!((code, api_gaps), (200, gaps));
    let (code, devices) = http_get(http, "/api/devices");
    assert_eq!(code, 200);
    assert_eq!(devices[0]["device_id"], "gw-1");
    assert_eq!(devices[0]["alerts"], 4);
    let (code, err) = http_get(http, "/api/alerts?severity=low");
    assert_eq!(code, 400);
    assert!(err["error"].as_str().unwrap().contains("low"), "{err}");

    // The CLI's OCSF export matches.
    let cli_ocsf = backend.query(&["alerts", "--device", "gw-1", "--ocsf"]);
    assert_eq!(cli_ocsf.as_array().unwrap().len(), 4);
    // And its table names the alerts.
    let out = backend_bin()
        .arg("--db")
        .arg(backend.db.as_ref().unwrap())
        .args(["alerts", "--device", "gw-1"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("RECEIVED"), "{table}");
    assert!(table.contains("/tmp/dropped-6 [4242]"), "{table}");
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_status_heartbeats_and_the_last_will() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "[devices]\nheartbeat_timeout = \"1h\"\n");
    let will = picket_proto::encode(Format::Postcard, "gw-7", &status(Presence::Offline)).unwrap();
    let mut device = Device::connect(&broker, "gw-7", Some(will)).await;
    device
        .publish(
            Channel::Status,
            Format::Postcard,
            &status(Presence::Online),
            true,
        )
        .await;
    let heartbeat = Heartbeat {
        time_ms: 2,
        uptime_s: 60,
        agent_version: "0.1.1".into(),
        policy_serial: 3,
        rss_bytes: 5 << 20,
        sensors: vec![SensorCounters {
            sensor: "process".into(),
            seen: 100,
            lost: 2,
        }],
        alerts: AlertCounters {
            raised: 9,
            sent: 8,
            ..Default::default()
        },
        spool_pending: 1,
        spool_bytes: 512,
    };
    device
        .publish(Channel::Heartbeat, Format::Postcard, &heartbeat, false)
        .await;
    device.flush().await;
    let devices = backend.wait_for(&["devices", "--json"], |v| {
        v[0]["online"] == true && v[0]["counters"].is_object()
    });
    let d = &devices[0];
    assert_eq!(d["device_id"], "gw-7");
    assert_eq!(d["state"], "online");
    assert_eq!(d["agent_version"], "0.1.1");
    assert_eq!(d["policy_name"], "base");
    assert_eq!(d["counters"]["sensors"][0]["lost"], 2);
    assert_eq!(d["counters"]["alerts"]["raised"], 9);
    assert_eq!(d["counters"]["spool_pending"], 1);

    // The connection drops without DISCONNECT: the broker publishes the last will.
    device.vanish();
    let devices = backend.wait_for(&["devices", "--json"], |v| v[0]["state"] == "offline");
    assert_eq!(devices[0]["online"], false);

    // A backend started later learns the presence from the retained status.
    let late = Backend::start(&broker, "late", "");
    let devices = late.wait_for(&["devices", "--json"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(devices[0]["state"], "offline");

    // With a short heartbeat timeout, a device that said it is online but went silent is
    // shown as timed out.
    let mut quiet = Device::connect(&broker, "gw-8", None).await;
    quiet
        .publish(
            Channel::Status,
            Format::Json,
            &status(Presence::Online),
            false,
        )
        .await;
    quiet.flush().await;
    backend.wait_for(&["devices", "--json"], |v| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|d| d["device_id"] == "gw-8")
    });
    let short = broker.path("short.toml");
    std::fs::write(&short, "[devices]\nheartbeat_timeout = \"1s\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = backend_bin()
        .arg("--config")
        .arg(&short)
        .arg("--db")
        .arg(backend.db.as_ref().unwrap())
        .args(["devices", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let devices: Value = serde_json::from_slice(&out.stdout).unwrap();
    let gw8 = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "gw-8")
        .unwrap();
    assert_eq!(gw8["state"], "timed_out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_and_counted_while_good_ones_are_stored() {
    let broker = Broker::start();
    let http = free_http_port();
    let mut backend = Backend::start(
        &broker,
        "be",
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
    let mut device = Device::connect(&broker, "gw-1", None).await;
    device
        .publish_raw(Channel::Alert, b"\x07not a message".to_vec(), false)
        .await;
    device
        .publish_raw(Channel::Alert, b"{\"v\": 1}".to_vec(), false)
        .await;
    let mut big = picket_proto::encode(Format::Json, "gw-1", &alert(1)).unwrap();
    big.resize(picket_proto::MAX_MESSAGE_BYTES + 100, b' ');
    device.publish_raw(Channel::Alert, big, false).await;
    // Device gw-1's certificate, its own topic, but an envelope that claims gw-2.
    let forged = picket_proto::encode(Format::Postcard, "gw-2", &alert(2)).unwrap();
    device.publish_raw(Channel::Alert, forged, false).await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(3), false)
        .await;
    device.flush().await;

    let refused = backend.wait_for(&["refused", "--json"], |v| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>()
            >= 4
    });
    let count = |reason: &str| {
        refused
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["reason"] == reason && r["device_id"] == "gw-1")
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(count("malformed"), 2, "{refused:#}");
    assert_eq!(count("oversized"), 1, "{refused:#}");
    assert_eq!(count("device_mismatch"), 1, "{refused:#}");
    let alerts = backend.wait_for(&["alerts", "--json"], |v| !seqs(v).is_empty());
    assert_eq!(seqs(&alerts), [3]);
    let (code, api_refused) = http_get(http, "/api/refused");
    assert_eq!((code, &api_refused), (200, &refused));
    assert!(
        alerts[0]["device_id"] == "gw-1",
        "nothing is stored for the claimed device"
    );
    assert_eq!(
        backend
            .query(&["devices", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    backend.assert_running();

    // The broker goes away and comes back: the backend reconnects and goes on storing.
    drop(device);
    let mut broker = broker;
    broker.restart();
    backend.wait_log("subscribed to", 2);
    let mut device = Device::connect(&broker, "gw-1", None).await;
    device
        .publish(Channel::Alert, Format::Postcard, &alert(4), false)
        .await;
    device.flush().await;
    backend.wait_for(&["alerts", "--json"], |v| seqs(v) == [3, 4]);
    backend.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_alerts_and_store_each_once() {
    let broker = Broker::start();
    let a = Backend::start(&broker, "be-a", "");
    let b = Backend::start(&broker, "be-b", "");
    let mut devices = Vec::new();
    for id in ["gw-1", "gw-2"] {
        devices.push(Device::connect(&broker, id, None).await);
    }
    const N: u64 = 30;
    for seq in 1..=N {
        for d in &mut devices {
            d.publish(Channel::Alert, Format::Postcard, &alert(seq), false)
                .await;
        }
    }
    for d in &devices {
        d.flush().await;
    }
    let keys = |v: &Value| -> BTreeSet<(String, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["device_id"].as_str().unwrap().to_string(),
                    a["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let start = std::time::Instant::now();
    let (in_a, in_b) = loop {
        let in_a = keys(&a.query(&["alerts", "--json"]));
        let in_b = keys(&b.query(&["alerts", "--json"]));
        if in_a.len() + in_b.len() >= 2 * N as usize || start.elapsed() > TIMEOUT {
            break (in_a, in_b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        in_a.is_disjoint(&in_b),
        "an alert was stored by both instances"
    );
    assert_eq!(
        in_a.len() + in_b.len(),
        2 * N as usize,
        "every alert stored"
    );
    assert!(
        !in_a.is_empty() && !in_b.is_empty(),
        "both instances took a share ({} / {})",
        in_a.len(),
        in_b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_push_reaches_devices_and_shows_their_results() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "[groups]\nlab = [\"gw-1\", \"gw-2\"]\n");
    let bundle = b"signed bundle bytes (the device verifies them)".to_vec();
    let bundle_path = broker.path("policy.bundle");
    std::fs::write(&bundle_path, &bundle).unwrap();
    let sha = {
        let d = ring::digest::digest(&ring::digest::SHA256, &bundle);
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };

    // gw-1 is online and answers each bundle it receives; gw-2 is offline.
    let gw1 = Device::connect(&broker, "gw-1", None).await;
    gw1.client
        .subscribe(
            picket_proto::topic::topic("gw-1", Channel::Policy),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let responder = {
        let client = gw1.client.clone();
        let received = gw1.received.clone();
        tokio::spawn(async move {
            loop {
                let got = received.lock().unwrap().pop();
                if let Some(p) = got {
                    let digest = ring::digest::digest(&ring::digest::SHA256, &p.payload);
                    let result = PolicyResult {
                        time_ms: 5,
                        bundle_sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
                        outcome: PolicyOutcome::Applied {
                            name: "base".into(),
                            serial: 4,
                        },
                    };
                    let bytes = picket_proto::encode(Format::Postcard, "gw-1", &result).unwrap();
                    client
                        .publish(
                            picket_proto::topic::topic("gw-1", Channel::PolicyResult),
                            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                            false,
                            bytes,
                        )
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let config = backend.config.clone();
    let path = bundle_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        backend_bin()
            .arg("--config")
            .arg(&config)
            .args(["policy", "push", "--group", "lab", "--timeout", "5s"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("gw-1: applied `base` serial 4"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("gw-2: no result within 5s"),
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(2), "not every device answered");
    responder.abort();

    // The serving backend stored gw-1's result and the new policy serial.
    let results = backend.wait_for(&["policy", "results", "--json"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(results[0]["device_id"], "gw-1");
    assert_eq!(results[0]["outcome"], "applied");
    assert_eq!(results[0]["bundle_sha256"], sha);
    let devices = backend.query(&["devices", "--json"]);
    assert_eq!(devices[0]["policy_serial"], 4, "{devices:#}");

    // gw-2 connects later and finds the bundle retained on its policy topic.
    let gw2 = Device::connect(&broker, "gw-2", None).await;
    gw2.client
        .subscribe(
            picket_proto::topic::topic("gw-2", Channel::Policy),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(p) = gw2.received.lock().unwrap().first() {
            assert_eq!(p.payload.as_ref(), bundle.as_slice());
            assert!(p.retain);
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "gw-2 never got the bundle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The broker refuses the publication (its ACL): said at once, not after the timeout.
    let config = backend.config.clone();
    let path = bundle_path.clone();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        backend_bin()
            .arg("--config")
            .arg(&config)
            .args(["policy", "push", "--device", "locked", "--timeout", "30s"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("locked: the broker refused the bundle"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // Unknown groups and bad device ids are refused before anything is sent.
    let out = backend_bin()
        .arg("--config")
        .arg(&backend.config)
        .args(["policy", "push", "--group", "nope"])
        .arg(&bundle_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no group `nope`"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bad_configuration_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("backend.toml");
    std::fs::write(
        &config,
        "[store]\nsqlite = \"x.db\"\n\n[mqtt]\nhost = \"h\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nshare = \"g\"\n",
    )
    .unwrap();
    let out = backend_bin()
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 9") && stderr.contains("share"),
        "{stderr}"
    );
    // A missing database is an error for the queries, not a new empty database.
    let out = backend_bin()
        .arg("--db")
        .arg(dir.path().join("none.db"))
        .arg("devices")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("none.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_postgresql_store() {
    let (_pg, params) = tokio::task::spawn_blocking(|| {
        let pg = picket_test_support::postgres::Postgres::start();
        let params = pg.database("picket");
        (pg, params)
    })
    .await
    .unwrap();
    let broker = Broker::start();
    let store = format!("[store]\npostgres = \"{params}\"\n");
    let a = Backend::start(&broker, "be-a", &store);
    let b = Backend::start(&broker, "be-b", &store);
    let will = picket_proto::encode(Format::Json, "gw-1", &status(Presence::Offline)).unwrap();
    let mut device = Device::connect(&broker, "gw-1", Some(will)).await;
    device
        .publish(
            Channel::Status,
            Format::Json,
            &status(Presence::Online),
            true,
        )
        .await;
    const N: u64 = 20;
    for seq in (1..=N).filter(|s| *s != 7) {
        device
            .publish(Channel::Alert, Format::Postcard, &alert(seq), false)
            .await;
    }
    // Delivered again: still stored once.
    device
        .publish(Channel::Alert, Format::Postcard, &alert(3), false)
        .await;
    device.flush().await;
    let alerts = a.wait_for(&["alerts", "--json"], |v| seqs(v).len() == N as usize - 1);
    let mut expected: Vec<u64> = (1..=N).filter(|s| *s != 7).collect();
    expected.sort();
    assert_eq!(seqs(&alerts), expected);
    assert_eq!(alerts[0]["process"]["ancestry"][0]["exe"], "/sbin/init");
    let gaps = a.query(&["gaps", "--json"]);
    assert_eq!(gaps[0]["first_missing"], 7);
    assert_eq!(gaps.as_array().unwrap().len(), 1);
    a.wait_for(&["devices", "--json"], |v| v[0]["state"] == "online");
    device.vanish();
    a.wait_for(&["devices", "--json"], |v| v[0]["state"] == "offline");
    tokio::task::spawn_blocking(move || {
        a.stop();
        b.stop();
    })
    .await
    .unwrap();
}

/// A burst of QoS 1 alerts from several devices at once, far more than the ingest's receive
/// maximum: every one is stored exactly once, without the ingest losing its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_stored_once_without_reconnecting() {
    let broker = Broker::start();
    let backend = Backend::start(&broker, "be", "");
    const DEVICES: usize = 4;
    const PER_DEVICE: u64 = 600;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        devices.push(Device::connect(&broker, &format!("burst-{i}"), None).await);
    }
    // All devices at once, each as fast as its client queues.
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|mut d| {
            tokio::spawn(async move {
                for seq in 1..=PER_DEVICE {
                    d.publish(Channel::Alert, Format::Postcard, &alert(seq), false)
                        .await;
                }
                d.flush().await;
                d
            })
        })
        .collect();
    let mut devices = Vec::new();
    for t in tasks {
        devices.push(t.await.unwrap());
    }
    let total = DEVICES * PER_DEVICE as usize;
    let start = std::time::Instant::now();
    let devices_json = loop {
        let v = backend.query(&["devices", "--json"]);
        let stored: u64 = v
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["alerts"].as_u64().unwrap())
            .sum();
        if stored as usize >= total || start.elapsed() > TIMEOUT {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for d in devices_json.as_array().unwrap() {
        assert_eq!(d["alerts"], PER_DEVICE, "{d}\nlog tail:\n{}", {
            let log = backend.log();
            log[log.len().saturating_sub(3000)..].to_string()
        });
    }
    assert_eq!(devices_json.as_array().unwrap().len(), DEVICES);
    // Exactly once: every (device, seq), no other.
    let alerts = backend.query(&["alerts", "--limit", "100000", "--json"]);
    let keys: BTreeSet<(String, u64)> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["device_id"].as_str().unwrap().to_string(),
                a["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(alerts.as_array().unwrap().len(), total);
    assert_eq!(keys.len(), total);
    assert!(keys.iter().all(|(_, seq)| (1..=PER_DEVICE).contains(seq)));
    let log = backend.log();
    assert_eq!(
        log.matches("connected to the broker").count(),
        1,
        "the ingest connected again:\n{}",
        log.lines()
            .filter(|l| !l.contains(" alert burst-"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!log.contains("reconnecting in"), "{log}");
    tokio::task::spawn_blocking(move || backend.stop())
        .await
        .unwrap();
}

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
