//! Real nodes: kubelets, containerd and kube-proxy of the tested release run pods as real
//! containers on two nodes, scheduled by the real scheduler; Services work through kube-proxy,
//! names through CoreDNS, probes through the kubelet, logs through the API server's kubelet
//! client.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use weft_tests::{
    apps, images,
    nodes::{
        RealCluster,
        workloads::{self, TESTPOD_IMAGE, deploy_echo, object},
    },
    wire::WireMonitor,
};

const WAIT: Duration = Duration::from_secs(60);

/// A pod on `node` that runs `weft-testpod ARGS` once.
fn run_once(name: &str, node: &str, args: &[&str]) -> Pod {
    object(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "containers": [{"name": "run", "image": TESTPOD_IMAGE, "args": args}],
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_containers_on_real_nodes_and_reach_a_service_and_the_api_server() {
    let cluster = RealCluster::start(2, &[images::testpod().unwrap()]).await.unwrap();
    let client = cluster.client();
    workloads::create_namespace(&client, "demo", serde_json::json!({})).await.unwrap();
    let vip = deploy_echo(&client, "demo", "node0").await.unwrap();

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

/// Whether a send of `message` from `shop/client` to the Service `echo` comes back.
fn client_reaches_echo(cluster: &RealCluster, message: &str) -> bool {
    cluster.reaches("shop", "client", "echo:80", message).unwrap()
}

/// `weftctl ARGS -o json` as a user runs it against the cluster: its parsed output, or its
/// exit status and error.
fn weftctl_json(cluster: &RealCluster, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = cluster.weftctl().unwrap().args(args).args(["-o", "json"]).output().unwrap();
    if !out.status.success() {
        return Err(format!("weftctl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|error| format!("weftctl {args:?}: {error}"))
}

/// Pod `shop/client`: whether its agent reports it captured, and its containers' restarts.
async fn client_state(client: &kube::Client) -> (bool, i32) {
    let pod = Api::<Pod>::namespaced(client.clone(), "shop").get("client").await.unwrap();
    let captured = weft_api::enrollment::Labels::Weft.captured(pod.metadata.annotations.as_ref());
    let statuses = pod.status.and_then(|status| status.container_statuses).unwrap_or_default();
    let restarts = statuses.iter().map(|status| status.restart_count).sum();
    (captured, restarts)
}

/// Restarts DaemonSet `name` in `weft-system` (`kubectl rollout restart`, a rolling update).
fn roll(cluster: &RealCluster, name: &str) {
    cluster.kubectl_ok(&["rollout", "restart", "-n", "weft-system", &format!("daemonset/{name}")]).unwrap();
}

/// Whether one of Weft's node proxies is shutting down.
fn draining(cluster: &RealCluster) -> bool {
    let selector = "app.kubernetes.io/name=weft-ztunnel";
    let listed =
        cluster.kubectl_ok(&["get", "pods", "-n", "weft-system", "-l", selector, "-o", "json"]).unwrap();
    listed.contains("deletionTimestamp")
}

/// Waits until DaemonSet `name`'s rolling update has finished on every node.
fn rolled(cluster: &RealCluster, name: &str) {
    let daemonset = format!("daemonset/{name}");
    cluster.kubectl_ok(&["rollout", "status", "-n", "weft-system", &daemonset, "--timeout", "150s"]).unwrap();
}

/// The user's whole path on real nodes: Weft installed by its manifests; a namespace enrolled
/// and tunnelled between the nodes; `weftctl` through the API server; a policy enforced and
/// lifted; both DaemonSets updated under an open connection without a pod leaving the mesh; a
/// waypoint deployed for a Gateway and crossed; Weft removed, and the pods back on plain
/// networking without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_installed_by_its_manifests_meshes_real_nodes_through_policy_updates_and_removal() {
    let mut images = images::weft().unwrap();
    images.push(images::testpod().unwrap());
    let cluster = RealCluster::start(2, &images).await.unwrap();
    // The Gateway API first, as a user installs it: the control plane looks for it at start.
    weft_tests::control::install_gateway_api_crds(cluster.client()).await.unwrap();
    cluster.install_weft().await.unwrap();
    let client = cluster.client();
    workloads::create_namespace(&client, "shop", serde_json::json!({"weft.dev/dataplane-mode": "ambient"}))
        .await
        .unwrap();
    deploy_echo(&client, "shop", "node0").await.unwrap();
    cluster.wait_for_ready("shop", "app=echo", 1, WAIT).await.unwrap();

    // A client that stays up; once its node's agent has captured it, requests run in it.
    // (A pod's first connections, before its agent enrolls it, are not captured yet: a CNI
    // plugin that holds the pod's start until then is still to come.)
    workloads::start_idle_pod(&client, "shop", "client", "node1").await.unwrap();
    cluster.wait_for_capture("shop", &["client"], WAIT).await.unwrap();

    // Tunnelled: through the API server and kubelet (exec), CoreDNS, the Service VIP, Weft's
    // capture and HBONE between the nodes; no plaintext crosses.
    let canary = weft_tests::canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();
    assert!(client_reaches_echo(&cluster, &canary));
    monitor.settle(WAIT).unwrap();
    if monitor.canary_frames() > 0 {
        let weft = cluster.describe("weft-system", "app.kubernetes.io/part-of=weft").await;
        panic!("{} plaintext frames crossed between the nodes; Weft's pods:{weft}", monitor.canary_frames());
    }
    assert!(monitor.syns_to(weft_ebpf_common::port::HBONE) > 0, "no HBONE connection between the nodes");

    // What the control plane's CA does to keep itself current (re-issue, rotate, publish) is
    // allowed by the manifests' RBAC, not only by a harness's admin credentials.
    let control = "system:serviceaccount:weft-system:weft-control";
    for (verb, object) in [
        ("get", "secret/weft-ca"),
        ("update", "secret/weft-ca"),
        ("get", "configmap/weft-ca-root-cert"),
        ("patch", "configmap/weft-ca-root-cert"),
    ] {
        let allowed = cluster
            .kubectl()
            .unwrap()
            .args(["auth", "can-i", verb, object, "-n", "weft-system", "--as", control])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&allowed.stdout).trim(),
            "yes",
            "weft-control may not {verb} {object}"
        );
    }

    // weftctl from outside, with only a kubeconfig: the control plane's, agents' and proxies'
    // localhost-only admin ports reached by port-forward through the API server.
    tokio::task::block_in_place(|| {
        let status = weftctl_json(&cluster, &["status"]).unwrap();
        assert_eq!(status["control"]["ready"], true, "{status}");
        let nodes = status["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2, "{status}");
        for node in nodes {
            assert_eq!(
                (&node["agent_ready"], &node["ztunnel_ready"]),
                (&true.into(), &true.into()),
                "{status}"
            );
        }
        let certs = weftctl_json(&cluster, &["certs"]).unwrap();
        let own = "spiffe://cluster.local/ns/shop/sa/default";
        let holders: Vec<&serde_json::Value> = certs
            .as_array()
            .unwrap()
            .iter()
            .filter(|cert| cert["identity"] == own)
            .map(|cert| &cert["node"])
            .collect();
        assert!(holders.contains(&&"node0".into()) && holders.contains(&&"node1".into()), "{certs}");
        let check = weftctl_json(&cluster, &["check", "shop/client"]).unwrap();
        assert!(check.as_array().unwrap().iter().all(|finding| finding["ok"] == true), "{check}");
    });

    // A DENY for the namespace's own callers refuses the client; lifted, it passes again.
    let gvk = kube::api::GroupVersionKind::gvk("security.weft.dev", "v1", "AuthorizationPolicy");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies");
    let policies: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "shop", &resource);
    let deny = serde_json::json!({
        "apiVersion": "security.weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-shop", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "echo"}},
            "action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}],
        },
    });
    policies.create(&PostParams::default(), &object(deny).unwrap()).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the client refused by the DENY", WAIT, || {
            !client_reaches_echo(&cluster, "denied?")
        })
        .unwrap();
        // Refused by that policy, at the destination's proxy, not by some other failure.
        let selector = "app.kubernetes.io/name=weft-ztunnel";
        let logs = cluster.kubectl_ok(&["logs", "-n", "weft-system", "-l", selector, "--tail=-1"]).unwrap();
        assert!(logs.contains("denied by DENY policy shop/deny-shop"), "{logs}");
        let listed = weftctl_json(&cluster, &["policies"]).unwrap();
        assert!(listed.as_array().unwrap().iter().any(|policy| policy["name"] == "deny-shop"), "{listed}");
    });
    policies.delete("deny-shop", &Default::default()).await.unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the client let through again", WAIT, || client_reaches_echo(&cluster, "allowed"))
            .unwrap();
    });

    // Rolling updates under an open connection: the agents' leaves capture in place and the
    // connection untouched; each old node proxy drains it while its successor takes new ones.
    tokio::task::block_in_place(|| {
        let chat = cluster.testpod_exec("shop", "client", &["chat", "--to", "echo:80"]).unwrap();
        let mut chat = apps::Chat::run(chat).unwrap();
        assert_eq!(chat.say("before").unwrap(), "before");
        let connections = weftctl_json(&cluster, &["connections"]).unwrap();
        assert!(
            connections.as_array().unwrap().iter().any(|open| open["node"] == "node1"),
            "the open connection is not listed: {connections}"
        );

        roll(&cluster, "weft-agent");
        rolled(&cluster, "weft-agent");
        assert_eq!(chat.say("after the agents' update").unwrap(), "after the agents' update");

        roll(&cluster, "weft-ztunnel");
        // New connections keep working throughout: each old node proxy hands its pods over to
        // its successor, then drains what it still carries (the open connection among them).
        let mut status = cluster.kubectl().unwrap();
        status
            .args(["rollout", "status", "-n", "weft-system", "daemonset/weft-ztunnel", "--timeout", "150s"])
            .stdout(std::process::Stdio::piped());
        let mut rollout = weft_tests::process::Process::start(status).unwrap();
        let (mut failed, mut sent, mut chatted) = (Vec::new(), 0, false);
        while !rollout.exited() {
            if !client_reaches_echo(&cluster, &format!("during the proxies' update {sent}")) {
                failed.push(sent);
            }
            sent += 1;
            if !chatted && draining(&cluster) {
                assert_eq!(chat.say("while draining").unwrap(), "while draining");
                chatted = true;
            }
        }
        let (rolled, status) = rollout.finish(WAIT).unwrap();
        assert!(rolled, "{status}");
        assert!(chatted, "no old node proxy was seen draining");
        assert!(
            failed.is_empty(),
            "{} of {sent} new connections failed during the update: {failed:?}",
            failed.len()
        );
        assert!(client_reaches_echo(&cluster, &canary), "a new connection after the update");
    });
    assert_eq!(client_state(&client).await, (true, 0), "the client left the mesh or restarted");
    monitor.settle(WAIT).unwrap();
    assert_eq!(monitor.canary_frames(), 0, "plaintext crossed during the updates");

    // A waypoint, as a user gets one: a Gateway of class weft-waypoint, deployed by the control
    // plane with the image the manifests' template names, and Service echo opted in. The
    // client's connections then cross it — still encrypted between the nodes.
    weft_tests::waypoint::create_gateway(client.clone(), "shop", "waypoint").await.unwrap();
    let waypoint_pods = "gateway.networking.k8s.io/gateway-name=waypoint";
    cluster.wait_for_ready("shop", waypoint_pods, 1, WAIT).await.unwrap();
    cluster
        .kubectl_ok(&["label", "service", "echo", "-n", "shop", "weft.dev/use-waypoint=waypoint"])
        .unwrap();
    tokio::task::block_in_place(|| {
        let relayed = weft_tests::until("the client's connections to cross the waypoint", WAIT, || {
            client_reaches_echo(&cluster, &canary)
                && cluster.kubectl_ok(&["logs", "-n", "shop", "-l", waypoint_pods, "--tail=-1"]).is_ok_and(
                    |logs| {
                        logs.contains("spiffe://cluster.local/ns/shop/sa/default")
                            && logs.contains("relayed to")
                    },
                )
        });
        if relayed.is_err() {
            let logs = cluster.kubectl_ok(&["logs", "-n", "shop", "-l", waypoint_pods, "--tail=50"]);
            panic!("no connection crossed the waypoint: {logs:?}");
        }
        let waypoints = weftctl_json(&cluster, &["waypoints"]).unwrap();
        let [waypoint] = waypoints.as_array().unwrap().as_slice() else {
            panic!("one waypoint: {waypoints}")
        };
        assert_eq!((&waypoint["waypoint"], &waypoint["state"]), (&"shop/waypoint".into(), &"ready".into()));
    });
    monitor.settle(WAIT).unwrap();
    assert_eq!(monitor.canary_frames(), 0, "plaintext crossed on the waypoint's path");

    // Removed: the same pods, not restarted, talk in plaintext again.
    tokio::task::block_in_place(|| cluster.uninstall_weft()).unwrap();
    tokio::task::block_in_place(|| {
        weft_tests::until("the client reaching echo without Weft", WAIT, || {
            client_reaches_echo(&cluster, &canary)
        })
        .unwrap();
    });
    monitor.settle(WAIT).unwrap();
    assert!(monitor.canary_frames() > 0, "no plaintext after removal: is the traffic still captured?");
    let (_, restarts) = client_state(&client).await;
    assert_eq!(restarts, 0);
}
