//! The Kubernetes-driven agent: enrollment follows namespace and pod labels on the real API
//! server, without restarting pods, and the wire shows it.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use weft_tests::{
    apps, canary,
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    mesh::{Ca, Enrollment, Member, Mesh},
    topology::Pod,
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);
const LABEL: &str = "weft.dev/dataplane-mode";

async fn label_namespace(client: kube::Client, name: &str, value: Option<&str>) {
    let patch = serde_json::json!({ "metadata": { "labels": { LABEL: value } } });
    Api::<Namespace>::all(client).patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
}

/// Canary frames that crossed the fabric while `from` sent one message to `to`.
fn plaintext_frames(monitor: &WireMonitor, from: &Pod, to: SocketAddr, canary: &str) -> u64 {
    let before = monitor.canary_frames();
    assert_eq!(apps::send(from, to, canary).unwrap(), canary);
    monitor.settle(WAIT).unwrap();
    monitor.canary_frames() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_labels_enroll_and_release_running_pods_and_the_pod_opt_out_wins() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let server =
        cluster.add_pod(1, &PodTemplate::new("shop", "server").service_account("payments")).await.unwrap();
    let loner = cluster
        .add_pod(0, &PodTemplate::new("shop", "loner").service_account("loner").label(LABEL, "none"))
        .await
        .unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut tokens = Vec::new();
    for node in cluster.topology().nodes() {
        tokens.push(plane.proxy_token(&cluster, node).await.unwrap());
    }
    let members = [
        Member::new(&client, "shop", "cart"),
        Member::new(&server, "shop", "payments"),
        Member::new(&loner, "shop", "loner"),
    ];
    let ca = Ca::Control { plane: &plane, tokens };
    let enrollment = Enrollment::Kubernetes(cluster.api().kubeconfig().to_owned());
    let mut mesh =
        tokio::task::block_in_place(|| Mesh::start_with(cluster.topology(), &members, &ca, &enrollment))
            .unwrap();
    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let pause_pids: Vec<String> = [&client, &server]
        .iter()
        .map(|pod| std::fs::read_to_string(pod.cgroup.join("cgroup.procs")).unwrap())
        .collect();

    // Not labelled: plaintext.
    assert!(tokio::task::block_in_place(|| plaintext_frames(&monitor, &client, to, &canary)) > 0);

    // Labelled: both running pods join (the opted-out one does not); no plaintext from the client.
    label_namespace(cluster.client(), "shop", Some("ambient")).await;
    tokio::task::block_in_place(|| {
        mesh.agent(0)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=client"), WAIT)
            .unwrap();
        mesh.agent(1)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=server"), WAIT)
            .unwrap();
        assert_eq!(plaintext_frames(&monitor, &client, to, &canary), 0, "plaintext after enrollment");
        assert!(plaintext_frames(&monitor, &loner, to, &canary) > 0, "the opted-out pod was captured");
    });

    // Unlabelled: they leave; plaintext again. Nobody was restarted.
    label_namespace(cluster.client(), "shop", None).await;
    tokio::task::block_in_place(|| {
        mesh.agent(0).wait_for(|line| line.contains("left the mesh"), WAIT).unwrap();
        mesh.agent(1).wait_for(|line| line.contains("left the mesh"), WAIT).unwrap();
        assert!(plaintext_frames(&monitor, &client, to, &canary) > 0);
    });
    let after: Vec<String> = [&client, &server]
        .iter()
        .map(|pod| std::fs::read_to_string(pod.cgroup.join("cgroup.procs")).unwrap())
        .collect();
    assert_eq!(after, pause_pids, "a pod was restarted");
}
