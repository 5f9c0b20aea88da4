//! Weft's node agent. It decides which of its node's pods are enrolled in the mesh, loads and pins
//! the eBPF datapath that steers their traffic, and hands each pod's network namespace to the
//! node proxy (ztunnel). Inputs: the Kubernetes API (its node's pods, namespace labels) and the
//! node's cgroup and netns layout. Outputs: eBPF maps and links, pod handoffs to ztunnel, status.
//! Non-goals: proxying traffic (ztunnel) and deciding policy (the control plane).

pub mod cgroups;
pub mod datapath;
pub mod enrollment;
pub mod handoff;
pub mod handover;
pub mod netlink;
pub mod node;
pub mod podns;
pub mod proxy_cgroup;
pub mod removal;
pub mod return_path;
pub mod sockets;
pub mod status;
