//! Weft's node proxy, one per node. Inputs: pods handed over by the agent (their netns fds),
//! configuration and certificates from the control plane, and the TCP connections the eBPF
//! datapath steers to its in-pod listeners. Outputs: mTLS + HBONE tunnels between nodes, plaintext
//! to the destination app, metrics and access logs. Non-goals: L7 routing (the waypoint).
//!
//! Built in steps. Here so far: workload identities ([`identity`]), mutual TLS bound to them
//! ([`tls`]), and HBONE — HTTP/2 CONNECT over that TLS — with its client, server and byte relay
//! ([`hbone`]).

pub mod hbone;
pub mod identity;
pub mod tls;
