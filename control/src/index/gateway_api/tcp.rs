//! `TCPRoute`s (`gateway.networking.k8s.io/v1`, one rule of weighted backends), read as the
//! HTTPRoute they amount to — one rule without matches — so one compiler
//! ([`super::super::routes`]) serves every kind. Attached to a Service port, a TCPRoute makes
//! that port TCP for its waypoint: every connection on it is relayed at L4 to a backend by
//! weight, HTTP or not, as Istio's waypoint treats a port with a TCPRoute.
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::{GROUP, HttpBackendRef, HttpRoute, HttpRouteRule, HttpRouteSpec, ParentReference};

/// A `TCPRoute`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TcpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TcpRouteSpec,
}

resource!(TcpRoute, GROUP, "v1", "TCPRoute", "tcproutes");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    /// Exactly one in `v1` (the CRD says so).
    pub rules: Vec<TcpRouteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRouteRule {
    /// A backend reference's shape is HTTPRoute's, without filters.
    pub backend_refs: Vec<HttpBackendRef>,
}

impl TcpRoute {
    /// The HTTPRoute it amounts to: each rule matches every connection.
    pub fn as_http(&self) -> HttpRoute {
        let rules = self.spec.rules.iter().map(|rule| HttpRouteRule {
            backend_refs: rule.backend_refs.clone(),
            ..HttpRouteRule::default()
        });
        HttpRoute {
            metadata: self.metadata.clone(),
            spec: HttpRouteSpec {
                parent_refs: self.spec.parent_refs.clone(),
                hostnames: Vec::new(),
                rules: rules.collect(),
            },
        }
    }
}
