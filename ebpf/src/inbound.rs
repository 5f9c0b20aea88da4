//! Inbound capture, attached to each enrolled pod's netns: new TCP connections to the pod go
//! to the proxy's registered listener, keeping their destination address and port, except
//! HBONE (the proxy's own tunnel port), what the pod sends itself (over loopback, or from its
//! own address: the app calling itself, or the proxy delivering to the app), the proxy's
//! deliveries from the client's address (over loopback when bound to `lo`, else recorded by
//! [`crate::outbound`]), and what the node itself opened (the kubelet's probes, recorded by
//! [`crate::node`]), as Istio ambient exempts them. No listener registered: refused (fail
//! closed).
use aya_ebpf::{
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use weft_ebpf_common::{AF_INET, Connection, Counter, Endpoint, Opener, port};

use aya_log_ebpf::debug;

use crate::{
    ctx::read_ip6,
    maps::{DIRECT, LISTENERS, count, debug_enabled},
};

const IPPROTO_TCP: u32 = 6;
/// Loopback is always interface 1 in a network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// `BPF_SK_LOOKUP_F_NO_REUSEPORT`: the registered socket itself, not whichever member of its
/// `SO_REUSEPORT` group the kernel would pick. Anything of the proxy's user can join that group
/// (an app in the pod running as the same user, or the proxy being replaced); the registered
/// listener is the newest trusted proxy's.
const NO_REUSEPORT: u64 = 1 << 1;

#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    try_sk_lookup(&ctx)
}

#[inline(always)]
fn try_sk_lookup(ctx: &SkLookupContext) -> u32 {
    let lookup = ctx.lookup;
    // SAFETY: context field reads, checked by the verifier.
    let (protocol, ifindex, local_port, family) =
        unsafe { ((*lookup).protocol, (*lookup).ingress_ifindex, (*lookup).local_port, (*lookup).family) };
    if protocol != IPPROTO_TCP || ifindex == LOOPBACK_IFINDEX || local_port == u32::from(port::HBONE) {
        return SK_PASS;
    }
    // SAFETY: as above.
    let (local, remote) = unsafe {
        if family == u32::from(AF_INET) {
            (Endpoint::mapped_v4((*lookup).local_ip4), Endpoint::mapped_v4((*lookup).remote_ip4))
        } else {
            (read_ip6(&raw const (*lookup).local_ip6), read_ip6(&raw const (*lookup).remote_ip6))
        }
    };
    // From the pod's own address: the pod talking to itself, or the proxy delivering to the app.
    // (Traffic to the pod's own address travels over loopback but reports the address's
    // interface, so the ifindex test alone does not catch it.)
    if local == remote {
        return SK_PASS;
    }
    // SAFETY: context field reads, checked by the verifier.
    let remote_port = unsafe { u16::from_be((*lookup).remote_port) };
    let connection = Connection {
        client: Endpoint { ip: remote, port: u32::from(remote_port) },
        server: Endpoint { ip: local, port: local_port },
    };
    // SAFETY: a read-only lookup; the value is copied out at once.
    if let Some(opener) = unsafe { DIRECT.get(&connection) }.copied() {
        // One use: a later connection that happens to reuse the 4-tuple (traffic another node
        // sent, masqueraded to this node's address) must not find it.
        let _ = DIRECT.remove(&connection);
        count(if opener == Opener::Proxy as u8 { Counter::InboundFromProxy } else { Counter::InboundFromNode });
        return SK_PASS;
    }
    let key = Endpoint { ip: local, port: 0 };
    // SAFETY: see the declaration of LISTENERS; no other reference to it is alive here.
    let listeners = unsafe { &mut *(&raw mut LISTENERS) };
    if listeners.redirect_sk_lookup(ctx, key, NO_REUSEPORT).is_ok() {
        count(Counter::InboundSteered);
        SK_PASS
    } else {
        count(Counter::InboundRefused);
        if debug_enabled() {
            debug!(ctx, "refused inbound to port {}: no proxy listener", local_port);
        }
        SK_DROP
    }
}
