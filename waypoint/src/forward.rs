//! The HTTP inside one HBONE stream: each request gets its route (the Service's HTTPRoutes, or
//! the Service itself when it has none), a backend Service by weight, the least loaded of its
//! healthy endpoints, and goes there over HBONE with the waypoint's identity, in the HTTP version it
//! came in. Answers of the waypoint's own, as Envoy gives them: 404 when no route matches, 500
//! for a rule without a usable backend, 503 when no endpoint can be reached, 504 on a timeout,
//! 400 for a request hyper cannot parse (that stream only). A request framed both ways
//! (`Content-Length` and `Transfer-Encoding`, request smuggling) is read by its chunked framing
//! and its connection closed after it, as RFC 9112 §6.3 asks of an intermediary (hyper's
//! parser): nothing after it on that connection is read as another request, and the request goes
//! on framed one way only. HTTP/2 abuse ends the session: rapid reset, also paced so that h2's own
//! count misses it ([`cancelled`]), and header blocks beyond 16 KiB.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;
use weft_proxy::{
    hbone::{
        self, MAX_HEADER_LIST, Stream,
        client::Origin,
        pool::{Peer, Tunnel},
        server::MAX_STREAMS,
    },
    state::Workload,
};

use crate::{
    app::Context,
    authn, authz,
    balance::{self, Counted, Pick},
    breaker::Seen,
    connections,
    inbound::{Client, Destination},
    jwt::{self, Claims},
    metrics::{Peers, RequestLabels, RequestSeries, UNKNOWN},
    retry::Outcome,
    route::{Mirror, Reading, Routes, Rule, Selected},
    traffic::{self, Abort, Policies},
};

mod cancelled;
mod grpc_status;
mod opaque;

/// What a response carries back.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Headers of one hop only (RFC 9110 §7.6.1), never passed on.
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One client stream's requests, and the upstream connections they opened.
#[derive(Debug)]
pub struct Session {
    context: Arc<Context>,
    destination: Destination,
    client: Client,
    /// The destination Service's key (`namespace/hostname`), when it is one.
    service_key: Option<String>,
    /// Per endpoint address, waypoint pod in between (if any) and HTTP version: an HTTP
    /// connection over an HBONE stream.
    upstreams: Mutex<HashMap<UpstreamKey, Upstream>>,
    /// Told when the session opens an HTTP/2 connection, which requests waiting for a place
    /// under a connection cap may share instead.
    opened_http2: tokio::sync::Notify,
    /// The request series its requests were counted in (a few: within a stream, status, route
    /// and endpoint vary little).
    series: std::sync::Mutex<Vec<KeptSeries>>,
}

/// A request series a session counted in, with the workloads its labels were read from: the
/// client's and the endpoint's, as the configuration had them (a changed workload is a new
/// one, whose labels are read anew).
#[derive(Debug)]
struct KeptSeries {
    source: Option<Arc<Workload>>,
    destination: Option<Arc<Workload>>,
    series: Arc<RequestSeries>,
}

/// How a request is counted: in a series now, or with these labels once its gRPC status is
/// known.
enum RequestCount {
    Now(Arc<RequestSeries>),
    AtEnd(Box<RequestLabels>),
}

impl RequestCount {
    fn labels(&self) -> &RequestLabels {
        match self {
            RequestCount::Now(series) => series.labels(),
            RequestCount::AtEnd(labels) => labels.as_ref(),
        }
    }
}

/// A session keeps at most this many request series; more, and it starts again.
const SERIES_KEPT: usize = 16;

/// An HTTP connection to an endpoint; its place under its backend's connection cap, if it
/// has one.
#[derive(Debug)]
struct Upstream {
    sender: Sender,
    slot: Option<Arc<connections::Slot>>,
}

#[derive(Debug)]
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Body>),
    Http2(hyper::client::conn::http2::SendRequest<Body>),
}

/// Request bodies up to this size are kept until the response, so that a failed attempt can be
/// retried (Envoy's default buffer); a larger one, or one of unknown length, is streamed to
/// the first attempt only, and never retried.
const MAX_REPLAYED_BODY: u64 = 64 * 1024;

/// Why a request got an answer of the waypoint's own.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no route matches")]
    NoRoute,
    #[error("the route's rule has no usable backend")]
    NoBackend,
    #[error("service {0} has no healthy endpoint for port {1}")]
    NoEndpoint(String, u16),
    /// No connection to the endpoint: nothing was sent.
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Upstream(String),
    #[error("timed out")]
    Timeout,
    /// Envoy's body for an RBAC denial, which clients of Istio's waypoint already know.
    #[error("RBAC: access denied")]
    Denied,
    /// A token that does not verify (Envoy's words for why).
    #[error("{0}")]
    Unauthenticated(jwt::Error),
    #[error("{0}")]
    BadTarget(crate::normalize::Error),
    #[error("the request body could not be read: {0}")]
    RequestBody(hyper::Error),
    /// Its rate limit's bucket is empty until this long from now. Envoy's body.
    #[error("local_rate_limited")]
    RateLimited(Duration),
    /// An injected fault. Envoy's body.
    #[error("fault filter abort")]
    Aborted(Abort),
    /// The backend's circuit breaker is open: too many requests in flight. Envoy's body.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    /// The request came through this many waypoints, chained: a route loop between them.
    #[error("a route loop between waypoints: {0} passed already")]
    Loop(usize),
    /// The backend's circuit breaker is open: every connection is held and too many requests
    /// wait for one. Envoy's body.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    PendingOverflow,
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::NoRoute => StatusCode::NOT_FOUND,
            Failure::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::NoEndpoint(..)
            | Failure::Connect(_)
            | Failure::Upstream(_)
            | Failure::Overflow
            | Failure::PendingOverflow => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Loop(_) => StatusCode::LOOP_DETECTED,
            Failure::Denied => StatusCode::FORBIDDEN,
            Failure::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Failure::BadTarget(_) | Failure::RequestBody(_) => StatusCode::BAD_REQUEST,
            Failure::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Failure::Aborted(Abort::Http(status)) => *status,
            Failure::Aborted(Abort::Grpc(_)) => StatusCode::OK,
        }
    }

    /// The waypoint's answer: its status and message; to a gRPC request (`grpc`) as gRPC
    /// answers an error, as Envoy does — trailers only, its status as the gRPC code it maps to
    /// (a gRPC abort's own code), its message in `grpc-message` —, so a gRPC client reads why;
    /// a rate-limited request says when to come back.
    fn answer(&self, grpc: bool) -> Response<Body> {
        let mut response = match (self, grpc) {
            (Failure::Aborted(Abort::Grpc(code)), _) => grpc_answer(*code, &self.to_string()),
            (_, true) => grpc_answer(grpc_code(self.status()), &self.to_string()),
            (_, false) => own_answer(self.status(), &self.to_string()),
        };
        if let Failure::Unauthenticated(_) = self {
            // RFC 6750 §3, as Envoy answers.
            let challenge = http::HeaderValue::from_static(r#"Bearer realm="mesh", error="invalid_token""#);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Failure::Overflow | Failure::PendingOverflow = self {
            response.headers_mut().insert("x-envoy-overloaded", http::HeaderValue::from_static("true"));
        }
        if let Failure::RateLimited(wait) = self {
            // Whole seconds, rounded up: never an invitation to come back too early.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// How long a session being cut off may take to finish what it has in flight.
const CUT_OFF_GRACE: Duration = Duration::from_secs(1);

/// How a request was answered.
struct Answered<'a> {
    status: StatusCode,
    /// The waypoint's own reason, when it answered itself.
    failure: Option<&'a Failure>,
    labels: &'a RequestLabels,
}

/// Waypoints a request may come through, chained, before one refuses it (508): a route loop
/// between waypoints (each sending a Service to one behind the other) ends there, rather than
/// bouncing, a connection more at each hop, until something times out.
const MAX_CHAINED: usize = 5;

/// How a waypoint's pseudonym in `Via` ends.
const VIA_SUFFIX: &str = ".weft-waypoint";

/// The `Via` entry (RFC 9110 §7.6.3) a waypoint adds to what it sends through another one:
/// `1.1 <name>.<namespace>.weft-waypoint`, its Gateway's name and namespace (`gateway` is
/// `namespace/name`), both DNS names and so a `Via` pseudonym's characters.
pub fn via_entry(gateway: &str) -> http::HeaderValue {
    let (namespace, name) = gateway.split_once('/').unwrap_or(("", gateway));
    http::HeaderValue::from_str(&format!("1.1 {name}.{namespace}{VIA_SUFFIX}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("1.1 waypoint.weft-waypoint"))
}

/// How many waypoints a request came through chained, by its `Via` entries.
fn waypoints_passed(headers: &HeaderMap) -> usize {
    waypoints_in(headers.get_all(header::VIA).iter().filter_map(|value| value.to_str().ok()))
}

/// How many waypoints `Via` values name. A connection relayed at L4 carries its count in its
/// CONNECT's `Via` ([`Session::tunnel`]), a request in its own.
fn waypoints_in<'a>(values: impl IntoIterator<Item = &'a str>) -> usize {
    let entries = values.into_iter().flat_map(|value| value.split(','));
    let pseudonyms = entries.filter_map(|entry| entry.split_whitespace().nth(1));
    pseudonyms.filter(|pseudonym| pseudonym.ends_with(VIA_SUFFIX)).count()
}

/// Lets a route's filter `modify` a request's headers, but not undo the count of waypoints it
/// came through: were a filter to remove or set `Via`, each waypoint of a loop would pass it on
/// as if it were the first, and the loop guard ([`MAX_CHAINED`]) would never trip. The `Via`
/// values that named waypoints go back when the filter took some away.
fn keeping_waypoints_passed(headers: &mut HeaderMap, modify: impl FnOnce(&mut HeaderMap)) {
    let passed = waypoints_passed(headers);
    if passed == 0 {
        return modify(headers);
    }
    let named: Vec<http::HeaderValue> = headers
        .get_all(header::VIA)
        .iter()
        .filter(|value| value.to_str().is_ok_and(|value| waypoints_in([value]) > 0))
        .cloned()
        .collect();
    modify(headers);
    if waypoints_passed(headers) < passed {
        for value in named {
            headers.append(header::VIA, value);
        }
    }
}

/// What a session's upstream connection is kept by: the address the CONNECT names, the pod
/// of another waypoint it goes through (a backend behind that waypoint has one address for
/// all of its pods), and the HTTP version.
type UpstreamKey = (SocketAddr, Option<std::net::IpAddr>, Version);

fn upstream_key(target: SocketAddr, via: Option<&Peer>, version: Version) -> UpstreamKey {
    (target, via.map(|through| through.ip), version)
}

/// A backend Service behind a waypoint other than this one, and that waypoint's pods.
struct Chained {
    backend: String,
    pods: Vec<Arc<Workload>>,
    identity: weft_proxy::identity::Identity,
    /// The backend's addresses: what the CONNECT names.
    vips: Vec<std::net::IpAddr>,
}

impl Chained {
    /// What the CONNECT names: the backend's address at `port` of the client's family (else
    /// its first).
    fn target(&self, client: &SocketAddr, port: u16) -> Result<SocketAddr, Failure> {
        let v4 = client.ip().to_canonical().is_ipv4();
        let vip = self.vips.iter().find(|vip| vip.is_ipv4() == v4).or(self.vips.first()).copied();
        let vip = vip.ok_or_else(|| Failure::NoEndpoint(self.backend.clone(), 0))?;
        Ok(SocketAddr::new(vip, port))
    }

    /// A waypoint pod to send through, and the peer to expect there: among those not `tried`
    /// while any is left, one the session already has a connection through (`held`), else one
    /// at random (each attempt picks again).
    fn hop(
        &self,
        client: &SocketAddr,
        tried: &[std::net::IpAddr],
        held: &[std::net::IpAddr],
    ) -> Result<(Arc<Workload>, Peer), Failure> {
        let untried: Vec<&Arc<Workload>> = self
            .pods
            .iter()
            .filter(|pod| address_of(pod, client).is_some_and(|ip| !tried.contains(&ip)))
            .collect();
        let reused = untried.iter().find(|pod| address_of(pod, client).is_some_and(|ip| held.contains(&ip)));
        let pod = match (reused, untried.is_empty()) {
            (Some(pod), _) => (*pod).clone(),
            (None, true) => self.pods[fastrand::usize(..self.pods.len())].clone(),
            (None, false) => untried[fastrand::usize(..untried.len())].clone(),
        };
        let ip = address_of(&pod, client).ok_or_else(|| Failure::NoEndpoint(self.backend.clone(), 0))?;
        Ok((pod, Peer { ip, expected: self.identity.clone().into() }))
    }
}

/// What a request was routed to.
#[derive(Debug, Default)]
struct Routed {
    route: String,
    backend: String,
    endpoint: Option<SocketAddr>,
    /// The endpoint's workload.
    workload: Option<Arc<Workload>>,
    /// Retries made.
    retries: u32,
    /// What a traffic policy did to it, if anything: `delayed … by …`, `aborted by …`, `rate
    /// limited by …`, `overflow of …` (a circuit breaker's cap).
    policy: String,
}

impl Session {
    pub fn new(context: Arc<Context>, destination: Destination, client: Client) -> Self {
        let service_key = match &destination {
            Destination::Service(service, _) => Some(service.key()),
            Destination::Workload(..) => None,
        };
        Self {
            context,
            destination,
            client,
            service_key,
            upstreams: Mutex::default(),
            opened_http2: tokio::sync::Notify::new(),
            series: Default::default(),
        }
    }

    /// Serves the stream's requests, HTTP/1.1 or HTTP/2 (by its preface), until it ends; when
    /// the waypoint drains, the request in flight is finished and the session closed. A stream
    /// that is not HTTP — by its first bytes, or as its Service port declares — or to a port a
    /// TCPRoute applies to, is relayed at L4 instead ([`opaque`]).
    pub async fn serve(self, mut stream: Stream) -> std::io::Result<()> {
        // A TCPRoute or a declared protocol says what the port carries: nothing to tell apart,
        // nothing to wait for. The Service's routes are looked up once for the whole stream.
        let routes = self.service_routes();
        let protocol = match routes
            .as_ref()
            .map(|(routes, port)| routes.reading(*port, &self.client.identity.namespace))
        {
            Some(reading) if reading.opaque() => opaque::Protocol::Opaque,
            Some(Reading::DeclaredHttp) => opaque::Protocol::Http,
            _ => opaque::detect(&mut stream).await?,
        };
        if protocol == opaque::Protocol::Opaque {
            return self.relay(stream, routes).await;
        }
        let mut draining = Some(self.context.drain.subscribe());
        let client = self.client.clone();
        let session = Arc::new(self);
        let cancelled = Arc::new(cancelled::Cancelled::default());
        let service = hyper::service::service_fn({
            let cancelled = cancelled.clone();
            move |request| {
                let (session, pending) = (session.clone(), cancelled.pending());
                async move { Ok::<_, Infallible>(session.handle(request, pending).await) }
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // A client may end its side once its request is sent (the tunnel carries its FIN as
        // END_STREAM) and still wait for the answer; without this, hyper drops the request
        // in flight when it reads that end.
        builder.http1().half_close(true);
        // The node proxy's limits — hyper's defaults too, set so that no upgrade loosens them
        // unseen; h2 itself cuts off a client that resets streams before they are accepted, or
        // sends a header block that never ends. Resets paced to escape it: [`cancelled`].
        builder.http2().max_concurrent_streams(MAX_STREAMS).max_header_list_size(MAX_HEADER_LIST);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        // Served to its end, or (draining) to the end of what is in flight, unless the client
        // cancels too much meanwhile.
        let mut going_away = false;
        tokio::select! {
            served = connection.as_mut() => return served.map_err(std::io::Error::other),
            () = cancelled.exceeded() => {}
            () = hbone::server::drained(&mut draining) => {
                connection.as_mut().graceful_shutdown();
                going_away = true;
                tokio::select! {
                    served = connection.as_mut() => return served.map_err(std::io::Error::other),
                    () = cancelled.exceeded() => {}
                }
            }
        }
        let error = format!(
            "client cancelled more than {} requests within {:?} of sending them in {:?}, most of its requests",
            cancelled::MAX_PREMATURE,
            cancelled::PREMATURE,
            cancelled::WINDOW
        );
        tracing::info!(src = %client.identity, client = %client.address, "{error}; session closed");
        // GOAWAY, a moment for what is in flight (mostly the requests it is cancelling), gone.
        if !going_away {
            connection.as_mut().graceful_shutdown();
        }
        let _ = tokio::time::timeout(CUT_OFF_GRACE, connection.as_mut()).await;
        Err(std::io::Error::other(error))
    }

    /// Answers `request`; `pending` is spent as a cancellation if the client never sent the
    /// body it announced (an HTTP/2 reset seen by the body first), as it is if this is dropped.
    async fn handle(&self, mut request: Request<Incoming>, pending: cancelled::Pending) -> Response<Body> {
        let started = Instant::now();
        let (method, raw_path) = (request.method().clone(), request.uri().path().to_owned());
        let version = request.version();
        let span = self.context.tracer.as_ref().map(|tracer| tracer.start_span(request.headers()));
        let canonical = {
            let (mut uri, headers) = (request.uri().clone(), request.headers());
            crate::normalize::target(&mut uri, headers).map(|()| uri)
        };
        let request_size = body_size(request.headers(), request.body());
        let mut routed = Routed::default();
        let grpc = request.headers().get(header::CONTENT_TYPE).is_some_and(|value| is_grpc(value.as_bytes()));
        let answer = match canonical {
            Ok(uri) => {
                *request.uri_mut() = uri;
                self.route(request, &mut routed, &pending, span.as_ref()).await
            }
            Err(error) => Err(Failure::BadTarget(error)),
        };
        match &answer {
            Err(Failure::RequestBody(_)) => drop(pending),
            _ => pending.answered(),
        }
        let path = raw_path;
        let (response, failure) = match answer {
            Ok(response) => (response, None),
            Err(failure) => {
                tracing::debug!(%failure, "answered by the waypoint");
                (failure.answer(grpc), Some(failure))
            }
        };
        let response_size = body_size(response.headers(), response.body());
        let (counted, response) = self.count(response, &routed, grpc, (started, request_size, response_size));
        if let (Some(tracer), Some(span)) = (&self.context.tracer, span) {
            tracer.finish(span, || {
                let labels = counted.labels();
                let answered = Answered { status: response.status(), failure: failure.as_ref(), labels };
                self.finished((&method, &path, version), &routed, answered)
            });
        }
        tracing::info!(
            target: "weft_waypoint::access",
            src = %self.client.identity,
            client = %self.client.address,
            %method,
            %path,
            route = %routed.route,
            backend = %routed.backend,
            endpoint = ?routed.endpoint,
            retries = routed.retries,
            policy = %routed.policy,
            status = response.status().as_u16(),
            // A gRPC error the waypoint answered itself travels as HTTP 200 (trailers only).
            grpc_status = response.headers().get("grpc-status").and_then(|code| code.to_str().ok()).unwrap_or("-"),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }

    /// What a request's span says: Istio's operation name (`<host>:<port>/*`), OpenTelemetry's
    /// HTTP attributes and the identities and route of its metrics. Not the query, which
    /// may carry secrets (a token, as a parameter).
    fn finished(
        &self,
        (method, path, version): (&http::Method, &str, Version),
        routed: &Routed,
        answered: Answered<'_>,
    ) -> crate::trace::Finished {
        use crate::trace::otlp::{attribute, int_attribute};
        let name = match &self.destination {
            Destination::Service(service, port) => format!("{}:{port}/*", service.hostname),
            Destination::Workload(workload, port) => format!("{}:{port}/*", workload.metrics_name()),
        };
        let version = match version {
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            _ => "1.1",
        };
        let peers = &answered.labels.peers;
        let mut attributes = vec![
            attribute("http.request.method", method.as_str()),
            attribute("url.scheme", "http"),
            attribute("url.path", path),
            attribute("network.protocol.version", version),
            int_attribute("http.response.status_code", i64::from(answered.status.as_u16())),
            attribute("client.address", self.client.address.ip().to_string()),
            attribute("weft.source.principal", peers.source_principal.as_str()),
            attribute("weft.source.workload", peers.source_workload.as_str()),
            attribute("weft.source.namespace", peers.source_workload_namespace.as_str()),
            attribute("weft.destination.service", peers.destination_service.as_str()),
            attribute("weft.destination.workload", peers.destination_workload.as_str()),
            attribute("weft.destination.namespace", peers.destination_workload_namespace.as_str()),
            attribute("weft.destination.principal", peers.destination_principal.as_str()),
        ];
        for (key, value) in [
            ("http.route", &routed.route),
            ("weft.backend", &routed.backend),
            ("weft.policy", &routed.policy),
        ] {
            if !value.is_empty() {
                attributes.push(attribute(key, value.as_str()));
            }
        }
        if let Some(endpoint) = routed.endpoint {
            attributes.push(attribute("weft.endpoint", endpoint.to_string()));
        }
        if routed.retries > 0 {
            attributes.push(int_attribute("weft.retries", i64::from(routed.retries)));
        }
        // OpenTelemetry's conventions: a server span's error is a 5xx, its type the status.
        if answered.status.is_server_error() {
            attributes.push(attribute("error.type", answered.status.as_str()));
        }
        crate::trace::Finished {
            name,
            status: answered.status.as_u16(),
            error: answered.failure.map(ToString::to_string),
            attributes,
        }
    }

    /// Counts a request `routed` so, of these sizes, started then, answered with `response`:
    /// now, or, for a gRPC call whose status is still to come in its trailers, as its body ends.
    fn count(
        &self,
        response: Response<Body>,
        routed: &Routed,
        grpc: bool,
        (started, request_size, response_size): (Instant, Option<u64>, Option<u64>),
    ) -> (RequestCount, Response<Body>) {
        let status = response.status();
        match grpc.then(|| grpc_status::of(response.headers())) {
            Some(None) if status == StatusCode::OK => {
                let source = self.context.state.workload_by_ip(self.client.address.ip());
                let labels = self.labels(routed, status, source.as_deref(), String::new());
                let (context, mut at_end) = (self.context.clone(), labels.clone());
                let response = response.map(|body| {
                    let count = move |code: Option<&'static str>, carried: u64| {
                        at_end.grpc_response_status = code.unwrap_or_default().to_owned();
                        let series = context.metrics.request_series(at_end);
                        series.record(&context.metrics, started.elapsed(), (request_size, Some(carried)));
                    };
                    grpc_status::CountedAtEnd::new(body, count).boxed()
                });
                (RequestCount::AtEnd(Box::new(labels)), response)
            }
            code => {
                let code = match code {
                    Some(Some(code)) => code,
                    // An HTTP answer to a gRPC call (a 503 of a proxy on the way, say).
                    Some(None) => grpc_status::from_http(status),
                    None => "",
                };
                let series = self.series(routed, status, code);
                series.record(&self.context.metrics, started.elapsed(), (request_size, response_size));
                (RequestCount::Now(series), response)
            }
        }
    }

    /// The series a request `routed` so and answered with `status` (and gRPC's `grpc_status`)
    /// is counted in: one this session counted in before, or a new one.
    fn series(&self, routed: &Routed, status: StatusCode, grpc_status: &str) -> Arc<RequestSeries> {
        let source = self.context.state.workload_by_ip(self.client.address.ip());
        let same = |kept: &Option<Arc<Workload>>, now: &Option<Arc<Workload>>| match (kept, now) {
            (Some(kept), Some(now)) => Arc::ptr_eq(kept, now),
            (kept, now) => kept.is_none() && now.is_none(),
        };
        let mut kept = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = kept.iter().find(|kept| {
            let labels = kept.series.labels();
            labels.response_code == status.as_u16()
                && labels.grpc_response_status == grpc_status
                && labels.route == routed.route
                && same(&kept.source, &source)
                && same(&kept.destination, &routed.workload)
        });
        if let Some(found) = found {
            return found.series.clone();
        }
        let labels = self.labels(routed, status, source.as_deref(), grpc_status.to_owned());
        let series = Arc::new(self.context.metrics.request_series(labels));
        if kept.len() >= SERIES_KEPT {
            kept.clear();
        }
        kept.push(KeptSeries { source, destination: routed.workload.clone(), series: series.clone() });
        series
    }

    /// The metric labels of a request from the client's `source` workload `routed` so,
    /// answered with `status` (and `grpc_status`).
    fn labels(
        &self,
        routed: &Routed,
        status: StatusCode,
        source: Option<&Workload>,
        grpc_status: String,
    ) -> RequestLabels {
        RequestLabels {
            reporter: "waypoint",
            response_code: status.as_u16(),
            route: routed.route.clone(),
            peers: self.peers(source, routed.workload.as_deref()),
            grpc_response_status: grpc_status,
        }
    }

    /// The client's `source` workload and, when one was chosen, the endpoint's `destination`
    /// workload, as metrics label them.
    fn peers(&self, source: Option<&Workload>, destination: Option<&Workload>) -> Peers {
        let unknown = || UNKNOWN.to_owned();
        Peers {
            source_workload: source
                .as_ref()
                .map_or_else(unknown, |workload| workload.metrics_name().to_owned()),
            source_workload_namespace: source
                .as_ref()
                .map_or_else(unknown, |workload| workload.namespace.clone()),
            source_principal: self.client.identity.to_string(),
            destination_service: match &self.destination {
                Destination::Service(..) => self.service_key.clone().unwrap_or_default(),
                // A workload's name, not its pod's uid: pods come and go, series stay.
                Destination::Workload(workload, _) => workload.metrics_name().to_owned(),
            },
            destination_workload: destination
                .map_or_else(unknown, |workload| workload.metrics_name().to_owned()),
            destination_workload_namespace: destination
                .map_or_else(unknown, |workload| workload.namespace.clone()),
            destination_principal: destination
                .map_or_else(unknown, |workload| workload.identity(&self.context.trust_domain).to_string()),
        }
    }

    /// Verifies `request`'s JWT by the RequestAuthentications that target its Service or this
    /// waypoint (see [`authn`]): its claims, none without a token, or 401 for a bad one.
    fn authenticate(&self, request: &mut Request<Incoming>) -> Result<Option<Claims>, Failure> {
        let service = self.service_key.as_deref();
        let all = self.context.authentications.all();
        let applying: Vec<&authn::Policy> = all
            .iter()
            .map(AsRef::as_ref)
            .filter(|policy| policy.applies_to(service, &self.context.gateway))
            .collect();
        if applying.is_empty() {
            return Ok(None);
        }
        let uri = request.uri().clone();
        authn::authenticate(applying, request.headers_mut(), &uri, std::time::SystemTime::now()).map_err(
            |rejected| {
                let policy = rejected.policy.as_deref().unwrap_or("-");
                tracing::info!(src = %self.client.identity, path = %uri.path(), policy, error = %rejected.error, "request unauthenticated");
                Failure::Unauthenticated(rejected.error)
            },
        )
    }

    /// Decides `request`, whose verified JWT says `auth`, by the policies that target its
    /// Service or this waypoint: a denied one goes nowhere.
    fn authorize(&self, request: &Request<Incoming>, auth: Option<&Claims>) -> Result<(), Failure> {
        self.decide(|port| authz::Request {
            source: Some(&self.client.identity),
            source_ip: self.client.address.ip(),
            method: request.method(),
            path: request.uri().path(),
            host: host_of(request),
            port,
            headers: request.headers(),
            auth,
            opaque: false,
        })
    }

    /// Decides what `facts` (given the destination port) says by the policies that target the
    /// destination Service or this waypoint, logging a denial and dry-run matches.
    fn decide<'a>(&'a self, facts: impl FnOnce(u16) -> authz::Request<'a>) -> Result<(), Failure> {
        let (service, port) = match &self.destination {
            Destination::Service(_, port) => (self.service_key.as_deref(), *port),
            Destination::Workload(_, port) => (None, *port),
        };
        let context = &self.context;
        let policies = context.policies.all();
        let applying =
            policies.iter().map(AsRef::as_ref).filter(|policy| policy.applies_to(service, &context.gateway));
        let facts = facts(port);
        let decision = authz::decide(applying, &facts);
        for policy in &decision.dry_run_matches {
            tracing::info!(src = %self.client.identity, path = %facts.path, %policy, "dry-run policy matched");
        }
        if decision.verdict.allowed() {
            return Ok(());
        }
        if facts.opaque {
            tracing::info!(src = %self.client.identity, port, verdict = %decision.verdict, "connection denied");
        } else {
            tracing::info!(src = %self.client.identity, method = %facts.method, path = %facts.path, verdict = %decision.verdict, "request denied");
        }
        Err(Failure::Denied)
    }

    /// Routes `request` and forwards it; what it was routed to goes into `routed`. Policies and
    /// routes read the client's headers; `span`, when traced, is the parent named onward.
    async fn route(
        &self,
        mut request: Request<Incoming>,
        routed: &mut Routed,
        pending: &cancelled::Pending,
        span: Option<&crate::trace::Span>,
    ) -> Result<Response<Body>, Failure> {
        let auth = self.authenticate(&mut request)?;
        self.authorize(&request, auth.as_ref())?;
        let passed = waypoints_passed(request.headers());
        if passed >= MAX_CHAINED {
            return Err(Failure::Loop(passed));
        }
        let (service, port) = match &self.destination {
            Destination::Workload(workload, port) => {
                let target = SocketAddr::new(
                    address_of(workload, &self.client.address)
                        .ok_or(Failure::NoEndpoint(workload.uid.clone(), *port))?,
                    *port,
                );
                routed.backend = workload.uid.clone();
                routed.endpoint = Some(target);
                routed.workload = Some(workload.clone());
                onward(request.headers_mut(), span);
                let sent = self.forward(workload, target, request.map(BodyExt::boxed), None, (None, None));
                // A workload is no backend Service: no connection cap, no use to hold.
                return sent.await.map(|(response, _)| response);
            }
            Destination::Service(service, port) => (service.clone(), *port),
        };
        let service_routes = self.context.routes.get(self.service_key.as_deref().unwrap_or_default());
        // Consumer routes apply to their namespace's clients: the verified identity's.
        let client_namespace = self.client.identity.namespace.as_str();
        let routes = service_routes.as_ref().filter(|routes| routes.routes_http(port, client_namespace));
        let selected = match routes {
            Some(routes) => {
                let selected = routes
                    .select(port, client_namespace, request.method(), request.uri(), request.headers())
                    .ok_or(Failure::NoRoute)?;
                routed.route = selected.route.to_owned();
                Some(selected)
            }
            None => None,
        };
        let policies = match &selected {
            Some(selected) => Some(selected.policies),
            None => service_routes.as_deref().map(Routes::policies),
        };
        if let Some(policies) = policies {
            let grpc =
                request.headers().get(header::CONTENT_TYPE).is_some_and(|value| is_grpc(value.as_bytes()));
            self.police(policies, grpc, routed, pending).await?;
        }
        let (backend, backend_port, picked) = match selected {
            Some(Selected { rule, matched_prefix, .. }) => {
                if let Some(redirect) = rule.redirect() {
                    let host = host_of(&request).unwrap_or(&service.hostname);
                    let location = redirect.location(request.uri(), host, port, matched_prefix);
                    routed.backend = format!("redirect to {location}");
                    return Ok(redirected(redirect.status(), &location));
                }
                keeping_waypoints_passed(request.headers_mut(), |headers| {
                    rule.request_headers().apply(headers)
                });
                if let Some(rewrite) = rule.rewrite() {
                    let mut uri = request.uri().clone();
                    rewrite.apply(&mut uri, request.headers_mut(), matched_prefix);
                    *request.uri_mut() = uri;
                }
                let backend = rule.pick_backend_randomly().ok_or(Failure::NoBackend)?;
                (backend.service.clone(), backend.port, Some(backend))
            }
            None => (service.key(), port, None),
        };
        let selected = selected.map(|selected| selected.rule);
        routed.backend = format!("{backend}:{backend_port}");
        onward(request.headers_mut(), span);
        let picked_headers = picked.map(|backend| &backend.request_headers);
        let attempts = self.attempts((&backend, backend_port, picked_headers), request, selected, routed);
        let mut response = match selected.and_then(Rule::request_timeout) {
            Some(limit) => tokio::time::timeout(limit, attempts).await.map_err(|_| Failure::Timeout)??,
            None => attempts.await?,
        };
        if let Some(rule) = selected {
            rule.response_headers().apply(response.headers_mut());
        }
        if let Some(backend) = picked {
            backend.response_headers.apply(response.headers_mut());
        }
        Ok(response)
    }

    /// Applies `policies` to a request before it goes on, in the order of Istio's filters: the
    /// fault's delay, then its abort, then the rate limit (an aborted request takes no token).
    /// A gRPC abort answers a request that is not gRPC (`grpc`) with the HTTP status its code
    /// maps to.
    async fn police(
        &self,
        policies: &Policies,
        grpc: bool,
        routed: &mut Routed,
        pending: &cancelled::Pending,
    ) -> Result<(), Failure> {
        if let Some(fault) = &policies.fault {
            if let Some(delay) = fault.delay(fastrand::u32(..traffic::MILLION)) {
                routed.policy = format!("delayed {}ms by {}", delay.as_millis(), fault.policy);
                // A client giving up meanwhile is no rapid reset.
                pending.held(true);
                tokio::time::sleep(delay).await;
                pending.held(false);
            }
            if let Some(abort) = fault.abort(fastrand::u32(..traffic::MILLION)) {
                routed.policy = format!("aborted by {}", fault.policy);
                return Err(Failure::Aborted(if grpc { abort } else { abort.as_http() }));
            }
        }
        if let Some(limit) = &policies.rate_limit {
            let source = || self.client.identity.to_string();
            if let Err(wait) = self.context.limiter.take(limit, source, Instant::now()) {
                routed.policy = format!("rate limited by {}", limit.policy);
                return Err(Failure::RateLimited(wait));
            }
        }
        Ok(())
    }

    /// Sends `request` to an endpoint of Service `backend` (with the picked backendRef's own
    /// request headers), and again to another (when it has one) as long as the rule's retry
    /// policy and the backend's budget allow and the body was kept; the last attempt's answer is
    /// the request's.
    async fn attempts(
        &self,
        (backend, port, backend_headers): (&str, u16, Option<&crate::route::HeaderModifier>),
        request: Request<Incoming>,
        rule: Option<&Rule>,
        routed: &mut Routed,
    ) -> Result<Response<Body>, Failure> {
        let default_policy;
        let policy = match rule {
            Some(rule) => rule.retry(),
            None => {
                default_policy = crate::retry::Policy::default();
                &default_policy
            }
        };
        // A backend behind a waypoint of its own goes through it, which applies its policies.
        let chained = self.chained(backend)?;
        // The backend's own circuit breaker, whatever route the request came by.
        let backend_routes = self.context.routes.get(backend).filter(|_| chained.is_none());
        let breaker = backend_routes.as_deref().and_then(|routes| routes.policies().circuit_breaker.as_ref());
        let detection = breaker.and_then(|breaker| breaker.detection.as_ref());
        let capped = breaker
            .and_then(|breaker| breaker.connections)
            .map(|limits| self.context.connection_caps.of(backend, limits));
        let budget = self.context.budgets.of(backend);
        let _in_flight = match breaker.and_then(|breaker| breaker.max_requests.map(|max| (breaker, max))) {
            Some((breaker, max)) => budget.request_within(max).ok_or_else(|| {
                routed.policy = format!("overflow of {}", breaker.policy);
                Failure::Overflow
            })?,
            None => budget.request(),
        };
        let (mut parts, body) = request.into_parts();
        // The backend's load balancer: least request unless it says otherwise; a consistent
        // hash's key from the request (no such header: no hash, least request).
        let pick = backend_routes
            .as_deref()
            .and_then(|routes| routes.policies().load_balancer.as_ref())
            .map_or(&Pick::LeastRequest, |balancer| &balancer.pick);
        let hash_key = match pick {
            Pick::ConsistentHash(Some(header)) => {
                parts.headers.get(header).map(|value| balance::hash_key(value.as_bytes()))
            }
            Pick::ConsistentHash(None) => {
                Some(balance::hash_key(self.client.address.ip().to_string().as_bytes()))
            }
            _ => None,
        };
        let (mut streamed, kept) = match keep(&parts.headers, body).await? {
            Kept::Whole(bytes) => (None, Some(bytes)),
            Kept::Streaming(body) => (Some(body.boxed()), None),
        };
        if let Some(rule) = rule {
            self.mirror(rule.mirrors(), &parts, kept.as_ref());
        }
        // The backendRef's own filters, after the rule's: for this backend only, not a mirror.
        if let Some(modifier) = backend_headers {
            keeping_waypoints_passed(&mut parts.headers, |headers| modifier.apply(headers));
        }
        if chained.is_some() {
            parts.headers.append(header::VIA, self.context.via.clone());
        }
        let (mut tried, mut tried_hops) = (Vec::new(), Vec::new());
        let mut _retrying = None;
        loop {
            let (workload, target, serving, via) = match &chained {
                Some(chained) => {
                    let target = chained.target(&self.client.address, port)?;
                    // The session's requests keep to the pod they went through, bar a retry.
                    let held = match tried_hops.is_empty() {
                        true => self.held_hops(target, parts.version).await,
                        false => Vec::new(),
                    };
                    let (pod, peer) = chained.hop(&self.client.address, &tried_hops, &held)?;
                    (pod, target, Vec::new(), Some(peer))
                }
                None => {
                    let (workload, target, serving) =
                        self.choose(backend, port, &tried, detection.is_some(), pick, hash_key)?;
                    (workload, target, serving, None)
                }
            };
            routed.endpoint = Some(target);
            routed.workload = Some(workload.clone());
            let body = match (&kept, streamed.take()) {
                (Some(bytes), _) => whole(bytes.clone()),
                (None, Some(body)) => body,
                (None, None) => unreachable!("a streamed body is sent once: no retry without a kept one"),
            };
            let counting = self.context.in_flight.start(target);
            let answer = self
                .forward(&workload, target, copy(&parts, body), rule, (via.as_ref(), capped.as_ref()))
                .await
                .map(|(response, using)| response.map(|body| Counted::new(body, (counting, using)).boxed()));
            if let (Err(Failure::PendingOverflow), Some(breaker)) = (&answer, breaker) {
                routed.policy = format!("pending overflow of {}", breaker.policy);
            }
            let outcome = match &answer {
                Ok(response) => Some(Outcome::Answered(response.status())),
                Err(Failure::Timeout) => Some(Outcome::TimedOut),
                Err(Failure::Connect(_)) => Some(Outcome::ConnectFailed),
                Err(_) => None,
            };
            // What the endpoint did, as outlier detection counts it: a reset is a gateway error.
            // While a body is streamed the client takes part — a client that resets it or
            // sends it slowly fails the attempt — so only an attempt with a body kept whole
            // counts its timeout or reset against the endpoint.
            let seen = match (&answer, outcome) {
                (Ok(_), Some(outcome)) | (Err(Failure::Connect(_)), Some(outcome)) => Some(Seen::of(outcome)),
                (Err(Failure::Upstream(_)), _) if kept.is_some() => Some(Seen::GatewayError),
                (Err(Failure::Timeout), Some(outcome)) if kept.is_some() => Some(Seen::of(outcome)),
                _ => None,
            };
            if let (Some(breaker), Some(detection), Some(seen)) = (breaker, detection, seen)
                && let Some(lasts) =
                    self.context.outliers.record(detection, backend, target, seen, &serving, Instant::now())
            {
                tracing::info!(%backend, endpoint = %target, ?lasts, policy = %breaker.policy, "endpoint ejected");
            }
            let Some(outcome) = outcome else { return answer };
            if kept.is_none() || !policy.retries(outcome, routed.retries) {
                return answer;
            }
            let Some(retry) = budget.retry() else {
                tracing::info!(%backend, ?outcome, "retry budget exhausted: not retried");
                return answer;
            };
            _retrying = Some(retry);
            routed.retries += 1;
            tracing::debug!(%backend, %target, ?outcome, retry = routed.retries, "retrying");
            tried.push(target);
            if let Some(through) = &via {
                // Its connection goes, so the session's next requests keep to the pod the
                // retry goes through rather than the one that failed.
                self.upstreams.lock().await.remove(&upstream_key(target, Some(through), parts.version));
                tried_hops.push(through.ip);
            }
            tokio::time::sleep(policy.backoff(routed.retries, |bound| fastrand::u64(..=bound))).await;
        }
    }

    /// The waypoint in front of Service `backend`, when it has one that is not this waypoint:
    /// the request is sent through it, as a client's node proxy would send it, rather than to
    /// the backend's pods, whose node proxies refuse what bypasses their waypoint. 503 when that
    /// waypoint is not known.
    fn chained(&self, backend: &str) -> Result<Option<Chained>, Failure> {
        let state = &self.context.state;
        // Asked for every request's backend: the Service alone, not a copy of its endpoints.
        let Some(service) = state.service(backend) else { return Ok(None) };
        let Some(waypoint) = service.waypoint.as_ref().filter(|waypoint| !self.context.is_me(waypoint))
        else {
            return Ok(None);
        };
        let no_waypoint =
            || Failure::Connect(format!("{backend} is behind waypoint {waypoint}, which has no ready pod"));
        let (_, pods) = state.waypoint(waypoint).ok_or_else(no_waypoint)?;
        let identity =
            state.waypoint_identity(waypoint, &self.context.trust_domain).ok_or_else(no_waypoint)?;
        let pods: Vec<Arc<Workload>> = pods.into_iter().filter(|pod| pod.healthy).collect();
        if pods.is_empty() {
            return Err(no_waypoint());
        }
        let vips = service.vips.iter().map(|vip| vip.ip).collect();
        Ok(Some(Chained { backend: backend.to_owned(), pods, identity, vips }))
    }

    /// Sends a copy of the request to each of `mirrors` that samples it, its host suffixed
    /// `-shadow` as Envoy marks a copy, in a task of its own: the answer, or a failure, is
    /// only logged and never delays the request. Only a body kept whole can be copied: a
    /// request whose body is streamed is not mirrored; nor is one while
    /// [`MAX_MIRRORS_IN_FLIGHT`] copies are.
    fn mirror(&self, mirrors: &[Mirror], parts: &http::request::Parts, body: Option<&Bytes>) {
        for mirror in mirrors.iter().filter(|mirror| mirror.samples(|n| fastrand::u32(0..n))) {
            let Some(body) = body else {
                tracing::debug!(mirror = %mirror.backend.service, "a streamed body is not mirrored");
                continue;
            };
            // A slow mirror must not pile up copies: past the limit, copies are dropped.
            let Ok(permit) = self.context.mirrors_in_flight.clone().try_acquire_owned() else {
                tracing::debug!(mirror = %mirror.backend.service, "too many copies in flight: not mirrored");
                continue;
            };
            let mut request = copy(parts, whole(body.clone()));
            shadow(&mut request);
            let session = Session::new(self.context.clone(), self.destination.clone(), self.client.clone());
            let (service, port) = (mirror.backend.service.clone(), mirror.backend.port);
            tokio::spawn(async move {
                let _permit = permit;
                let sent = async {
                    let (workload, target, via) = match session.chained(&service)? {
                        Some(chained) => {
                            request.headers_mut().append(header::VIA, session.context.via.clone());
                            let target = chained.target(&session.client.address, port)?;
                            let (pod, peer) = chained.hop(&session.client.address, &[], &[])?;
                            (pod, target, Some(peer))
                        }
                        None => {
                            let (workload, target) = session.endpoint(&service, port, &[])?;
                            (workload, target, None)
                        }
                    };
                    // A copy is not held to the backend's connection cap: it takes no request's place.
                    let (response, _) =
                        session.forward(&workload, target, request, None, (via.as_ref(), None)).await?;
                    Ok::<_, Failure>(response.status())
                };
                match tokio::time::timeout(MIRROR_TIMEOUT, sent).await {
                    Ok(Ok(status)) => tracing::debug!(mirror = %service, %status, "mirrored"),
                    Ok(Err(failure)) => tracing::debug!(mirror = %service, %failure, "mirror failed"),
                    Err(_) => tracing::debug!(mirror = %service, "mirror timed out"),
                }
            });
        }
    }

    /// One healthy endpoint of Service `key` serving `port`, the least loaded ([`balance`])
    /// among those not `tried` already (unless every one was), and its address.
    fn endpoint(
        &self,
        key: &str,
        port: u16,
        tried: &[SocketAddr],
    ) -> Result<(Arc<Workload>, SocketAddr), Failure> {
        self.choose(key, port, tried, false, &Pick::LeastRequest, None)
            .map(|(workload, target, _)| (workload, target))
    }

    /// [`Self::endpoint`], leaving out those outlier detection ejected when `detecting` (unless
    /// every one is), picking as `pick` says (a consistent hash by `hash_key`; without one, least
    /// request); with the addresses of every endpoint it chose from.
    fn choose(
        &self,
        key: &str,
        port: u16,
        tried: &[SocketAddr],
        detecting: bool,
        pick: &Pick,
        hash_key: Option<u64>,
    ) -> Result<(Arc<Workload>, SocketAddr, Vec<SocketAddr>), Failure> {
        let no_endpoint = || Failure::NoEndpoint(key.to_owned(), port);
        let (service, endpoints) = self.context.state.service_by_key(key).ok_or_else(no_endpoint)?;
        let serving: Vec<(Arc<Workload>, u16)> = endpoints
            .into_iter()
            .filter(|workload| workload.healthy || service.allow_unhealthy)
            .filter_map(|workload| {
                let mapping = workload.services.get(key)?.iter().find(|m| m.service_port == port)?;
                let target_port = mapping.target_port;
                Some((workload, target_port))
            })
            .collect();
        let mut serving: Vec<(Arc<Workload>, SocketAddr)> = serving
            .into_iter()
            .filter_map(|(workload, target_port)| {
                let ip = address_of(&workload, &self.client.address)?;
                Some((workload, SocketAddr::new(ip, target_port)))
            })
            .collect();
        // When the Service prefers close endpoints: strict, only the closest to this waypoint
        // ever serve (ejected or tried ones again rather than farther ones); failover, below.
        let preference = service.locality_preference.as_ref();
        let me = preference
            .and_then(|_| self.context.address.and_then(|ip| self.context.state.workload_by_ip(ip)));
        if let Some(preference) = preference.filter(|preference| preference.strict) {
            serving = preference.closest(me.as_deref(), serving, |(workload, _)| workload);
        }
        let all: Vec<SocketAddr> = serving.iter().map(|(_, target)| *target).collect();
        // Usually none: the filter costs nothing then.
        let ejected =
            if detecting { self.context.outliers.ejected(key, &all, Instant::now()) } else { Vec::new() };
        let serving: Vec<&(Arc<Workload>, SocketAddr)> =
            serving.iter().filter(|(_, target)| !ejected.contains(target)).collect();
        let untried: Vec<&(Arc<Workload>, SocketAddr)> =
            serving.iter().copied().filter(|(_, target)| !tried.contains(target)).collect();
        let candidates: Vec<&(Arc<Workload>, SocketAddr)> =
            if untried.is_empty() { serving } else { untried };
        // Failover: the closest of those not tried or ejected, so a retry goes farther once
        // the near ones were tried.
        let candidates = match preference {
            Some(preference) if !preference.strict => {
                preference.closest(me.as_deref(), candidates, |(workload, _)| workload)
            }
            _ => candidates,
        };
        let addresses: Vec<SocketAddr> = candidates.iter().map(|(_, target)| *target).collect();
        let chosen = match (pick, hash_key) {
            (Pick::RoundRobin, _) => {
                (!addresses.is_empty()).then(|| self.context.turns.next(key) % addresses.len())
            }
            (Pick::Random, _) => (!addresses.is_empty()).then(|| fastrand::usize(..addresses.len())),
            (Pick::ConsistentHash(_), Some(hash_key)) => balance::rendezvous(hash_key, &addresses),
            _ => self.context.in_flight.least_loaded(&addresses, |n| fastrand::usize(..n)),
        };
        let (workload, target) = chosen.map(|index| candidates[index].clone()).ok_or_else(no_endpoint)?;
        Ok((workload, target, all))
    }

    /// Sends `request` to `workload` at `target` (within the rule's backend timeout), or
    /// through the waypoint pod `via` names, `target` then being its Service's address, on a
    /// connection within the backend's connection cap `capped`, if it has one. The answer, and
    /// the connection's use, to be held until the answer's body ends.
    async fn forward(
        &self,
        workload: &Workload,
        target: SocketAddr,
        request: Request<Body>,
        rule: Option<&Rule>,
        (via, capped): (Option<&Peer>, Option<&Arc<connections::Backend>>),
    ) -> Result<(Response<Body>, Option<connections::Use>), Failure> {
        let attempt = async {
            let version = request.version();
            let key = upstream_key(target, via, version);
            let (mut upstream, using) = self.upstream(workload, target, version, via, capped).await?;
            let response = match &mut upstream.sender {
                Sender::Http1(sender) => sender.send_request(request).await,
                Sender::Http2(sender) => sender.send_request(request).await,
            };
            // An HTTP/1.1 connection serves one request at a time: back for the next.
            if !upstream.is_closed() {
                self.upstreams.lock().await.insert(key, upstream);
            }
            let response = response.map_err(|error| Failure::Upstream(format!("{target}: {error}")))?;
            Ok::<_, Failure>((response, using))
        };
        let (response, using) = match rule.and_then(Rule::backend_timeout) {
            Some(limit) => tokio::time::timeout(limit, attempt).await.map_err(|_| Failure::Timeout)??,
            None => attempt.await?,
        };
        let mut response = response.map(BodyExt::boxed);
        strip_hop_by_hop(response.headers_mut());
        Ok((response, using))
    }

    /// The waypoint pods the session has open connections to `target` through, in `version`.
    async fn held_hops(&self, target: SocketAddr, version: Version) -> Vec<std::net::IpAddr> {
        let upstreams = self.upstreams.lock().await;
        let held = upstreams
            .iter()
            .filter(|(key, upstream)| key.0 == target && key.2 == version && !upstream.is_closed());
        held.filter_map(|(key, _)| key.1).collect()
    }

    /// The session's HTTP connection kept by `key`, if it may take this request now — counted
    /// under the same cap as the request's (none, or its backend's) and not being closed for a
    /// waiting request — and the request's use of it.
    async fn reuse(
        &self,
        key: UpstreamKey,
        capped: Option<&Arc<connections::Backend>>,
    ) -> Option<(Upstream, Option<connections::Use>)> {
        let mut upstreams = self.upstreams.lock().await;
        let upstream = upstreams.remove(&key)?;
        let reusable = match &upstream.sender {
            Sender::Http2(sender) => !sender.is_closed(),
            Sender::Http1(sender) => sender.is_ready(),
        };
        let using = match (&upstream.slot, capped) {
            (None, None) => Some(None),
            (Some(slot), Some(backend)) if reusable && slot.is_of(backend) => slot.start().map(Some),
            _ => None,
        };
        let using = using.filter(|_| reusable)?;
        if let Sender::Http2(sender) = &upstream.sender {
            // HTTP/2 multiplexes: it stays for others meanwhile.
            let shared = Upstream { sender: Sender::Http2(sender.clone()), slot: upstream.slot.clone() };
            upstreams.insert(key, shared);
        }
        Some((upstream, using))
    }

    /// An idle HTTP connection to `target` in `version`, or a new one over a new HBONE stream
    /// (to `target`'s pod, or `via` another waypoint) — under the backend's connection cap
    /// `capped` waiting for a place, if it has one —, and the request's use of it.
    async fn upstream(
        &self,
        workload: &Workload,
        target: SocketAddr,
        version: Version,
        via: Option<&Peer>,
        capped: Option<&Arc<connections::Backend>>,
    ) -> Result<(Upstream, Option<connections::Use>), Failure> {
        let key = upstream_key(target, via, version);
        let place = loop {
            // Registered before the map is read: an HTTP/2 connection the session opens
            // meanwhile is not missed.
            let opened = self.opened_http2.notified();
            if let Some(reused) = self.reuse(key, capped).await {
                return Ok(reused);
            }
            match capped {
                Some(backend) => tokio::select! {
                    place = backend.place() => {
                        break Some(place.map_err(|connections::Overflow| Failure::PendingOverflow)?);
                    }
                    // The session's new HTTP/2 connection may carry this request too.
                    () = opened => {}
                },
                None => break None,
            }
        };
        // Not bounded here: the pool bounds each step itself (the TCP connect, the handshakes,
        // the CONNECT's answer) and says which one failed; an answer it gave up on drops the
        // pooled connection that did not give it and is tried once on a new one.
        let stream = self.tunnel(workload, target, via).await?;
        let io = TokioIo::new(stream);
        let failed = |error: hyper::Error| Failure::Connect(format!("{target}: {error}"));
        let slot = place.as_ref().map(connections::Place::slot);
        let using =
            slot.as_ref().map(|slot| slot.start().expect("invariant: a new connection is not reclaimed"));
        let sender = if version == Version::HTTP_2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(failed)?;
            tokio::spawn(hold_place(connection, place));
            // Shared at once, not after this request's answer: it multiplexes.
            let shared = Upstream { sender: Sender::Http2(sender.clone()), slot: slot.clone() };
            self.upstreams.lock().await.insert(key, shared);
            self.opened_http2.notify_waiters();
            Sender::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(failed)?;
            tokio::spawn(hold_place(connection, place));
            Sender::Http1(sender)
        };
        Ok((Upstream { sender, slot }, using))
    }

    /// An HBONE stream to `target`, from the waypoint's identity to the endpoint's, on a pooled
    /// connection to its pod; or to the waypoint pod `via` names, which must prove its
    /// waypoint's identity.
    async fn tunnel(
        &self,
        workload: &Workload,
        target: SocketAddr,
        via: Option<&Peer>,
    ) -> Result<Tunnel, Failure> {
        let context = &self.context;
        let cert = context
            .identities
            .fetch(&context.identity)
            .await
            .map_err(|error| Failure::Connect(format!("no certificate: {error}")))?;
        let peer = match via {
            Some(through) => through.clone(),
            None => Peer { ip: target.ip(), expected: workload.identity(&context.trust_domain).into() },
        };
        let service_host = match &self.destination {
            Destination::Service(service, _) => Some(service.hostname.clone()),
            Destination::Workload(..) => None,
        };
        // Through another waypoint, the CONNECT counts the waypoints passed, this one added:
        // what that one relays at L4 carries no header of its own to count in.
        let own = context.via.to_str().unwrap_or_default();
        let via = match (via, &self.client.via) {
            (None, _) => String::new(),
            (Some(_), Some(before)) => format!("{before}, {own}"),
            (Some(_), None) => own.to_owned(),
        };
        let origin = Origin { source: self.client.address, service_host, baggage: String::new(), via };
        context
            .pool()
            .open(&crate::app::OwnDial, &cert, &peer, target, &origin, &Origin::traceparent().to_string())
            .await
            // With its causes (anyhow's `{:#}`): which step failed is the error, why its source.
            .map_err(|error| Failure::Connect(format!("{:#}", anyhow::Error::new(error))))
    }
}

impl Upstream {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }
}

/// Drives an upstream HTTP connection, holding its `place` under its backend's connection cap
/// until it ends — or, asked to close for a waiting request while idle, ends it.
async fn hold_place<C: Future>(connection: C, place: Option<connections::Place>) {
    match place {
        Some(place) => {
            tokio::select! {
                _ = connection => {}
                () = place.reclaimed() => tracing::debug!("an idle upstream connection closed for a waiting request"),
            }
        }
        None => {
            connection.await;
        }
    }
}

/// `workload`'s address of the client's family, else its first.
fn address_of(workload: &Workload, client: &SocketAddr) -> Option<std::net::IpAddr> {
    let v4 = client.ip().to_canonical().is_ipv4();
    workload.addresses.iter().find(|ip| ip.is_ipv4() == v4).or(workload.addresses.first()).copied()
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `application/grpc+proto`, …), not
/// gRPC-Web's.
fn is_grpc(content_type: &[u8]) -> bool {
    content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// A request's headers as it goes on: this hop's removed, the trace context the waypoint's.
fn onward(headers: &mut HeaderMap, span: Option<&crate::trace::Span>) {
    strip_hop_by_hop(headers);
    if let Some(span) = span {
        span.propagate(headers);
    }
}

/// Removes the headers of one hop, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(',').map(|name| name.trim().to_ascii_lowercase()))
        .collect();
    // `te: trailers` is end-to-end for gRPC over HTTP/2.
    let te_trailers = headers.get(header::TE).is_some_and(|value| value == "trailers");
    for name in &HOP_BY_HOP {
        if !(te_trailers && name == header::TE) {
            headers.remove(name);
        }
    }
    for name in named {
        if !(te_trailers && name == "te") {
            headers.remove(name.as_str());
        }
    }
}

/// The host a request names, port and all, as Istio matches `hosts`: HTTP/2's `:authority`
/// (an absolute URI's), else HTTP/1's `Host` (one at most: [`crate::normalize`]).
fn host_of(request: &Request<Incoming>) -> Option<&str> {
    match request.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => request.headers().get(header::HOST)?.to_str().ok(),
    }
}

/// A body's size when known before it is read: its `content-length`, or what its framing says.
fn body_size(headers: &HeaderMap, body: &impl hyper::body::Body) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .or_else(|| body.size_hint().exact())
}

/// A request body as the attempts get it.
enum Kept {
    /// Read whole, for every attempt.
    Whole(Bytes),
    /// Too large or of unknown length: streamed to the first attempt.
    Streaming(Incoming),
}

/// Reads `body` whole when it is empty or its length is known and small enough to retry.
async fn keep(headers: &HeaderMap, body: Incoming) -> Result<Kept, Failure> {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return Ok(Kept::Whole(Bytes::new()));
    }
    match body_size(headers, &body) {
        Some(size) if size <= MAX_REPLAYED_BODY => {
            let collected = body.collect().await.map_err(Failure::RequestBody)?;
            Ok(Kept::Whole(collected.to_bytes()))
        }
        _ => Ok(Kept::Streaming(body)),
    }
}

/// A request with `parts`' method, target, version and headers, and `body`.
fn copy(parts: &http::request::Parts, body: Body) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// Marks `request` as a mirror's copy, as Envoy does: `-shadow` after its host (before a port),
/// in `Host` and in an HTTP/2 `:authority`.
fn shadow(request: &mut Request<Body>) {
    let shadowed = |host: &str| match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|byte| byte.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    };
    let host = request.headers().get(header::HOST).and_then(|host| host.to_str().ok());
    if let Some(Ok(value)) = host.map(|host| http::HeaderValue::from_str(&shadowed(host))) {
        request.headers_mut().insert(header::HOST, value);
    }
    if let Some(authority) = request.uri().authority() {
        let mut parts = request.uri().clone().into_parts();
        parts.authority = http::uri::Authority::try_from(shadowed(authority.as_str())).ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// How long a mirror's copy may take before it is given up.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Mirrors' copies in flight at most, waypoint-wide (each holds its body, up to 64 KiB).
pub const MAX_MIRRORS_IN_FLIGHT: usize = 128;

/// A body of `bytes`, all there is.
fn whole(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A redirect to `location`, with `status`.
fn redirected(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(whole(Bytes::new()));
    *response.status_mut() = status;
    // The location was made of checked parts and a valid request target.
    if let Ok(location) = http::HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A gRPC error of the waypoint's own: trailers only (HTTP 200, no body), `code` in
/// `grpc-status`, `message` percent-encoded in `grpc-message` (the gRPC HTTP/2 protocol's
/// encoding: every byte outside printable ASCII, and `%`).
fn grpc_answer(code: u32, message: &str) -> Response<Body> {
    let mut response = Response::new(whole(Bytes::new()));
    let encoded: String = message
        .bytes()
        .map(|byte| match byte {
            b' '..=b'~' if byte != b'%' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", http::HeaderValue::from(code));
    if let Ok(message) = http::HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", message);
    }
    response
}

/// The gRPC code an HTTP status of the waypoint's own answers a gRPC request with: Envoy's
/// table (gRPC's own for the statuses it names; anything else UNKNOWN).
fn grpc_code(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// A response of the waypoint's own.
fn own_answer(status: StatusCode, message: &str) -> Response<Body> {
    let body = whole(Bytes::from(format!("{message}\n")));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use http::{Request, header};
    use http_body_util::{BodyExt, Empty};

    use super::{
        Abort, Body, Chained, Failure, HeaderMap, keeping_waypoints_passed, shadow, strip_hop_by_hop,
        upstream_key, via_entry, waypoints_passed,
    };

    /// A pod of another waypoint, `other` in `shop`, at `ip`.
    fn waypoint_pod(name: &str, ip: &str) -> std::sync::Arc<weft_proxy::state::Workload> {
        std::sync::Arc::new(weft_proxy::state::Workload {
            trust_domain: None,
            uid: name.into(),
            network: String::new(),
            name: name.into(),
            namespace: "shop".into(),
            workload_name: "other".into(),
            service_account: "other".into(),
            addresses: vec![ip.parse().unwrap()],
            node: "node0".into(),
            protocol: weft_proxy::state::TunnelProtocol::Hbone,
            services: std::collections::BTreeMap::new(),
            healthy: true,
            authorization_policies: Vec::new(),
            shared_address: false,
            waypoint: None,
            locality: weft_proxy::state::Locality::default(),
        })
    }

    #[test]
    fn requests_through_another_waypoint_keep_to_the_pod_they_went_through_and_a_retry_goes_through_another()
    {
        let chained = Chained {
            backend: "shop/special".into(),
            pods: vec![waypoint_pod("other-a", "10.244.0.20"), waypoint_pod("other-b", "10.244.1.20")],
            identity: weft_proxy::identity::Identity::new("cluster.local", "shop", "other"),
            vips: vec!["10.96.0.30".parse().unwrap()],
        };
        let client: std::net::SocketAddr = "10.244.0.9:40000".parse().unwrap();
        let target = chained.target(&client, 8080).unwrap();
        assert_eq!(target.to_string(), "10.96.0.30:8080");
        let (first, second): (std::net::IpAddr, std::net::IpAddr) =
            ("10.244.0.20".parse().unwrap(), "10.244.1.20".parse().unwrap());
        for _ in 0..20 {
            // The pod the session holds a connection through, while it is not tried.
            let (pod, peer) = chained.hop(&client, &[], &[first]).unwrap();
            assert_eq!((pod.name.as_str(), peer.ip), ("other-a", first));
            let (pod, peer) = chained.hop(&client, &[first], &[first]).unwrap();
            assert_eq!((pod.name.as_str(), peer.ip), ("other-b", second), "a retry goes through another");
        }
        // Every pod tried: any of them again, rather than none.
        assert!(chained.hop(&client, &[first, second], &[]).is_ok());
        // One address for the backend, a connection per waypoint pod.
        let (_, a) = chained.hop(&client, &[second], &[]).unwrap();
        let (_, b) = chained.hop(&client, &[first], &[]).unwrap();
        let version = http::Version::HTTP_11;
        assert_ne!(upstream_key(target, Some(&a), version), upstream_key(target, Some(&b), version));
        assert_ne!(upstream_key(target, Some(&a), version), upstream_key(target, None, version));
    }

    fn request(uri: &str, host: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(Empty::new().map_err(|never| match never {}).boxed()).unwrap()
    }

    #[test]
    fn the_waypoints_a_request_came_through_are_counted_from_via_and_no_other_proxy_counts() {
        let mut headers = HeaderMap::new();
        assert_eq!(waypoints_passed(&headers), 0);
        let entry = via_entry("shop/waypoint");
        assert_eq!(entry, "1.1 waypoint.shop.weft-waypoint");
        headers.append(header::VIA, entry);
        headers.append(
            header::VIA,
            http::HeaderValue::from_static("1.0 fred, 1.1 other.shop.weft-waypoint (note)"),
        );
        headers.append(
            header::VIA,
            http::HeaderValue::from_static("HTTP/1.1 proxy.example, 1.1 not-weft-waypoint"),
        );
        assert_eq!(waypoints_passed(&headers), 2);
    }

    #[test]
    fn a_route_filter_cannot_take_away_the_waypoints_a_request_came_through() {
        let arrived = || {
            let mut headers = HeaderMap::new();
            headers.append(header::VIA, via_entry("shop/a"));
            headers.append(header::VIA, http::HeaderValue::from_static("1.1 proxy.example"));
            headers.append(header::VIA, via_entry("shop/b"));
            headers
        };
        let removed = |headers: &mut HeaderMap| drop(headers.remove(header::VIA));
        let set = |headers: &mut HeaderMap| drop(headers.insert(header::VIA, "1.1 mine".parse().unwrap()));
        for filter in [removed, set] {
            let mut headers = arrived();
            keeping_waypoints_passed(&mut headers, filter);
            assert_eq!(waypoints_passed(&headers), 2);
        }
        // A filter that leaves Via alone leaves it as it was, and one adding to it is obeyed.
        let mut headers = arrived();
        keeping_waypoints_passed(&mut headers, |headers| {
            headers.append(header::VIA, "1.1 mine".parse().unwrap());
        });
        let values: Vec<_> = headers.get_all(header::VIA).iter().collect();
        assert_eq!(
            values,
            ["1.1 a.shop.weft-waypoint", "1.1 proxy.example", "1.1 b.shop.weft-waypoint", "1.1 mine"]
        );
        // Nothing to keep: the filter has its way.
        let mut headers = HeaderMap::new();
        headers.append(header::VIA, http::HeaderValue::from_static("1.1 proxy.example"));
        keeping_waypoints_passed(&mut headers, removed);
        assert!(headers.get(header::VIA).is_none());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go_but_te_trailers_stays() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, http::HeaderValue::from_static(value));
            }
            map
        };
        let mut sent = headers(&[
            ("connection", "Keep-Alive, X-Private, te"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-sum"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut sent);
        assert_eq!(sent, headers(&[("te", "trailers"), ("x-kept", "1")]));
        let mut other_te = headers(&[("te", "gzip"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut other_te);
        assert_eq!(other_te, headers(&[("x-kept", "1")]));
    }

    #[test]
    fn a_mirrors_copy_is_marked_shadow_after_its_host_and_before_its_port() {
        let mut http1 = request("/items", Some("echo.shop:8080"));
        shadow(&mut http1);
        assert_eq!(http1.headers()[header::HOST], "echo.shop-shadow:8080");
        let mut plain = request("/items", Some("echo"));
        shadow(&mut plain);
        assert_eq!(plain.headers()[header::HOST], "echo-shadow");
        let mut http2 = request("http://echo.shop/items?q=1", None);
        shadow(&mut http2);
        assert_eq!(http2.uri().to_string(), "http://echo.shop-shadow/items?q=1");
        assert!(http2.headers().get(header::HOST).is_none());
    }

    #[test]
    fn a_rate_limited_request_is_told_when_to_come_back_and_a_grpc_abort_answers_as_grpc() {
        let limited = Failure::RateLimited(std::time::Duration::from_millis(1200)).answer(false);
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "2", "rounded up");
        let soon = Failure::RateLimited(std::time::Duration::from_millis(3)).answer(false);
        assert_eq!(soon.headers()[header::RETRY_AFTER], "1", "never 0");
        let http = Failure::Aborted(Abort::Http(http::StatusCode::BAD_GATEWAY)).answer(false);
        assert_eq!(http.status(), 502);
        let grpc = Failure::Aborted(Abort::Grpc(14)).answer(true);
        assert_eq!(grpc.status(), 200, "gRPC errors travel in grpc-status");
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(grpc.headers()[header::CONTENT_TYPE], "application/grpc");
    }

    #[test]
    fn the_waypoints_own_answers_to_a_grpc_request_are_grpc_errors_saying_why() {
        let grpc = |failure: Failure| {
            let answer = failure.answer(true);
            assert_eq!(answer.status(), 200, "{failure}: gRPC errors travel in grpc-status");
            assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/grpc");
            let header = |name| answer.headers()[name].to_str().unwrap().to_owned();
            (header("grpc-status"), header("grpc-message"))
        };
        assert_eq!(grpc(Failure::Denied).0, "7");
        assert_eq!(grpc(Failure::NoRoute).0, "12");
        assert_eq!(grpc(Failure::Timeout).0, "14");
        assert_eq!(
            grpc(Failure::Loop(5)),
            ("2".into(), "a route loop between waypoints: 5 passed already".into())
        );
        let limited = Failure::RateLimited(std::time::Duration::from_secs(1));
        assert_eq!(limited.answer(true).headers()[header::RETRY_AFTER], "1");
        assert_eq!(grpc(limited).0, "14");
        // The message percent-encoded, as gRPC's HTTP/2 protocol asks.
        let (_, message) = grpc(Failure::Connect("100% gone\n\u{e9}".into()));
        assert_eq!(message, "100%25 gone%0A%C3%A9");
        // A client that is not gRPC's gets HTTP's status.
        assert_eq!(Failure::Denied.answer(false).status(), 403);
    }
}
