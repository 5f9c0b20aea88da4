//! Kubelet probes: connections a node opens to its own enrolled pods (the kubelet's liveness
//! and readiness probes) reach the app without the proxy — under an ALLOW policy that names one
//! peer, under STRICT, while the node's proxy is down and once it is back — as in Istio ambient.
//! No other source gets that pass: another node and a pod outside the mesh are still captured.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{net::SocketAddr, time::Duration};

use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use serde_json::json;
use weft_tests::{
    apps::{self, Sent},
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    mesh::Mesh,
    topology::{Node, Pod},
};

const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);
const LABEL: &str = "weft.dev/dataplane-mode";

fn echoed(sent: anyhow::Result<Sent>) -> bool {
    matches!(sent, Ok(Sent::Reply { reply, .. }) if reply == "probe")
}

/// Whether `node`'s probe of `to` comes back.
fn probe(node: &Node, to: SocketAddr) -> bool {
    echoed(apps::try_send_from_node(node, to, "probe"))
}

/// Whether `pod`'s connection to `to` comes back.
fn reaches(pod: &Pod, to: SocketAddr) -> bool {
    echoed(apps::try_send(pod, to, "probe"))
}

/// Retries `holds` (each try a real connection) until it is true; fails after [`WAIT`].
fn eventually(what: &str, holds: impl FnMut() -> bool) {
    weft_tests::until(what, WAIT, holds).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_probes_its_pods_under_a_policy_under_strict_and_across_a_proxy_restart() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[(LABEL, "ambient")]).await.unwrap();
    let app = PodTemplate::new("shop", "app").service_account("app").label("app", "app");
    let app = cluster.add_pod(0, &app).await.unwrap();
    let outsider = PodTemplate::new("shop", "outsider").service_account("outsider").label(LABEL, "none");
    let outsider = cluster.add_pod(0, &outsider).await.unwrap();
    let _echo = apps::echo_server(&app, PORT).unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let (node0, node1) = (cluster.topology().nodes()[0].clone(), cluster.topology().nodes()[1].clone());
    let targets = [SocketAddr::new(app.ipv4.into(), PORT), SocketAddr::new(app.ipv6.into(), PORT)];
    let to = targets[0];
    let probed = |node: &Node| targets.iter().all(|to| probe(node, *to));

    // An ALLOW that admits one identity only: no plaintext peer matches it.
    let gvk = GroupVersionKind::gvk("security.weft.dev", "v1", "AuthorizationPolicy");
    let policies: Api<DynamicObject> = Api::namespaced_with(
        cluster.client(),
        "shop",
        &ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies"),
    );
    let policy = json!({
        "apiVersion": "security.weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": "app-allow-web", "namespace": "shop" },
        "spec": {
            "selector": { "matchLabels": { "app": "app" } },
            "rules": [{ "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/web"] } }] }],
        },
    });
    policies.create(&PostParams::default(), &serde_json::from_value(policy).unwrap()).await.unwrap();

    tokio::task::block_in_place(|| {
        eventually("the outsider refused by the policy", || !reaches(&outsider, to));
        assert!(probed(&node0), "the node's probe under an ALLOW policy");
        assert!(!probe(&node1, to), "another node passed the policy");
        // Refused by the proxy, for the reason the policy gives.
        let from_node1 = node1.ipv4.to_string();
        let denied = |line: &str| line.contains("plaintext inbound denied") && line.contains(&from_node1);
        mesh.ztunnel(0).wait_for(denied, WAIT).unwrap();

        mesh.restart_ztunnel_with(0, &["--strict"], 1).unwrap();
        assert!(probed(&node0), "the node's probe under STRICT");
        assert!(!probe(&node1, to), "another node's plaintext passed STRICT");
        let refused =
            |line: &str| line.contains("plaintext inbound refused (strict)") && line.contains(&from_node1);
        mesh.ztunnel(0).wait_for(refused, WAIT).unwrap();
        assert!(!reaches(&outsider, to), "a pod outside the mesh passed STRICT");

        // No proxy: capture refuses everyone else (fail closed), never the node's probes.
        mesh.kill_ztunnel(0).unwrap();
        assert!(probed(&node0), "the node's probe while its proxy is down");
        assert!(!reaches(&outsider, to), "a pod bypassed capture while the proxy was down");
        mesh.start_ztunnel(0).unwrap();
        mesh.ztunnel(0).wait_for(|line| line.contains("pod proxy started"), WAIT).unwrap();
        assert!(probed(&node0), "the node's probe once its proxy is back");
        assert!(!probe(&node1, to), "another node passed once the proxy was back");
    });
}
