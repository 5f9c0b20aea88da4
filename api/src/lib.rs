//! The protocols Weft's processes speak to each other, numbered like Istio's so either side can
//! talk to Istio's: the ZDS pod handoff (agent → ztunnel, [`zds`]) and the certificate service
//! (ztunnel → control, [`ca`]), and delta xDS ([`discovery`]) carrying [`workload`] and
//! [`security`] resources (control → proxies), and Weft's own [`route`] and
//! [`http_authorization`] resources (control → waypoint); and OpenTelemetry's trace export
//! ([`otlp`], waypoint → a collector). `.proto` files live in `api/proto`; conversions
//! to domain types live with each consumer.

pub mod admin;
pub mod claims;
pub mod clock;
pub mod daemon;
pub mod enrollment;
pub mod hash;
pub mod hex;
#[cfg(feature = "kubernetes")]
pub mod watch;
pub mod zds;

/// `istio.v1.auth.IstioCertificateService`: messages and tonic client and server.
pub mod ca {
    tonic::include_proto!("istio.v1.auth");

    /// The metadata key naming the identity a node proxy asks a certificate for.
    pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
    /// The annotation on the CA's Secret by which an operator asks for a root rotation now
    /// (after a key compromise, say; `weftctl rotate-root`): any new value starts one, once
    /// none is under way.
    pub const ROTATE_ROOT: &str = "weft.dev/rotate-root";
}

/// Delta ADS (`envoy.service.discovery.v3`): messages and tonic client and server.
pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
}

/// `istio.workload`: workloads and services by address.
pub mod workload {
    tonic::include_proto!("istio.workload");

    /// The xDS type of [`Address`] resources.
    pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
}

/// `istio.security`: L4 authorization policies.
pub mod security {
    tonic::include_proto!("istio.security");

    /// The xDS type of [`Authorization`] resources.
    pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
}

/// `weft.route`: the HTTP routes a waypoint applies, per Service.
pub mod route {
    tonic::include_proto!("weft.route");

    /// The xDS type of [`ServiceRoutes`] resources.
    pub const ROUTES_TYPE: &str = "type.googleapis.com/weft.route.ServiceRoutes";
}

/// `weft.security`: the L7 authorization policies and the request authentication (JWT) a
/// waypoint enforces.
pub mod http_authorization {
    tonic::include_proto!("weft.security");

    /// The xDS type of [`HttpAuthorization`] resources.
    pub const HTTP_AUTHORIZATION_TYPE: &str = "type.googleapis.com/weft.security.HttpAuthorization";
    /// The xDS type of [`RequestAuthentication`] resources.
    pub const REQUEST_AUTHENTICATION_TYPE: &str = "type.googleapis.com/weft.security.RequestAuthentication";
}

/// OpenTelemetry's OTLP trace export (`opentelemetry.proto.collector.trace.v1.TraceService`):
/// the messages a waypoint sends a collector, and the tonic client (and server, for tests).
pub mod otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}
