//! Weft's control plane. Inputs: the Kubernetes API (namespaces, pods, services) and
//! certificate signing requests from node proxies. Outputs: workload and service resources over
//! delta xDS, and signed workload certificates. Non-goals: touching the datapath (agents and
//! proxies do).
//!
//! [`index`] turns Kubernetes objects into versioned snapshots of xDS resources; [`xds`] streams
//! them to node proxies and waypoints; [`ca`] is the mesh CA (a root and an intermediate kept in
//! a Secret, replaced in time, a trust bundle, and Istio's certificate service, which signs a
//! node proxy only identities that have a running pod on its node, and a waypoint only its
//! own); [`serving`] is the TLS
//! listener both are served on, with a certificate that follows the CA; [`waypoints`] deploys a
//! waypoint for every Gateway of class `weft-waypoint`; [`route_status`] reports on each
//! HTTPRoute attached to a Service what became of it, [`policy_status`] on each traffic policy.

pub mod ca;
pub mod index;
pub mod metrics;
pub mod policy_status;
pub mod route_status;
pub mod serving;
pub mod waypoints;
pub mod xds;
