//! The index built from hand-made objects.
use k8s_openapi::{
    api::{
        core::v1::{
            Container, ContainerPort, ObjectReference, PodCondition, PodIP, PodSpec, PodStatus, ServicePort,
            ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::api::ObjectMeta;

use weft_api::enrollment::{CAPTURED, ENABLED};

use super::*;

/// The index's [`super::build`], twice, and an index updated one change at a time: every test
/// also checks that a build depends on its objects alone (bytes that change from build to build,
/// a map's order say, would give unchanged resources new versions, pushed to every proxy at
/// every change in the cluster) and that every update serves what a build of the same objects
/// does.
fn build(naming: &Naming, objects: &Objects<'_>) -> Snapshot {
    let built = super::build(naming, objects);
    let again = super::build(naming, objects);
    assert!(built.same_resources(&again), "two builds of the same objects differ");
    one_change_at_a_time(naming, objects);
    built
}

/// Updates an index as `objects`' slices, then pods, then Services arrive one at a time, last
/// first (so slices name pods and Services not there yet), then as each goes and comes back,
/// each update naming only the object that changed; after each, requires what a build of the
/// objects then present serves.
fn one_change_at_a_time(naming: &Naming, objects: &Objects<'_>) {
    fn key<K: kube::Resource>(object: &K) -> (&str, &str) {
        super::named(object).expect("a test object has a namespace and a name")
    }
    fn without<'a, T>(all: &[&'a T], index: usize) -> Vec<&'a T> {
        [&all[..index], &all[index + 1..]].concat()
    }
    let mut index = Index::new(naming.clone());
    let mut step = |now: &Objects<'_>, changed: Changed<'_>| {
        let updated = index.update(now, Some(&changed));
        let built = super::build(naming, now);
        assert!(
            updated.same_resources(&built),
            "after {changed:?}, updates serve\n{:#}\nwhere a build serves\n{:#}",
            updated.dump(),
            built.dump()
        );
    };
    let mut now = Objects { pods: Vec::new(), services: Vec::new(), slices: Vec::new(), ..objects.clone() };
    step(&now, Changed::default());
    for &slice in objects.slices.iter().rev() {
        now.slices.push(slice);
        let (namespace, name) = key(slice);
        step(&now, Changed { slices: vec![(namespace, name, Some(slice))], ..Default::default() });
    }
    for &pod in objects.pods.iter().rev() {
        now.pods.push(pod);
        let (namespace, name) = key(pod);
        step(&now, Changed { pods: vec![(namespace, name, Some(pod))], ..Default::default() });
    }
    for &service in objects.services.iter().rev() {
        now.services.push(service);
        let (namespace, name) = key(service);
        step(&now, Changed { services: vec![(namespace, name, Some(service))], ..Default::default() });
    }
    for (at, &pod) in objects.pods.iter().enumerate() {
        let (namespace, name) = key(pod);
        let gone = Objects { pods: without(&objects.pods, at), ..objects.clone() };
        step(&gone, Changed { pods: vec![(namespace, name, None)], ..Default::default() });
        step(objects, Changed { pods: vec![(namespace, name, Some(pod))], ..Default::default() });
    }
    for (at, &service) in objects.services.iter().enumerate() {
        let (namespace, name) = key(service);
        let gone = Objects { services: without(&objects.services, at), ..objects.clone() };
        step(&gone, Changed { services: vec![(namespace, name, None)], ..Default::default() });
        step(objects, Changed { services: vec![(namespace, name, Some(service))], ..Default::default() });
    }
    for (at, &slice) in objects.slices.iter().enumerate() {
        let (namespace, name) = key(slice);
        let gone = Objects { slices: without(&objects.slices, at), ..objects.clone() };
        step(&gone, Changed { slices: vec![(namespace, name, None)], ..Default::default() });
        step(objects, Changed { slices: vec![(namespace, name, Some(slice))], ..Default::default() });
    }
}

fn naming() -> Naming {
    Naming {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        root_namespace: "weft-system".into(),
        labels: weft_api::enrollment::Labels::Weft,
    }
}

fn namespace(name: &str, ambient: bool) -> Namespace {
    let labels = ambient.then(|| [("weft.dev/dataplane-mode".to_owned(), "ambient".to_owned())].into());
    Namespace {
        metadata: ObjectMeta { name: Some(name.into()), labels, ..Default::default() },
        ..Default::default()
    }
}

fn pod(uid: &str, namespace: &str, ips: &[&str], created_seconds: i64) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("pod-{uid}")),
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            labels: Some([("app".to_owned(), "web".to_owned())].into()),
            // Its agent captured it (what the agent says of every pod it enrolls).
            annotations: Some([(CAPTURED.to_owned(), ENABLED.to_owned())].into()),
            creation_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(created_seconds).unwrap(),
            )),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node0".into()),
            service_account_name: Some("web".into()),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            pod_ip: ips.first().map(|ip| (*ip).to_owned()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).to_owned() }).collect()),
            ..Default::default()
        }),
    }
}

fn service(name: &str, namespace: &str, ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            selector: Some([("app".to_owned(), "web".to_owned())].into()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(port: i32, target: Option<IntOrString>) -> ServicePort {
    ServicePort { port, target_port: target, ..Default::default() }
}

fn workload(snapshot: &Snapshot, uid: &str) -> Option<api::Workload> {
    let resource = snapshot.addresses.get(uid)?;
    match api::Address::decode(resource.body.value.as_slice()).unwrap().r#type {
        Some(api::address::Type::Workload(workload)) => Some(workload),
        other => panic!("{uid} is not a workload: {other:?}"),
    }
}

#[test]
fn enrolled_pods_tunnel_over_hbone_and_others_go_plaintext() {
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true), namespace("plain", false)])
            .pods(&[pod("a", "mesh", &["10.244.0.5", "fd00::5"], 1), pod("b", "plain", &["10.244.0.6"], 1)]),
    );
    let a = workload(&snapshot, "a").unwrap();
    assert_eq!(a.tunnel_protocol(), api::TunnelProtocol::Hbone);
    assert_eq!(
        a.addresses,
        vec![vec![10, 244, 0, 5], "fd00::5".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec()]
    );
    assert_eq!(
        (a.service_account.as_str(), a.node.as_str(), a.trust_domain.as_str()),
        ("web", "node0", "cluster.local")
    );
    assert_eq!(workload(&snapshot, "b").unwrap().tunnel_protocol(), api::TunnelProtocol::None);
}

#[test]
fn a_labelled_pod_its_agent_has_not_captured_is_reached_in_plaintext() {
    let mut uncaptured = pod("a", "mesh", &["10.244.0.5"], 1);
    uncaptured.metadata.annotations = None;
    let mut refused = pod("b", "mesh", &["10.244.0.6"], 1);
    refused.metadata.annotations = Some([(CAPTURED.to_owned(), "disabled".to_owned())].into());
    let snapshot = build(
        &naming(),
        &Objects::default().namespaces(&[namespace("mesh", true)]).pods(&[uncaptured, refused]),
    );
    for uid in ["a", "b"] {
        assert_eq!(workload(&snapshot, uid).unwrap().tunnel_protocol(), api::TunnelProtocol::None, "{uid}");
    }
}

#[test]
fn host_network_and_finished_pods_are_not_workloads() {
    let mut host = pod("host", "mesh", &["172.18.0.10"], 1);
    host.spec.as_mut().unwrap().host_network = Some(true);
    let mut done = pod("done", "mesh", &["10.244.0.7"], 1);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let snapshot =
        build(&naming(), &Objects::default().namespaces(&[namespace("mesh", true)]).pods(&[host, done]));
    assert!(snapshot.addresses.is_empty(), "{:?}", snapshot.addresses.keys());
}

fn slice(
    name: &str,
    service: &str,
    family: &str,
    endpoints: Vec<Endpoint>,
    ports: &[(&str, i32)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("mesh".into()),
            labels: Some([("kubernetes.io/service-name".to_owned(), service.to_owned())].into()),
            ..Default::default()
        },
        address_type: family.into(),
        endpoints: Some(endpoints),
        ports: Some(
            ports
                .iter()
                .map(|(name, port)| EndpointPort {
                    name: Some((*name).into()).filter(|name: &String| !name.is_empty()),
                    port: Some(*port),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// An endpoint at `ip`, of pod `uid` if given, with its (ready, serving, terminating) conditions.
fn endpoint(ip: &str, pod: Option<&str>, (ready, serving, terminating): (bool, bool, bool)) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: pod.map(|uid| ObjectReference {
            kind: Some("Pod".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const READY: (bool, bool, bool) = (true, true, false);
const KEY: &str = "mesh/web.mesh.svc.cluster.local";

fn named(name: &str, port: i32, target: Option<IntOrString>) -> ServicePort {
    ServicePort { name: Some(name.into()), ..self::port(port, target) }
}

fn pairs(ports: &api::PortList) -> Vec<(u32, u32)> {
    ports.ports.iter().map(|port| (port.service_port, port.target_port)).collect()
}

#[test]
fn services_list_their_vips_and_their_slices_say_which_pods_serve_them_on_which_ports() {
    let web = service(
        "web",
        "mesh",
        "10.96.0.10",
        vec![
            named("http", 80, Some(IntOrString::String("http".into()))),
            named("admin", 81, Some(IntOrString::Int(8081))),
        ],
    );
    let slices = [slice(
        "web-v4",
        "web",
        "IPv4",
        vec![endpoint("10.244.0.5", Some("a"), READY)],
        &[("http", 8080), ("admin", 8081)],
    )];
    let mut other = pod("other", "mesh", &["10.244.0.9"], 1);
    other.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .pods(&[pod("a", "mesh", &["10.244.0.5"], 1), other])
            .services(&[web])
            .slices(&slices),
    );
    let Some(api::address::Type::Service(service)) =
        api::Address::decode(snapshot.addresses[KEY].body.value.as_slice()).unwrap().r#type
    else {
        panic!("no service {KEY}");
    };
    assert_eq!(service.addresses[0].address, vec![10, 96, 0, 10]);
    // A named target port differs per pod: the service leaves it to the endpoints.
    assert_eq!(
        service.ports.iter().map(|p| (p.service_port, p.target_port)).collect::<Vec<_>>(),
        [(80, 0), (81, 8081)]
    );
    assert_eq!(pairs(&workload(&snapshot, "a").unwrap().services[KEY]), [(80, 8080), (81, 8081)]);
    assert!(workload(&snapshot, "other").unwrap().services.is_empty(), "not in the slice");
}

#[test]
fn endpoints_that_are_no_pods_of_the_mesh_become_plaintext_workloads_reached_only_through_their_service() {
    // A Service without a selector, as `kubernetes.default` is, and a host-network pod.
    let mut selectorless = service("web", "mesh", "10.96.0.10", vec![named("https", 443, None)]);
    selectorless.spec.as_mut().unwrap().selector = None;
    let mut host = pod("host", "mesh", &["172.18.0.10"], 1);
    host.spec.as_mut().unwrap().host_network = Some(true);
    let slices = [slice(
        "web-1",
        "web",
        "IPv4",
        vec![
            endpoint("172.18.0.1", None, READY),
            endpoint("172.18.0.10", Some("host"), READY),
            // A pod the index has not seen (yet): never sent plaintext meanwhile.
            endpoint("10.244.0.77", Some("unseen"), READY),
            // No pod named, but a meshed pod's address: that pod, tunnelled to as always.
            endpoint("10.244.0.5", None, READY),
        ],
        &[("https", 6443)],
    )];
    let pods = [host, pod("meshed", "mesh", &["10.244.0.5"], 1)];
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .pods(&pods)
            .services(&[selectorless])
            .slices(&slices),
    );
    let meshed = workload(&snapshot, "meshed").unwrap();
    assert_eq!(
        (meshed.tunnel_protocol(), pairs(&meshed.services[KEY])),
        (api::TunnelProtocol::Hbone, vec![(443, 6443)])
    );
    let outside = workload(&snapshot, "EndpointSlice/mesh/web-1/172.18.0.1").unwrap();
    assert_eq!(outside.tunnel_protocol(), api::TunnelProtocol::None);
    assert_eq!(outside.network_mode(), api::NetworkMode::HostNetwork);
    assert_eq!(outside.addresses, [vec![172, 18, 0, 1]]);
    assert_eq!(outside.status(), api::WorkloadStatus::Healthy);
    assert_eq!(pairs(&outside.services[KEY]), [(443, 6443)]);
    assert!(
        workload(&snapshot, "EndpointSlice/mesh/web-1/172.18.0.10").is_some(),
        "a host-network pod's endpoint"
    );
    let workloads = snapshot.addresses.keys().filter(|key| !key.contains(".svc.")).count();
    assert_eq!(workloads, 3, "{:?}", snapshot.addresses.keys());
}

#[test]
fn ready_endpoints_and_those_still_serving_while_they_terminate_back_a_service_and_no_others() {
    let web = service("web", "mesh", "10.96.0.10", vec![port(80, None)]);
    let slices = [slice(
        "web-1",
        "web",
        "IPv4",
        vec![
            endpoint("192.0.2.1", None, READY),
            endpoint("192.0.2.2", None, (false, true, true)),
            endpoint("192.0.2.3", None, (false, false, false)),
            endpoint("192.0.2.4", None, (false, false, true)),
            endpoint("10.244.0.6", Some("b"), (false, false, false)),
        ],
        &[("", 80)],
    )];
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .pods(&[pod("b", "mesh", &["10.244.0.6"], 1)])
            .services(&[web])
            .slices(&slices),
    );
    let status =
        |ip: &str| workload(&snapshot, &format!("EndpointSlice/mesh/web-1/{ip}")).map(|w| w.status());
    assert_eq!(status("192.0.2.1"), Some(api::WorkloadStatus::Healthy));
    assert_eq!(status("192.0.2.2"), Some(api::WorkloadStatus::Unhealthy), "serving while terminating");
    assert_eq!((status("192.0.2.3"), status("192.0.2.4")), (None, None), "not serving");
    assert!(workload(&snapshot, "b").unwrap().services.is_empty(), "a pod that is not ready serves nothing");
}

#[test]
fn a_dual_stack_service_lists_a_pod_once_and_publishing_not_ready_addresses_allows_all() {
    let mut web = service("web", "mesh", "10.96.0.10", vec![port(80, Some(IntOrString::Int(8080)))]);
    web.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    let slices = [
        slice("web-v4", "web", "IPv4", vec![endpoint("10.244.0.5", Some("a"), READY)], &[("", 8080)]),
        slice("web-v6", "web", "IPv6", vec![endpoint("fd00::5", Some("a"), READY)], &[("", 8080)]),
        slice("web-fqdn", "web", "FQDN", vec![endpoint("example.com", None, READY)], &[("", 8080)]),
    ];
    let pods = [pod("a", "mesh", &["10.244.0.5", "fd00::5"], 1)];
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .pods(&pods)
            .services(&[web])
            .slices(&slices),
    );
    assert_eq!(pairs(&workload(&snapshot, "a").unwrap().services[KEY]), [(80, 8080)]);
    assert!(workload(&snapshot, "EndpointSlice/mesh/web-fqdn/example.com").is_none());
    let Some(api::address::Type::Service(service)) =
        api::Address::decode(snapshot.addresses[KEY].body.value.as_slice()).unwrap().r#type
    else {
        panic!("no service {KEY}");
    };
    let policy = service.load_balancing.map(|balancing| balancing.health_policy());
    assert_eq!(policy, Some(api::load_balancing::HealthPolicy::AllowAll));
}

#[test]
fn a_reused_address_goes_to_the_live_pod_never_the_terminating_one() {
    let mut old = pod("old", "mesh", &["10.244.0.5"], 1);
    old.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(50).unwrap()));
    // The old pod is newer by timestamp but terminating: liveness decides first.
    old.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(99).unwrap()));
    let new = pod("new", "other", &["10.244.0.5"], 2);
    for pods in [[old.clone(), new.clone()], [new, old]] {
        let snapshot =
            build(&naming(), &Objects::default().namespaces(&[namespace("mesh", true)]).pods(&pods));
        assert_eq!(workload(&snapshot, "new").unwrap().addresses, vec![vec![10, 244, 0, 5]]);
        assert!(workload(&snapshot, "old").is_none(), "a workload left without addresses is withdrawn");
    }
    // Both live: the newer pod wins.
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true)])
            .pods(&[pod("first", "mesh", &["10.244.0.5"], 1), pod("second", "mesh", &["10.244.0.5"], 2)]),
    );
    assert!(workload(&snapshot, "second").is_some());
    assert!(workload(&snapshot, "first").is_none());
}

#[test]
fn each_address_goes_to_its_strongest_claimant_alone() {
    let live = |uid: &str, ips: &[&str], created: i64| pod(uid, "mesh", ips, created);
    let pods = [
        // Three claim 10.244.0.5: the newest live one takes it.
        live("a", &["10.244.0.5"], 1),
        live("b", &["10.244.0.5", "fd00::b"], 3),
        live("c", &["10.244.0.5"], 2),
        // A dual-stack pod loses the address another, newer, holds and keeps its other one.
        live("d", &["10.244.0.6", "fd00::d"], 4),
        live("e", &["10.244.0.6"], 5),
        // The same address twice in one pod is kept as it was.
        live("f", &["10.244.0.7", "10.244.0.7"], 6),
    ];
    let snapshot = build(&naming(), &Objects::default().namespaces(&[namespace("mesh", true)]).pods(&pods));
    let addresses = |uid: &str| -> Vec<String> {
        workload(&snapshot, uid)
            .map(|workload| {
                workload
                    .addresses
                    .iter()
                    .filter_map(|bytes| ip_from_bytes(bytes))
                    .map(|ip| ip.to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(addresses("a"), Vec::<String>::new());
    assert_eq!(addresses("b"), ["10.244.0.5", "fd00::b"]);
    assert_eq!(addresses("c"), Vec::<String>::new());
    assert_eq!(addresses("d"), ["fd00::d"]);
    assert_eq!(addresses("e"), ["10.244.0.6"]);
    assert_eq!(addresses("f"), ["10.244.0.7", "10.244.0.7"]);
}

#[test]
fn versions_follow_content() {
    let objects = || (vec![namespace("mesh", true)], vec![pod("a", "mesh", &["10.244.0.5"], 1)]);
    let (namespaces, pods) = objects();
    let one = build(&naming(), &Objects::default().namespaces(&namespaces).pods(&pods));
    let two = build(&naming(), &Objects::default().namespaces(&namespaces).pods(&pods));
    assert!(one.same_resources(&two));
    let unlabelled =
        build(&naming(), &Objects::default().namespaces(&[namespace("mesh", false)]).pods(&pods));
    assert_ne!(one.addresses["a"].version, unlabelled.addresses["a"].version);
}

#[test]
fn a_pod_behind_many_services_keeps_its_version_from_build_to_build() {
    // Its services are a map on the wire: encoded in an order of their own, a build would give
    // the unchanged pod a new version, pushed to every proxy at every change in the cluster.
    let names: Vec<String> = (0..8).map(|n| format!("web{n}")).collect();
    let services: Vec<Service> = names
        .iter()
        .enumerate()
        .map(|(n, name)| service(name, "mesh", &format!("10.96.0.{}", 10 + n), vec![named("http", 80, None)]))
        .collect();
    let slices: Vec<EndpointSlice> = names
        .iter()
        .map(|name| {
            let endpoints = vec![endpoint("10.244.0.5", Some("a"), READY)];
            slice(&format!("{name}-v4"), name, "IPv4", endpoints, &[("http", 80)])
        })
        .collect();
    let (namespaces, pods) = (vec![namespace("mesh", true)], vec![pod("a", "mesh", &["10.244.0.5"], 1)]);
    let objects = Objects::default().namespaces(&namespaces).pods(&pods).services(&services).slices(&slices);
    let first = build(&naming(), &objects);
    assert_eq!(workload(&first, "a").unwrap().services.len(), 8);
    for _ in 0..4 {
        let again = build(&naming(), &objects);
        assert_eq!(first.addresses["a"].version, again.addresses["a"].version);
        assert!(first.same_resources(&again));
    }
}

#[test]
fn pods_the_agent_does_not_capture_are_never_tunnelled_to_and_terminating_ones_still_are() {
    let mut terminating = pod("terminating", "mesh", &["10.244.0.7"], 1);
    terminating.metadata.deletion_timestamp =
        Some(Time(k8s_openapi::jiff::Timestamp::from_second(50).unwrap()));
    let mut pending = pod("pending", "mesh", &["10.244.0.8"], 1);
    pending.status.as_mut().unwrap().phase = Some("Pending".into());
    let snapshot = build(
        &naming(),
        &Objects::default().namespaces(&[namespace("mesh", true)]).pods(&[terminating, pending]),
    );
    assert_eq!(workload(&snapshot, "pending").unwrap().tunnel_protocol(), api::TunnelProtocol::None);
    // Still running while its containers shut down: still captured, still tunnelled to.
    let terminating = workload(&snapshot, "terminating").unwrap();
    assert_eq!(terminating.tunnel_protocol(), api::TunnelProtocol::Hbone);
    assert_eq!(terminating.status(), api::WorkloadStatus::Unhealthy);
}

#[test]
fn a_policy_is_served_and_named_by_the_pods_its_selector_picks() {
    let policy = |name: &str, namespace: &str, spec: serde_json::Value| -> AuthorizationPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": namespace },
            "spec": spec,
        }))
        .unwrap()
    };
    let selecting_web =
        policy("web-only", "mesh", serde_json::json!({ "selector": { "matchLabels": { "app": "web" } } }));
    let selecting_db =
        policy("db-only", "mesh", serde_json::json!({ "selector": { "matchLabels": { "app": "db" } } }));
    let other_namespace = policy(
        "web-elsewhere",
        "plain",
        serde_json::json!({ "selector": { "matchLabels": { "app": "web" } } }),
    );
    let not_served = policy("audit", "mesh", serde_json::json!({ "action": "AUDIT" }));
    let snapshot = build(
        &naming(),
        &Objects::default()
            .namespaces(&[namespace("mesh", true), namespace("plain", false)])
            .pods(&[pod("a", "mesh", &["10.244.0.5"], 1)])
            .policies(&[selecting_web, selecting_db, other_namespace, not_served]),
    );
    assert_eq!(workload(&snapshot, "a").unwrap().authorization_policies, ["mesh/web-only"]);
    assert_eq!(
        snapshot.authorizations.keys().collect::<Vec<_>>(),
        ["mesh/db-only", "mesh/web-only", "plain/web-elsewhere"]
    );
    let status = |name: &str| snapshot.policies.iter().find(|status| status.name == name).unwrap();
    assert_eq!(status("web-only").selects, ["mesh/pod-a"]);
    assert_eq!(
        (status("web-only").action.as_str(), status("web-only").scope.as_str()),
        ("ALLOW", "WORKLOAD_SELECTOR")
    );
    assert!(status("db-only").selects.is_empty());
    assert!(!status("audit").served && !status("audit").notes.is_empty());
    assert_eq!(snapshot.dump()["policies"].as_array().unwrap().len(), 4);
}

#[test]
fn a_pod_is_named_for_metrics_by_its_deployment_cron_job_or_other_controller_else_itself() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    let meta = |owner: Option<(&str, &str)>, hash: Option<&str>| ObjectMeta {
        name: Some("pod-abc12".into()),
        owner_references: owner.map(|(kind, name)| {
            vec![OwnerReference {
                kind: kind.into(),
                name: name.into(),
                controller: Some(true),
                ..Default::default()
            }]
        }),
        labels: hash.map(|hash| [("pod-template-hash".to_owned(), hash.to_owned())].into()),
        ..Default::default()
    };
    let named = |owner, hash| super::workload_name(&meta(owner, hash));
    assert_eq!(named(Some(("ReplicaSet", "web-7d4b9c")), Some("7d4b9c")), "web");
    assert_eq!(named(Some(("ReplicaSet", "web-7d4b9c")), None), "web-7d4b9c");
    assert_eq!(named(Some(("Job", "backup-29012345")), None), "backup");
    assert_eq!(named(Some(("Job", "migrate")), None), "migrate");
    assert_eq!(named(Some(("StatefulSet", "db")), None), "db");
    assert_eq!(named(None, None), "pod-abc12");
}

mod traffic_policies;
mod updates;
mod waypoints;
