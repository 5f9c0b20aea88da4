//! The protocols Weft's processes speak to each other, numbered like Istio's so either side can
//! talk to Istio's: so far the ZDS pod handoff (agent → ztunnel, [`zds`]); the xDS workload and
//! authorization resources and the CA service arrive with the control plane. `.proto` files
//! live in `api/proto`; conversions to domain types live with each consumer.

pub mod zds;
