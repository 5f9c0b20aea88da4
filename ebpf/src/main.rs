//! Weft's eBPF programs: capture of enrolled pods' TCP into the node proxy.
//!
//! - outbound ([`outbound`]): `cgroup/connect4|6` rewrite an enrolled pod's `connect()` to the
//!   proxy's listener in the pod (port 15001 on loopback, from the pod's address) and record
//!   the original destination by socket cookie; `cgroup/getpeername4|6` give the application
//!   its original peer back. The proxy's own connects pass, and its deliveries to the app from
//!   the client's address not bound to `lo` are recorded for [`inbound`].
//! - [`sockops`]: when a redirected connection is established, re-key its original destination
//!   by the client's address and port, which is what the proxy's accepted socket sees.
//! - [`listener`]: `cgroup/bind4|6` remember the proxy's binds of the inbound port; at their
//!   listen, [`sockops`] registers them as the pod's inbound listener for [`inbound`].
//! - [`orig_dst`]: `cgroup/getsockopt` answers `SO_ORIGINAL_DST` for the proxy, as netfilter
//!   would, so any transparent proxy (Istio's ztunnel too) runs on this capture unmodified.
//! - [`inbound`]: `sk_lookup`, attached per enrolled pod netns, steers new inbound TCP (except
//!   HBONE, and except what arrives over loopback, i.e. from the proxy itself) to the proxy's
//!   registered listener; with none registered the connection is refused (fail closed). What
//!   the node itself opened ([`node`]: the kubelet's probes) reaches the app directly.
//!
//! Entry points are thin, with a `try_` twin; the programs never panic. Where an internal error
//! would let an enrolled pod's traffic bypass the proxy, they refuse the connection instead.
#![no_std]
#![no_main]

mod ctx;
mod inbound;
mod listener;
mod maps;
mod node;
mod orig_dst;
mod outbound;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
