//! Registers the proxy's inbound listener in each pod handed to it, so capture works with any
//! proxy that simply listens on the inbound port there (Istio's ztunnel, unmodified) and no
//! proxy writes the datapath's maps. Who binds is known only at `bind(2)` (`cgroup/bind4|6`,
//! where the process is current): a bind of the inbound port by the proxy — its mark, and once
//! the agent named the proxy's cgroups, a process in one, as the connect hooks check — is
//! remembered by socket cookie; the socket's listen (`sock_ops`, `TCP_LISTEN_CB`) then puts it
//! into `WEFT_LISTENERS` for the pod's addresses. An app in the pod binding the port itself is
//! never registered. A newer proxy's listener replaces an older one's.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::{SockAddrContext, SockOpsContext},
};
use weft_ebpf_common::{AF_INET6, Counter, Endpoint, port};

use crate::maps::{LISTENERS, POD_ADDRS, PROXY_BINDS, count, from_proxy};

const IPPROTO_TCP: u32 = 6;
/// `cgroup_sock_addr` verdict: let the call proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(bind4)]
pub fn weft_bind4(ctx: SockAddrContext) -> i32 {
    remember_proxy_bind(&ctx);
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn weft_bind6(ctx: SockAddrContext) -> i32 {
    remember_proxy_bind(&ctx);
    ALLOW
}

#[inline(always)]
fn remember_proxy_bind(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context pointer; the verifier checks every field access, and
    // `sk` is checked for null before its read.
    let proxys = unsafe {
        if (*sa).protocol != IPPROTO_TCP || u16::from_be((*sa).user_port as u16) != port::INBOUND {
            return;
        }
        let sk = (*sa).__bindgen_anon_1.sk;
        !sk.is_null() && from_proxy((*sk).mark)
    };
    if proxys {
        // SAFETY: the helper only reads the socket's cookie.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // Full (LRU): the oldest bind is forgotten, and that socket's listen is not registered.
        let _ = PROXY_BINDS.insert(&cookie, &1, 0);
    }
}

/// `TCP_LISTEN_CB` of a socket on the inbound port: registered for the addresses of the pod
/// whose netns it is in, if the proxy bound it and the pod was handed over (an IPv6 socket is
/// taken as dual-stack, as proxies bind `[::]`).
#[inline(always)]
pub fn register(ctx: &SockOpsContext) {
    if ctx.local_port() != u32::from(port::INBOUND) {
        return;
    }
    // SAFETY: the helpers only read the socket's cookie and namespace.
    let (cookie, netns) = unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), bpf_get_netns_cookie(ctx.as_ptr())) };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(pod) = (unsafe { POD_ADDRS.get(&netns) }).copied() else {
        return;
    };
    // SAFETY: a read-only lookup, tested for presence only.
    if unsafe { PROXY_BINDS.get(&cookie) }.is_none() {
        count(Counter::ListenerIgnored);
        return;
    }
    let _ = PROXY_BINDS.remove(&cookie);
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
    count(if registered { Counter::ListenerRegistered } else { Counter::ListenerFailed });
}
