//! Gateway API objects as the API server sends them, and durations.
use std::time::Duration;

use super::*;

#[test]
fn a_realistic_http_route_reads_with_the_gateway_api_defaults() {
    let route: HttpRoute = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": "reviews", "namespace": "bookinfo", "generation": 3 },
        "spec": {
            "parentRefs": [
                { "group": "", "kind": "Service", "name": "reviews", "port": 9080 },
                { "name": "ingress" }
            ],
            "hostnames": ["reviews.example.com"],
            "rules": [{
                "name": "canary",
                "matches": [
                    { "headers": [{ "name": "x-canary", "value": "yes" }],
                      "queryParams": [{ "type": "RegularExpression", "name": "v", "value": "^2" }],
                      "method": "GET" },
                    { "path": { "type": "Exact", "value": "/health" } },
                    { "path": { "type": "SomethingNew", "value": "/x" } }
                ],
                "filters": [
                    { "type": "RequestHeaderModifier",
                      "requestHeaderModifier": { "set": [{ "name": "x-route", "value": "canary" }], "remove": ["x-debug"] } },
                    { "type": "URLRewrite", "urlRewrite": { "hostname": "elsewhere" } }
                ],
                "backendRefs": [
                    { "name": "reviews-v2", "port": 9080, "weight": 90 },
                    { "name": "reviews-v3", "port": 9080 }
                ],
                "timeouts": { "request": "10s", "backendRequest": "500ms" },
                "sessionPersistence": { "type": "Cookie" }
            }]
        },
        "status": { "parents": [] }
    }))
    .unwrap();
    let [service, gateway] = &route.spec.parent_refs[..] else { panic!("two parents") };
    assert_eq!((service.group.as_str(), service.kind.as_str(), service.port), ("", "Service", Some(9080)));
    assert_eq!(
        (gateway.group.as_str(), gateway.kind.as_str()),
        (GROUP, "Gateway"),
        "a parent is a Gateway unless said"
    );
    let rule = &route.spec.rules[0];
    let first = &rule.matches[0];
    assert_eq!(
        (first.path.kind, first.path.value.as_str()),
        (PathMatchType::PathPrefix, "/"),
        "no path: every path"
    );
    assert_eq!(first.headers[0].kind, ValueMatchType::Exact);
    assert_eq!(first.query_params[0].kind, ValueMatchType::RegularExpression);
    assert_eq!(first.method.as_deref(), Some("GET"));
    assert_eq!(rule.matches[1].path.kind, PathMatchType::Exact);
    assert_eq!(rule.matches[2].path.kind, PathMatchType::Other, "a newer release's type still reads");
    assert_eq!(rule.filters[0].request_header_modifier.as_ref().unwrap().remove, ["x-debug"]);
    assert_eq!(rule.filters[1].kind, "URLRewrite");
    let weights: Vec<_> = rule
        .backend_refs
        .iter()
        .map(|b| (b.group.as_str(), b.kind.as_str(), b.name.as_str(), b.weight))
        .collect();
    assert_eq!(weights, [("", "Service", "reviews-v2", 90), ("", "Service", "reviews-v3", 1)]);
    let timeouts = rule.timeouts.as_ref().unwrap();
    assert_eq!(
        (timeouts.request.as_deref(), timeouts.backend_request.as_deref()),
        (Some("10s"), Some("500ms"))
    );
}

#[test]
fn a_gateway_reads_its_class_and_an_empty_spec_reads_as_defaults() {
    let gateway: Gateway = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "waypoint", "namespace": "mesh" },
        "spec": {
            "gatewayClassName": "weft-waypoint",
            "listeners": [{ "name": "mesh", "port": 15008, "protocol": "HBONE", "allowedRoutes": {} }],
            "infrastructure": { "labels": {} }
        }
    }))
    .unwrap();
    assert_eq!(gateway.spec.gateway_class_name, "weft-waypoint");
    assert_eq!(gateway.spec.listeners[0].port, 15008);
    let bare: HttpRoute = serde_json::from_value(serde_json::json!({ "metadata": { "name": "r" } })).unwrap();
    assert!(bare.spec.parent_refs.is_empty() && bare.spec.rules.is_empty());
}

#[test]
fn gateway_api_durations_parse_and_anything_else_does_not() {
    let ms = Duration::from_millis;
    assert_eq!(duration("10s"), Some(ms(10_000)));
    assert_eq!(duration("500ms"), Some(ms(500)));
    assert_eq!(duration("1m"), Some(ms(60_000)));
    assert_eq!(duration("1h30m"), Some(ms(5_400_000)));
    assert_eq!(duration("1h1m1s1ms"), Some(ms(3_661_001)));
    assert_eq!(duration("0s"), Some(Duration::ZERO));
    assert_eq!(duration("99999ms"), Some(ms(99_999)));
    for invalid in ["", "10", "s", "1.5s", "100000s", "1d", "-1s", "1h1m1s1ms1h", " 1s", "1s "] {
        assert_eq!(duration(invalid), None, "{invalid:?}");
    }
}
