//! Loopback ports for the servers the tests start (Mosquitto, `serve`'s managed broker and HTTP
//! API, PostgreSQL).
//!
//! A port from `bind(0)` is one the kernel may just as well give to an outgoing connection of
//! another test (an MQTT client, a PostgreSQL session) between the moment it is picked and the
//! moment the server binds it. Ports below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`) are never handed out that way: they are taken from there,
//! each call of this process a different one, processes starting at different places.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const FIRST: u32 = 10_000;

/// A loopback TCP port free now, below the ephemeral range.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_start().unwrap_or(32_768);
    if end <= FIRST + 1_000 {
        // No room below the ephemeral range: the kernel's choice it is.
        return kernel_choice();
    }
    let span = end - FIRST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start + n) % span;
        let port = u16::try_from(port).expect("ports below the ephemeral range fit in u16");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {end}");
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn kernel_choice() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let end = ephemeral_start().unwrap_or(32_768);
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(u32::from(port) < end && u32::from(port) >= FIRST, "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("free");
        }
    }
}
