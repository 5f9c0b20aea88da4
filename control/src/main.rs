//! `weft-control`: the control plane binary; all logic lives in the library.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use tonic::transport::Server;
use weft_api::ca::istio_certificate_service_server::IstioCertificateServiceServer;
use weft_control::{
    ca::{Authority, Lifetimes, caller::Authenticator, service::Service},
    index::{self, Naming, Snapshot},
    metrics::Metrics,
    serving::{self, ServingCert},
    xds,
};

/// jemalloc, not glibc's malloc: every change builds a new index while the last is still
/// served, and glibc's free lists fragmented so that a rebuild at 50 000 pods spent a third of
/// its time in `malloc` and `free` (index_bench at 50 000 pods and a thousand proxies, glibc's
/// runs 423–620 ms a rebuild, jemalloc's 167–195; a pod change reaching every proxy at p99
/// 827 → 276 ms in two runs minutes apart, resident memory once synced 558 → 377 MiB, the peak
/// while they sync 630 → 668 MiB; mimalloc was as fast but peaked at 0.8–1.1 GiB).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Weft control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// kubeconfig file; without it, in-cluster configuration (or KUBECONFIG).
    #[arg(long, env = "WEFT_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The control plane's namespace: its CA Secret and root ConfigMap live here.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = "weft-system")]
    namespace: String,
    #[arg(long, env = "WEFT_CA_SECRET", default_value = "weft-ca")]
    ca_secret: String,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Service hostnames are `<name>.<namespace>.svc.<cluster domain>`.
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Whose label enrolls pods and whose annotation says their agent captured them: `weft`
    /// or `istio` (Istio ambient's), as the agents are told.
    #[arg(long, env = "WEFT_LABELS", default_value = "weft")]
    labels: weft_api::enrollment::Labels,
    /// `/metrics` and `/healthz/ready` (the index has synced), for Prometheus and probes.
    #[arg(long, env = "WEFT_MONITORING_LISTEN", default_value = "0.0.0.0:15014")]
    monitoring_listen: SocketAddr,
    /// `/config_dump` (and the others): the mesh's inventory, so only in the pod; `weftctl`
    /// reaches it by port-forward through the API server.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", default_value = "127.0.0.1:15000")]
    admin_listen: SocketAddr,
    /// gRPC (TLS: xDS and the CA) listen address; ignored when a socket is passed in
    /// (LISTEN_FDS=1, fd 3).
    #[arg(long, env = "WEFT_GRPC_LISTEN", default_value = "0.0.0.0:15012")]
    grpc_listen: SocketAddr,
    /// Names (IPs or DNS) node proxies use to reach the control plane: the serving cert's SANs.
    #[arg(long = "serving-name", default_value = "weft-control.weft-system.svc")]
    serving_names: Vec<String>,
    /// Service account of the node proxies, `namespace/name`: the only callers of the CA.
    #[arg(long, env = "WEFT_PROXY_SERVICE_ACCOUNT", default_value = "weft-system/weft-ztunnel")]
    proxy_service_account: String,
    /// Audience node-proxy tokens must carry.
    #[arg(long, env = "WEFT_CA_AUDIENCE", default_value = "istio-ca")]
    audience: String,
    /// Longest certificate lifetime granted, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    max_cert_ttl_seconds: u64,
    /// How often the CA checks what is due: the intermediate's re-issue, a root rotation's next
    /// step, an operator's request (annotation `weft.dev/rotate-root` on its Secret).
    #[arg(long, default_value_t = 600)]
    ca_check_seconds: u64,
    /// Each root rotation step waits a leaf lifetime and a quarter, plus this margin for clock
    /// skew and late renewals.
    #[arg(long, default_value_t = 300)]
    ca_rotation_margin_seconds: u64,
    /// The image of the waypoints it deploys for Gateways of class `weft-waypoint`, whatever
    /// the PodTemplate `--waypoint-template` says; unset: the template's, else `weft/waypoint`.
    #[arg(long, env = "WEFT_WAYPOINT_IMAGE")]
    waypoint_image: Option<String>,
    /// The PodTemplate in its namespace whose `waypoint` container (image, pull policy,
    /// resources, environment) every waypoint runs: the manifests' `weft-waypoint`, its image set with the
    /// others by kustomize. Missing: the default image, no resources.
    #[arg(long, env = "WEFT_WAYPOINT_TEMPLATE", default_value = "weft-waypoint")]
    waypoint_template: String,
    /// The xDS and CA address waypoint pods dial (this control plane's Service).
    #[arg(
        long,
        env = "WEFT_WAYPOINT_CONTROL_ADDRESS",
        default_value = "https://weft-control.weft-system.svc:15012"
    )]
    waypoint_control_address: String,
}

fn main() -> anyhow::Result<()> {
    let _logging = weft_api::daemon::init_logging();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    let passed_listener = passed_listener()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args, passed_listener))
}

async fn run(args: Args, passed_listener: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let authority = Arc::new(
        Authority::load_or_create(
            client.clone(),
            &args.namespace,
            &args.ca_secret,
            Lifetimes {
                rotation_margin: Duration::from_secs(args.ca_rotation_margin_seconds),
                ..Lifetimes::with_max_leaf(Duration::from_secs(args.max_cert_ttl_seconds))
            },
        )
        .await?,
    );
    weft_control::ca::publish_root(client.clone(), &args.namespace, &authority.bundle_pem()).await?;
    let serving = Arc::new(ServingCert::new(&authority, args.serving_names.clone())?);
    let maintenance = tokio::spawn(maintain_ca(
        authority.clone(),
        serving.clone(),
        client.clone(),
        args.namespace.clone(),
        Duration::from_secs(args.ca_check_seconds.max(1)),
    ));
    let (proxy_namespace, proxy_sa) =
        args.proxy_service_account.split_once('/').context("--proxy-service-account is namespace/name")?;
    let authenticator =
        Authenticator::new(client.clone(), args.audience.clone(), (proxy_namespace.into(), proxy_sa.into()));
    let metrics = Arc::new(Metrics::default());
    let (publish, snapshots) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let naming = Naming {
        trust_domain: args.trust_domain.clone(),
        cluster_domain: args.cluster_domain.clone(),
        root_namespace: args.namespace.clone(),
        labels: args.labels,
    };
    let waypoints = tokio::spawn(weft_control::waypoints::run(
        client.clone(),
        weft_control::waypoints::Settings {
            image: args.waypoint_image.clone(),
            template: (args.namespace.clone(), args.waypoint_template.clone()),
            control_address: args.waypoint_control_address.clone(),
        },
        authority.clone(),
    ));
    let route_status = tokio::spawn(weft_control::route_status::run(client.clone(), snapshots.clone()));
    let policy_status = tokio::spawn(weft_control::policy_status::run(client.clone(), snapshots.clone()));
    let mut index = tokio::spawn(index::watch::run(client, naming, publish));
    let source = Arc::new(Monitoring {
        metrics: metrics.clone(),
        snapshots: snapshots.clone(),
        trust_domain: args.trust_domain.clone(),
    });
    let (monitoring, admin, endpoints) =
        weft_api::admin::bind_monitoring_and_admin(args.monitoring_listen, args.admin_listen, source).await?;
    tracing::info!(addr = %monitoring, "serving metrics and readiness");
    tracing::info!(addr = %admin, "serving config_dump, metrics and readiness");
    let monitor = tokio::spawn(endpoints);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let ads = xds::Server::new(snapshots, authenticator.clone(), metrics.clone(), stopping.clone());
    let service = Service::new(authority, authenticator, args.trust_domain.clone(), metrics);

    let listener = match passed_listener {
        Some(listener) => serving::adopt(listener)?,
        None => serving::listen(args.grpc_listen)?,
    };
    tracing::info!(addr = %listener.local_addr()?, "serving xDS and the CA");
    // On SIGTERM or Ctrl-C: end every xDS stream (proxies reconnect to another replica or
    // after the restart), then stop serving.
    let terminated = weft_api::daemon::termination()?;
    tokio::spawn(async move {
        terminated.await;
        let _ = stop.send(true);
    });
    let mut stopped = stopping;
    let shutdown = async move {
        let _ = stopped.wait_for(|stopping| *stopping).await;
    };
    let serve = Server::builder()
        .add_service(IstioCertificateServiceServer::new(service))
        .add_service(ads)
        .serve_with_incoming_shutdown(serving::incoming(listener, serving), shutdown);
    let result = tokio::select! {
        served = serve => served.map_err(anyhow::Error::from),
        indexed = &mut index => Err(indexed.map_or_else(anyhow::Error::from, |ended| {
            ended.err().unwrap_or_else(|| anyhow::anyhow!("the index stopped"))
        })),
    };
    monitor.abort();
    index.abort();
    maintenance.abort();
    waypoints.abort();
    route_status.abort();
    policy_status.abort();
    tracing::info!("stopped");
    result
}

/// What the monitoring endpoints show.
struct Monitoring {
    metrics: Arc<Metrics>,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// In the dump: the identities policies name are in it.
    trust_domain: String,
}

impl weft_api::admin::Source for Monitoring {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    fn ready(&self) -> bool {
        self.snapshots.borrow().version > 0
    }

    fn config_dump(&self) -> String {
        // Clone first: the channel's lock must not be held while the dump is made.
        let snapshot = self.snapshots.borrow().clone();
        let mut dump = snapshot.dump();
        dump["trust_domain"] = self.trust_domain.clone().into();
        dump.to_string()
    }
}

/// Keeps the CA current, checking `every` so often: whenever it changed, a new serving
/// certificate and the new trust bundle published. A failure is retried at the next check.
async fn maintain_ca(
    authority: Arc<Authority>,
    serving: Arc<ServingCert>,
    client: kube::Client,
    namespace: String,
    every: Duration,
) {
    let mut every = tokio::time::interval(every);
    loop {
        every.tick().await;
        let changed = match authority.maintain().await {
            Ok(Some(change)) => change,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(error = %anyhow::Error::from(error), "CA maintenance failed; retrying later");
                continue;
            }
        };
        tracing::info!(%changed, "mesh CA changed");
        if let Err(error) = serving.renew(&authority) {
            tracing::warn!(%error, "renewing the serving certificate failed");
        }
        if let Err(error) =
            weft_control::ca::publish_root(client.clone(), &namespace, &authority.bundle_pem()).await
        {
            tracing::warn!(%error, "publishing the trust bundle failed");
        }
    }
}

/// A listening socket passed by the parent (systemd-style activation: `LISTEN_FDS=1`, fd 3).
fn passed_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    if std::env::var("LISTEN_FDS").ok().as_deref() != Some("1") {
        return Ok(None);
    }
    // SAFETY: by the activation protocol fd 3 is a listening socket handed to this process and
    // owned by nothing else in it.
    Ok(Some(unsafe { std::net::TcpListener::from_raw_fd(3) }))
}
