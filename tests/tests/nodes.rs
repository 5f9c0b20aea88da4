//! Real nodes: kubelets, containerd and kube-proxy of the tested release run pods as real
//! containers on two nodes, scheduled by the real scheduler; Services work through kube-proxy,
//! names through CoreDNS, probes through the kubelet, logs through the API server's kubelet
//! client.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]
use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Service},
};
use kube::{Api, api::PostParams};
use weft_tests::{images, nodes::RealCluster, wire::WireMonitor};

const WAIT: Duration = Duration::from_secs(60);

fn object<T: k8s_openapi::serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// A pod on `node` that runs `weft-testpod ARGS` once.
fn run_once(name: &str, node: &str, args: &[&str]) -> Pod {
    object(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "containers": [{"name": "run", "image": "weft.local/testpod:1", "args": args}],
        },
    }))
}

/// An echo server Deployment on node0 (ready once it listens, by the kubelet's probe) behind
/// the Service `echo` (port 80) in `namespace`; returns the Service's address.
async fn deploy_echo(client: &kube::Client, namespace: &str) -> String {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = object(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "node0"},
                    "containers": [{
                        "name": "echo",
                        "image": "weft.local/testpod:1",
                        "args": ["echo", "--port", "8080"],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }));
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = object(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    services.create(&PostParams::default(), &service).await.unwrap().spec.unwrap().cluster_ip.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_containers_on_real_nodes_and_reach_a_service_and_the_api_server() {
    let cluster = RealCluster::start(2, &[images::testpod().unwrap()]).await.unwrap();
    let client = cluster.client();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &object(serde_json::json!({"metadata": {"name": "demo"}})))
        .await
        .unwrap();
    let vip = deploy_echo(&client, "demo").await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let echo = weft_tests::eventually("the echo pod", WAIT, || async {
        pods.list(&Default::default()).await.ok()?.items.into_iter().find_map(|pod| pod.metadata.name)
    })
    .await
    .unwrap();
    let echo = cluster.wait_for_pod("demo", &echo, "Running", WAIT).await.unwrap();
    let ips: Vec<String> = echo.status.unwrap().pod_ips.unwrap().into_iter().map(|ip| ip.ip).collect();
    assert_eq!(ips.len(), 2, "dual-stack pod addresses from the CNI: {ips:?}");
    assert!(ips[0].starts_with("10.244.0."), "{ips:?}");

    // From the other node, through kube-proxy's Service rules once they name the endpoint.
    cluster.wait_for_service_rules(1, &format!("{}:8080", ips[0]), WAIT).await.unwrap();
    let to = format!("{vip}:80");
    pods.create(
        &PostParams::default(),
        &run_once("client", "node1", &["send", "--to", &to, "--message", "hello"]),
    )
    .await
    .unwrap();
    cluster.wait_for_pod("demo", "client", "Succeeded", WAIT).await.unwrap();
    let logs = pods.logs("client", &Default::default()).await.unwrap();
    assert!(logs.contains("hello"), "{logs}");
    // By name, through CoreDNS and the pod's search domains.
    let by_name = run_once("named", "node1", &["send", "--to", "echo:80", "--message", "by name"]);
    pods.create(&PostParams::default(), &by_name).await.unwrap();
    cluster.wait_for_pod("demo", "named", "Succeeded", WAIT).await.unwrap();
    let logs = pods.logs("named", &Default::default()).await.unwrap();
    assert!(logs.contains("by name"), "{logs}");

    // The API server, as in-cluster clients reach it: the `kubernetes` Service, verified
    // against the service-account CA.
    let apiserver =
        format!("{}:{}", weft_tests::topology::FABRIC_GATEWAY, weft_tests::apiserver::FABRIC_PORT);
    cluster.wait_for_service_rules(1, &apiserver, WAIT).await.unwrap();
    let api = run_once(
        "api",
        "node1",
        &[
            "https-get",
            "--to",
            "kubernetes.default.svc:443",
            "--server-name",
            "kubernetes.default.svc",
            "--ca",
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            "--path",
            "/version",
        ],
    );
    pods.create(&PostParams::default(), &api).await.unwrap();
    cluster.wait_for_pod("demo", "api", "Succeeded", WAIT).await.unwrap();
    let logs = pods.logs("api", &Default::default()).await.unwrap();
    assert!(logs.contains("\"gitVersion\": \"v1.37.2\""), "{logs}");

    let nodes = cluster.kubectl().unwrap().args(["get", "nodes", "-o", "name"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&nodes.stdout), "node/node0\nnode/node1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_installed_by_its_manifests_tunnels_an_enrolled_namespace_across_real_nodes() {
    let mut images = images::weft().unwrap();
    images.push(images::testpod().unwrap());
    let cluster = RealCluster::start(2, &images).await.unwrap();
    cluster.install_weft().await.unwrap();
    let client = cluster.client();
    let namespace = serde_json::json!({
        "metadata": {"name": "shop", "labels": {"weft.dev/dataplane-mode": "ambient"}},
    });
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &object(namespace)).await.unwrap();
    deploy_echo(&client, "shop").await;
    cluster.wait_for_ready("shop", "app=echo", 1, WAIT).await.unwrap();

    // A client that stays up; once its node's agent has captured it, the request runs in it.
    // (A pod's first connections, before its agent enrolls it, are not captured yet: a CNI
    // plugin that holds the pod's start until then is still to come.)
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let idle = object(serde_json::json!({
        "metadata": {"name": "client", "labels": {"app": "client"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "node1"},
            "containers": [{"name": "client", "image": "weft.local/testpod:1", "args": ["echo", "--port", "9000"]}],
        },
    }));
    pods.create(&PostParams::default(), &idle).await.unwrap();
    weft_tests::eventually("the client captured by its node's agent", WAIT, || async {
        let pod = pods.get("client").await.ok()?;
        weft_api::enrollment::captured(pod.metadata.annotations.as_ref()).then_some(())
    })
    .await
    .unwrap();

    let canary = weft_tests::canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();
    // Through the API server and the kubelet (exec), bounded: a stuck stream fails the test.
    let mut exec = cluster.kubectl().unwrap();
    exec.args([
        "exec",
        "-n",
        "shop",
        "client",
        "--",
        "weft-testpod",
        "send",
        "--to",
        "echo:80",
        "--message",
        &canary,
    ])
    .stdout(std::process::Stdio::piped());
    let (ok, stdout) = weft_tests::process::Process::start(exec).unwrap().finish(WAIT).unwrap();
    assert!(ok && stdout.contains(&canary), "{stdout}");

    monitor.settle(WAIT).unwrap();
    if monitor.canary_frames() > 0 {
        let weft = cluster.describe("weft-system", "app.kubernetes.io/part-of=weft").await;
        panic!("{} plaintext frames crossed between the nodes; Weft's pods:{weft}", monitor.canary_frames());
    }
    assert!(monitor.syns_to(weft_ebpf_common::port::HBONE) > 0, "no HBONE connection between the nodes");
}
