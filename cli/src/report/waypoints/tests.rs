//! Waypoint and route reports from a control plane's dump.
use serde_json::json;

use super::*;

fn service(namespace: &str, name: &str, waypoint: Option<&str>) -> Value {
    let hostname = format!("{name}.{namespace}.svc.cluster.local");
    json!({ "key": format!("{namespace}/{hostname}"), "name": name, "namespace": namespace,
            "hostname": hostname, "vips": ["10.96.0.9"], "waypoint": waypoint })
}

fn workload(name: &str, services: &[&str], healthy: bool, waypoint: Option<&str>) -> Value {
    json!({ "name": name, "namespace": "shop", "services": services, "healthy": healthy, "waypoint": waypoint })
}

#[test]
fn a_waypoint_is_ready_with_a_healthy_endpoint_and_refuses_traffic_without_one() {
    let waypoint = "waypoint.shop.svc.cluster.local";
    let own = "shop/waypoint.shop.svc.cluster.local";
    let dump = |healthy: bool| {
        json!({
            "services": [service("shop", "waypoint", None), service("shop", "echo", Some(waypoint)),
                         service("shop", "cart", Some("gone.shop.svc.cluster.local"))],
            "workloads": [workload("waypoint-7d9", &[own], healthy, None),
                          workload("echo-v1", &["shop/echo.shop.svc.cluster.local"], true, Some(waypoint))],
        })
    };
    let rows = waypoint_rows(&dump(true));
    assert_eq!(
        rows,
        json!([
            { "waypoint": "gone.shop.svc.cluster.local", "address": null, "ready_endpoints": 0,
              "state": "no such Service: its traffic is refused (503)", "services": ["shop/cart"], "workloads": 0 },
            { "waypoint": "shop/waypoint", "address": ["10.96.0.9"], "ready_endpoints": 1, "state": "ready",
              "services": ["shop/echo"], "workloads": 1 },
        ])
    );
    let rows = waypoint_rows(&dump(false));
    assert_eq!(rows[1]["state"], "no ready endpoint: its traffic is refused (503)");
}

#[test]
fn a_route_row_says_per_parent_whether_it_applies_and_why_not() {
    let dump = json!({ "mesh_routes": [{
        "kind": "GRPCRoute", "namespace": "shop", "name": "grpc", "generation": 2,
        "services": ["shop/grpc.shop.svc.cluster.local"],
        "notes": ["rules[1]: a match of a type not supported: rule not applied", "parentRef Service shop/nope not found: not applied to it"],
        "parents": [
            { "parent_ref": { "group": "", "kind": "Service", "name": "grpc", "port": 9090 },
              "accepted": { "status": true, "reason": "Accepted", "message": "" } },
            { "parent_ref": { "group": "", "kind": "Service", "name": "nope" },
              "accepted": { "status": false, "reason": "NoMatchingParent", "message": "" } },
        ],
        "resolved_refs": { "status": true, "reason": "ResolvedRefs", "message": "" },
        "partially_invalid": "rules[1]: …",
    }]});
    let rows = route_rows(&dump);
    assert_eq!(rows[0]["parents"], json!(["grpc:9090 Accepted", "nope NoMatchingParent"]));
    assert_eq!(rows[0]["backends"], "ResolvedRefs");
    assert_eq!(rows[0]["kind"], "GRPCRoute");
    assert!(rows[0]["notes"].as_str().unwrap().contains("rule not applied; parentRef"), "{rows}");
}
