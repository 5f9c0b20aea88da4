//! The node's own connections: attached to the cgroup of the node's processes (the kubelet
//! among them), records every TCP connection opened from the node's network namespace just
//! before its SYN leaves, so inbound capture ([`crate::inbound`]) can let the kubelet's probes
//! reach the app. Only a socket of the node itself can write an entry: a pod's socket is in
//! the pod's network namespace, and what another node sends is forwarded, not opened here.
use aya_ebpf::{EbpfContext, helpers::bpf_get_netns_cookie, macros::sock_ops, programs::SockOpsContext};
use weft_ebpf_common::{Connection, Endpoint, Opener};

use crate::{
    ctx::read_ip6,
    maps::{DIRECT, NODE},
};

/// `BPF_SOCK_OPS_TCP_CONNECT_CB`: an active open about to send its SYN (its local port chosen).
const TCP_CONNECT: u32 = 3;
const AF_INET: u32 = 2;
/// sock_ops programs' only verdict.
const DONE: u32 = 1;

#[sock_ops]
pub fn weft_node_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == TCP_CONNECT {
        record(&ctx);
    }
    DONE
}

#[inline(always)]
fn record(ctx: &SockOpsContext) {
    let node = NODE.get(0).copied().unwrap_or(0);
    // SAFETY: the helper only reads the socket's namespace.
    if node == 0 || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != node {
        return;
    }
    let (client, server) = if ctx.family() == AF_INET {
        (Endpoint::mapped_v4(ctx.local_ip4()), Endpoint::mapped_v4(ctx.remote_ip4()))
    } else {
        // SAFETY: the kernel's context pointer; word reads at constant offsets.
        unsafe { (read_ip6(&raw const (*ctx.ops).local_ip6), read_ip6(&raw const (*ctx.ops).remote_ip6)) }
    };
    // The remote port is the socket's big-endian port in the field's upper half.
    let server_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    let connection = Connection {
        client: Endpoint { ip: client, port: ctx.local_port() },
        server: Endpoint { ip: server, port: u32::from(server_port) },
    };
    // Full or not, the connection goes on: at worst a probe is steered to the proxy as before.
    let _ = DIRECT.insert(&connection, &(Opener::Node as u8), 0);
}
