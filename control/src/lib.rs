//! Weft's control plane. Inputs: the Kubernetes API (namespaces, pods, services, service accounts,
//! nodes, Weft's CRDs) and certificate signing requests from node proxies. Outputs: per-node
//! workload, service and policy snapshots over delta xDS, and signed workload certificates.
//! Non-goals: touching the datapath (agents and proxies do).
//!
//! Built in steps. Here so far: the mesh CA ([`ca`]): a root and an intermediate kept in a
//! Secret, and Istio's certificate service, which signs only for identities that have a running
//! pod on the calling node proxy's node.

pub mod ca;
