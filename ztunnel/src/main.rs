//! `weft-ztunnel`: the node proxy binary; all logic lives in the library.
use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use weft_ztunnel::{
    app,
    proxy::{InboundPlaintext, PoolSettings},
};

/// Weft node proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The agent's pod-handoff (ZDS) socket.
    #[arg(long, env = "WEFT_ZDS_SOCKET", default_value = weft_api::zds::DEFAULT_SOCKET)]
    zds_socket: PathBuf,
    /// The control plane's delta xDS, `https://host:port`: where workloads and services come from.
    #[arg(long, env = "WEFT_XDS_ADDRESS", required_unless_present = "local_config")]
    xds_address: Option<String>,
    /// Workloads as JSON (`{"workloads": [...]}`) instead of xDS: development only.
    #[arg(long, env = "WEFT_LOCAL_CONFIG", conflicts_with = "xds_address")]
    local_config: Option<PathBuf>,
    /// The control plane's CA, `https://host:port`.
    #[arg(long, env = "WEFT_CA_ADDRESS", required_unless_present = "dev_ca_dir")]
    ca_address: Option<String>,
    /// The mesh root (PEM) to trust the control plane (CA and xDS) with.
    #[arg(long, env = "WEFT_CA_ROOT_FILE")]
    ca_root_file: Option<PathBuf>,
    /// This proxy's service-account token (audience istio-ca, bound to its pod), for the CA and xDS.
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Development CA (`root.pem`, `root-key.pem`): signs locally, trusts every caller. Never in
    /// production.
    #[arg(long, env = "WEFT_DEV_CA_DIR", conflicts_with = "ca_address")]
    dev_ca_dir: Option<PathBuf>,
    /// Refuse plaintext from outside the mesh (STRICT) instead of delivering it (PERMISSIVE).
    #[arg(long, env = "WEFT_STRICT")]
    strict: bool,
    /// On SIGTERM, how long open connections may finish after the listeners close, in seconds.
    /// Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 20)]
    drain_seconds: u64,
    /// Worker threads; by default as many as the CPUs this process may use — the cgroup's CPU
    /// quota (a pod's CPU limit) included.
    #[arg(long, env = "WEFT_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Workload certificate lifetime, in seconds.
    #[arg(long, env = "WEFT_CERT_TTL_SECONDS", default_value_t = 24 * 3600)]
    cert_ttl_seconds: u64,
    /// Release a pooled HBONE connection after this many seconds without streams (0: as soon
    /// as its last stream ends).
    #[arg(long, env = "WEFT_POOL_IDLE_SECONDS", default_value_t = PoolSettings::default().idle_timeout.as_secs())]
    pool_idle_seconds: u64,
    /// Streams one pooled HBONE connection carries at once (1 and an idle timeout of 0: every
    /// connection pays a fresh handshake).
    #[arg(long, env = "WEFT_POOL_MAX_STREAMS", default_value_t = PoolSettings::default().max_streams)]
    pool_max_streams: usize,
    /// HBONE connections a busy pair of pods spreads its streams over (default: one per
    /// worker thread), so their TLS runs on every core.
    #[arg(long, env = "WEFT_POOL_LANES")]
    pool_lanes: Option<usize>,
    /// Connections one pod may have through the proxy at once, so one pod cannot take every
    /// descriptor of the node's proxy; more are closed as they arrive.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_PER_POD", default_value_t = 16384)]
    max_connections_per_pod: usize,
    /// This proxy's pod, namespace, node and address (the downward API), told to the control
    /// plane as Istio's ztunnel tells istiod.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pod_namespace: String,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    #[arg(long, env = "INSTANCE_IP", default_value = "")]
    instance_ip: String,
    /// The cluster's name in a multi-cluster mesh.
    #[arg(long, env = "CLUSTER_ID", default_value = weft_proxy::control::DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// The network this node is on, in a multi-network mesh (Istio's `NETWORK`).
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
}

fn main() -> anyhow::Result<()> {
    // First: the allocator's settings hold for the threads started after them.
    weft_proxy::allocator::set_up().context("setting up the allocator")?;
    let _logging = weft_api::daemon::init_logging();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    let root_file =
        || args.ca_root_file.clone().context("--ca-root-file is required with --ca-address or --xds-address");
    let token_file =
        || args.token_file.clone().context("--token-file is required with --ca-address or --xds-address");
    let workloads = match (args.xds_address, args.local_config) {
        (Some(address), _) => {
            app::WorkloadSource::Xds { address, root_file: root_file()?, token_file: token_file()? }
        }
        (None, Some(path)) => app::WorkloadSource::LocalFile(path),
        (None, None) => anyhow::bail!("give --xds-address (or --local-config for development)"),
    };
    let ca = match (args.ca_address, args.dev_ca_dir) {
        (Some(address), _) => {
            app::CaConfig::Grpc { address, root_file: root_file()?, token_file: token_file()? }
        }
        (None, Some(dir)) => app::CaConfig::DevFiles(dir),
        (None, None) => anyhow::bail!("give --ca-address (or --dev-ca-dir for development)"),
    };
    // std's count honours cgroup v2 `cpu.max` and the affinity mask.
    let workers = args
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
        .max(1);
    let config = app::Config {
        trust_domain: args.trust_domain,
        zds_socket: args.zds_socket,
        workloads,
        ca,
        plaintext: if args.strict { InboundPlaintext::Deny } else { InboundPlaintext::Allow },
        cert_ttl: Duration::from_secs(args.cert_ttl_seconds),
        drain: Duration::from_secs(args.drain_seconds),
        admin: weft_api::admin::Addresses::default(),
        pool: PoolSettings {
            max_streams: args.pool_max_streams,
            idle_timeout: Duration::from_secs(args.pool_idle_seconds),
            lanes: args.pool_lanes.unwrap_or(workers),
        },
        max_connections_per_pod: args.max_connections_per_pod,
        proxy: weft_proxy::control::ProxyMeta {
            pod_name: args.pod_name,
            namespace: args.pod_namespace,
            node_name: args.node_name,
            ip: args.instance_ip,
            cluster_id: args.cluster_id,
            network: args.network,
            ..Default::default()
        },
    };
    match weft_ztunnel::rlimit::raise_open_files() {
        Ok(limit) => tracing::info!(open_files = limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }
    tracing::info!(workers, "worker threads");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    let _counted = weft_proxy::census::count_runtime(runtime.handle().clone());
    runtime.block_on(async {
        let shutdown = weft_api::daemon::termination()?;
        app::run(config, shutdown).await?;
        anyhow::Ok(())
    })?;
    tracing::info!("stopped");
    Ok(())
}
