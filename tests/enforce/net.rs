//! The network guard through `picket run`: in enforce mode a connect, UDP send or bind the
//! policy does not allow fails with `EPERM` and raises `blocked_connection` or
//! `blocked_listener` with the process that tried; in alert mode nothing is refused and each
//! is reported as `would_block`; allowed traffic goes through and raises nothing; a killed
//! agent leaves the machine connecting freely.
//!
//! The guard judges the whole machine. So that nothing else running here is refused while a
//! test runs, the test policy allows every destination but one network, 127.77.0.0/16 (local,
//! like all of 127/8), whose peer 127.77.0.1 it allows on two ports only. Binds are judged by
//! port: the ports the tests bind are picked free beforehand.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

use picket_test_support::Agent;
use serde_json::Value;

use crate::support::*;

/// The network the tests refuse, as a 32-bit address and prefix length.
const REFUSED_NET: (u32, u32) = (0x7f4d_0000, 16);
/// The peer the policy allows, on `Peers::tcp_port` (TCP) and `Peers::udp_port` (UDP).
const PEER: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);
/// Addresses in the refused network that no rule allows.
const DENIED: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 2);
const DENIED_2: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 3);

/// The allowed peer's sockets, open before the agent starts (a listener started while the
/// agent runs would be an unexpected listener of its own), and the ports the tests bind.
struct Peers {
    tcp: TcpListener,
    tcp_port: u16,
    _udp: UdpSocket,
    udp_port: u16,
    /// The one TCP port the policy allows to listen on.
    listen_port: u16,
    /// A port no listen rule names.
    other_port: u16,
}

impl Peers {
    fn new() -> Peers {
        let tcp = TcpListener::bind((PEER, 0)).unwrap();
        let udp = UdpSocket::bind((PEER, 0)).unwrap();
        Peers {
            tcp_port: tcp.local_addr().unwrap().port(),
            tcp,
            udp_port: udp.local_addr().unwrap().port(),
            _udp: udp,
            listen_port: picket_test_support::ports::free_port(),
            other_port: picket_test_support::ports::free_port(),
        }
    }

    /// The policy: every destination but the refused network, the peer's two ports, one
    /// listening port; `modes` is the `[modes]` body.
    fn policy(&self, lab: &Lab, modes: &str) -> String {
        let mut text = policy(lab, modes);
        let (net, len) = REFUSED_NET;
        // The complement of the refused network: for each of its leading bits, the addresses
        // that agree on the bits before it and differ on it.
        for bit in 0..len {
            let mask = u32::MAX << (31 - bit);
            let prefix = (net ^ (1 << (31 - bit))) & mask;
            outbound(
                &mut text,
                &format!("{}/{}", Ipv4Addr::from(prefix), bit + 1),
                "any",
                "any",
            );
        }
        outbound(&mut text, "::/0", "any", "any");
        outbound(
            &mut text,
            &PEER.to_string(),
            &self.tcp_port.to_string(),
            "tcp",
        );
        outbound(
            &mut text,
            &PEER.to_string(),
            &self.udp_port.to_string(),
            "udp",
        );
        let _ = writeln!(
            text,
            "[[network.listen]]\nport = {}\nprotocol = \"tcp\"\n",
            self.listen_port
        );
        text
    }
}

fn outbound(text: &mut String, cidr: &str, ports: &str, protocol: &str) {
    let ports = if ports == "any" {
        "\"any\"".to_string()
    } else {
        ports.to_string()
    };
    let _ = writeln!(
        text,
        "[[network.outbound]]\ncidr = \"{cidr}\"\nports = {ports}\nprotocol = \"{protocol}\"\n"
    );
}

fn eperm<T: std::fmt::Debug>(r: io::Result<T>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        other => panic!("{what}: expected EPERM, got {other:?}"),
    }
}

fn udp_connect(to: Ipv4Addr, port: u16) -> io::Result<()> {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.connect((to, port))
}

fn udp_send(to: Ipv4Addr, port: u16) -> io::Result<usize> {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.send_to(b"picket", (to, port))
}

fn tcp_connect(to: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    TcpStream::connect(SocketAddr::from((to, port)))
}

/// The alert `kind_` whose details say `op` and `field` = `value`, of this process, waited for.
fn alert(agent: &Agent, kind_: &str, op: &str, field: &str, value: Value) -> Value {
    let a = agent.wait_for_within(
        &format!("{kind_} {op} {field}={value}"),
        ALERT_TIMEOUT,
        None,
        |a| kind(a) == kind_ && a["details"]["op"] == op && a["details"][field] == value,
    );
    assert_eq!(
        a["process"]["pid"],
        std::process::id(),
        "the alert names the process that tried: {a}"
    );
    a
}

/// Traffic the policy allows, as a device's workload would make it, many times.
fn healthy_workload(peers: &Peers) {
    for _ in 0..50 {
        drop(tcp_connect(PEER, peers.tcp_port).unwrap());
        drop(peers.tcp.accept().unwrap());
        udp_connect(PEER, peers.udp_port).unwrap();
        udp_send(PEER, peers.udp_port).unwrap();
        // Port 0: the kernel picks one.
        drop(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    }
    drop(TcpListener::bind((Ipv4Addr::UNSPECIFIED, peers.listen_port)).unwrap());
}

/// Alerts about what `healthy_workload` did: there must be none.
fn about_healthy(agent: &Agent, peers: &Peers) -> Vec<Value> {
    let peer = PEER.to_string();
    agent.matching_after(std::time::Duration::ZERO, |a| {
        let d = &a["details"];
        let op = d["op"].as_str().unwrap_or("");
        let tcp = op.starts_with("tcp_");
        let to_peer = d["remote_addr"] == peer.as_str()
            && ((tcp && d["remote_port"] == peers.tcp_port)
                || (!tcp && d["remote_port"] == peers.udp_port));
        let listener = (tcp && d["port"] == peers.listen_port) || d["port"] == 0;
        to_peer || listener
    })
}

#[test]
fn enforce_refuses_what_the_policy_does_not_allow_and_lets_the_rest_through() {
    let _serial = serial();
    let lab = Lab::new("net");
    let peers = Peers::new();
    let bundle = lab.sign("policy", &peers.policy(&lab, "network = \"enforce\""));
    let agent = lab.run(&lab.config(&bundle, ""));
    agent.wait_log("network: guard in force (enforce", ALERT_TIMEOUT);

    healthy_workload(&peers);

    eperm(tcp_connect(DENIED, peers.tcp_port), "TCP connect");
    alert(
        &agent,
        "blocked_connection",
        "tcp_connect",
        "remote_addr",
        DENIED.to_string().into(),
    );
    // The allowed peer, on a port allowed to UDP only.
    eperm(tcp_connect(PEER, peers.udp_port), "TCP connect, UDP port");
    alert(
        &agent,
        "blocked_connection",
        "tcp_connect",
        "remote_port",
        peers.udp_port.into(),
    );
    eperm(udp_connect(DENIED, peers.udp_port), "UDP connect");
    alert(
        &agent,
        "blocked_connection",
        "udp_connect",
        "remote_addr",
        DENIED.to_string().into(),
    );
    eperm(udp_send(DENIED_2, peers.udp_port), "UDP send");
    alert(
        &agent,
        "blocked_connection",
        "udp_send",
        "remote_addr",
        DENIED_2.to_string().into(),
    );
    eperm(
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, peers.other_port)),
        "TCP bind",
    );
    alert(
        &agent,
        "blocked_listener",
        "tcp_bind",
        "port",
        peers.other_port.into(),
    );
    // The listen rule is for TCP.
    eperm(
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, peers.listen_port)),
        "UDP bind",
    );
    alert(
        &agent,
        "blocked_listener",
        "udp_bind",
        "port",
        peers.listen_port.into(),
    );

    // Everything before the refusals was judged by now: records are handled in order.
    assert_eq!(about_healthy(&agent, &peers), Vec::<Value>::new());
    // What the kernel refused is reported once, as refused.
    let denied = [DENIED.to_string(), DENIED_2.to_string()];
    let unexpected: Vec<Value> = agent.matching_after(std::time::Duration::ZERO, |a| {
        kind(a) == "unexpected_connection"
            && denied
                .iter()
                .any(|d| a["details"]["remote_addr"] == d.as_str())
    });
    assert_eq!(unexpected, Vec::<Value>::new());
}

#[test]
fn dry_run_refuses_nothing_and_reports_what_it_would_refuse() {
    let _serial = serial();
    let lab = Lab::new("net-dry");
    let peers = Peers::new();
    let bundle = lab.sign("policy", &peers.policy(&lab, "network = \"alert\""));
    let agent = lab.run(&lab.config(&bundle, ""));
    agent.wait_log("network: guard in force (dry run", ALERT_TIMEOUT);

    healthy_workload(&peers);

    // No listener there: the peer refuses, not the guard.
    let e = tcp_connect(DENIED, peers.tcp_port).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
    let a = alert(
        &agent,
        "would_block",
        "tcp_connect",
        "remote_addr",
        DENIED.to_string().into(),
    );
    assert_eq!(a["details"]["action"], "connect");
    udp_connect(DENIED, peers.udp_port).unwrap();
    alert(
        &agent,
        "would_block",
        "udp_connect",
        "remote_addr",
        DENIED.to_string().into(),
    );
    udp_send(DENIED_2, peers.udp_port).unwrap();
    alert(
        &agent,
        "would_block",
        "udp_send",
        "remote_addr",
        DENIED_2.to_string().into(),
    );
    drop(TcpListener::bind((Ipv4Addr::UNSPECIFIED, peers.other_port)).unwrap());
    let a = alert(
        &agent,
        "would_block",
        "tcp_bind",
        "port",
        peers.other_port.into(),
    );
    assert_eq!(a["details"]["action"], "bind");

    assert_eq!(about_healthy(&agent, &peers), Vec::<Value>::new());
}

#[test]
fn a_killed_agent_leaves_the_network_open() {
    let _serial = serial();
    let lab = Lab::new("net-kill");
    let peers = Peers::new();
    let bundle = lab.sign("policy", &peers.policy(&lab, "network = \"enforce\""));
    let agent = lab.run(&lab.config(&bundle, ""));
    agent.wait_log("network: guard in force (enforce", ALERT_TIMEOUT);
    eperm(udp_connect(DENIED, peers.udp_port), "UDP connect");
    eperm(
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, peers.other_port)),
        "TCP bind",
    );

    // SIGKILL: the agent's bpf links close with it and the kernel detaches the programs.
    agent.kill();
    udp_connect(DENIED, peers.udp_port).unwrap();
    udp_send(DENIED_2, peers.udp_port).unwrap();
    drop(TcpListener::bind((Ipv4Addr::UNSPECIFIED, peers.other_port)).unwrap());
    let e = tcp_connect(DENIED, peers.tcp_port).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
}
