//! `weft-waypoint`: the waypoint binary; all logic lives in the library.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use weft_proxy::identity::Identity;
use weft_waypoint::app;

/// Weft waypoint.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The Gateway this waypoint is (its Service has the same name).
    #[arg(long, env = "GATEWAY_NAME")]
    gateway_name: String,
    /// The control plane's delta xDS, `https://host:port`.
    #[arg(long, env = "WEFT_XDS_ADDRESS")]
    xds_address: String,
    /// The control plane's CA, `https://host:port`.
    #[arg(long, env = "WEFT_CA_ADDRESS")]
    ca_address: String,
    /// The mesh root (PEM) to trust the control plane with.
    #[arg(long, env = "WEFT_CA_ROOT_FILE")]
    ca_root_file: PathBuf,
    /// This pod's service-account token (audience istio-ca, bound to its pod).
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    token_file: PathBuf,
    /// Certificate lifetime, in seconds.
    #[arg(long, env = "WEFT_CERT_TTL_SECONDS", default_value_t = 24 * 3600)]
    cert_ttl_seconds: u64,
    /// On SIGTERM, how long open requests may finish, in seconds. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 20)]
    drain_seconds: u64,
    /// Where HBONE is accepted.
    #[arg(long, env = "WEFT_LISTEN", default_value = "[::]:15008")]
    listen: SocketAddr,
    /// This pod's name, namespace, service account and address (the downward API).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod_name: String,
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: String,
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: String,
    #[arg(long, env = "INSTANCE_IP", default_value = "")]
    instance_ip: String,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// The network this pod is on, in a multi-network mesh (Istio's `NETWORK`).
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
    /// Worker threads, each serving its own connections; by default as many as the CPUs this
    /// process may use — the cgroup's CPU quota (a pod's CPU limit) included.
    #[arg(long, env = "WEFT_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Where to export request spans: an OpenTelemetry collector's OTLP/gRPC address,
    /// `http://host:port` or `host:port` (plaintext). Unset or empty: no tracing, at no cost;
    /// one that cannot be used: no tracing, logged.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Of the requests that begin a trace (no valid `traceparent` of their own), the share
    /// sampled, in percent (Istio's default, 1; `0.5`, `100%`); a request's own sampled flag is
    /// kept. A value that is no percentage turns tracing off (logged), never the waypoint.
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value = "1")]
    trace_sampling: String,
}

fn main() -> anyhow::Result<()> {
    // First: the allocator's settings hold for the threads started after them.
    weft_proxy::allocator::set_up().context("setting up the allocator")?;
    let _logging = weft_api::daemon::init_logging();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    // std's count honours cgroup v2 `cpu.max` and the affinity mask.
    let workers = args
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
        .max(1);
    let namespace = args.pod_namespace;
    let config = app::Config {
        identity: Identity::new(&args.trust_domain, &namespace, &args.service_account),
        service: format!("{namespace}/{}.{namespace}.svc.{}", args.gateway_name, args.cluster_domain),
        gateway: format!("{namespace}/{}", args.gateway_name),
        trust_domain: args.trust_domain,
        ca_address: args.ca_address,
        xds_address: args.xds_address,
        root_file: args.ca_root_file,
        token_file: args.token_file,
        proxy: weft_proxy::control::ProxyMeta {
            pod_name: args.pod_name,
            namespace,
            node_name: args.node_name,
            ip: args.instance_ip,
            network: args.network,
            node_type: "router",
            ..Default::default()
        },
        cert_ttl: Duration::from_secs(args.cert_ttl_seconds),
        drain: Duration::from_secs(args.drain_seconds),
        listen: args.listen,
        admin: weft_api::admin::Addresses::default(),
        workers,
        tracing: args
            .otlp_endpoint
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| weft_waypoint::trace::Settings { endpoint, sampling: args.trace_sampling }),
    };
    // The main thread's runtime: accepting, xDS, certificates, admin; requests run on the
    // workers' own (`weft_waypoint::workers`).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _counted = weft_proxy::census::count_runtime(runtime.handle().clone());
    runtime.block_on(async {
        let shutdown = weft_api::daemon::termination()?;
        app::run(config, shutdown).await?;
        anyhow::Ok(())
    })?;
    tracing::info!("stopped");
    Ok(())
}
