//! Traffic policies in the index: which attachment wins, what each Service's and route's
//! resource carries, and what each policy's status says.
use weft_api::route as routes;

use super::{
    super::traffic::{
        CircuitBreakerPolicy, FaultInjectionPolicy, LoadBalancerPolicy, PolicyKind, RateLimitPolicy,
        TrafficPolicyStatus,
    },
    waypoints::{backends, gateway, http_route, labelled, service_routes},
    *,
};

/// A policy of kind `T` named `name` in `mesh`, created at `created_seconds`.
fn policy<T: serde::de::DeserializeOwned + kube::Resource>(
    name: &str,
    created_seconds: i64,
    spec: serde_json::Value,
) -> T {
    let mut policy: T = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": "mesh", "generation": 2 },
        "spec": spec,
    }))
    .unwrap();
    policy.meta_mut().creation_timestamp =
        Some(Time(k8s_openapi::jiff::Timestamp::from_second(created_seconds).unwrap()));
    policy
}

fn target(group: &str, kind: &str, name: &str) -> serde_json::Value {
    serde_json::json!({ "group": group, "kind": kind, "name": name })
}

/// Each target's `(name, reason)` in `policy`'s status.
fn verdicts(statuses: &[TrafficPolicyStatus], kind: PolicyKind, name: &str) -> Vec<(String, &'static str)> {
    let status = statuses.iter().find(|status| status.kind == kind && status.name == name).unwrap();
    assert_eq!(status.generation, Some(2));
    status.targets.iter().map(|(target, verdict)| (target.name.clone(), verdict.reason)).collect()
}

/// HTTPRoute `split`, attached to `web`, to `web-v1`.
fn split() -> HttpRoute {
    http_route(
        "split",
        1,
        serde_json::json!({ "parentRefs": [{ "group": "", "kind": "Service", "name": "web" }],
                            "rules": [{ "backendRefs": [{ "name": "web-v1", "port": 8080 }] }] }),
    )
}

#[test]
fn the_most_specific_attachment_of_each_kind_wins_and_of_two_on_one_target_the_older() {
    let route = split();
    // A consumer route (from `shop`): the Service's policies are its requests' too.
    let mut consumer = http_route(
        "from-shop",
        1,
        serde_json::json!({ "parentRefs": [{ "group": "", "kind": "Service", "name": "web", "namespace": "mesh" }],
                            "rules": [{ "backendRefs": [{ "name": "web", "namespace": "mesh", "port": 80 }] }] }),
    );
    consumer.metadata.namespace = Some("shop".into());
    let faults: [FaultInjectionPolicy; 3] = [
        policy(
            "waypoint-wide",
            1,
            serde_json::json!({ "targetRefs": [target("gateway.networking.k8s.io", "Gateway", "waypoint")],
                                "abort": { "httpStatus": 503, "percentage": { "value": 50 } } }),
        ),
        policy(
            "on-route",
            2,
            serde_json::json!({ "targetRefs": [target("gateway.networking.k8s.io", "HTTPRoute", "split")],
                                "delay": { "fixedDelay": "1s500ms", "percentage": { "value": 12.5 } } }),
        ),
        policy(
            "astray",
            3,
            serde_json::json!({ "targetRefs": [target("", "Service", "nope"), target("", "Service", "web-v1"),
                                               target("gateway.networking.k8s.io", "Gateway", "not-a-waypoint"),
                                               target("gateway.networking.k8s.io", "HTTPRoute", "nope")],
                                "abort": { "grpcStatus": "UNAVAILABLE", "percentage": { "value": 100 } } }),
        ),
    ];
    let limits: [RateLimitPolicy; 3] = [
        policy(
            "limit",
            4,
            serde_json::json!({ "targetRefs": [target("", "Service", "web")],
                                "local": { "requests": 10, "unit": "Second", "perSource": true } }),
        ),
        policy(
            "later-limit",
            5,
            serde_json::json!({ "targetRefs": [target("", "Service", "web")],
                                "local": { "requests": 1, "unit": "Minute", "burst": 5 } }),
        ),
        policy(
            "bad-unit",
            6,
            serde_json::json!({ "targetRefs": [target("", "Service", "web")], "local": { "requests": 1, "unit": "Day" } }),
        ),
    ];
    let gateways = [gateway("waypoint", "mesh", "weft-waypoint"), gateway("not-a-waypoint", "mesh", "istio")];
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true), namespace("shop", true)])
            .services(&backends())
            .gateways(&gateways)
            .http_routes([&route, &consumer])
            .fault_policies(&faults)
            .rate_limit_policies(&limits),
    );

    let web = service_routes(&snapshot, KEY);
    let limit = routes::RateLimit {
        policy: "mesh/limit".into(),
        bucket: "mesh/limit Service mesh/web".into(),
        requests: 10,
        interval_ms: 1000,
        burst: 10,
        per_source: true,
    };
    let abort = routes::Fault {
        policy: "mesh/waypoint-wide".into(),
        abort_http_status: 503,
        abort_per_million: 500_000,
        ..Default::default()
    };
    // A request no route takes: the Service's rate limit, the waypoint's fault.
    assert_eq!(
        web.policies,
        Some(routes::Policies {
            fault: Some(abort.clone()),
            rate_limit: Some(limit.clone()),
            ..Default::default()
        })
    );
    // The route's: its own fault, the Service's rate limit.
    let delay = routes::Fault {
        policy: "mesh/on-route".into(),
        delay_ms: 1500,
        delay_per_million: 125_000,
        ..Default::default()
    };
    assert_eq!(
        web.routes[0].policies,
        Some(routes::Policies { fault: Some(delay), rate_limit: Some(limit.clone()), ..Default::default() })
    );
    assert_eq!(web.consumer_routes[0].name, "shop/from-shop");
    assert_eq!(
        web.consumer_routes[0].policies,
        Some(routes::Policies { fault: Some(abort), rate_limit: Some(limit), ..Default::default() })
    );

    let statuses = &snapshot.traffic_policies;
    assert_eq!(verdicts(statuses, PolicyKind::Fault, "waypoint-wide"), [("waypoint".into(), "Accepted")]);
    assert_eq!(verdicts(statuses, PolicyKind::Fault, "on-route"), [("split".into(), "Accepted")]);
    assert_eq!(
        verdicts(statuses, PolicyKind::Fault, "astray"),
        [
            ("nope".into(), "TargetNotFound"),
            ("web-v1".into(), "NoWaypoint"),
            ("not-a-waypoint".into(), "TargetNotFound"),
            ("nope".into(), "TargetNotFound"),
        ]
    );
    assert_eq!(verdicts(statuses, PolicyKind::RateLimit, "limit"), [("web".into(), "Accepted")]);
    assert_eq!(verdicts(statuses, PolicyKind::RateLimit, "later-limit"), [("web".into(), "Conflicted")]);
    assert_eq!(verdicts(statuses, PolicyKind::RateLimit, "bad-unit"), [("web".into(), "Invalid")]);
    let conflicted = &statuses.iter().find(|status| status.name == "later-limit").unwrap().targets[0].1;
    assert!(conflicted.message.contains("mesh/limit"), "names the policy holding the target: {conflicted:?}");
}

#[test]
fn a_service_behind_a_waypoint_gets_a_resource_for_a_policy_alone_and_a_policy_leaving_leaves_none() {
    let gateways = [gateway("waypoint", "mesh", "weft-waypoint")];
    let mesh = labelled(namespace("mesh", true), |ns| &mut ns.metadata, "waypoint");
    let services = [service("api", "mesh", "10.96.0.20", vec![port(8080, None)])];
    let faults: [FaultInjectionPolicy; 1] = [policy(
        "chaos",
        1,
        serde_json::json!({ "targetRefs": [target("gateway.networking.k8s.io", "Gateway", "waypoint")],
                            "abort": { "grpcStatus": "UNAVAILABLE", "percentage": { "value": 100 } } }),
    )];
    let objects = Objects::default().namespaces([&mesh]).services(&services).gateways(&gateways);
    let key = "mesh/api.mesh.svc.cluster.local";
    assert!(!build(&naming(), &objects).routes.contains_key(key), "nothing to say about api");
    let snapshot = build(&naming(), &objects.fault_policies(&faults));
    let fault = service_routes(&snapshot, key).policies.unwrap().fault.unwrap();
    assert_eq!(
        (fault.abort_grpc_status, fault.abort_per_million, fault.abort_http_status),
        (Some(14), 1_000_000, 0)
    );
}

#[test]
fn a_policy_that_changes_no_resource_still_makes_a_new_snapshot_for_its_status() {
    let gateways = [gateway("waypoint", "mesh", "weft-waypoint")];
    let limit = |name: &str, created| -> RateLimitPolicy {
        policy(
            name,
            created,
            serde_json::json!({ "targetRefs": [target("", "Service", "web")], "local": { "requests": 1, "unit": "Second" } }),
        )
    };
    let (first, second) = (limit("first", 1), limit("second", 2));
    let (namespaces, services) = ([namespace("mesh", true)], backends());
    let objects = Objects::default().namespaces(&namespaces).services(&services).gateways(&gateways);
    let alone = build(&naming(), &objects.clone().rate_limit_policies([&first]));
    let conflicted = build(&naming(), &objects.rate_limit_policies([&first, &second]));
    assert_eq!(alone.routes, conflicted.routes, "the second changes nothing waypoints get");
    assert!(!alone.same_resources(&conflicted), "but its status is news");
}

#[test]
fn a_circuit_breaker_is_a_backends_with_istios_defaults_whether_or_not_it_has_a_waypoint() {
    let gateways = [gateway("waypoint", "mesh", "weft-waypoint")];
    let route = split();
    let breakers: [CircuitBreakerPolicy; 3] = [
        policy(
            "breaker",
            1,
            serde_json::json!({ "targetRefs": [target("", "Service", "web-v1"), target("", "Service", "web")],
                                "maxRequests": 100, "maxConnections": 10, "maxPendingRequests": 5,
                                "outlierDetection": {} }),
        ),
        policy(
            "on-a-route",
            2,
            serde_json::json!({ "targetRefs": [target("gateway.networking.k8s.io", "HTTPRoute", "split")],
                                "maxRequests": 1 }),
        ),
        policy(
            "never-out",
            3,
            serde_json::json!({ "targetRefs": [target("", "Service", "web-v2")],
                                "outlierDetection": { "baseEjectionTime": "0s" } }),
        ),
    ];
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .services(&backends())
            .gateways(&gateways)
            .http_routes([&route])
            .circuit_breaker_policies(&breakers),
    );
    let expected = routes::CircuitBreaker {
        policy: "mesh/breaker".into(),
        max_requests: 100,
        consecutive_5xx_errors: 5,
        consecutive_gateway_errors: 0,
        base_ejection_ms: 30_000,
        max_ejection_percent: 10,
        max_connections: 10,
        max_pending_requests: Some(5),
    };
    let v1 = service_routes(&snapshot, "mesh/web-v1.mesh.svc.cluster.local");
    assert_eq!(v1.policies.unwrap().circuit_breaker, Some(expected.clone()), "no waypoint needed");
    let web = service_routes(&snapshot, KEY);
    assert_eq!(web.policies.unwrap().circuit_breaker, Some(expected));
    assert_eq!(web.routes[0].policies, None, "never a route's");
    let statuses = &snapshot.traffic_policies;
    assert_eq!(
        verdicts(statuses, PolicyKind::CircuitBreaker, "breaker"),
        [("web-v1".into(), "Accepted"), ("web".into(), "Accepted")]
    );
    assert_eq!(verdicts(statuses, PolicyKind::CircuitBreaker, "on-a-route"), [("split".into(), "Invalid")]);
    assert_eq!(verdicts(statuses, PolicyKind::CircuitBreaker, "never-out"), [("web-v2".into(), "Invalid")]);
    // Requests wait only for a connection under a cap.
    let pending_alone: crate::index::traffic::CircuitBreakerSpec =
        serde_json::from_value(serde_json::json!({ "targetRefs": [], "maxPendingRequests": 5 })).unwrap();
    let refused = crate::index::traffic::circuit_breaker("mesh/waiting", &pending_alone).unwrap_err();
    assert!(refused.contains("maxPendingRequests needs maxConnections"), "{refused}");
}

#[test]
fn a_service_or_route_whose_waypoint_does_not_exist_is_no_target_for_what_a_waypoint_applies() {
    let route = split();
    let faults: [FaultInjectionPolicy; 1] = [policy(
        "early",
        1,
        serde_json::json!({ "targetRefs": [target("", "Service", "web"),
                                           target("gateway.networking.k8s.io", "HTTPRoute", "split")],
                            "abort": { "httpStatus": 503, "percentage": { "value": 1 } } }),
    )];
    // `web` is labelled for waypoint `waypoint`, whose Gateway is not there (yet).
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .services(&backends())
            .http_routes([&route])
            .fault_policies(&faults),
    );
    assert_eq!(
        verdicts(&snapshot.traffic_policies, PolicyKind::Fault, "early"),
        [("web".into(), "NoWaypoint"), ("split".into(), "NoWaypoint")]
    );
}

#[test]
fn a_load_balancer_is_a_backends_and_a_hash_header_must_be_a_header_name() {
    let balancers: [LoadBalancerPolicy; 2] = [
        policy(
            "sticky",
            1,
            serde_json::json!({ "targetRefs": [target("", "Service", "web-v1")], "type": "ConsistentHash",
                                "consistentHash": { "header": "X-User" } }),
        ),
        policy(
            "bad-header",
            2,
            serde_json::json!({ "targetRefs": [target("", "Service", "web-v2")], "type": "ConsistentHash",
                                "consistentHash": { "header": "x user" } }),
        ),
    ];
    let (namespaces, services) = ([namespace("mesh", true)], backends());
    let snapshot = build(
        &naming(),
        &Objects::default().namespaces(&namespaces).services(&services).load_balancer_policies(&balancers),
    );
    let v1 = service_routes(&snapshot, "mesh/web-v1.mesh.svc.cluster.local");
    let expected = routes::LoadBalancer {
        policy: "mesh/sticky".into(),
        kind: routes::load_balancer::Kind::ConsistentHash.into(),
        hash_header: "x-user".into(),
    };
    assert_eq!(v1.policies.unwrap().load_balancer, Some(expected), "lowercase, as HTTP/2 sends names");
    assert_eq!(
        verdicts(&snapshot.traffic_policies, PolicyKind::LoadBalancer, "bad-header"),
        [("web-v2".into(), "Invalid")]
    );
}
