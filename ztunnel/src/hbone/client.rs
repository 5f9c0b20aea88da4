//! The HBONE client: one mutual-TLS HTTP/2 connection to a destination pod's 15008, on which
//! each proxied TCP connection opens a CONNECT stream.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{MAX_HEADER_LIST, Stream, window};
use crate::tls;

/// How long the TLS and HTTP/2 handshakes may take together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams we open on one connection before opening another (Istio: 100).
pub const MAX_STREAMS: usize = 100;
/// How long a CONNECT may wait for its answer (the peer connects upstream meanwhile).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors opening a connection or a stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
}

/// An established HBONE connection; cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct Connection {
    send_request: h2::client::SendRequest<Bytes>,
}

impl Connection {
    /// Runs TLS (verifying the destination per `config`) and HTTP/2 over `tcp`, connected to a
    /// pod's HBONE port. The connection lives until every clone and stream is dropped.
    pub async fn handshake(tcp: TcpStream, config: Arc<ClientConfig>) -> Result<Self, Error> {
        let peer = tcp
            .peer_addr()
            .map_err(|source| Error::Tls { peer: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
        let handshake = async {
            let tls = TlsConnector::from(config)
                .connect(tls::unused_server_name(), tcp)
                .await
                .map_err(|source| Error::Tls { peer, source })?;
            h2::client::Builder::new()
                .initial_window_size(window::STREAM)
                .initial_connection_window_size(window::CONNECTION)
                .max_frame_size(window::MAX_FRAME)
                .max_header_list_size(MAX_HEADER_LIST)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(Error::Http2)
        };
        let (send_request, mut driver) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| Error::HandshakeTimeout { peer })??;
        let ping_pong = driver.ping_pong().expect("invariant: taken once, here");
        // The driver ends by itself once the connection has no handles and no streams left;
        // a peer that stops answering PINGs ends it too (its streams fail, the pool drops it).
        tokio::spawn(async move {
            tokio::select! {
                ended = driver => if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "HBONE connection ended");
                },
                reason = super::keepalive(ping_pong) => {
                    tracing::info!(%peer, %reason, "HBONE peer unresponsive; connection closed");
                }
            }
        });
        Ok(Self { send_request })
    }

    /// Opens a stream to `target`, carrying `source` as `Forwarded: for`, and returns it once
    /// the server answered 200.
    pub async fn open(&self, target: SocketAddr, source: SocketAddr) -> Result<Stream, Error> {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .header("forwarded", format!("for=\"{source}\""))
            .body(())
            .expect("invariant: a CONNECT to ip:port is a valid request");
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
