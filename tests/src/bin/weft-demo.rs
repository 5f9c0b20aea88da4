//! `weft-demo` (run by `cargo xtask demo`): brings up the embedded default — a real API server and
//! a two-node cluster of network namespaces with a client and an echo service — sends traffic
//! across nodes and reports what a user would check: the cluster's shape, the requests
//! succeeding, and whether the wire monitor saw plaintext between nodes. The mesh itself (control
//! plane, agents, ztunnels) joins this demo with the End-to-end issue; until then the monitor's
//! verdict is the plaintext baseline the mesh must bring to zero.
use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::Parser;
use weft_tests::{apps, canary, cluster::Cluster, kubelet::PodTemplate, wire::WireMonitor};

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
    println!();
    for (server, label) in [(&server_remote, "cross-node"), (&server_local, "same-node ")] {
        for ip in [std::net::IpAddr::V4(server.ipv4), server.ipv6.into()] {
            let to = SocketAddr::new(ip, ECHO_PORT);
            for n in 0..REQUESTS {
                apps::send(&client, to, &format!("request {n} {canary}"))
                    .with_context(|| format!("{label} request to {to}"))?;
            }
            println!("{label} client -> {:<7} {to:<28} {REQUESTS}/{REQUESTS} requests echoed", server.name);
        }
    }
    monitor.settle(Duration::from_secs(5))?;
    println!(
        "\nWire monitor on the fabric: {} frames, {} carrying the canary (plaintext between nodes).",
        monitor.frames(),
        monitor.canary_frames()
    );
    println!("The mesh is not deployed yet (issue End-to-end); enrolled traffic must bring that count to 0.");

    if args.keep {
        println!("\nKept running. Explore with:");
        println!("  kubectl --kubeconfig {} get nodes,pods -A -o wide", cluster.api().kubeconfig().display());
        println!("  ip netns list | grep {}", cluster.topology().name());
        println!("  ip netns exec {} ip addr", client.netns.name());
        println!("Press Ctrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    println!("\nTearing down.");
    Ok(())
}
