//! `weft-demo` (run by `cargo xtask demo`): brings up the embedded default — a real API server and
//! a two-node cluster of network namespaces with a client, echo pods and an echo Service — sends
//! traffic before and after enrolling the namespace with `weftctl enroll` (the control plane's
//! CA and xDS; per node `weft-agent` with eBPF capture and `weft-ztunnel`), and reports what a
//! user would check: the cluster's shape, the requests succeeding (pod to pod, and pod to the
//! Service's virtual IP, which only the mesh serves here), `weftctl status / workloads /
//! services / certs`, and the wire monitor's verdict on plaintext between nodes. With `--real`,
//! the same story on real nodes with Weft installed by its manifests ([`real`]).
mod real;

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::Context;
use clap::Parser;
use weft_tests::{
    apps, canary,
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    mesh::{self, Member, Mesh},
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
    /// Real nodes (kubelet, containerd, kube-proxy, CoreDNS) with Weft installed by its
    /// manifests, instead of the embedded network-namespace cluster.
    #[arg(long)]
    real: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // The verdict said why.
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            // One sentence, each step that failed with its cause, not a backtrace.
            eprintln!("\ndemo failed: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the demo; whether no plaintext crossed between nodes once enrolled.
async fn run(args: Args) -> anyhow::Result<bool> {
    if args.real {
        return real::run(args.keep).await;
    }
    println!("Starting etcd and kube-apiserver, and building two nodes...");
    let mut cluster = Cluster::start(2).await?;
    let client = cluster.add_pod(0, &PodTemplate::new(NAMESPACE, "client").service_account("client")).await?;
    let echo = |name: &str| PodTemplate::new(NAMESPACE, name).service_account("echo").label("app", "echo");
    let server_remote = cluster.add_pod(1, &echo("echo-1")).await?;
    let server_local = cluster.add_pod(0, &echo("echo-0")).await?;
    let vip = create_echo_service(cluster.client()).await?;

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

    println!("\nStarting the mesh: weft-control (Kubernetes index, xDS, mesh CA); per node weft-agent");
    println!("(eBPF capture, pod handoff, watching the API server) and weft-ztunnel (config and");
    println!("certificates from weft-control)...");
    let mut plane = ControlPlane::start(&cluster).await?;
    let members = [Member::new(&client, NAMESPACE, "client"), Member::new(&server_remote, NAMESPACE, "echo")];
    let mut mesh = Mesh::start_managed(&cluster, &plane).await?;
    let endpoints = mesh.weftctl_flags(&cluster, &plane)?;
    let with_endpoints = || -> anyhow::Result<Command> {
        let mut command = Command::new(apps::binary("weftctl")?);
        command.args(&endpoints);
        Ok(command)
    };
    weftctl(with_endpoints()?, &["enroll", NAMESPACE])?;
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
    // The agents annotate what they captured; the proxies tunnel to a pod once they know.
    tokio::task::block_in_place(|| mesh.wait_until_tunnelled(Duration::from_secs(20)))?;
    println!("\nAfter enrollment (mTLS + HBONE between nodes):");
    let hbone_before = monitor.syns_to(weft_proxy::hbone::PORT);
    let after = exchange(&client, &[&server_remote, &server_local], &canary, &monitor)?;
    let tunnels = monitor.syns_to(weft_proxy::hbone::PORT) - hbone_before;
    println!(
        "  wire monitor: {after} frames carried the canary in plaintext; {tunnels} HBONE connection(s) to port 15008"
    );
    let log = mesh
        .ztunnel(0)
        .wait_for(|line| line.contains("outbound via HBONE closed"), Duration::from_secs(10))?;
    println!("  node0 weft-ztunnel: {}", message(&log));
    // The Service's virtual IP: no kube-proxy here, the client's node proxy picks an endpoint
    // of the EndpointSlice the cluster keeps, once it knows them.
    let service = format!("{NAMESPACE}/echo.{NAMESPACE}.svc.cluster.local");
    let node0 = cluster.topology().nodes()[0].clone();
    tokio::task::block_in_place(|| {
        mesh::wait_for_endpoints(&node0.netns, &service, 2, Duration::from_secs(20))
    })?;
    let to = SocketAddr::new(vip, 80);
    let start = monitor.canary_frames();
    for n in 0..REQUESTS {
        apps::send(&client, to, &format!("service request {n} {canary}"))
            .with_context(|| format!("request to {to}"))?;
    }
    monitor.settle(Duration::from_secs(5))?;
    let after = after + (monitor.canary_frames() - start);
    println!("  service    client -> echo    {to:<28} {REQUESTS}/{REQUESTS} requests echoed (Service VIP)");
    // In whatever order the node proxies asked for them.
    let mut identities: Vec<String> = members.iter().map(Member::identity).collect();
    while !identities.is_empty() {
        let signed = plane.process().wait_for(
            |line| {
                line.contains("certificate signed") && identities.iter().any(|id| line.contains(id.as_str()))
            },
            Duration::from_secs(10),
        )?;
        identities.retain(|id| !signed.contains(id.as_str()));
        println!("  weft-control: {}", message(&signed));
    }
    for command in ["status", "workloads", "services", "certs"] {
        weftctl(with_endpoints()?, &[command])?;
    }
    // Plaintext seen before enrollment proves the monitor sees the canary at all.
    let sealed = after == 0 && before > 0;
    println!(
        "\nVerdict: {}",
        if sealed { "no plaintext crossed between nodes once enrolled" } else { "PLAINTEXT LEAK" }
    );

    if args.keep {
        println!("\nKept running. Explore with:");
        println!("  kubectl --kubeconfig {} get nodes,pods -A -o wide", cluster.api().kubeconfig().display());
        println!("  ip netns list | grep {}", cluster.topology().name());
        println!("  ip netns exec {} ip addr", client.netns.name());
        println!("  target/debug/weftctl {} status", endpoints.join(" "));
        println!("Press Ctrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    drop(mesh);
    println!("\nTearing down.");
    Ok(sealed)
}

/// Prints `$ weftctl ARGS` and its output; `weftctl` is the command with how it reaches the
/// mesh (endpoint flags, a kubeconfig), left out of the echo.
fn weftctl(mut weftctl: Command, args: &[&str]) -> anyhow::Result<()> {
    println!("\n$ weftctl {}", args.join(" "));
    let output = weftctl.args(args).output()?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    anyhow::ensure!(output.status.success(), "weftctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// Creates Service `echo` (port 80 → the echo pods' 8080) and returns its virtual IP.
async fn create_echo_service(client: kube::Client) -> anyhow::Result<std::net::IpAddr> {
    use k8s_openapi::{
        api::core::v1::{Service, ServicePort, ServiceSpec},
        apimachinery::pkg::util::intstr::IntOrString,
    };
    let service = Service {
        metadata: kube::api::ObjectMeta { name: Some("echo".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), "echo".to_owned())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(IntOrString::Int(ECHO_PORT.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = kube::Api::<Service>::namespaced(client, NAMESPACE)
        .create(&kube::api::PostParams::default(), &service)
        .await?;
    let vip = created.spec.and_then(|spec| spec.cluster_ip).context("the Service got no ClusterIP")?;
    Ok(vip.parse()?)
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
