//! The process: configuration, wiring, and the run until shutdown.
use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    identity::{
        ca::{CaClient, FileCa, GrpcCa},
        manager::Manager,
    },
    inpod::{self, Pods},
    proxy::{Context, InboundPlaintext, Pool},
    state::State,
};

/// Validated configuration (the binary builds it from flags; tests build it directly).
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: String,
    /// The agent's pod-handoff socket.
    pub zds_socket: PathBuf,
    /// Workloads from a JSON file (until xDS).
    pub local_config: Option<PathBuf>,
    /// Where certificates come from.
    pub ca: CaConfig,
    /// Where capture is pinned; `None` runs without registering inbound listeners.
    pub bpffs_root: Option<PathBuf>,
    pub plaintext: InboundPlaintext,
    pub cert_ttl: Duration,
    /// Metrics, readiness and admin endpoints.
    pub admin: weft_api::admin::Addresses,
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
    State(#[from] crate::state::Error),
    #[error("loading the development CA")]
    Ca(#[from] crate::identity::ca::Error),
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
    fn metrics(&self) -> String {
        self.0.metrics.encode()
    }

    fn ready(&self) -> bool {
        self.0.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    fn config_dump(&self) -> String {
        let pods = self.0.pods.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let pods: Vec<_> = pods
            .iter()
            .map(|(pod, addresses)| {
                serde_json::json!({
                    "uid": pod.uid,
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "identity": pod.identity(&self.0.trust_domain).to_string(),
                    "addresses": addresses,
                })
            })
            .collect();
        serde_json::json!({ "ready": self.ready(), "pods": pods }).to_string()
    }
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let state = Arc::new(State::default());
    if let Some(path) = &config.local_config {
        state.load_file(path)?;
    }
    let ca: Arc<dyn CaClient> = match &config.ca {
        CaConfig::Grpc { address, root_file, token_file } => {
            let root = std::fs::read_to_string(root_file).map_err(|error| {
                crate::identity::ca::Error::Material(format!("{}: {error}", root_file.display()))
            })?;
            Arc::new(GrpcCa::new(address, &root, token_file)?)
        }
        CaConfig::DevFiles(dir) => Arc::new(FileCa::load(dir)?),
    };
    let context = Arc::new(Context {
        trust_domain: config.trust_domain.clone(),
        state,
        identities: Arc::new(Manager::new(ca, config.cert_ttl)),
        pool: Pool::default(),
        plaintext: config.plaintext,
        bpffs_root: config.bpffs_root.clone(),
        metrics: crate::metrics::Metrics::default(),
        ready: std::sync::atomic::AtomicBool::new(false),
        pods: std::sync::RwLock::default(),
    });
    let mut endpoints = tokio::task::JoinSet::new();
    let source: Arc<dyn weft_api::admin::Source> = Arc::new(Endpoints(context.clone()));
    for (what, addr) in [
        ("metrics", config.admin.metrics),
        ("readiness", config.admin.readiness),
        ("admin", config.admin.admin),
    ] {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, source })?;
        endpoints.spawn(weft_api::admin::serve(listener, source.clone()));
    }
    let mut pods = Pods::new(context).map_err(Error::Netns)?;
    inpod::run(config.zds_socket.clone(), &mut pods, shutdown).await;
    endpoints.abort_all();
    Ok(())
}
