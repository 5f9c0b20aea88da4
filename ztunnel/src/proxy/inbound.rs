//! Inbound: HBONE from other proxies (15008) and plaintext from outside the mesh (15006), both
//! authorized by the pod's policies ([`weft_proxy::authz`]) and then delivered to the app inside the
//! pod from the client's address where the pod allows it ([`super::deliver`]), else from the
//! pod's own.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use super::{Context, InboundPlaintext, Pod, canonical, deliver::Deliverer, is_proxy_port};
use weft_proxy::{
    authz::Connection,
    hbone::server::{ConnectRequest, Handler, Refusal, Relayed, drained},
    identity::Identity,
    tls::CurrentAcceptor,
};

use crate::metrics::Reporter;

/// Accepts HBONE connections for one pod, presenting its current certificate: the TLS
/// configuration is rebuilt whenever the certificate manager hands out a renewed one.
pub async fn serve_hbone(
    listener: TcpListener,
    listening: super::Listening,
    context: Arc<Context>,
    pod: Arc<Pod>,
    admission: super::Admission,
    addresses: Vec<IpAddr>,
    deliverer: Arc<Deliverer>,
) {
    let identity = pod.identity(&context.trust_domain);
    let handler = Arc::new(Delivery { context: context.clone(), pod, addresses, deliverer });
    let mut current = CurrentAcceptor::default();
    let mut connections = JoinSet::new();
    let mut draining = Some(context.drain.subscribe());
    loop {
        tokio::select! {
            () = drained(&mut draining) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let pod = &handler.pod;
                    let Some(admitted) = admission.admit(&context, Reporter::Destination, pod, peer) else { continue };
                    // Small frames (CONNECT answers, window updates) must not wait for an ACK.
                    let _ = tcp.set_nodelay(true);
                    let acceptor = match acceptor_for(&context, &identity, &mut current).await {
                        Ok(acceptor) => acceptor,
                        Err(error) => {
                            tracing::warn!(%identity, %error, "no certificate: HBONE connection refused");
                            continue;
                        }
                    };
                    let handler = handler.clone();
                    connections.spawn(async move {
                        let _admitted = admitted;
                        if let Err(error) = weft_proxy::hbone::server::serve_connection(tcp, acceptor, handler.clone()).await {
                            handler.context.metrics.failed(Reporter::Destination, "hbone_connection");
                            tracing::info!(%peer, %error, "HBONE connection failed");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "HBONE accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    super::finish(listener, listening, connections).await;
}

/// The acceptor for the identity's current certificate, rebuilt only when it changed.
async fn acceptor_for(
    context: &Context,
    identity: &Identity,
    current: &mut CurrentAcceptor,
) -> Result<weft_proxy::tls::Acceptor, String> {
    let cert = context.identities.fetch(identity).await.map_err(|error| error.to_string())?;
    current.presenting(cert).map_err(|error| error.to_string())
}

/// Delivers HBONE streams to the app of one pod.
pub(super) struct Delivery {
    context: Arc<Context>,
    pod: Arc<Pod>,
    addresses: Vec<IpAddr>,
    deliverer: Arc<Deliverer>,
}

impl Delivery {
    fn labels(&self, request: &ConnectRequest) -> crate::metrics::ConnectionLabels {
        let source = request.forwarded_for.and_then(|ip| self.context.state.workload_by_ip(ip));
        let source = match &source {
            Some(workload) => (workload.metrics_name(), workload.namespace.as_str(), &request.peer.identity),
            None => ("unknown", request.peer.identity.namespace.as_str(), &request.peer.identity),
        };
        let destination = self.pod.identity(&self.context.trust_domain);
        let name = self.context.metrics_name(&self.pod, canonical(request.target).ip());
        self.context.labels(
            Reporter::Destination,
            Some(source),
            Some((&name, &self.pod.namespace, &destination)),
            true,
        )
    }
}

impl Handler for Delivery {
    type Upstream = TcpStream;

    /// A Service's authority (`hostname:port`, as Istio's peers send through a network's
    /// gateway or from a waypoint) reaches this pod on the port the Service maps that service
    /// port to, as Istio's ztunnel resolves it; only a Service this pod backs. Like an address,
    /// it waits (within [`super::CONFIG_WAIT`]) for the configuration to hold the pod.
    async fn resolve(&self, request: &mut ConnectRequest) -> Result<(), Refusal> {
        let Some(service) = &request.service else { return Ok(()) };
        let ip = canonical(request.target).ip();
        let resolved = match self.context.synced_within_config_wait().await {
            Some(patience) => {
                let (pod, hostname) = (self.pod.local(), &service.hostname);
                self.context.state.service_target_port_known(pod, ip, hostname, service.port, patience).await
            }
            None => Err(weft_proxy::state::Unresolved::NoWorkload),
        };
        match resolved {
            Ok(port) => {
                request.target = SocketAddr::new(ip, port);
                Ok(())
            }
            Err(error @ weft_proxy::state::Unresolved::NoWorkload) => {
                self.context.metrics.failed(Reporter::Destination, "incomplete_config");
                Err(Refusal::Unavailable(error.to_string()))
            }
            Err(error @ weft_proxy::state::Unresolved::NotBacked) => {
                self.context.metrics.failed(Reporter::Destination, "wrong_pod");
                Err(Refusal::BadRequest(format!("{}:{}: {error}", service.hostname, service.port)))
            }
        }
    }

    async fn connect(&self, request: ConnectRequest) -> Result<TcpStream, Refusal> {
        let target = canonical(request.target);
        if !self.addresses.contains(&target.ip()) {
            self.context.metrics.failed(Reporter::Destination, "wrong_pod");
            return Err(Refusal::BadRequest(format!("{target} is not this pod")));
        }
        if is_proxy_port(target.port()) {
            self.context.metrics.failed(Reporter::Destination, "proxy_port");
            return Err(Refusal::BadRequest(format!("{target} is the proxy's own port")));
        }
        let connection = Connection {
            source: Some(&request.peer.identity),
            source_ip: request.peer.source.ip(),
            destination: target,
        };
        let Some(verdict) = self.context.authorize(&self.pod, &connection).await else {
            self.context.metrics.failed(Reporter::Destination, "not_synced");
            return Err(Refusal::Unavailable("no complete configuration yet".into()));
        };
        if !verdict.allowed() {
            // What the configuration lacks is a 503, as for an unknown workload on the wire: it
            // may yet arrive. A policy's refusal is a 401.
            let (reason, refusal) = if verdict.incomplete() {
                ("incomplete_config", Refusal::Unavailable(verdict.to_string()))
            } else {
                ("policy_denied", Refusal::Denied(verdict.to_string()))
            };
            self.context.metrics.failed(Reporter::Destination, reason);
            tracing::info!(src = %request.peer.identity, source = %request.peer.source, %target, %verdict, trace = request.traceparent.as_ref().map(tracing::field::display), "inbound HBONE denied");
            return Err(refusal);
        }
        tracing::debug!(peer = %request.peer.identity, %target, %verdict, "inbound HBONE stream");
        // The client is the HBONE connection's source: its proxy connects from inside the
        // client's pod, and policy has just been decided on that address.
        let client = SocketAddr::new(request.peer.source.ip(), 0);
        let upstream = self.deliverer.connect(target, client).await.map_err(|error| {
            self.context.metrics.failed(Reporter::Destination, "upstream");
            Refusal::Unavailable(format!("{target}: {error}"))
        })?;
        self.context.metrics.opened(self.labels(&request));
        Ok(upstream)
    }

    /// An async block, not an async fn: every open stream's task holds this wait, and a fn's
    /// future would keep its arguments twice.
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
    fn revoked(&self, request: &ConnectRequest) -> impl Future<Output = Refusal> + Send {
        async move {
            let connection = || Connection {
                source: Some(&request.peer.identity),
                source_ip: request.peer.source.ip(),
                destination: request.target,
            };
            let verdict = self.context.revoked(&self.pod, connection).await;
            self.context.metrics.failed(Reporter::Destination, "policy_revoked");
            tracing::info!(src = %request.peer.identity, source = %request.peer.source, target = %request.target, %verdict, "inbound HBONE revoked");
            Refusal::Denied(verdict.to_string())
        }
    }

    fn closed(&self, request: &ConnectRequest, relayed: &Relayed) {
        let Relayed { sent, received, .. } = *relayed;
        // `sent` went to the app: it is what the source sent.
        self.context.metrics.closed(&self.labels(request), sent, received);
        let destination = self.pod.identity(&self.context.trust_domain);
        let (connect_ms, duration_ms) =
            (relayed.connecting.as_millis() as u64, relayed.duration.as_millis() as u64);
        tracing::info!(target: "weft_ztunnel::access", src = %request.peer.identity, dst = %destination, target = %request.target, sent, received, connect_ms, duration_ms, trace = request.traceparent.as_ref().map(tracing::field::display), "inbound HBONE closed");
    }

    fn draining(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.context.drain.subscribe())
    }

    fn tls_established(&self, handshake: weft_proxy::hbone::Handshake) {
        self.context.metrics.handshake(Reporter::Destination, handshake);
    }
}

/// Plaintext from outside the mesh, captured to 15006: delivered in PERMISSIVE, closed in STRICT.
pub async fn serve_plaintext(
    listener: TcpListener,
    listening: super::Listening,
    context: Arc<Context>,
    pod: Arc<Pod>,
    admission: super::Admission,
    deliverer: Arc<Deliverer>,
) {
    let mut connections = JoinSet::new();
    let mut draining = Some(context.drain.subscribe());
    loop {
        tokio::select! {
            () = drained(&mut draining) => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let _ = client.set_nodelay(true);
                    if context.plaintext == InboundPlaintext::Deny {
                        tracing::info!(%peer, "plaintext inbound refused (strict)");
                        continue;
                    }
                    let Some(admitted) = admission.admit(&context, Reporter::Destination, &pod, peer) else { continue };
                    let (context, pod, deliverer) = (context.clone(), pod.clone(), deliverer.clone());
                    connections.spawn(plaintext(client, peer, admitted, context, pod, deliverer));
                }
                Err(error) => tracing::warn!(%error, "plaintext accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    super::finish(listener, listening, connections).await;
}

/// One plaintext connection's task, from its accept to its close; `admitted` counts it against
/// its pod's limit meanwhile. An async block, not an async fn (which would keep its arguments
/// twice), with its policy check and its connect boxed: this task's size is what every open
/// connection costs.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub(super) fn plaintext(
    mut client: TcpStream,
    peer: SocketAddr,
    admitted: tokio::sync::OwnedSemaphorePermit,
    context: Arc<Context>,
    pod: Arc<Pod>,
    deliverer: Arc<Deliverer>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // Inbound capture keeps the destination: the local address is the target.
        let result = async {
            // The target is the connection's destination: in a block, so the task keeps it
            // once, not again beside it.
            let connection = {
                let destination = canonical(client.local_addr()?);
                if is_proxy_port(destination.port()) {
                    return Err(std::io::Error::other(format!("{destination} is the proxy's own port")));
                }
                Connection { source: None, source_ip: canonical(peer).ip(), destination }
            };
            // In a block of its own, so the task does not keep the verdict through the relay.
            {
                let verdict = Box::pin(context.authorize(&pod, &connection)).await;
                if !verdict.as_ref().is_some_and(weft_proxy::authz::Verdict::allowed) {
                    let reason = match &verdict {
                        None => "not_synced",
                        Some(verdict) if verdict.incomplete() => "incomplete_config",
                        Some(_) => "policy_denied",
                    };
                    context.metrics.failed(Reporter::Destination, reason);
                    let verdict = verdict.map_or_else(
                        || "no complete configuration yet".to_owned(),
                        |verdict| verdict.to_string(),
                    );
                    tracing::info!(%peer, target = %connection.destination, %verdict, "plaintext inbound denied");
                    return Ok(());
                }
            }
            let mut upstream = Box::pin(deliverer.connect(connection.destination, canonical(peer))).await?;
            let counts = weft_proxy::relay::Counts::default();
            tokio::select! {
                relayed = weft_proxy::relay::tcp(&mut client, &mut upstream, &counts) => relayed,
                verdict = context.revoked(&pod, || connection) => {
                    context.metrics.failed(Reporter::Destination, "policy_revoked");
                    tracing::info!(%peer, target = %connection.destination, %verdict, "plaintext inbound revoked");
                    Ok(())
                }
            }
        };
        if let Err(error) = result.await {
            tracing::info!(%peer, %error, "plaintext inbound failed");
        }
        drop(admitted);
    }
}
