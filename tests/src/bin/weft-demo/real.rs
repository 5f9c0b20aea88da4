//! `weft-demo --real` (run by `cargo xtask demo --real`): Weft as a user meets it on a real
//! cluster. Two real nodes (kubelet, containerd, kube-proxy, CoreDNS of the tested release) get
//! Weft from its own manifests (`kubectl apply -k`); an echo Deployment on node0 and a client on
//! node1 talk through the Service's name before and after `weftctl enroll`, every request run in
//! the client pod by `kubectl exec`; `weftctl` reports through the API server alone; the wire
//! monitor between the nodes gives the verdict.
use std::time::Duration;

use anyhow::Context;
use weft_tests::{
    apiserver::kube_bin,
    apps, canary, images,
    nodes::{RealCluster, workloads},
    wire::WireMonitor,
};

use super::weftctl;

const NAMESPACE: &str = "demo";
const REQUESTS: usize = 5;
const WAIT: Duration = Duration::from_secs(90);

/// Runs the real-node demo; whether no plaintext crossed between nodes once enrolled.
pub async fn run(keep: bool) -> anyhow::Result<bool> {
    println!("Assembling images and starting etcd, the control plane and two real nodes (containerd,");
    println!("kubelet, kube-proxy; then CoreDNS)...");
    let mut images = images::weft().context("assembling Weft's images")?;
    images.push(images::testpod().context("assembling the test image")?);
    let cluster = RealCluster::start(2, &images).await.context("starting the cluster")?;
    kubectl(&cluster, &["get", "nodes", "-o", "wide"])?;

    println!("\nInstalling Weft: kubectl apply -k manifests/ (images named by a kustomize overlay)...");
    cluster.install_weft().await.context("installing Weft")?;
    kubectl(&cluster, &["get", "pods", "-n", "weft-system", "-o", "wide"])?;

    let client = cluster.client();
    workloads::create_namespace(&client, NAMESPACE, serde_json::json!({})).await?;
    workloads::deploy_echo(&client, NAMESPACE, "node0").await?;
    workloads::start_idle_pod(&client, NAMESPACE, "client", "node1").await?;
    cluster.wait_for_ready(NAMESPACE, "app=echo", 1, WAIT).await?;
    cluster.wait_for_ready(NAMESPACE, "app=client", 1, WAIT).await?;
    // Until kube-proxy on the client's node has the echo pod behind the Service, it refuses.
    for (_, ip) in pods(&cluster, "app=echo").await? {
        cluster.wait_for_service_rules(1, &format!("{ip}:8080"), WAIT).await?;
    }
    kubectl(&cluster, &["get", "pods,services", "-n", NAMESPACE, "-o", "wide"])?;

    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary)?;
    println!("\nBefore enrollment (plain TCP, client on node1 -> Service echo:80 -> echo on node0):");
    let before = exchange(&cluster, &canary, &monitor)?;
    println!("  wire monitor: {before} frames between nodes carried the canary in plaintext");

    weftctl(cluster.weftctl()?, &["enroll", NAMESPACE])?;
    let echo = pods(&cluster, "app=echo").await?;
    let mut enrolled: Vec<&str> = echo.iter().map(|(name, _)| name.as_str()).collect();
    enrolled.push("client");
    cluster.wait_for_capture(NAMESPACE, &enrolled, WAIT).await?;
    println!("  captured by their nodes' agents: {}", enrolled.join(", "));

    println!("\nAfter enrollment (mTLS + HBONE between nodes):");
    let hbone_before = monitor.syns_to(weft_ebpf_common::port::HBONE);
    let after = exchange(&cluster, &canary, &monitor)?;
    let tunnels = monitor.syns_to(weft_ebpf_common::port::HBONE) - hbone_before;
    println!(
        "  wire monitor: {after} frames carried the canary in plaintext; {tunnels} HBONE connection(s) to port 15008"
    );
    for command in ["status", "workloads", "services", "certs"] {
        weftctl(cluster.weftctl()?, &[command])?;
    }
    // Plaintext seen before enrollment proves the monitor sees the canary at all.
    let sealed = after == 0 && before > 0 && tunnels > 0;
    println!(
        "\nVerdict: {}",
        if sealed { "no plaintext crossed between nodes once enrolled" } else { "PLAINTEXT LEAK" }
    );

    if keep {
        let kubeconfig = cluster.api().kubeconfig().display().to_string();
        println!("\nKept running. Explore with:");
        println!("  export KUBECONFIG={kubeconfig}");
        println!("  {} get pods -A -o wide", kube_bin()?.join("kubectl").display());
        println!("  {} status", apps::binary("weftctl")?.display());
        println!("  {} connections", apps::binary("weftctl")?.display());
        println!("  {} check {NAMESPACE}/client", apps::binary("weftctl")?.display());
        println!("Press Ctrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    println!("\nTearing down.");
    Ok(sealed)
}

/// Sends [`REQUESTS`] messages carrying `canary` from the client pod to `echo:80` and returns how
/// many canary frames the monitor saw crossing between the nodes meanwhile.
fn exchange(cluster: &RealCluster, canary: &str, monitor: &WireMonitor) -> anyhow::Result<u64> {
    let start = monitor.canary_frames();
    for n in 0..REQUESTS {
        let message = format!("request {n} {canary}");
        let echoed =
            tokio::task::block_in_place(|| cluster.reaches(NAMESPACE, "client", "echo:80", &message))?;
        anyhow::ensure!(echoed, "request {n} from the client pod to echo:80 was not echoed");
    }
    println!(
        "  client (node1) -> echo:80 (node0)  {REQUESTS}/{REQUESTS} requests echoed, by name and Service VIP"
    );
    monitor.settle(Duration::from_secs(5))?;
    Ok(monitor.canary_frames() - start)
}

/// The names and IPv4 addresses of the demo's pods matching `selector`.
async fn pods(cluster: &RealCluster, selector: &str) -> anyhow::Result<Vec<(String, String)>> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(cluster.client(), NAMESPACE);
    let listed = pods.list(&kube::api::ListParams::default().labels(selector)).await?;
    Ok(listed.items.into_iter().filter_map(|pod| Some((pod.metadata.name?, pod.status?.pod_ip?))).collect())
}

/// Prints `$ kubectl ARGS` and its output.
fn kubectl(cluster: &RealCluster, args: &[&str]) -> anyhow::Result<()> {
    println!("\n$ kubectl {}", args.join(" "));
    print!("{}", cluster.kubectl_ok(args)?);
    Ok(())
}
