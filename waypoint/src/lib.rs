//! Weft's waypoint: the optional L7 proxy for the Services and workloads that opt in
//! (`weft.dev/use-waypoint`). Node proxies send it their clients' connections to them over
//! HBONE; it terminates HBONE with its own identity ([`inbound`]), reads the HTTP inside (what
//! is not HTTP it relays at L4),
//! makes its target canonical ([`normalize`]), verifies its JWT by the RequestAuthentications that target the Service or
//! the waypoint ([`authn`], [`jwt`]), decides it by the AuthorizationPolicies that do ([`authz`]),
//! picks a route ([`route`]: the Gateway API HTTPRoutes attached to the Service), a backend and
//! one of its endpoints (the least loaded: [`balance`]), and tunnels the request on over HBONE with its own identity
//! ([`forward`]), trying a failed attempt again within a budget ([`retry`]), counting it ([`metrics`]) and, when a collector is configured, tracing it ([`trace`]);
//! a rate limit or an injected fault may answer or delay it first ([`traffic`]). Routes and policies come compiled from the control
//! plane ([`table`]); [`app`] wires the process, whose connections run on [`workers`], a
//! connection whole on one thread.
//! Inputs: HBONE connections on 15008, configuration and its certificate from the control
//! plane. Non-goals: capture (the waypoint is not captured; it listens itself).

pub mod app;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod breaker;
pub mod connections;
pub mod forward;
pub mod inbound;
pub mod jwt;
pub mod metrics;
pub mod normalize;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod table;
pub mod trace;
pub mod traffic;
pub mod workers;
