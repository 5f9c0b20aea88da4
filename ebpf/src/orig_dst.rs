//! `SO_ORIGINAL_DST` for the proxy, answered the way netfilter would: on the outbound port, the
//! destination the client asked for (and nothing when none was recorded); on any other port
//! (inbound capture keeps the destination address), the socket's own local address. Only when
//! the kernel had no answer.
use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use weft_ebpf_common::{AF_INET, Counter, Endpoint, OrigDst, port};

use crate::{
    ctx::read_ip6,
    maps::{ORIG_BY_PEER, count},
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const SO_ORIGINAL_DST: i32 = 80;
const AF_INET_U32: u32 = 2;
/// getsockopt programs must return 1; the answer goes in the context.
const OK: i32 = 1;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

#[cgroup_sockopt(getsockopt)]
pub fn weft_getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: context reads and writes, checked by the verifier, and bounds-checked stores into
    // the kernel's option buffer.
    unsafe { try_getsockopt(&ctx) };
    OK
}

#[inline(always)]
unsafe fn try_getsockopt(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY (whole body): see the caller.
    unsafe {
        let level = (*so).level;
        if (*so).optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) || (*so).retval == 0 {
            return;
        }
        let sk = (*so).__bindgen_anon_1.sk;
        if sk.is_null() {
            return;
        }
        let v4_socket = (*sk).family == AF_INET_U32;
        let local_port = (*sk).src_port as u16;
        let orig = if local_port == port::OUTBOUND {
            // Outbound capture: only a recorded destination will do. Without one (a connection
            // made straight to this port) the kernel's error stands; answering the local
            // address would send the proxy to itself.
            let peer_ip = if v4_socket {
                Endpoint::mapped_v4((*sk).dst_ip4)
            } else {
                read_ip6(&raw const (*sk).dst_ip6)
            };
            let peer = Endpoint { ip: peer_ip, port: u32::from(u16::from_be((*sk).dst_port)) };
            match ORIG_BY_PEER.get(&peer) {
                Some(orig) => *orig,
                None => return,
            }
        } else {
            // Inbound capture keeps the destination: it is the socket's local address.
            let ip = if v4_socket {
                Endpoint::mapped_v4((*sk).src_ip4)
            } else {
                read_ip6(&raw const (*sk).src_ip6)
            };
            let family = if Endpoint::as_v4(&ip).is_some() { AF_INET } else { weft_ebpf_common::AF_INET6 };
            OrigDst { ip, port: local_port, family }
        };
        let start = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        let written = if level == SOL_IP {
            let Some(v4) = Endpoint::as_v4(&orig.ip) else { return };
            if start.add(SOCKADDR_IN_LEN) > end {
                return;
            }
            write_sockaddr_in(start, v4, orig.port);
            SOCKADDR_IN_LEN
        } else {
            if start.add(SOCKADDR_IN6_LEN) > end {
                return;
            }
            write_sockaddr_in6(start, &orig.ip, orig.port);
            SOCKADDR_IN6_LEN
        };
        (*so).optlen = written as i32;
        (*so).retval = 0;
    }
    count(Counter::OrigDstAnswered);
}

/// `struct sockaddr_in`: family (host order), port (network order), address, zero padding.
#[inline(always)]
unsafe fn write_sockaddr_in(at: *mut u8, ip: u32, port: u16) {
    // SAFETY: the caller checked 16 bytes are in bounds.
    unsafe {
        (at as *mut u16).write_unaligned(AF_INET);
        (at.add(2) as *mut u16).write_unaligned(port.to_be());
        (at.add(4) as *mut u32).write_unaligned(ip);
        (at.add(8) as *mut u64).write_unaligned(0);
    }
}

/// `struct sockaddr_in6`: family, port, flowinfo 0, address, scope id 0.
#[inline(always)]
unsafe fn write_sockaddr_in6(at: *mut u8, ip: &[u32; 4], port: u16) {
    // SAFETY: the caller checked 28 bytes are in bounds.
    unsafe {
        (at as *mut u16).write_unaligned(weft_ebpf_common::AF_INET6);
        (at.add(2) as *mut u16).write_unaligned(port.to_be());
        (at.add(4) as *mut u32).write_unaligned(0);
        let mut i = 0;
        while i < 4 {
            (at.add(8 + 4 * i) as *mut u32).write_unaligned(ip[i]);
            i += 1;
        }
        (at.add(24) as *mut u32).write_unaligned(0);
    }
}
