//! The process: configuration, wiring, and the run until shutdown.
use std::{path::PathBuf, sync::Arc, time::Duration};

use weft_proxy::{
    identity::{
        ca::{CaClient, FileCa, GrpcCa},
        manager::Manager,
    },
    state::State,
};

use crate::{
    inpod::{self, Pods},
    proxy::{Context, InboundPlaintext, Pool},
};

/// How often the metrics of workloads that are gone are dropped.
const METRICS_SWEEP: Duration = Duration::from_secs(60);

/// Validated configuration (the binary builds it from flags; tests build it directly).
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: String,
    /// The agent's pod-handoff socket.
    pub zds_socket: PathBuf,
    /// Where workloads and services come from.
    pub workloads: WorkloadSource,
    /// Where certificates come from.
    pub ca: CaConfig,
    pub plaintext: InboundPlaintext,
    pub cert_ttl: Duration,
    /// After the shutdown signal: how long open connections may still run.
    pub drain: Duration,
    /// Metrics, readiness and admin endpoints.
    pub admin: weft_api::admin::Addresses,
    /// How HBONE connections are shared.
    pub pool: crate::proxy::PoolSettings,
    /// Connections one pod may have through the proxy at once (outbound, plaintext inbound and
    /// HBONE connections; each HBONE connection carries at most 200 streams).
    pub max_connections_per_pod: usize,
    /// Who this proxy is, for the control plane.
    pub proxy: weft_proxy::control::ProxyMeta,
}

/// Where the proxy learns the mesh's workloads and services.
#[derive(Debug, Clone)]
pub enum WorkloadSource {
    /// The control plane's delta xDS: `https://host:port`, its root (PEM file), the proxy's
    /// token file.
    Xds { address: String, root_file: PathBuf, token_file: PathBuf },
    /// A fixed JSON file (`{"workloads": [...]}`): development and component tests.
    LocalFile(PathBuf),
}

/// The certificate authority to use.
#[derive(Debug, Clone)]
pub enum CaConfig {
    /// The control plane's CA: `https://host:port`, its root (PEM file), the proxy's token file.
    Grpc { address: String, root_file: PathBuf, token_file: PathBuf },
    /// Development CA directory (`root.pem`, `root-key.pem`): signs locally, trusts everyone.
    DevFiles(PathBuf),
}

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading workloads")]
    State(#[from] weft_proxy::state::Error),
    #[error("reading the control plane's root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the development CA")]
    Ca(#[from] weft_proxy::identity::ca::Error),
    #[error("opening the proxy's own network namespace")]
    Netns(#[source] std::io::Error),
    #[error("binding the {what} endpoint on {addr}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The admin endpoints' view of the proxy.
struct Endpoints(Arc<Context>);

impl weft_api::admin::Source for Endpoints {
    /// The proxy's metrics, and each held certificate's expiry (computed at scrape time).
    fn metrics(&self) -> String {
        let mut text = self.0.metrics.encode();
        let certs = self.0.identities.summary();
        // The registry's text ends with "# EOF"; the gauge goes before it.
        if let Some(end) = text.rfind("# EOF") {
            text.truncate(end);
        }
        text.push_str("# HELP weft_certificate_expiration_timestamp_seconds When each held workload certificate expires.\n");
        text.push_str("# TYPE weft_certificate_expiration_timestamp_seconds gauge\n");
        for cert in certs {
            text.push_str(&format!(
                "weft_certificate_expiration_timestamp_seconds{{identity=\"{}\"}} {}\n",
                cert.identity, cert.not_after
            ));
        }
        text.push_str("# EOF\n");
        weft_proxy::census::add_to(&mut text);
        text
    }

    /// Ready once the agent's snapshot is served and the configuration complete.
    fn ready(&self) -> bool {
        self.0.ready.load(std::sync::atomic::Ordering::Acquire) && self.0.state.is_synced()
    }

    fn config_dump(&self) -> String {
        let pods = self.0.pods.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let pods: Vec<_> = pods
            .iter()
            .map(|(pod, addresses)| {
                // What decides connections to it (its workload is the same at each address),
                // or the policy it waits for, refusing every connection meanwhile.
                let decided =
                    addresses.first().and_then(|address| self.0.state.policies_for(pod.local(), *address));
                let (policies, waiting_for) = match decided {
                    Some(Ok(names)) => (Some(names), None),
                    Some(Err(missing)) => (None, Some(missing)),
                    None => (None, None),
                };
                serde_json::json!({
                    "uid": pod.uid,
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "identity": pod.identity(&self.0.trust_domain).to_string(),
                    "addresses": addresses,
                    "policies": policies,
                    "waiting_for_policy": waiting_for,
                })
            })
            .collect();
        serde_json::json!({
            "ready": self.ready(),
            "pods": pods,
            "certificates": self.0.identities.summary(),
            "connections": self.0.live.dump().iter().map(|open| serde_json::to_value(&**open).unwrap_or_default()).collect::<Vec<_>>(),
            "mesh": self.0.state.dump(),
        })
        .to_string()
    }
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let read_root = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| Error::Root { path: path.clone(), source })
    };
    let state = Arc::new(State::on_network(&config.proxy.network));
    let mut xds = None;
    match &config.workloads {
        WorkloadSource::LocalFile(path) => state.load_file(path)?,
        WorkloadSource::Xds { address, root_file, token_file } => {
            let source = weft_proxy::xds::Config {
                address: address.clone(),
                root_file: root_file.clone(),
                token_file: token_file.clone(),
                proxy: config.proxy.clone(),
                extra: Vec::new(),
            };
            xds = Some(tokio::spawn(weft_proxy::xds::run(source, state.clone())));
        }
    }
    let ca: Arc<dyn CaClient> = match &config.ca {
        CaConfig::Grpc { address, root_file, token_file } => {
            read_root(root_file)?;
            Arc::new(GrpcCa::new(address, root_file, token_file, &config.proxy)?)
        }
        CaConfig::DevFiles(dir) => Arc::new(FileCa::load(dir)?),
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let context = Arc::new(Context {
        trust_domain: config.trust_domain.clone(),
        state,
        identities: Arc::new(Manager::new(ca, config.cert_ttl)),
        pool: Pool::new(config.pool, {
            let metrics = metrics.clone();
            move |handshake| metrics.handshake(crate::metrics::Reporter::Source, handshake)
        }),
        plaintext: config.plaintext,
        metrics,
        ready: std::sync::atomic::AtomicBool::new(false),
        drain: tokio::sync::watch::Sender::new(false),
        listeners: tokio::sync::watch::Sender::new(0),
        round_robin: std::sync::Mutex::default(),
        live: crate::proxy::live::Live::default(),
        pods: std::sync::RwLock::default(),
        max_connections_per_pod: config.max_connections_per_pod,
    });
    let mut endpoints = tokio::task::JoinSet::new();
    // Certificates renew at half-life whether or not traffic asks for them.
    endpoints.spawn(context.identities.clone().refresh());
    let pool_context = context.clone();
    endpoints.spawn(async move { pool_context.pool.release_idle_periodically().await });
    let metrics_context = context.clone();
    endpoints.spawn(async move {
        let mut every = tokio::time::interval(METRICS_SWEEP);
        loop {
            every.tick().await;
            metrics_context.forget_gone_workloads();
        }
    });
    let source: Arc<dyn weft_api::admin::Source> = Arc::new(Endpoints(context.clone()));
    // Each port answers only its own endpoint: the dump (the mesh index, identities) stays on
    // the node-local admin port.
    use weft_api::admin::Endpoints as Serves;
    for (what, addr, serves) in [
        ("metrics", config.admin.metrics, Serves::METRICS),
        ("readiness", config.admin.readiness, Serves::READY),
        ("admin", config.admin.admin, Serves::CONFIG_DUMP),
    ] {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, source })?;
        endpoints.spawn(weft_api::admin::serve(listener, source.clone(), serves));
    }
    let mut pods = Pods::new(context.clone()).map_err(Error::Netns)?;
    inpod::run(config.zds_socket.clone(), &mut pods, shutdown).await;
    // Drain: listeners close now (a new proxy on the same ports takes new connections); open
    // connections may finish until the deadline, then the process ends and cuts them.
    context.drain.send_replace(true);
    let mut listeners = context.listeners.subscribe();
    let _ = tokio::time::timeout(config.drain, listeners.wait_for(|open| *open == 0)).await;
    tracing::info!(deadline = ?config.drain, "draining: listeners closed, open connections continue");
    match tokio::time::timeout(config.drain, pods.finished()).await {
        Ok(()) => tracing::info!("drained: every connection ended"),
        Err(_) => tracing::warn!("drain deadline reached; closing the remaining connections"),
    }
    endpoints.abort_all();
    if let Some(xds) = xds {
        xds.abort();
    }
    Ok(())
}
