//! `weft-agent`: the node agent binary; all logic lives in the library.
use std::{net::IpAddr, path::PathBuf, str::FromStr};

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_agent::datapath::{self, Datapath, PodAddrs};

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
enum Command {
    /// Install (or adopt) the datapath, enroll the given pods, print `ready`, and run until
    /// SIGTERM or SIGINT. Exiting leaves capture pinned and working.
    Run {
        /// cgroup v2 directory holding this node's pods and proxy.
        #[arg(long, env = "WEFT_CGROUP_ROOT", default_value = "/sys/fs/cgroup/unified")]
        cgroup: PathBuf,
        /// Capacity of the enrollment map when it is created.
        #[arg(long, default_value_t = weft_ebpf_common::MAX_ENROLLED)]
        max_pods: u32,
        /// A pod to enroll, as `NETNS_PATH=IP[,IP]` (static enrollment until the Kubernetes
        /// watch arrives).
        #[arg(long = "enroll")]
        pods: Vec<StaticPod>,
        /// Have the eBPF programs log their decisions (aya-log, at debug level).
        #[arg(long, env = "WEFT_EBPF_DEBUG")]
        ebpf_debug: bool,
        /// cgroup v2 directory of the node proxy: its marked sockets escape capture, nobody
        /// else's do. Without it the proxy mark alone is trusted.
        #[arg(long, env = "WEFT_PROXY_CGROUP")]
        proxy_cgroup: Option<PathBuf>,
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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    match args.command {
        Command::Run { cgroup, max_pods, pods, ebpf_debug, proxy_cgroup } => {
            let config = datapath::Config { cgroup, bpffs_root: args.bpffs_root, max_enrolled: max_pods };
            run(&config, &pods, ebpf_debug, proxy_cgroup.as_deref())
        }
        Command::Uninstall => Ok(datapath::uninstall(&args.bpffs_root)?),
    }
}

fn run(
    config: &datapath::Config,
    pods: &[StaticPod],
    ebpf_debug: bool,
    proxy_cgroup: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _entered = runtime.enter();
    let mut datapath = Datapath::install(config)?;
    if let Some(cgroup) = proxy_cgroup {
        datapath.trust_proxy_cgroup(cgroup)?;
    }
    let _logger = if ebpf_debug { Some(datapath.start_debug_log()?) } else { None };
    for pod in pods {
        let netns =
            std::fs::File::open(&pod.netns).with_context(|| format!("opening {}", pod.netns.display()))?;
        let cookie = datapath.enroll(&netns, pod.addrs)?;
        tracing::info!(netns = %pod.netns.display(), cookie, addrs = ?pod.addrs, "enrolled");
    }
    println!("ready");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            result = tokio::signal::ctrl_c() => result?,
        }
        anyhow::Ok(())
    })?;
    tracing::info!("exiting; capture stays pinned");
    Ok(())
}
