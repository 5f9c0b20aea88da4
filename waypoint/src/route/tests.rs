//! Route-matching tables: which rule a request gets under the Gateway API's precedence rules,
//! what the selected rule does to headers, and how it splits traffic between backends.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use weft_api::route as api;
use weft_api::route::path_match::Kind;

use super::{Error, Routes, Rule};

/// A route named `ns/<name>` on `ports` (empty: every port).
fn route(name: &str, ports: &[u32], rules: Vec<api::Rule>) -> api::Route {
    api::Route { name: format!("ns/{name}"), ports: ports.to_vec(), rules, ..Default::default() }
}

/// A rule whose one backend is called `tag`, so a test can tell which rule a request got.
fn rule(tag: &str, matches: Vec<api::Match>) -> api::Rule {
    api::Rule { matches, backends: vec![backend(tag, 1)], ..Default::default() }
}

fn backend(service: &str, weight: u32) -> api::Backend {
    api::Backend { service: service.into(), port: 80, weight, ..api::Backend::default() }
}

fn path(kind: Kind, value: &str) -> api::Match {
    api::Match { path: Some(api::PathMatch { kind: kind.into(), value: value.into() }), ..Default::default() }
}

fn prefix(value: &str) -> api::Match {
    path(Kind::Prefix, value)
}

fn exact(value: &str) -> api::Match {
    path(Kind::Exact, value)
}

fn regex(value: &str) -> api::Match {
    path(Kind::Regex, value)
}

fn equals(name: &str, value: &str) -> api::ValueMatch {
    api::ValueMatch { name: name.into(), value: value.into(), regex: false }
}

fn matches_regex(name: &str, value: &str) -> api::ValueMatch {
    api::ValueMatch { name: name.into(), value: value.into(), regex: true }
}

fn resource(routes: Vec<api::Route>) -> api::ServiceRoutes {
    api::ServiceRoutes { service: "ns/svc.ns.svc.cluster.local".into(), routes, ..Default::default() }
}

fn compile(routes: Vec<api::Route>) -> Routes {
    Routes::try_from(&resource(routes)).expect("valid routes")
}

/// A request to the Service, port 80 unless told.
struct Request {
    port: u16,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

fn get(uri: &str) -> Request {
    Request { port: 80, method: Method::GET, uri: uri.parse().expect("valid URI"), headers: HeaderMap::new() }
}

impl Request {
    fn method(mut self, method: &str) -> Self {
        self.method = Method::from_bytes(method.as_bytes()).expect("valid method");
        self
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        self.headers.append(name, HeaderValue::from_str(value).expect("valid header value"));
        self
    }

    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
}

/// The tag of the rule `request` gets.
fn tag<'a>(routes: &'a Routes, request: &Request) -> Option<&'a str> {
    let selected = routes.select(request.port, "", &request.method, &request.uri, &request.headers)?;
    Some(selected.rule.backends().first().expect("tagged rule").service.as_str())
}

/// Asserts the tag each request in `table` gets, naming the request when one is wrong.
fn assert_table(routes: &Routes, table: &[(Request, Option<&str>)]) {
    for (request, want) in table {
        assert_eq!(
            tag(routes, request),
            *want,
            "{} {} port {} headers {:?}",
            request.method,
            request.uri,
            request.port,
            request.headers
        );
    }
}

#[test]
fn exact_path_beats_prefix() {
    let routes = compile(vec![route(
        "r",
        &[],
        vec![rule("prefix", vec![prefix("/foo")]), rule("exact", vec![exact("/foo")])],
    )]);
    assert_table(
        &routes,
        &[
            (get("/foo"), Some("exact")),
            (get("/foo?x=1"), Some("exact")),
            (get("/foo/"), Some("prefix")),
            (get("/foo/bar"), Some("prefix")),
            (get("/bar"), None),
        ],
    );
}

#[test]
fn longest_prefix_wins_whatever_the_order() {
    // The longest prefix is in the last rule of the newest route, so neither age nor order
    // can be what picks it.
    let routes = compile(vec![
        route("old", &[], vec![rule("root", vec![prefix("/")]), rule("short", vec![prefix("/foo")])]),
        route("new", &[], vec![rule("long", vec![prefix("/foo/bar")])]),
    ]);
    assert_table(
        &routes,
        &[
            (get("/foo/bar/baz"), Some("long")),
            (get("/foo/bar"), Some("long")),
            (get("/foo/barn"), Some("short")),
            (get("/foo"), Some("short")),
            (get("/other"), Some("root")),
            (get("/"), Some("root")),
        ],
    );
}

#[test]
fn prefix_matches_whole_segments() {
    let routes = compile(vec![route("r", &[], vec![rule("foo", vec![prefix("/foo")])])]);
    assert_table(
        &routes,
        &[
            (get("/foo"), Some("foo")),
            (get("/foo/"), Some("foo")),
            (get("/foo/bar"), Some("foo")),
            (get("/foo?bar"), Some("foo")),
            (get("/foobar"), None),
            (get("/fo"), None),
            (get("/"), None),
        ],
    );
}

#[test]
fn trailing_slash_in_prefix_is_ignored() {
    // `/foo/` and `/foo` are the same match: they tie, and the older route wins.
    let routes = compile(vec![
        route("old", &[], vec![rule("slash", vec![prefix("/foo/")])]),
        route("new", &[], vec![rule("plain", vec![prefix("/foo")])]),
    ]);
    assert_table(
        &routes,
        &[
            (get("/foo"), Some("slash")),
            (get("/foo/"), Some("slash")),
            (get("/foo/bar"), Some("slash")),
            (get("/foobar"), None),
        ],
    );
}

#[test]
fn a_match_without_a_path_ranks_below_every_path_match_as_a_grpc_routes_catch_all_does() {
    // A GRPCRoute's rule without a method match comes first and is still the last resort.
    let routes = compile(vec![route(
        "grpc",
        &[],
        vec![
            rule("any", vec![path(Kind::Any, "")]),
            rule("by-header", vec![api::Match { headers: vec![equals("x-a", "1")], ..path(Kind::Any, "") }]),
            rule("watch", vec![regex("/[^/]+/Watch")]),
            rule("cart", vec![prefix("/shop.Cart")]),
            rule("add", vec![exact("/shop.Cart/Add")]),
        ],
    )]);
    assert_table(
        &routes,
        &[
            (get("/shop.Till/Watch").method("POST"), Some("watch")),
            (get("/shop.Cart/Watch").method("POST"), Some("cart")),
            (get("/shop.Cart/Add").method("POST"), Some("add")),
            (get("/shop.Till/Pay").method("POST"), Some("any")),
            (get("/shop.Till/Pay").method("POST").header("x-a", "1"), Some("by-header")),
        ],
    );
}

#[test]
fn method_match_beats_none_at_equal_path() {
    let get_only = api::Match { method: "GET".into(), ..prefix("/api") };
    let routes = compile(vec![route(
        "r",
        &[],
        vec![
            rule("any", vec![prefix("/api")]),
            rule("get", vec![get_only]),
            rule("longer", vec![prefix("/api/v1")]),
        ],
    )]);
    assert_table(
        &routes,
        &[
            (get("/api"), Some("get")),
            (get("/api").method("POST"), Some("any")),
            // Methods compare with case.
            (get("/api").method("get"), Some("any")),
            // A longer path outranks a method match.
            (get("/api/v1"), Some("longer")),
        ],
    );
}

#[test]
fn more_header_matches_win() {
    let one = api::Match { headers: vec![equals("x-a", "1")], ..prefix("/") };
    let two = api::Match { headers: vec![equals("x-a", "1"), equals("x-b", "2")], ..prefix("/") };
    let post = api::Match { method: "POST".into(), ..prefix("/") };
    let routes = compile(vec![route(
        "r",
        &[],
        vec![
            rule("none", vec![prefix("/")]),
            rule("one", vec![one]),
            rule("two", vec![two]),
            rule("post", vec![post]),
        ],
    )]);
    assert_table(
        &routes,
        &[
            (get("/").header("x-a", "1").header("x-b", "2"), Some("two")),
            (get("/").header("x-a", "1").header("x-b", "3"), Some("one")),
            (get("/").header("x-a", "1"), Some("one")),
            (get("/").header("x-b", "2"), Some("none")),
            // A method match outranks any number of header matches.
            (get("/").method("POST").header("x-a", "1").header("x-b", "2"), Some("post")),
        ],
    );
}

#[test]
fn more_query_matches_win() {
    let one = api::Match { query_params: vec![equals("a", "1")], ..prefix("/") };
    let two = api::Match { query_params: vec![equals("a", "1"), equals("b", "2")], ..prefix("/") };
    let header = api::Match { headers: vec![equals("x-h", "1")], ..prefix("/") };
    let routes = compile(vec![route(
        "r",
        &[],
        vec![
            rule("none", vec![prefix("/")]),
            rule("one", vec![one]),
            rule("two", vec![two]),
            rule("header", vec![header]),
        ],
    )]);
    assert_table(
        &routes,
        &[
            (get("/?a=1&b=2"), Some("two")),
            (get("/x?b=2&a=1"), Some("two")),
            (get("/?a=1"), Some("one")),
            (get("/?a=1&b"), Some("one")),
            // The first occurrence is the one compared.
            (get("/?a=2&a=1"), Some("none")),
            (get("/?b=2"), Some("none")),
            (get("/"), Some("none")),
            // A header match outranks any number of query parameter matches.
            (get("/?a=1&b=2").header("x-h", "1"), Some("header")),
        ],
    );
}

#[test]
fn older_route_wins_a_full_tie() {
    let old = route("old", &[], vec![rule("old", vec![prefix("/")])]);
    let new = route("new", &[], vec![rule("new", vec![prefix("/")])]);
    let request = get("/anything");

    let routes = compile(vec![old.clone(), new.clone()]);
    let selected = routes.select(80, "", &request.method, &request.uri, &request.headers).expect("a match");
    assert_eq!(selected.route, "ns/old");
    assert_eq!(tag(&routes, &request), Some("old"));

    // List order, not the name, is what decides.
    let routes = compile(vec![new, old]);
    assert_eq!(tag(&routes, &request), Some("new"));
}

#[test]
fn earlier_rule_wins_a_tie_within_a_route() {
    let routes = compile(vec![route(
        "r",
        &[],
        vec![rule("first", vec![prefix("/x")]), rule("second", vec![prefix("/x"), exact("/x/y")])],
    )]);
    assert_table(&routes, &[(get("/x/z"), Some("first")), (get("/x/y"), Some("second"))]);
}

#[test]
fn a_consumer_namespaces_routes_take_its_own_requests_on_their_ports_and_no_one_elses() {
    let consumer = |namespace: &str, ports: &[u32], tag: &str| api::Route {
        consumer_namespace: namespace.into(),
        ..route(&format!("{namespace}-{tag}"), ports, vec![rule(tag, vec![prefix("/")])])
    };
    let mut resource = resource(vec![route("own", &[80], vec![rule("own", vec![prefix("/")])])]);
    resource.consumer_routes = vec![
        consumer("shop", &[80], "shop"),
        consumer("shop", &[80], "shop-older-loses"),
        consumer("ops", &[9090], "ops"),
    ];
    let routes = Routes::try_from(&resource).expect("valid routes");
    let tag = |port: u16, namespace: &str| {
        let selected =
            routes.select(port, namespace, &Method::GET, &Uri::from_static("/"), &HeaderMap::new())?;
        Some(selected.rule.backends()[0].service.clone())
    };
    assert_eq!(tag(80, "shop").as_deref(), Some("shop"), "the consumer's own, first of its ties");
    assert_eq!(tag(80, "billing").as_deref(), Some("own"), "another namespace's requests: the Service's");
    assert_eq!(tag(80, "ops").as_deref(), Some("own"), "ops's route is for another port");
    assert_eq!(tag(80, "").as_deref(), Some("own"));
    // On a port the Service routes nothing, only the consumer's requests are routed.
    assert!(
        routes.routes_http(9090, "ops") && !routes.routes_http(9090, "shop") && !routes.routes_http(9090, "")
    );
    assert_eq!(tag(9090, "ops").as_deref(), Some("ops"));

    // A port the Service TCP-routes: the consumer's HTTP route wins for its own connections.
    resource.tcp_routes = vec![route("db", &[9090], vec![rule("db", vec![])])];
    let routes = Routes::try_from(&resource).expect("valid routes");
    assert!(routes.select_tcp(9090, "ops").is_none());
    assert_eq!(routes.select_tcp(9090, "shop").map(|selected| selected.route), Some("ns/db"));

    // One that cannot be applied is left out alone; the Service's own routes stand.
    let mut bad = consumer("shop", &[80], "bad");
    bad.rules[0].matches = vec![regex("(")];
    resource.consumer_routes = vec![consumer("", &[80], "nobody"), bad];
    let routes = Routes::try_from(&resource).expect("the Service's own routes stand");
    let selected = routes.select(80, "shop", &Method::GET, &Uri::from_static("/"), &HeaderMap::new());
    assert_eq!(selected.map(|selected| selected.route), Some("ns/own"));
}

#[test]
fn routes_apply_to_their_ports_only() {
    let routes = compile(vec![
        route("web", &[80], vec![rule("web", vec![prefix("/")])]),
        route("admin", &[9090], vec![rule("admin", vec![prefix("/admin")])]),
        route("all", &[], vec![rule("all", vec![prefix("/")])]),
    ]);
    assert_table(
        &routes,
        &[
            (get("/admin"), Some("web")),
            (get("/admin").port(9090), Some("admin")),
            (get("/").port(9090), Some("all")),
            (get("/admin").port(7000), Some("all")),
        ],
    );
}

#[test]
fn a_port_no_http_route_applies_to_is_not_routed_and_a_tcp_route_makes_its_port_tcp_unless_one_does() {
    let resource = api::ServiceRoutes {
        tcp_routes: vec![
            route("db", &[5432], vec![rule("db", vec![])]),
            route("db-newer", &[5432], vec![rule("db-newer", vec![])]),
            route("any", &[], vec![rule("any", vec![])]),
        ],
        ..resource(vec![route("web", &[80], vec![rule("web", vec![prefix("/api")])])])
    };
    let routes = Routes::try_from(&resource).expect("valid routes");
    // Port 80 is routed (404 for what matches no rule); 8080 goes to the Service itself.
    assert!(routes.routes_http(80, "") && !routes.routes_http(8080, ""));
    assert_eq!(
        routes
            .select(8080, "", &Method::GET, &"/api".parse().expect("a path"), &HeaderMap::new())
            .map(|s| s.route),
        None
    );
    // The oldest TCPRoute applying to a port takes its connections, one for every port the
    // rest — but for a port an HTTP route applies to, which it takes precedence over.
    let tcp = |port| routes.select_tcp(port, "").map(|selected| selected.route);
    assert_eq!((tcp(5432), tcp(8080), tcp(80)), (Some("ns/db"), Some("ns/any"), None));
    let only_http = compile(vec![route("web", &[80], vec![rule("web", vec![prefix("/")])])]);
    assert!(only_http.select_tcp(80, "").is_none());
}

#[test]
fn declared_ports_say_http_or_not_and_an_unknown_protocol_is_not_read_as_http() {
    use api::declared_port::Protocol;
    let declared = |port, protocol: i32| api::DeclaredPort { port, protocol };
    let declaring = api::ServiceRoutes {
        declared_ports: vec![
            declared(80, Protocol::Http.into()),
            declared(3306, Protocol::Tcp.into()),
            declared(9000, 7),
        ],
        ..resource(vec![])
    };
    let routes = Routes::try_from(&declaring).expect("valid");
    assert_eq!(
        [80, 3306, 9000, 8080].map(|port| routes.declared_http(port)),
        [Some(true), Some(false), Some(false), None]
    );
    let out_of_range = api::ServiceRoutes { declared_ports: vec![declared(70_000, 0)], ..resource(vec![]) };
    assert!(Routes::try_from(&out_of_range).is_err());
}

#[test]
fn regex_path_is_a_full_match() {
    let routes = compile(vec![route("r", &[], vec![rule("v", vec![regex("/v[0-9]+")])])]);
    assert_table(
        &routes,
        &[
            (get("/v1"), Some("v")),
            (get("/v12?q=1"), Some("v")),
            (get("/v1/x"), None),
            (get("/x/v1"), None),
            (get("/v"), None),
        ],
    );
}

#[test]
fn regex_path_ranks_below_prefix() {
    let routes = compile(vec![route(
        "r",
        &[],
        vec![rule("regex", vec![regex("/v[0-9]+")]), rule("root", vec![prefix("/")])],
    )]);
    assert_table(&routes, &[(get("/v1"), Some("root"))]);
}

#[test]
fn header_regex_is_a_full_match() {
    let env = api::Match { headers: vec![matches_regex("x-env", "prod|staging")], ..prefix("/") };
    let routes = compile(vec![route("r", &[], vec![rule("env", vec![env])])]);
    assert_table(
        &routes,
        &[
            (get("/").header("x-env", "prod"), Some("env")),
            (get("/").header("x-env", "staging"), Some("env")),
            (get("/").header("x-env", "production"), None),
            (get("/").header("x-env", "preprod"), None),
        ],
    );
}

#[test]
fn header_names_ignore_case_and_the_first_value_counts() {
    let env = api::Match { headers: vec![equals("X-Env", "prod")], ..prefix("/") };
    let routes = compile(vec![route("r", &[], vec![rule("env", vec![env])])]);
    assert_table(
        &routes,
        &[
            (get("/").header("x-env", "prod"), Some("env")),
            (get("/").header("X-ENV", "prod"), Some("env")),
            // Values compare with case.
            (get("/").header("x-env", "Prod"), None),
            (get("/").header("x-env", "prod").header("x-env", "dev"), Some("env")),
            (get("/").header("x-env", "dev").header("x-env", "prod"), None),
        ],
    );
}

#[test]
fn rule_without_matches_matches_like_prefix_root() {
    // A match without a path is a path prefix of `/` too.
    let header_only = api::Match { headers: vec![equals("x-a", "1")], ..Default::default() };
    let routes = compile(vec![route(
        "r",
        &[],
        vec![rule("default", vec![]), rule("foo", vec![prefix("/foo")]), rule("header", vec![header_only])],
    )]);
    assert_table(
        &routes,
        &[
            (get("/anything"), Some("default")),
            (get("/").method("DELETE"), Some("default")),
            (get("/foo/x"), Some("foo")),
            (get("/other").header("x-a", "1"), Some("header")),
        ],
    );
}

#[test]
fn no_routes_select_nothing() {
    let none = Routes::none("ns/svc.ns.svc.cluster.local");
    assert_eq!(none.service(), "ns/svc.ns.svc.cluster.local");
    assert_eq!(tag(&none, &get("/")), None);
    assert_eq!(tag(&compile(vec![]), &get("/")), None);
}

#[test]
fn invalid_regex_is_rejected_naming_the_route() {
    for bad in [regex("/("), api::Match { headers: vec![matches_regex("x-a", "[")], ..prefix("/") }] {
        let error = Routes::try_from(&resource(vec![route("bad", &[], vec![rule("x", vec![bad])])]))
            .expect_err("an invalid regular expression");
        assert!(matches!(&error, Error::InvalidRegex { route, .. } if route == "ns/bad"), "{error:?}");
        assert!(error.to_string().contains("ns/bad"), "{error}");
    }
}

#[test]
fn regex_cannot_escape_its_anchors() {
    // Wrapped naively this would read `^(?:/a)|(/b)$`: valid, and matching `/a` followed by
    // anything.
    let result = Routes::try_from(&resource(vec![route("r", &[], vec![rule("x", vec![regex("/a)|(/b")])])]));
    assert!(matches!(result, Err(Error::InvalidRegex { .. })), "{result:?}");
}

#[test]
fn invalid_resources_are_rejected() {
    let with_rule = |rule: api::Rule| resource(vec![route("r", &[], vec![rule])]);
    let modifier = |name: &str, value: &str| api::HeaderModifier {
        set: vec![api::Header { name: name.into(), value: value.into() }],
        ..Default::default()
    };
    /// Whether the error is the one the resource should get.
    type Expected = fn(&Error) -> bool;
    let table: Vec<(api::ServiceRoutes, Expected)> = vec![
        (api::ServiceRoutes { service: String::new(), routes: vec![], ..Default::default() }, |e| {
            matches!(e, Error::EmptyService)
        }),
        (with_rule(rule("x", vec![prefix("foo")])), |e| matches!(e, Error::InvalidPath { .. })),
        (with_rule(rule("x", vec![exact("")])), |e| matches!(e, Error::InvalidPath { .. })),
        (
            with_rule(rule(
                "x",
                vec![api::Match {
                    path: Some(api::PathMatch { kind: 7, value: "/".into() }),
                    ..Default::default()
                }],
            )),
            |e| matches!(e, Error::UnknownPathKind { kind: 7, .. }),
        ),
        (
            with_rule(rule("x", vec![api::Match { headers: vec![equals("bad name", "1")], ..prefix("/") }])),
            |e| matches!(e, Error::InvalidHeaderName { .. }),
        ),
        (with_rule(api::Rule { request_headers: Some(modifier("x-a", "a\nb")), ..rule("x", vec![]) }), |e| {
            matches!(e, Error::InvalidHeaderValue { .. })
        }),
        (with_rule(api::Rule { response_headers: Some(modifier("x:a", "1")), ..rule("x", vec![]) }), |e| {
            matches!(e, Error::InvalidHeaderName { .. })
        }),
        (resource(vec![route("r", &[70_000], vec![])]), |e| {
            matches!(e, Error::InvalidPort { port: 70_000, .. })
        }),
        (
            with_rule(api::Rule {
                backends: vec![api::Backend {
                    service: "b".into(),
                    port: 70_000,
                    weight: 1,
                    ..api::Backend::default()
                }],
                ..rule("x", vec![])
            }),
            |e| matches!(e, Error::InvalidPort { port: 70_000, .. }),
        ),
        (
            with_rule(api::Rule {
                backends: vec![backend("a", u32::MAX), backend("b", 1)],
                ..rule("x", vec![])
            }),
            |e| matches!(e, Error::WeightOverflow { .. }),
        ),
    ];
    for (resource, expected) in table {
        match Routes::try_from(&resource) {
            Ok(_) => panic!("accepted {resource:?}"),
            Err(error) => assert!(expected(&error), "{error:?} for {resource:?}"),
        }
    }
}

/// The one rule of `rule`, compiled, as every request selects it.
fn only(rule: api::Rule) -> Routes {
    compile(vec![route("r", &[], vec![api::Rule { matches: vec![], ..rule }])])
}

fn selected_rule(routes: &Routes) -> &Rule {
    let request = get("/");
    routes
        .select(80, "", &request.method, &request.uri, &request.headers)
        .expect("a rule matching everything")
        .rule
}

#[test]
fn header_modifier_sets_then_adds_then_removes() {
    let header = |name: &str, value: &str| api::Header { name: name.into(), value: value.into() };
    let routes = only(api::Rule {
        request_headers: Some(api::HeaderModifier {
            set: vec![header("X-Set", "new"), header("x-both", "set")],
            add: vec![header("x-add", "two")],
            remove: vec!["X-Remove".into(), "x-both".into()],
        }),
        response_headers: Some(api::HeaderModifier {
            set: vec![header("x-response", "1")],
            ..Default::default()
        }),
        ..rule("x", vec![])
    });
    let rule = selected_rule(&routes);

    let mut headers = get("/")
        .header("x-set", "old")
        .header("x-set", "older")
        .header("x-add", "one")
        .header("x-remove", "gone")
        .header("x-keep", "kept")
        .headers;
    rule.request_headers().apply(&mut headers);
    let values = |headers: &HeaderMap, name: &str| -> Vec<String> {
        headers.get_all(name).iter().map(|v| v.to_str().expect("ASCII").to_owned()).collect()
    };
    assert_eq!(values(&headers, "x-set"), ["new"]);
    assert_eq!(values(&headers, "x-add"), ["one", "two"]);
    assert_eq!(values(&headers, "x-keep"), ["kept"]);
    assert!(!headers.contains_key("x-remove"));
    // Removing comes last, so a header both set and removed ends up absent.
    assert!(!headers.contains_key("x-both"));
    assert!(!headers.contains_key("x-response"));

    let mut response = HeaderMap::new();
    rule.response_headers().apply(&mut response);
    assert_eq!(values(&response, "x-response"), ["1"]);
    assert_eq!(response.len(), 1);
}

#[test]
fn a_backends_own_header_filters_compile_with_it_and_a_bad_one_refuses_the_routes() {
    let header = |name: &str, value: &str| api::Header { name: name.into(), value: value.into() };
    let filtered = |name: &str| api::Backend {
        request_headers: Some(api::HeaderModifier { set: vec![header(name, "v2")], ..Default::default() }),
        response_headers: Some(api::HeaderModifier {
            remove: vec!["x-internal".into()],
            ..Default::default()
        }),
        ..backend("v2", 1)
    };
    let routes = only(api::Rule { backends: vec![filtered("x-backend")], ..rule("x", vec![]) });
    let picked = selected_rule(&routes).pick_backend_randomly().expect("one backend");
    let mut headers = HeaderMap::new();
    picked.request_headers.apply(&mut headers);
    assert_eq!(headers["x-backend"], "v2");
    let mut response = get("/").header("x-internal", "secret").headers;
    picked.response_headers.apply(&mut response);
    assert!(response.is_empty());

    let bad = resource(vec![route(
        "r",
        &[],
        vec![api::Rule { backends: vec![filtered("bad name")], ..rule("x", vec![]) }],
    )]);
    assert!(Routes::try_from(&bad).is_err(), "an invalid header name is refused as the rule's is");
}

#[test]
fn zero_timeouts_are_none() {
    let routes = only(api::Rule { request_timeout_ms: 1_500, backend_timeout_ms: 0, ..rule("x", vec![]) });
    let rule = selected_rule(&routes);
    assert_eq!(rule.request_timeout(), Some(Duration::from_millis(1_500)));
    assert_eq!(rule.backend_timeout(), None);
}

fn weighted(backends: Vec<api::Backend>) -> Routes {
    only(api::Rule { backends, ..Default::default() })
}

/// How many of `draws` picks went to each backend.
fn split(draws: usize, mut pick: impl FnMut() -> Option<String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..draws {
        *counts.entry(pick().expect("a backend")).or_default() += 1;
    }
    counts
}

#[test]
fn weighted_pick_follows_weights_exactly_over_every_draw() {
    let routes = weighted(vec![backend("a", 45), backend("zero", 0), backend("b", 5), backend("c", 50)]);
    let rule = selected_rule(&routes);
    let mut draws = 0..;
    let counts = split(100, || {
        let picked = rule.pick_backend(&mut |total| {
            assert_eq!(total, 100);
            draws.next().expect("unbounded")
        });
        picked.map(|backend| backend.service.clone())
    });
    assert_eq!(counts, BTreeMap::from([("a".into(), 45), ("b".into(), 5), ("c".into(), 50)]));
}

#[test]
fn weighted_pick_splits_90_10() {
    let routes = weighted(vec![backend("a", 90), backend("b", 10)]);
    let rule = selected_rule(&routes);

    let mut draws = 0..;
    let exact = split(100, || {
        rule.pick_backend(&mut |_| draws.next().expect("unbounded")).map(|backend| backend.service.clone())
    });
    assert_eq!(exact, BTreeMap::from([("a".into(), 90), ("b".into(), 10)]));

    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let seeded = split(10_000, || {
        rule.pick_backend(&mut |total| rng.u32(0..total)).map(|backend| backend.service.clone())
    });
    assert!((8_700..=9_300).contains(&seeded["a"]), "{seeded:?}");
    assert_eq!(seeded["a"] + seeded["b"], 10_000);

    // The thread-local generator: seeded too, as each test runs on its own thread.
    fastrand::seed(0x5eed);
    let random = split(10_000, || rule.pick_backend_randomly().map(|backend| backend.service.clone()));
    assert!((8_700..=9_300).contains(&random["a"]), "{random:?}");
    assert_eq!(random["a"] + random["b"], 10_000);
}

#[test]
fn no_weight_picks_no_backend() {
    for backends in [vec![], vec![backend("a", 0), backend("b", 0)]] {
        let routes = weighted(backends);
        let rule = selected_rule(&routes);
        assert_eq!(rule.pick_backend(&mut |_| unreachable!("nothing to draw between")), None);
        assert_eq!(rule.pick_backend_randomly(), None);
    }
}

#[test]
fn an_unusable_backend_keeps_its_share_which_picks_none() {
    // A backendRef the control plane could not resolve comes without a Service: its 10 % of
    // draws get no backend (500), not the others' backends.
    let routes = weighted(vec![backend("a", 90), backend("", 10)]);
    let rule = selected_rule(&routes);
    let mut draws = 0..;
    let picked: Vec<Option<String>> = (0..100)
        .map(|_| {
            rule.pick_backend(&mut |_| draws.next().expect("unbounded"))
                .map(|backend| backend.service.clone())
        })
        .collect();
    assert_eq!(picked.iter().filter(|one| one.as_deref() == Some("a")).count(), 90);
    assert_eq!(picked.iter().filter(|one| one.is_none()).count(), 10);
}

#[test]
fn the_selection_names_the_prefix_its_winning_match_matched_for_a_prefix_replacement() {
    let routes = compile(vec![route(
        "r",
        &[],
        vec![rule("api", vec![exact("/api/exact"), prefix("/api/"), prefix("/")]), rule("root", vec![])],
    )]);
    let matched = |uri: &str| {
        let request = get(uri);
        let selected =
            routes.select(request.port, "", &request.method, &request.uri, &request.headers).unwrap();
        selected.matched_prefix.to_owned()
    };
    assert_eq!(matched("/api/items"), "/api", "the longest prefix, its trailing '/' left out");
    assert_eq!(matched("/api/exact"), "", "an exact match is no prefix");
    assert_eq!(matched("/other"), "", "the prefix / is empty");
}

#[test]
fn a_mirror_copies_its_share_of_requests_and_one_without_a_backend_is_refused() {
    let mirror =
        |numerator, denominator| api::Mirror { backend: Some(backend("shadow", 1)), numerator, denominator };
    let mut with_mirrors = rule("main", vec![]);
    with_mirrors.mirrors = vec![mirror(0, 0), mirror(25, 100), mirror(3, 2)];
    let routes = compile(vec![route("r", &[], vec![with_mirrors.clone()])]);
    let selected = routes.select(80, "", &Method::GET, &Uri::from_static("/"), &HeaderMap::new()).unwrap();
    let [every, quarter, over] = selected.rule.mirrors() else { panic!("three mirrors") };
    assert_eq!(every.backend.service, "shadow");
    assert!(every.samples(|_| unreachable!("every request: nothing drawn")));
    assert!(quarter.samples(|n| n / 4 - 1) && !quarter.samples(|n| n / 4), "25 of every 100");
    assert!(over.samples(|_| unreachable!("a share above one: every request")));
    with_mirrors.mirrors = vec![api::Mirror { backend: None, numerator: 0, denominator: 0 }];
    let refused = Routes::try_from(&resource(vec![route("r", &[], vec![with_mirrors])]));
    assert!(matches!(refused, Err(Error::MirrorWithoutBackend { .. })), "{refused:?}");
}
