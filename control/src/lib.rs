//! Weft's control plane. Inputs: the Kubernetes API (namespaces, pods, services, service accounts,
//! nodes, Weft's CRDs) and certificate signing requests from node proxies. Outputs: per-node
//! workload, service and policy snapshots over delta xDS, and signed workload certificates.
//! Non-goals: touching the datapath (agents and proxies do).
//!
//! Built under the control issue; this crate holds its place in the workspace until then.
