//! Waypoints in the index: which Services and workloads use one, and the HTTPRoutes their
//! waypoints apply.
use weft_api::route as routes;

use super::{super::waypoint::USE_WAYPOINT, *};

pub(super) fn labelled<T>(mut object: T, meta: impl Fn(&mut T) -> &mut ObjectMeta, waypoint: &str) -> T {
    meta(&mut object).labels.get_or_insert_default().insert(USE_WAYPOINT.to_owned(), waypoint.to_owned());
    object
}

pub(super) fn gateway(name: &str, namespace: &str, class: &str) -> Gateway {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "gatewayClassName": class, "listeners": [{ "name": "mesh", "port": 15008, "protocol": "HBONE" }] },
    }))
    .unwrap()
}

pub(super) fn http_route(name: &str, created_seconds: i64, spec: serde_json::Value) -> HttpRoute {
    let mut route: HttpRoute = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": "mesh" },
        "spec": spec,
    }))
    .unwrap();
    route.metadata.creation_timestamp =
        Some(Time(k8s_openapi::jiff::Timestamp::from_second(created_seconds).unwrap()));
    route
}

fn address(waypoint: &str) -> Option<api::GatewayAddress> {
    Some(api::GatewayAddress {
        destination: Some(api::gateway_address::Destination::Hostname(api::NamespacedHostname {
            namespace: "mesh".into(),
            hostname: format!("{waypoint}.mesh.svc.cluster.local"),
        })),
        hbone_mtls_port: 15008,
    })
}

fn service_of(snapshot: &Snapshot, name: &str, namespace: &str) -> api::Service {
    let key = format!("{namespace}/{name}.{namespace}.svc.cluster.local");
    match api::Address::decode(snapshot.addresses[&key].body.value.as_slice()).unwrap().r#type {
        Some(api::address::Type::Service(service)) => service,
        other => panic!("{key} is not a service: {other:?}"),
    }
}

pub(super) fn service_routes(snapshot: &Snapshot, key: &str) -> routes::ServiceRoutes {
    let resource =
        snapshot.of_type(routes::ROUTES_TYPE).unwrap().get(key).unwrap_or_else(|| {
            panic!("no routes for {key}: {:?}", snapshot.routes.keys().collect::<Vec<_>>())
        });
    assert_eq!(resource.body.type_url, routes::ROUTES_TYPE);
    routes::ServiceRoutes::decode(resource.body.value.as_slice()).unwrap()
}

#[test]
fn the_namespace_label_names_the_waypoint_of_its_services_and_pods_unless_theirs_says_otherwise() {
    let mesh = labelled(namespace("mesh", true), |ns| &mut ns.metadata, "waypoint");
    let on_service = |name: &str, waypoint: Option<&str>| {
        let plain = service(name, "mesh", "10.96.0.10", vec![port(80, None)]);
        match waypoint {
            Some(waypoint) => labelled(plain, |s| &mut s.metadata, waypoint),
            None => plain,
        }
    };
    let on_pod = |uid: &str, ip: &str, waypoint: Option<&str>| {
        let plain = pod(uid, "mesh", &[ip], 1);
        match waypoint {
            Some(waypoint) => labelled(plain, |p| &mut p.metadata, waypoint),
            None => plain,
        }
    };
    let mut waypoint_pod = on_pod("waypoint-pod", "10.244.0.9", None);
    waypoint_pod
        .metadata
        .labels
        .get_or_insert_default()
        .insert("gateway.networking.k8s.io/gateway-name".into(), "waypoint".into());
    let services = [
        on_service("web", None),
        on_service("api", Some("other")),
        on_service("opted-out", Some("none")),
        // Named in a label though no such waypoint exists: addressed to it all the same.
        on_service("ghost", Some("missing")),
        // The waypoints' own Services.
        on_service("waypoint", None),
        on_service("other", Some("waypoint")),
        service("elsewhere", "plain", "10.96.0.11", vec![port(80, None)]),
    ];
    let pods = [
        on_pod("a", "10.244.0.5", None),
        on_pod("b", "10.244.0.6", Some("other")),
        on_pod("c", "10.244.0.7", Some("none")),
        waypoint_pod,
        pod("d", "plain", &["10.244.1.5"], 1),
    ];
    let gateways = [
        gateway("waypoint", "mesh", "weft-waypoint"),
        gateway("other", "mesh", "weft-waypoint"),
        gateway("ingress", "mesh", "some-ingress"),
    ];
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[mesh, namespace("plain", true)])
            .pods(&pods)
            .services(&services)
            .gateways(&gateways),
    );
    let of_service = |name: &str| service_of(&snapshot, name, "mesh").waypoint;
    assert_eq!(of_service("web"), address("waypoint"));
    assert_eq!(of_service("api"), address("other"), "the Service's label wins");
    assert_eq!(of_service("opted-out"), None);
    assert_eq!(of_service("ghost"), address("missing"), "fail closed");
    assert_eq!((of_service("waypoint"), of_service("other")), (None, None), "no loops");
    assert_eq!(service_of(&snapshot, "elsewhere", "plain").waypoint, None);
    let of_pod = |uid: &str| workload(&snapshot, uid).unwrap().waypoint;
    assert_eq!(of_pod("a"), address("waypoint"));
    assert_eq!(of_pod("b"), address("other"), "the pod's label wins");
    assert_eq!(of_pod("c"), None);
    assert_eq!(of_pod("waypoint-pod"), None, "a waypoint's pod");
    assert_eq!(of_pod("d"), None);
    let dump = snapshot.dump();
    let web = dump["services"].as_array().unwrap().iter().find(|s| s["name"] == "web").unwrap();
    assert_eq!(web["waypoint"], "waypoint.mesh.svc.cluster.local");
}

#[test]
fn a_service_named_like_its_own_waypoint_never_uses_it_even_before_the_gateway_exists() {
    let mesh = labelled(namespace("mesh", true), |ns| &mut ns.metadata, "waypoint");
    let services = [service("waypoint", "mesh", "10.96.0.10", vec![port(15008, None)])];
    let snapshot = build(&naming(), &Objects::default().namespaces(&[mesh]).services(&services));
    assert_eq!(service_of(&snapshot, "waypoint", "mesh").waypoint, None);
}

/// Services `web` (with a waypoint), `web-v1` and `web-v2` in `mesh`.
pub(super) fn backends() -> Vec<Service> {
    let web = labelled(
        service("web", "mesh", "10.96.0.10", vec![named("http", 80, None)]),
        |s| &mut s.metadata,
        "waypoint",
    );
    vec![
        web,
        service("web-v1", "mesh", "10.96.0.11", vec![port(8080, None)]),
        service("web-v2", "mesh", "10.96.0.12", vec![port(8080, None)]),
    ]
}

/// What namespace `mesh`, enrolled, with [`backends`] and `routes` makes.
fn with_backends(routes: &[HttpRoute]) -> Snapshot {
    build(
        &naming(),
        &Objects::default().namespaces(&[namespace("mesh", true)]).services(&backends()).http_routes(routes),
    )
}

#[test]
fn an_http_route_attached_to_a_service_becomes_its_routes_with_matches_backends_filters_timeouts_and_retries()
{
    let route = http_route(
        "split",
        1,
        serde_json::json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web", "port": 80 }],
            "hostnames": ["ignored.example.com"],
            "rules": [
                {
                    "matches": [
                        { "path": { "type": "Exact", "value": "/api" },
                          "headers": [{ "type": "RegularExpression", "name": "x-user", "value": "^a.*" }],
                          "queryParams": [{ "name": "debug", "value": "1" }],
                          "method": "POST" },
                        { "headers": [{ "name": "x-canary", "value": "yes" }] }
                    ],
                    "filters": [
                        { "type": "RequestHeaderModifier", "requestHeaderModifier": {
                            "set": [{ "name": "x-route", "value": "split" }],
                            "add": [{ "name": "x-via", "value": "waypoint" },
                                    { "name": "x-split", "value": "a\r\nx-injected: 1" }],
                            "remove": ["x-debug"] } },
                        { "type": "ResponseHeaderModifier", "responseHeaderModifier": {
                            "set": [{ "name": "x-served-by", "value": "web" }] } },
                        { "type": "URLRewrite", "urlRewrite": { "path": { "type": "ReplaceFullPath", "replaceFullPath": "/" } } }
                    ],
                    "backendRefs": [
                        { "name": "web-v1", "port": 8080, "weight": 90 },
                        { "name": "web-v2", "port": 8080, "filters": [
                            { "type": "RequestHeaderModifier", "requestHeaderModifier": {
                                "set": [{ "name": "x-backend", "value": "v2" }] } },
                            { "type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                "remove": ["x-internal"] } },
                            { "type": "RequestMirror", "requestMirror": { "backendRef": { "name": "web-v1", "port": 8080 } } }
                        ] },
                        { "name": "web-v3", "port": 8080, "weight": 5 },
                        { "group": "example.com", "kind": "Bucket", "name": "web-v1" },
                        { "name": "web-v1", "namespace": "other", "port": 8080 }
                    ],
                    "timeouts": { "request": "10s", "backendRequest": "1m500ms" },
                    "retry": { "codes": [502, 200, 503], "attempts": 3, "backoff": "100ms" }
                },
                { "backendRefs": [{ "name": "web-gone", "port": 8080 }], "timeouts": { "request": "soon" },
                  "retry": { "backoff": "later" } }
            ]
        }),
    );
    let snapshot = with_backends(std::slice::from_ref(&route));
    let routes = service_routes(&snapshot, KEY);
    assert_eq!(routes.service, KEY, "named like the Service's Address resource");
    let [route] = &routes.routes[..] else { panic!("one route: {routes:?}") };
    assert_eq!((route.name.as_str(), route.ports.as_slice()), ("mesh/split", &[80][..]));
    let [split, gone] = &route.rules[..] else { panic!("two rules: {route:?}") };
    let value = |name: &str, value: &str, regex: bool| routes::ValueMatch {
        name: name.into(),
        value: value.into(),
        regex,
    };
    let path = |kind: routes::path_match::Kind, value: &str| {
        Some(routes::PathMatch { kind: kind.into(), value: value.into() })
    };
    assert_eq!(
        split.matches,
        [
            routes::Match {
                path: path(routes::path_match::Kind::Exact, "/api"),
                headers: vec![value("x-user", "^a.*", true)],
                query_params: vec![value("debug", "1", false)],
                method: "POST".into(),
            },
            routes::Match {
                path: path(routes::path_match::Kind::Prefix, "/"),
                headers: vec![value("x-canary", "yes", false)],
                ..Default::default()
            },
        ]
    );
    let header = |name: &str, value: &str| routes::Header { name: name.into(), value: value.into() };
    assert_eq!(
        split.request_headers,
        Some(routes::HeaderModifier {
            set: vec![header("x-route", "split")],
            add: vec![header("x-via", "waypoint")],
            remove: vec!["x-debug".into()],
        })
    );
    assert_eq!(split.response_headers.as_ref().unwrap().set, [header("x-served-by", "web")]);
    let backend = |name: &str, weight: u32| routes::Backend {
        service: format!("mesh/{name}.mesh.svc.cluster.local"),
        port: 8080,
        weight,
        ..Default::default()
    };
    let unusable = |weight: u32| routes::Backend { weight, ..Default::default() };
    // A backendRef's header filters are its own; another kind of filter there is noted.
    let filtered = routes::Backend {
        request_headers: Some(routes::HeaderModifier {
            set: vec![header("x-backend", "v2")],
            ..Default::default()
        }),
        response_headers: Some(routes::HeaderModifier {
            remove: vec!["x-internal".into()],
            ..Default::default()
        }),
        ..backend("web-v2", 1)
    };
    assert_eq!(
        split.backends,
        [backend("web-v1", 90), filtered, unusable(5), unusable(1), unusable(1)],
        "invalid backends kept without a Service, so their shares are answered 500"
    );
    assert_eq!((split.request_timeout_ms, split.backend_timeout_ms), (10_000, 60_500));
    assert_eq!(gone.backends, [unusable(1)], "a rule whose only backend is missing stays: it answers 500");
    assert_eq!(gone.request_timeout_ms, 0);
    assert_eq!(
        split.rewrite,
        Some(routes::Rewrite {
            hostname: String::new(),
            path: Some(routes::PathModifier {
                kind: routes::path_modifier::Kind::Full.into(),
                value: "/".into()
            }),
        })
    );
    assert_eq!(split.retry, Some(routes::Retry { attempts: 3, codes: vec![502, 503], backoff_ms: 100 }));
    assert_eq!(
        gone.retry,
        Some(routes::Retry { attempts: 2, codes: vec![], backoff_ms: 0 }),
        "unset attempts are Istio's 2; an unreadable backoff the default"
    );
    let [status] = &snapshot.mesh_routes[..] else { panic!("one status") };
    assert_eq!(status.services, [KEY]);
    let notes = status.notes.join("\n");
    // A header value with a line break never reaches a waypoint (it would refuse the routes).
    for expected in [
        "web-v3 not found",
        "Bucket",
        "other/web-v1",
        "web-gone",
        "\"soon\"",
        "x-split",
        "200 is no failure status",
        "\"later\"",
        "backendRefs[1].filters[2]: RequestMirror on a backendRef not supported yet",
    ] {
        assert!(notes.contains(expected), "{expected} in {notes}");
    }
    assert_eq!(status.notes.len(), 9, "{notes}");
    assert_eq!((status.resolved_refs.status, status.resolved_refs.reason), (false, "BackendNotFound"));
    for unresolved in ["web-v3", "Bucket", "other/web-v1", "web-gone"] {
        assert!(
            status.resolved_refs.message.contains(unresolved),
            "{unresolved}: {:?}",
            status.resolved_refs
        );
    }
    assert_eq!(status.partially_invalid, None, "every rule applied");
    assert_eq!(snapshot.dump()["routes"][0]["routes"][0], "mesh/split");
}

#[test]
fn a_grpc_route_routes_calls_by_service_and_method_beside_an_http_route_of_the_same_name() {
    let mut grpc: GrpcRoute = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "api", "namespace": "mesh" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web", "port": 80 }],
            "rules": [
                { "matches": [{ "method": { "service": "shop.Cart", "method": "Add" } }],
                  "filters": [{ "type": "RequestHeaderModifier",
                                "requestHeaderModifier": { "set": [{ "name": "x-route", "value": "add" }] } }],
                  "backendRefs": [{ "name": "web-v2", "port": 8080 }] },
                { "matches": [{ "method": { "service": "shop.Cart" } },
                              { "method": { "method": "Watch" }, "headers": [{ "name": "x-user", "value": "a" }] },
                              { "method": { "type": "RegularExpression", "service": "shop\\.(Cart|Till)", "method": "Get.*" } }],
                  "backendRefs": [{ "name": "web-v1", "port": 8080 }] },
                { "matches": [{ "method": { "type": "SomethingNew", "service": "x" } }],
                  "backendRefs": [{ "name": "web-v1", "port": 8080 }] },
                { "backendRefs": [{ "name": "web-v1", "port": 8080 }] }
            ]
        }
    }))
    .unwrap();
    grpc.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(2).unwrap()));
    let http = http_route(
        "api",
        1,
        serde_json::json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web" }],
            "rules": [{ "backendRefs": [{ "name": "web-v2", "port": 8080 }] }]
        }),
    );
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .services(&backends())
            .http_routes([&http])
            .grpc_routes([&grpc]),
    );
    let routes = service_routes(&snapshot, KEY);
    let names: Vec<&str> = routes.routes.iter().map(|route| route.name.as_str()).collect();
    assert_eq!(names, ["mesh/api", "GRPCRoute:mesh/api"], "oldest first, each kind named apart");
    let rules = &routes.routes[1].rules;
    assert_eq!(rules.len(), 3, "the rule with a match of an unknown type is left out: {rules:?}");
    let paths: Vec<(routes::path_match::Kind, &str)> = rules[..2]
        .iter()
        .flat_map(|rule| &rule.matches)
        .map(|matching| {
            let path = matching.path.as_ref().unwrap();
            (path.kind(), path.value.as_str())
        })
        .collect();
    use routes::path_match::Kind::{Any, Exact, Prefix, Regex};
    assert_eq!(
        paths,
        [
            (Exact, "/shop.Cart/Add"),
            (Prefix, "/shop.Cart"),
            (Regex, "/[^/]+/Watch"),
            (Regex, "/(?:shop\\.(Cart|Till))/(?:Get.*)"),
        ]
    );
    assert_eq!(rules[1].matches[1].headers[0].name, "x-user", "header matches kept");
    assert_eq!(rules[0].request_headers.as_ref().unwrap().set[0].value, "add", "filters kept");
    assert_eq!(
        rules[2].matches,
        [routes::Match {
            path: Some(routes::PathMatch { kind: Any.into(), value: String::new() }),
            ..Default::default()
        }],
        "no match: every call, with no path condition (ranked below every method match)"
    );
    // The waypoint matches a regular expression against the whole path.
    let whole =
        |pattern: &str, path: &str| regex::Regex::new(&format!("^(?:{pattern})$")).unwrap().is_match(path);
    assert!(whole(paths[2].1, "/shop.Till/Watch") && !whole(paths[2].1, "/shop.Till/WatchAll"));
    assert!(!whole(paths[2].1, "/a/b/Watch"), "one segment for the service");
    assert!(whole(paths[3].1, "/shop.Till/GetTotal") && !whole(paths[3].1, "/shop.Till/Put"));

    let kinds: Vec<(RouteKind, &str)> =
        snapshot.mesh_routes.iter().map(|status| (status.kind, status.name.as_str())).collect();
    assert_eq!(kinds, [(RouteKind::Http, "api"), (RouteKind::Grpc, "api")]);
    let grpc_status = &snapshot.mesh_routes[1];
    assert!(grpc_status.partially_invalid.as_deref().unwrap().contains("rules[2]"), "{grpc_status:?}");
    assert_eq!(serde_json::to_value(grpc_status.kind).unwrap(), "GRPCRoute");
}

#[test]
fn a_tcp_route_becomes_the_services_tcp_routes_with_weighted_backends_and_its_own_status() {
    let tcp: TcpRoute = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "db", "namespace": "mesh" },
        "spec": {
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web", "port": 80 }],
            "rules": [{ "backendRefs": [{ "name": "web-v1", "port": 8080, "weight": 90 },
                                        { "name": "web-v2", "port": 8080, "weight": 10 },
                                        { "name": "nope", "port": 8080 }] }]
        }
    }))
    .unwrap();
    let snapshot = build(
        &naming(),
        &Objects::default().namespaces(&[namespace("mesh", true)]).services(&backends()).tcp_routes([&tcp]),
    );
    let routes = service_routes(&snapshot, KEY);
    assert!(routes.routes.is_empty(), "no HTTP routes: {routes:?}");
    let [route] = routes.tcp_routes.as_slice() else { panic!("one TCP route: {routes:?}") };
    assert_eq!((route.name.as_str(), route.ports.as_slice()), ("TCPRoute:mesh/db", &[80][..]));
    let backends: Vec<(&str, u32, u32)> = route.rules[0]
        .backends
        .iter()
        .map(|backend| (backend.service.as_str(), backend.port, backend.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("mesh/web-v1.mesh.svc.cluster.local", 8080, 90),
            ("mesh/web-v2.mesh.svc.cluster.local", 8080, 10),
            ("", 0, 1)
        ],
        "a missing backend stays, without a Service, for its share to be refused"
    );
    let [status] = snapshot.mesh_routes.as_slice() else { panic!("{:?}", snapshot.mesh_routes) };
    assert_eq!((status.kind, status.parents[0].accepted.reason), (RouteKind::Tcp, "Accepted"));
    assert_eq!(status.resolved_refs.reason, "BackendNotFound");
    assert_eq!(serde_json::to_value(status.kind).unwrap(), "TCPRoute");
}

#[test]
fn a_tcp_route_yields_the_ports_an_http_route_binds_and_is_conflicted_when_none_is_left() {
    let tcp = |name: &str, parent: serde_json::Value| -> TcpRoute {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "mesh" },
            "spec": { "parentRefs": [parent], "rules": [{ "backendRefs": [{ "name": "web-v1", "port": 8080 }] }] }
        }))
        .unwrap()
    };
    let mut services = backends();
    services.push(labelled(
        service("db", "mesh", "10.96.0.13", vec![named("http", 80, None), named("pg", 5432, None)]),
        |s| &mut s.metadata,
        "waypoint",
    ));
    // On web (one port, 80) and db (80 and 5432), HTTPRoutes on port 80.
    let http = |service: &str| {
        http_route(
            &format!("http-{service}"),
            1,
            serde_json::json!({
                "parentRefs": [{ "group": "", "kind": "Service", "name": service, "port": 80 }],
                "rules": [{ "backendRefs": [{ "name": "web-v2", "port": 8080 }] }]
            }),
        )
    };
    let on_web = tcp("on-web", serde_json::json!({ "group": "", "kind": "Service", "name": "web" }));
    let on_db = tcp("on-db", serde_json::json!({ "group": "", "kind": "Service", "name": "db" }));
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .services(&services)
            .http_routes(&[http("web"), http("db")])
            .tcp_routes([&on_web, &on_db]),
    );
    // web's only port is HTTP-routed: the TCPRoute applies nowhere, and says why.
    assert!(service_routes(&snapshot, KEY).tcp_routes.is_empty());
    let status = |name: &str| snapshot.mesh_routes.iter().find(|status| status.name == name).unwrap().clone();
    let web = status("on-web");
    assert_eq!(web.parents[0].accepted.reason, "Conflicted", "{web:?}");
    assert!(!web.parents[0].accepted.status && web.services.is_empty(), "{web:?}");
    // db keeps its TCP port: the route applies there only, and notes the port it yields.
    let db = service_routes(&snapshot, "mesh/db.mesh.svc.cluster.local");
    let [route] = db.tcp_routes.as_slice() else { panic!("{db:?}") };
    assert_eq!(route.ports, [5432]);
    let db_status = status("on-db");
    assert_eq!(db_status.parents[0].accepted.reason, "Accepted", "{db_status:?}");
    assert!(
        db_status
            .notes
            .iter()
            .any(|note| note.contains("port(s) [80]") && note.ends_with("applied to port(s) [5432] only")),
        "{db_status:?}"
    );
}

#[test]
fn a_waypoint_services_ports_declare_their_protocol_by_app_protocol_or_name_as_istio_reads_them() {
    let with_app_protocol = |protocol: &str, port: i32| ServicePort {
        app_protocol: Some(protocol.into()),
        ..named("anything", port, None)
    };
    let ports = vec![
        named("mysql", 3306, None),
        named("http-web", 8080, None),
        with_app_protocol("kubernetes.io/h2c", 9090),
        // appProtocol outranks the name.
        ServicePort { app_protocol: Some("tcp".into()), ..named("http", 8081, None) },
        port(7000, None),
        named("metrics", 9100, None),
        // Istio's server-first ports, when nothing is declared: TCP.
        port(27017, None),
        named("h2c", 9091, None),
    ];
    let db = labelled(service("db", "mesh", "10.96.0.13", ports.clone()), |s| &mut s.metadata, "waypoint");
    let plain = service("plain", "mesh", "10.96.0.14", ports);
    let snapshot =
        build(&naming(), &Objects::default().namespaces(&[namespace("mesh", true)]).services(&[db, plain]));
    use routes::declared_port::Protocol::{Http, Tcp};
    let declared: Vec<(u32, routes::declared_port::Protocol)> =
        service_routes(&snapshot, "mesh/db.mesh.svc.cluster.local")
            .declared_ports
            .iter()
            .map(|declared| (declared.port, declared.protocol()))
            .collect();
    // `h2c` is no port name Istio reads (only `appProtocol: kubernetes.io/h2c`).
    assert_eq!(declared, [(3306, Tcp), (8080, Http), (9090, Http), (8081, Tcp), (27017, Tcp)]);
    assert!(
        !snapshot.routes.contains_key("mesh/plain.mesh.svc.cluster.local"),
        "a Service without a waypoint needs none"
    );
}

#[test]
fn a_redirect_is_given_as_written_and_one_the_waypoint_cannot_give_drops_its_rule_not_the_route() {
    let redirect = |redirect: serde_json::Value| serde_json::json!({ "filters": [{ "type": "RequestRedirect", "requestRedirect": redirect }] });
    let route = http_route(
        "moved",
        1,
        serde_json::json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web" }],
            "rules": [
                redirect(serde_json::json!({ "scheme": "https", "hostname": "shop.example.com",
                    "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/new" }, "statusCode": 301 })),
                redirect(serde_json::json!({ "statusCode": 305 })),
                redirect(serde_json::json!({ "scheme": "ftp" })),
                redirect(serde_json::json!({ "hostname": "a b" })),
                redirect(serde_json::json!({ "path": { "type": "ReplaceFullPath", "replaceFullPath": "/a?b" } })),
                { "filters": [{ "type": "URLRewrite", "urlRewrite": { "hostname": "web.internal",
                    "path": { "type": "ReplacePrefixMatch" } } }],
                  "backendRefs": [{ "name": "web-v1", "port": 8080 }] },
            ]
        }),
    );
    let snapshot = with_backends(std::slice::from_ref(&route));
    let routes = service_routes(&snapshot, KEY);
    let [moved, rewritten] = &routes.routes[0].rules[..] else { panic!("two rules applied: {routes:?}") };
    let prefix = |value: &str| {
        Some(routes::PathModifier { kind: routes::path_modifier::Kind::Prefix.into(), value: value.into() })
    };
    assert_eq!(
        moved.redirect,
        Some(routes::Redirect {
            scheme: "https".into(),
            hostname: "shop.example.com".into(),
            path: prefix("/new"),
            port: 0,
            status_code: 301,
        })
    );
    assert_eq!(
        rewritten.rewrite,
        Some(routes::Rewrite { hostname: "web.internal".into(), path: prefix("/") }),
        "a prefix replaced by nothing is replaced by /"
    );
    let notes = snapshot.mesh_routes[0].notes.join("\n");
    for expected in ["305 is no redirect", "\"ftp\"", "\"a b\"", "\"/a?b\""] {
        assert!(notes.contains(expected), "{expected} in {notes}");
    }
    assert_eq!(snapshot.mesh_routes[0].notes.len(), 4, "{notes}");
}

#[test]
fn routes_are_ordered_oldest_first_then_by_name_gateway_routes_are_left_alone_and_consumer_routes_kept_apart()
{
    let to_web = |ports: serde_json::Value| {
        serde_json::json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web", "sectionName": ports }],
            "rules": [{ "backendRefs": [{ "name": "web-v1", "port": 8080 }] }],
        })
    };
    let routes = [
        http_route(
            "newest",
            3,
            serde_json::json!({ "parentRefs": [{ "group": "", "kind": "Service", "name": "web" }] }),
        ),
        http_route("b-old", 1, to_web("http".into())),
        http_route("a-newer", 2, to_web(serde_json::Value::Null)),
        http_route("c-old", 1, to_web(serde_json::Value::Null)),
        http_route("for-ingress", 0, serde_json::json!({ "parentRefs": [{ "name": "ingress" }] })),
        // From `mesh`, for Service `web` of `other` (with a waypoint), to where it was going or
        // to another namespace's Service it may not name.
        http_route(
            "consumer",
            0,
            serde_json::json!({
                "parentRefs": [{ "group": "", "kind": "Service", "name": "web", "namespace": "other" }],
                "rules": [{ "backendRefs": [
                    { "name": "web", "namespace": "other", "port": 80, "weight": 3 },
                    { "name": "db", "namespace": "other", "port": 80 },
                ] }],
            }),
        ),
        // Of two parents, one its own: the other's Service needs a ReferenceGrant as any does.
        http_route(
            "mixed",
            0,
            serde_json::json!({
                "parentRefs": [{ "group": "", "kind": "Service", "name": "web-v1" },
                               { "group": "", "kind": "Service", "name": "web", "namespace": "other" }],
                "rules": [{ "backendRefs": [{ "name": "web", "namespace": "other", "port": 80 }] }],
            }),
        ),
        http_route(
            "no-such-port",
            0,
            serde_json::json!({ "parentRefs": [{ "group": "", "kind": "Service", "name": "web", "port": 81 }] }),
        ),
    ];
    let mut services = backends();
    let other_web = service("web", "other", "10.96.1.10", vec![port(80, None)]);
    services.push(labelled(other_web, |s| &mut s.metadata, "waypoint"));
    services.push(service("db", "other", "10.96.1.11", vec![port(80, None)]));
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true), namespace("other", true)])
            .services(&services)
            .http_routes(&routes),
    );
    let names: Vec<(String, Vec<u32>)> =
        service_routes(&snapshot, KEY).routes.into_iter().map(|route| (route.name, route.ports)).collect();
    let expected =
        [("mesh/b-old", vec![80]), ("mesh/c-old", vec![]), ("mesh/a-newer", vec![]), ("mesh/newest", vec![])];
    assert_eq!(names, expected.map(|(name, ports)| (name.to_owned(), ports)));
    assert!(service_routes(&snapshot, KEY).consumer_routes.is_empty());
    assert_eq!(snapshot.routes.len(), 3, "web, web-v1 (mixed), other/web: {:?}", snapshot.routes.keys());
    let status = |name: &str| snapshot.mesh_routes.iter().find(|status| status.name == name);
    assert!(status("for-ingress").is_none(), "a Gateway's route is none of the mesh's business");
    // The consumer route is the other Service's, apart from its own routes, for `mesh` only.
    let other = service_routes(&snapshot, "other/web.other.svc.cluster.local");
    assert!(other.routes.is_empty(), "{other:?}");
    let [consumer_route, mixed_route] = &other.consumer_routes[..] else {
        panic!("two consumer routes: {other:?}")
    };
    assert_eq!(mixed_route.name, "mesh/mixed");
    assert_eq!(
        (consumer_route.name.as_str(), consumer_route.consumer_namespace.as_str()),
        ("mesh/consumer", "mesh")
    );
    let backends: Vec<(&str, u32)> = consumer_route.rules[0]
        .backends
        .iter()
        .map(|backend| (backend.service.as_str(), backend.weight))
        .collect();
    assert_eq!(backends, [("other/web.other.svc.cluster.local", 3), ("", 1)], "only where it was going");
    let consumer = status("consumer").unwrap();
    assert_eq!(consumer.services, ["other/web.other.svc.cluster.local"]);
    assert!(consumer.parents[0].accepted.message.contains("to requests from namespace mesh"), "{consumer:?}");
    assert!(consumer.resolved_refs.message.contains("other/db"), "{consumer:?}");
    let mixed = status("mixed").unwrap();
    assert_eq!(mixed.resolved_refs.reason, "RefNotPermitted", "{mixed:?}");
    assert!(status("no-such-port").unwrap().notes[0].contains("no port 81"));
}

#[test]
fn a_route_to_a_service_without_a_waypoint_is_compiled_and_noted() {
    let route = http_route(
        "r",
        1,
        serde_json::json!({ "parentRefs": [{ "group": "", "kind": "Service", "name": "web-v1" }] }),
    );
    let snapshot = with_backends(&[route]);
    assert!(snapshot.routes.contains_key("mesh/web-v1.mesh.svc.cluster.local"));
    let status = &snapshot.mesh_routes[0];
    assert!(status.notes[0].contains(USE_WAYPOINT), "{:?}", snapshot.mesh_routes);
    let accepted = &status.parents[0].accepted;
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, "Pending"),
        "its status says it waits for a waypoint"
    );
}

#[test]
fn a_rule_with_an_invalid_regular_expression_is_left_out_and_noted_and_the_others_kept() {
    let route = http_route(
        "r",
        1,
        serde_json::json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web" }],
            "rules": [
                { "matches": [{ "path": { "type": "RegularExpression", "value": "/v[" } }],
                  "backendRefs": [{ "name": "web-v2", "port": 8080 }] },
                { "matches": [{ "headers": [{ "type": "RegularExpression", "name": "x", "value": "a)|(b" }] }],
                  "backendRefs": [{ "name": "web-v2", "port": 8080 }] },
                { "backendRefs": [{ "name": "web-v1", "port": 8080 }] },
            ],
        }),
    );
    let snapshot = with_backends(&[route]);
    let routes = service_routes(&snapshot, "mesh/web.mesh.svc.cluster.local");
    assert_eq!(routes.routes[0].rules.len(), 1, "only the valid rule: {routes:?}");
    assert_eq!(routes.routes[0].rules[0].backends[0].service, "mesh/web-v1.mesh.svc.cluster.local");
    let notes = &snapshot.mesh_routes[0].notes;
    assert!(notes[0].contains("rules[0]") && notes[0].contains("/v["), "{notes:?}");
    assert!(notes[1].contains("rules[1]") && notes[1].contains("a)|(b"), "{notes:?}");
    let status = &snapshot.mesh_routes[0];
    assert!(status.parents[0].accepted.status, "the route stands: {status:?}");
    let partially = status.partially_invalid.as_deref().unwrap_or_default();
    assert!(
        partially.contains("rules[0]") && partially.contains("rules[1]"),
        "its status says what was left out: {partially}"
    );
    assert!(status.resolved_refs.status);
}

#[test]
fn an_l7_policy_is_served_only_where_a_waypoint_stands_and_says_where_none_does() {
    let policy = |name: &str, target: serde_json::Value| -> AuthorizationPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "mesh" },
            "spec": { "targetRefs": [target], "action": "DENY", "rules": [{}] },
        }))
        .unwrap()
    };
    let service = |name: &str| serde_json::json!({ "group": "", "kind": "Service", "name": name });
    let gateway_ref = |name: &str| serde_json::json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name });
    let policies = [
        policy("on-web", service("web")),
        policy("on-web-v1", service("web-v1")),
        policy("on-waypoint", gateway_ref("waypoint")),
        policy("on-nothing", gateway_ref("nope")),
    ];
    let gateways = [gateway("waypoint", "mesh", "weft-waypoint")];
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .services(&backends())
            .policies(&policies)
            .gateways(&gateways),
    );
    let status = |name: &str| snapshot.policies.iter().find(|status| status.name == name).unwrap();
    assert!(status("on-web").served && status("on-waypoint").served);
    for unserved in ["on-web-v1", "on-nothing"] {
        let status = status(unserved);
        assert!(!status.served, "{status:?}");
        assert!(status.notes.iter().any(|note| note.contains("not enforced there")), "{status:?}");
    }
}

#[test]
fn a_request_mirror_becomes_the_rules_mirror_and_one_to_a_missing_service_is_noted() {
    let mirror = |backend: serde_json::Value, share: serde_json::Value| {
        let mut filter = serde_json::json!({ "backendRef": backend });
        filter.as_object_mut().unwrap().extend(share.as_object().unwrap().clone());
        serde_json::json!({ "type": "RequestMirror", "requestMirror": filter })
    };
    let route = http_route(
        "shadowed",
        1,
        serde_json::json!({
            "parentRefs": [{ "group": "", "kind": "Service", "name": "web" }],
            "rules": [{
                "filters": [
                    mirror(serde_json::json!({ "name": "web-v2", "port": 8080 }), serde_json::json!({})),
                    mirror(serde_json::json!({ "name": "web-v2", "port": 8080 }), serde_json::json!({ "percent": 25 })),
                    mirror(serde_json::json!({ "name": "web-v2", "port": 8080 }),
                           serde_json::json!({ "fraction": { "numerator": 1, "denominator": 3 } })),
                    mirror(serde_json::json!({ "name": "web-gone", "port": 8080 }), serde_json::json!({})),
                ],
                "backendRefs": [{ "name": "web-v1", "port": 8080 }]
            }]
        }),
    );
    let snapshot = with_backends(std::slice::from_ref(&route));
    let rule = &service_routes(&snapshot, KEY).routes[0].rules[0];
    let shares: Vec<(u32, u32)> =
        rule.mirrors.iter().map(|mirror| (mirror.numerator, mirror.denominator)).collect();
    assert_eq!(shares, [(0, 0), (25, 100), (1, 3)], "every request, a percent, a fraction");
    assert_eq!(rule.mirrors[0].backend.as_ref().unwrap().service, "mesh/web-v2.mesh.svc.cluster.local");
    let status = &snapshot.mesh_routes[0];
    assert!(
        status.notes.iter().any(|note| note.contains("web-gone") && note.contains("not mirrored")),
        "{status:?}"
    );
    assert_eq!(status.resolved_refs.reason, "BackendNotFound");
}
