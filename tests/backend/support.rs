//! The broker, the backend and the devices of these tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
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
        Broker::start_saving(false)
    }

    /// [`Broker::start`], saving its state across restarts if `persistence` (as the managed
    /// broker does: the backend's session and the messages queued for it outlive a clean stop).
    pub fn start_saving(persistence: bool) -> Broker {
        let mut broker = Broker::pki();
        let options = Options {
            max_queued_messages: 100_000,
            username_as_client_id: false,
            denied: vec![(BACKEND_ID.into(), "picket/v1/locked/policy".into())],
            persistence,
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

    /// Kills the broker (SIGKILL: a crash); [`Broker::restart`] starts it again.
    pub fn stop(&mut self) {
        self.mosquitto
            .as_mut()
            .expect("a broker started by Broker::start")
            .stop();
    }

    /// Stops the broker with SIGTERM (it saves its state, if it keeps one).
    pub fn stop_clean(&mut self) {
        self.mosquitto
            .as_mut()
            .expect("a broker started by Broker::start")
            .stop_clean();
    }

    /// Whether the broker is running.
    pub fn is_running(&mut self) -> bool {
        self.mosquitto.as_mut().is_some_and(|m| m.is_running())
    }

    /// Stops the broker and starts it again on the same port (sessions are lost unless it
    /// saves its state).
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
    /// The port of the HTTP API and the API token of its admin [`ADMIN`]
    /// ([`Backend::with_http`]).
    api: Option<(u16, String)>,
}

pub fn backend_bin() -> Command {
    Command::new(picket_test_support::bin::backend())
}

impl Backend {
    /// Starts `serve` with `name.toml` and waits until it has subscribed.
    pub fn start(broker: &Broker, name: &str, extra: &str) -> Backend {
        Backend::spawn(broker, name, extra, None)
    }

    /// [`Backend::start`] with the HTTP API on a free loopback port ([`Backend::http`]) and an
    /// admin, [`ADMIN`], whose token [`Backend::get`] sends. `extra` follows the `listen` line
    /// of the `[http]` section: its first lines, before a section of their own, are the
    /// section's.
    pub fn with_http(broker: &Broker, name: &str, extra: &str) -> Backend {
        let port = free_port();
        let extra = format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{extra}");
        let config = broker.backend_config(name, &extra);
        let token = admin_token(&config, ADMIN);
        Backend::spawn(broker, name, &extra, Some((port, token)))
    }

    fn spawn(broker: &Broker, name: &str, extra: &str, api: Option<(u16, String)>) -> Backend {
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
            api,
        };
        backend.wait_log("subscribed to", 1);
        backend
    }

    /// The port of the HTTP API.
    pub fn http(&self) -> u16 {
        self.api
            .as_ref()
            .expect("a backend of Backend::with_http")
            .0
    }

    /// The API token of [`ADMIN`].
    pub fn token(&self) -> String {
        self.api
            .as_ref()
            .expect("a backend of Backend::with_http")
            .1
            .clone()
    }

    /// A GET on the HTTP API with the admin's token: (status code, JSON body).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = http(self.http(), "GET", path, Some(&self.token()), "");
        (r.status, r.json(path))
    }

    /// Adds the user `name` of `role` with the CLI, the password given on standard input
    /// (which it does not print).
    pub fn add_user(&self, name: &str, role: &str, password: &str) {
        let mut child = backend_bin()
            .arg("--config")
            .arg(&self.config)
            .args(["user", "add", name, "--role", role])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "user add {name}: {}", text(&out));
        assert!(out.stdout.is_empty(), "a given password is not printed");
    }

    /// Adds the user `name` of `role` with a generated password, and returns a new API token
    /// of it (the CLI).
    pub fn user_with_token(&self, name: &str, role: &str) -> String {
        let out = backend_bin()
            .arg("--config")
            .arg(&self.config)
            .args(["user", "add", name, "--role", role, "--generate"])
            .output()
            .unwrap();
        assert!(out.status.success(), "user add {name}: {}", text(&out));
        user_token(&self.config, name)
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

    /// SIGKILL (a crash: nothing finished, nothing acknowledged after it); returns how it
    /// exited, which must be that kill: it had not exited on its own.
    pub fn kill(mut self) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the backend exited before it was killed:\n{}",
            self.log()
        );
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        status
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

    /// The row of device `id` in `devices --json` (`null` when it has none).
    pub fn device(&self, id: &str) -> Value {
        device_row(&self.query(&["devices", "--json"]), id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Polls `devices --json` until the row of device `id` is there and `done` accepts it;
    /// returns that row.
    pub fn wait_device(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let devices = self.wait_for(&["devices", "--json"], |v| {
            device_row(v, id).is_some_and(&done)
        });
        device_row(&devices, id).cloned().unwrap()
    }
}

/// The row of device `id` in a devices listing (`devices --json`, `/api/devices`).
pub fn device_row<'a>(devices: &'a Value, id: &str) -> Option<&'a Value> {
    devices.as_array()?.iter().find(|d| d["device_id"] == id)
}

impl Drop for Backend {
    /// SIGTERM first, so that a `serve` with a managed broker stops it (a failed test
    /// leaves no Mosquitto behind), then SIGKILL. Nothing once it was reaped ([`Backend::stop`]):
    /// its pid may be another process's by then.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
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

    /// Publishes `body` in an envelope from this device at QoS 0, as the agent publishes its
    /// heartbeats (no acknowledgement: [`Device::flush`] does not wait for it).
    pub async fn publish_qos0<T: serde::Serialize>(
        &mut self,
        channel: Channel,
        format: Format,
        body: &T,
    ) {
        let bytes = picket_proto::encode(format, &self.id, body).unwrap();
        self.client
            .publish(topic(&self.id, channel), QoS::AtMostOnce, false, bytes)
            .await
            .unwrap();
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

impl Drop for Device {
    /// Ends the connection: a dropped device must not connect again under its id and take
    /// over the connection of the one a test connects next under the same id.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The admin every backend of [`Backend::with_http`] has.
pub const ADMIN: &str = "e2e-admin";

/// Adds the user `name` (admin, generated password) to the store of `config` and returns a new
/// API token of it, both with the CLI.
pub fn admin_token(config: &std::path::Path, name: &str) -> String {
    let out = backend_bin()
        .arg("--config")
        .arg(config)
        .args(["user", "add", name, "--role", "admin", "--generate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "user add: {}", text(&out));
    user_token(config, name)
}

/// A new API token of the user `name`, made with the CLI.
pub fn user_token(config: &std::path::Path, name: &str) -> String {
    let out = backend_bin()
        .arg("--config")
        .arg(config)
        .args(["user", "token", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "user token: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An answer of the HTTP API: status, head (lower case) and body.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON (`what` names the request in the failure).
    pub fn json(&self, what: &str) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", self.body))
    }
}

/// A request with a bearer token: the status and the body as JSON (null when it is not).
pub fn api_call(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let r = http(port, method, path, Some(token), body);
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

/// A request on a new connection (`Connection: close`), with a bearer token when given.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    Reply {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}
