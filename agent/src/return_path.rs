//! The return path of the node proxy's deliveries inside an enrolled pod. The proxy connects to
//! the app from the client's own address (`IP_TRANSPARENT`, marked
//! [`DELIVERY_MARK`]); the app's replies go to that address, which is not in the pod, so
//! without this path they would leave the pod in plaintext. Here, per address family the pod
//! has: a rule sends packets carrying [`DELIVERY_MARK`] to table [`delivery::TABLE`], whose
//! only route, `local default dev lo`, makes every address local, so the replies come back to
//! the proxy's socket over loopback. The app's accepted socket carries the mark because
//! `net.ipv4.tcp_fwmark_accept` (both families) copies the SYN's mark onto it; that switch is
//! set last, and the proxy reads it to know the path is complete. What the pod's kernel answers
//! for itself (a reset from a closed port, an ICMP error) carries the mark too, with
//! `net.ipv{4,6}.fwmark_reflect`: without it the proxy's connect to a closed port would wait out
//! its timeout for a reset sent to the client's address instead of failing at once. Nothing
//! else in the pod carries the mark (marks do not cross namespaces), so nothing else changes
//! route. Istio ambient installs the same rule and route (with iptables connmark, which also
//! marks the kernel's replies, instead of these switches).
use std::{fs::File, io, path::Path};

use weft_ebpf_common::{DELIVERY_MARK, delivery};

use crate::{
    datapath::PodAddrs,
    netlink::{NLM_F_ACK, Netlink, put_u32},
    podns,
};

/// The switches under a /proc: the network namespace of whoever opens them decides which one's.
/// Written through the host's /proc (`--proc-root`), since a container's own /proc/sys is
/// read-only. The reflecting one of each family the pod has first: the accepting one, last,
/// says the path is complete.
const FWMARK_ACCEPT: &str = "sys/net/ipv4/tcp_fwmark_accept";

fn fwmark_reflect(family: u8) -> &'static str {
    if family == AF_INET6 { "sys/net/ipv6/fwmark_reflect" } else { "sys/net/ipv4/fwmark_reflect" }
}

/// Installs the path in the pod whose namespace is `netns`, for the families of `addrs`;
/// `proc_root` is a writable /proc. Idempotent.
pub fn install(netns: &File, addrs: PodAddrs, proc_root: &Path) -> io::Result<()> {
    let switch = proc_root.join(FWMARK_ACCEPT);
    let proc_root = proc_root.to_owned();
    let families: Vec<u8> = [(addrs.ipv4.is_some(), AF_INET), (addrs.ipv6.is_some(), AF_INET6)]
        .into_iter()
        .filter_map(|(has, family)| has.then_some(family))
        .collect();
    podns::run_in(netns, move || {
        let netlink = Netlink::open(libc::NETLINK_ROUTE)?;
        for family in &families {
            change(&netlink, RTM_NEWRULE, CREATE, &rule(*family))?;
            change(&netlink, RTM_NEWROUTE, CREATE, &local_route(*family, RT_SCOPE_HOST))?;
        }
        for family in families {
            std::fs::write(proc_root.join(fwmark_reflect(family)), "1")?;
        }
        std::fs::write(switch, "1")
    })
}

/// Removes the path (the switch first, so a proxy starting meanwhile delivers from the pod's own
/// address). What is already gone is fine.
pub fn remove(netns: &File, proc_root: &Path) -> io::Result<()> {
    let switch = proc_root.join(FWMARK_ACCEPT);
    let proc_root = proc_root.to_owned();
    podns::run_in(netns, move || {
        std::fs::write(switch, "0")?;
        for family in [AF_INET, AF_INET6] {
            // A kernel without IPv6 has no such switch.
            match std::fs::write(proc_root.join(fwmark_reflect(family)), "0") {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        let netlink = Netlink::open(libc::NETLINK_ROUTE)?;
        for family in [AF_INET, AF_INET6] {
            change(&netlink, RTM_DELRULE, 0, &rule(family))?;
            change(&netlink, RTM_DELROUTE, 0, &local_route(family, RT_SCOPE_NOWHERE))?;
        }
        Ok(())
    })
}

// rtnetlink numbers (linux/rtnetlink.h, linux/fib_rules.h).
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
/// In a delete: any scope.
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_LOCAL: u8 = 2;
/// Loopback is interface 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// `fib_rule_hdr` + attributes: `fwmark DELIVERY_MARK/0xffffffff lookup TABLE pref PRIORITY`.
fn rule(family: u8) -> Vec<u8> {
    let mut body = vec![family, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
    put_u32(&mut body, FRA_PRIORITY, delivery::RULE_PRIORITY);
    put_u32(&mut body, FRA_FWMARK, DELIVERY_MARK);
    put_u32(&mut body, FRA_FWMASK, u32::MAX);
    put_u32(&mut body, FRA_TABLE, delivery::TABLE);
    body
}

/// `rtmsg` + attributes: `local default dev lo table TABLE`.
fn local_route(family: u8, scope: u8) -> Vec<u8> {
    let mut body = vec![family, 0, 0, 0, 0, RTPROT_STATIC, scope, RTN_LOCAL, 0, 0, 0, 0];
    put_u32(&mut body, RTA_TABLE, delivery::TABLE);
    put_u32(&mut body, RTA_OIF, LOOPBACK_IFINDEX);
    body
}

/// Sends one change and waits for its acknowledgement. Adding what exists or deleting what
/// does not is success.
fn change(netlink: &Netlink, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
    let reply = netlink.request(kind, NLM_F_ACK | flags, body)?;
    match reply.errno() {
        Some(0) => Ok(()),
        Some(libc::EEXIST) if flags & NLM_F_CREATE != 0 => Ok(()),
        Some(libc::ENOENT | libc::ESRCH) if flags & NLM_F_CREATE == 0 => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other("rtnetlink answered without an acknowledgement")),
    }
}
