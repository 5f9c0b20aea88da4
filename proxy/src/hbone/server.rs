//! The HBONE server (port 15008 in each pod): TLS with the pod's identity, then HTTP/2 CONNECT
//! streams. Each stream is checked and connected upstream by a [`Handler`] before it is
//! answered; only then do bytes flow.
use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::{net::TcpStream, task::JoinSet};

use super::{MAX_HEADER_LIST, Stream, window};
use crate::{
    identity::Identity,
    tls::{self, Acceptor, records::TlsStream},
    trace_context::SpanContext,
};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams per connection we allow (Istio's server side: 200).
pub const MAX_STREAMS: u32 = 200;
/// Streams a client may reset (before or while we connect them upstream) per
/// [`RESET_WINDOW`] before its connection is closed with ENHANCE_YOUR_CALM: the HTTP/2
/// "rapid reset" attack opens and cancels streams to make the server do work for nothing.
pub const MAX_RESETS: u32 = 200;
pub const RESET_WINDOW: Duration = Duration::from_secs(10);
/// How long a connection without streams stays open before the server says GOAWAY: longer
/// than a client pool keeps an idle connection (Istio's: 5 min), so the client usually closes
/// first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// A CONNECT that passed the protocol checks, for the handler to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Who the HBONE connection is from: one for all of a connection's streams (each open
    /// stream holds the request as long as it lives).
    pub peer: Arc<Peer>,
    /// `:authority`: the destination pod IP and port. For a Service's authority ([`Self::service`])
    /// this end's own address with the service port, until [`Handler::resolve`] sets the pod's port.
    pub target: SocketAddr,
    /// `:authority` named a Service, `hostname:port`, rather than an address (Istio's peers do,
    /// for a Service reached through another network's gateway or a waypoint). Boxed: rare, and
    /// every open stream holds the request.
    pub service: Option<Box<ServiceTarget>>,
    /// The original source's address from `Forwarded: for=…`, when given and well-formed (with
    /// or without a port, quoted or not: Istio's peers have sent both).
    pub forwarded_for: Option<IpAddr>,
    /// The stream's `traceparent`, when well formed: logged, so both ends' lines can be
    /// matched. Kept parsed, not as its text on the heap: every open stream holds it.
    pub traceparent: Option<SpanContext>,
    /// `Via`, as sent: the waypoints a connection relayed at L4 came through.
    pub via: Option<Box<str>>,
}

/// The client end of an HBONE connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client workload's identity, from its certificate.
    pub identity: Identity,
    /// The connection's source address: the client pod's, as its proxy connects from inside
    /// that pod.
    pub source: SocketAddr,
}

/// What a connected stream carried, and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// Bytes that went upstream.
    pub sent: u64,
    /// Bytes that came back.
    pub received: u64,
    /// From the CONNECT until its 200: resolving, policy and the upstream connect.
    pub connecting: Duration,
    /// From the CONNECT until both directions ended.
    pub duration: Duration,
}

/// A Service named by hostname and service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub hostname: String,
    pub port: u16,
}

/// Why a stream is refused, and so its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: malformed, or not addressed to a workload behind this listener.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: policy denies it.
    #[error("denied: {0}")]
    Denied(String),
    /// 503: unknown workload, or the upstream connection failed.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Where an accepted stream's bytes go: a TCP connection (the node proxy's delivery to the pod)
/// relays them; the waypoint's HTTP session reads the requests inside.
pub trait Upstream: Send + 'static {
    /// Carries `stream` until either side ends, counting bytes in `counts`.
    fn carry(
        self,
        stream: Stream,
        counts: &crate::relay::Counts,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl Upstream for TcpStream {
    fn carry(
        self,
        stream: Stream,
        counts: &crate::relay::Counts,
    ) -> impl Future<Output = std::io::Result<()>> + Send {
        // The relay itself, owning the socket: no async wrapper holding them twice.
        crate::relay::hbone(self, stream, counts)
    }
}

/// Decides on each stream and opens its upstream connection.
pub trait Handler: Send + Sync + 'static {
    /// What an accepted stream is carried to.
    type Upstream: Upstream;

    /// Turns a Service's authority into this end's pod address and port; refused by default.
    fn resolve(&self, request: &mut ConnectRequest) -> impl Future<Output = Result<(), Refusal>> + Send {
        let refused = request
            .service
            .as_ref()
            .map(|service| Refusal::BadRequest(format!("no service {} here", service.hostname)));
        std::future::ready(refused.map_or(Ok(()), Err))
    }

    /// Policy and upstream connect: the stream is answered 200 only with `Ok`.
    fn connect(
        &self,
        request: ConnectRequest,
    ) -> impl Future<Output = Result<Self::Upstream, Refusal>> + Send;

    /// Resolves once a connected stream may no longer continue (policy changed): it is then
    /// reset. Never, by default.
    fn revoked(&self, _request: &ConnectRequest) -> impl Future<Output = Refusal> + Send {
        std::future::pending()
    }

    /// A connected stream ended.
    fn closed(&self, _request: &ConnectRequest, _relayed: &Relayed) {}

    /// A client's TLS handshake completed.
    fn tls_established(&self, _handshake: super::Handshake) {}

    /// Turns true when the proxy drains: the connection then says GOAWAY (clients open new
    /// streams elsewhere) and ends once its open streams have.
    fn draining(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}

/// Resolves once `draining` turns true; never without one.
pub async fn drained(draining: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match draining {
        Some(draining) => {
            if draining.wait_for(|draining| *draining).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Errors that end a whole HBONE connection (a stream's errors end only that stream).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the connection's source address")]
    Io(#[source] std::io::Error),
    #[error("TLS handshake")]
    Tls(#[source] std::io::Error),
    #[error("TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("peer identity")]
    Identity(#[source] tls::Error),
    #[error("HTTP/2")]
    Http2(#[source] h2::Error),
    #[error("client reset more than {MAX_RESETS} streams in {RESET_WINDOW:?}; connection closed")]
    TooManyResets,
    #[error("client stopped answering: {0}")]
    Unresponsive(String),
}

/// How a stream ended, as far as the connection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Served,
    /// The client reset it before it was answered.
    ResetByPeer,
}

/// Resets counted in fixed windows.
#[derive(Debug)]
struct ResetBudget {
    window_start: tokio::time::Instant,
    resets: u32,
}

impl ResetBudget {
    fn new() -> Self {
        Self { window_start: tokio::time::Instant::now(), resets: 0 }
    }

    /// Counts one reset; false once the budget of the current window is spent.
    fn spend(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window_start) > RESET_WINDOW {
            *self = Self { window_start: now, resets: 0 };
        }
        self.resets += 1;
        self.resets <= MAX_RESETS
    }
}

/// The TLS and HTTP/2 handshakes of an accepted connection: the connection, and the client's
/// identity.
async fn handshake<H: Handler>(
    tcp: TcpStream,
    acceptor: Acceptor,
    handler: &H,
) -> Result<(h2::server::Connection<TlsStream, Bytes>, Identity), Error> {
    let started = Instant::now();
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| Error::HandshakeTimeout)?
        .map_err(Error::Tls)?;
    let certificates = accepted.peer_certificates.as_deref();
    let handshake = super::Handshake::new(started.elapsed(), accepted.kind);
    if handshake.resumed {
        tls::still_valid(certificates, std::time::SystemTime::now()).map_err(Error::Identity)?;
    }
    handler.tls_established(handshake);
    let peer = tls::peer_identity(certificates).map_err(Error::Identity)?;
    let tls = accepted.stream;
    let connection = h2::server::Builder::new()
        .initial_window_size(window::STREAM)
        .initial_connection_window_size(window::CONNECTION)
        .max_frame_size(window::MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(Error::Http2)?;
    Ok((connection, peer))
}

/// Serves one accepted TCP connection until the client closes it; streams run concurrently.
pub async fn serve_connection<H: Handler>(
    tcp: TcpStream,
    acceptor: Acceptor,
    handler: Arc<H>,
) -> Result<(), Error> {
    let source = tcp.peer_addr().map_err(Error::Io)?;
    let local = tcp.local_addr().map_err(Error::Io)?;
    // Boxed: inline, the handshakes' states (and the TLS stream they borrow, kept to the end of
    // the scope that borrowed it) would size the connection's task for as long as it lives.
    let (mut connection, identity) = Box::pin(handshake(tcp, acceptor, handler.as_ref())).await?;
    let peer = Arc::new(Peer { identity, source });
    let mut streams = JoinSet::new();
    let mut budget = ResetBudget::new();
    let mut draining = handler.draining();
    let mut going_away = false;
    let keepalive = super::keepalive(connection.ping_pong().expect("invariant: taken once, here"));
    tokio::pin!(keepalive);
    let mut last_stream = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = drained(&mut draining), if !going_away => {
                connection.graceful_shutdown();
                going_away = true;
            }
            () = tokio::time::sleep_until(last_stream + IDLE_TIMEOUT), if streams.is_empty() && !going_away => {
                connection.graceful_shutdown();
                going_away = true;
            }
            reason = &mut keepalive => return Err(Error::Unresponsive(reason)),
            accepted = connection.accept() => match accepted {
                Some(Ok((request, mut respond))) => {
                    last_stream = tokio::time::Instant::now();
                    let ends = Ends { peer: peer.clone(), local };
                    // Checked before its task is spawned: what the task holds while the stream
                    // lives is what the check kept, not the request's head (240 bytes each).
                    let (head, body) = request.into_parts();
                    match check(&Request::from_parts(head, ()), ends) {
                        Ok(connect) => {
                            streams.spawn(serve_stream(connect, body, respond, handler.clone()));
                        }
                        Err(refusal) => refuse(&mut respond, &refusal),
                    }
                }
                Some(Err(error)) => return Err(Error::Http2(error)),
                None => break,
            },
            Some(ended) = streams.join_next(), if !streams.is_empty() => {
                last_stream = tokio::time::Instant::now();
                if ended.is_ok_and(|end| end == StreamEnd::ResetByPeer) && !budget.spend() {
                    connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    // Drive the connection so the GOAWAY goes out; bounded.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = connection.accept().await {}
                    })
                    .await;
                    return Err(Error::TooManyResets);
                }
            }
        }
    }
    // The client said goodbye; let open streams finish (the connection stays driven by them).
    while streams.join_next().await.is_some() {}
    Ok(())
}

/// The bytes of the task each open stream takes on a connection served for `H`: most of what
/// an idle stream costs, for the handlers' tests to bound.
pub fn stream_task_bytes<H: Handler>() -> usize {
    fn returned<A, B, C, D, F>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }
    crate::census::task_bytes(returned(serve_stream::<H>))
}

/// One accepted stream's task, for as long as the stream lives. An async block, not an async
/// fn: a fn's future keeps its arguments twice (as passed, and as moved into its body), and
/// this task's size is what every open stream costs. Its setup is boxed and created outside
/// the block: captured, the parts it consumes (the response handle, the body) would keep
/// their places in the task while it relays.
fn serve_stream<H: Handler>(
    connect: ConnectRequest,
    body: h2::RecvStream,
    respond: SendResponse<Bytes>,
    handler: Arc<H>,
) -> impl Future<Output = StreamEnd> + Send + 'static {
    let setup = Box::pin(set_up(connect, body, respond, handler.clone()));
    async move {
        // Awaited by value: the box is freed once the stream is connected.
        let Connected { connect, upstream, stream, started, connecting } = match setup.await {
            Ok(connected) => connected,
            Err(end) => return end,
        };
        let counts = crate::relay::Counts::default();
        let relayed =
            UntilRevoked { carry: upstream.carry(stream, &counts), revoked: handler.revoked(&connect) }.await;
        let (sent, received) = counts.get();
        handler.closed(&connect, &Relayed { sent, received, connecting, duration: started.elapsed() });
        if let Err(error) = relayed {
            tracing::debug!(%error, "HBONE stream ended with an error");
        }
        StreamEnd::Served
    }
}

pin_project_lite::pin_project! {
    /// A stream's relay until it ends, or until the stream is revoked: the relay is then
    /// dropped, which resets the stream and closes the upstream. Not `tokio::select!`, whose
    /// branch state and borrows would take 24 bytes more of every open stream's task.
    struct UntilRevoked<C, R> {
        #[pin]
        carry: C,
        #[pin]
        revoked: R,
    }
}

impl<C, R> Future for UntilRevoked<C, R>
where
    C: Future<Output = std::io::Result<()>>,
    R: Future<Output = Refusal>,
{
    type Output = std::io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(relayed) = this.carry.poll(cx) {
            return Poll::Ready(relayed);
        }
        this.revoked.poll(cx).map(|refusal| Err(std::io::Error::other(refusal.to_string())))
    }
}

/// A stream answered 200, with what its relay needs.
struct Connected<U> {
    connect: ConnectRequest,
    upstream: U,
    stream: Stream,
    started: Instant,
    /// From the CONNECT until its 200.
    connecting: Duration,
}

/// A stream's resolve, policy and upstream connect, then its 200; refused or reset, how it
/// ended.
async fn set_up<H: Handler>(
    mut connect: ConnectRequest,
    body: h2::RecvStream,
    mut respond: SendResponse<Bytes>,
    handler: Arc<H>,
) -> Result<Connected<H::Upstream>, StreamEnd> {
    let started = Instant::now();
    if let Err(refusal) = handler.resolve(&mut connect).await {
        refuse(&mut respond, &refusal);
        return Err(StreamEnd::Served);
    }
    // A client that resets the stream while we connect gets no upstream connection.
    let upstream = tokio::select! {
        biased;
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return Err(StreamEnd::ResetByPeer),
        connected = handler.connect(connect.clone()) => match connected {
            Ok(upstream) => upstream,
            Err(refusal) => {
                refuse(&mut respond, &refusal);
                return Err(StreamEnd::Served);
            }
        },
    };
    let send = match respond.send_response(status_only(StatusCode::OK), false) {
        Ok(send) => send,
        Err(error) => {
            tracing::debug!(%error, "HBONE client went away before 200");
            return Err(StreamEnd::ResetByPeer);
        }
    };
    Ok(Connected {
        connect,
        upstream,
        stream: Stream::new(send, body),
        started,
        connecting: started.elapsed(),
    })
}

fn refuse(respond: &mut SendResponse<Bytes>, refusal: &Refusal) {
    tracing::debug!(%refusal, "HBONE stream refused");
    let _ = respond.send_response(status_only(refusal.status()), true);
}

/// Who a stream's connection is between: the client, and this end's address.
#[derive(Debug, Clone)]
struct Ends {
    peer: Arc<Peer>,
    local: SocketAddr,
}

/// Protocol checks of DESIGN.md §3: CONNECT with an `ip:port` or `hostname:port` authority.
fn check<Body>(request: &Request<Body>, ends: Ends) -> Result<ConnectRequest, Refusal> {
    if request.method() != Method::CONNECT {
        return Err(Refusal::BadRequest(format!("method {} is not CONNECT", request.method())));
    }
    let Ends { peer, local } = ends;
    let authority = request.uri().authority().ok_or_else(|| Refusal::BadRequest("no :authority".into()))?;
    let (target, service) = match authority.as_str().parse::<SocketAddr>() {
        Ok(target) => (target, None),
        Err(_) => {
            let service = service_target(authority).ok_or_else(|| {
                Refusal::BadRequest(format!(":authority {authority} is neither ip:port nor host:port"))
            })?;
            (SocketAddr::new(local.ip(), service.port), Some(Box::new(service)))
        }
    };
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
    let forwarded_for = header("forwarded").and_then(parse_forwarded_for);
    // `baggage` is not kept: nothing reads it, and an open stream would hold it as long as it
    // lives.
    let traceparent = header("traceparent").and_then(|value| SpanContext::parse(value.as_bytes()));
    let via = header("via").map(Box::from);
    Ok(ConnectRequest { peer, target, service, forwarded_for, traceparent, via })
}

/// For the fuzz targets: the checks of [`check`] on `request`, between fixed ends.
#[cfg(fuzzing)]
pub fn check_connect(request: &Request<()>) -> Result<(), String> {
    let ends = Ends {
        peer: Arc::new(Peer {
            identity: Identity::new("cluster.local", "fuzz", "client"),
            source: SocketAddr::from(([10, 0, 0, 1], 40000)),
        }),
        local: SocketAddr::from(([10, 0, 0, 2], 15008)),
    };
    check(request, ends).map(drop).map_err(|refusal| format!("{refusal:?}"))
}

/// A DNS name and a port: what a Service's authority looks like.
fn service_target(authority: &http::uri::Authority) -> Option<ServiceTarget> {
    let (hostname, port) = (authority.host(), authority.port_u16()?);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (hostname.len() <= 253 && hostname.split('.').all(label_ok))
        .then(|| ServiceTarget { hostname: hostname.to_owned(), port })
}

/// The address of `for=` in a `Forwarded` header (RFC 7239): `1.2.3.4`, `"1.2.3.4:5"`,
/// `"[::1]"` or `"[::1]:5"`; the first element of a list.
fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        value
            .parse::<SocketAddr>()
            .map(|addr| addr.ip())
            .or_else(|_| value.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>())
            .ok()
    })
}

fn status_only(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_accepts_both_families_and_ignores_junk() {
        let ip = |text: &str| text.parse::<IpAddr>().ok();
        assert_eq!(parse_forwarded_for("for=\"10.0.0.1:5000\""), ip("10.0.0.1"));
        assert_eq!(parse_forwarded_for("proto=http; for=\"[fd00::1]:80\""), ip("fd00::1"));
        // As Istio's peers have sent it: the address alone.
        assert_eq!(parse_forwarded_for("for=10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(parse_forwarded_for("For=\"10.0.0.1\";host=echo.shop.svc"), ip("10.0.0.1"));
        assert_eq!(parse_forwarded_for("for=\"[fd00::1]\""), ip("fd00::1"));
        assert_eq!(parse_forwarded_for("for=10.0.0.1, for=10.0.0.2"), ip("10.0.0.1"));
        assert_eq!(parse_forwarded_for("for=unknown"), None);
        assert_eq!(parse_forwarded_for("for=_hidden"), None);
        assert_eq!(parse_forwarded_for(""), None);
    }

    #[test]
    fn an_authority_is_an_address_or_a_services_hostname_and_port() {
        let authority = |text: &str| text.parse::<http::uri::Authority>().unwrap();
        assert_eq!(
            service_target(&authority("db.shop.svc.cluster.local:80")),
            Some(ServiceTarget { hostname: "db.shop.svc.cluster.local".into(), port: 80 })
        );
        assert_eq!(service_target(&authority("db.shop.svc.cluster.local")), None, "no port");
        assert_eq!(service_target(&authority("db_shop:80")), None, "not a DNS name");
        assert_eq!(service_target(&authority("-db.shop:80")), None);
        assert_eq!(service_target(&authority("db..shop:80")), None);
        let ends = Ends {
            peer: Arc::new(Peer {
                identity: Identity::new("cluster.local", "shop", "web"),
                source: "10.0.0.1:40000".parse().unwrap(),
            }),
            local: "10.0.1.5:15008".parse().unwrap(),
        };
        let connect = |authority: &str| {
            let request = Request::builder().method(Method::CONNECT).uri(authority).body(()).unwrap();
            check(&request, ends.clone())
        };
        let to_service = connect("db.shop.svc.cluster.local:80").unwrap();
        assert_eq!(to_service.target, "10.0.1.5:80".parse().unwrap(), "this end's address, the service port");
        assert_eq!(to_service.service.unwrap().hostname, "db.shop.svc.cluster.local");
        let to_pod = connect("[fd00::5]:8080").unwrap();
        assert_eq!((to_pod.target, to_pod.service), ("[fd00::5]:8080".parse().unwrap(), None));
        assert!(matches!(connect("db_shop:80"), Err(Refusal::BadRequest(_))));
    }
}
