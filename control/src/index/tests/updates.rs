//! An index updated change by change: it keeps what a change does not touch, and follows what
//! it does (what every update serves is also checked against a build by every test's `build`).
use k8s_openapi::api::core::v1::Node;

use super::*;

/// Four pods of `web` behind one slice.
fn cluster() -> (Vec<Namespace>, Vec<Pod>, Service, EndpointSlice) {
    let pods: Vec<Pod> =
        (0..4).map(|i| pod(&format!("p{i}"), "mesh", &[&format!("10.244.0.{i}")], 1)).collect();
    let endpoints =
        (0..4).map(|i| endpoint(&format!("10.244.0.{i}"), Some(&format!("p{i}")), READY)).collect();
    let web = service("web", "mesh", "10.96.0.10", vec![port(80, Some(IntOrString::Int(8080)))]);
    (vec![namespace("mesh", true)], pods, web, slice("web-v4", "web", "IPv4", endpoints, &[("", 8080)]))
}

#[test]
fn a_pods_change_makes_its_own_workload_again_and_keeps_every_other() {
    let (namespaces, mut pods, web, slice) = cluster();
    let objects = Objects::default().namespaces(&namespaces).pods(&pods).services([&web]).slices([&slice]);
    let mut index = Index::new(naming());
    let first = index.update(&objects, None);
    pods[1].spec.as_mut().unwrap().service_account_name = Some("other".into());
    let objects = Objects::default().namespaces(&namespaces).pods(&pods).services([&web]).slices([&slice]);
    let second = index.update(
        &objects,
        Some(&Changed { pods: vec![("mesh", "pod-p1", Some(&pods[1]))], ..Default::default() }),
    );
    assert_eq!(workload(&second, "p1").unwrap().service_account, "other");
    assert!(!workload(&second, "p1").unwrap().services.is_empty(), "still behind web");
    for kept in ["p0", "p2", "p3"] {
        assert!(Arc::ptr_eq(&first.addresses[kept], &second.addresses[kept]), "{kept} made again");
    }
    assert!(second.same_resources(&super::super::build(&naming(), &objects)));
}

#[test]
fn what_every_pod_depends_on_changing_redoes_the_pods_it_changed_for_and_no_others() {
    let (mut namespaces, mut pods, web, slice) = cluster();
    namespaces.push(namespace("other", true));
    let mut elsewhere = pod("q0", "other", &["10.244.1.1"], 1);
    elsewhere.spec.as_mut().unwrap().node_name = Some("node1".into());
    pods.push(elsewhere);
    let node = |name: &str, zone: &str| -> PartialObjectMeta<Node> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": { "name": name, "labels": { "topology.kubernetes.io/zone": zone } },
        }))
        .unwrap()
    };
    let policy: AuthorizationPolicy = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web-only", "namespace": "other" },
        "spec": { "selector": { "matchLabels": { "app": "web" } } },
    }))
    .unwrap();
    let nodes = [node("node0", "a"), node("node1", "a")];
    let base = Objects::default().pods(&pods).services([&web]).slices([&slice]);
    let mut index = Index::new(naming());
    let none: [AuthorizationPolicy; 0] = [];
    let policies = [policy];
    let mut last = index.update(&base.clone().namespaces(&namespaces).nodes(&nodes).policies(&none), None);
    let mut update = |objects: &Objects<'_>, redone: &[&str], kept: &[&str]| {
        let updated = index.update(objects, Some(&Changed::default()));
        assert!(updated.same_resources(&super::super::build(&naming(), objects)), "a build differs");
        for uid in redone {
            assert!(!Arc::ptr_eq(&last.addresses[*uid], &updated.addresses[*uid]), "{uid} kept");
        }
        for uid in kept {
            assert!(Arc::ptr_eq(&last.addresses[*uid], &updated.addresses[*uid]), "{uid} made again");
        }
        last = updated;
    };
    // No pod, Service or slice changed in any of these.
    let left = [namespace("mesh", false), namespace("other", true)];
    update(&base.clone().namespaces(&left).nodes(&nodes).policies(&none), &["p0", "p1", "p2", "p3"], &["q0"]);
    update(
        &base.clone().namespaces(&left).nodes(&nodes).policies(&policies),
        &["q0"],
        &["p0", "p1", "p2", "p3"],
    );
    let moved = [node("node0", "a"), node("node1", "b")];
    update(
        &base.clone().namespaces(&left).nodes(&moved).policies(&policies),
        &["q0"],
        &["p0", "p1", "p2", "p3"],
    );
    assert_eq!(workload(&last, "q0").unwrap().locality.unwrap().zone, "b");
    assert_eq!(workload(&last, "q0").unwrap().authorization_policies, ["other/web-only"]);
    assert_eq!(workload(&last, "p0").unwrap().tunnel_protocol(), api::TunnelProtocol::None);
}

#[test]
fn a_slice_given_to_another_service_moves_its_pods() {
    let (namespaces, pods, web, slice) = cluster();
    let api_service = service("api", "mesh", "10.96.0.11", vec![port(80, Some(IntOrString::Int(8080)))]);
    let objects = Objects::default()
        .namespaces(&namespaces)
        .pods(&pods)
        .services([&web, &api_service])
        .slices([&slice]);
    let mut index = Index::new(naming());
    index.update(&objects, None);
    let mut moved = slice.clone();
    moved.metadata.labels = Some([("kubernetes.io/service-name".to_owned(), "api".to_owned())].into());
    let objects = Objects::default()
        .namespaces(&namespaces)
        .pods(&pods)
        .services([&web, &api_service])
        .slices([&moved]);
    let updated = index.update(
        &objects,
        Some(&Changed { slices: vec![("mesh", "web-v4", Some(&moved))], ..Default::default() }),
    );
    let services = workload(&updated, "p0").unwrap().services;
    assert_eq!(services.keys().collect::<Vec<_>>(), ["mesh/api.mesh.svc.cluster.local"]);
    assert!(updated.same_resources(&super::super::build(&naming(), &objects)));
}
