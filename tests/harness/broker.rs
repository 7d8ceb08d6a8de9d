//! MQTT test harness: a throw-away PKI, a real Mosquitto broker with mutual TLS and the topic
//! ACL of the product, and an MQTT v5 test client that collects what it receives.
//!
//! Identities: the certificate CN is the MQTT username (`use_identity_as_username`) and the
//! client id (`use_username_as_clientid`). A device `<id>` may write under `picket/v1/<id>/`
//! and read only `picket/v1/<id>/policy`; a backend (every id issued by [`Pki::backend`] before
//! [`Mosquitto::start`]) may read `picket/v1/+/#` and write `picket/v1/+/policy`.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, ClientConfig, RootCertStore};

use super::TempDir;

/// The address the broker listens on and clients connect to (the server certificate names it).
pub const BROKER_HOST: &str = "127.0.0.1";
/// How long the broker may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test client may take to connect and have its subscription acknowledged.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test client waits for the broker to acknowledge a publish.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two connection attempts of a test client.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Largest packet a test client accepts (policies are larger than rumqttc's 10 KiB default).
const MAX_PACKET: u32 = 1 << 20;

/// A test PKI in a temporary directory: the CA the broker trusts, the broker's server
/// certificate, client certificates issued on demand, and an unrelated second CA.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    ca_cert: PathBuf,
    other_ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    backends: Mutex<Vec<String>>,
}

/// A client certificate and key (PEM files), with the CA certificate that authenticates the
/// broker to this client.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The certificate's CN: the MQTT username and client id at the broker.
    pub id: String,
    /// Certificate, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, ECDSA P-256).
    pub key: PathBuf,
    /// CA certificate the client trusts for the broker, PEM.
    pub ca: PathBuf,
}

impl Identity {
    /// A rustls client configuration presenting this identity.
    pub fn tls_config(&self) -> ClientConfig {
        tls_client_config(&self.ca, &self.cert, &self.key)
    }
}

impl Pki {
    /// Generates both CAs and the broker's server certificate (SANs `localhost`, `127.0.0.1`).
    pub fn new() -> Pki {
        let dir = TempDir::new();
        let ca = new_ca("Picket test CA");
        let other_ca = new_ca("Unrelated test CA");
        let ca_cert = write_pem(&dir, "ca.crt", &ca.pem());
        let other_ca_cert = write_pem(&dir, "other-ca.crt", &other_ca.pem());

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), BROKER_HOST.to_owned()])
                .expect("server certificate parameters");
        params.distinguished_name = dn("localhost");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let server_cert = write_pem(&dir, "server.crt", &cert.pem());
        let server_key = write_pem(&dir, "server.key", &key.serialize_pem());

        Pki {
            dir,
            ca,
            other_ca,
            ca_cert,
            other_ca_cert,
            server_cert,
            server_key,
            backends: Mutex::new(Vec::new()),
        }
    }

    /// The directory holding every PEM file of this PKI.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate the broker trusts for clients and clients trust for the broker.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The certificate of the unrelated CA that signs [`Pki::foreign_device`] certificates.
    pub fn other_ca_cert(&self) -> &Path {
        &self.other_ca_cert
    }

    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }

    pub fn server_key(&self) -> &Path {
        &self.server_key
    }

    /// A device certificate with CN=`id`, signed by the CA. Files `device-<id>.{crt,key}`.
    pub fn device(&self, id: &str) -> Identity {
        self.issue(&self.ca, "device", id)
    }

    /// A backend certificate with CN=`id`, signed by the CA. The broker grants it the backend
    /// rights only if it is issued before [`Mosquitto::start`] writes the ACL. Backend ids must
    /// differ from device ids. Files `backend-<id>.{crt,key}`.
    pub fn backend(&self, id: &str) -> Identity {
        let identity = self.issue(&self.ca, "backend", id);
        let mut backends = self.backends.lock().unwrap();
        if !backends.iter().any(|b| b == id) {
            backends.push(id.to_owned());
        }
        identity
    }

    /// A device certificate with CN=`id` signed by the unrelated CA, which the broker does not
    /// trust; the client itself still trusts the broker. Files `foreign-<id>.{crt,key}`.
    pub fn foreign_device(&self, id: &str) -> Identity {
        self.issue(&self.other_ca, "foreign", id)
    }

    /// Backend ids issued so far.
    pub fn backend_ids(&self) -> Vec<String> {
        self.backends.lock().unwrap().clone()
    }

    fn issue(&self, issuer: &CertifiedIssuer<'static, KeyPair>, kind: &str, id: &str) -> Identity {
        assert!(
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "client id {id:?} must be non-empty ASCII letters, digits, '-', '_' or '.'"
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, issuer).expect("client certificate");
        Identity {
            id: id.to_owned(),
            cert: write_pem(&self.dir, &format!("{kind}-{id}.crt"), &cert.pem()),
            key: write_pem(&self.dir, &format!("{kind}-{id}.key"), &key.serialize_pem()),
            ca: self.ca_cert.clone(),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    CertifiedIssuer::self_signed(params, key).expect("CA certificate")
}

fn dn(common_name: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write_pem(dir: &TempDir, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, pem).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) that trusts the CA in
/// `ca` (PEM) and authenticates with the certificate chain in `cert` and the key in `key`
/// (PEM, PKCS#8, SEC1 or PKCS#1).
pub fn tls_client_config(ca: &Path, cert: &Path, key: &Path) -> ClientConfig {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .unwrap_or_else(|e| panic!("cannot read certificates from {}: {e}", cert.display()));
    assert!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("cannot read a private key from {}: {e}", key.display()));
    client_config_builder(ca)
        .with_client_auth_cert(chain, key)
        .unwrap_or_else(|e| panic!("unusable client certificate {}: {e}", cert.display()))
}

/// A rustls client configuration that trusts the CA in `ca` and presents no certificate.
pub fn tls_client_config_without_certificate(ca: &Path) -> ClientConfig {
    client_config_builder(ca).with_no_client_auth()
}

fn client_config_builder(
    ca: &Path,
) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca)
        .unwrap_or_else(|e| panic!("cannot read CA certificates from {}: {e}", ca.display()));
    for cert in cas {
        let cert = cert.unwrap_or_else(|e| panic!("bad CA certificate in {}: {e}", ca.display()));
        roots
            .add(cert)
            .unwrap_or_else(|e| panic!("unusable CA certificate in {}: {e}", ca.display()));
    }
    assert!(!roots.is_empty(), "no CA certificate in {}", ca.display());
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
}

/// A Mosquitto broker with one mutual-TLS listener on a free loopback port. Killed on drop;
/// the end of its log is printed to stderr when dropped during a panic.
pub struct Mosquitto {
    dir: TempDir,
    conf: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    /// Writes the configuration and the ACL for `pki` (its backends issued so far) and starts
    /// the broker; returns once it accepts TCP connections.
    pub fn start(pki: &Pki) -> Mosquitto {
        let dir = TempDir::new();
        let acl = dir.join("acl");
        fs::write(&acl, acl_file(&pki.backend_ids()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", acl.display()));
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let mut broker = Mosquitto {
            dir,
            conf,
            log,
            port: 0,
            child: None,
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            broker.port = free_port();
            fs::write(&broker.conf, config_file(pki, &acl, broker.port))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", broker.conf.display()));
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                // Another process took the port between free_port() and mosquitto's bind.
                Err(e) => last_error = e,
            }
        }
        panic!("mosquitto did not start: {last_error}");
    }

    /// The port of the TLS listener on [`BROKER_HOST`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the broker with SIGKILL (a crash: no clean disconnects) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Kills the broker if it runs, starts it again on the same port with the same
    /// configuration, and returns once it accepts TCP connections.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("mosquitto did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Everything the broker logged so far (all restarts).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The configuration file the broker runs with.
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// The broker's working directory (configuration, ACL, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let _ = writeln!(log, "--- starting mosquitto on port {}", self.port);
        // What this start logs begins here.
        let start_offset = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let stdout = log.try_clone().expect("dup the log file");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run mosquitto ({e}); scripts/setup.sh installs it"));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "mosquitto exited with {status} before accepting connections; log:\n{}",
                    self.log()
                ));
            }
            // Mosquitto logs `running` once its listener is bound: a connection before that
            // would reach whoever else holds the port.
            let running = self
                .log()
                .get(start_offset..)
                .is_some_and(|l| l.contains(" running"));
            if running && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "mosquitto did not accept connections on {addr} within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // Its end only: the panic's own message, printed before, stays in view.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the last lines of the mosquitto log:\n{}",
                lines[lines.len().saturating_sub(BROKER_LOG_TAIL)..].join("\n")
            );
        }
    }
}

/// How many lines of the broker's log a failing test prints.
const BROKER_LOG_TAIL: usize = 25;

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

fn config_file(pki: &Pki, acl: &Path, port: u16) -> String {
    let mut conf = String::new();
    // As root, Mosquitto would switch to the `mosquitto` user, which cannot read the
    // temporary directories; stay on the user that runs the tests.
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        conf.push_str("user root\n");
    }
    conf.push_str(&format!(
        "persistence false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         log_dest stderr\n\
         log_type all\n\
         connection_messages true\n\
         log_timestamp_format %H:%M:%S\n\
         listener {port} {BROKER_HOST}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         use_username_as_clientid true\n",
        acl = acl.display(),
        ca = pki.ca_cert().display(),
        cert = pki.server_cert().display(),
        key = pki.server_key().display(),
    ));
    conf
}

fn acl_file(backends: &[String]) -> String {
    let mut acl = String::from(
        "# Devices: the username is the certificate CN, which is the device id.\n\
         pattern write picket/v1/%u/#\n\
         pattern read picket/v1/%u/policy\n",
    );
    for id in backends {
        acl.push_str(&format!(
            "\nuser {id}\n\
             topic read picket/v1/+/#\n\
             topic write picket/v1/+/policy\n"
        ));
    }
    acl
}

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
