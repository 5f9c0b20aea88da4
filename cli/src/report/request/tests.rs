//! A request to a Service checked against a control plane's dump made here: the waypoint, the
//! policies and the route each step finds, and the first step that ends the request.

use prost::Message;
use serde_json::{Value, json};
use weft_api::{http_authorization as authz, route};

use super::{Probe, request_findings};

const ECHO: &str = "shop/echo.shop.svc.cluster.local";
const V1: &str = "shop/echo-v1.shop.svc.cluster.local";
const V2: &str = "shop/echo-v2.shop.svc.cluster.local";

fn service(name: &str, waypoint: Option<&str>) -> Value {
    json!({
        "key": format!("shop/{name}.shop.svc.cluster.local"),
        "name": name,
        "namespace": "shop",
        "hostname": format!("{name}.shop.svc.cluster.local"),
        "vips": ["10.96.0.10"],
        "ports": [80],
        "waypoint": waypoint,
    })
}

fn workload(name: &str, account: &str, services: &[&str], address: &str) -> Value {
    json!({
        "name": name, "namespace": "shop", "service_account": account, "addresses": [address],
        "services": services, "healthy": true,
    })
}

/// `echo` behind waypoint `shop/waypoint` (ready), split 90/10 between `echo-v1` and `echo-v2`
/// for paths under `/api`; a client pod `client`; `policy`, when given, targets `echo`.
fn dump(policy: Option<authz::HttpAuthorization>) -> Value {
    let waypoint = Some("waypoint.shop.svc.cluster.local");
    let routes = route::ServiceRoutes {
        service: ECHO.into(),
        routes: vec![route::Route {
            name: "shop/split".into(),
            ports: vec![],
            rules: vec![route::Rule {
                matches: vec![route::Match {
                    path: Some(route::PathMatch {
                        kind: route::path_match::Kind::Prefix.into(),
                        value: "/api".into(),
                    }),
                    ..Default::default()
                }],
                backends: vec![
                    route::Backend { service: V1.into(), port: 80, weight: 90, ..Default::default() },
                    route::Backend { service: V2.into(), port: 80, weight: 10, ..Default::default() },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let policies: Vec<Value> = policy
        .into_iter()
        .map(|policy| {
            let name = format!("{}/{}", policy.namespace, policy.name);
            json!({ "name": name, "resource": weft_api::hex::encode(&policy.encode_to_vec()) })
        })
        .collect();
    json!({
        "trust_domain": "cluster.local",
        "services": [service("echo", waypoint), service("echo-v1", waypoint), service("echo-v2", waypoint),
                     service("waypoint", None), service("plain", None)],
        "workloads": [
            workload("waypoint-0", "waypoint", &["shop/waypoint.shop.svc.cluster.local"], "10.0.0.2"),
            workload("echo-v1-0", "echo", &[ECHO, V1], "10.0.1.1"),
            workload("echo-v2-0", "echo", &[ECHO, V2], "10.0.1.2"),
            workload("client", "client", &[], "10.0.0.9"),
        ],
        "routes": [{ "service": ECHO, "routes": ["shop/split"], "resource": weft_api::hex::encode(&routes.encode_to_vec()) }],
        "mesh_routes": [{
            "kind": "HTTPRoute", "namespace": "shop", "name": "orphan",
            "parents": [{ "parent_ref": { "name": "plain", "port": 80 } }],
            "notes": ["shop/plain uses no waypoint (weft.dev/use-waypoint): the route applies once it does"],
        }],
        "http_authorizations": policies,
    })
}

/// `policy` in the dump, as the only one.
fn deny_admin_to_client() -> authz::HttpAuthorization {
    authz::HttpAuthorization {
        name: "no-admin".into(),
        namespace: "shop".into(),
        services: vec![ECHO.into()],
        deny: true,
        rules: vec![authz::HttpRule {
            from: vec![authz::HttpSource {
                principals: vec!["cluster.local/ns/shop/sa/client".into()],
                ..Default::default()
            }],
            to: vec![authz::HttpOperation { paths: vec!["/api/admin*".into()], ..Default::default() }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn probe(path: &str) -> Probe {
    Probe { method: "GET".into(), path: path.into(), ..Default::default() }
}

/// `(check, ok, detail)` of each finding.
fn findings(dump: &Value, service: &str, probe: &Probe) -> Vec<(String, bool, String)> {
    let found = request_findings(dump, "shop", service, probe).expect("a valid probe");
    found
        .as_array()
        .expect("findings")
        .iter()
        .map(|one| {
            (
                one["check"].as_str().unwrap_or("?").to_owned(),
                one["ok"] == true,
                one["detail"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn last(findings: &[(String, bool, String)]) -> (&str, bool, &str) {
    let (check, ok, detail) = findings.last().expect("a finding");
    (check, *ok, detail)
}

#[test]
fn a_request_gets_the_waypoint_and_the_rule_the_waypoint_would_give_it() {
    let found = findings(&dump(None), "echo", &probe("/api/items"));
    let checks: Vec<&str> = found.iter().map(|(check, _, _)| check.as_str()).collect();
    assert_eq!(checks, ["service", "waypoint", "request", "route"], "{found:?}");
    assert!(found.iter().all(|(_, ok, _)| *ok), "{found:?}");
    assert!(found[1].2.starts_with("shop/waypoint: ready (1 ready endpoint"), "{found:?}");
    let (_, _, route) = last(&found);
    assert!(route.starts_with("shop/split → "), "{route}");
    assert!(route.contains(&format!("{V1}:80 weight 90 (1 healthy")), "{route}");
    assert!(route.contains(&format!("{V2}:80 weight 10 (1 healthy")), "{route}");
}

#[test]
fn the_path_is_read_as_the_waypoint_reads_it_before_the_route_is_chosen() {
    // `/x/../api/items` is `/api/items` to the waypoint: the split applies.
    let found = findings(&dump(None), "echo", &probe("/x/../api/items"));
    assert!(
        found
            .iter()
            .any(|(check, _, detail)| check == "request"
                && detail == "GET /api/items as the waypoint reads it"),
        "{found:?}"
    );
    assert!(last(&found).2.starts_with("shop/split"), "{found:?}");
    // An encoded slash is refused by the waypoint: the check stops there.
    let found = findings(&dump(None), "echo", &probe("/api%2Fitems"));
    assert_eq!(last(&found).0, "request", "{found:?}");
    assert!(!last(&found).1 && last(&found).2.starts_with("the waypoint answers 400"), "{found:?}");
}

#[test]
fn a_request_no_route_matches_is_answered_404() {
    let found = findings(&dump(None), "echo", &probe("/other"));
    assert_eq!(last(&found), ("route", false, "no route matches: the waypoint answers 404"));
}

#[test]
fn a_service_without_waypoint_says_so_and_names_the_routes_that_wait_for_one() {
    let found = findings(&dump(None), "plain", &probe("/"));
    assert_eq!(found[1].0, "waypoint");
    assert!(found[1].2.starts_with("none: node proxies carry its connections at L4"), "{found:?}");
    let (check, ok, detail) = last(&found);
    assert_eq!((check, ok), ("route", false));
    assert!(
        detail.starts_with("HTTPRoute shop/orphan is attached but not applied: shop/plain uses no waypoint"),
        "{detail}"
    );
}

#[test]
fn an_unknown_service_or_port_ends_the_check_at_once() {
    let found = findings(&dump(None), "missing", &probe("/"));
    assert_eq!(found, [("service".into(), false, "the control plane serves no Service shop/missing".into())]);
    let found = findings(&dump(None), "echo", &Probe { port: Some(81), ..probe("/") });
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].2.contains("has no port 81"), "{found:?}");
}

#[test]
fn a_waypoint_without_ready_endpoints_ends_the_check() {
    let mut dump = dump(None);
    dump["workloads"][0]["healthy"] = false.into();
    let found = findings(&dump, "echo", &probe("/api"));
    let (check, ok, detail) = last(&found);
    assert_eq!((check, ok), ("waypoint", false));
    assert!(detail.contains("no ready endpoint: its traffic is refused (503)"), "{detail}");
}

#[test]
fn l7_policies_decide_for_the_client_pod_as_the_waypoint_would() {
    let deny_admin = deny_admin_to_client();
    let dump = dump(Some(deny_admin));
    let from_client = |path: &str| Probe { from: Some("shop/client".into()), ..probe(path) };
    let found = findings(&dump, "echo", &from_client("/api/admin/users"));
    let (check, ok, detail) = last(&found);
    assert_eq!((check, ok), ("policies", false), "{found:?}");
    assert_eq!(
        detail,
        "from spiffe://cluster.local/ns/shop/sa/client: denied by DENY policy shop/no-admin (the waypoint answers 403)"
    );
    // Another path passes the policy and reaches the route.
    let found = findings(&dump, "echo", &from_client("/api/items"));
    assert!(found.iter().any(|(check, ok, _)| check == "policies" && *ok), "{found:?}");
    assert_eq!(last(&found).0, "route");
    // Without a client, the check names the policies and goes on.
    let found = findings(&dump, "echo", &probe("/api/admin"));
    assert!(
        found.iter().any(|(check, _, detail)| check == "policies"
            && detail.starts_with("shop/no-admin apply; name the client pod")),
        "{found:?}"
    );
}

#[test]
fn a_tcp_routed_port_is_relayed_to_the_routes_backend_and_decided_as_a_connection() {
    let tcp_routes = route::ServiceRoutes {
        service: ECHO.into(),
        routes: Vec::new(),
        tcp_routes: vec![route::Route {
            name: "TCPRoute:shop/db".into(),
            ports: vec![80],
            rules: vec![route::Rule {
                backends: vec![route::Backend {
                    service: V2.into(),
                    port: 80,
                    weight: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let with_tcp = |policy| {
        let mut dump = dump(policy);
        dump["routes"][0]["resource"] = weft_api::hex::encode(&tcp_routes.encode_to_vec()).into();
        dump
    };
    let found = findings(&with_tcp(None), "echo", &probe("/api/items"));
    assert_eq!(found[2].2, "port 80 is TCP (a TCPRoute): relayed at L4, not read as HTTP", "{found:?}");
    assert_eq!(
        last(&found),
        ("route", true, &*format!("TCPRoute:shop/db → {V2}:80 weight 1 (1 healthy endpoint(s))"))
    );
    // A connection has no path: the DENY on paths refuses it whole, as the waypoint reads
    // policies for TCP, whatever path the probe names.
    let from_client = Probe { from: Some("shop/client".into()), ..probe("/public") };
    let found = findings(&with_tcp(Some(deny_admin_to_client())), "echo", &from_client);
    let (check, ok, detail) = last(&found);
    assert_eq!((check, ok), ("policies", false), "{found:?}");
    assert!(
        detail.ends_with("denied by DENY policy shop/no-admin (the waypoint resets the connection)"),
        "{detail}"
    );
}

#[test]
fn a_port_declared_tcp_is_relayed_to_the_service_itself_and_one_declared_http_is_read_as_http() {
    use route::declared_port::Protocol;
    let declared = route::ServiceRoutes {
        service: ECHO.into(),
        declared_ports: vec![route::DeclaredPort { port: 80, protocol: Protocol::Tcp.into() }],
        ..Default::default()
    };
    let mut dump = dump(None);
    dump["routes"][0]["resource"] = weft_api::hex::encode(&declared.encode_to_vec()).into();
    let found = findings(&dump, "echo", &probe("/api/items"));
    assert_eq!(
        found[2].2,
        "port 80 is declared as not HTTP (appProtocol or name): relayed at L4, not read as HTTP"
    );
    assert_eq!(
        last(&found),
        ("route", true, "no route for port 80: to the Service itself, 2 healthy endpoint(s)")
    );
}

#[test]
fn the_traffic_policies_of_the_route_a_request_takes_are_named_else_the_services() {
    let mut dump = dump(None);
    let resource = &mut dump["routes"][0]["resource"];
    let mut routes =
        route::ServiceRoutes::decode(weft_api::hex::decode(resource.as_str().unwrap()).unwrap().as_slice())
            .unwrap();
    let limit = route::RateLimit {
        policy: "shop/steady".into(),
        bucket: "shop/steady Service shop/echo".into(),
        requests: 50,
        interval_ms: 1000,
        burst: 5,
        per_source: false,
    };
    let chaos = route::Fault {
        policy: "shop/chaos".into(),
        abort_http_status: 503,
        abort_per_million: 500_000,
        ..Default::default()
    };
    routes.policies = Some(route::Policies { rate_limit: Some(limit.clone()), ..Default::default() });
    routes.routes[0].policies =
        Some(route::Policies { fault: Some(chaos), rate_limit: Some(limit), ..Default::default() });
    *resource = json!(weft_api::hex::encode(&routes.encode_to_vec()));
    let traffic = |path: &str| {
        findings(&dump, "echo", &probe(path))
            .into_iter()
            .find(|(check, ..)| check == "traffic")
            .map(|(_, _, detail)| detail)
    };
    assert_eq!(
        traffic("/api/items").as_deref(),
        Some(
            "rate limit shop/steady: 50 per 1s, 5 at once (429 past it); fault shop/chaos: 50 % answered 503"
        ),
        "the route's"
    );
    assert_eq!(
        traffic("/elsewhere").as_deref(),
        None,
        "no route takes it: the Service's routes answer 404 before any policy"
    );
}
