//! `weft-agent`: the node agent binary; all logic lives in the library.
use std::{net::IpAddr, path::PathBuf, str::FromStr};

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_agent::{
    cgroups,
    datapath::{self, Datapath, PodAddrs},
    handoff,
};

/// Weft node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// bpffs directory for this node's pinned programs, links and maps.
    #[arg(long, global = true, env = "WEFT_BPFFS_ROOT", default_value = weft_ebpf_common::pin::DEFAULT_ROOT)]
    bpffs_root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start")]
enum Command {
    /// Install (or adopt) the datapath, enroll the given pods, print `ready`, and run until
    /// SIGTERM or SIGINT. Exiting leaves capture pinned and working.
    Run {
        /// cgroup v2 directory holding this node's pods and proxy. Default: the kubelet's, found
        /// in the cgroup v2 hierarchy (`kubepods.slice`, `kubepods`, or kind's
        /// `kubelet.slice/kubelet-kubepods.slice`).
        #[arg(long, env = "WEFT_CGROUP_ROOT")]
        cgroup: Option<PathBuf>,
        /// cgroup v2 directory holding the node's own processes, the kubelet among them: the
        /// connections they open from `--node-netns` to enrolled pods (probes) reach the app
        /// without the proxy. Default: the root of the cgroup v2 hierarchy `--cgroup` is in.
        #[arg(long, env = "WEFT_NODE_CGROUP")]
        node_cgroup: Option<PathBuf>,
        /// The node's own network namespace. Default: the agent's.
        #[arg(long, env = "WEFT_NODE_NETNS", default_value = "/proc/self/ns/net")]
        node_netns: PathBuf,
        /// Capacity of the enrollment map when it is created.
        #[arg(long, default_value_t = weft_ebpf_common::MAX_ENROLLED)]
        max_pods: u32,
        /// A pod to enroll directly, without handing it to ztunnel, as `NETNS_PATH=IP[,IP]`
        /// (for capture on its own).
        #[arg(long = "enroll")]
        enroll: Vec<StaticPod>,
        /// Have the eBPF programs log their decisions (aya-log, at debug level).
        #[arg(long, env = "WEFT_EBPF_DEBUG")]
        ebpf_debug: bool,
        /// cgroup v2 directory of a node proxy that does not connect to the handoff socket (a
        /// ztunnel that connects is trusted by its own cgroup, learned from the connection):
        /// its marked sockets escape capture, nobody else's do. Until one of the two names a
        /// cgroup, the proxy mark alone is trusted.
        #[arg(long, env = "WEFT_PROXY_CGROUP")]
        proxy_cgroup: Option<PathBuf>,
        /// Pods to hand to ztunnel and then enroll, as JSON
        /// (`{"pods": [{"uid", "name", "namespace", "service_account", "netns", "ips"}]}`),
        /// until the Kubernetes watch arrives. Needs `--zds-socket`.
        #[arg(long, requires = "zds_socket")]
        pods: Option<PathBuf>,
        /// The pod-handoff socket ztunnel connects to.
        #[arg(long, env = "WEFT_ZDS_SOCKET")]
        zds_socket: Option<PathBuf>,
        /// This node's name: enroll its pods as the Kubernetes API says (namespace or pod label
        /// `weft.dev/dataplane-mode=ambient`). Needs `--zds-socket`.
        #[arg(long, env = "WEFT_NODE_NAME", requires = "zds_socket", conflicts_with = "pods")]
        node: Option<String>,
        /// kubeconfig file; without it, in-cluster configuration (or KUBECONFIG).
        #[arg(long, env = "WEFT_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// `/metrics`, `/healthz/ready` and `/config_dump` (with `--node`).
        #[arg(long, env = "WEFT_MONITORING_LISTEN", default_value = "0.0.0.0:15030")]
        monitoring_listen: std::net::SocketAddr,
        /// The host's /proc, where pods' processes (and so their network namespaces) are found.
        #[arg(long, env = "WEFT_PROC_ROOT", default_value = "/proc")]
        proc_root: PathBuf,
    },
    /// Detach and remove everything pinned under the bpffs root.
    Uninstall,
}

/// `NETNS_PATH=IP[,IP]`.
#[derive(Debug, Clone)]
struct StaticPod {
    netns: PathBuf,
    addrs: PodAddrs,
}

impl FromStr for StaticPod {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (netns, ips) = text.split_once('=').context("expected NETNS_PATH=IP[,IP]")?;
        let mut addrs = PodAddrs::default();
        for ip in ips.split(',') {
            match ip.parse::<IpAddr>().with_context(|| format!("bad pod IP {ip:?}"))? {
                IpAddr::V4(v4) => addrs.ipv4 = Some(v4),
                IpAddr::V6(v6) => addrs.ipv6 = Some(v6),
            }
        }
        Ok(Self { netns: netns.into(), addrs })
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    match args.command {
        Command::Run {
            cgroup,
            node_cgroup,
            node_netns,
            max_pods,
            enroll,
            ebpf_debug,
            proxy_cgroup,
            pods,
            zds_socket,
            node,
            kubeconfig,
            proc_root,
            monitoring_listen,
        } => {
            datapath::check_kernel(
                &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
            )?;
            let mounts = cgroups::cgroup2_mounts(&cgroups::mountinfo());
            let cgroup = match cgroup {
                Some(cgroup) => cgroup,
                None => {
                    cgroups::find_pods(&mounts).ok_or_else(|| anyhow::anyhow!(cgroups::not_found(&mounts)))?
                }
            };
            let node_cgroup =
                node_cgroup.or_else(|| cgroups::root_of(&mounts, &cgroup)).unwrap_or_else(|| cgroup.clone());
            let config = datapath::Config {
                node_cgroup,
                cgroup,
                node_netns,
                bpffs_root: args.bpffs_root,
                max_enrolled: max_pods,
            };
            let source = match (zds_socket, node, pods) {
                (Some(zds_socket), Some(node), _) => Source::Kubernetes {
                    kubeconfig,
                    node: weft_agent::node::Config {
                        node,
                        proc_root,
                        zds_socket,
                        monitoring: monitoring_listen,
                    },
                },
                (Some(socket), None, file) => {
                    let pods = file.map(|file| read_pods(&file)).transpose()?.unwrap_or_default();
                    Source::Static { socket, pods, proc_root }
                }
                (None, _, _) => Source::None,
            };
            let options = RunOptions { enroll, source, ebpf_debug, proxy_cgroup };
            run(&config, options)
        }
        Command::Uninstall => Ok(datapath::uninstall(&args.bpffs_root)?),
    }
}

/// A pod in the `--pods` file.
#[derive(Debug, serde::Deserialize)]
struct PodSpec {
    uid: String,
    name: String,
    namespace: String,
    service_account: String,
    netns: PathBuf,
    ips: Vec<IpAddr>,
}

#[derive(Debug, serde::Deserialize)]
struct PodsFile {
    pods: Vec<PodSpec>,
}

fn read_pods(path: &std::path::Path) -> anyhow::Result<Vec<PodSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: PodsFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(file.pods)
}

fn addrs_of(ips: &[IpAddr]) -> PodAddrs {
    let mut addrs = PodAddrs::default();
    for ip in ips {
        match ip {
            IpAddr::V4(v4) => addrs.ipv4 = Some(*v4),
            IpAddr::V6(v6) => addrs.ipv6 = Some(*v6),
        }
    }
    addrs
}

/// Where the pods to enroll come from.
#[derive(Debug)]
enum Source {
    /// Only `--enroll` (capture without ztunnel).
    None,
    /// A fixed list handed to ztunnel on this socket.
    Static { socket: PathBuf, pods: Vec<PodSpec>, proc_root: PathBuf },
    /// The Kubernetes API.
    Kubernetes { kubeconfig: Option<PathBuf>, node: weft_agent::node::Config },
}

#[derive(Debug)]
struct RunOptions {
    enroll: Vec<StaticPod>,
    source: Source,
    ebpf_debug: bool,
    proxy_cgroup: Option<PathBuf>,
}

fn run(config: &datapath::Config, options: RunOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _entered = runtime.enter();
    let mut datapath = Datapath::install(config)?;
    if let Some(cgroup) = &options.proxy_cgroup {
        datapath.trust_proxy_cgroup(cgroup)?;
    }
    let _logger = if options.ebpf_debug { Some(datapath.start_debug_log()?) } else { None };
    for pod in &options.enroll {
        let netns =
            std::fs::File::open(&pod.netns).with_context(|| format!("opening {}", pod.netns.display()))?;
        let cookie = datapath.enroll(&netns, pod.addrs)?;
        tracing::info!(netns = %pod.netns.display(), cookie, addrs = ?pod.addrs, "enrolled");
    }
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let signal = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        match options.source {
            Source::None => {
                println!("ready");
                signal.await;
            }
            Source::Static { socket, pods, proc_root } => {
                tokio::select! {
                    served = hand_off(&socket, &proc_root, &pods, &mut datapath) => served?,
                    () = signal => {}
                }
            }
            Source::Kubernetes { kubeconfig, node } => {
                let config = match &kubeconfig {
                    Some(path) => {
                        let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
                        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
                    }
                    None => kube::Config::infer().await?,
                };
                let client = kube::Client::try_from(config)?;
                weft_agent::node::run(client, node, &mut datapath, signal).await?;
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("exiting; capture stays pinned");
    Ok(())
}

/// Serves the handoff socket: each time a ztunnel connects, hands it every pod (each enrolled
/// in capture only once ztunnel acked it: listeners first, redirection second), then the
/// snapshot marker. Prints `ready` after the first complete snapshot.
async fn hand_off(
    socket: &std::path::Path,
    proc_root: &std::path::Path,
    pods: &[PodSpec],
    datapath: &mut Datapath,
) -> anyhow::Result<()> {
    let server = handoff::Server::bind(socket, proc_root)
        .with_context(|| format!("listening on {}", socket.display()))?;
    let mut ready = false;
    loop {
        let session = server.accept().await?;
        datapath.trust_proxy_cgroup(session.proxy_cgroup())?;
        tracing::info!("ztunnel connected");
        for spec in pods {
            let netns = std::fs::File::open(&spec.netns)
                .with_context(|| format!("opening {}", spec.netns.display()))?;
            weft_agent::return_path::install(&netns, addrs_of(&spec.ips), proc_root)
                .with_context(|| format!("return path in {}", spec.netns.display()))?;
            let pod = handoff::Pod {
                uid: spec.uid.clone(),
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                service_account: spec.service_account.clone(),
                netns,
            };
            match session.add(&pod).await {
                Ok(()) => {
                    let cookie = datapath.enroll(&pod.netns, addrs_of(&spec.ips))?;
                    tracing::info!(pod = %spec.uid, cookie, "handed over and enrolled");
                }
                Err(error) => tracing::warn!(pod = %spec.uid, %error, "handoff failed; pod not enrolled"),
            }
        }
        session.snapshot_sent().await?;
        if !ready {
            println!("ready");
            ready = true;
        }
        session.closed().await;
        tracing::info!("ztunnel disconnected; capture stays on (fail closed) until it returns");
    }
}
