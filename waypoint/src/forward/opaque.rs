//! A stream to a waypoint's Service that is not HTTP — a database's protocol, say — told apart
//! by its first bytes, or any stream to a port a TCPRoute applies to, relayed at L4 over HBONE
//! with the waypoint's identity, as Istio's waypoint relays TCP: to a backend of the TCPRoute
//! by weight, else to the Service itself; then to one of its endpoints, or, for a backend
//! behind another waypoint, through one of that waypoint's pods. Policies decide it on
//! what an L4 connection has (its peer, its port; see [`crate::authz`]); HTTP routes do not
//! apply. One `connection` log line each.
use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use weft_proxy::hbone::Stream;

use super::{Session, address_of};
use crate::{authz, inbound::Destination, metrics::ConnectionLabels, route::Routes};

/// How long a stream's first bytes are waited for. A client that says nothing first speaks a
/// server-first protocol (MySQL, SMTP): its stream is relayed at L4 once this passed.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_millis(200);

/// What a stream carries, as far as the waypoint tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x or HTTP/2 (gRPC included).
    Http,
    Opaque,
}

/// Tells `stream`'s protocol by its first bytes ([`classify`]), or [`Protocol::Opaque`] when
/// none came within [`FIRST_BYTES_WAIT`]. The bytes stay in the stream.
pub async fn detect(stream: &mut Stream) -> io::Result<Protocol> {
    match tokio::time::timeout(FIRST_BYTES_WAIT, stream.peek()).await {
        Ok(first) => Ok(classify(first?)),
        Err(_) => Ok(Protocol::Opaque),
    }
}

/// HTTP/2's preface (`PRI * HTTP/2.0`) and an HTTP/1 request line both begin with a method
/// ([`is_token`]) and a space (the bytes may also end inside the token), after any empty lines (which a
/// server skips, RFC 9112 §2.2), and once the line is whole it ends in an HTTP version; anything
/// else — RTSP's `RTSP/1.0`, a line of text — is not HTTP. An empty stream (the client ended at
/// once) is left to HTTP, which ends it without connecting anywhere.
pub fn classify(first: &[u8]) -> Protocol {
    let skipped = first.iter().take_while(|byte| matches!(byte, b'\r' | b'\n')).count();
    let first = &first[skipped..];
    if first.is_empty() {
        return Protocol::Http;
    }
    let token = first.iter().take_while(|byte| is_token(**byte)).count();
    let after = first.get(token);
    if !(1..=MAX_METHOD).contains(&token) || after.is_some_and(|byte| *byte != b' ') {
        return Protocol::Opaque;
    }
    let Some(end) = first.iter().position(|byte| *byte == b'\n') else {
        // The line is not whole yet: its method is all there is to go on.
        return Protocol::Http;
    };
    let line = first[..end].strip_suffix(b"\r").unwrap_or(&first[..end]);
    let version = line.rsplit(|byte| *byte == b' ').next().unwrap_or_default();
    if version.starts_with(b"HTTP/") { Protocol::Http } else { Protocol::Opaque }
}

/// What the methods in use are made of (`GET`, `M-SEARCH`, `VERSION-CONTROL`): upper-case
/// letters, `-` and `_`. RFC 9110 allows any `tchar`, but a lower-case word is far likelier a
/// text protocol's (`ping`) than an HTTP method.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_uppercase() || byte == b'-' || byte == b'_'
}

/// The longest method token read as one (`PROPPATCH`, `UPDATEREDIRECTREF` and their like fit).
const MAX_METHOD: usize = 20;

impl Session {
    /// The routes of the stream's Service and its port; `None` for a workload's stream or a
    /// Service without routes.
    pub(super) fn service_routes(&self) -> Option<(Arc<Routes>, u16)> {
        let Destination::Service(service, port) = &self.destination else { return None };
        Some((self.context.routes.get(&service.key())?, *port))
    }

    /// Relays `stream` to its destination — the workload it names, a backend of its TCPRoute,
    /// or an endpoint of its Service — if the policies allow it; a refused or failed connection
    /// is reset.
    /// `routes` are the Service's, as [`Session::service_routes`] found them.
    pub(super) async fn relay(
        self,
        mut stream: Stream,
        routes: Option<(Arc<Routes>, u16)>,
    ) -> io::Result<()> {
        let started = Instant::now();
        let mut route = String::new();
        let (sent, received, outcome) = match self.relay_inner(&mut stream, routes.as_ref(), &mut route).await
        {
            Ok((target, (sent, received))) => (sent, received, format!("relayed to {target}")),
            Err(why) => {
                stream.reset();
                (0, 0, why)
            }
        };
        tracing::info!(
            src = %self.client.identity,
            client = %self.client.address,
            sent,
            received,
            route = %route,
            micros = started.elapsed().as_micros() as u64,
            outcome,
            "connection"
        );
        Ok(())
    }

    /// The relay's target and bytes each way, or why there was none or it failed; `route` is
    /// set to the TCPRoute that chose the backend.
    async fn relay_inner(
        &self,
        stream: &mut Stream,
        routes: Option<&(Arc<Routes>, u16)>,
        route: &mut String,
    ) -> Result<(SocketAddr, (u64, u64)), String> {
        self.decide(|port| {
            authz::Request::connection(Some(&self.client.identity), self.client.address.ip(), port)
        })
        .map_err(|failure| failure.to_string())?;
        let passed = super::waypoints_in(self.client.via.as_deref());
        if passed >= super::MAX_CHAINED {
            return Err(super::Failure::Loop(passed).to_string());
        }
        let (workload, target, via) = match &self.destination {
            Destination::Workload(workload, port) => {
                let ip = address_of(workload, &self.client.address)
                    .ok_or_else(|| format!("{} has no address", workload.uid))?;
                (workload.clone(), SocketAddr::new(ip, *port), None)
            }
            Destination::Service(service, port) => {
                let (backend, backend_port) = match routes
                    .and_then(|(routes, port)| routes.select_tcp(*port, &self.client.identity.namespace))
                {
                    Some(selected) => {
                        route.push_str(selected.route);
                        let backend = selected
                            .rule
                            .pick_backend_randomly()
                            .ok_or_else(|| format!("{}: no usable backend", selected.route))?;
                        (backend.service.clone(), backend.port)
                    }
                    None => (service.key(), *port),
                };
                // A backend behind a waypoint of its own is reached through it, as HTTP is.
                match self.chained(&backend).map_err(|failure| failure.to_string())? {
                    Some(chained) => {
                        let target = chained
                            .target(&self.client.address, backend_port)
                            .map_err(|failure| failure.to_string())?;
                        let (pod, peer) = chained
                            .hop(&self.client.address, &[], &[])
                            .map_err(|failure| failure.to_string())?;
                        (pod, target, Some(peer))
                    }
                    None => {
                        let (workload, target) = self
                            .endpoint(&backend, backend_port, &[])
                            .map_err(|failure| failure.to_string())?;
                        (workload, target, None)
                    }
                }
            }
        };
        // Bounded step by step by the pool, as a request's tunnel is (`Session::upstream`).
        let mut tunnel =
            self.tunnel(&workload, target, via.as_ref()).await.map_err(|failure| failure.to_string())?;
        let _counting = self.context.in_flight.start(target);
        let labels = ConnectionLabels {
            reporter: "waypoint",
            route: route.clone(),
            peers: self.peers(
                self.context.state.workload_by_ip(self.client.address.ip()).as_deref(),
                Some(&workload),
            ),
        };
        self.context.metrics.connection_opened(&labels);
        let relayed = tokio::io::copy_bidirectional(stream, &mut tunnel).await;
        // A relay that failed midway lost its counts: it is closed all the same.
        self.context.metrics.connection_closed(&labels, *relayed.as_ref().unwrap_or(&(0, 0)));
        relayed.map(|counts| (target, counts)).map_err(|error| format!("{target}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{Protocol, classify};

    #[test]
    fn http_is_told_by_its_method_token_and_anything_else_is_opaque() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST ",
            b"DELE",
            b"",
            b"\r\nGET / HTTP/1.1\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
            b"GET /a HTTP/1.0\n",
        ] {
            assert_eq!(classify(http), Protocol::Http, "{:?}", String::from_utf8_lossy(http));
        }
        for opaque in [
            &b"hello\n"[..],
            b"\x16\x03\x01\x02\x00",          // a TLS ClientHello
            b"\x00\x00\x00\x08\x04\xd2\x16/", // PostgreSQL's SSLRequest
            b"GET/ HTTP/1.1",
            b"*1\r\n$4\r\nPING\r\n", // Redis
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ ",
            b"hello world\n",
            b"OPTIONS rtsp://camera/live RTSP/1.0\r\n",
            b"ping",
        ] {
            assert_eq!(classify(opaque), Protocol::Opaque, "{:?}", String::from_utf8_lossy(opaque));
        }
    }
}
