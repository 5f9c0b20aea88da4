//! The HBONE client: one mutual-TLS HTTP/2 connection to a destination pod's 15008, on which
//! each proxied TCP connection opens a CONNECT stream.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use super::{MAX_HEADER_LIST, Stream, window};
use crate::tls::{self, records::TlsStream};

/// How long the TLS and HTTP/2 handshakes may take together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams we open on one connection before opening another (Istio: 100).
pub const MAX_STREAMS: usize = 100;
/// How long a CONNECT may wait for its answer: longer than a destination proxy may take to
/// give one (Weft's waits up to 10 s for its configuration to hold the pod, then up to 5 s for
/// the app's connect), so its refusal, which says why, arrives rather than this timeout; and
/// a pooled connection that stopped answering is found out, dropped and replaced, within the
/// patience of whoever waits (the waypoint relies on it).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a CONNECT says of the connection it carries, as Istio's ztunnel says it: the original
/// source and the Service it was for (`Forwarded: for="ip:port";host=<hostname>`) and the
/// source workload (`baggage`, OpenTelemetry's keys); each stream also gets a `traceparent` of
/// its own ([`Origin::traceparent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: SocketAddr,
    /// The Service's hostname, when the connection was to a Service's address.
    pub service_host: Option<String>,
    /// `k8s.namespace.name=…,k8s.deployment.name=…,service.name=…` (empty: not sent).
    pub baggage: String,
    /// `Via` (empty: not sent): the waypoints a connection relayed at L4 came through, so the
    /// next can cut a route loop between them.
    pub via: String,
}

impl Origin {
    /// A valid `traceparent` for tests whose streams' traces nobody reads.
    #[cfg(feature = "testing")]
    pub const TEST_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    /// An origin known only by its address.
    pub fn from_address(source: SocketAddr) -> Self {
        Self { source, service_host: None, baggage: String::new(), via: String::new() }
    }

    /// The `Forwarded` header's value.
    pub fn forwarded(&self) -> String {
        match &self.service_host {
            Some(host) => format!("for=\"{}\";host={host}", self.source),
            None => format!("for=\"{}\"", self.source),
        }
    }

    /// The baggage Istio's ztunnel sends for a source workload `name` in `namespace` (its
    /// controller's name, the workload type Istio assumes by default).
    pub fn baggage_of(namespace: &str, name: &str) -> String {
        format!("k8s.namespace.name={namespace},k8s.deployment.name={name},service.name={name}")
    }

    /// A new W3C `traceparent`: a new trace, not sampled. The same value is logged by both
    /// ends of the tunnel, so one connection's lines can be found on either node; kept parsed
    /// (no text on the heap) by the connection that logs it.
    pub fn traceparent() -> crate::trace_context::SpanContext {
        crate::trace_context::SpanContext::root(false)
    }
}

/// Errors opening a connection or a stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TCP connect to {peer}")]
    Dial {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {peer}")]
    Tls {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake with {peer} not finished within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout { peer: SocketAddr },
    #[error("HTTP/2")]
    Http2(#[source] h2::Error),
    #[error("CONNECT to {target} not answered within {RESPONSE_TIMEOUT:?}")]
    Timeout { target: SocketAddr },
    #[error("CONNECT to {target} refused with {status}")]
    Refused { target: SocketAddr, status: StatusCode },
    #[error("connecting to {peer} (for several streams at once): {reason}")]
    Shared { peer: SocketAddr, reason: String },
    #[error("the CONNECT request cannot be made: {0}")]
    BadRequest(String),
}

/// An established HBONE connection; cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct Connection {
    send_request: h2::client::SendRequest<Bytes>,
    /// Whether its TLS session resumed an earlier one.
    resumed: bool,
}

/// A connection's driver, as spawned.
type Driver = h2::client::Connection<TlsStream, Bytes>;

/// Drives a connection until it has no handles and no streams left, or until its peer stops
/// answering PINGs (its streams then fail, and the pool drops it): a task for as long as the
/// connection lives. An async block, not an async fn, and the driver borrowed by the select,
/// not moved into it: either way the driver (2.4 KB, with its TLS session) would be kept
/// twice in the task.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
fn drive(mut driver: Driver, peer: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let ping_pong = driver.ping_pong().expect("invariant: taken once, here");
        tokio::select! {
            ended = &mut driver => if let Err(error) = ended {
                tracing::debug!(%peer, %error, "HBONE connection ended");
            },
            reason = super::keepalive(ping_pong) => {
                tracing::info!(%peer, %reason, "HBONE peer unresponsive; connection closed");
            }
        }
    }
}

impl Connection {
    /// Runs TLS (verifying the destination per `config`) and HTTP/2 over `tcp`, connected to a
    /// pod's HBONE port. The connection lives until every clone and stream is dropped.
    pub async fn handshake(tcp: TcpStream, config: Arc<ClientConfig>) -> Result<Self, Error> {
        let peer = tcp
            .peer_addr()
            .map_err(|source| Error::Tls { peer: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
        let handshake = async {
            let (tls, kind) = tls::handshake::connect(config, tls::resumption_name(peer.ip()), tcp)
                .await
                .map_err(|source| Error::Tls { peer, source })?;
            let resumed = super::resumed(kind);
            let h2 = h2::client::Builder::new()
                .initial_window_size(window::STREAM)
                .initial_connection_window_size(window::CONNECTION)
                .max_frame_size(window::MAX_FRAME)
                .max_header_list_size(MAX_HEADER_LIST)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(Error::Http2)?;
            Ok((h2, resumed))
        };
        let ((send_request, driver), resumed) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| Error::HandshakeTimeout { peer })??;
        tokio::spawn(drive(driver, peer));
        Ok(Self { send_request, resumed })
    }

    /// Whether its TLS session resumed an earlier one (no certificates exchanged).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Opens a stream to `target`, saying where it comes from ([`Origin`]) and tagged with
    /// `traceparent`, and returns it once the server answered 200.
    pub async fn open(
        &self,
        target: SocketAddr,
        origin: &Origin,
        traceparent: &str,
    ) -> Result<Stream, Error> {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .header("forwarded", origin.forwarded())
            .header("traceparent", traceparent);
        if !origin.baggage.is_empty() {
            request = request.header("baggage", origin.baggage.as_str());
        }
        if !origin.via.is_empty() {
            request = request.header("via", origin.via.as_str());
        }
        // Names and values are ours or a workload's Kubernetes names; one that is not a valid
        // header value fails this stream only.
        let request = request.body(()).map_err(|error| Error::BadRequest(error.to_string()))?;
        let answer = async {
            let mut send_request = self.send_request.clone().ready().await.map_err(Error::Http2)?;
            let (response, send) = send_request.send_request(request, false).map_err(Error::Http2)?;
            Ok((response.await.map_err(Error::Http2)?, send))
        };
        let (response, send) =
            tokio::time::timeout(RESPONSE_TIMEOUT, answer).await.map_err(|_| Error::Timeout { target })??;
        if response.status() != StatusCode::OK {
            return Err(Error::Refused { target, status: response.status() });
        }
        Ok(Stream::new(send, response.into_body()))
    }
}

#[cfg(test)]
mod driver_tests {
    /// Every HBONE connection a client proxy holds has this task; it took 5120 bytes while it
    /// kept its driver twice.
    #[test]
    fn a_connections_driver_task_keeps_its_driver_once() {
        fn returned<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
            size_of::<F>()
        }
        let task = crate::census::task_bytes(returned(super::drive));
        let driver = size_of::<super::Driver>();
        assert!(task < 2 * driver, "a connection's driver task takes {task} bytes, its driver {driver}");
    }
}

#[cfg(test)]
mod origin_tests {
    use super::Origin;

    #[test]
    fn baggage_names_the_source_as_istios_ztunnel_does() {
        let baggage = Origin::baggage_of("shop", "web");
        assert_eq!(baggage, "k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web");
    }

    #[test]
    fn forwarded_names_the_source_and_the_service_as_istio_does() {
        let mut origin = Origin::from_address("10.0.0.1:40000".parse().unwrap());
        assert_eq!(origin.forwarded(), r#"for="10.0.0.1:40000""#);
        origin.service_host = Some("echo.shop.svc.cluster.local".into());
        assert_eq!(origin.forwarded(), r#"for="10.0.0.1:40000";host=echo.shop.svc.cluster.local"#);
        let v6 = Origin::from_address("[fd00::1]:80".parse().unwrap());
        assert_eq!(v6.forwarded(), r#"for="[fd00::1]:80""#);
    }

    #[test]
    fn each_stream_gets_a_w3c_traceparent_of_its_own() {
        let first = Origin::traceparent().to_string();
        let parts: Vec<&str> = first.split('-').collect();
        assert_eq!(parts.len(), 4, "{first}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "00"), "{first}");
        assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()) && parts[1] != "0".repeat(32), "{first}");
        assert_ne!(first, Origin::traceparent().to_string());
    }
}
