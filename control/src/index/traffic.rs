//! Weft's traffic policies (`networking.weft.dev/v1alpha1`): `FaultInjectionPolicy` and
//! `RateLimitPolicy`, attached with `targetRefs` (Gateway API policy attachment, GEP-713) to a
//! Service, an HTTPRoute or GRPCRoute attached to one, or a waypoint (its Gateway), all in the
//! policy's namespace. Waypoints apply them, so a target is only accepted where one stands:
//! a Service behind a waypoint, a route of such a Service, a Gateway of class `weft-waypoint`.
//! `CircuitBreakerPolicy` and `LoadBalancerPolicy` are a backend's: they target Services, with
//! or without a waypoint of their own, and apply to what any waypoint sends their endpoints.
//!
//! Per kind of policy, the most specific attachment wins (a route's over its Service's over its
//! waypoint's), and of two attached to one target, the older (creation time, then
//! `namespace/name`) — the other's status says `Accepted: False`, reason `Conflicted`. The
//! outcome goes into the Services' `weft.route.ServiceRoutes` resources ([`apply`]): each
//! carries the policies its requests get when no route takes them, each route those of its
//! requests; the waypoint decides nothing about precedence.
use std::collections::{BTreeMap, HashMap};

use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use weft_api::route as api;

use super::{RouteKind, RouteStatus, Verdict, gateway_api, waypoint::Waypoints};

/// The group of Weft's traffic policies.
pub const GROUP: &str = "networking.weft.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// Declares a traffic policy: its object (`metadata`, and `spec` of the given type), its
/// `kube::Resource`, and how it is read (`$convert` makes what waypoints get of its spec,
/// `$variant` names it in [`Converted`] and [`PolicyKind`]).
macro_rules! policy {
    ($(#[$doc:meta])* $type:ident, $spec:ty, $kind:literal, $plural:literal, $convert:ident, $variant:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize, Serialize)]
        pub struct $type {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
        }

        resource!($type, GROUP, VERSION, $kind, $plural);

        impl<'a> From<&'a $type> for Read<'a> {
            fn from(policy: &'a $type) -> Self {
                Self {
                    metadata: &policy.metadata,
                    targets: &policy.spec.target_refs,
                    converted: $convert(&key(&policy.metadata), &policy.spec).map(Converted::$variant),
                    kind: PolicyKind::$variant,
                }
            }
        }
    };
}

/// What a policy attaches to: a Service (`group: ""`), or an HTTPRoute, GRPCRoute or Gateway
/// (`gateway.networking.k8s.io`), by name in the policy's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// Istio's share of requests: a percentage, fractions allowed.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Percent {
    pub value: f64,
}

policy! {
    /// A `FaultInjectionPolicy`: Istio's HTTP fault injection (a VirtualService's `fault`), as a
    /// policy of its own.
    FaultInjectionPolicy, FaultInjectionSpec, "FaultInjectionPolicy", "faultinjectionpolicies", fault, Fault
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultInjectionSpec {
    pub target_refs: Vec<TargetRef>,
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

/// Requests held back `fixedDelay` (a Gateway API duration) before they go on.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Delay {
    pub fixed_delay: String,
    pub percentage: Percent,
}

/// Requests answered with `httpStatus`, or a gRPC error `grpcStatus` (a code's name), instead of
/// being sent on.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Abort {
    pub http_status: Option<u32>,
    pub grpc_status: Option<String>,
    pub percentage: Percent,
}

policy! {
    /// A `RateLimitPolicy`: a local (per waypoint replica) token bucket per target.
    RateLimitPolicy, RateLimitSpec, "RateLimitPolicy", "ratelimitpolicies", rate_limit, RateLimit
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitSpec {
    pub target_refs: Vec<TargetRef>,
    pub local: LocalRateLimit,
}

/// `requests` per `unit` (`Second`, `Minute`, `Hour`), up to `burst` at once (unset: `requests`);
/// with `perSource`, each client identity gets a bucket of its own.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalRateLimit {
    pub requests: u32,
    pub unit: String,
    pub burst: Option<u32>,
    pub per_source: bool,
}

policy! {
    /// A `CircuitBreakerPolicy`: for a Service as a backend, caps on its requests in flight and
    /// on its connections (and the requests waiting for one) from each waypoint replica, and
    /// outlier detection on its endpoints (Istio's DestinationRule
    /// `connectionPool.http.http2MaxRequests`, `tcp.maxConnections`,
    /// `http.http1MaxPendingRequests` and `outlierDetection`, Kuma's MeshCircuitBreaker).
    CircuitBreakerPolicy, CircuitBreakerSpec, "CircuitBreakerPolicy", "circuitbreakerpolicies", circuit_breaker, CircuitBreaker
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CircuitBreakerSpec {
    pub target_refs: Vec<TargetRef>,
    pub max_requests: Option<u32>,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub outlier_detection: Option<OutlierDetection>,
}

/// Istio's fields and defaults: 5 consecutive 5xx eject for 30 s, at most 10 % of the endpoints.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
}

policy! {
    /// A `LoadBalancerPolicy`: how waypoints pick among a Service's endpoints when they send it
    /// requests (Istio's DestinationRule `loadBalancer`): `LeastRequest` (the default), `RoundRobin`,
    /// `Random`, or `ConsistentHash` on a request header (`consistentHash.header`) or, without
    /// one, on the client's address.
    LoadBalancerPolicy, LoadBalancerSpec, "LoadBalancerPolicy", "loadbalancerpolicies", load_balancer, LoadBalancer
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerSpec {
    pub target_refs: Vec<TargetRef>,
    #[serde(rename = "type")]
    pub kind: String,
    pub consistent_hash: Option<ConsistentHash>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ConsistentHash {
    pub header: Option<String>,
}

/// The kinds of traffic policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PolicyKind {
    #[serde(rename = "FaultInjectionPolicy")]
    Fault,
    #[serde(rename = "RateLimitPolicy")]
    RateLimit,
    #[serde(rename = "CircuitBreakerPolicy")]
    CircuitBreaker,
    #[serde(rename = "LoadBalancerPolicy")]
    LoadBalancer,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] =
        [PolicyKind::Fault, PolicyKind::RateLimit, PolicyKind::CircuitBreaker, PolicyKind::LoadBalancer];

    pub fn kind(self) -> &'static str {
        match self {
            Self::Fault => "FaultInjectionPolicy",
            Self::RateLimit => "RateLimitPolicy",
            Self::CircuitBreaker => "CircuitBreakerPolicy",
            Self::LoadBalancer => "LoadBalancerPolicy",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::Fault => "faultinjectionpolicies",
            Self::RateLimit => "ratelimitpolicies",
            Self::CircuitBreaker => "circuitbreakerpolicies",
            Self::LoadBalancer => "loadbalancerpolicies",
        }
    }

    /// Whether it applies to requests for its target, which a waypoint must then stand in front
    /// of; else to requests a waypoint sends to the target (a backend's), which needs none.
    fn needs_waypoint(self) -> bool {
        !matches!(self, Self::CircuitBreaker | Self::LoadBalancer)
    }
}

/// What the control plane made of one traffic policy: `Accepted` per target, as its status
/// (`status.ancestors`) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficPolicyStatus {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
    /// The generation its conditions are about.
    pub generation: Option<i64>,
    pub targets: Vec<(TargetRef, Verdict)>,
}

/// A policy of either kind, converted: what waypoints get, or why nothing.
#[derive(Debug, Clone)]
pub enum Converted {
    Fault(api::Fault),
    RateLimit(api::RateLimit),
    CircuitBreaker(api::CircuitBreaker),
    LoadBalancer(api::LoadBalancer),
}

impl Converted {
    /// Into `policies`, unless that kind is there already.
    fn fill(&self, policies: &mut api::Policies, bucket: &str) {
        match self {
            Self::Fault(fault) => {
                policies.fault.get_or_insert_with(|| fault.clone());
            }
            Self::RateLimit(limit) => {
                policies
                    .rate_limit
                    .get_or_insert_with(|| api::RateLimit { bucket: bucket.to_owned(), ..limit.clone() });
            }
            Self::CircuitBreaker(breaker) => {
                policies.circuit_breaker.get_or_insert_with(|| breaker.clone());
            }
            Self::LoadBalancer(balancer) => {
                policies.load_balancer.get_or_insert_with(|| balancer.clone());
            }
        }
    }
}

/// gRPC status codes by name, as Istio's `grpcStatus` takes them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A percentage as parts per million; `None` outside 0–100.
fn per_million(percent: &Percent) -> Option<u32> {
    (0.0..=100.0).contains(&percent.value).then(|| (percent.value * 10_000.0).round() as u32)
}

/// The fault `policy` (`namespace/name`) injects, or why it cannot be applied. The CRD's schema
/// refuses most of these already; this is for objects written before it or around it.
pub fn fault(policy: &str, spec: &FaultInjectionSpec) -> Result<api::Fault, String> {
    let mut fault = api::Fault { policy: policy.to_owned(), ..Default::default() };
    if spec.delay.is_none() && spec.abort.is_none() {
        return Err("neither delay nor abort is set".to_owned());
    }
    if let Some(delay) = &spec.delay {
        let fixed = gateway_api::duration(&delay.fixed_delay).ok_or_else(|| {
            format!("delay.fixedDelay {:?} is not a duration like 500ms or 2s", delay.fixed_delay)
        })?;
        fault.delay_ms =
            u32::try_from(fixed.as_millis()).map_err(|_| "delay.fixedDelay is too long".to_owned())?;
        fault.delay_per_million = per_million(&delay.percentage)
            .ok_or_else(|| format!("delay.percentage {} is not within 0-100", delay.percentage.value))?;
    }
    if let Some(abort) = &spec.abort {
        match (abort.http_status, &abort.grpc_status) {
            (Some(status), None) if (200..=599).contains(&status) => fault.abort_http_status = status,
            (Some(status), None) => return Err(format!("abort.httpStatus {status} is not within 200-599")),
            (None, Some(name)) => {
                let code = GRPC_CODES
                    .iter()
                    .position(|code| code == name)
                    .ok_or_else(|| format!("abort.grpcStatus {name:?} is not a gRPC status code's name"))?;
                fault.abort_grpc_status = Some(code as u32);
            }
            _ => return Err("abort needs exactly one of httpStatus and grpcStatus".to_owned()),
        }
        fault.abort_per_million = per_million(&abort.percentage)
            .ok_or_else(|| format!("abort.percentage {} is not within 0-100", abort.percentage.value))?;
    }
    Ok(fault)
}

/// The bucket `policy` (`namespace/name`) fills, or why it cannot be applied; its name is set
/// per target when it is attached.
pub fn rate_limit(policy: &str, spec: &RateLimitSpec) -> Result<api::RateLimit, String> {
    let local = &spec.local;
    let interval_ms = match local.unit.as_str() {
        "Second" => 1_000,
        "Minute" => 60_000,
        "Hour" => 3_600_000,
        unit => return Err(format!("local.unit {unit:?} is none of Second, Minute, Hour")),
    };
    if local.requests == 0 {
        return Err("local.requests must be at least 1".to_owned());
    }
    let burst = local.burst.unwrap_or(local.requests);
    if burst == 0 {
        return Err("local.burst must be at least 1".to_owned());
    }
    Ok(api::RateLimit {
        policy: policy.to_owned(),
        bucket: String::new(),
        requests: local.requests,
        interval_ms,
        burst,
        per_source: local.per_source,
    })
}

/// The circuit breaker `policy` (`namespace/name`) sets, or why it cannot be applied.
pub fn circuit_breaker(policy: &str, spec: &CircuitBreakerSpec) -> Result<api::CircuitBreaker, String> {
    let mut breaker = api::CircuitBreaker { policy: policy.to_owned(), ..Default::default() };
    if spec.max_pending_requests.is_some() && spec.max_connections.is_none() {
        // Requests wait only for a connection under a cap.
        return Err("maxPendingRequests needs maxConnections".to_owned());
    }
    if spec.max_requests.is_none() && spec.max_connections.is_none() && spec.outlier_detection.is_none() {
        return Err("none of maxRequests, maxConnections and outlierDetection is set".to_owned());
    }
    if let Some(max) = spec.max_requests {
        if max == 0 {
            return Err("maxRequests must be at least 1".to_owned());
        }
        breaker.max_requests = max;
    }
    if let Some(max) = spec.max_connections {
        if max == 0 {
            return Err("maxConnections must be at least 1".to_owned());
        }
        breaker.max_connections = max;
    }
    breaker.max_pending_requests = spec.max_pending_requests;
    if let Some(detection) = &spec.outlier_detection {
        breaker.consecutive_5xx_errors = detection.consecutive_5xx_errors.unwrap_or(5);
        breaker.consecutive_gateway_errors = detection.consecutive_gateway_errors.unwrap_or(0);
        let base = detection.base_ejection_time.as_deref().unwrap_or("30s");
        let base = gateway_api::duration(base).ok_or_else(|| {
            format!("outlierDetection.baseEjectionTime {base:?} is not a duration like 30s")
        })?;
        breaker.base_ejection_ms = u32::try_from(base.as_millis())
            .map_err(|_| "outlierDetection.baseEjectionTime is too long".to_owned())?;
        if breaker.base_ejection_ms == 0 {
            return Err("outlierDetection.baseEjectionTime must be at least 1ms".to_owned());
        }
        breaker.max_ejection_percent = detection.max_ejection_percent.unwrap_or(10);
        if breaker.max_ejection_percent > 100 {
            return Err("outlierDetection.maxEjectionPercent is above 100".to_owned());
        }
    }
    Ok(breaker)
}

/// How `policy` (`namespace/name`) picks endpoints, or why it cannot be applied.
pub fn load_balancer(policy: &str, spec: &LoadBalancerSpec) -> Result<api::LoadBalancer, String> {
    use api::load_balancer::Kind;
    let kind = match spec.kind.as_str() {
        "LeastRequest" => Kind::LeastRequest,
        "RoundRobin" => Kind::RoundRobin,
        "Random" => Kind::Random,
        "ConsistentHash" => Kind::ConsistentHash,
        other => {
            return Err(format!(
                "type {other:?} is none of LeastRequest, RoundRobin, Random, ConsistentHash"
            ));
        }
    };
    let hash_header = spec.consistent_hash.as_ref().and_then(|hash| hash.header.clone()).unwrap_or_default();
    if !hash_header.is_empty() && http_header_name(&hash_header).is_none() {
        return Err(format!("consistentHash.header {hash_header:?} is no header name"));
    }
    if kind != Kind::ConsistentHash && spec.consistent_hash.is_some() {
        return Err("consistentHash is for type ConsistentHash only".to_owned());
    }
    Ok(api::LoadBalancer {
        policy: policy.to_owned(),
        kind: kind.into(),
        hash_header: hash_header.to_ascii_lowercase(),
    })
}

/// `name` if it is a valid HTTP header name (RFC 9110 token).
fn http_header_name(name: &str) -> Option<&str> {
    let token = |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte);
    (!name.is_empty() && name.bytes().all(token)).then_some(name)
}

/// What a target is, once found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    /// A Service (behind a waypoint, for the kinds that need one), by `(namespace, name)`.
    Service(String, String),
    /// A route attached to such a Service, by its name in `ServiceRoutes` (`namespace/name`,
    /// `GRPCRoute:namespace/name`).
    Route(String),
    /// A waypoint, by `(namespace, name)`.
    Gateway(String, String),
}

/// What [`apply`] needs to know of the mesh.
#[derive(Debug)]
pub struct Mesh<'a> {
    /// Each Service's waypoint (its Gateway's name, in the Service's namespace), by
    /// `(namespace, name)`; a Service without one is absent.
    pub service_waypoints: &'a HashMap<(&'a str, &'a str), &'a str>,
    /// Each Service's resource key (`namespace/hostname`), by `(namespace, name)`.
    pub service_keys: &'a HashMap<(&'a str, &'a str), String>,
    /// The routes attached to Services, as the control plane understood them.
    pub routes: &'a [RouteStatus],
    /// The waypoints.
    pub waypoints: &'a Waypoints<'a, 'a>,
}

/// A policy of either kind, as read: its key, creation time, generation and targets.
#[derive(Debug)]
pub struct Read<'a> {
    pub metadata: &'a ObjectMeta,
    pub targets: &'a [TargetRef],
    pub converted: Result<Converted, String>,
    pub kind: PolicyKind,
}

/// `namespace/name` of an object.
fn key(metadata: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        metadata.namespace.as_deref().unwrap_or_default(),
        metadata.name.as_deref().unwrap_or_default()
    )
}

/// Attaches `policies` to their targets and puts what wins into `by_service` (the Services'
/// `ServiceRoutes`, by `namespace/hostname`; one is added for a Service behind a waypoint that
/// a policy applies to); answers each policy's status.
pub fn apply<'a>(
    mesh: &Mesh<'_>,
    policies: impl IntoIterator<Item = Read<'a>>,
    by_service: &mut BTreeMap<String, api::ServiceRoutes>,
) -> Vec<TrafficPolicyStatus> {
    let mut policies: Vec<Read<'a>> = policies
        .into_iter()
        .filter(|policy| policy.metadata.namespace.is_some() && policy.metadata.name.is_some())
        .collect();
    let created = |policy: &Read<'_>| policy.metadata.creation_timestamp.as_ref().map(|time| time.0);
    policies.sort_by(|a, b| {
        (created(a), &a.metadata.namespace, &a.metadata.name, a.kind).cmp(&(
            created(b),
            &b.metadata.namespace,
            &b.metadata.name,
            b.kind,
        ))
    });
    // Per target and kind, the policy that holds it (the oldest) and its bucket's name.
    let mut attached: BTreeMap<(Target, PolicyKind), (&Converted, String, String)> = BTreeMap::new();
    let mut statuses = Vec::new();
    for policy in &policies {
        let (namespace, name) = (
            policy.metadata.namespace.as_deref().unwrap_or_default(),
            policy.metadata.name.as_deref().unwrap_or_default(),
        );
        let policy_key = format!("{namespace}/{name}");
        let mut targets = Vec::new();
        for target_ref in policy.targets {
            let verdict = match (&policy.converted, find(mesh, namespace, target_ref, policy.kind)) {
                (Err(why), _) => Verdict::no("Invalid", why.clone()),
                (Ok(_), Err(why)) => why,
                (Ok(converted), Ok(target)) => match attached.get(&(target.clone(), policy.kind)) {
                    Some((_, holder, _)) if *holder != policy_key => Verdict::no(
                        "Conflicted",
                        format!(
                            "{} {holder} (older, or first by name when as old) is attached to it already",
                            policy.kind.kind()
                        ),
                    ),
                    _ => {
                        let bucket =
                            format!("{policy_key} {} {namespace}/{}", target_ref.kind, target_ref.name);
                        attached.insert((target, policy.kind), (converted, policy_key.clone(), bucket));
                        Verdict::yes("Accepted", "applied by the waypoint")
                    }
                },
            };
            targets.push((target_ref.clone(), verdict));
        }
        statuses.push(TrafficPolicyStatus {
            kind: policy.kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            generation: policy.metadata.generation,
            targets,
        });
    }
    // Per Service: its own; behind a waypoint, else its waypoint's.
    let of = |target: Target| {
        let mut policies = api::Policies::default();
        for kind in PolicyKind::ALL {
            if let Some((converted, _, bucket)) = attached.get(&(target.clone(), kind)) {
                converted.fill(&mut policies, bucket);
            }
        }
        policies
    };
    for ((namespace, name), key) in mesh.service_keys {
        let mut policies = of(Target::Service((*namespace).to_owned(), (*name).to_owned()));
        if let Some(waypoint) = mesh.service_waypoints.get(&(*namespace, *name)) {
            let inherited = of(Target::Gateway((*namespace).to_owned(), (*waypoint).to_owned()));
            merge(&mut policies, &inherited);
        }
        if !by_service.contains_key(key) && policies == api::Policies::default() {
            continue;
        }
        let routes = by_service
            .entry(key.clone())
            .or_insert_with(|| api::ServiceRoutes { service: key.clone(), ..Default::default() });
        for route in routes.routes.iter_mut().chain(routes.consumer_routes.iter_mut()) {
            let mut own = of(Target::Route(route.name.clone()));
            // A circuit breaker and a load balancer are the backend's, never a route's.
            merge(
                &mut own,
                &api::Policies { circuit_breaker: None, load_balancer: None, ..policies.clone() },
            );
            route.policies = (own != api::Policies::default()).then_some(own);
        }
        routes.policies = (policies != api::Policies::default()).then_some(policies);
    }
    statuses.sort_by(|a, b| (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind)));
    statuses
}

/// Each kind `into` lacks, from `from`.
fn merge(into: &mut api::Policies, from: &api::Policies) {
    if into.fault.is_none() {
        into.fault.clone_from(&from.fault);
    }
    if into.rate_limit.is_none() {
        into.rate_limit.clone_from(&from.rate_limit);
    }
}

/// The target `target_ref` names in `namespace` for a policy of `kind`, or the `Accepted:
/// False` it gets.
fn find(
    mesh: &Mesh<'_>,
    namespace: &str,
    target_ref: &TargetRef,
    kind: PolicyKind,
) -> Result<Target, Verdict> {
    let name = target_ref.name.as_str();
    let not_found = |what: String| Verdict::no("TargetNotFound", what);
    // Whether a waypoint that exists stands in front of Service `namespace/name`.
    let served = |namespace: &str, name: &str| {
        mesh.service_waypoints
            .get(&(namespace, name))
            .is_some_and(|waypoint| mesh.waypoints.exists(namespace, waypoint))
    };
    match (target_ref.group.as_str(), target_ref.kind.as_str()) {
        ("" | "core", "Service") => {
            if !mesh.service_keys.contains_key(&(namespace, name)) {
                Err(not_found(format!("no Service {namespace}/{name}")))
            } else if !kind.needs_waypoint() || served(namespace, name) {
                Ok(Target::Service(namespace.to_owned(), name.to_owned()))
            } else {
                Err(Verdict::no(
                    "NoWaypoint",
                    format!(
                        "Service {namespace}/{name} uses no waypoint, or one that does not exist: nothing would apply the policy there"
                    ),
                ))
            }
        }
        (gateway_api::GROUP, _) if !kind.needs_waypoint() => Err(Verdict::no(
            "Invalid",
            format!("a {} applies to a Service as a backend: it targets Services only", kind.kind()),
        )),
        (gateway_api::GROUP, "HTTPRoute" | "GRPCRoute") => {
            let kind = if target_ref.kind == "HTTPRoute" { RouteKind::Http } else { RouteKind::Grpc };
            let route = mesh
                .routes
                .iter()
                .find(|route| route.kind == kind && route.namespace == namespace && route.name == name);
            // Applied where one of its Services has a waypoint that exists (it may be pending
            // on others).
            let applied = |route: &RouteStatus| {
                mesh.service_keys
                    .iter()
                    .any(|((namespace, name), key)| route.services.contains(key) && served(namespace, name))
            };
            match route {
                Some(route) if applied(route) => Ok(Target::Route(match kind {
                    RouteKind::Http => format!("{namespace}/{name}"),
                    _ => format!("{}:{namespace}/{name}", kind.kind()),
                })),
                Some(_) => Err(Verdict::no(
                    "NoWaypoint",
                    format!("{} {namespace}/{name} is applied by no waypoint (see its status)", kind.kind()),
                )),
                None => {
                    Err(not_found(format!("no {} {namespace}/{name} attached to a Service", kind.kind())))
                }
            }
        }
        (gateway_api::GROUP, "Gateway") => {
            if mesh.waypoints.exists(namespace, name) {
                Ok(Target::Gateway(namespace.to_owned(), name.to_owned()))
            } else {
                Err(not_found(format!("no Gateway {namespace}/{name} of class weft-waypoint")))
            }
        }
        (group, kind) => Err(Verdict::no(
            "Invalid",
            format!(
                "a target of group {group:?} and kind {kind:?} is not supported: a Service, an HTTPRoute, a GRPCRoute or a Gateway"
            ),
        )),
    }
}
