//! `weft-demo` (run by `cargo xtask demo`): brings up the embedded default — a real API server and
//! a two-node cluster of network namespaces with a client and echo services — sends traffic
//! before and after enrolling the pods in the mesh (the control plane's CA; per node `weft-agent`
//! with eBPF capture and `weft-ztunnel`), and reports what a user would check: the cluster's
//! shape, the requests succeeding, the certificates issued, and the wire monitor's verdict on
//! plaintext between nodes. Until xDS and the Kubernetes-driven agent land, workloads and
//! enrollment come from files the demo writes.
use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::Parser;
use weft_tests::{
    apps, canary,
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    mesh::{Ca, Enrollment, Member, Mesh},
    topology::Pod,
    wire::WireMonitor,
};

const NAMESPACE: &str = "demo";
const ECHO_PORT: u16 = 8080;
const REQUESTS: usize = 5;

#[derive(Debug, Parser)]
#[command(about = "Run Weft's local two-node demo")]
struct Args {
    /// Keep everything running until Ctrl-C, and print how to explore it.
    #[arg(long)]
    keep: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("Starting etcd and kube-apiserver, and building two nodes...");
    let mut cluster = Cluster::start(2).await?;
    let client = cluster.add_pod(0, &PodTemplate::new(NAMESPACE, "client").service_account("client")).await?;
    let server_remote =
        cluster.add_pod(1, &PodTemplate::new(NAMESPACE, "echo-1").service_account("echo")).await?;
    let server_local =
        cluster.add_pod(0, &PodTemplate::new(NAMESPACE, "echo-0").service_account("echo")).await?;

    println!("\nAPI server {}  (kubeconfig {})", cluster.api().url(), cluster.api().kubeconfig().display());
    println!("\n{:<8} {:<16} {:<20}", "NODE", "IPv4", "IPv6");
    for node in cluster.topology().nodes() {
        println!("{:<8} {:<16} {:<20}", node.name, node.ipv4, node.ipv6);
    }
    println!("\n{:<10} {:<8} {:<14} {:<22} UID", "POD", "NODE", "IPv4", "IPv6");
    for pod in cluster.topology().pods() {
        println!("{:<10} node{:<4} {:<14} {:<22} {}", pod.name, pod.node, pod.ipv4, pod.ipv6, pod.uid);
    }

    let _echo_remote = apps::echo_server(&server_remote, ECHO_PORT)?;
    let _echo_local = apps::echo_server(&server_local, ECHO_PORT)?;
    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary)?;

    println!("\nBefore enrollment (plain TCP):");
    let before = exchange(&client, &[&server_remote, &server_local], &canary, &monitor)?;
    println!("  wire monitor: {before} frames between nodes carried the canary in plaintext");

    println!("\nStarting the mesh: weft-control (mesh CA); per node weft-agent (eBPF capture, pod");
    println!("handoff, watching the API server) and weft-ztunnel (certificates from weft-control)...");
    let mut plane = ControlPlane::start(&cluster).await?;
    let mut tokens = Vec::new();
    for node in cluster.topology().nodes() {
        tokens.push(plane.proxy_token(&cluster, node).await?);
    }
    let members = [
        Member::new(&client, NAMESPACE, "client"),
        Member::new(&server_remote, NAMESPACE, "echo"),
        Member::new(&server_local, NAMESPACE, "echo"),
    ];
    let ca = Ca::Control { plane: &plane, tokens };
    let enrollment = Enrollment::Kubernetes(cluster.api().kubeconfig().to_owned());
    let mut mesh = Mesh::start_with(cluster.topology(), &members, &ca, &enrollment)?;
    println!("\n$ kubectl label namespace {NAMESPACE} weft.dev/dataplane-mode=ambient");
    let label = serde_json::json!({ "metadata": { "labels": { "weft.dev/dataplane-mode": "ambient" } } });
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client())
        .patch(NAMESPACE, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(label))
        .await?;
    for (node, mut names) in [(0, vec!["client", "echo-0"]), (1, vec!["echo-1"])] {
        // In whatever order the agent enrolls them.
        while !names.is_empty() {
            let line = mesh.agent(node).wait_for(
                |line| {
                    line.contains("enrolled")
                        && names.iter().any(|name| line.contains(&format!("name={name} ")))
                },
                Duration::from_secs(20),
            )?;
            names.retain(|name| !line.contains(&format!("name={name} ")));
            println!("  node{node} weft-agent: {}", message(&line));
        }
    }
    println!("\nAfter enrollment (mTLS + HBONE between nodes):");
    let hbone_before = monitor.syns_to(weft_ztunnel::hbone::PORT);
    let after = exchange(&client, &[&server_remote, &server_local], &canary, &monitor)?;
    let tunnels = monitor.syns_to(weft_ztunnel::hbone::PORT) - hbone_before;
    println!(
        "  wire monitor: {after} frames carried the canary in plaintext; {tunnels} HBONE connection(s) to port 15008"
    );
    let log = mesh
        .ztunnel(0)
        .wait_for(|line| line.contains("outbound via HBONE closed"), Duration::from_secs(10))?;
    println!("  node0 weft-ztunnel: {}", message(&log));
    for member in &members[..2] {
        let identity = member.identity();
        let signed = plane.process().wait_for(
            |line| line.contains("certificate signed") && line.contains(&identity),
            Duration::from_secs(10),
        )?;
        println!("  weft-control: {}", message(&signed));
    }
    println!(
        "\nVerdict: {}",
        if after == 0 && before > 0 {
            "no plaintext crossed between nodes once enrolled"
        } else {
            "PLAINTEXT LEAK"
        }
    );

    if args.keep {
        println!("\nKept running. Explore with:");
        println!("  kubectl --kubeconfig {} get nodes,pods -A -o wide", cluster.api().kubeconfig().display());
        println!("  ip netns list | grep {}", cluster.topology().name());
        println!("  ip netns exec {} ip addr", client.netns.name());
        println!("Press Ctrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    drop(mesh);
    println!("\nTearing down.");
    Ok(())
}

/// Sends requests from `client` to every server over IPv4 and IPv6 and returns how many
/// canary frames the monitor saw crossing the fabric meanwhile.
fn exchange(client: &Pod, servers: &[&Pod], canary: &str, monitor: &WireMonitor) -> anyhow::Result<u64> {
    let start = monitor.canary_frames();
    for server in servers {
        let label = if server.node == client.node { "same-node " } else { "cross-node" };
        for ip in [std::net::IpAddr::V4(server.ipv4), server.ipv6.into()] {
            let to = SocketAddr::new(ip, ECHO_PORT);
            for n in 0..REQUESTS {
                apps::send(client, to, &format!("request {n} {canary}"))
                    .with_context(|| format!("{label} request to {to}"))?;
            }
            println!("  {label} client -> {:<7} {to:<28} {REQUESTS}/{REQUESTS} requests echoed", server.name);
        }
    }
    monitor.settle(Duration::from_secs(5))?;
    Ok(monitor.canary_frames() - start)
}

/// A log line without its timestamp, level and target.
fn message(line: &str) -> &str {
    let after_level = line.split_once("INFO ").map_or(line, |(_, rest)| rest);
    after_level.split_once(": ").map_or(after_level, |(_, rest)| rest).trim()
}
