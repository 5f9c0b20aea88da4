//! The protocols Weft's processes speak to each other, numbered like Istio's so either side can
//! talk to Istio's: the ZDS pod handoff (agent → ztunnel, [`zds`]) and the certificate service
//! (ztunnel → control, [`ca`]); the xDS workload and authorization resources come next. `.proto`
//! files live in `api/proto`; conversions to domain types live with each consumer.

pub mod zds;

/// `istio.v1.auth.IstioCertificateService`: messages and tonic client and server.
pub mod ca {
    tonic::include_proto!("istio.v1.auth");

    /// The metadata key naming the identity a node proxy asks a certificate for.
    pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
}
