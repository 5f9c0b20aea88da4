//! `GRPCRoute`s, read as the HTTPRoutes they amount to: a gRPC call is an HTTP/2 POST to
//! `/<service>/<method>`, so a method match is a path match, and the rest of a GRPCRoute (header
//! matches, header modifiers, weighted backends) has an HTTPRoute's shape. One compiler
//! ([`super::super::routes`]) then serves both kinds, and a waypoint needs nothing gRPC-specific
//! to route calls.
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::{
    GROUP, HttpBackendRef, HttpPathMatch, HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
    HttpRouteSpec, HttpValueMatch, ParentReference, PathMatchType, ValueMatchType,
};

/// A `GRPCRoute` (`gateway.networking.k8s.io/v1`). Weft applies those attached to a Service
/// (GAMMA), in its waypoint, like HTTPRoutes.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GrpcRouteSpec,
}

resource!(GrpcRoute, GROUP, "v1", "GRPCRoute", "grpcroutes");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    /// Ignored for routes attached to a Service, as GAMMA says.
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteRule {
    /// ORed; none: every call.
    pub matches: Vec<GrpcRouteMatch>,
    /// An HTTPRoute filter's shape: `RequestHeaderModifier`, `ResponseHeaderModifier`,
    /// `RequestMirror`, `ExtensionRef`.
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
}

/// Its conditions are ANDed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GrpcRouteMatch {
    /// None: every method of every service.
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HttpValueMatch>,
}

/// A service, a method or both (the CRD requires one), matched exactly or as regular
/// expressions; an unset one matches any.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GrpcMethodMatch {
    #[serde(rename = "type")]
    pub kind: ValueMatchType,
    pub service: Option<String>,
    pub method: Option<String>,
}

impl GrpcRoute {
    /// The HTTPRoute this route amounts to, with the same metadata.
    pub fn as_http(&self) -> HttpRoute {
        let rules = self.spec.rules.iter().map(|rule| HttpRouteRule {
            // A rule without matches matches every call, ranked below every method match
            // (HTTPRoute's would be a path prefix of `/`, which outranks a method's pattern).
            matches: if rule.matches.is_empty() {
                vec![GrpcRouteMatch::default().as_http()]
            } else {
                rule.matches.iter().map(GrpcRouteMatch::as_http).collect()
            },
            filters: rule.filters.clone(),
            backend_refs: rule.backend_refs.clone(),
            ..HttpRouteRule::default()
        });
        HttpRoute {
            metadata: self.metadata.clone(),
            spec: HttpRouteSpec {
                parent_refs: self.spec.parent_refs.clone(),
                hostnames: self.spec.hostnames.clone(),
                rules: rules.collect(),
            },
        }
    }
}

impl GrpcRouteMatch {
    fn as_http(&self) -> HttpRouteMatch {
        HttpRouteMatch {
            path: self.method.as_ref().map_or(
                HttpPathMatch { kind: PathMatchType::Any, value: String::new() },
                GrpcMethodMatch::path,
            ),
            headers: self.headers.clone(),
            ..HttpRouteMatch::default()
        }
    }
}

impl GrpcMethodMatch {
    /// The path of the calls it matches, `/<service>/<method>`, as Istio makes it: exact when
    /// both are given exactly, a prefix for a service alone, else a regular expression in which
    /// an unset part is any one segment. The waypoint's precedence then ranks them as the
    /// GRPCRoute's does: both, then the service, then the method.
    fn path(&self) -> HttpPathMatch {
        let (service, method) = (self.service.as_deref(), self.method.as_deref());
        let (kind, value) = match self.kind {
            ValueMatchType::Exact => match (service, method) {
                (Some(service), Some(method)) => (PathMatchType::Exact, format!("/{service}/{method}")),
                (Some(service), None) => (PathMatchType::PathPrefix, format!("/{service}")),
                (None, Some(method)) => {
                    (PathMatchType::RegularExpression, format!("/{ANY}/{}", regex::escape(method)))
                }
                // The CRD asks for one of them; none is no condition.
                (None, None) => (PathMatchType::Any, String::new()),
            },
            ValueMatchType::RegularExpression => {
                let part =
                    |part: Option<&str>| part.map_or_else(|| ANY.to_owned(), |part| format!("(?:{part})"));
                (PathMatchType::RegularExpression, format!("/{}/{}", part(service), part(method)))
            }
            // Read as a path match of a type not known, which the compiler refuses with a note.
            ValueMatchType::Other => (PathMatchType::Other, String::new()),
        };
        HttpPathMatch { kind, value }
    }
}

/// A service or method name left unset: any one path segment.
const ANY: &str = "[^/]+";
