//! The waypoint process: its certificate from the CA (its own identity, asked with its own
//! token), the index and routes from xDS, HBONE accepted on 15008, metrics on 15020, readiness
//! on 15021 and the config dump on the pod's loopback 15000.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use weft_proxy::{
    control::ProxyMeta,
    hbone::pool::{Dial, Pool, Settings as PoolSettings},
    identity::{Identity, ca::GrpcCa, manager::Manager},
    state::{State, Waypoint, WaypointAddress},
    tls::CurrentAcceptor,
};

use crate::{
    authz::Policy,
    inbound::Inbound,
    route::Routes,
    table::{AUTHENTICATIONS, POLICIES, ROUTES, Table},
    workers::Workers,
};

/// How the waypoint runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: String,
    /// Its Service (`namespace/hostname`): Services and workloads that name it as their
    /// waypoint are the only destinations it serves.
    pub service: String,
    /// Its Gateway, `namespace/name`.
    pub gateway: String,
    /// Its own identity: its pod's service account.
    pub identity: Identity,
    /// The control plane's CA and xDS, `https://host:port`.
    pub ca_address: String,
    pub xds_address: String,
    pub root_file: PathBuf,
    pub token_file: PathBuf,
    pub proxy: ProxyMeta,
    pub cert_ttl: Duration,
    /// On SIGTERM, how long open requests may finish (keep it below the pod's grace period).
    pub drain: Duration,
    /// HBONE (`[::]:15008`).
    pub listen: SocketAddr,
    pub admin: weft_api::admin::Addresses,
    /// Worker threads, each serving its own connections ([`crate::workers`]).
    pub workers: usize,
    /// Where request spans go, when anywhere.
    pub tracing: Option<crate::trace::Settings>,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Context {
    pub trust_domain: String,
    pub service: String,
    pub identity: Identity,
    pub state: Arc<State>,
    pub routes: Arc<Table<Routes>>,
    pub policies: Arc<Table<Policy>>,
    /// The RequestAuthentications (JWT rules), by `namespace/name`.
    pub authentications: Arc<Table<crate::authn::Policy>>,
    /// Its Gateway, `namespace/name`: policies that target it apply to every request.
    pub gateway: String,
    /// What it adds to `Via` on a request it sends through another waypoint.
    pub via: http::HeaderValue,
    /// Its pod's address, when given: its own workload's, whose locality endpoints are chosen
    /// near to when a Service prefers close ones (as Istio's waypoint does).
    pub address: Option<std::net::IpAddr>,
    pub identities: Manager,
    /// HBONE connections to endpoint pods, a pool per worker thread ([`Context::pool`]).
    pub pools: Vec<Pool>,
    /// Each backend Service's retry budget.
    pub budgets: crate::retry::Budgets,
    /// The connection caps of backend Services whose circuit breakers have them.
    pub connection_caps: crate::connections::Caps,
    /// Requests in flight per endpoint, for least-request balancing.
    pub in_flight: Arc<crate::balance::InFlight>,
    /// Room for mirrors' copies in flight.
    pub mirrors_in_flight: Arc<tokio::sync::Semaphore>,
    /// The rate limits' buckets.
    pub limiter: crate::traffic::Limiter,
    /// The endpoints' health, for outlier detection.
    pub outliers: crate::breaker::Outliers,
    /// Round robin's turns.
    pub turns: crate::balance::Turns,
    pub metrics: crate::metrics::Metrics,
    /// Request spans, when a collector is configured.
    pub tracer: Option<crate::trace::Tracer>,
    /// Turns true at SIGTERM: readiness fails, HBONE connections say GOAWAY, HTTP sessions
    /// finish the request in flight and close.
    pub drain: tokio::sync::watch::Sender<bool>,
}

impl Context {
    /// Resolves once the whole configuration has arrived: addresses and L4 policies, routes,
    /// L7 policies and request authentication.
    pub async fn synced(&self) {
        self.state.synced().await;
        self.routes.synced().await;
        self.policies.synced().await;
        self.authentications.synced().await;
    }

    /// The HBONE connections to endpoint pods of the worker this runs on, shared by its
    /// sessions: a connection's task and the streams on it stay on one thread.
    pub fn pool(&self) -> &Pool {
        &self.pools[crate::workers::current().unwrap_or(0) % self.pools.len()]
    }

    /// Whether `waypoint`, as a destination names it, is this waypoint.
    pub fn is_me(&self, waypoint: &Waypoint) -> bool {
        match &waypoint.address {
            WaypointAddress::Service(key) => *key == self.service,
            WaypointAddress::Ip(address) => self
                .state
                .service_by_vip(address.ip)
                .is_some_and(|(service, _)| service.key() == self.service),
        }
    }
}

/// How the waypoint's pool dials endpoint pods: from its own pod, whose traffic no capture
/// touches (the key's source is the same for every connection).
#[derive(Debug)]
pub struct OwnDial;

/// How long a TCP connect to an endpoint may take (the kernel's own SYN retries would take
/// minutes against a black hole).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

impl Dial for OwnDial {
    fn source(&self) -> std::net::IpAddr {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }

    async fn dial(&self, peer: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let tcp = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(peer)).await.map_err(
            |_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not connected within {DIAL_TIMEOUT:?}"),
                )
            },
        )??;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

/// How long the spans still queued at shutdown may take to be exported, after the drain.
const SPAN_FLUSH: Duration = Duration::from_secs(2);

/// Why the waypoint cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the CA client")]
    Ca(#[source] weft_proxy::identity::ca::Error),
    #[error("starting the worker threads")]
    Workers(#[source] std::io::Error),
    #[error("binding {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Who the waypoint's spans say they come from: `<gateway>.<namespace>` as Istio names a
/// proxy's service, and its pod.
fn resource(config: &Config) -> weft_api::otlp::Resource {
    use crate::trace::otlp::attribute;
    let (namespace, name) = config.gateway.split_once('/').unwrap_or(("", &config.gateway));
    let mut attributes = vec![
        attribute("service.name", format!("{name}.{namespace}")),
        attribute("service.version", env!("CARGO_PKG_VERSION")),
        attribute("k8s.namespace.name", namespace),
    ];
    for (key, value) in [("k8s.pod.name", &config.proxy.pod_name), ("k8s.node.name", &config.proxy.node_name)]
    {
        if !value.is_empty() {
            attributes.push(attribute(key, value.as_str()));
        }
    }
    weft_api::otlp::Resource { attributes, dropped_attributes_count: 0 }
}

/// Runs until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let state = Arc::new(State::on_network(&config.proxy.network));
    let (routes, policies) = (Arc::new(Table::new(ROUTES)), Arc::new(Table::new(POLICIES)));
    let authentications = Arc::new(Table::new(AUTHENTICATIONS));
    let xds = weft_proxy::xds::Config {
        address: config.xds_address.clone(),
        root_file: config.root_file.clone(),
        token_file: config.token_file.clone(),
        proxy: config.proxy.clone(),
        extra: vec![routes.clone(), policies.clone(), authentications.clone()],
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(weft_proxy::xds::run(xds, state.clone()));
    let ca = GrpcCa::new(&config.ca_address, &config.root_file, &config.token_file, &config.proxy)
        .map_err(Error::Ca)?
        .for_own_identity();
    let metrics = crate::metrics::Metrics::default();
    let tracer = config.tracing.as_ref().and_then(|settings| {
        let counters = crate::trace::otlp::Counters {
            exported: metrics.spans("exported"),
            dropped: metrics.spans("dropped"),
            failed: metrics.spans("failed"),
        };
        // A mistyped setting costs the traces, never the waypoint: it serves on untraced.
        match crate::trace::Tracer::start(settings, resource(&config), counters) {
            Ok(tracer) => {
                tracing::info!(endpoint = %settings.endpoint, sampling = %settings.sampling, "tracing requests");
                Some(tracer)
            }
            Err(error) => {
                tracing::error!(%error, "tracing is off");
                None
            }
        }
    });
    let context = Arc::new(Context {
        trust_domain: config.trust_domain.clone(),
        service: config.service.clone(),
        identity: config.identity.clone(),
        state,
        routes,
        policies,
        authentications,
        gateway: config.gateway.clone(),
        via: crate::forward::via_entry(&config.gateway),
        address: config.proxy.ip.parse().ok(),
        identities: Manager::new(Arc::new(ca), config.cert_ttl),
        pools: (0..config.workers.max(1)).map(|_| Pool::new(PoolSettings::default(), |_| {})).collect(),
        budgets: crate::retry::Budgets::default(),
        connection_caps: crate::connections::Caps::default(),
        in_flight: Arc::default(),
        mirrors_in_flight: Arc::new(tokio::sync::Semaphore::new(crate::forward::MAX_MIRRORS_IN_FLIGHT)),
        limiter: crate::traffic::Limiter::default(),
        outliers: crate::breaker::Outliers::default(),
        turns: crate::balance::Turns::default(),
        metrics,
        tracer,
        drain: tokio::sync::watch::Sender::new(false),
    });
    for worker in 0..context.pools.len() {
        let context = context.clone();
        tasks.spawn(async move { context.pools[worker].release_idle_periodically().await });
    }
    let bind = |what, addr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, source })
    };
    let listener = bind("HBONE", config.listen).await?;
    let source: Arc<dyn weft_api::admin::Source> = Arc::new(Endpoints(context.clone()));
    use weft_api::admin::Endpoints as Serves;
    for (what, addr, serves) in [
        ("metrics", config.admin.metrics, Serves::METRICS),
        ("readiness", config.admin.readiness, Serves::READY),
        ("admin", config.admin.admin, Serves::CONFIG_DUMP),
    ] {
        tasks.spawn(weft_api::admin::serve(bind(what, addr).await?, source.clone(), serves));
    }
    tracing::info!(identity = %context.identity, service = %context.service, listen = %config.listen, "waypoint listening");
    let workers = Workers::start(config.workers).map_err(Error::Workers)?;
    let inbound = Arc::new(Inbound::new(context.clone()));
    tokio::select! {
        () = serve(listener, &context, &workers, &inbound) => {}
        () = shutdown => {}
    }
    // Drain: the listener is closed (a replacement pod takes new connections), open ones
    // finish their requests until the deadline, then the process ends and cuts them.
    context.drain.send_replace(true);
    tracing::info!(deadline = ?config.drain, open = workers.open(), "draining");
    match tokio::time::timeout(config.drain, workers.drain()).await {
        Ok(()) => tracing::info!("drained: every connection ended"),
        Err(_) => {
            tracing::warn!(open = workers.open(), "drain deadline reached; closing the remaining connections")
        }
    }
    // The last requests' spans go before the process does.
    if let Some(tracer) = &context.tracer {
        tracer.flush(SPAN_FLUSH).await;
    }
    tasks.abort_all();
    Ok(())
}

/// Accepts HBONE connections and hands them to the workers with the acceptor presenting the
/// waypoint's current certificate, until dropped.
async fn serve(
    listener: tokio::net::TcpListener,
    context: &Context,
    workers: &Workers,
    inbound: &Arc<Inbound>,
) {
    let mut current = CurrentAcceptor::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "HBONE accept failed");
                // Out of descriptors or the like: don't spin on it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = match context.identities.fetch(&context.identity).await {
            Ok(cert) => current.presenting(cert).map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let acceptor = match acceptor {
            Ok(acceptor) => acceptor,
            Err(error) => {
                tracing::warn!(identity = %context.identity, %error, "no certificate: HBONE connection refused");
                continue;
            }
        };
        // Off this thread's reactor, onto the worker's.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%peer, %error, "HBONE connection lost before it was served");
                continue;
            }
        };
        let handler = inbound.clone();
        let served = workers
            .spawn(async move {
                let served = match tokio::net::TcpStream::from_std(tcp) {
                    Ok(tcp) => weft_proxy::hbone::server::serve_connection(tcp, acceptor, handler)
                        .await
                        .map_err(|error| error.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                if let Err(error) = served {
                    tracing::info!(%peer, %error, "HBONE connection failed");
                }
            })
            .is_some();
        if !served {
            tracing::debug!(%peer, "draining: HBONE connection dropped");
        }
    }
}

/// What the admin endpoints show.
struct Endpoints(Arc<Context>);

impl weft_api::admin::Source for Endpoints {
    fn metrics(&self) -> String {
        let mut text = self.0.metrics.encode();
        weft_proxy::census::add_to(&mut text);
        text
    }

    /// Ready once the configuration (addresses, policies, routes, L7 policies and request
    /// authentication) has arrived,
    /// and until it drains.
    fn ready(&self) -> bool {
        let context = &self.0;
        !*context.drain.borrow()
            && context.state.is_synced()
            && context.routes.is_synced()
            && context.policies.is_synced()
            && context.authentications.is_synced()
    }

    fn config_dump(&self) -> String {
        let context = &self.0;
        serde_json::json!({
            "identity": context.identity.to_string(),
            "service": context.service,
            "mesh": context.state.dump(),
            "routes": context.routes.names(),
            "policies": context.policies.names(),
            "request_authentications": context.authentications.names(),
        })
        .to_string()
    }
}
