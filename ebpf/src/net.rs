//! Network sensor: TCP connect, accept and listen from `sock:inet_sock_set_state`; UDP connect,
//! first send to each destination, and bind from the socket syscalls.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use picket_common::{
    EventKind, NetEvent, NetOp, Sensor, HEADER_FLAG_NO_TASK, NET_FLAG_SOCK_UNKNOWN,
};

use crate::{
    context::{arg, current_ids, fill_header, is_agent, layout, read_user_ulong, ret},
    maps::{emit, UdpDest, CONNECT_FD, SOCKETS, SOCKET_STASH, UDP_DESTS},
    process::empty_header,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const SOCK_DGRAM: u32 = 2;
/// The socket type, without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u32 = 0xf;

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

pub(crate) fn new_event(op: NetOp, family: u16) -> NetEvent {
    NetEvent {
        header: empty_header(),
        op: op as u16,
        family,
        local_port: 0,
        remote_port: 0,
        fd: -1,
        _pad0: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY (all reads below): offsets from the tracefs format of this tracepoint.
    let protocol: u16 = unsafe { ctx.read_at(layout!(sock_protocol)) }.unwrap_or(0);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let old: i32 = unsafe { ctx.read_at(layout!(sock_oldstate)) }.unwrap_or(0);
    let new: i32 = unsafe { ctx.read_at(layout!(sock_newstate)) }.unwrap_or(0);
    let (op, task_known) = match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => (NetOp::TcpConnect, true),
        // Completes in softirq context, on behalf of no particular task.
        (TCP_SYN_RECV, TCP_ESTABLISHED) => (NetOp::TcpAccept, false),
        (_, TCP_LISTEN) => (NetOp::TcpListen, true),
        _ => return 0,
    };
    let (tgid, _) = current_ids();
    if task_known && is_agent(tgid) {
        return 0;
    }
    let family: u16 = unsafe { ctx.read_at(layout!(sock_family)) }.unwrap_or(0);
    let mut event = new_event(op, family);
    fill_header(
        &mut event.header,
        EventKind::Net as u16,
        if task_known { 0 } else { HEADER_FLAG_NO_TASK },
    );
    if !task_known {
        event.header.tgid = 0;
        event.header.tid = 0;
        event.header.uid = 0;
        event.header.gid = 0;
        event.header.cgroup_id = 0;
        event.header.comm = [0; 16];
    }
    if op == NetOp::TcpConnect {
        let (_, tid) = current_ids();
        if let Some(fd) = unsafe { CONNECT_FD.get(&tid) } {
            event.fd = *fd;
            let _ = CONNECT_FD.remove(&tid);
        }
    }
    event.local_port = unsafe { ctx.read_at(layout!(sock_sport)) }.unwrap_or(0);
    event.remote_port = unsafe { ctx.read_at(layout!(sock_dport)) }.unwrap_or(0);
    unsafe {
        if family == AF_INET6 {
            event.local_addr = ctx.read_at(layout!(sock_saddr_v6)).unwrap_or([0; 16]);
            event.remote_addr = ctx.read_at(layout!(sock_daddr_v6)).unwrap_or([0; 16]);
        } else {
            let l: [u8; 4] = ctx.read_at(layout!(sock_saddr)).unwrap_or([0; 4]);
            let r: [u8; 4] = ctx.read_at(layout!(sock_daddr)).unwrap_or([0; 4]);
            event.local_addr[..4].copy_from_slice(&l);
            event.remote_addr[..4].copy_from_slice(&r);
        }
    }
    emit(Sensor::Network, &event, core::mem::size_of::<NetEvent>());
    0
}

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let family = arg(&ctx, 0) as u32;
    if family != AF_INET as u32 && family != AF_INET6 as u32 {
        return 0;
    }
    let kind = (family << 16) | (arg(&ctx, 1) as u32 & SOCK_TYPE_MASK);
    let (_, tid) = current_ids();
    let _ = SOCKET_STASH.insert(&tid, &kind, 0);
    0
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    let Some(kind) = (unsafe { SOCKET_STASH.get(&tid) }).copied() else {
        return 0;
    };
    let _ = SOCKET_STASH.remove(&tid);
    let fd = ret(&ctx);
    if fd >= 0 {
        let _ = SOCKETS.insert(&socket_key(tgid, fd as u32), &kind, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current_ids();
    let key = socket_key(tgid, arg(&ctx, 0) as u32);
    // Nearly every close is of something else: a lookup takes no lock, a removal always
    // locks its bucket.
    if unsafe { SOCKETS.get(&key) }.is_some() {
        let _ = SOCKETS.remove(&key);
    }
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_agent(tgid) {
        let _ = CONNECT_FD.insert(&tid, &(arg(&ctx, 0) as i32), 0);
    }
    udp_syscall(&ctx, NetOp::UdpConnect, arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    udp_syscall(&ctx, NetOp::UdpBind, arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    udp_syscall(&ctx, NetOp::UdpSend, arg(&ctx, 4));
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    // `struct msghdr` starts with `void *msg_name`.
    if let Some(name) = read_user_ulong(arg(&ctx, 1)) {
        udp_syscall(&ctx, NetOp::UdpSend, name);
    }
    0
}

#[tracepoint]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    // The first `struct mmsghdr` starts with its `struct msghdr`: only its destination is seen.
    if let Some(name) = read_user_ulong(arg(&ctx, 1)) {
        udp_syscall(&ctx, NetOp::UdpSend, name);
    }
    0
}

#[inline(always)]
fn socket_key(tgid: u32, fd: u32) -> u64 {
    (u64::from(tgid) << 32) | u64::from(fd)
}

/// Reports a UDP `connect`, `bind` or send with an explicit destination `sockaddr_ptr`.
#[inline(always)]
fn udp_syscall(ctx: &TracePointContext, op: NetOp, sockaddr_ptr: u64) {
    if sockaddr_ptr == 0 {
        return;
    }
    let (tgid, _) = current_ids();
    if is_agent(tgid) {
        return;
    }
    let fd = arg(ctx, 0) as u32;
    let mut flags = 0;
    match unsafe { SOCKETS.get(&socket_key(tgid, fd)) } {
        Some(kind) if kind & SOCK_TYPE_MASK == SOCK_DGRAM => {}
        // A TCP socket: `inet_sock_set_state` reports it.
        Some(_) => return,
        None => flags |= NET_FLAG_SOCK_UNKNOWN,
    }
    // sockaddr_in: family, port, 4-byte address; sockaddr_in6: family, port, flowinfo, address.
    // Read only what the family needs: a 16-byte sockaddr_in may end a mapped page.
    let Ok(head) =
        (unsafe { aya_ebpf::helpers::bpf_probe_read_user(sockaddr_ptr as *const [u8; 8]) })
    else {
        return;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&head[4..8]);
    } else if family == AF_INET6 {
        let Ok(v6) = (unsafe {
            aya_ebpf::helpers::bpf_probe_read_user((sockaddr_ptr + 8) as *const [u8; 16])
        }) else {
            return;
        };
        addr = v6;
    } else {
        return;
    }
    if op == NetOp::UdpSend {
        let dest = UdpDest {
            tgid,
            port,
            family,
            addr,
        };
        if unsafe { UDP_DESTS.get(&dest) }.is_some() {
            return;
        }
        let _ = UDP_DESTS.insert(&dest, &1, 0);
    }
    let mut event = new_event(op, family);
    fill_header(&mut event.header, EventKind::Net as u16, flags);
    event.fd = fd as i32;
    if op == NetOp::UdpBind {
        event.local_port = port;
        event.local_addr = addr;
    } else {
        event.remote_port = port;
        event.remote_addr = addr;
    }
    emit(Sensor::Network, &event, core::mem::size_of::<NetEvent>());
}
