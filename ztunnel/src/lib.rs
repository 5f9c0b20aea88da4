//! Weft's node proxy, one per node. Inputs: pods handed over by the agent (their netns fds),
//! configuration and certificates from the control plane, and the TCP connections the eBPF
//! datapath steers to its in-pod listeners. Outputs: mTLS + HBONE tunnels between nodes, plaintext
//! to the destination app, metrics and access logs. Non-goals: L7 routing (the waypoint).
//!
//! Identities, mutual TLS, HBONE, the xDS client and its index, and authorization are
//! `weft-proxy`'s, shared with the waypoint. Here: the per-pod listeners and what they do
//! ([`proxy`]), pods handed over by the agent ([`inpod`]), connection metrics ([`metrics`]) and
//! the process wiring ([`app`]).

pub mod app;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod rlimit;
