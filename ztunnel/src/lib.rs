//! Weft's node proxy, one per node. Inputs: pods handed over by the agent (their netns fds),
//! configuration and certificates from the control plane, and the TCP connections the eBPF
//! datapath steers to its in-pod listeners. Outputs: mTLS + HBONE tunnels between nodes, plaintext
//! to the destination app, metrics and access logs. Non-goals: L7 routing (the waypoint).
//!
//! Built in steps. Here so far: workload identities and their certificates ([`identity`]),
//! mutual TLS bound to them ([`tls`]), HBONE — HTTP/2 CONNECT over that TLS — with its client,
//! server and byte relay ([`hbone`]), the per-pod listeners and what they do ([`proxy`]), pods
//! handed over by the agent ([`inpod`]), L4 authorization ([`authz`]), the workload, service
//! and policy index ([`state`]) kept by
//! the delta xDS client ([`xds`]) or read from a local file, the control-plane connection
//! ([`control`]), and the process wiring ([`app`]).

pub mod app;
pub mod authz;
pub mod control;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod rlimit;
pub mod state;
pub mod tls;
pub mod xds;
