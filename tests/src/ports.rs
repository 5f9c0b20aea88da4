//! Loopback ports for the daemons the harness starts, chosen below the kernel's ephemeral range:
//! a port found by binding port 0 is an ephemeral one, which any outgoing connection on the
//! machine may take before the daemon binds it (istiod once lost `127.0.0.1:41947` so, beside
//! the other tests' clusters).
use std::net::{Ipv4Addr, TcpListener};

/// The lowest port chosen.
const LOWEST: u16 = 10_000;

/// `N` distinct loopback ports free now, at random between [`LOWEST`] and the start of the
/// ephemeral range; each was bound and held until all were chosen.
pub fn free_loopback_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let ephemeral = ephemeral_start().unwrap_or(32_768).max(LOWEST + 1);
    let mut held = Vec::with_capacity(N);
    for _ in 0..1000 {
        if held.len() == N {
            break;
        }
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, fastrand::u16(LOWEST..ephemeral))) {
            held.push(listener);
        }
    }
    let ports: Vec<u16> =
        held.iter().map(|listener| listener.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
    ports.try_into().map_err(|_| anyhow::anyhow!("no {N} free loopback ports below {ephemeral}"))
}

/// The first port of `ip_local_port_range`.
fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports: [u16; 6] = free_loopback_ports().unwrap();
        let start = ephemeral_start().context("this kernel's ephemeral range").unwrap();
        for port in ports {
            assert!((LOWEST..start).contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
    }
}
