//! The waypoint end to end: a namespace labelled `weft.dev/use-waypoint` sends every request for
//! its Services through the waypoint (the Gateway of class `weft-waypoint`, its pod running
//! `weft-waypoint` outside capture), which applies the HTTPRoutes attached to a Service (GAMMA)
//! and tunnels each request on to the chosen endpoint over HBONE; what is not HTTP it relays at
//! L4. Nothing crosses the fabric in plaintext on the way.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Pod as PodObject, ServicePort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Api, api::PostParams};
use weft_tests::{
    apps, canary,
    cluster::Cluster,
    control::{self, ControlPlane},
    invariants::ProxyBaseline,
    kubelet::PodTemplate,
    mesh::{self, Mesh},
    process::Process,
    topology::Pod,
    waypoint::{Waypoint, create_http_route, create_route, routes},
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);

/// Creates Service `name` in `shop` on port 80 → 8080, selecting pods with `selector`, and
/// returns its virtual IP.
async fn create_service(cluster: &Cluster, name: &str, selector: &[(&str, &str)]) -> IpAddr {
    let port =
        ServicePort { port: 80, target_port: Some(IntOrString::Int(ECHO_PORT.into())), ..Default::default() };
    cluster.create_service("shop", name, selector, port).await.unwrap()
}

/// How many of `tally`'s answers (as `apps::http_requests` prints them) came from `name` with
/// status 200.
fn answered_by(tally: &str, name: &str) -> usize {
    tally
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, answer)| answer.starts_with(&format!("status=200 name={name} ")))
        .map(|(count, _)| count.parse::<usize>().unwrap())
        .sum()
}

/// Namespace `shop` behind waypoint `waypoint` (its pod on node 0): a client pod on node 0,
/// HTTP echo servers `v1` and `v2` on node 1 behind Services `echo` (both), `echo-v1` and
/// `echo-v2`, the control plane and the mesh; returns once every proxy knows what the requests
/// below need.
struct Scene {
    cluster: Cluster,
    plane: ControlPlane,
    waypoint: Waypoint,
    mesh: Mesh,
    client: Pod,
    v1: Pod,
    v2: Pod,
    /// The HTTP echo servers of `v1` and `v2`.
    servers: (Process, Process),
    /// Service `echo`'s VIP and port.
    to_echo: SocketAddr,
    /// Service `echo-v1`'s.
    to_echo_v1: SocketAddr,
}

impl Scene {
    async fn start() -> Self {
        Self::start_on(Cluster::start(2).await.unwrap(), &[]).await
    }

    /// The scene on `cluster`, its waypoint given `environment` by the control plane's
    /// PodTemplate, where an operator sets it.
    async fn start_on(mut cluster: Cluster, environment: &[(&str, &str)]) -> Self {
        control::install_gateway_api_crds(cluster.client()).await.unwrap();
        let labels = [("weft.dev/dataplane-mode", "ambient"), ("weft.dev/use-waypoint", "waypoint")];
        cluster.kubelet().ensure_namespace("shop", &labels).await.unwrap();
        let client =
            cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("client")).await.unwrap();
        let echo = |version: &str| {
            PodTemplate::new("shop", &format!("echo-{version}"))
                .service_account("echo")
                .label("app", "echo")
                .label("version", version)
        };
        let v1 = cluster.add_pod(1, &echo("v1")).await.unwrap();
        let v2 = cluster.add_pod(1, &echo("v2")).await.unwrap();
        let servers =
            (apps::http_echo(&v1, ECHO_PORT, "v1").unwrap(), apps::http_echo(&v2, ECHO_PORT, "v2").unwrap());
        let vip = create_service(&cluster, "echo", &[("app", "echo")]).await;
        let v1_vip = create_service(&cluster, "echo-v1", &[("version", "v1")]).await;
        create_service(&cluster, "echo-v2", &[("version", "v2")]).await;
        let plane = ControlPlane::start(&cluster).await.unwrap();
        if !environment.is_empty() {
            let env: Vec<_> = environment
                .iter()
                .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
                .collect();
            let template = serde_json::json!({
                "metadata": { "name": "weft-waypoint" },
                "template": { "spec": { "containers": [{ "name": "waypoint", "image": "weft/waypoint", "env": env }] } },
            });
            Api::<k8s_openapi::api::core::v1::PodTemplate>::namespaced(cluster.client(), control::NAMESPACE)
                .create(&PostParams::default(), &serde_json::from_value(template).unwrap())
                .await
                .unwrap();
        }
        let waypoint = Waypoint::start(&mut cluster, &plane, "shop", "waypoint", 0).await.unwrap();
        let mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
        tokio::task::block_in_place(|| {
            let client_node = &cluster.topology().nodes()[0].netns;
            mesh::wait_for_endpoints(client_node, "shop/waypoint.shop.svc.cluster.local", 1, WAIT).unwrap();
            for version in ["echo-v1", "echo-v2"] {
                let service = format!("shop/{version}.shop.svc.cluster.local");
                mesh::wait_for_endpoints(&waypoint.pod().netns, &service, 1, WAIT).unwrap();
            }
            mesh::wait_for_endpoints(&waypoint.pod().netns, "shop/echo.shop.svc.cluster.local", 2, WAIT)
                .unwrap();
        });
        let (to_echo, to_echo_v1) = (SocketAddr::new(vip, 80), SocketAddr::new(v1_vip, 80));
        Self { cluster, plane, waypoint, mesh, client, v1, v2, servers, to_echo, to_echo_v1 }
    }

    /// What the waypoint holds once nothing is in flight, to come back to after a fault; after
    /// requests to both endpoints, so that what a first request sets up for good is in it.
    fn waypoint_baseline(&mut self) -> ProxyBaseline {
        let tally = apps::http_requests(&self.client, self.to_echo, "/baseline", &[], 10).unwrap();
        assert_eq!(answered_by(&tally, "v1") + answered_by(&tally, "v2"), 10, "{tally}");
        let pid = self.waypoint.process().pid();
        ProxyBaseline::take(pid, &self.waypoint.pod().netns, WAIT).unwrap()
    }

    /// The connections the waypoint's pools may keep for minutes after a load: one per worker
    /// thread from the client's node proxy and to each of the two endpoint pods.
    fn waypoint_pooled(&self) -> usize {
        3 * weft_tests::invariants::pool_lanes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_http_routes_are_applied_by_its_waypoint() {
    let mut scene = Scene::start().await;
    let (client, to_echo) = (scene.client.clone(), scene.to_echo);

    // Without routes the waypoint sends each request to the Service itself.
    let canary = canary();
    let monitor = WireMonitor::start(scene.cluster.topology().fabric(), &canary).unwrap();
    tokio::task::block_in_place(|| {
        let tally = apps::http_requests(&client, to_echo, &format!("/{canary}"), &[], 20).unwrap();
        assert_eq!(answered_by(&tally, "v1") + answered_by(&tally, "v2"), 20, "{tally}");
        let line = scene
            .waypoint
            .process()
            .wait_for(|line| line.contains(" request") && line.contains(&canary), WAIT)
            .unwrap();
        assert!(
            line.contains("status=200") && line.contains("spiffe://cluster.local/ns/shop/sa/client"),
            "{line}"
        );
        // A client's requests on one connection reach the app on one connection: the
        // waypoint's connection upstream is kept for the next request once an answer is read.
        let tally = apps::http_requests(&client, scene.to_echo_v1, "/connection", &[], 20).unwrap();
        assert_eq!(tally.lines().filter(|line| line.contains("status=")).count(), 1, "{tally}");
        assert!(tally.starts_with("20 status=200 name=v1 connection="), "{tally}");
    });

    // An HTTPRoute attached to the Service: by path, by header (with a header set), a redirect,
    // a rewrite, a mirror, and a 90/10 split for the rest.
    let spec = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "echo", "port": 80 }],
        "rules": [
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/v2" } }],
              "backendRefs": [{ "name": "echo-v2", "port": 80 }] },
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/old" } }],
              "filters": [{ "type": "RequestRedirect", "requestRedirect": { "statusCode": 301,
                  "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/new" } } }] },
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/api/" } }],
              "filters": [{ "type": "URLRewrite", "urlRewrite": { "hostname": "echo.internal",
                  "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/" } } }],
              "backendRefs": [{ "name": "echo-v2", "port": 80 }] },
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/mirror" } }],
              "filters": [{ "type": "RequestMirror",
                            "requestMirror": { "backendRef": { "name": "echo-v2", "port": 80 } } }],
              "backendRefs": [{ "name": "echo-v1", "port": 80 }] },
            { "matches": [{ "headers": [{ "name": "x-canary", "value": "yes" }] }],
              "filters": [{ "type": "RequestHeaderModifier",
                            "requestHeaderModifier": { "set": [{ "name": "x-routed", "value": "canary" }] } }],
              "backendRefs": [{ "name": "echo-v2", "port": 80 }] },
            { "backendRefs": [{ "name": "echo-v1", "port": 80, "weight": 90 },
                              { "name": "echo-v2", "port": 80, "weight": 10 }] },
        ],
    });
    create_http_route(scene.cluster.client(), "shop", "echo", spec).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the route to reach the waypoint", WAIT, || {
            let tally = apps::http_requests(&client, to_echo, "/v2/check", &[], 5).unwrap();
            answered_by(&tally, "v2") == 5
        })
        .unwrap();
        let by_path = apps::http_requests(&client, to_echo, &format!("/v2/{canary}"), &[], 50).unwrap();
        assert_eq!(answered_by(&by_path, "v2"), 50, "a path prefix picks its rule: {by_path}");
        let not_a_segment = apps::http_requests(&client, to_echo, "/v2x", &[], 50).unwrap();
        assert_eq!(
            answered_by(&not_a_segment, "v2") + answered_by(&not_a_segment, "v1"),
            50,
            "{not_a_segment}"
        );
        assert!(answered_by(&not_a_segment, "v1") > 30, "/v2x is no path under /v2: {not_a_segment}");
        // Redirected by the waypoint, nothing sent on; rewritten, then sent on.
        let moved = "GET /old/page?q=1 HTTP/1.1\\r\\nhost: echo.shop\\r\\nconnection: close\\r\\n\\r\\n";
        let answer = apps::http_raw(&client, to_echo, moved).unwrap();
        assert!(answer.starts_with("HTTP/1.1 301"), "{answer:?}");
        assert!(answer.contains("location: http://echo.shop/new/page?q=1\r\n"), "{answer:?}");
        let rewritten = apps::http_requests(&client, to_echo, "/api/items?id=7", &[], 1).unwrap();
        assert!(rewritten.contains("1 status=200 name=v2 method=GET path=/items?id=7"), "{rewritten}");
        assert!(rewritten.contains("body: header host=echo.internal"), "{rewritten}");
        let by_header = apps::http_requests(&client, to_echo, "/", &["x-canary: yes"], 20).unwrap();
        assert_eq!(answered_by(&by_header, "v2"), 20, "a header picks its rule: {by_header}");
        assert!(by_header.contains("body: header x-routed=canary"), "the rule's header set: {by_header}");
        // Answered by v1; a copy reached v2, its answer dropped.
        let mirrored = apps::http_requests(&client, to_echo, &format!("/mirror/{canary}"), &[], 1).unwrap();
        assert!(mirrored.contains("1 status=200 name=v1 "), "{mirrored}");
        let copy = format!("served GET /mirror/{canary}");
        scene.servers.1.wait_for(|line| line == copy, WAIT).unwrap();

        let requests = 10_000;
        let split = apps::http_requests(&client, to_echo, "/", &[], requests).unwrap();
        let (to_v1, to_v2) = (answered_by(&split, "v1"), answered_by(&split, "v2"));
        assert_eq!(to_v1 + to_v2, requests, "{split}");
        let share = to_v1 as f64 / requests as f64;
        println!(
            "90/10 split over {requests} requests: {to_v1} to v1 ({:.2} %), {to_v2} to v2",
            share * 100.0
        );
        assert!((0.87..=0.93).contains(&share), "v1's share {share} is not 90 % ± 3 %");

        let routed =
            scene.waypoint.process().wait_for(|line| line.contains("route=shop/echo"), WAIT).unwrap();
        assert!(routed.contains("backend=shop/echo-v"), "{routed}");
        monitor.settle(WAIT).unwrap();
        assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric on the waypoint's path");

        // Every request counted, by route, source and destination, as Istio's waypoint counts.
        let scraped = apps::http_get(&scene.waypoint.pod().netns, 15020, "/metrics").unwrap();
        let counted = |destination: &str| -> usize {
            let series = format!(
                "weft_requests_total{{reporter=\"waypoint\",response_code=\"200\",route=\"shop/echo\",source_workload=\"client\",source_workload_namespace=\"shop\",source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",destination_service=\"shop/echo.shop.svc.cluster.local\",destination_workload=\"{destination}\""
            );
            let line = scraped
                .lines()
                .find(|line| line.starts_with(&series))
                .unwrap_or_else(|| panic!("no {series} in {scraped}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(counted("echo-v1") >= to_v1 && counted("echo-v2") >= to_v2, "{scraped}");

        // weftctl check names the waypoint and the rule a request gets, as the waypoint chose.
        let flags = scene.mesh.weftctl_flags(&scene.cluster, &scene.plane).unwrap();
        let check = |path: &str| -> serde_json::Value {
            let args =
                ["check", "shop/echo", "--service", "--path", path, "--from", "shop/client", "-o", "json"];
            let (ok, out) = apps::weftctl(&flags, &args).unwrap();
            assert!(ok, "weftctl check --service, {path}: {out}");
            serde_json::from_str(&out).unwrap()
        };
        let found = check("/v2/x");
        let detail = |check: &str| {
            found.as_array().unwrap().iter().find(|one| one["check"] == check).unwrap()["detail"].clone()
        };
        assert_eq!(detail("waypoint"), "shop/waypoint: ready (1 ready endpoint(s))", "{found}");
        assert_eq!(
            detail("route"),
            "shop/echo → shop/echo-v2.shop.svc.cluster.local:80 weight 1 (1 healthy endpoint(s))",
            "{found}"
        );
        let found = check("/old/page");
        let route = found.as_array().unwrap().last().unwrap();
        assert_eq!(
            route["detail"], "shop/echo: redirected (301) to http://echo.shop.svc.cluster.local/new/page",
            "{found}"
        );
    });

    // The route's status says it is applied; one whose backend is missing and one of whose
    // parents has no such port says so, per parent, as the Gateway API asks.
    let broken = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "echo-v2", "port": 80 },
                       { "group": "", "kind": "Service", "name": "echo-v2", "port": 81 }],
        "rules": [{ "backendRefs": [{ "name": "nope", "port": 80 }] }],
    });
    create_http_route(scene.cluster.client(), "shop", "broken", broken).await.unwrap();
    let expected = [
        ("echo", vec!["echo:80 Accepted=True Accepted", "echo:80 ResolvedRefs=True ResolvedRefs"]),
        (
            "broken",
            vec![
                "echo-v2:80 Accepted=True Accepted",
                "echo-v2:80 ResolvedRefs=False BackendNotFound",
                "echo-v2:81 Accepted=False NoMatchingParent",
                "echo-v2:81 ResolvedRefs=False BackendNotFound",
            ],
        ),
    ];
    for (route, conditions) in expected {
        let client = scene.cluster.client();
        let reported =
            weft_tests::eventually(&format!("HTTPRoute {route}'s status"), WAIT, || {
                let (client, conditions) = (client.clone(), conditions.clone());
                async move {
                    route_conditions(client, "HTTPRoute", route).await.filter(|seen| *seen == conditions)
                }
            })
            .await;
        assert!(
            reported.is_ok(),
            "{route}: {:?}",
            route_conditions(scene.cluster.client(), "HTTPRoute", route).await
        );
    }

    // Attached to no Service any more (a Gateway's route now): Weft's entries leave its status.
    let to_a_gateway = serde_json::json!({ "spec": { "parentRefs": [{ "name": "ingress" }] } });
    routes(scene.cluster.client(), "HTTPRoute", "shop")
        .patch("broken", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(to_a_gateway))
        .await
        .unwrap();
    let client = scene.cluster.client();
    let swept = weft_tests::eventually("Weft's entries to leave HTTPRoute broken", WAIT, || {
        let client = client.clone();
        async move { route_conditions(client, "HTTPRoute", "broken").await.is_none().then_some(()) }
    })
    .await;
    assert!(swept.is_ok(), "{:?}", route_conditions(scene.cluster.client(), "HTTPRoute", "broken").await);
}

const GRPC_PORT: u16 = 9090;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_cross_the_waypoint_routed_by_a_grpc_route() {
    let mut scene = Scene::start().await;
    let _servers = (
        apps::grpc_echo(&scene.v1, GRPC_PORT, "v1").unwrap(),
        apps::grpc_echo(&scene.v2, GRPC_PORT, "v2").unwrap(),
    );
    let port = |name: &str| ServicePort {
        name: Some(name.into()),
        port: GRPC_PORT.into(),
        app_protocol: Some("grpc".into()),
        ..Default::default()
    };
    let mut vip = None;
    for (service, selector) in
        [("grpc", ("app", "echo")), ("grpc-v1", ("version", "v1")), ("grpc-v2", ("version", "v2"))]
    {
        let created = scene.cluster.create_service("shop", service, &[selector], port("grpc")).await.unwrap();
        vip.get_or_insert(created);
    }
    let to_grpc = SocketAddr::new(vip.unwrap(), GRPC_PORT);
    tokio::task::block_in_place(|| {
        let client_node = &scene.cluster.topology().nodes()[0].netns;
        mesh::wait_for_endpoints(client_node, "shop/grpc.shop.svc.cluster.local", 2, WAIT).unwrap();
        for (service, endpoints) in [("grpc", 2), ("grpc-v1", 1), ("grpc-v2", 1)] {
            let service = format!("shop/{service}.shop.svc.cluster.local");
            mesh::wait_for_endpoints(&scene.waypoint.pod().netns, &service, endpoints, WAIT).unwrap();
        }
    });
    let client = &scene.client.clone();

    // Without a route, calls go to the Service's endpoints; nothing crosses in plaintext.
    let canary = canary();
    let monitor = WireMonitor::start(scene.cluster.topology().fabric(), &canary).unwrap();
    tokio::task::block_in_place(|| {
        let tally = apps::grpc_calls(client, to_grpc, &canary, 20).unwrap();
        let answered = |tally: &str, server: &str| tally.contains(&format!(" ok server={server}\n"));
        assert!(answered(&tally, "v1") || answered(&tally, "v2"), "{tally}");
        assert!(!tally.contains("code="), "{tally}");
        monitor.settle(WAIT).unwrap();
        assert_eq!(monitor.canary_frames(), 0, "gRPC crossed the fabric in plaintext");
    });

    // A GRPCRoute: the streaming method to v2, the rest to v1.
    let spec = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "grpc", "port": GRPC_PORT }],
        "rules": [
            { "matches": [{ "method": { "service": "weft.test.Echo", "method": "Chat" } }],
              "backendRefs": [{ "name": "grpc-v2", "port": GRPC_PORT }] },
            { "backendRefs": [{ "name": "grpc-v1", "port": GRPC_PORT }] },
        ],
    });
    create_route(scene.cluster.client(), "GRPCRoute", "shop", "grpc", spec).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the GRPCRoute to reach the waypoint", WAIT, || {
            apps::grpc_calls(client, to_grpc, "check", 5).unwrap() == "5 ok server=v1\n"
        })
        .unwrap();
        assert_eq!(apps::grpc_calls(client, to_grpc, "hello", 50).unwrap(), "50 ok server=v1\n");
        // Each message is answered before the next is sent: the waypoint streams both ways.
        let chat = apps::grpc_chat(client, to_grpc, 100).unwrap();
        assert_eq!(chat, "chat: 100 answered in order by v2\n");
        // The app's gRPC status comes back in its trailers.
        assert_eq!(apps::grpc_calls(client, to_grpc, "fail", 3).unwrap(), "3 code=NotFound\n");
        let routed = scene
            .waypoint
            .process()
            .wait_for(|line| line.contains("route=GRPCRoute:shop/grpc") && line.contains("Chat"), WAIT)
            .unwrap();
        assert!(routed.contains("backend=shop/grpc-v2"), "{routed}");
    });

    // A fault on the GRPCRoute: its calls answered UNAVAILABLE by the waypoint, as gRPC answers.
    let unavailable = serde_json::json!({
        "targetRefs": [{ "group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "name": "grpc" }],
        "abort": { "grpcStatus": "UNAVAILABLE", "percentage": { "value": 100 } },
    });
    create_traffic_policy(&scene.cluster, "FaultInjectionPolicy", "unavailable", unavailable).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the fault to reach the waypoint", WAIT, || {
            apps::grpc_calls(client, to_grpc, "faulty", 5).unwrap() == "5 code=Unavailable\n"
        })
        .unwrap();
        // The waypoint's answer, not a failed transport's.
        scene
            .waypoint
            .process()
            .wait_for(
                |line| line.contains("policy=aborted by shop/unavailable") && line.contains("status=200"),
                WAIT,
            )
            .unwrap();
        // Counted by their gRPC status, as Istio's waypoint counts them: OK and the app's
        // NotFound from the trailers, the waypoint's UNAVAILABLE from its trailers-only answer.
        let scraped = apps::http_get(&scene.waypoint.pod().netns, 15020, "/metrics").unwrap();
        for code in ["0", "5", "14"] {
            let counted = scraped.lines().any(|line| {
                line.starts_with("weft_requests_total{")
                    && line.contains("route=\"GRPCRoute:shop/grpc\"")
                    && line.contains(&format!("grpc_response_status=\"{code}\""))
            });
            assert!(counted, "no call counted with grpc_response_status {code}: {scraped}");
        }
    });

    let expected = ["grpc:9090 Accepted=True Accepted", "grpc:9090 ResolvedRefs=True ResolvedRefs"];
    let client = scene.cluster.client();
    let reported = weft_tests::eventually("GRPCRoute grpc's status", WAIT, || {
        let client = client.clone();
        async move { route_conditions(client, "GRPCRoute", "grpc").await.filter(|seen| *seen == expected) }
    })
    .await;
    assert!(reported.is_ok(), "{:?}", route_conditions(scene.cluster.client(), "GRPCRoute", "grpc").await);

    // A restarted control plane leaves the status as it is: nothing is taken away while its
    // index is still listing, to be written again (with new transition times) once it synced.
    let grpc_routes = routes(scene.cluster.client(), "GRPCRoute", "shop");
    let before = grpc_routes.get("grpc").await.unwrap().metadata.resource_version;
    scene.plane.restart(scene.cluster.client()).await.unwrap();
    tokio::task::block_in_place(|| {
        scene.plane.process().wait_for(|line| line.contains("Kubernetes index synced"), WAIT).unwrap();
    });
    let after = grpc_routes.get("grpc").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before,
        "the route was rewritten: {:?}",
        after.data["status"]
    );

    // weftctl says the same: the route applied, the waypoint ready for the Services behind it.
    let flags = scene.mesh.weftctl_flags(&scene.cluster, &scene.plane).unwrap();
    tokio::task::block_in_place(|| {
        let json = |command: &str| -> serde_json::Value {
            let (ok, out) = apps::weftctl(&flags, &[command, "-o", "json"]).unwrap();
            assert!(ok, "weftctl {command}: {out}");
            serde_json::from_str(&out).unwrap()
        };
        let routes = json("routes");
        let grpc = routes.as_array().unwrap().iter().find(|route| route["kind"] == "GRPCRoute").unwrap();
        assert_eq!(grpc["parents"], serde_json::json!(["grpc:9090 Accepted"]), "{routes}");
        assert_eq!(grpc["backends"], "ResolvedRefs", "{routes}");
        let waypoints = json("waypoints");
        let [waypoint] = waypoints.as_array().unwrap().as_slice() else {
            panic!("one waypoint: {waypoints}")
        };
        assert_eq!((&waypoint["waypoint"], &waypoint["state"]), (&"shop/waypoint".into(), &"ready".into()));
        let behind = waypoint["services"].as_array().unwrap();
        for service in ["shop/echo", "shop/grpc", "shop/grpc-v1"] {
            assert!(behind.iter().any(|one| one == service), "{service}: {waypoints}");
        }
    });
}

/// The conditions Weft reported on the route of `kind` `shop/<name>`, as `<parent>:<port>
/// <type>=<status> <reason>`; `None` before any.
async fn route_conditions(client: kube::Client, kind: &str, name: &str) -> Option<Vec<String>> {
    let route = routes(client, kind, "shop").get(name).await.ok()?;
    let mut seen = Vec::new();
    let parents = route.data["status"]["parents"].as_array()?;
    for parent in parents.iter().filter(|parent| parent["controllerName"] == "weft.dev/mesh-controller") {
        let at = format!("{}:{}", parent["parentRef"]["name"].as_str()?, parent["parentRef"]["port"]);
        for condition in parent["conditions"].as_array()? {
            let (kind, status) = (condition["type"].as_str()?, condition["status"].as_str()?);
            seen.push(format!("{at} {kind}={status} {}", condition["reason"].as_str()?));
        }
    }
    (!seen.is_empty()).then_some(seen)
}

/// Sends one GET of `path` to `to` (a Service of v1 alone) from the client, asserts that its
/// answer was `answer` (`<status> <first body line>`, or a prefix) and that v1's app saw it
/// exactly `attempts` times: a request sent after it is the next the app sees.
fn one_request(scene: &mut Scene, to: SocketAddr, path: &str, answer: &str, attempts: usize) {
    let tally = apps::http_requests(&scene.client, to, path, &[], 1).unwrap();
    assert!(tally.contains(&format!("1 status={answer}")), "{path}: {tally}");
    let app = &mut scene.servers.0;
    for _ in 0..attempts {
        app.wait_for(|line| line == format!("served GET {path}"), WAIT).unwrap();
    }
    let after = format!("/after{path}");
    apps::http_requests(&scene.client, to, &after, &[], 1).unwrap();
    let next = app.wait_for(|line| line.starts_with("served "), WAIT).unwrap();
    assert_eq!(next, format!("served GET {after}"), "{path}: an attempt too many reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_as_istio_does_by_default_or_as_the_routes_retry_says_and_no_more() {
    let mut scene = Scene::start().await;
    let to_v1 = scene.to_echo_v1;
    let baseline = tokio::task::block_in_place(|| scene.waypoint_baseline());
    tokio::task::block_in_place(|| {
        // Istio's default, with no route: a 503 is tried twice more, so one 503 is recovered ...
        one_request(&mut scene, to_v1, "/fail-first/1/a", "200 name=v1", 2);
        // ... and three are answered with the last of them, after exactly three attempts.
        one_request(&mut scene, to_v1, "/fail-first/3/b", "503 name=v1", 3);
        let logged = scene
            .waypoint
            .process()
            .wait_for(|line| line.contains(" request") && line.contains("/fail-first/3/b"), WAIT)
            .unwrap();
        assert!(logged.contains("retries=2") && logged.contains("status=503"), "{logged}");
        // A 500 is no reason to retry by default.
        one_request(&mut scene, to_v1, "/status/500", "500", 1);
    });

    // A route's retry replaces the default: one retry, of a 500 only.
    let spec = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "echo-v1", "port": 80 }],
        "rules": [{ "backendRefs": [{ "name": "echo-v1", "port": 80 }],
                    "filters": [{ "type": "RequestHeaderModifier",
                                  "requestHeaderModifier": { "set": [{ "name": "x-routed", "value": "retry" }] } }],
                    "retry": { "codes": [500], "attempts": 1, "backoff": "10ms" } }],
    });
    create_http_route(scene.cluster.client(), "shop", "echo-v1", spec).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the route to reach the waypoint", WAIT, || {
            let tally = apps::http_requests(&scene.client, to_v1, "/probe", &[], 1).unwrap();
            tally.contains("body: header x-routed=retry")
        })
        .unwrap();
        one_request(&mut scene, to_v1, "/status/500", "500", 2);
        // 503 is not the route's to retry.
        one_request(&mut scene, to_v1, "/fail-first/1/c", "503", 1);
        // The failed attempts left nothing behind.
        baseline.returned(scene.waypoint_pooled(), WAIT).unwrap();
    });
}

/// A certificate for `shop/<account>` from the mesh CA, asked with a token of `holder`
/// (namespace, service account, pod name, pod uid): as a node proxy impersonating `account`, or
/// (`own`) as a waypoint asking for its own. From node 0, where pods reach the CA.
async fn mesh_certificate(
    cluster: &Cluster,
    plane: &ControlPlane,
    holder: (&str, &str, &str, Option<&str>),
    account: &str,
    own: bool,
) -> Result<Arc<weft_proxy::tls::WorkloadCert>, String> {
    use weft_proxy::{
        control::ProxyMeta,
        identity::{Identity, ca::GrpcCa, manager::Manager},
    };
    let (namespace, service_account, pod, uid) = holder;
    let token = control::request_token_for(
        cluster.client(),
        (namespace, service_account),
        pod,
        uid,
        control::AUDIENCE,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let (address, root_file) = (plane.address(), plane.root_file().to_owned());
    let identity = Identity::new("cluster.local", "shop", account);
    let node0 = cluster.topology().nodes()[0].netns.clone();
    node0
        .run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let ca = GrpcCa::new(&address, &root_file, &token_file, &ProxyMeta::default()).unwrap();
                let ca = if own { ca.for_own_identity() } else { ca };
                let manager = Manager::new(Arc::new(ca), Duration::from_secs(3600));
                manager.fetch(&identity).await.map_err(|error| error.to_string())
            })
        })
        .unwrap()
}

/// Plays a client's node proxy that ignores waypoints: with a certificate for `shop/<account>`
/// from the mesh CA (asked with node 0's proxy token, as that node's proxy may), it opens HBONE
/// straight to `target` from node 0, expecting `target`'s pod to prove `shop/echo`. Returns the
/// CONNECT's status.
async fn connect_around_the_waypoint(scene: &Scene, account: &str, target: SocketAddr) -> u16 {
    use weft_proxy::{
        hbone::client::{Connection, Error, Origin},
        identity::{Expected, Identity},
        tls,
    };
    let proxies = Api::<PodObject>::namespaced(scene.cluster.client(), control::NAMESPACE);
    let proxy_pod = proxies.get("ztunnel-node0").await.unwrap();
    let holder = (
        control::NAMESPACE,
        control::PROXY_SERVICE_ACCOUNT,
        "ztunnel-node0",
        proxy_pod.metadata.uid.as_deref(),
    );
    let cert = mesh_certificate(&scene.cluster, &scene.plane, holder, account, false).await.unwrap();
    let node0 = scene.cluster.topology().nodes()[0].netns.clone();
    let connected = node0.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let expected = Expected::from(Identity::new("cluster.local", "shop", "echo"));
            let config = tls::client_config(&cert, &expected).unwrap();
            let tcp = tokio::net::TcpStream::connect((target.ip(), 15008)).await.unwrap();
            let connection = Connection::handshake(tcp, config).await.unwrap();
            let origin = Origin::from_address(SocketAddr::new(target.ip(), 0));
            match connection.open(target, &origin, &Origin::traceparent().to_string()).await {
                Ok(_) => 200,
                Err(Error::Refused { status, .. }) => status.as_u16(),
                Err(error) => panic!("CONNECT to {target}: {error}"),
            }
        })
    });
    connected.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_proxy_that_skips_the_waypoint_is_refused_by_the_destination() {
    let mut scene = Scene::start().await;
    let to_v1 = SocketAddr::new(scene.v1.ipv4.into(), ECHO_PORT);
    // The client's identity, straight to the pod behind the waypoint: refused, and logged.
    assert_eq!(connect_around_the_waypoint(&scene, "client", to_v1).await, 401);
    tokio::task::block_in_place(|| {
        let denied =
            scene.mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE denied"), WAIT).unwrap();
        assert!(denied.contains("behind waypoint shop/waypoint.shop.svc.cluster.local"), "{denied}");
    });
    // The waypoint's identity, the same way: admitted. Only the identity made the difference.
    assert_eq!(connect_around_the_waypoint(&scene, "waypoint", to_v1).await, 200);
    // And through the mesh, the client still reaches the pod: by way of the waypoint.
    tokio::task::block_in_place(|| {
        let tally = apps::http_requests(&scene.client, to_v1, "/direct", &[], 3).unwrap();
        assert_eq!(answered_by(&tally, "v1"), 3, "{tally}");
        let line = scene.waypoint.process().wait_for(|line| line.contains("path=/direct"), WAIT).unwrap();
        assert!(line.contains("status=200"), "{line}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_gets_400_a_smuggled_one_is_never_read_and_http2_abusers_are_cut_off() {
    let mut scene = Scene::start().await;
    let to_echo = scene.to_echo;
    tokio::task::block_in_place(|| {
        let smuggled = "POST / HTTP/1.1\\r\\nhost: echo\\r\\ncontent-length: 4\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\nhost: echo\\r\\n\\r\\n";
        let garbage = "GET / HTTP/1.1\\r\\nthis is no header\\r\\n\\r\\n";
        let answer = apps::http_raw(&scene.client, to_echo, garbage).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "a malformed header: {answer:?}");
        assert!(!answer.contains("name=v"), "a malformed request reached an app: {answer:?}");
        // Framed both ways: read as chunked (an empty body), the connection closed after it, so
        // the request hidden in its body is never read as one, by the waypoint or the app.
        let answer = apps::http_raw(&scene.client, to_echo, smuggled).unwrap();
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one request, one answer: {answer:?}");
        assert!(answer.contains("method=POST path=/\n"), "{answer:?}");
        assert!(
            !answer.contains("content-length=4"),
            "the app got the framing the waypoint read: {answer:?}"
        );
        assert!(!answer.contains("/smuggled"), "{answer:?}");
        // What the waypoint holds in use, to come back to once the abusers are gone.
        let tally = apps::http_requests(&scene.client, to_echo, "/before", &[], 20).unwrap();
        assert_eq!(answered_by(&tally, "v1") + answered_by(&tally, "v2"), 20, "{tally}");
        let baseline = scene.waypoint_baseline();
        // HTTP/2 abuse, as the node proxy meets it on HBONE: each abuser's connection is cut
        // off (GOAWAY or closed) rather than served on. First (so that no earlier session's
        // line can be taken for its own): a client cancelling each request once it is under
        // way, which escapes h2's own count, not the waypoint's.
        let paced = apps::h2_abuse(&scene.client, to_echo, "paced-reset").unwrap();
        assert!(paced.contains("cut-off by"), "a client cancelling every request was served on: {paced}");
        let closed =
            scene.waypoint.process().wait_for(|line| line.contains("client cancelled more than"), WAIT);
        assert!(closed.is_ok(), "the waypoint's own count did not close the session: {paced}");
        let rapid = apps::h2_abuse(&scene.client, to_echo, "rapid-reset").unwrap();
        assert!(rapid.contains("cut-off by"), "a rapid-reset client was served on: {rapid}");
        eprintln!("paced reset: {paced}\nrapid reset: {rapid}");
        let flood = apps::h2_abuse(&scene.client, to_echo, "continuation").unwrap();
        eprintln!("continuation: {flood}");
        assert!(flood.contains("cut-off by"), "a CONTINUATION flood was read on: {flood}");
        // The waypoint itself is unharmed: the next request is served.
        let tally = apps::http_requests(&scene.client, to_echo, "/after", &[], 3).unwrap();
        assert_eq!(answered_by(&tally, "v1") + answered_by(&tally, "v2"), 3, "{tally}");
        assert!(!scene.waypoint.process().exited(), "the waypoint ran throughout");
        // Nothing of the thousands of cancelled streams stays: no stream is held any more.
        baseline.returned(scene.waypoint_pooled(), WAIT).unwrap();
    });
}

/// Creates Weft's AuthorizationPolicy `name` in `shop` with `spec`.
async fn apply_policy(cluster: &Cluster, name: &str, spec: serde_json::Value) {
    let object = serde_json::json!({
        "apiVersion": "security.weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": spec,
    });
    policies(cluster).create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
}

/// Weft's AuthorizationPolicies in `shop`.
fn policies(cluster: &Cluster) -> Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("security.weft.dev", "v1", "AuthorizationPolicy");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies");
    Api::namespaced_with(cluster.client(), "shop", &resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_policies_targeting_a_service_or_the_waypoint_are_enforced_there_and_a_denied_request_never_reaches_the_app()
 {
    let mut scene = Scene::start().await;
    let to_v1 = scene.to_echo_v1;
    // A DENY on one Service's admin paths.
    let deny_admin = serde_json::json!({
        "targetRefs": [{ "group": "", "kind": "Service", "name": "echo-v1" }],
        "action": "DENY",
        "rules": [{ "to": [{ "operation": { "paths": ["/admin*"] } }] }],
    });
    apply_policy(&scene.cluster, "deny-admin", deny_admin).await;
    tokio::task::block_in_place(|| {
        weft_tests::until("the policy to reach the waypoint", WAIT, || {
            let tally = apps::http_requests(&scene.client, to_v1, "/admin/users", &[], 1).unwrap();
            tally.contains("1 status=403 RBAC: access denied")
        })
        .unwrap();
        // The path is made canonical before it is decided on: no way around the DENY.
        for disguised in ["/public/../admin/users", "/%61dmin/users", "/./admin"] {
            let tally = apps::http_requests(&scene.client, to_v1, disguised, &[], 1).unwrap();
            assert!(tally.contains("1 status=403 RBAC: access denied"), "{disguised}: {tally}");
        }
        let encoded_slash = apps::http_requests(&scene.client, to_v1, "/admin%2Fusers", &[], 1).unwrap();
        assert!(encoded_slash.contains("1 status=400"), "{encoded_slash}");
        let allowed = apps::http_requests(&scene.client, to_v1, "/public", &[], 5).unwrap();
        assert_eq!(answered_by(&allowed, "v1"), 5, "other paths pass: {allowed}");
        let denied = scene.waypoint.process().wait_for(|line| line.contains("request denied"), WAIT).unwrap();
        assert!(denied.contains("shop/deny-admin") && denied.contains("/admin/users"), "{denied}");
        // What reached v1's app, in order: the public requests, never an admin one.
        let first = scene.servers.0.wait_for(|line| line.starts_with("served "), WAIT).unwrap();
        assert_eq!(first, "served GET /public", "a denied request reached the app");
    });

    // An ALLOW on the waypoint itself: every request it handles must match, and the client's
    // do not.
    let allow_nobody = serde_json::json!({
        "targetRefs": [{ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint" }],
        "action": "ALLOW",
        "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/nobody"] } }] }],
    });
    apply_policy(&scene.cluster, "allow-nobody", allow_nobody).await;
    tokio::task::block_in_place(|| {
        weft_tests::until("the waypoint-wide policy to apply", WAIT, || {
            let tally = apps::http_requests(&scene.client, scene.to_echo, "/anything", &[], 1).unwrap();
            tally.contains("1 status=403")
        })
        .unwrap();
        let line = scene
            .waypoint
            .process()
            .wait_for(|line| line.contains("request denied") && line.contains("allow-nobody"), WAIT)
            .unwrap();
        assert!(line.contains("/anything"), "{line}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_goes_to_the_endpoint_with_the_fewest_requests_in_flight() {
    let mut scene = Scene::start().await;
    let to_v1 = scene.to_echo_v1;
    tokio::task::block_in_place(|| {
        // Two slow requests (3 s each) in flight at v1, through its own Service: the waypoint
        // counts per endpoint, whichever Service a request came for.
        let slow: Vec<Process> = (0..2)
            .map(|_| apps::http_requests_started(&scene.client, to_v1, "/slow", &[], 1).unwrap())
            .collect();
        for _ in 0..2 {
            scene.servers.0.wait_for(|line| line == "served GET /slow", WAIT).unwrap();
        }
        // Meanwhile every request for the Service of both goes to v2, the less loaded (at
        // random, half would reach v1).
        let tally = apps::http_requests(&scene.client, scene.to_echo, "/while-v1-is-busy", &[], 10).unwrap();
        assert_eq!(answered_by(&tally, "v2"), 10, "{tally}");
        for slow in slow {
            let (ok, answered) = slow.finish(WAIT).unwrap();
            assert!(ok && answered.contains("status=200 name=v1"), "{answered}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_behind_another_waypoint_is_reached_through_that_waypoint_which_applies_its_policies() {
    let mut scene = Scene::start().await;
    // Service `special` and its pod are behind shop's second waypoint, `other` (on node 1).
    let special = PodTemplate::new("shop", "special")
        .service_account("special")
        .label("app", "special")
        .label("weft.dev/use-waypoint", "other");
    let special = scene.cluster.add_pod(1, &special).await.unwrap();
    let mut special_server = apps::http_echo(&special, ECHO_PORT, "special").unwrap();
    create_service(&scene.cluster, "special", &[("app", "special")]).await;
    let behind_other = serde_json::json!({ "metadata": { "labels": { "weft.dev/use-waypoint": "other" } } });
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(scene.cluster.client(), "shop")
        .patch("special", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&behind_other))
        .await
        .unwrap();
    let mut other = Waypoint::start(&mut scene.cluster, &scene.plane, "shop", "other", 1).await.unwrap();
    // Echo's route sends /special to it; `other` denies /special/locked.
    let deny = serde_json::json!({
        "targetRefs": [{ "group": "", "kind": "Service", "name": "special" }],
        "action": "DENY",
        "rules": [{ "to": [{ "operation": { "paths": ["/special/locked"] } }] }],
    });
    apply_policy(&scene.cluster, "locked", deny).await;
    let route = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "echo", "port": 80 }],
        "rules": [
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/special" } }],
              "backendRefs": [{ "name": "special", "port": 80 }] },
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/copied" } }],
              "filters": [{ "type": "RequestMirror",
                            "requestMirror": { "backendRef": { "name": "special", "port": 80 } } }],
              "backendRefs": [{ "name": "echo-v1", "port": 80 }] },
            { "backendRefs": [{ "name": "echo-v1", "port": 80 }] },
        ],
    });
    create_http_route(scene.cluster.client(), "shop", "echo", route).await.unwrap();
    let (client, to_echo) = (scene.client.clone(), scene.to_echo);
    tokio::task::block_in_place(|| {
        // Before, `waypoint` sent it to special's pod, whose node proxy refused what bypassed
        // `other`: every request failed.
        weft_tests::until("the route to reach Service special", WAIT, || {
            let tally = apps::http_requests(&client, to_echo, "/special/check", &[], 1).unwrap();
            answered_by(&tally, "special") == 1
        })
        .unwrap();
        let tally = apps::http_requests(&client, to_echo, "/special/items", &[], 20).unwrap();
        assert_eq!(answered_by(&tally, "special"), 20, "{tally}");
        // Both waypoints served each: `waypoint` for the client, `other` for `waypoint`.
        let line = scene
            .waypoint
            .process()
            .wait_for(|line| line.contains(" request") && line.contains("/special/items"), WAIT)
            .unwrap();
        assert!(line.contains("status=200") && line.contains("ns/shop/sa/client"), "{line}");
        let line = other
            .process()
            .wait_for(|line| line.contains(" request") && line.contains("/special/items"), WAIT)
            .unwrap();
        assert!(line.contains("status=200") && line.contains("ns/shop/sa/waypoint"), "{line}");
        // A mirror's copy goes through `other` too.
        let tally = apps::http_requests(&client, to_echo, "/copied", &[], 1).unwrap();
        assert_eq!(answered_by(&tally, "v1"), 1, "{tally}");
        special_server.wait_for(|line| line == "served GET /copied", WAIT).unwrap();
        other.process().wait_for(|line| line.contains(" request") && line.contains("/copied"), WAIT).unwrap();
        // `other`'s policy holds for what comes through `waypoint`.
        weft_tests::until("`other` to deny /special/locked", WAIT, || {
            let tally = apps::http_requests(&client, to_echo, "/special/locked", &[], 1).unwrap();
            tally.contains("1 status=403")
        })
        .unwrap();
    });
    // A TCPRoute's backend behind `other` is relayed through it too: `other` reads the HTTP
    // inside and serves it.
    let to_special = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "echo-v1", "port": 80 }],
        "rules": [{ "backendRefs": [{ "name": "special", "port": 80 }] }],
    });
    create_route(scene.cluster.client(), "TCPRoute", "shop", "to-special", to_special).await.unwrap();
    let to_echo_v1 = scene.to_echo_v1;
    tokio::task::block_in_place(|| {
        let request = "GET /special/tcp HTTP/1.1\\r\\nhost: echo-v1\\r\\nconnection: close\\r\\n\\r\\n";
        weft_tests::until("the TCPRoute to reach Service special", WAIT, || {
            apps::http_raw(&client, to_echo_v1, request).is_ok_and(|answer| answer.contains("name=special"))
        })
        .unwrap();
        let line = scene
            .waypoint
            .process()
            .wait_for(
                |line| line.contains("connection") && line.contains("route=TCPRoute:shop/to-special"),
                WAIT,
            )
            .unwrap();
        assert!(line.contains("relayed to"), "{line}");
        let line = other
            .process()
            .wait_for(|line| line.contains(" request") && line.contains("/special/tcp"), WAIT)
            .unwrap();
        assert!(line.contains("status=200") && line.contains("ns/shop/sa/waypoint"), "{line}");
    });
    // A route loop between the two — special's /special/loop back to echo, whose route sends
    // /special to special — is cut once a request came through five waypoints (508), rather
    // than bouncing until something times out.
    let back = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "special", "port": 80 }],
        "rules": [{ "matches": [{ "path": { "type": "PathPrefix", "value": "/special/loop" } }],
                    "backendRefs": [{ "name": "echo", "port": 80 }] }],
    });
    create_http_route(scene.cluster.client(), "shop", "back", back).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the loop to be cut", WAIT, || {
            let tally = apps::http_requests(&client, to_echo, "/special/loop", &[], 1).unwrap();
            tally.contains("1 status=508")
        })
        .unwrap();
        // `waypoint` → `other` → `waypoint` → `other` → `waypoint` → `other`, which refuses.
        let cut = |line: &str| {
            line.contains(" request") && line.contains("/special/loop") && line.contains("status=508")
        };
        let line = other.process().wait_for(cut, WAIT).unwrap();
        assert!(line.contains("ns/shop/sa/waypoint"), "{line}");
    });
    // The same loop at L4 — special's port a TCPRoute back to echo-v1, whose TCPRoute sends
    // it to special — is cut too: the count rides in each CONNECT's `Via`. (Special's HTTPRoute
    // goes first: a port's HTTPRoute outranks its TCPRoute; and so does `other`'s DENY, which,
    // its paths unreadable in a connection, refuses every connection relayed at L4.)
    routes(scene.cluster.client(), "HTTPRoute", "shop").delete("back", &Default::default()).await.unwrap();
    policies(&scene.cluster).delete("locked", &Default::default()).await.unwrap();
    let loop_back = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "special", "port": 80 }],
        "rules": [{ "backendRefs": [{ "name": "echo-v1", "port": 80 }] }],
    });
    create_route(scene.cluster.client(), "TCPRoute", "shop", "loop-back", loop_back).await.unwrap();
    tokio::task::block_in_place(|| {
        let request = "GET /special/tcp-loop HTTP/1.1\\r\\nhost: echo-v1\\r\\nconnection: close\\r\\n\\r\\n";
        let cut =
            |line: &str| line.contains(" connection") && line.contains("a route loop between waypoints");
        weft_tests::until("the loop at L4 to be cut", WAIT, || {
            let answered = apps::http_raw(&client, to_echo_v1, request)
                .is_ok_and(|answer| answer.contains("name=special"));
            !answered && other.process().wait_for(cut, Duration::from_millis(500)).is_ok()
        })
        .unwrap();
    });
}

const TCP_PORT: u16 = 7000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_is_not_http_is_relayed_at_l4_a_tcp_route_picks_its_backend_and_a_deny_on_http_fields_refuses_it_whole()
 {
    let mut scene = Scene::start().await;
    let _echo = apps::echo_server(&scene.v1, TCP_PORT).unwrap();
    let port = ServicePort { name: Some("tcp".into()), port: TCP_PORT.into(), ..Default::default() };
    let vip = scene.cluster.create_service("shop", "tcp-echo", &[("version", "v1")], port).await.unwrap();
    let to_echo = SocketAddr::new(vip, TCP_PORT);
    let service = "shop/tcp-echo.shop.svc.cluster.local";
    tokio::task::block_in_place(|| {
        mesh::wait_for_endpoints(&scene.cluster.topology().nodes()[0].netns, service, 1, WAIT).unwrap();
        mesh::wait_for_endpoints(&scene.waypoint.pod().netns, service, 1, WAIT).unwrap();
    });

    // Not HTTP: relayed as it is, by way of the waypoint, encrypted on the fabric.
    let canary = canary();
    let monitor = WireMonitor::start(scene.cluster.topology().fabric(), &canary).unwrap();
    tokio::task::block_in_place(|| {
        assert_eq!(apps::send(&scene.client, to_echo, &canary).unwrap(), canary);
        let line = scene
            .waypoint
            .process()
            .wait_for(|line| line.contains("connection") && line.contains("relayed to"), WAIT)
            .unwrap();
        assert!(line.contains("spiffe://cluster.local/ns/shop/sa/client"), "{line}");
        assert!(line.contains(&format!(":{TCP_PORT}")), "{line}");
        monitor.settle(WAIT).unwrap();
        assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric on the waypoint's path");
    });

    // A DENY on paths: a connection has none, so, read as Istio reads policies for TCP, the
    // DENY refuses it whole rather than let it pass for want of a path.
    let deny_admin = serde_json::json!({
        "targetRefs": [{ "group": "", "kind": "Service", "name": "tcp-echo" }],
        "action": "DENY",
        "rules": [{ "to": [{ "operation": { "paths": ["/admin*"] } }] }],
    });
    apply_policy(&scene.cluster, "deny-admin-tcp", deny_admin).await;
    tokio::task::block_in_place(|| {
        weft_tests::until("the policy to reach the waypoint", WAIT, || {
            !apps::reaches(&scene.client, to_echo)
        })
        .unwrap();
        let line =
            scene.waypoint.process().wait_for(|line| line.contains("connection denied"), WAIT).unwrap();
        assert!(line.contains("shop/deny-admin-tcp"), "{line}");
    });

    // A TCPRoute on Service echo-v1's HTTP port makes that port TCP: its connections are
    // relayed at L4 (HTTP in them is not read) to the route's backend, echo-v2.
    let to_v2 = serde_json::json!({
        "parentRefs": [{ "group": "", "kind": "Service", "name": "echo-v1", "port": 80 }],
        "rules": [{ "backendRefs": [{ "name": "echo-v2", "port": 80 }] }],
    });
    create_route(scene.cluster.client(), "TCPRoute", "shop", "to-v2", to_v2).await.unwrap();
    let to_echo_v1 = scene.to_echo_v1;
    tokio::task::block_in_place(|| {
        let request = "GET /tcp-routed HTTP/1.1\\r\\nhost: echo-v1\\r\\nconnection: close\\r\\n\\r\\n";
        weft_tests::until("the TCPRoute to reach the waypoint", WAIT, || {
            apps::http_raw(&scene.client, to_echo_v1, request).is_ok_and(|answer| answer.contains("name=v2"))
        })
        .unwrap();
        // Relayed as written: read as HTTP, its hop-by-hop `connection` would have been removed.
        let answer = apps::http_raw(&scene.client, to_echo_v1, request).unwrap();
        assert!(answer.contains("name=v2") && answer.contains("header connection=close"), "{answer:?}");
        let line = scene
            .waypoint
            .process()
            .wait_for(|line| line.contains("connection") && line.contains("route=TCPRoute:shop/to-v2"), WAIT)
            .unwrap();
        assert!(line.contains(&format!("relayed to {}:{ECHO_PORT}", scene.v2.ipv4)), "{line}");
        // Counted as Istio counts TCP: opened, closed, bytes each way, by route and peers.
        let scraped = apps::http_get(&scene.waypoint.pod().netns, 15020, "/metrics").unwrap();
        let series = |name: &str| {
            let prefix = format!(
                "{name}{{reporter=\"waypoint\",route=\"TCPRoute:shop/to-v2\",source_workload=\"client\",source_workload_namespace=\"shop\""
            );
            scraped
                .lines()
                .find(|line| line.starts_with(&prefix) && line.contains("destination_workload=\"echo-v2\""))
                .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        };
        assert!(series("weft_tcp_connections_opened_total") >= Some(2), "{scraped}");
        // Istio's directions: received from the client (the short requests), sent to it (the
        // longer answers).
        let (sent, received) = (series("weft_tcp_sent_bytes_total"), series("weft_tcp_received_bytes_total"));
        assert!(received > Some(0) && sent > received, "sent {sent:?}, received {received:?}: {scraped}");
    });
    // A port that declares itself not HTTP (its name, as Istio reads it) is relayed as it is
    // too — and without waiting to see its first bytes.
    let declared = ServicePort {
        name: Some("tcp-raw".into()),
        port: 80,
        target_port: Some(IntOrString::Int(ECHO_PORT.into())),
        ..Default::default()
    };
    let raw_vip = scene.cluster.create_service("shop", "raw", &[("version", "v1")], declared).await.unwrap();
    tokio::task::block_in_place(|| {
        let service = "shop/raw.shop.svc.cluster.local";
        mesh::wait_for_endpoints(&scene.cluster.topology().nodes()[0].netns, service, 1, WAIT).unwrap();
        mesh::wait_for_endpoints(&scene.waypoint.pod().netns, service, 1, WAIT).unwrap();
        let request = "GET /declared HTTP/1.1\\r\\nhost: raw\\r\\nconnection: close\\r\\n\\r\\n";
        let to_raw = SocketAddr::new(raw_vip, 80);
        weft_tests::until("the declared port to reach the waypoint", WAIT, || {
            apps::http_raw(&scene.client, to_raw, request)
                .is_ok_and(|answer| answer.contains("name=v1") && answer.contains("header connection=close"))
        })
        .unwrap();
        let line = scene
            .waypoint
            .process()
            .wait_for(
                |line| {
                    line.contains("connection")
                        && line.contains(&format!("relayed to {}:{ECHO_PORT}", scene.v1.ipv4))
                },
                WAIT,
            )
            .unwrap();
        assert!(line.contains("route= "), "no route chose it: {line}");
    });
    let accepted = weft_tests::eventually("TCPRoute to-v2's status", WAIT, || {
        let client = scene.cluster.client();
        async move {
            route_conditions(client, "TCPRoute", "to-v2")
                .await
                .filter(|seen| seen.iter().any(|one| one == "echo-v1:80 Accepted=True Accepted"))
        }
    })
    .await;
    assert!(accepted.is_ok(), "{:?}", route_conditions(scene.cluster.client(), "TCPRoute", "to-v2").await);
    let flags = scene.mesh.weftctl_flags(&scene.cluster, &scene.plane).unwrap();
    tokio::task::block_in_place(|| {
        let (ok, out) = apps::weftctl(&flags, &["check", "shop/echo-v1", "--service", "-o", "json"]).unwrap();
        assert!(ok, "{out}");
        let found: serde_json::Value = serde_json::from_str(&out).unwrap();
        let route = found.as_array().unwrap().last().unwrap();
        assert_eq!(
            route["detail"],
            "TCPRoute:shop/to-v2 → shop/echo-v2.shop.svc.cluster.local:80 weight 1 (1 healthy endpoint(s))",
            "{found}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_of_class_weft_waypoint_gets_a_deployment_service_and_account_a_status_and_loses_them_with_it()
 {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        core::v1::{Service, ServiceAccount},
    };
    let cluster = Cluster::start(1).await.unwrap();
    control::install_gateway_api_crds(cluster.client()).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[]).await.unwrap();
    let _plane = ControlPlane::start_with(&cluster, &["--waypoint-image", "example.test/weft/waypoint:dev"])
        .await
        .unwrap();
    let gateways = weft_tests::waypoint::gateways(cluster.client(), "shop");
    weft_tests::waypoint::create_gateway(cluster.client(), "shop", "waypoint").await.unwrap();
    let client = cluster.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let deployment = weft_tests::eventually("the waypoint's Deployment", WAIT, || async {
        deployments.get_opt("waypoint").await.ok().flatten()
    })
    .await
    .unwrap();
    let template = deployment.spec.template;
    let labels = template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["weft.dev/dataplane-mode"], "none", "a waypoint is never captured");
    let pod = template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("waypoint"));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("example.test/weft/waypoint:dev"));
    let env = container.env.clone().unwrap_or_default();
    assert!(
        env.iter().any(|var| var.name == "GATEWAY_NAME" && var.value.as_deref() == Some("waypoint")),
        "{env:?}"
    );
    // Its pods pass the Pod Security Standards' `restricted` profile, which many namespaces
    // enforce: the API server's own admission says so (a dry run).
    let restricted = serde_json::json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": "restricted" } } });
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch("shop", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(restricted))
        .await
        .unwrap();
    let probe = PodObject {
        metadata: kube::api::ObjectMeta { name: Some("waypoint-admission".into()), ..Default::default() },
        spec: Some(pod.clone()),
        ..Default::default()
    };
    let admitted = Api::<PodObject>::namespaced(client.clone(), "shop")
        .create(&PostParams { dry_run: true, ..Default::default() }, &probe)
        .await;
    assert!(admitted.is_ok(), "a waypoint pod in a restricted namespace: {admitted:?}");
    let service = Api::<Service>::namespaced(client.clone(), "shop").get("waypoint").await.unwrap();
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 15008);
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), "shop")
            .get_opt("waypoint")
            .await
            .unwrap()
            .is_some()
    );
    let root = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "shop")
        .get("weft-ca-root-cert")
        .await
        .unwrap();
    assert!(
        root.data.unwrap()["root-cert.pem"].contains("BEGIN CERTIFICATE"),
        "the mesh root, for the waypoint's pods"
    );
    // Accepted, and not programmed: no kubelet here runs the Deployment's pods.
    let conditions = weft_tests::eventually("the Gateway's status", WAIT, || async {
        let gateway = gateways.get("waypoint").await.ok()?;
        let conditions = gateway.data.get("status")?.get("conditions")?.as_array()?.clone();
        // Until the control plane reports, the CRD's default says `Unknown`.
        conditions.iter().all(|condition| condition["status"] != "Unknown").then_some(conditions)
    })
    .await
    .unwrap();
    let status_of = |kind: &str| {
        conditions
            .iter()
            .find(|condition| condition["type"] == kind)
            .map(|condition| (condition["status"].clone(), condition["reason"].clone()))
    };
    assert_eq!(status_of("Accepted"), Some((serde_json::json!("True"), serde_json::json!("Accepted"))));
    assert_eq!(status_of("Programmed"), Some((serde_json::json!("False"), serde_json::json!("Pending"))));
    // A Gateway named like a Service of someone else's takes nothing over: it is not accepted.
    let port = ServicePort { port: 80, ..Default::default() };
    cluster.create_service("shop", "legacy", &[("app", "legacy")], port).await.unwrap();
    weft_tests::waypoint::create_gateway(cluster.client(), "shop", "legacy").await.unwrap();
    let refused = weft_tests::eventually("the conflicting Gateway's status", WAIT, || async {
        let gateway = gateways.get("legacy").await.ok()?;
        let conditions = gateway.data.get("status")?.get("conditions")?.as_array()?.clone();
        // Until the control plane reports, the CRD's default says `Unknown`.
        conditions
            .into_iter()
            .find(|condition| condition["type"] == "Accepted" && condition["status"] != "Unknown")
    })
    .await
    .unwrap();
    assert_eq!(
        (refused["status"].as_str(), refused["reason"].as_str()),
        (Some("False"), Some("InvalidParameters")),
        "{refused}"
    );
    let untouched = Api::<Service>::namespaced(client.clone(), "shop").get("legacy").await.unwrap();
    assert_eq!(untouched.spec.unwrap().ports.unwrap()[0].port, 80, "the Service is left as it was");
    assert!(deployments.get_opt("legacy").await.unwrap().is_none());

    // The Gateway owns all of it: deleting it removes them.
    gateways.delete("waypoint", &Default::default()).await.unwrap();
    weft_tests::eventually("the waypoint's Service to go with its Gateway", WAIT, || async {
        let services = Api::<Service>::namespaced(client.clone(), "shop");
        services.get_opt("waypoint").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_pod_running_as_its_gateways_account_gets_a_waypoints_certificate_not_any_pod_with_its_label()
{
    use weft_tests::waypoint::GATEWAY_NAME_LABEL;
    let mut cluster = Cluster::start(1).await.unwrap();
    control::install_gateway_api_crds(cluster.client()).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[]).await.unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    weft_tests::waypoint::create_gateway(cluster.client(), "shop", "waypoint").await.unwrap();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(cluster.client(), "shop");
    weft_tests::eventually("the waypoint's account", WAIT, || async {
        accounts.get_opt("waypoint").await.ok().flatten()
    })
    .await
    .unwrap();
    let labelled = |name: &str, account: &str| {
        PodTemplate::new("shop", name).service_account(account).label(GATEWAY_NAME_LABEL, "waypoint")
    };
    let fake = cluster.add_pod(0, &labelled("fake", "client")).await.unwrap();
    let real = cluster.add_pod(0, &labelled("real", "waypoint")).await.unwrap();
    let refused =
        mesh_certificate(&cluster, &plane, ("shop", "client", "fake", Some(&fake.uid)), "client", true)
            .await
            .unwrap_err();
    assert!(refused.contains("neither the node proxy"), "a label is no waypoint: {refused}");
    let issued =
        mesh_certificate(&cluster, &plane, ("shop", "waypoint", "real", Some(&real.uid)), "waypoint", true)
            .await
            .unwrap();
    assert_eq!(issued.identity.to_string(), "spiffe://cluster.local/ns/shop/sa/waypoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_waypoint_stops_being_ready_finishes_the_request_in_flight_and_exits() {
    let mut scene = Scene::start().await;
    let to_echo = scene.to_echo;
    tokio::task::block_in_place(|| {
        // A request the app answers after 3 s, in flight when the waypoint is told to stop.
        let slow = apps::http_requests_started(&scene.client, to_echo, "/slow", &[], 1).unwrap();
        let served = |line: &str| line == "served GET /slow";
        let (v1, v2) = (&mut scene.servers.0, &mut scene.servers.1);
        weft_tests::until("the slow request to reach an app", WAIT, || {
            let short = Duration::from_millis(100);
            v1.wait_for(served, short).is_ok() || v2.wait_for(served, short).is_ok()
        })
        .unwrap();
        scene.waypoint.process().terminate().unwrap();
        scene.waypoint.process().wait_for(|line| line.contains("draining"), WAIT).unwrap();
        let ready = apps::http_get(&scene.waypoint.pod().netns, 15021, "/healthz/ready").unwrap();
        assert!(ready.starts_with("HTTP/1.1 503"), "a draining waypoint is not ready: {ready}");
        let (ok, answered) = slow.finish(WAIT).unwrap();
        assert!(
            ok && answered.contains("1 status=200 name=v"),
            "the request in flight is finished: {answered}"
        );
        scene
            .waypoint
            .process()
            .wait_for(|line| line.contains("drained: every connection ended"), WAIT)
            .unwrap();
        scene.waypoint.process().wait_for(|line| line.contains("stopped"), WAIT).unwrap();
    });
}

/// Weft's traffic policy `name` of `kind` (`networking.weft.dev`) in `shop`.
fn traffic_policies(cluster: &Cluster, kind: &str) -> Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("networking.weft.dev", "v1alpha1", kind);
    let plural = format!("{}ies", kind.to_ascii_lowercase().trim_end_matches('y'));
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, &plural);
    Api::namespaced_with(cluster.client(), "shop", &resource)
}

/// Creates traffic policy `name` of `kind` in `shop` with `spec`; the API server's answer.
async fn create_traffic_policy(
    cluster: &Cluster,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<kube::api::DynamicObject, kube::Error> {
    let object = serde_json::json!({
        "apiVersion": "networking.weft.dev/v1alpha1",
        "kind": kind,
        "metadata": { "name": name, "namespace": "shop" },
        "spec": spec,
    });
    traffic_policies(cluster, kind)
        .create(&PostParams::default(), &serde_json::from_value(object).unwrap())
        .await
}

/// `(target name, Accepted status, reason)` per entry of the policy's `status.ancestors`, once
/// it has as many as `targets`.
async fn policy_verdicts(
    cluster: &Cluster,
    kind: &str,
    name: &str,
    targets: usize,
) -> Vec<(String, String, String)> {
    let api = traffic_policies(cluster, kind);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let policy = api.get(name).await.unwrap();
        let ancestors = policy.data["status"]["ancestors"].as_array().cloned().unwrap_or_default();
        let verdicts: Vec<(String, String, String)> = ancestors
            .iter()
            .filter_map(|ancestor| {
                let accepted = ancestor["conditions"].as_array()?.iter().find(|c| c["type"] == "Accepted")?;
                Some((
                    ancestor["ancestorRef"]["name"].as_str()?.to_owned(),
                    accepted["status"].as_str()?.to_owned(),
                    accepted["reason"].as_str()?.to_owned(),
                ))
            })
            .collect();
        if verdicts.len() == targets {
            return verdicts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind} {name}: no status for its {targets} targets: {policy:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of `tally`'s answers had `status`.
fn answered_with(tally: &str, status: u16) -> usize {
    tally
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, answer)| answer.starts_with(&format!("status={status} ")))
        .map(|(count, _)| count.parse::<usize>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_is_injected_for_its_share_a_rate_limit_holds_its_rate_and_each_policy_says_where_it_applies()
{
    let mut scene = Scene::start().await;
    let (client, to_v1, to_echo) = (scene.client.clone(), scene.to_echo_v1, scene.to_echo);
    let service = |name: &str| serde_json::json!({ "group": "", "kind": "Service", "name": name });
    let waypoint =
        serde_json::json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint" });

    // The schema refuses what could never apply.
    let refused = [
        serde_json::json!({ "targetRefs": [service("echo-v1")] }),
        serde_json::json!({ "targetRefs": [service("echo-v1")],
                            "abort": { "httpStatus": 503, "grpcStatus": "UNAVAILABLE", "percentage": { "value": 5 } } }),
        serde_json::json!({ "targetRefs": [service("echo-v1")], "abort": { "httpStatus": 503, "percentage": { "value": 101 } } }),
        serde_json::json!({ "targetRefs": [{ "group": "apps", "kind": "Deployment", "name": "echo" }],
                            "delay": { "fixedDelay": "1s", "percentage": { "value": 5 } } }),
        serde_json::json!({ "targetRefs": [service("echo-v1")], "delay": { "fixedDelay": "0.5s", "percentage": { "value": 5 } } }),
    ];
    for spec in refused {
        let answer =
            create_traffic_policy(&scene.cluster, "FaultInjectionPolicy", "refused", spec.clone()).await;
        assert!(
            matches!(answer, Err(kube::Error::Api(ref status)) if status.code == 422),
            "{spec}: {answer:?}"
        );
    }

    // Half of echo-v1's requests aborted with 503, answered by the waypoint; never retried.
    let abort = serde_json::json!({ "targetRefs": [service("echo-v1"), service("nowhere")],
                                    "abort": { "httpStatus": 503, "percentage": { "value": 50 } } });
    create_traffic_policy(&scene.cluster, "FaultInjectionPolicy", "half-fail", abort).await.unwrap();
    assert_eq!(
        policy_verdicts(&scene.cluster, "FaultInjectionPolicy", "half-fail", 2).await,
        [
            ("echo-v1".into(), "True".into(), "Accepted".into()),
            ("nowhere".into(), "False".into(), "TargetNotFound".into())
        ]
    );
    tokio::task::block_in_place(|| {
        weft_tests::until("the fault to reach the waypoint", WAIT, || {
            apps::http_requests(&client, to_v1, "/probe", &[], 10)
                .unwrap()
                .contains("status=503 fault filter abort")
        })
        .unwrap();
        const REQUESTS: usize = 2000;
        let tally = apps::http_requests(&client, to_v1, "/chaos", &[], REQUESTS).unwrap();
        let (aborted, served) = (answered_with(&tally, 503), answered_by(&tally, "v1"));
        assert_eq!(aborted + served, REQUESTS, "{tally}");
        assert!(aborted.abs_diff(REQUESTS / 2) <= REQUESTS / 20, "50 % ± 5 % aborted: {tally}");
        assert!(tally.contains("status=503 fault filter abort"), "{tally}");
    });
    traffic_policies(&scene.cluster, "FaultInjectionPolicy")
        .delete("half-fail", &Default::default())
        .await
        .unwrap();

    // A delay on the waypoint applies to each of its Services.
    let delay = serde_json::json!({ "targetRefs": [waypoint.clone()],
                                    "delay": { "fixedDelay": "300ms", "percentage": { "value": 100 } } });
    create_traffic_policy(&scene.cluster, "FaultInjectionPolicy", "slow", delay).await.unwrap();
    tokio::task::block_in_place(|| {
        let mut logged = String::new();
        weft_tests::until("the delay to reach the waypoint, the abort to leave it", WAIT, || {
            let tally = apps::http_requests(&client, to_v1, "/delayed", &[], 1).unwrap();
            logged = scene
                .waypoint
                .process()
                .wait_for(|line| line.contains(" request") && line.contains("/delayed"), WAIT)
                .unwrap();
            answered_by(&tally, "v1") == 1 && logged.contains("policy=delayed 300ms by shop/slow")
        })
        .unwrap();
        let micros: u64 = logged.split("micros=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(micros >= 300_000, "held back 300 ms: {logged}");
    });
    traffic_policies(&scene.cluster, "FaultInjectionPolicy")
        .delete("slow", &Default::default())
        .await
        .unwrap();

    // 50 requests a second to echo-v1, at most 5 at once: of a client sending as fast as it
    // can, the rate passes (and what the bucket held when it began); the rest get 429.
    let steady = serde_json::json!({ "targetRefs": [service("echo-v1")],
                                     "local": { "requests": 50, "unit": "Second", "burst": 5 } });
    create_traffic_policy(&scene.cluster, "RateLimitPolicy", "steady", steady.clone()).await.unwrap();
    // The waypoint's own: one an hour for the Services without a limit of their own (echo).
    let hourly = serde_json::json!({ "targetRefs": [waypoint], "local": { "requests": 1, "unit": "Hour" } });
    create_traffic_policy(&scene.cluster, "RateLimitPolicy", "hourly", hourly).await.unwrap();
    create_traffic_policy(&scene.cluster, "RateLimitPolicy", "steady-too", steady).await.unwrap();
    assert_eq!(
        policy_verdicts(&scene.cluster, "RateLimitPolicy", "steady-too", 1).await,
        [("echo-v1".into(), "False".into(), "Conflicted".into())]
    );
    // weftctl says the same.
    let flags = scene.mesh.weftctl_flags(&scene.cluster, &scene.plane).unwrap();
    tokio::task::block_in_place(|| {
        let (ok, out) = apps::weftctl(&flags, &["traffic", "-o", "json"]).unwrap();
        assert!(ok, "weftctl traffic: {out}");
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let applies_to = |name: &str| {
            let row = rows.as_array().unwrap().iter().find(|row| row["name"] == name);
            row.map(|row| row["applies_to"].as_str().unwrap().to_owned()).unwrap_or_default()
        };
        assert_eq!(applies_to("steady"), "Service echo-v1: applied", "{rows}");
        assert!(
            applies_to("steady-too").starts_with("Service echo-v1: Conflicted (RateLimitPolicy shop/steady"),
            "{rows}"
        );
    });
    tokio::task::block_in_place(|| {
        weft_tests::until("the rate limit to reach the waypoint", WAIT, || {
            apps::http_requests(&client, to_v1, "/probe", &[], 20)
                .unwrap()
                .contains("status=429 local_rate_limited")
        })
        .unwrap();
        let tally = apps::http_requests(&client, to_v1, "/limited", &[], 1500).unwrap();
        let took_us: u64 = tally.split("took_us=").nth(1).unwrap().trim().parse().unwrap();
        let took = Duration::from_micros(took_us);
        let (passed, limited) = (answered_by(&tally, "v1"), answered_with(&tally, 429));
        assert_eq!(passed + limited, 1500, "{tally}");
        let at_rate = 50.0 * took.as_secs_f64();
        assert!(
            (at_rate * 0.9..=at_rate * 1.1 + 5.0).contains(&(passed as f64)),
            "{passed} passed in {took:?}, where 50/s allows {at_rate:.0} and the burst 5: {tally}"
        );
        // echo has no limit of its own: the waypoint's, one an hour; the second request is
        // told to come back in an hour.
        let twice = "GET /hourly HTTP/1.1\\r\\nhost: echo\\r\\n\\r\\nGET /hourly HTTP/1.1\\r\\nhost: echo\\r\\nconnection: close\\r\\n\\r\\n";
        weft_tests::until("the waypoint's limit to apply", WAIT, || {
            let answer = apps::http_raw(&client, to_echo, twice).unwrap();
            // An hour, rounded up, from when the token was taken: 3600, or 3599 a second on.
            answer.contains("HTTP/1.1 429")
                && (answer.contains("retry-after: 3600\r\n") || answer.contains("retry-after: 3599\r\n"))
        })
        .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breaker_opens_at_its_limit_and_closes_after_and_a_failing_endpoint_is_ejected_and_returns()
{
    let mut scene = Scene::start().await;
    let (client, to_v1, to_echo) = (scene.client.clone(), scene.to_echo_v1, scene.to_echo);
    let service = |name: &str| serde_json::json!({ "group": "", "kind": "Service", "name": name });
    let baseline = tokio::task::block_in_place(|| scene.waypoint_baseline());

    // At most two requests in flight to echo-v1: with two slow ones there, a third is refused
    // at once, and once they are answered the breaker closes.
    let breaker = serde_json::json!({ "targetRefs": [service("echo-v1")], "maxRequests": 2 });
    create_traffic_policy(&scene.cluster, "CircuitBreakerPolicy", "two-at-once", breaker).await.unwrap();
    let overflow = "GET /third HTTP/1.1\\r\\nhost: echo-v1\\r\\nconnection: close\\r\\n\\r\\n";
    tokio::task::block_in_place(|| {
        let mut refused = String::new();
        weft_tests::until("the breaker to reach the waypoint and open", WAIT, || {
            let slow: Vec<Process> = (0..2)
                .map(|_| apps::http_requests_started(&client, to_v1, "/slow", &[], 1).unwrap())
                .collect();
            for _ in 0..2 {
                scene.servers.0.wait_for(|line| line == "served GET /slow", WAIT).unwrap();
            }
            refused = apps::http_raw(&client, to_v1, overflow).unwrap();
            for slow in slow {
                let (ok, answered) = slow.finish(WAIT).unwrap();
                assert!(
                    ok && answered.contains("status=200 name=v1"),
                    "the slow ones are served: {answered}"
                );
            }
            refused.starts_with("HTTP/1.1 503")
        })
        .unwrap();
        assert!(
            refused.contains("x-envoy-overloaded: true\r\n") && refused.contains("overflow"),
            "{refused:?}"
        );
        let closed = apps::http_requests(&client, to_v1, "/after", &[], 5).unwrap();
        assert_eq!(answered_by(&closed, "v1"), 5, "closed again: {closed}");
    });

    // Outlier detection on echo (v1 and v2): v1's app stops; after three failures in a row it
    // is ejected and sent nothing (no retry needed), and once back it returns after its 5 s.
    let detection = serde_json::json!({ "targetRefs": [service("echo")],
        "outlierDetection": { "consecutive5xxErrors": 3, "baseEjectionTime": "5s", "maxEjectionPercent": 50 } });
    create_traffic_policy(&scene.cluster, "CircuitBreakerPolicy", "eject", detection).await.unwrap();
    assert_eq!(
        policy_verdicts(&scene.cluster, "CircuitBreakerPolicy", "eject", 1).await,
        [("echo".into(), "True".into(), "Accepted".into())]
    );
    scene.servers.0.kill().unwrap();
    let v1 = SocketAddr::new(scene.v1.ipv4.into(), ECHO_PORT).to_string();
    tokio::task::block_in_place(|| {
        weft_tests::until("v1 to be ejected", WAIT, || {
            // Each request still succeeds: a failed connection is retried on v2.
            let tally = apps::http_requests(&client, to_echo, "/while-v1-is-down", &[], 10).unwrap();
            assert_eq!(answered_by(&tally, "v2"), 10, "{tally}");
            scene
                .waypoint
                .process()
                .wait_for(
                    |line| line.contains("endpoint ejected") && line.contains(&v1),
                    Duration::from_millis(100),
                )
                .is_ok()
        })
        .unwrap();
        // Ejected: requests go straight to v2, none tries v1 first.
        apps::http_requests(&client, to_echo, "/ejected", &[], 10).unwrap();
        for _ in 0..10 {
            let line = scene
                .waypoint
                .process()
                .wait_for(|line| line.contains(" request") && line.contains("/ejected"), WAIT)
                .unwrap();
            assert!(line.contains("retries=0"), "{line}");
        }
        scene.servers.0 = apps::http_echo(&scene.v1, ECHO_PORT, "v1").unwrap();
        weft_tests::until("v1 to return", WAIT, || {
            let tally = apps::http_requests(&client, to_echo, "/back", &[], 10).unwrap();
            answered_by(&tally, "v1") > 0
        })
        .unwrap();
        // The refused requests, the failed connections and the ejection left nothing behind.
        baseline.returned(scene.waypoint_pooled(), WAIT).unwrap();
    });
}

/// One connection to echo-v1 from the waypoint at most, one request waiting for it: a client's
/// idle connection gives its place up to a request that needs one, a second request waits for
/// the busy one, a third is refused at once, and the idle client is served again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cap_makes_requests_wait_for_a_connection_takes_idle_ones_and_refuses_past_its_queue() {
    let mut scene = Scene::start().await;
    let (client, to_v1) = (scene.client.clone(), scene.to_echo_v1);
    let target = serde_json::json!([{ "group": "", "kind": "Service", "name": "echo-v1" }]);
    // Requests wait only for a connection under a cap: the API server says so.
    let alone = serde_json::json!({ "targetRefs": target, "maxPendingRequests": 1 });
    let refused =
        create_traffic_policy(&scene.cluster, "CircuitBreakerPolicy", "alone", alone).await.unwrap_err();
    assert!(refused.to_string().contains("maxPendingRequests needs maxConnections"), "{refused}");
    let cap = serde_json::json!({ "targetRefs": target, "maxConnections": 1, "maxPendingRequests": 1 });
    let baseline = tokio::task::block_in_place(|| scene.waypoint_baseline());
    create_traffic_policy(&scene.cluster, "CircuitBreakerPolicy", "one-connection", cap).await.unwrap();
    let overflow = "GET /third HTTP/1.1\\r\\nhost: echo-v1\\r\\nconnection: close\\r\\n\\r\\n";
    tokio::task::block_in_place(|| {
        // A client whose connection stays open and idle holds the only place: the next request
        // takes it (its connection is closed for it), once the cap reached the waypoint.
        let (mut idle, first) = {
            let mut held = None;
            weft_tests::until(
                "the cap to reach the waypoint and an idle connection to give way",
                WAIT,
                || {
                    let mut idle = apps::Chat::http(&client, to_v1).unwrap();
                    let answer = idle.say("/kept").unwrap();
                    assert!(answer.starts_with("status=200 name=v1"), "{answer}");
                    let first = apps::http_requests_started(&client, to_v1, "/slow", &[], 1).unwrap();
                    scene.servers.0.wait_for(|line| line == "served GET /slow", WAIT).unwrap();
                    let waypoint = scene.waypoint.process();
                    let gave_way = waypoint
                        .wait_for(
                            |line| line.contains("closed for a waiting request"),
                            Duration::from_millis(200),
                        )
                        .is_ok();
                    if gave_way {
                        held = Some((idle, first));
                    } else {
                        first.finish(WAIT).unwrap();
                    }
                    gave_way
                },
            )
            .unwrap();
            held.unwrap()
        };
        // The slow request holds the place: a second waits, a third finds the queue full. The
        // waypoint's lines so far are read first (up to a request's to another Service), so
        // that the line waited for next is the second's.
        apps::http_requests(&client, scene.to_echo, "/marker", &[], 1).unwrap();
        let marker = |line: &str| line.contains(" request") && line.contains("/marker");
        scene.waypoint.process().wait_for(marker, WAIT).unwrap();
        let second = apps::http_requests_started(&client, to_v1, "/slow", &[], 1).unwrap();
        scene.waypoint.process().wait_for(|line| line.contains("waits for a connection"), WAIT).unwrap();
        let refused = apps::http_raw(&client, to_v1, overflow).unwrap();
        assert!(
            refused.starts_with("HTTP/1.1 503")
                && refused.contains("x-envoy-overloaded: true\r\n")
                && refused.contains("overflow"),
            "{refused:?}"
        );
        let logged = scene.waypoint.process().wait_for(|line| line.contains("/third"), WAIT).unwrap();
        assert!(logged.contains("pending overflow of shop/one-connection"), "{logged}");
        for slow in [first, second] {
            let (ok, answered) = slow.finish(WAIT).unwrap();
            assert!(ok && answered.contains("1 status=200 name=v1"), "both slow ones are served: {answered}");
        }
        // The idle client's connection went for the first: it is served on a new one.
        assert!(idle.say("/again").unwrap().starts_with("status=200 name=v1"));
        // Waiting, refused and closed for another, the requests left nothing behind.
        drop(idle);
        baseline.returned(scene.waypoint_pooled(), WAIT).unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_hash_on_a_header_keeps_each_user_on_one_endpoint() {
    let scene = Scene::start().await;
    let (client, to_echo) = (scene.client.clone(), scene.to_echo);
    let sticky = serde_json::json!({ "targetRefs": [{ "group": "", "kind": "Service", "name": "echo" }],
                                     "type": "ConsistentHash", "consistentHash": { "header": "x-user" } });
    create_traffic_policy(&scene.cluster, "LoadBalancerPolicy", "sticky", sticky).await.unwrap();
    assert_eq!(
        policy_verdicts(&scene.cluster, "LoadBalancerPolicy", "sticky", 1).await,
        [("echo".into(), "True".into(), "Accepted".into())]
    );
    tokio::task::block_in_place(|| {
        // Each user's requests on one endpoint; twenty users spread over both (all on one:
        // a chance of one in half a million).
        let on = |user: usize| {
            let header = format!("x-user:user-{user}");
            let tally = apps::http_requests(&client, to_echo, "/sticky", &[&header], 10).unwrap();
            match (answered_by(&tally, "v1"), answered_by(&tally, "v2")) {
                (10, 0) => Some("v1"),
                (0, 10) => Some("v2"),
                _ => None,
            }
        };
        // Three users each on one endpoint: without the policy, one time in 10^8 or so.
        weft_tests::until("the policy to reach the waypoint", WAIT, || (0..3).all(|user| on(user).is_some()))
            .unwrap();
        let placed: Vec<Option<&str>> = (0..20).map(on).collect();
        assert!(placed.iter().all(Option::is_some), "each user on one endpoint: {placed:?}");
        assert!(placed.contains(&Some("v1")) && placed.contains(&Some("v2")), "users spread: {placed:?}");
    });
}

/// The claims of a token `shop`'s issuer gives alice, expiring in `expires_in` seconds
/// (negative: expired that long ago), for `audience`.
fn alice(audience: &str, expires_in: i64) -> serde_json::Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    serde_json::json!({ "iss": "https://issuer.shop.example", "sub": "alice", "aud": audience,
                        "exp": now + expires_in, "groups": ["shoppers"], "team": "payments" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_is_verified_at_the_waypoint_its_claims_decide_and_a_key_rotated_in_its_config_map_takes_over()
{
    use k8s_openapi::api::core::v1::ConfigMap;
    use weft_waypoint::jwt::testing::{Signer, jwks};

    let mut scene = Scene::start().await;
    let (client, to_echo) = (scene.client.clone(), scene.to_echo);
    let (old, new) = (Signer::rs256("2026-11"), Signer::es256("2026-12"));
    let maps: Api<ConfigMap> = Api::namespaced(scene.cluster.client(), "shop");
    let key_set = |signer: &Signer| {
        serde_json::from_value::<ConfigMap>(serde_json::json!({
            "metadata": { "name": "issuer-keys", "labels": { "security.weft.dev/jwks": "true" } },
            "data": { "jwks.json": jwks(&[signer]) },
        }))
        .unwrap()
    };
    maps.create(&PostParams::default(), &key_set(&old)).await.unwrap();
    let gvk = kube::api::GroupVersionKind::gvk("security.weft.dev", "v1", "RequestAuthentication");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "requestauthentications");
    let authentications: Api<kube::api::DynamicObject> =
        Api::namespaced_with(scene.cluster.client(), "shop", &resource);
    let authentication = serde_json::json!({
        "apiVersion": "security.weft.dev/v1", "kind": "RequestAuthentication",
        "metadata": { "name": "shop-issuer", "namespace": "shop" },
        "spec": {
            "targetRefs": [{ "group": "", "kind": "Service", "name": "echo" }],
            "jwtRules": [{
                "issuer": "https://issuer.shop.example", "audiences": ["shop"],
                "jwksFrom": { "configMapKeyRef": { "name": "issuer-keys", "key": "jwks.json" } },
                "outputClaimToHeaders": [{ "header": "x-jwt-team", "claim": "team" }],
            }],
        },
    });
    authentications
        .create(&PostParams::default(), &serde_json::from_value(authentication).unwrap())
        .await
        .unwrap();
    // Only shoppers with a verified token from the shop's issuer.
    let shoppers_only = serde_json::json!({
        "targetRefs": [{ "group": "", "kind": "Service", "name": "echo" }],
        "rules": [{
            "from": [{ "source": { "requestPrincipals": ["https://issuer.shop.example/*"] } }],
            "when": [{ "key": "request.auth.claims[groups]", "values": ["shoppers"] }],
        }],
    });
    apply_policy(&scene.cluster, "shoppers-only", shoppers_only).await;

    tokio::task::block_in_place(|| {
        let get = |token: Option<String>| {
            let header = token.map(|token| format!("authorization:Bearer {token}"));
            apps::http_requests(
                &client,
                to_echo,
                "/orders",
                &header.iter().map(String::as_str).collect::<Vec<_>>(),
                1,
            )
            .unwrap()
        };
        let good = || Some(old.token(&alice("shop", 600)));
        weft_tests::until("the policies to reach the waypoint", WAIT, || {
            get(None).contains("1 status=403") && get(good()).contains("1 status=200")
        })
        .unwrap();
        // The app gets the claim it was promised and never the token.
        let answer = get(good());
        assert!(answer.contains("header x-jwt-team=payments"), "{answer}");
        assert!(!answer.contains("header authorization="), "the token reached the app: {answer}");
        // A client cannot claim another team: the header is the waypoint's.
        let bearer = format!("authorization:Bearer {}", old.token(&alice("shop", 600)));
        let spoofed =
            apps::http_requests(&client, to_echo, "/orders", &[&bearer, "x-jwt-team:admins"], 1).unwrap();
        assert!(spoofed.contains("header x-jwt-team=payments") && !spoofed.contains("admins"), "{spoofed}");
        let refused = [
            (Some(old.token(&alice("billing", 600))), "401 Audiences in Jwt are not allowed"),
            (Some(old.token(&alice("shop", -120))), "401 Jwt is expired"),
            (Some(new.token(&alice("shop", 600))), "401 Jwks doesn't have key to match kid or alg from Jwt"),
            (Some("not-a-token".into()), "401 Jwt is not in the form of Header.Payload.Signature"),
        ];
        for (token, expected) in refused {
            let answer = get(token);
            assert!(answer.contains(&format!("1 status={expected}")), "{expected}: {answer}");
        }
        let mut visitor = alice("shop", 600);
        visitor["groups"] = serde_json::json!(["visitors"]);
        assert!(get(Some(old.token(&visitor))).contains("1 status=403 RBAC: access denied"));
        let log =
            scene.waypoint.process().wait_for(|line| line.contains("request unauthenticated"), WAIT).unwrap();
        assert!(log.contains("shop/shop-issuer"), "{log}");
    });

    // Rotation: the ConfigMap gets the new key; its tokens are taken, the old key's no more.
    let patch = serde_json::json!({ "data": { "jwks.json": jwks(&[&new]) } });
    maps.patch("issuer-keys", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        let get = |token: String| {
            let header = format!("authorization:Bearer {token}");
            apps::http_requests(&client, to_echo, "/orders", &[&header], 1).unwrap()
        };
        weft_tests::until("the rotated key to reach the waypoint", WAIT, || {
            get(new.token(&alice("shop", 600))).contains("1 status=200")
        })
        .unwrap();
        let old_token = get(old.token(&alice("shop", 600)));
        assert!(old_token.contains("1 status=401"), "{old_token}");
    });
}

/// Creates Service `namespace/name` on port 80 → 8080 for the pods labelled `app: <app>`, with
/// `trafficDistribution: PreferClose`; returns its address.
async fn create_close_service(cluster: &Cluster, namespace: &str, name: &str, app: &str) -> SocketAddr {
    let service = serde_json::json!({
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "selector": { "app": app }, "trafficDistribution": "PreferClose",
                  "ports": [{ "port": 80, "targetPort": ECHO_PORT }] },
    });
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(cluster.client(), namespace);
    let created =
        services.create(&PostParams::default(), &serde_json::from_value(service).unwrap()).await.unwrap();
    SocketAddr::new(created.spec.unwrap().cluster_ip.unwrap().parse().unwrap(), 80)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_preferring_close_endpoints_is_served_in_the_zone_and_fails_over_when_none_is_left_there() {
    let mut scene = Scene::start().await;
    // The client and the waypoint run on node 0, in zone a; v1 and v2 on node 1, in zone b.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(scene.cluster.client());
    for (index, zone) in [(0, "zone-a"), (1, "zone-b")] {
        let name = scene.cluster.topology().nodes()[index].name.clone();
        let labels = serde_json::json!({ "metadata": { "labels": {
            "topology.kubernetes.io/region": "region-1", "topology.kubernetes.io/zone": zone } } });
        nodes
            .patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&labels))
            .await
            .unwrap();
    }
    // Through the waypoint: `near` is v1, v2 and v3 (on node 0), chosen near the waypoint.
    let v3 = PodTemplate::new("shop", "echo-v3")
        .service_account("echo")
        .label("app", "echo")
        .label("version", "v3");
    let v3 = scene.cluster.add_pod(0, &v3).await.unwrap();
    let _v3_server = apps::http_echo(&v3, ECHO_PORT, "v3").unwrap();
    let through_waypoint = create_close_service(&scene.cluster, "shop", "near", "echo").await;
    // At L4, by the client's node proxy: `edge` has no waypoint; `near-l4` is one pod per zone.
    scene
        .cluster
        .kubelet()
        .ensure_namespace("edge", &[("weft.dev/dataplane-mode", "ambient")])
        .await
        .unwrap();
    let edge = |name: &str| PodTemplate::new("edge", name).service_account("edge").label("app", "edge");
    let (near, far) = (
        scene.cluster.add_pod(0, &edge("near")).await.unwrap(),
        scene.cluster.add_pod(1, &edge("far")).await.unwrap(),
    );
    let _servers = (
        apps::http_echo(&near, ECHO_PORT, "near").unwrap(),
        apps::http_echo(&far, ECHO_PORT, "far").unwrap(),
    );
    let at_l4 = create_close_service(&scene.cluster, "edge", "near-l4", "edge").await;
    let client = scene.client.clone();
    let client_node = scene.cluster.topology().nodes()[0].netns.clone();
    let waypoint_pod = scene.waypoint.pod().netns.clone();
    tokio::task::block_in_place(|| {
        mesh::wait_for_endpoints(&client_node, "edge/near-l4.edge.svc.cluster.local", 2, WAIT).unwrap();
        mesh::wait_for_endpoints(&waypoint_pod, "shop/near.shop.svc.cluster.local", 3, WAIT).unwrap();
        // Twenty requests over one connection (the waypoint picks per request), and ten
        // connections of one (the node proxy picks per connection): without the preference,
        // the near pod alone would answer them one time in 3^20 and 2^10. A failed attempt (the
        // locality not yet known) is tried again.
        let waypoint_answers =
            || apps::http_requests(&client, through_waypoint, "/near", &[], 20).unwrap_or_default();
        let l4_answers = || {
            (0..10)
                .map(|_| apps::http_requests(&client, at_l4, "/near", &[], 1).unwrap_or_default())
                .collect::<String>()
        };
        weft_tests::until("requests to be served in the client's zone", WAIT, || {
            answered_by(&waypoint_answers(), "v3") == 20 && answered_by(&l4_answers(), "near") == 10
        })
        .unwrap();
    });
    // No endpoint left in zone a: zone b's serve.
    scene.cluster.remove_pod("shop", &v3).await.unwrap();
    scene.cluster.remove_pod("edge", &near).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("requests to fail over to the other zone", WAIT, || {
            let waypoint =
                apps::http_requests(&client, through_waypoint, "/near", &[], 10).unwrap_or_default();
            let l4 = apps::http_requests(&client, at_l4, "/near", &[], 1).unwrap_or_default();
            answered_by(&waypoint, "v1") + answered_by(&waypoint, "v2") == 10 && answered_by(&l4, "far") == 1
        })
        .unwrap();
    });
}

/// The traceparent the app received, as the echo server shows it.
fn received_traceparent(answer: &str) -> weft_proxy::trace_context::SpanContext {
    let value = answer
        .lines()
        .find_map(|line| line.strip_prefix("body: header traceparent="))
        .unwrap_or_else(|| panic!("no traceparent reached the app: {answer}"));
    weft_proxy::trace_context::SpanContext::parse(value.trim().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_traced_client_to_waypoint_to_server_under_one_trace_id_and_its_span_reaches_a_real_collector()
 {
    use weft_proxy::trace_context::SpanContext;
    use weft_tests::collector::Collector;

    let mut cluster = Cluster::start(2).await.unwrap();
    let collector = Collector::start(&mut cluster, 1).await.unwrap();
    let endpoint = collector.endpoint();
    // No new trace is sampled: only the clients' own decisions count.
    let environment = [("WEFT_OTLP_ENDPOINT", endpoint.as_str()), ("WEFT_TRACE_SAMPLING", "0")];
    let scene = Scene::start_on(cluster, &environment).await;
    let (client, to_echo) = (scene.client.clone(), scene.to_echo);
    let get = |traceparent: Option<&SpanContext>| {
        let mut headers = vec!["tracestate:shop=7".to_owned()];
        headers.extend(traceparent.map(|context| format!("traceparent:{context}")));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let answer = apps::http_requests(&client, to_echo, "/orders", &headers, 1).unwrap();
        assert!(answer.contains("1 status=200"), "{answer}");
        // The client's trace state goes on with its trace, and not with one begun anew.
        let state_kept = answer.contains("body: header tracestate=shop=7");
        assert_eq!(state_kept, traceparent.is_some(), "{answer}");
        received_traceparent(&answer)
    };
    let (unsampled, sampled) = (SpanContext::root(false), SpanContext::root(true));
    tokio::task::block_in_place(|| {
        // The client's unsampled trace goes on unsampled, under the waypoint's span.
        let at_app = get(Some(&unsampled));
        assert_eq!((at_app.trace_id, at_app.sampled), (unsampled.trace_id, false));
        assert_ne!(at_app.span_id, unsampled.span_id, "the waypoint's span is the app's parent");
        // A request without one begins a trace, not sampled at 0 %.
        let begun = get(None);
        assert!(!begun.sampled);
        // The client's sampled trace: the app's parent is the span the collector gets.
        let at_app = get(Some(&sampled));
        assert_eq!((at_app.trace_id, at_app.sampled), (sampled.trace_id, true));
        let trace_id = weft_api::hex::encode(&sampled.trace_id);
        let mut spans = Vec::new();
        weft_tests::until("the waypoint's span at the collector", WAIT, || {
            spans = collector.spans().unwrap();
            spans.iter().any(|span| span.trace_id == trace_id)
        })
        .unwrap();
        // Spans are exported, and written, in the order their requests ended: the unsampled
        // ones, which ended first, never were.
        assert_eq!(spans.len(), 1, "{spans:#?}");
        let span = &spans[0];
        assert_eq!(span.span_id, weft_api::hex::encode(&at_app.span_id), "{span:#?}");
        assert_eq!(span.parent_span_id, weft_api::hex::encode(&sampled.span_id), "{span:#?}");
        assert_eq!(span.name, "echo.shop.svc.cluster.local:80/*");
        assert_eq!(span.trace_state, "shop=7");
        assert_eq!((span.kind, span.status_code), (2, 0), "a server span, no error: {span:#?}");
        for (key, value) in [
            ("http.request.method", "GET"),
            ("url.path", "/orders"),
            ("http.response.status_code", "200"),
            ("weft.source.principal", "spiffe://cluster.local/ns/shop/sa/client"),
            ("weft.destination.service", "shop/echo.shop.svc.cluster.local"),
            ("weft.destination.principal", "spiffe://cluster.local/ns/shop/sa/echo"),
        ] {
            assert_eq!(span.attributes.get(key).map(String::as_str), Some(value), "{key}: {span:#?}");
        }
        assert_eq!(span.resource.get("service.name").map(String::as_str), Some("waypoint.shop"));
        weft_tests::until("the export to be counted", WAIT, || {
            let metrics = apps::http_get(&scene.waypoint.pod().netns, 15020, "/metrics").unwrap_or_default();
            metrics.contains("weft_trace_spans_total{outcome=\"exported\"} 1")
        })
        .unwrap();
    });
}
