//! The keys and values user space writes into the eBPF maps: an address written as a key is
//! the same address when read back, IPv4 as IPv4-mapped IPv6. Input: a byte (even: IPv4, the
//! first 4 address bytes), 16 address bytes, a 4-byte port.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use weft_ebpf_common::Endpoint;

fuzz_target!(|data: &[u8]| {
    let Some((&family, data)) = data.split_first() else { return };
    let Some((bytes, rest)) = data.split_first_chunk::<16>() else { return };
    let Some((port, _)) = rest.split_first_chunk::<4>() else { return };
    let port = u32::from_ne_bytes(*port);
    let ip = if family % 2 == 0 {
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
});
