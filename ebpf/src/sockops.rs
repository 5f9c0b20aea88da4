//! On the node's pod cgroup (the node proxy's pod among them):
//! - when a redirected connection is established, re-key its original destination by the
//!   client's address and port: the proxy's accepted socket has another cookie, but sees that
//!   address and port as its peer;
//! - when one of the proxy's deliveries bound without a port ([`crate::outbound`]) has its
//!   port picked, record its connection for inbound capture to let through;
//! - when a socket listens, hand it to [`crate::listener`], which registers the proxy's inbound
//!   listener.
use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, macros::sock_ops, programs::SockOpsContext};
use weft_ebpf_common::{Connection, Counter, Endpoint, Opener};

use crate::{
    ctx::read_ip6,
    maps::{DELIVERIES, DIRECT, ORIG_BY_COOKIE, ORIG_BY_PEER, count},
};

/// `BPF_SOCK_OPS_TCP_CONNECT_CB`: an active open about to send its SYN (its local port chosen).
pub const TCP_CONNECT: u32 = 3;
/// `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`: the client side finished its handshake. It runs before
/// the final ACK leaves, so before the proxy can accept the connection.
const ACTIVE_ESTABLISHED: u32 = 4;
/// `BPF_SOCK_OPS_TCP_LISTEN_CB`: a socket just started listening.
const TCP_LISTEN: u32 = 11;
const AF_INET: u32 = 2;
/// sock_ops programs' only verdict.
pub const DONE: u32 = 1;

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        TCP_CONNECT => record_delivery(&ctx),
        ACTIVE_ESTABLISHED => record_peer(&ctx),
        TCP_LISTEN => crate::listener::register(&ctx),
        _ => {}
    }
    DONE
}

#[inline(always)]
fn record_peer(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return;
    };
    let ip = if ctx.family() == AF_INET {
        Endpoint::mapped_v4(ctx.local_ip4())
    } else {
        // SAFETY: the kernel's context pointer; word reads at constant offsets.
        unsafe { read_ip6(&raw const (*ctx.ops).local_ip6) }
    };
    let peer = Endpoint { ip, port: ctx.local_port() };
    if ORIG_BY_PEER.insert(&peer, &orig, 0).is_err() {
        // Established already: the proxy gets no original destination and closes it.
        count(Counter::RefusedNoState);
    }
}

#[inline(always)]
fn record_delivery(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a read-only lookup, tested for presence only.
    if unsafe { DELIVERIES.get(&cookie) }.is_none() {
        return;
    }
    let _ = DELIVERIES.remove(&cookie);
    // The connect cannot be refused from here. Failing (an LRU map hardly can), the delivery is
    // steered to the proxy's inbound listener, which the proxy's admission bounds.
    if DIRECT.insert(&connection(ctx), &(Opener::Proxy as u8), 0).is_err() {
        count(Counter::RefusedNoState);
    }
}

/// The connection of a socket at `TCP_CONNECT_CB`: its local end as the client, its remote end
/// as the server.
#[inline(always)]
pub fn connection(ctx: &SockOpsContext) -> Connection {
    let (client, server) = if ctx.family() == AF_INET {
        (Endpoint::mapped_v4(ctx.local_ip4()), Endpoint::mapped_v4(ctx.remote_ip4()))
    } else {
        // SAFETY: the kernel's context pointer; word reads at constant offsets.
        unsafe { (read_ip6(&raw const (*ctx.ops).local_ip6), read_ip6(&raw const (*ctx.ops).remote_ip6)) }
    };
    // The remote port is the socket's big-endian port in the field's upper half.
    let server_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    Connection {
        client: Endpoint { ip: client, port: ctx.local_port() },
        server: Endpoint { ip: server, port: u32::from(server_port) },
    }
}
