//! The protocols Weft's processes speak to each other, numbered like Istio's so either side can
//! talk to Istio's: the xDS workload and authorization resources (control → ztunnel), the CA
//! service (ztunnel → control) and the ZDS pod handoff (agent → ztunnel). `.proto` files and the
//! code generated from them; conversions to domain types live with each consumer.
//!
//! The protocols arrive with the control, ztunnel and agent issues.
