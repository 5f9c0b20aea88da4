//! Weft's node side under Istio's own control plane: istiod (built from the istio.io/istio
//! module by `cargo xtask setup`) in ambient mode on the harness's API server, with Istio's CRDs;
//! Weft's agents enroll by Istio's label and mark pods with Istio's annotation, Weft's node
//! proxies take their workloads, services, policies and certificates from istiod's xDS and CA,
//! and Istio's `security.istio.io` AuthorizationPolicy objects decide.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, PostParams},
};
use serde_json::{Value, json};
use weft_tests::{
    apps, canary, cluster::Cluster, istiod::Istiod, kubelet::PodTemplate, mesh::Mesh, wire::WireMonitor,
};

const WAIT: Duration = Duration::from_secs(20);
const ECHO_PORT: u16 = 8080;

fn policies(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy");
    Api::namespaced_with(client, "shop", &ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies"))
}

async fn apply(api: &Api<DynamicObject>, name: &str, annotations: Value, spec: Value) {
    let object = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": name, "namespace": "shop", "annotations": annotations },
        "spec": spec,
    });
    api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
}

fn eventually(what: &str, holds: impl FnMut() -> bool) {
    weft_tests::until(what, WAIT, holds).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_node_proxies_and_agents_mesh_under_istiod_with_istios_own_policies() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[("istio.io/dataplane-mode", "ambient")]).await.unwrap();
    let web = cluster.add_pod(0, &PodTemplate::new("shop", "web").service_account("web")).await.unwrap();
    let intruder =
        cluster.add_pod(0, &PodTemplate::new("shop", "intruder").service_account("intruder")).await.unwrap();
    let db = cluster
        .add_pod(1, &PodTemplate::new("shop", "db").service_account("db").label("app", "db"))
        .await
        .unwrap();
    let _echo = apps::echo_server(&db, ECHO_PORT).unwrap();
    let service = Service {
        metadata: ObjectMeta { name: Some("db".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), "db".to_owned())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                    ECHO_PORT.into(),
                )),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let vip: std::net::IpAddr = Api::<Service>::namespaced(cluster.client(), "shop")
        .create(&PostParams::default(), &service)
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap()
        .parse()
        .unwrap();
    let mut istiod = Istiod::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_under_istiod(&cluster, &istiod, &[&web, &intruder, &db]).await.unwrap();
    let (to_db, to_service) = (SocketAddr::new(db.ipv4.into(), ECHO_PORT), SocketAddr::new(vip, 80));

    // Across nodes over HBONE, certificates from istiod's CA: nothing in plaintext on the fabric.
    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();
    tokio::task::block_in_place(|| {
        assert_eq!(apps::send(&web, to_db, &canary).unwrap(), canary);
        assert_eq!(apps::send(&web, to_service, &canary).unwrap(), canary, "through the Service VIP");
        monitor.settle(WAIT).unwrap();
        assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric");
        let tunnelled = mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE closed"), WAIT).unwrap();
        assert!(tunnelled.contains("spiffe://cluster.local/ns/shop/sa/web"), "{tunnelled}");
    });

    // Istio's ALLOW by principal: only web.
    let api = policies(cluster.client());
    let from_web = json!({ "selector": { "matchLabels": { "app": "db" } }, "action": "ALLOW",
        "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/web"] } }] }] });
    apply(&api, "db-allow-web", json!({}), from_web).await;
    tokio::task::block_in_place(|| {
        eventually("the policy to reach db's proxy", || !apps::reaches(&intruder, to_db));
        assert!(!apps::reaches(&intruder, to_db), "a new connection of the intruder is refused");
        let denied = mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE denied"), WAIT).unwrap();
        assert!(denied.contains("sa/intruder") && denied.contains("shop/db-allow-web"), "{denied}");
        assert!(apps::reaches(&web, to_db), "web is allowed");
    });

    // A dry-run DENY of web changes nothing but is logged.
    let deny_web = json!({ "selector": { "matchLabels": { "app": "db" } }, "action": "DENY",
        "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/web"] } }] }] });
    apply(&api, "db-deny-web-dry-run", json!({ "istio.io/dry-run": "true" }), deny_web.clone()).await;
    tokio::task::block_in_place(|| {
        // Each try a new connection of web's, which must pass, until db's proxy logs the match.
        weft_tests::until("the dry-run policy to match web's connections", WAIT, || {
            assert!(apps::reaches(&web, to_db), "a dry-run policy is never enforced");
            mesh.ztunnel(1)
                .wait_for(
                    |line| line.contains("dry-run policy matched") && line.contains("db-deny-web-dry-run"),
                    Duration::from_millis(500),
                )
                .is_ok()
        })
        .unwrap();
    });

    // The same DENY enforced.
    apply(&api, "db-deny-web", json!({}), deny_web).await;
    tokio::task::block_in_place(|| eventually("web denied", || !apps::reaches(&web, to_db)));
    for name in ["db-deny-web", "db-deny-web-dry-run", "db-allow-web"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    tokio::task::block_in_place(|| eventually("web allowed again", || apps::reaches(&web, to_db)));
    assert!(!istiod.process().exited(), "istiod ran throughout");
}
