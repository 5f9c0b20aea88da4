//! On the node's pod cgroup (the node proxy's pod among them):
//! - when a redirected connection is established, re-key its original destination by the
//!   client's address and port: the proxy's accepted socket has another cookie, but sees that
//!   address and port as its peer;
//! - when the proxy listens on the inbound port in a pod handed to it, register that socket
//!   as the pod's inbound listener, so capture works with any proxy that simply listens there
//!   (Istio's ztunnel, unmodified) and no proxy needs to write the datapath's maps.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use weft_ebpf_common::{AF_INET6, Counter, Endpoint, port};

use crate::{
    ctx::read_ip6,
    maps::{LISTENERS, ORIG_BY_COOKIE, ORIG_BY_PEER, POD_ADDRS, count, from_proxy},
};

/// `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB`: the client side finished its handshake. It runs before
/// the final ACK leaves, so before the proxy can accept the connection.
const ACTIVE_ESTABLISHED: u32 = 4;
/// `BPF_SOCK_OPS_TCP_LISTEN_CB`: a socket just started listening (in `listen(2)`, so in the
/// listening process's context).
const TCP_LISTEN: u32 = 11;
const AF_INET: u32 = 2;
/// sock_ops programs' only verdict.
const DONE: u32 = 1;

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        ACTIVE_ESTABLISHED => record_peer(&ctx),
        TCP_LISTEN => register_listener(&ctx),
        _ => {}
    }
    DONE
}

/// A listener on the inbound port in a pod handed to the proxy becomes that pod's inbound
/// socket, for each of the pod's addresses the socket can accept (an IPv6 socket is taken as
/// dual-stack, as proxies bind `[::]`), if it is the proxy's: marked and, once the agent named
/// the proxy's cgroups, listened on by a process in one (an app in the pod could listen on the
/// port too). A newer proxy's listener replaces an older one's.
#[inline(always)]
fn register_listener(ctx: &SockOpsContext) {
    if ctx.local_port() != u32::from(port::INBOUND) {
        return;
    }
    // SAFETY: the helper only reads the socket's namespace.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(pod) = (unsafe { POD_ADDRS.get(&netns) }).copied() else {
        return;
    };
    // SAFETY: the kernel's context pointer; `sk` is checked for null before its read.
    let mark = unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() {
            return;
        }
        (*sk).mark
    };
    if !from_proxy(mark) {
        count(Counter::ListenerIgnored);
        return;
    }
    // SAFETY: the kernel's context pointer, handed to the helper as it came.
    let ops = unsafe { &mut *ctx.ops };
    let mut registered = false;
    if pod.ipv4 != 0 {
        let mut key = Endpoint { ip: Endpoint::mapped_v4(pod.ipv4), port: 0 };
        // SAFETY: see the declaration of LISTENERS; no other reference to it is alive here.
        registered |= unsafe { (*(&raw const LISTENERS)).update(&mut key, ops, 0) }.is_ok();
    }
    if ctx.family() == u32::from(AF_INET6) && pod.ipv6 != [0; 4] {
        let mut key = Endpoint { ip: pod.ipv6, port: 0 };
        // SAFETY: as above.
        registered |= unsafe { (*(&raw const LISTENERS)).update(&mut key, ops, 0) }.is_ok();
    }
    if registered {
        count(Counter::ListenerRegistered);
    }
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
