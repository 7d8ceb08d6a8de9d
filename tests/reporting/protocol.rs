//! `mqtt.protocol = "auto"` (the default): MQTT v5 first, MQTT 3.1.1 when the broker refuses
//! v5 and accepts 3.1.1 at once, and the version that worked kept; an outage that closes
//! connections before any CONNACK, as a refusal of v5 does, does not leave the agent on 3.1.1.
//!
//! The broker that refuses v5 is [`OldBroker`], a front before the real Mosquitto. Mosquitto 2
//! cannot be made to refuse v5 (no option of `mosquitto.conf` limits the protocol version; a
//! listener's `protocol` picks MQTT or WebSockets), Debian ships no broker that speaks 3.1.1
//! only, and the workspace takes no broker crate. The front answers a CONNECT of a protocol
//! level it does not speak as MQTT 3.1.1 requires of a broker (section 3.1.2.2: a CONNACK with
//! return code 0x01, unacceptable protocol level, then disconnect) and as Mosquitto itself
//! answers a level it does not know (it logs `Invalid protocol version 6 in CONNECT` and
//! `Sending CONNACK ... (0, 1)`): the 3.1.1 CONNACK `20 02 00 01`, the TLS close_notify, then
//! the TCP close. A CONNECT of a level it speaks is relayed, bytes unchanged, to the real
//! Mosquitto, which serves the session as it serves any 3.1.1 client: its log names the
//! protocol it accepted (`p2`, its number for 3.1.1), its ACL is the backend's, and its
//! PUBACKs are the acknowledgements the agent waits for. The front terminates TLS with the
//! broker's own certificate, requires the device's certificate (signed by the fleet CA), and
//! reaches Mosquitto with that same identity: the agent meets the mutual TLS of production, and
//! the broker still knows the device by its certificate.

use super::*;

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use picket_proto::Heartbeat;
use picket_test_support::mosquitto::free_port;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// MQTT protocol levels, as in the CONNECT: 3.1.1 and v5.
const MQTT_311: u8 = 4;
const MQTT_5: u8 = 5;

/// With a broker that speaks MQTT 3.1.1 only, an agent left at the default (`auto`) is refused
/// v5, says so, connects with 3.1.1, and reports: its status and alerts reach the fleet at QoS 1
/// and are acknowledged (the spool drains). When the broker restarts, the agent reconnects with
/// 3.1.1 straight away.
#[test]
fn auto_falls_back_to_mqtt_3_1_1_when_the_broker_refuses_v5() {
    let _serial = serial();
    let mut fleet = Fleet::new("proto-311");
    let sub = fleet.subscriber();
    let broker = OldBroker::start(&fleet, &[MQTT_311]);
    // No `protocol` key: the default is `auto`.
    let config = fleet.config_via(broker.port(), "");
    assert!(!fs::read_to_string(&config).unwrap().contains("protocol"));
    let agent = Agent::start(&config);

    let online = wait_live_status(&sub, 0, Presence::Online, || reporter_log(&agent.log()));
    assert_eq!(
        (online.policy_name.as_str(), online.policy_serial),
        ("base", 1)
    );
    // Refused v5 once, then 3.1.1: the CONNECTs the broker saw, in order.
    assert_eq!(
        broker.connects(),
        [(MQTT_5, Answer::Refused), (MQTT_311, Answer::Relayed)],
        "agent log:\n{}",
        reporter_log(&agent.log())
    );
    // The agent says it fell back, and which version it speaks.
    let log = agent.log();
    assert_eq!(
        log.matches("the broker refused MQTT v5; trying 3.1.1")
            .count(),
        1,
        "{}",
        reporter_log(&log)
    );
    let connected = format!(
        "connected to the broker localhost:{} (MQTT 3.1.1) as `{DEVICE}`",
        broker.port()
    );
    assert!(log.contains(&connected), "{}", reporter_log(&log));
    // Mosquitto served the device as an MQTT 3.1.1 client.
    assert_eq!(device_connections(&fleet), ["p2"], "{}", fleet.broker.log());

    // Alerts: published at QoS 1 and acknowledged, so they leave the spool.
    let paths = fleet.unknown_execs("proto-311", 10);
    let seen = wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    assert_once_each(&seen);
    let drained = wait_drained(&sub, 10, || agent.log());
    assert_eq!(drained.alerts.dropped, 0, "{drained:?}");
    let broker_log = fleet.broker.log();
    let alert_publishes: Vec<&str> = broker_log
        .lines()
        .filter(|l| {
            l.contains(&format!("Received PUBLISH from {DEVICE} ("))
                && l.contains(&format!("'{}'", topic::topic(DEVICE, Channel::Alert)))
        })
        .collect();
    assert!(
        alert_publishes.len() >= 10 && alert_publishes.iter().all(|l| l.contains(", q1, ")),
        "the alerts were not published at QoS 1:\n{}",
        alert_publishes.join("\n")
    );
    assert!(
        broker_log.contains(&format!("Sending PUBACK to {DEVICE} (")),
        "{broker_log}"
    );

    // The broker restarts: the agent comes back with 3.1.1 at once, no v5 attempt first.
    fleet.broker.restart();
    sub.wait_connected(2, Duration::from_secs(20));
    // (A reconnection that reaches the front before Mosquitto is back is relayed, and fails,
    // with 3.1.1 too.)
    wait_until(
        Duration::from_secs(20),
        || device_connections(&fleet).len() >= 2,
        || format!("{:?}\n{}", broker.connects(), reporter_log(&agent.log())),
    );
    let connects = broker.connects();
    assert_eq!(connects[0], (MQTT_5, Answer::Refused), "{connects:?}");
    assert!(
        connects.len() >= 3
            && connects[1..]
                .iter()
                .all(|c| *c == (MQTT_311, Answer::Relayed)),
        "{connects:?}"
    );
    let levels = device_connections(&fleet);
    assert!(levels.iter().all(|p| p == "p2"), "{}", fleet.broker.log());
    // And still delivers.
    let paths = fleet.unknown_execs("proto-311-after", 3);
    wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    let log = agent.stop();
    assert_eq!(
        log.matches("the broker refused MQTT").count(),
        1,
        "{}",
        reporter_log(&log)
    );
}

/// With Mosquitto, which speaks v5, the same `auto` agent connects with v5 and stays on it.
#[test]
fn auto_stays_on_v5_with_a_broker_that_speaks_it() {
    let _serial = serial();
    let fleet = Fleet::new("proto-v5");
    let sub = fleet.subscriber();
    let agent = Agent::start(&fleet.config("protocol = \"auto\"\n"));
    wait_live_status(&sub, 0, Presence::Online, || reporter_log(&agent.log()));
    let paths = fleet.unknown_execs("proto-v5", 3);
    wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    wait_drained(&sub, 3, || agent.log());

    let log = agent.stop();
    let connected = format!(
        "connected to the broker localhost:{} (MQTT v5) as `{DEVICE}`",
        fleet.broker.port()
    );
    assert!(log.contains(&connected), "{}", reporter_log(&log));
    assert!(!log.contains("refused MQTT"), "{}", reporter_log(&log));
    assert!(!log.contains("(MQTT 3.1.1)"), "{}", reporter_log(&log));
    // Mosquitto's own word: one connection of the device, in v5.
    assert_eq!(device_connections(&fleet), ["p5"], "{}", fleet.broker.log());
}

/// A TLS front whose broker is down closes each connection after the CONNECT, before any
/// CONNACK, whatever the version: to the agent, as a broker without v5 answers v5. It tries
/// 3.1.1 at once, sees that fail too, and goes back to v5; when the broker is back, the agent
/// connects with v5, not with the 3.1.1 of its last attempt during the outage.
#[test]
fn auto_keeps_v5_through_an_outage_that_closes_before_the_connack() {
    let _serial = serial();
    let fleet = Fleet::new("proto-outage");
    let sub = fleet.subscriber();
    let broker = OldBroker::start(&fleet, &[MQTT_5, MQTT_311]);
    // Down for two rounds (v5, then 3.1.1 at once, twice), then up.
    broker.drop_first(4);
    let agent = Agent::start(&fleet.config_via(broker.port(), ""));
    wait_live_status(&sub, 0, Presence::Online, || reporter_log(&agent.log()));
    assert_eq!(
        broker.connects(),
        [
            (MQTT_5, Answer::Dropped),
            (MQTT_311, Answer::Dropped),
            (MQTT_5, Answer::Dropped),
            (MQTT_311, Answer::Dropped),
            (MQTT_5, Answer::Relayed),
        ],
        "agent log:\n{}",
        reporter_log(&agent.log())
    );
    let log = agent.stop();
    assert_eq!(
        log.matches("MQTT 3.1.1 failed too").count(),
        2,
        "{}",
        reporter_log(&log)
    );
    let connected = format!(
        "connected to the broker localhost:{} (MQTT v5) as `{DEVICE}`",
        broker.port()
    );
    assert!(log.contains(&connected), "{}", reporter_log(&log));
    assert_eq!(device_connections(&fleet), ["p5"], "{}", fleet.broker.log());
}

/// A broker that refuses both versions: the agent neither gives up nor crashes. It tries v5
/// and 3.1.1 in turn, says each refusal, and keeps the alerts in its spool; once the broker
/// accepts 3.1.1, every one of them is delivered and acknowledged.
#[test]
fn a_broker_refusing_both_versions_gets_the_spooled_alerts_once_it_accepts_one() {
    let _serial = serial();
    let fleet = Fleet::new("proto-none");
    let sub = fleet.subscriber();
    let broker = OldBroker::start(&fleet, &[]);
    let agent = Agent::start(&fleet.config_via(broker.port(), "protocol = \"auto\"\n"));
    let paths = fleet.unknown_execs("proto-none", 5);

    // v5, 3.1.1, v5, 3.1.1, all refused.
    wait_until(
        Duration::from_secs(30),
        || broker.connects().len() >= 4,
        || format!("{:?}\n{}", broker.connects(), reporter_log(&agent.log())),
    );
    let refused = broker.connects();
    for (i, connect) in refused.iter().enumerate() {
        let level = if i % 2 == 0 { MQTT_5 } else { MQTT_311 };
        assert_eq!(*connect, (level, Answer::Refused), "{refused:?}");
    }
    let log = agent.log();
    let warning = format!(
        "broker localhost:{} unreachable: the broker closed the connection before answering \
         the MQTT v5 CONNECT",
        broker.port()
    );
    assert!(log.contains(&warning), "{}", reporter_log(&log));
    assert!(
        log.contains("the broker refused MQTT v5; trying 3.1.1"),
        "{}",
        reporter_log(&log)
    );
    assert!(
        log.contains("the broker refused MQTT 3.1.1; trying v5"),
        "{}",
        reporter_log(&log)
    );
    assert!(
        !log.contains("connected to the broker"),
        "{}",
        reporter_log(&log)
    );
    assert!(
        alerts_about(&sub, &paths.iter().cloned().collect()).is_empty(),
        "alerts arrived through a broker that refused every version"
    );
    assert!(
        Path::new(&format!("/proc/{}", agent.pid())).exists(),
        "the agent is gone:\n{log}"
    );

    // The broker learns 3.1.1: the agent's next 3.1.1 attempt is served, the spool drains.
    broker.accept(&[MQTT_311]);
    let seen = wait_for_alerts(&sub, &paths, Duration::from_secs(30), || agent.log());
    assert_once_each(&seen);
    let drained = wait_drained(&sub, 5, || agent.log());
    assert_eq!(drained.alerts.dropped, 0, "{drained:?}");
    let connects = broker.connects();
    let (last, before) = connects.split_last().unwrap();
    assert_eq!(*last, (MQTT_311, Answer::Relayed), "{connects:?}");
    assert!(
        before.iter().all(|(_, answer)| *answer == Answer::Refused),
        "{connects:?}"
    );
    let log = agent.stop();
    assert!(log.contains("(MQTT 3.1.1)"), "{}", reporter_log(&log));
    assert_eq!(device_connections(&fleet), ["p2"], "{}", fleet.broker.log());
}

/// The protocol level of each connection of the device Mosquitto accepted, in order, from its
/// log: `p2` for MQTT 3.1.1, `p5` for v5 (Mosquitto's own numbering).
fn device_connections(fleet: &Fleet) -> Vec<String> {
    let marker = format!(" as {DEVICE} (");
    fleet
        .broker
        .log()
        .lines()
        .filter(|l| l.contains("New client connected from "))
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            Some(rest.split(',').next()?.to_owned())
        })
        .collect()
}

/// Waits for a heartbeat saying that at least `sent` alerts were sent and none waits in the
/// spool for its acknowledgement (the agent takes an alert out only on the broker's PUBACK).
fn wait_drained(sub: &Subscriber, sent: u64, agent_log: impl Fn() -> String) -> Heartbeat {
    let start = Instant::now();
    loop {
        if let Some(hb) =
            last_heartbeat(sub).filter(|hb| hb.alerts.sent >= sent && hb.spool_pending == 0)
        {
            return hb;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no heartbeat with {sent} alerts sent and an empty spool: {:?}\nagent log:\n{}",
            last_heartbeat(sub),
            tail(&agent_log(), 30)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// What the agent's reporter logged (the broker, the MQTT version), without the alerts.
fn reporter_log(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("broker") || l.contains("MQTT"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `done`; panics after `timeout` with `what()`.
fn wait_until(timeout: Duration, done: impl Fn() -> bool, what: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "not within {timeout:?}:\n{}",
            what()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// How [`OldBroker`] answered a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// CONNACK 0x01 (unacceptable protocol level), then the connection closed.
    Refused,
    /// Relayed to Mosquitto.
    Relayed,
    /// Closed without an answer, as a TLS front does when its broker is down.
    Dropped,
}

/// A broker that speaks only the MQTT protocol levels it is told: a front on a loopback port
/// that terminates the device's TLS, refuses a CONNECT of any other level as a broker of those
/// levels does, and relays the others to the fleet's Mosquitto (see the module's comment).
struct OldBroker {
    port: u16,
    shared: Arc<Front>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Front {
    /// Protocol levels served.
    levels: Mutex<Vec<u8>>,
    /// Each CONNECT's protocol level and answer, in order.
    connects: Mutex<Vec<(u8, Answer)>>,
    /// CONNECTs still to be closed without an answer, whatever their level.
    drop_first: AtomicUsize,
    stop: AtomicBool,
    server: Arc<rustls::ServerConfig>,
    upstream: Arc<rustls::ClientConfig>,
    upstream_port: u16,
    device_cert: CertificateDer<'static>,
}

impl OldBroker {
    /// A broker serving the protocol `levels` before `fleet`'s Mosquitto.
    fn start(fleet: &Fleet, levels: &[u8]) -> OldBroker {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(fleet.pki.ca_cert()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fleet.pki.server_cert())
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(fleet.pki.server_key()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(clients)
            .with_single_cert(chain, key)
            .unwrap();
        let device_cert = CertificateDer::from_pem_file(&fleet.device.cert).unwrap();
        let shared = Arc::new(Front {
            levels: Mutex::new(levels.to_vec()),
            connects: Mutex::new(Vec::new()),
            drop_first: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            server: Arc::new(server),
            upstream: Arc::new(fleet.device.tls_config()),
            upstream_port: fleet.broker.port(),
            device_cert,
        });
        let (listener, port) = (0..5)
            .find_map(|_| {
                let port = free_port();
                TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                    .ok()
                    .map(|l| (l, port))
            })
            .expect("a free loopback port for the front");
        listener.set_nonblocking(true).unwrap();
        let thread = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept(&listener, &shared))
        };
        OldBroker {
            port,
            shared,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// Serves `levels` from the next CONNECT on.
    fn accept(&self, levels: &[u8]) {
        *self.shared.levels.lock().unwrap() = levels.to_vec();
    }

    /// Closes the next `n` CONNECTs without an answer, whatever their level.
    fn drop_first(&self, n: usize) {
        self.shared.drop_first.store(n, Ordering::SeqCst);
    }

    /// Each CONNECT so far: its protocol level and how it was answered.
    fn connects(&self) -> Vec<(u8, Answer)> {
        self.shared.connects.lock().unwrap().clone()
    }
}

impl Drop for OldBroker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until told to stop, each served by a thread of its own.
fn accept(listener: &TcpListener, shared: &Arc<Front>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, _)) => {
                let shared = Arc::clone(shared);
                thread::spawn(move || {
                    if let Err(e) = serve(&shared, sock) {
                        eprintln!("old broker: a connection ended with {e}");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("old broker: accept: {e}"),
        }
    }
}

/// One connection: the TLS handshake, the CONNECT, then the refusal or the relay.
fn serve(shared: &Front, sock: TcpStream) -> io::Result<()> {
    eprintln!("old broker: a connection from {:?}", sock.peer_addr());
    sock.set_nonblocking(false)?;
    sock.set_nodelay(true)?;
    // Neither the handshake nor the CONNECT may keep a thread forever.
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let server =
        rustls::ServerConnection::new(Arc::clone(&shared.server)).map_err(io::Error::other)?;
    let mut device = Tls::handshake(sock, server.into())?;
    let presented = device
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first());
    if presented != Some(&shared.device_cert) {
        return Err(io::Error::other(
            "a client certificate other than the device's",
        ));
    }
    // A client's first records may come with its last handshake message: rustls has them.
    let mut received = Vec::new();
    device.take_buffered(&mut received)?;
    let level = loop {
        if let Some(level) = connect_level(&received)? {
            break level;
        }
        if !device.read_into(&mut received)? {
            return Ok(());
        }
    };
    let dropped = shared
        .drop_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let served = shared.levels.lock().unwrap().contains(&level);
    let answer = if dropped {
        Answer::Dropped
    } else if served {
        Answer::Relayed
    } else {
        Answer::Refused
    };
    shared.connects.lock().unwrap().push((level, answer));
    eprintln!("old broker: CONNECT of level {level}: {answer:?}");
    if dropped {
        device.close();
        return Ok(());
    }
    if !served {
        // CONNACK, remaining length 2: no session present, return code 0x01.
        device.send(&[0x20, 0x02, 0x00, 0x01])?;
        device.close();
        return Ok(());
    }
    let sock = TcpStream::connect((Ipv4Addr::LOCALHOST, shared.upstream_port))?;
    sock.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    let client = rustls::ClientConnection::new(Arc::clone(&shared.upstream), name)
        .map_err(io::Error::other)?;
    let mut broker = Tls::handshake(sock, client.into())?;
    let relayed = relay(shared, &mut device, &mut broker, &received);
    device.close();
    broker.close();
    relayed
}

/// Relays between the device and Mosquitto (`first` from the device, already read, goes first)
/// until either closes or the front stops.
fn relay(shared: &Front, device: &mut Tls, broker: &mut Tls, first: &[u8]) -> io::Result<()> {
    device.sock.set_read_timeout(None)?;
    broker.send(first)?;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [device.pollfd(), broker.pollfd()];
        // SAFETY: two valid pollfd structures, for sockets both ends own until they return.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let (from, to) = if i == 0 {
                (&mut *device, &mut *broker)
            } else {
                (&mut *broker, &mut *device)
            };
            let mut data = Vec::new();
            let open = from.read_into(&mut data)?;
            to.send(&data)?;
            if !open {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The protocol level of the CONNECT at the start of `buf`; `None` until all of it is there.
fn connect_level(buf: &[u8]) -> io::Result<Option<u8>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if kind != 0x10 {
        return Err(bad("the first packet is not a CONNECT"));
    }
    // The remaining length: 7 bits a byte, at most 4 bytes.
    let (mut len, mut at) = (0usize, 1);
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(bad("a malformed remaining length"));
        }
    }
    let Some(body) = buf.get(at..at + len) else {
        return Ok(None);
    };
    // The protocol name ("MQTT", "MQIsdp": a 2-byte length, the bytes), then the level.
    let name = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(bad("a CONNECT without a protocol name")),
    };
    match body.get(2 + name) {
        Some(level) => Ok(Some(*level)),
        None => Err(bad("a CONNECT without a protocol level")),
    }
}

/// One end of a TLS connection over a blocking socket.
struct Tls {
    sock: TcpStream,
    conn: rustls::Connection,
}

impl Tls {
    fn handshake(mut sock: TcpStream, mut conn: rustls::Connection) -> io::Result<Tls> {
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        let mut tls = Tls { sock, conn };
        tls.flush()?;
        Ok(tls)
    }

    fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }
    }

    /// Reads what the peer sent (blocking until something comes) and appends the plaintext to
    /// `out`; `false` once the peer closed the connection.
    fn read_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let n = self.conn.read_tls(&mut self.sock)?;
        let open = self.take_buffered(out)?;
        Ok(n > 0 && open)
    }

    /// Appends to `out` the plaintext rustls holds already (read with earlier records);
    /// `false` once the peer closed the connection.
    fn take_buffered(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let state = match self.conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // The alert that says why.
                let _ = self.flush();
                return Err(io::Error::other(e));
            }
        };
        self.flush()?;
        let mut plaintext = vec![0; state.plaintext_bytes_to_read()];
        self.conn.reader().read_exact(&mut plaintext)?;
        out.extend_from_slice(&plaintext);
        Ok(!state.peer_has_closed())
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if !data.is_empty() {
            self.conn.writer().write_all(data)?;
        }
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        self.sock.flush()
    }

    /// close_notify, then the TCP close (the socket closes when dropped).
    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(Shutdown::Write);
    }
}
