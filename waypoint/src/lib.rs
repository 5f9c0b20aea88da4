//! Weft's waypoint: the optional L7 proxy for the Services that opt in
//! (`weft.dev/use-waypoint`). Node proxies send it their clients' connections to such a Service
//! over HBONE; it terminates HBONE with its own identity, reads the HTTP inside, picks a route
//! ([`route`]: the Gateway API HTTPRoutes attached to the Service, compiled by the control plane)
//! and a backend endpoint, and tunnels the request on over HBONE with its own identity.
//! Inputs: HBONE connections on 15008, configuration and its certificate from the control
//! plane. Non-goals: capture (it is not in the mesh's capture; it listens itself).

pub mod route;
