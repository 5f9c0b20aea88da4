//! The Gateway API objects the control plane reads (`gateway.networking.k8s.io/v1`): Gateways,
//! whose class `weft-waypoint` makes them waypoints, and HTTPRoutes, GRPCRoutes ([`grpc`]) and
//! TCPRoutes ([`tcp`]),
//! which the waypoints apply ([`super::routes`]). Only the fields Weft uses are declared; unknown fields are ignored and
//! omitted ones take the Gateway API's defaults, so an object of a newer API release still
//! reads — one that failed to would stall the whole watch. Enumerations a newer release may
//! extend read unknown values as `Other`, for the conversion to refuse with a note.
//!
//! Declared like [`super::policy::AuthorizationPolicy`]: `kube::Resource` by the index's
//! `resource!` and serde, no schema, as Weft reads these CRDs and never installs them.
use std::time::Duration;

use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

/// The Gateway API's group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// A `Gateway`: a waypoint when its class is `weft-waypoint` ([`super::waypoint::CLASS`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: GatewaySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<GatewayStatus>,
}

/// What the Gateway's controller reports (the control plane, for waypoints).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GatewayStatus {
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

resource!(Gateway, GROUP, "v1", "Gateway", "gateways");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
}

/// Where a Gateway accepts connections (a waypoint's: HBONE on 15008).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub port: u32,
    pub protocol: String,
}

/// An `HTTPRoute`. Weft applies those attached to a Service (GAMMA), in its waypoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HttpRouteSpec,
}

resource!(HttpRoute, GROUP, "v1", "HTTPRoute", "httproutes");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentReference>,
    /// Ignored for routes attached to a Service, as GAMMA says.
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

/// What a route attaches to: a Gateway by default, a Service with `group: ""`, `kind: Service`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ParentReference {
    pub group: String,
    pub kind: String,
    /// Unset: the route's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// For a Service: the name of one of its ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// For a Service: one of its ports; unset, every port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

impl Default for ParentReference {
    fn default() -> Self {
        Self {
            group: GROUP.to_owned(),
            kind: "Gateway".to_owned(),
            namespace: None,
            name: String::new(),
            section_name: None,
            port: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRule {
    /// ORed; none: every request.
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
    pub timeouts: Option<HttpRouteTimeouts>,
    /// The experimental channel's (GEP-1731); the standard channel's CRD prunes it.
    pub retry: Option<HttpRouteRetry>,
}

/// Its conditions are ANDed; an omitted path is a prefix of `/`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteMatch {
    pub path: HttpPathMatch,
    pub headers: Vec<HttpValueMatch>,
    pub query_params: Vec<HttpValueMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpPathMatch {
    #[serde(rename = "type")]
    pub kind: PathMatchType,
    pub value: String,
}

impl Default for HttpPathMatch {
    fn default() -> Self {
        Self { kind: PathMatchType::PathPrefix, value: "/".to_owned() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
    /// No path condition: what a GRPCRoute match without a method amounts to ([`grpc`]); no
    /// HTTPRoute says it.
    #[serde(skip)]
    Any,
    /// A type this control plane does not know.
    #[serde(other)]
    Other,
}

/// A header (`HTTPHeaderMatch`) or query parameter (`HTTPQueryParamMatch`) match: same shape.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpValueMatch {
    #[serde(rename = "type")]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
    /// A type this control plane does not know.
    #[serde(other)]
    Other,
}

/// A filter; Weft applies the header modifiers, redirects, rewrites and mirrors and notes the
/// others as not applied.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`, `URLRewrite`, …
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<HttpRequestRedirect>,
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<HttpUrlRewrite>,
    pub request_mirror: Option<HttpRequestMirror>,
}

/// Sends a copy of the request to `backendRef`, for every request or a share of them
/// (`percent`, or `fraction`, from the experimental channel).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRequestMirror {
    pub backend_ref: HttpBackendRef,
    pub percent: Option<u32>,
    pub fraction: Option<Fraction>,
}

/// `numerator` in every `denominator` (100 unless set).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: Option<u32>,
}

/// Answers the request with a redirect instead of sending it on.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRequestRedirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<HttpPathModifier>,
    pub port: Option<u32>,
    pub status_code: Option<u32>,
}

/// Sends the request on with its host or path replaced.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpUrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<HttpPathModifier>,
}

/// `ReplaceFullPath` or `ReplacePrefixMatch`, with its value.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpPathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HeaderModifier {
    pub set: Vec<HttpHeader>,
    pub add: Vec<HttpHeader>,
    /// Header names.
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// Where matching requests go: a Service by default (`group: ""`, `kind: Service`), weight 1.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpBackendRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    /// Unset: the route's own.
    pub namespace: Option<String>,
    pub port: Option<u32>,
    pub weight: u32,
    /// Per-backend filters (the header modifiers are applied; others noted).
    pub filters: Vec<HttpRouteFilter>,
}

impl Default for HttpBackendRef {
    fn default() -> Self {
        Self {
            group: String::new(),
            kind: "Service".to_owned(),
            name: String::new(),
            namespace: None,
            port: None,
            weight: 1,
            filters: Vec::new(),
        }
    }
}

/// Gateway API durations ([`duration`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included.
    pub request: Option<String>,
    /// Each attempt at a backend.
    pub backend_request: Option<String>,
}

/// When a failed attempt is tried again (GEP-1731).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRetry {
    /// Response codes retried; none: the implementation's (503 for Istio and Weft).
    pub codes: Vec<u32>,
    /// Retries per request (not counting the first attempt); unset: the implementation's (2).
    pub attempts: Option<u32>,
    /// The least wait before a retry, a [`duration`].
    pub backoff: Option<String>,
}

/// Parses a Gateway API duration (GEP-2257): one to four numbers of at most five digits, each
/// followed by `h`, `m`, `s` or `ms` — `10s`, `500ms`, `1h30m`. `None` for anything else.
pub fn duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, length) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            match rest.as_bytes().first()? {
                b'h' => (Duration::from_secs(3600), 1),
                b'm' => (Duration::from_secs(60), 1),
                b's' => (Duration::from_secs(1), 1),
                _ => return None,
            }
        };
        rest = &rest[length..];
        total += unit * u32::try_from(value).ok()?;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

pub mod grpc;
pub mod tcp;
#[cfg(test)]
mod tests;
