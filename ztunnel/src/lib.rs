//! Weft's node proxy, one per node. Inputs: pods handed over by the agent (their netns fds),
//! configuration and certificates from the control plane, and the TCP connections the eBPF
//! datapath steers to its in-pod listeners. Outputs: mTLS + HBONE tunnels between nodes, plaintext
//! to the destination app, metrics and access logs. Non-goals: L7 routing (the waypoint).
//!
//! Built under the ztunnel issue; this crate holds its place in the workspace until then.
