//! The node's own connections: attached to the cgroup of the node's processes (the kubelet
//! among them), records every TCP connection opened from the node's network namespace just
//! before its SYN leaves, so inbound capture ([`crate::inbound`]) can let the kubelet's probes
//! reach the app. Only a socket of the node itself can write an entry: a pod's socket is in
//! the pod's network namespace, and what another node sends is forwarded, not opened here.
use aya_ebpf::{EbpfContext, helpers::bpf_get_netns_cookie, macros::sock_ops, programs::SockOpsContext};
use weft_ebpf_common::Opener;

use crate::{
    maps::{DIRECT, NODE},
    sockops::{DONE, TCP_CONNECT, connection},
};

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
    // Full or not, the connection goes on: at worst a probe is steered to the proxy as before.
    let _ = DIRECT.insert(&connection(ctx), &(Opener::Node as u8), 0);
}
