//! `weftctl` against a running mesh on the real API server: it enrolls a namespace, and its
//! status, workloads, certificates and per-pod checks say what the components say.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use serde_json::Value;
use weft_tests::{apps, cluster::Cluster, control::ControlPlane, kubelet::PodTemplate, mesh::Mesh};

const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);

/// Runs weftctl with every endpoint of the harness's mesh; (success, stdout).
fn weftctl(endpoints: &[String], args: &[&str]) -> (bool, String) {
    apps::weftctl(endpoints, args).unwrap()
}

fn json(endpoints: &[String], args: &[&str]) -> Value {
    let (ok, stdout) = weftctl(endpoints, &[args, &["-o", "json"]].concat());
    assert!(ok, "weftctl {args:?} failed: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_enrolls_and_reports_what_the_mesh_does() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let server =
        cluster.add_pod(1, &PodTemplate::new("shop", "server").service_account("payments")).await.unwrap();
    cluster
        .add_pod(
            0,
            &PodTemplate::new("shop", "loner")
                .service_account("loner")
                .label("weft.dev/dataplane-mode", "none"),
        )
        .await
        .unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let endpoints = mesh.weftctl_flags(&cluster, &plane).unwrap();

    // Enroll: the label is set; both running pods join.
    let (ok, table) = tokio::task::block_in_place(|| weftctl(&endpoints, &["enroll", "shop"]));
    assert!(
        ok && table.lines().nth(1).is_some_and(|row| row.starts_with("shop") && row.ends_with("true")),
        "{table}"
    );
    let labels = Api::<Namespace>::all(cluster.client()).get("shop").await.unwrap().metadata.labels.unwrap();
    assert_eq!(labels["weft.dev/dataplane-mode"], "ambient");
    tokio::task::block_in_place(|| {
        mesh.agent(0)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=client"), WAIT)
            .unwrap();
        mesh.agent(1)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=server"), WAIT)
            .unwrap();
        let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
        assert_eq!(apps::send(&client, to, "hello").unwrap(), "hello");
    });

    tokio::task::block_in_place(|| {
        let status = json(&endpoints, &["status"]);
        assert_eq!(status["control"]["ready"], true, "{status}");
        assert_eq!(status["control"]["connected_proxies"], 2, "{status}");
        for (index, node) in status["nodes"].as_array().unwrap().iter().enumerate() {
            assert_eq!(node["node"], format!("node{index}"), "{status}");
            assert_eq!(node["agent_ready"], true, "{status}");
            assert_eq!(node["enrolled"], 1, "{status}");
            assert_eq!(node["ztunnel_ready"], true, "{status}");
        }

        let workloads = json(&endpoints, &["workloads"]);
        let client_workload =
            workloads.as_array().unwrap().iter().find(|workload| workload["name"] == "client").unwrap();
        assert_eq!(client_workload["protocol"], "HBONE");
        assert_eq!(client_workload["node"], "node0");

        let (ok, certs) = weftctl(&endpoints, &["certs"]);
        assert!(ok, "{certs}");
        assert!(certs.starts_with("NODE"), "a table: {certs}");
        let cart =
            certs.lines().find(|line| line.contains("spiffe://cluster.local/ns/shop/sa/cart")).unwrap();
        assert!(cart.starts_with("node0"), "{certs}");

        // An open connection shows, with its identities and the bytes so far.
        let mut chat = apps::Chat::open(&client, SocketAddr::new(server.ipv4.into(), ECHO_PORT)).unwrap();
        assert_eq!(chat.say("twelve bytes").unwrap(), "twelve bytes");
        let connections = json(&endpoints, &["connections"]);
        let open = connections.as_array().unwrap().iter().find(|open| open["pod"] == "shop/client").unwrap();
        assert_eq!(open["node"], "node0");
        assert_eq!(open["destination"], "spiffe://cluster.local/ns/shop/sa/payments");
        assert_eq!(
            (open["sent"].as_u64(), open["received"].as_u64()),
            (Some(12), Some(12)),
            "twelve bytes each way: {open}"
        );
        drop(chat);

        let (ok, check) = weftctl(&endpoints, &["check", "shop/client"]);
        assert!(ok, "every check should pass for an enrolled pod:\n{check}");
        for step in ["labelled", "configured", "captured", "proxied", "certificate"] {
            assert!(
                check.lines().any(|line| line.starts_with(step) && line.contains("true")),
                "{step}:\n{check}"
            );
        }
        let (ok, check) = weftctl(&endpoints, &["check", "shop/loner"]);
        assert!(!ok, "an opted-out pod must fail the check:\n{check}");
        assert!(check.lines().any(|line| line.starts_with("labelled") && line.contains("false")), "{check}");
    });

    let unenrolled = tokio::task::block_in_place(|| json(&endpoints, &["unenroll", "shop"]));
    assert_eq!(unenrolled["enrolled"], false);
    let labels = Api::<Namespace>::all(cluster.client())
        .get("shop")
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default();
    assert!(!labels.contains_key("weft.dev/dataplane-mode"), "{labels:?}");

    // An unreachable endpoint is a clear error, not a hang or a panic.
    let (ok, _) = weftctl(&["--control".into(), "http://127.0.0.1:1".into()], &["workloads"]);
    assert!(!ok);
}
