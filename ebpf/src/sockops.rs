//! On the node's pod cgroup (the node proxy's pod among them):
//! - when a redirected connection is established, re-key its original destination by the
//!   client's address and port: the proxy's accepted socket has another cookie, but sees that
//!   address and port as its peer;
//! - when a socket listens, hand it to [`crate::listener`], which registers the proxy's inbound
//!   listener.
use aya_ebpf::{EbpfContext, helpers::bpf_get_socket_cookie, macros::sock_ops, programs::SockOpsContext};
use weft_ebpf_common::{Counter, Endpoint};

use crate::{
    ctx::read_ip6,
    maps::{ORIG_BY_COOKIE, ORIG_BY_PEER, count},
};

/// `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`: the client side finished its handshake. It runs before
/// the final ACK leaves, so before the proxy can accept the connection.
const ACTIVE_ESTABLISHED: u32 = 4;
/// `BPF_SOCK_OPS_TCP_LISTEN_CB`: a socket just started listening.
const TCP_LISTEN: u32 = 11;
const AF_INET: u32 = 2;
/// sock_ops programs' only verdict.
const DONE: u32 = 1;

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
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
