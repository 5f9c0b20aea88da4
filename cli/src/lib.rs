//! `weftctl`, the bundled CLI. Inputs: the control plane's and the nodes' HTTP endpoints
//! (`/config_dump`, `/metrics`, `/healthz/ready`) and the Kubernetes API. Outputs: tables (or
//! JSON/YAML) of the mesh's status, workloads, services and certificates, a per-pod check that
//! says why a pod is or is not in the mesh, and the enrollment label set or removed.
//!
//! [`endpoint`] reaches the endpoints (directly, in another network namespace for the local
//! demo, or through the API server's proxy in a cluster); [`report`] gathers and shapes what
//! they say; [`output`] prints it.

pub mod endpoint;
pub mod output;
pub mod report;
