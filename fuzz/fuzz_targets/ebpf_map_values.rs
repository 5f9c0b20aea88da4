//! The keys and values user space writes into the eBPF maps: an address written as a key is
//! the same address when read back, IPv4 as IPv4-mapped IPv6; a pod's addresses written into
//! the enrollment map are the addresses the programs read (an unspecified one reads as none,
//! which is what the programs take it for). Input: a byte (bit 0 clear: the key's address is
//! IPv4, the first 4 address bytes; bit 1: the pod has the IPv4 address of the port's bytes;
//! bit 2: the pod has the IPv6 address of the 16 bytes), 16 address bytes, a 4-byte port.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use weft_ebpf_common::{Endpoint, Enrolled};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let Some((bytes, rest)) = data.split_first_chunk::<16>() else { return };
    let Some((port_bytes, _)) = rest.split_first_chunk::<4>() else { return };
    let port = u32::from_ne_bytes(*port_bytes);
    let ip = if flags & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    };
    let key = Endpoint::from_ip(ip, port);
    assert_eq!(key.port, port);
    // The key's words, network byte order, are the address's bytes.
    let written: Vec<u8> = key.ip.iter().flat_map(|word| word.to_ne_bytes()).collect();
    let mapped = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    assert_eq!(written, mapped.octets(), "{ip} is written as {mapped}");
    let v4 = Endpoint::as_v4(&key.ip).map(|word| Ipv4Addr::from(word.to_ne_bytes()));
    assert_eq!(v4, mapped.to_ipv4_mapped(), "IPv4 is read back from the mapped form only");

    let pod_v4 = (flags & 2 != 0).then(|| Ipv4Addr::from(*port_bytes));
    let pod_v6 = (flags & 4 != 0).then(|| Ipv6Addr::from(*bytes));
    let value = Enrolled::new(pod_v4, pod_v6);
    // What the programs compare a destination with: the IPv4 word as a socket holds it, the
    // IPv6 words as an Endpoint key holds them.
    assert_eq!(value.ipv4.to_ne_bytes(), pod_v4.map_or([0; 4], |v4| v4.octets()));
    assert_eq!(value.ipv6, pod_v6.map_or([0; 4], |v6| Endpoint::from_ip(IpAddr::V6(v6), 0).ip));
    let read = (pod_v4.filter(|v4| !v4.is_unspecified()), pod_v6.filter(|v6| !v6.is_unspecified()));
    assert_eq!(value.addresses(), read, "the pod's addresses are read back as written");
});
