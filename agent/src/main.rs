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
    /// The node agent: install (or adopt) the datapath, enroll this node's pods as the
    /// Kubernetes API says (namespace or pod label `weft.dev/dataplane-mode=ambient`), hand each
    /// to the ztunnel on `--zds-socket`, and run until SIGTERM or SIGINT. Exiting leaves capture
    /// pinned and working.
    Run {
        #[command(flatten)]
        datapath: DatapathArgs,
        /// This node's name.
        #[arg(long, env = "WEFT_NODE_NAME")]
        node: String,
        /// The pod-handoff socket ztunnel connects to.
        #[arg(long, env = "WEFT_ZDS_SOCKET")]
        zds_socket: PathBuf,
        /// kubeconfig file; without it, in-cluster configuration (or KUBECONFIG).
        #[arg(long, env = "WEFT_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// `/metrics` and `/healthz/ready`.
        #[arg(long, env = "WEFT_MONITORING_LISTEN", default_value = "0.0.0.0:15030")]
        monitoring_listen: std::net::SocketAddr,
        /// `/config_dump` (and the others): node-local, as it lists the node's pods; `weftctl`
        /// reaches it by port-forward through the API server.
        #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "127.0.0.1:15031")]
        admin_listen: std::net::SocketAddr,
        /// The host's /proc, where pods' processes (and so their network namespaces) are found.
        #[arg(long, env = "WEFT_PROC_ROOT", default_value = "/proc")]
        proc_root: PathBuf,
        /// The agent's own pod (`namespace/name`, from the downward API): at shutdown, if its
        /// namespace or DaemonSet is being deleted, Weft is being removed and every pod returns
        /// to plain networking; otherwise (a restart, a rolling update) capture stays.
        #[arg(long, env = "WEFT_POD")]
        pod: Option<String>,
        /// Whose label enrolls pods and whose annotation marks them captured: `weft`
        /// (`weft.dev/dataplane-mode`, `weft.dev/redirection`) or `istio` (Istio ambient's
        /// `istio.io/dataplane-mode` and `ambient.istio.io/redirection`, to run under istiod).
        #[arg(long, env = "WEFT_LABELS", default_value = "weft")]
        labels: weft_api::enrollment::Labels,
    },
    /// Without Kubernetes, for tests and development: the datapath with pods named here, and
    /// `ready` printed once they are enrolled. Not for clusters: nothing here follows the API.
    Static {
        #[command(flatten)]
        datapath: DatapathArgs,
        /// A pod to enroll in capture alone, without handing it to ztunnel, as
        /// `NETNS_PATH=IP[,IP]`.
        #[arg(long = "enroll")]
        enroll: Vec<StaticPod>,
        /// Pods to hand to the ztunnel on `--zds-socket` and then enroll, as JSON
        /// (`{"pods": [{"uid", "name", "namespace", "service_account", "netns", "ips"}]}`).
        #[arg(long, requires = "zds_socket")]
        pods: Option<PathBuf>,
        /// The pod-handoff socket ztunnel connects to.
        #[arg(long)]
        zds_socket: Option<PathBuf>,
        /// Where the connecting ztunnel's process is found.
        #[arg(long, default_value = "/proc")]
        proc_root: PathBuf,
    },
    /// Detach and remove everything pinned under the bpffs root.
    Uninstall,
}

/// The datapath's settings, for both ways of running.
#[derive(Debug, clap::Args)]
struct DatapathArgs {
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
    /// Have the eBPF programs log their decisions (aya-log, at debug level).
    #[arg(long, env = "WEFT_EBPF_DEBUG")]
    ebpf_debug: bool,
    /// cgroup v2 directory of a node proxy that does not connect to the handoff socket (a
    /// ztunnel that connects is trusted by its own cgroup, learned from the connection): its
    /// marked sockets escape capture, nobody else's do. Until one of the two names a cgroup,
    /// the proxy mark alone is trusted.
    #[arg(long, env = "WEFT_PROXY_CGROUP")]
    proxy_cgroup: Option<PathBuf>,
}

impl DatapathArgs {
    /// Checks the kernel and finds what was not given.
    fn config(&self, bpffs_root: PathBuf) -> anyhow::Result<datapath::Config> {
        datapath::check_kernel(&std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default())?;
        let mounts = cgroups::cgroup2_mounts(&cgroups::mountinfo());
        let cgroup = match &self.cgroup {
            Some(cgroup) => cgroup.clone(),
            None => cgroups::find_pods(&mounts, &cgroups::own_cgroup())
                .ok_or_else(|| anyhow::anyhow!(cgroups::not_found(&mounts)))?,
        };
        let node_cgroup = self
            .node_cgroup
            .clone()
            .or_else(|| cgroups::root_of(&mounts, &cgroup))
            .unwrap_or_else(|| cgroup.clone());
        Ok(datapath::Config {
            node_cgroup,
            cgroup,
            node_netns: self.node_netns.clone(),
            bpffs_root,
            max_enrolled: self.max_pods,
        })
    }
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
    let _logging = weft_api::daemon::init_logging();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    match args.command {
        Command::Run {
            datapath,
            node,
            zds_socket,
            kubeconfig,
            monitoring_listen,
            admin_listen,
            proc_root,
            pod,
            labels,
        } => {
            let config = datapath.config(args.bpffs_root)?;
            let own_pod = pod
                .map(|pod| {
                    let (namespace, name) = pod.split_once('/').context("--pod is namespace/name")?;
                    anyhow::Ok(weft_agent::removal::OwnPod { namespace: namespace.into(), name: name.into() })
                })
                .transpose()?;
            let node = weft_agent::node::Config {
                node,
                proc_root,
                zds_socket,
                monitoring: monitoring_listen,
                admin: admin_listen,
                own_pod,
                labels,
            };
            let source = Source::Kubernetes { kubeconfig, node };
            let options = RunOptions {
                enroll: Vec::new(),
                source,
                ebpf_debug: datapath.ebpf_debug,
                proxy_cgroup: datapath.proxy_cgroup,
            };
            run(&config, options)
        }
        Command::Static { datapath, enroll, pods, zds_socket, proc_root } => {
            let config = datapath.config(args.bpffs_root)?;
            let source = match zds_socket {
                Some(socket) => {
                    let pods = pods.map(|file| read_pods(&file)).transpose()?.unwrap_or_default();
                    Source::Static { socket, pods, proc_root }
                }
                None => Source::None,
            };
            let options = RunOptions {
                enroll,
                source,
                ebpf_debug: datapath.ebpf_debug,
                proxy_cgroup: datapath.proxy_cgroup,
            };
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
    let removed = runtime.block_on(async {
        let signal = weft_api::daemon::termination()?;
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
                let stopped = weft_agent::node::run(client, node, &mut datapath, signal).await?;
                return anyhow::Ok(stopped == weft_agent::node::Stopped::Removed);
            }
        }
        anyhow::Ok(false)
    })?;
    if removed {
        datapath::uninstall(&config.bpffs_root)?;
        tracing::info!("exiting; capture removed, every pod back to plain networking");
    } else {
        tracing::info!("exiting; capture stays pinned");
    }
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
        let session = match server.accept().await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(%error, "handoff connection refused");
                continue;
            }
        };
        datapath.trust_proxy_cgroup(session.proxy_cgroup())?;
        tracing::info!("ztunnel connected");
        for spec in pods {
            let netns = std::fs::File::open(&spec.netns)
                .with_context(|| format!("opening {}", spec.netns.display()))?;
            weft_agent::return_path::install(&netns, addrs_of(&spec.ips), proc_root)
                .with_context(|| format!("return path in {}", spec.netns.display()))?;
            datapath.hand_over(&netns, addrs_of(&spec.ips))?;
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
