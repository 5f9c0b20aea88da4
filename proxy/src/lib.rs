//! What Weft's two proxies are built of: the node proxy (`weft-ztunnel`) and the waypoint both
//! hold workload identities and their certificates ([`identity`]), speak mutual TLS bound to them
//! ([`tls`]) and HBONE — HTTP/2 CONNECT over that TLS — as client and server ([`hbone`], with the
//! byte relay of [`relay`]), keep the workload, service and policy index ([`state`]) fed by the
//! delta xDS client ([`xds`]) over the control-plane connection ([`control`]), decide
//! authorization with Istio's semantics ([`authz`]) and count what they hold open ([`census`]);
//! a request's place in a trace is read and passed on by [`trace_context`]; [`allocator`] gives
//! freed memory back to the kernel. Inputs: the control plane's (or istiod's) CA and xDS.
//! Non-goals: capture and in-pod listeners (the node proxy's), HTTP routing (the waypoint's).

pub mod allocator;
pub mod authz;
pub mod census;
pub mod control;
pub mod hbone;
pub mod identity;
pub mod relay;
pub mod state;
pub mod tls;
pub mod trace_context;
pub mod xds;
