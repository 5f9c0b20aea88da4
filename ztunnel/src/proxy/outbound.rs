//! Outbound (15001): a pod's captured connection goes to its original destination — through an
//! HBONE tunnel when the destination is a meshed workload, in plaintext otherwise. A service VIP
//! is resolved to one of its healthy endpoints (or, when none is, one still serving), round
//! robin, moving on to the next when one cannot be reached. A Service or workload with a
//! waypoint is reached only through it: the tunnel goes to one of the waypoint's pods, the
//! CONNECT naming the original destination; without a reachable waypoint the connection is
//! refused, never sent around it. Nothing is decided before the configuration is complete: an
//! unknown destination might be a workload that must be tunnelled.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::{net::TcpListener, task::JoinSet};

use super::{Context, NetnsDial, Peer, Pod, canonical, connect_in, original_dst};
use weft_proxy::{
    hbone::{self, client::Origin, server::drained},
    identity::{Expected, Identity},
    relay,
    state::{Service, TunnelProtocol, Waypoint, Workload},
    trace_context::SpanContext,
};

use crate::{inpod::netns::Netns, metrics::Reporter};

/// Endpoints of a service tried per connection.
const ATTEMPTS: usize = 3;

pub async fn serve(
    listener: TcpListener,
    listening: super::Listening,
    context: Arc<Context>,
    pod: Arc<Pod>,
    admission: super::Admission,
    netns: Arc<Netns>,
) {
    let mut connections = JoinSet::new();
    let mut draining = Some(context.drain.subscribe());
    loop {
        tokio::select! {
            () = drained(&mut draining) => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let Some(admitted) = admission.admit(&context, Reporter::Source, &pod, peer) else { continue };
                    // The proxy relays whatever the app wrote at once; Nagle would delay it twice.
                    let _ = client.set_nodelay(true);
                    let (context, pod, netns) = (context.clone(), pod.clone(), netns.clone());
                    connections.spawn(proxy(client, canonical(peer), admitted, context, pod, netns));
                }
                Err(error) => tracing::warn!(pod = %pod.uid, %error, "outbound accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    super::finish(listener, listening, connections).await;
}

/// Why an outbound connection failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("no original destination")]
    OriginalDst(#[source] std::io::Error),
    #[error("no configuration from the control plane yet")]
    NotSynced,
    #[error("service {service} has no port {port}")]
    NoSuchPort { service: String, port: u16 },
    #[error("service {0} has no healthy endpoint for this port")]
    NoEndpoints(String),
    #[error("{0} must be reached through its waypoint, which has no ready pod")]
    NoWaypoint(String),
    #[error("workload {0} speaks a tunnel protocol this proxy does not")]
    UnsupportedProtocol(String),
    #[error("certificate")]
    Certificate(#[from] weft_proxy::identity::ca::Error),
    #[error(transparent)]
    Tunnel(#[from] hbone::client::Error),
    #[error("upstream")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The `reason` label of the failure metric.
    fn reason(&self) -> &'static str {
        match self {
            Error::OriginalDst(_) => "no_original_destination",
            Error::NotSynced => "no_config",
            Error::NoSuchPort { .. } => "no_such_port",
            Error::NoEndpoints(_) => "no_endpoints",
            Error::NoWaypoint(_) => "no_waypoint",
            Error::UnsupportedProtocol(_) => "unsupported_protocol",
            Error::Certificate(_) => "certificate",
            Error::Tunnel(_) => "tunnel",
            Error::Io(_) => "upstream",
        }
    }
}

/// Where a connection may go.
#[derive(Debug)]
enum Route {
    /// A meshed workload, over HBONE to `addr`.
    Tunnel(Arc<Workload>, SocketAddr),
    /// The waypoint pod `waypoint`, at `ip`, over HBONE naming the original destination; it
    /// must prove the waypoint's identity.
    Waypoint(Arc<Workload>, IpAddr, Identity),
    /// Plaintext to `addr` (a workload outside the mesh, or outside the cluster).
    Direct(SocketAddr),
}

/// The routes for `target` from `client` (the source workload, when the proxy knows it), in the
/// order to try them, and the Service whose address `target` is, if it is one.
fn routes(
    context: &Context,
    client: Option<&Workload>,
    target: SocketAddr,
) -> Result<(Vec<Route>, Option<Arc<Service>>), Error> {
    let state = &context.state;
    let Some((service, endpoints)) = state.service_by_vip(target.ip()) else {
        let route = match state.workload_by_ip(target.ip()) {
            Some(workload) if workload.waypoint.is_some() => {
                let waypoint = workload.waypoint.as_ref().expect("invariant: checked just above");
                return Ok((through_waypoint(context, client, waypoint, &workload.uid, target)?, None));
            }
            Some(workload) if workload.protocol == TunnelProtocol::Hbone => Route::Tunnel(workload, target),
            Some(workload) if workload.protocol == TunnelProtocol::Unsupported => {
                return Err(Error::UnsupportedProtocol(workload.uid.clone()));
            }
            _ => Route::Direct(target),
        };
        return Ok((vec![route], None));
    };
    if !service.ports.contains(&target.port()) {
        return Err(Error::NoSuchPort { service: service.key(), port: target.port() });
    }
    let key = service.key();
    if let Some(waypoint) = &service.waypoint {
        return Ok((through_waypoint(context, client, waypoint, &key, target)?, Some(service)));
    }
    let v4 = target.ip().to_canonical().is_ipv4();
    // Each endpoint serving this port, at its address of the VIP's family when it has one.
    let mut members: Vec<(Arc<Workload>, SocketAddr, bool)> = endpoints
        .into_iter()
        .filter_map(|workload| {
            let mapping = workload.services.get(&key)?.iter().find(|m| m.service_port == target.port())?;
            let same_family = workload.addresses.iter().find(|ip| ip.is_ipv4() == v4).copied();
            let addr =
                SocketAddr::new(same_family.or(workload.addresses.first().copied())?, mapping.target_port);
            Some((workload, addr, same_family.is_some()))
        })
        .collect();
    // Healthy endpoints; when none is, the others: from Weft's control plane those are endpoints
    // still serving while they terminate, which kube-proxy falls back to as well.
    if !service.allow_unhealthy && members.iter().any(|(workload, ..)| workload.healthy) {
        members.retain(|(workload, ..)| workload.healthy);
    }
    // A dual-stack service's endpoints outside pods come one family each: the VIP's first.
    if members.iter().any(|(.., same_family)| *same_family) {
        members.retain(|(.., same_family)| *same_family);
    }
    // An endpoint this proxy cannot speak to is no route (never plaintext instead).
    members.retain(|(workload, ..)| workload.protocol != TunnelProtocol::Unsupported);
    if members.is_empty() {
        return Err(Error::NoEndpoints(key));
    }
    let start = context.next_endpoint(&key) % members.len();
    members.rotate_left(start);
    // The closest to the client first, when the Service prefers close ones (round robin
    // within each distance): farther ones are tried only when the near ones fail.
    if let Some(preference) = &service.locality_preference {
        members = preference.nearest_first(client, members, |(workload, ..)| workload);
    }
    let mut routes: Vec<Route> = members
        .into_iter()
        .map(|(workload, addr, _)| match workload.protocol {
            TunnelProtocol::None => Route::Direct(addr),
            _ => Route::Tunnel(workload, addr),
        })
        .collect();
    if routes.is_empty() {
        return Err(Error::NoEndpoints(key));
    }
    routes.truncate(ATTEMPTS);
    Ok((routes, Some(service)))
}

/// The pods of `waypoint`, in front of `behind` (a Service's key or a workload's uid), to try
/// for `target` in turn: healthy ones, at an address of the target's family when they have one.
fn through_waypoint(
    context: &Context,
    client: Option<&Workload>,
    waypoint: &Waypoint,
    behind: &str,
    target: SocketAddr,
) -> Result<Vec<Route>, Error> {
    let no_waypoint = || Error::NoWaypoint(behind.to_owned());
    let (service, pods) = context.state.waypoint(waypoint).ok_or_else(no_waypoint)?;
    let identity =
        context.state.waypoint_identity(waypoint, &context.trust_domain).ok_or_else(no_waypoint)?;
    let v4 = target.ip().to_canonical().is_ipv4();
    let mut pods: Vec<Arc<Workload>> = pods.into_iter().filter(|pod| pod.healthy).collect();
    if pods.is_empty() {
        return Err(no_waypoint());
    }
    let start = context.next_endpoint(&service.key()) % pods.len();
    pods.rotate_left(start);
    // The waypoint's own Service may prefer pods close to the client, as any Service.
    if let Some(preference) = &service.locality_preference {
        pods = preference.nearest_first(client, pods, |pod| pod);
    }
    let mut routes: Vec<Route> = pods
        .into_iter()
        .filter_map(|pod| {
            let ip = pod.addresses.iter().find(|ip| ip.is_ipv4() == v4).or(pod.addresses.first()).copied()?;
            Some(Route::Waypoint(pod, ip, identity.clone()))
        })
        .collect();
    if routes.is_empty() {
        return Err(no_waypoint());
    }
    routes.truncate(ATTEMPTS);
    Ok(routes)
}

/// One captured connection's task, from its accept to its close; `admitted` counts it against
/// its pod's limit meanwhile. An async block, not an async fn: a fn's future keeps its
/// arguments twice (as passed, and as moved into its body), and this task's size is what every
/// open connection costs.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub(super) fn proxy(
    mut client: tokio::net::TcpStream,
    peer: SocketAddr,
    admitted: tokio::sync::OwnedSemaphorePermit,
    context: Arc<Context>,
    pod: Arc<Pod>,
    netns: Arc<Netns>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let started = std::time::Instant::now();
        // Borrows what the task owns, rather than take it as an async fn's arguments would.
        let proxied = async {
            // First: the source's name for metrics and baggage is its workload's, once known.
            // Boxed, and waited for only while the configuration is incomplete: inline, its
            // timer would size the connection's task for as long as it lives.
            if !context.state.is_synced() {
                Box::pin(tokio::time::timeout(super::CONFIG_WAIT, context.state.synced()))
                    .await
                    .map_err(|_| Error::NotSynced)?;
            }
            // Read after that wait, so the task does not keep it through the relay too.
            let target = original_dst(&client).map_err(Error::OriginalDst)?;
            // Boxed: the connect phase — the routes it may try (a Service's endpoints), what a
            // CONNECT says, its futures, the identities and names the labels are made of — is
            // gone before the relay begins; inline it would size the connection's task for as
            // long as it lives.
            let Opened { mut carried, live } = Box::pin(opened(&context, &netns, &pod, peer, target)).await?;
            // The access lines say how long the connection took to open and to end, so a slow
            // hop stands out (as Istio's `duration`).
            let connect_ms = started.elapsed().as_millis() as u64;
            // The live entry holds what the close needs: the target, the counts and the labels.
            let connection = &live.connection;
            // Matched by reference, and the relay borrows the stream: moved out instead, the
            // task would keep both the moved values and the places they came from.
            match &mut carried {
                Carried::Tunnel { tunnel, addr, via, traceparent } => {
                    let relayed = relay::hbone(&mut client, &mut tunnel.stream, &connection.counts).await;
                    let (sent, received) = connection.counts.get();
                    context.metrics.closed(&connection.labels, sent, received);
                    relayed?;
                    let (source, destination) = (connection.source(), connection.destination());
                    let duration_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(target: "weft_ztunnel::access", src = %source, client = %peer, dst = %destination, target = %connection.target, upstream = %addr, %via, sent, received, connect_ms, duration_ms, trace = %traceparent, "outbound via HBONE closed");
                }
                Carried::Direct { upstream, addr } => {
                    let relayed = relay::tcp(&mut client, upstream, &connection.counts).await;
                    let (sent, received) = connection.counts.get();
                    context.metrics.closed(&connection.labels, sent, received);
                    relayed?;
                    let duration_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(target: "weft_ztunnel::access", pod = %pod.uid, client = %peer, target = %connection.target, upstream = %addr, sent, received, connect_ms, duration_ms, "outbound passthrough closed");
                }
            }
            Ok::<(), Error>(())
        };
        if let Err(error) = proxied.await {
            context.metrics.failed(Reporter::Source, error.reason());
            let cause = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
            tracing::info!(pod = %pod.uid, client = %peer, %error, %cause, "outbound connection failed");
        }
        drop(admitted);
    }
}

/// A connection opened, with only what its relay and its close need.
struct Opened<'a> {
    carried: Carried,
    /// Its entry among the live connections: its pod, its metrics' labels (shared with the
    /// connections that have the same; they name its ends' identities), its counts.
    live: super::live::Registration<'a>,
}

/// What an opened connection relays to.
enum Carried {
    Tunnel {
        tunnel: hbone::pool::Tunnel,
        /// The address the CONNECT names.
        addr: SocketAddr,
        /// The peer's address: the workload's, or the waypoint pod's.
        via: IpAddr,
        traceparent: SpanContext,
    },
    Direct {
        upstream: tokio::net::TcpStream,
        addr: SocketAddr,
    },
}

/// Opens the way for a connection of `pod` from `peer` to `target`, and names it (its labels,
/// its entry among the live connections).
async fn opened<'a>(
    context: &'a Context,
    netns: &Netns,
    pod: &Arc<Pod>,
    peer: SocketAddr,
    target: SocketAddr,
) -> Result<Opened<'a>, Error> {
    let source = pod.identity(&context.trust_domain);
    let name = context.metrics_name(pod, peer.ip());
    let captured = Captured { peer, target, pod, source: &source, name: &name };
    Ok(match open(context, netns, &captured).await? {
        Way::Tunnel { tunnel, workload, addr, via, destination, traceparent } => {
            let labels = context.metrics.opened(context.labels(
                Reporter::Source,
                Some((&name, &pod.namespace, &source)),
                Some((workload.metrics_name(), &workload.namespace, &destination)),
                true,
            ));
            let live = context.live.register(pod.clone(), labels, target);
            Opened { carried: Carried::Tunnel { tunnel, addr, via, traceparent }, live }
        }
        Way::Direct { upstream, addr } => {
            let labels = context.metrics.opened(context.labels(
                Reporter::Source,
                Some((&name, &pod.namespace, &source)),
                None,
                false,
            ));
            let live = context.live.register(pod.clone(), labels, target);
            Opened { carried: Carried::Direct { upstream, addr }, live }
        }
    })
}

/// A captured connection: whose it is, and where it was going.
struct Captured<'a> {
    peer: SocketAddr,
    target: SocketAddr,
    pod: &'a Pod,
    source: &'a Identity,
    name: &'a str,
}

/// The way a connection goes, as the connect phase opened it.
enum Way {
    Tunnel {
        tunnel: hbone::pool::Tunnel,
        /// The workload tunnelled to (a waypoint's pod, through one), for the labels.
        workload: Arc<Workload>,
        /// The address the CONNECT names.
        addr: SocketAddr,
        /// The peer's address: the workload's, or the waypoint pod's.
        via: IpAddr,
        /// The identity expected of the peer (a Service's alternative names left out: the
        /// labels and the access line name the workload's).
        destination: Identity,
        traceparent: SpanContext,
    },
    Direct {
        upstream: tokio::net::TcpStream,
        addr: SocketAddr,
    },
}

/// Tries the connection's routes in turn until one opens.
async fn open(context: &Context, netns: &Netns, captured: &Captured<'_>) -> Result<Way, Error> {
    let (peer, target, pod) = (captured.peer, captured.target, captured.pod);
    // The client's own workload (its address is its pod's), for a Service preferring close
    // endpoints.
    let source_workload = context.state.workload_by_ip(peer.ip()).filter(|workload| workload.is(pod.local()));
    let (routes, service) = routes(context, source_workload.as_deref(), target)?;
    // What a CONNECT says of this connection, made once for whichever endpoint takes it, and
    // only if one is tunnelled to.
    let mut said: Option<(Origin, SpanContext)> = None;
    let mut last_error = None;
    for route in routes {
        let (workload, addr, via) = match route {
            Route::Direct(addr) => match Box::pin(connect_in(netns, addr)).await {
                Ok(upstream) => return Ok(Way::Direct { upstream, addr }),
                Err(error) => {
                    tracing::info!(%addr, %error, "endpoint unreachable; trying the next");
                    last_error = Some(Error::Io(error));
                    continue;
                }
            },
            Route::Tunnel(workload, addr) => {
                let expected = Expected {
                    workload: workload.identity(&context.trust_domain),
                    alternatives: service
                        .as_ref()
                        .map(|service| service.subject_alt_names.clone())
                        .unwrap_or_default(),
                };
                (workload, addr, Peer { ip: addr.ip(), expected })
            }
            Route::Waypoint(waypoint, ip, identity) => {
                (waypoint, target, Peer { ip, expected: identity.into() })
            }
        };
        // Boxed apart too, though this whole phase is boxed: one box holding the handshake's
        // states as well measured worse for idle connections (10k idle on the client node,
        // 3.54–4.04 KiB each against 3.58–3.61), a large passing block between lasting small ones.
        let cert = Box::pin(context.identities.fetch(captured.source)).await?;
        let (origin, traceparent) = said.get_or_insert_with(|| {
            let baggage = Origin::baggage_of(&pod.namespace, captured.name);
            let service_host = service.as_ref().map(|service| service.hostname.clone());
            (Origin { source: peer, service_host, baggage, via: String::new() }, Origin::traceparent())
        });
        let dial = NetnsDial { netns, source: peer.ip() };
        match Box::pin(context.pool.open(&dial, &cert, &via, addr, origin, &traceparent.to_string())).await {
            Ok(tunnel) => {
                let traceparent = *traceparent;
                let destination = via.expected.workload;
                return Ok(Way::Tunnel { tunnel, workload, addr, via: via.ip, destination, traceparent });
            }
            Err(error) => {
                tracing::info!(%addr, via = %via.ip, %error, "endpoint unreachable; trying the next");
                last_error = Some(Error::Tunnel(error));
            }
        }
    }
    Err(last_error.unwrap_or(Error::NoEndpoints(target.to_string())))
}
