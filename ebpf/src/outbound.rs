//! Outbound capture: `connect()` from an enrolled pod goes to the proxy in that pod, and
//! `getpeername()` on that socket still answers the original destination.
use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_sock_addr, sockaddr},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, r#gen::bpf_bind},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use weft_ebpf_common::{
    AF_INET, AF_INET6, Connection, Counter, DELIVERY_MARK, Endpoint, Enrolled, OrigDst, Opener, port,
};

use aya_log_ebpf::debug;

use crate::{
    ctx::{read_ip6, write_ip6},
    inbound::LOOPBACK_IFINDEX,
    maps::{DIRECT, ENROLLED, ORIG_BY_COOKIE, count, debug_enabled, from_proxy},
};

/// Verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
/// Makes the syscall fail with EPERM.
const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK_V6: [u32; 4] = [0, 0, 0, 1_u32.to_be()];

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, true)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn weft_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, true);
    ALLOW
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context pointer; the verifier checks every field access.
    unsafe {
        if (*sa).protocol != IPPROTO_TCP {
            return ALLOW;
        }
        let sk = (*sa).__bindgen_anon_1.sk;
        if !sk.is_null() && from_proxy((*sk).mark) {
            // A delivery bound to `lo` needs no record: its SYN arrives on loopback, which
            // inbound capture lets through.
            if (*sk).mark == DELIVERY_MARK && (*sk).bound_dev_if != LOOPBACK_IFINDEX {
                if (*sk).src_port == 0 {
                    // Its port is picked after this hook: no record could match it, and
                    // inbound capture would steer it back to the proxy.
                    count(Counter::RefusedNoState);
                    return REFUSE;
                }
                let client = if v6 {
                    read_ip6(&raw const (*sk).src_ip6)
                } else {
                    Endpoint::mapped_v4((*sk).src_ip4)
                };
                let dst = destination(sa, v6);
                let connection = Connection {
                    client: Endpoint { ip: client, port: (*sk).src_port },
                    server: Endpoint { ip: dst.ip, port: u32::from(dst.port) },
                };
                // The proxy bound the client's address and port before connecting. Without the
                // entry inbound capture would steer the delivery back to the proxy: refuse it.
                if DIRECT.insert(&connection, &(Opener::Proxy as u8), 0).is_err() {
                    count(Counter::RefusedNoState);
                    return REFUSE;
                }
            }
            count(Counter::ExemptProxy);
            return ALLOW;
        }
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(pod) = (unsafe { ENROLLED.get(&netns) }).copied() else {
        return ALLOW;
    };
    let dst = destination(sa, v6);
    if is_local(&dst, &pod) {
        count(Counter::ExemptLocal);
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if ORIG_BY_COOKIE.insert(&cookie, &dst, 0).is_err() {
        // Without the record the proxy cannot learn where to go: refuse rather than bypass.
        count(Counter::RefusedNoState);
        return REFUSE;
    }
    redirect(ctx, v6, &dst, &pod);
    count(Counter::Redirected);
    if debug_enabled() {
        debug!(ctx, "redirected connect from netns {} to port {}", netns, dst.port);
    }
    ALLOW
}

/// The destination the application passed to `connect()`.
#[inline(always)]
fn destination(sa: *mut bpf_sock_addr, v6: bool) -> OrigDst {
    // SAFETY: context field reads, checked by the verifier.
    unsafe {
        let port = u16::from_be((*sa).user_port as u16);
        if v6 {
            let ip = read_ip6(&raw const (*sa).user_ip6);
            let family = if Endpoint::as_v4(&ip).is_some() { AF_INET } else { AF_INET6 };
            OrigDst { ip, port, family }
        } else {
            OrigDst { ip: Endpoint::mapped_v4((*sa).user_ip4), port, family: AF_INET }
        }
    }
}

/// Loopback and the pod's own addresses stay inside the pod: not captured.
#[inline(always)]
fn is_local(dst: &OrigDst, pod: &Enrolled) -> bool {
    match Endpoint::as_v4(&dst.ip) {
        Some(v4) => v4 & 0xff == 127 || (pod.ipv4 != 0 && v4 == pod.ipv4),
        None => dst.ip == LOOPBACK_V6 || dst.ip == pod.ipv6,
    }
}

/// Points the connect at the proxy's outbound listener on loopback, from the pod's own address,
/// bound here (its port still picked by the connect), so the app's local address stays its pod
/// IP. Every redirected connect of the pod goes to that one listener, so all of them share the
/// pod's ephemeral ports, whatever their destinations, and a connection the app closed first
/// holds its port in `TIME_WAIT`: 60 s, which would cap the pod at its range (28 232 ports) per
/// minute, except on loopback, whose ports the kernel's default `tcp_tw_reuse=2` takes again
/// after 1 s. A socket the app bound itself (its address, port or device), or a pod without an
/// address of the family, goes to the pod's own address (or loopback when it has none).
#[inline(always)]
fn redirect(ctx: &SockAddrContext, v6: bool, dst: &OrigDst, pod: &Enrolled) {
    let sa = ctx.sock_addr;
    let loopback = if !v6 || dst.family == AF_INET { Endpoint::mapped_v4(LOOPBACK_V4) } else { LOOPBACK_V6 };
    let target = match pod_address(v6, dst, pod) {
        Some(ip) if bound(sa, v6) || !bind_address(ctx, v6, &ip) => ip,
        _ => loopback,
    };
    // SAFETY: context field writes the verifier allows for connect hooks.
    unsafe {
        if v6 {
            write_ip6(&raw mut (*sa).user_ip6, &target);
        } else {
            (*sa).user_ip4 = Endpoint::as_v4(&target).unwrap_or(LOOPBACK_V4);
        }
        (*sa).user_port = u32::from(port::OUTBOUND.to_be());
    }
}

/// The pod's address of the connect's family, as the socket's family writes it.
#[inline(always)]
fn pod_address(v6: bool, dst: &OrigDst, pod: &Enrolled) -> Option<[u32; 4]> {
    if !v6 || dst.family == AF_INET {
        (pod.ipv4 != 0).then(|| Endpoint::mapped_v4(pod.ipv4))
    } else {
        (pod.ipv6 != [0; 4]).then_some(pod.ipv6)
    }
}

/// Whether the app bound the socket (an address, a port, or a device: one bound to its pod's
/// interface cannot reach loopback) before connecting.
#[inline(always)]
fn bound(sa: *mut bpf_sock_addr, v6: bool) -> bool {
    // SAFETY: context and socket field reads, checked by the verifier; `sk` tested for null.
    unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() {
            return true;
        }
        let address = if v6 { read_ip6(&raw const (*sk).src_ip6) != [0; 4] } else { (*sk).src_ip4 != 0 };
        address || (*sk).src_port != 0 || (*sk).bound_dev_if != 0
    }
}

/// `struct sockaddr_in`, for `bpf_bind`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

/// `struct sockaddr_in6`, for `bpf_bind`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

/// Binds the connecting socket to `ip` (v4-mapped for an IPv4 socket) with no port, as
/// `IP_BIND_ADDRESS_NO_PORT` would; false if the kernel refused.
#[inline(always)]
fn bind_address(ctx: &SockAddrContext, v6: bool, ip: &[u32; 4]) -> bool {
    // SAFETY: each address lives on this stack for the call, its size passed with it.
    unsafe {
        if v6 {
            let mut addr = SockaddrIn6 { family: AF_INET6, port: 0, flowinfo: 0, addr: *ip, scope_id: 0 };
            let len = size_of::<SockaddrIn6>() as i32;
            bpf_bind(ctx.sock_addr, (&raw mut addr).cast::<sockaddr>(), len) == 0
        } else {
            let Some(v4) = Endpoint::as_v4(ip) else { return false };
            let mut addr = SockaddrIn { family: AF_INET, port: 0, addr: v4, zero: [0; 8] };
            let len = size_of::<SockaddrIn>() as i32;
            bpf_bind(ctx.sock_addr, (&raw mut addr).cast::<sockaddr>(), len) == 0
        }
    }
}

/// Rewrites a redirected socket's peer back to what the application connected to.
#[inline(always)]
fn restore_peer(ctx: &SockAddrContext, v6: bool) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }).copied() else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: context field writes the verifier allows for getpeername hooks.
    unsafe {
        if v6 {
            write_ip6(&raw mut (*sa).user_ip6, &orig.ip);
        } else if let Some(v4) = Endpoint::as_v4(&orig.ip) {
            (*sa).user_ip4 = v4;
        } else {
            return;
        }
        (*sa).user_port = u32::from(orig.port.to_be());
    }
}
