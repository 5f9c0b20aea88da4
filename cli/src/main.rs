//! `weftctl`: the bundled CLI; all logic lives in the library.
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weftctl::{
    endpoint::Endpoint,
    output::{Format, render, table},
    report::{Mesh, Probe},
};

/// Inspect and steer the Weft mesh.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// kubeconfig file; without it, in-cluster configuration or KUBECONFIG (if any).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The control plane's admin endpoint (`http://host:port`, `netns=PATH@http://…`, or
    /// `pod:NAMESPACE/NAME:PORT`); by default its pod's localhost port 15000, by port-forward.
    #[arg(long, global = true, env = "WEFT_CONTROL")]
    control: Option<Endpoint>,
    /// A node's agent admin endpoint, `NODE=ENDPOINT` (by default its pod's port 15031, by
    /// port-forward).
    #[arg(long = "agent", global = true, value_parser = node_endpoint)]
    agents: Vec<(String, Endpoint)>,
    /// A node's proxy admin endpoint, `NODE=ENDPOINT` (by default its pod's port 15000, by
    /// port-forward).
    #[arg(long = "ztunnel", global = true, value_parser = node_endpoint)]
    ztunnels: Vec<(String, Endpoint)>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The control plane and every node: readiness, config version, proxies, enrolled pods.
    Status,
    /// Workloads the control plane serves (pods, with identity, addresses and tunnel).
    Workloads,
    /// Services and their virtual IPs.
    Services,
    /// Certificates held by each node's proxy: identity, serial, expiry.
    Certs,
    /// Authorization policies and request authentications (action `JWT`): action, whom they apply
    /// to, and what proxies cannot enforce.
    Policies,
    /// Traffic policies (fault injection, rate limits, circuit breakers, load balancers): per
    /// target, applied or why not.
    Traffic,
    /// Waypoints in use: their Service, ready endpoints, and the Services and workloads behind
    /// them.
    Waypoints,
    /// HTTPRoutes, GRPCRoutes and TCPRoutes attached to Services: applied where, backends resolved, and
    /// what a waypoint cannot apply.
    Routes,
    /// Connections open now, per node: pod, identities, target, age, bytes so far.
    Connections,
    /// Why a pod is (or is not) in the mesh: label, configuration, capture, proxy, certificate.
    /// With `--service`: what becomes of a request to a Service instead — its waypoint, the L7
    /// policies' verdict, the route and backends — as a waypoint would decide it.
    Check {
        /// `namespace/name` (or `name` in `default`): the pod, or with `--service` the Service.
        name: String,
        /// `name` is a Service: check a request to it.
        #[arg(long)]
        service: bool,
        /// The request's port (a port of the Service; its first by default).
        #[arg(long, requires = "service")]
        port: Option<u16>,
        #[arg(long, default_value = "GET", requires = "service")]
        method: String,
        /// Path and query.
        #[arg(long, default_value = "/", requires = "service")]
        path: String,
        /// `name:value`; `Host` is the Service's hostname unless given.
        #[arg(long = "header", short = 'H', requires = "service")]
        headers: Vec<String>,
        /// The client pod (`namespace/name`) the L7 policies decide for, whose namespace's
        /// consumer routes it takes.
        #[arg(long, requires = "service")]
        from: Option<String>,
    },
    /// Enroll a namespace's pods (sets `weft.dev/dataplane-mode=ambient`; no restarts).
    Enroll { namespace: String },
    /// Take a namespace's pods out of the mesh (removes the label).
    Unenroll { namespace: String },
    /// Ask the CA to rotate its root now (after a key compromise, say): a new root joins every
    /// proxy's trust bundle, then signs, then the old one leaves, each step a leaf lifetime apart.
    RotateRoot,
}

fn node_endpoint(text: &str) -> anyhow::Result<(String, Endpoint)> {
    let (node, endpoint) = text.split_once('=').context("NODE=ENDPOINT")?;
    Ok((node.to_owned(), endpoint.parse()?))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

/// The Kubernetes client: from `--kubeconfig` (an error if that fails), else inferred (none if
/// there is nothing to infer from: endpoints given directly still work).
async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Option<kube::Client>> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => match kube::Config::infer().await {
            Ok(config) => config,
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(kube::Client::try_from(config)?))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut mesh =
        Mesh { client: client(args.kubeconfig.as_ref()).await?, control: args.control, nodes: Vec::new() };
    for (name, endpoint) in args.agents {
        let index = mesh.node_index(&name);
        mesh.nodes[index].agent = Some(endpoint);
    }
    for (name, endpoint) in args.ztunnels {
        let index = mesh.node_index(&name);
        mesh.nodes[index].ztunnel = Some(endpoint);
    }
    let only_api =
        matches!(args.command, Command::Enroll { .. } | Command::Unenroll { .. } | Command::RotateRoot);
    if mesh.client.is_some() && !only_api {
        // Best effort: explicit endpoints still work when the API has no pods to offer.
        if let Err(error) = mesh.discover().await {
            eprintln!("note: {error:#}");
        }
    }
    let format = args.output;
    let text = match &args.command {
        Command::Status => {
            let status = mesh.status().await?;
            match format {
                Format::Table => {
                    let control = table(
                        &[status["control"].clone()],
                        &["ready", "config_version", "workloads", "services", "connected_proxies"],
                    );
                    let nodes = table(
                        status["nodes"].as_array().map(Vec::as_slice).unwrap_or_default(),
                        &[
                            "node",
                            "agent_ready",
                            "enrolled",
                            "pending",
                            "ztunnel_ready",
                            "pods_served",
                            "certificates",
                        ],
                    );
                    format!("CONTROL PLANE\n{control}\nNODES\n{nodes}")
                }
                _ => render(&status, format, &[])?,
            }
        }
        Command::Workloads => render(
            &mesh.workloads().await?,
            format,
            &["namespace", "name", "service_account", "addresses", "node", "protocol", "services"],
        )?,
        Command::Services => {
            render(&mesh.services().await?, format, &["namespace", "name", "vips", "ports", "hostname"])?
        }
        Command::Certs => {
            render(&mesh.certs().await?, format, &["node", "identity", "serial", "expires_in"])?
        }
        Command::Policies => {
            render(&mesh.policies().await?, format, &["namespace", "name", "action", "applies_to", "notes"])?
        }
        Command::Traffic => {
            render(&mesh.traffic_policies().await?, format, &["kind", "namespace", "name", "applies_to"])?
        }
        Command::Waypoints => render(
            &mesh.waypoints().await?,
            format,
            &["waypoint", "address", "ready_endpoints", "state", "services", "workloads"],
        )?,
        Command::Routes => render(
            &mesh.routes().await?,
            format,
            &["kind", "namespace", "name", "parents", "backends", "notes"],
        )?,
        Command::Connections => render(
            &mesh.connections().await?,
            format,
            &["node", "pod", "source", "destination", "target", "age", "sent", "received"],
        )?,
        Command::Check { name: target, service, port, method, path, headers, from } => {
            let (namespace, name) = target.split_once('/').unwrap_or(("default", target));
            let findings = if *service {
                let probe = Probe {
                    port: *port,
                    method: method.clone(),
                    path: path.clone(),
                    headers: headers.clone(),
                    from: from.clone(),
                };
                mesh.check_request(namespace, name, &probe).await?
            } else {
                mesh.check(namespace, name).await?
            };
            let text = render(&findings, format, &["check", "ok", "detail"])?;
            let all_ok =
                findings.as_array().is_some_and(|all| all.iter().all(|finding| finding["ok"] == true));
            print!("{text}");
            if !all_ok {
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Enroll { namespace } => {
            render(&mesh.enroll(namespace, true).await?, format, &["namespace", "enrolled"])?
        }
        Command::Unenroll { namespace } => {
            render(&mesh.enroll(namespace, false).await?, format, &["namespace", "enrolled"])?
        }
        Command::RotateRoot => render(&mesh.rotate_root().await?, format, &["secret", "requested"])?,
    };
    print!("{text}");
    Ok(())
}
