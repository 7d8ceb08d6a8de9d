//! Network guard: cgroup `sock_addr` programs that refuse, before anything leaves the machine,
//! a TCP or UDP connect, an unconnected UDP send or a bind that the policy does not allow.
//!
//! The decision is detection's without the executable: an outbound destination is allowed when
//! an outbound rule's network contains the address, its port range the port, and its protocol
//! matches; a bind to a port other than 0 when a listen rule names that port and protocol.
//! IPv4-mapped IPv6 addresses are judged as the IPv4 address.
//!
//! Cost per call: one array lookup for the mode (nothing more when off), then one trie or hash
//! lookup. The agent's own process is never refused nor reported.
//!
//! Return value: 1 lets the call through, 0 makes it fail with `EPERM`.

use aya_ebpf::{macros::cgroup_sock_addr, maps::lpm_trie::Key, programs::SockAddrContext};
use picket_common::{
    guard::{
        listen_key, ALLOW_ALL, KEY_BYTES, KEY_HEADER_BITS, MODE_DRY_RUN, MODE_ENFORCE, PROTO_TCP,
        PROTO_UDP, RANGES_MAX, SLOT_SHIFT,
    },
    EventKind, NetEvent, NetOp, Sensor, NET_FLAG_BLOCKED, NET_FLAG_WOULD_BLOCK,
};

use crate::{
    context::{current_ids, fill_header, is_agent},
    maps::{emit, GUARD_LISTEN, GUARD_NETS, GUARD_STATE},
    net::new_event,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// The third word of `::ffff:a.b.c.d` as loaded from memory (bytes 00 00 ff ff).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Which hook a program sits on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Connect,
    Send,
    Bind,
}

#[cgroup_sock_addr(connect4)]
pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Hook::Connect, false)
}

#[cgroup_sock_addr(connect6)]
pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Hook::Connect, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn guard_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Hook::Send, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn guard_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Hook::Send, true)
}

#[cgroup_sock_addr(bind4)]
pub fn guard_bind4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Hook::Bind, false)
}

#[cgroup_sock_addr(bind6)]
pub fn guard_bind6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, Hook::Bind, true)
}

/// Reads one 4-byte field of the context (the only access size every kernel accepts).
macro_rules! field {
    ($ctx:expr, $($field:tt)+) => {
        // SAFETY: `sock_addr` is the context the kernel passed; the verifier checks the offset.
        unsafe { core::ptr::read_volatile(&raw const (*$ctx.sock_addr).$($field)+) }
    };
}

#[inline(always)]
fn judge(ctx: &SockAddrContext, hook: Hook, v6: bool) -> i32 {
    let Some(state) = GUARD_STATE.get(0).copied() else {
        return ALLOW;
    };
    let mode = state & 0xff;
    if mode != MODE_DRY_RUN && mode != MODE_ENFORCE {
        return ALLOW;
    }
    let slot = (state >> SLOT_SHIFT) & 1;
    let proto_bit = match field!(ctx, protocol) {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        // Not a protocol the policy speaks of (raw, ICMP, SCTP...).
        _ => return ALLOW,
    };
    let (tgid, _) = current_ids();
    if is_agent(tgid) {
        return ALLOW;
    }
    // `user_port` holds the port in network byte order in its first two bytes.
    let port = u16::from_be(field!(ctx, user_port) as u16);
    // The address, IPv4 in the first 4 bytes; a mapped IPv6 address becomes its IPv4 address.
    let mut addr = [0u8; 16];
    let mut family = AF_INET;
    if v6 {
        let w0 = field!(ctx, user_ip6[0]);
        let w1 = field!(ctx, user_ip6[1]);
        let w2 = field!(ctx, user_ip6[2]);
        let w3 = field!(ctx, user_ip6[3]);
        if w0 == 0 && w1 == 0 && w2 == V4_MAPPED_WORD {
            addr[..4].copy_from_slice(&w3.to_ne_bytes());
        } else {
            family = AF_INET6;
            addr[..4].copy_from_slice(&w0.to_ne_bytes());
            addr[4..8].copy_from_slice(&w1.to_ne_bytes());
            addr[8..12].copy_from_slice(&w2.to_ne_bytes());
            addr[12..].copy_from_slice(&w3.to_ne_bytes());
        }
    } else {
        addr[..4].copy_from_slice(&field!(ctx, user_ip4).to_ne_bytes());
    }

    let (op, allowed) = if hook == Hook::Bind {
        let op = if proto_bit == PROTO_TCP {
            NetOp::TcpBind
        } else {
            NetOp::UdpBind
        };
        // Port 0: the kernel picks an ephemeral port, which is no listener of the policy's.
        let allowed =
            port == 0 || unsafe { GUARD_LISTEN.get(&listen_key(slot, proto_bit, port)) }.is_some();
        (op, allowed)
    } else {
        let op = match (hook, proto_bit) {
            (Hook::Send, _) => NetOp::UdpSend,
            (_, PROTO_TCP) => NetOp::TcpConnect,
            _ => NetOp::UdpConnect,
        };
        (op, outbound_allowed(slot, family, &addr, port, proto_bit))
    };
    if allowed {
        return ALLOW;
    }
    let enforce = mode == MODE_ENFORCE;
    report(op, family, &addr, port, enforce);
    if enforce {
        DENY
    } else {
        ALLOW
    }
}

/// Whether an outbound rule allows `addr`:`port` over `proto_bit`. The trie's longest match
/// carries the ranges of every rule whose network contains it, so one lookup is exact.
#[inline(always)]
fn outbound_allowed(slot: u32, family: u16, addr: &[u8; 16], port: u16, proto_bit: u16) -> bool {
    let mut data = [0u8; KEY_BYTES];
    data[0] = slot as u8;
    let bits = if family == AF_INET6 {
        data[1] = 6;
        data[4..].copy_from_slice(addr);
        128
    } else {
        data[1] = 4;
        data[4..8].copy_from_slice(&addr[..4]);
        32
    };
    let key = Key::new(KEY_HEADER_BITS + bits, data);
    let Some(rule) = GUARD_NETS.get(&key) else {
        return false;
    };
    if rule.count == ALLOW_ALL {
        return true;
    }
    let count = rule.count as usize;
    for i in 0..RANGES_MAX {
        if i >= count {
            break;
        }
        let r = &rule.ranges[i];
        if r.protocols & proto_bit != 0 && r.first <= port && port <= r.last {
            return true;
        }
    }
    false
}

/// Sends a record of a refused (or, in dry run, would-be refused) operation.
#[inline(always)]
fn report(op: NetOp, family: u16, addr: &[u8; 16], port: u16, blocked: bool) {
    let mut event = new_event(op, family);
    let flag = if blocked {
        NET_FLAG_BLOCKED
    } else {
        NET_FLAG_WOULD_BLOCK
    };
    fill_header(&mut event.header, EventKind::Net as u16, flag);
    if matches!(op, NetOp::TcpBind | NetOp::UdpBind) {
        event.local_addr = *addr;
        event.local_port = port;
    } else {
        event.remote_addr = *addr;
        event.remote_port = port;
    }
    emit(Sensor::Network, &event, core::mem::size_of::<NetEvent>());
}
