//! HBONE: one HTTP/2 CONNECT stream per proxied TCP connection, inside mutual TLS between the
//! source workload's and the destination workload's identities, to `<destination pod IP>:15008`.
//! Wire-compatible with Istio's ztunnel (DESIGN.md §3): `:authority` is the target `ip:port`,
//! `Forwarded: for="<src>"` carries the original source, the server answers 200 only once policy
//! allowed the stream and the upstream connection succeeded, and no client byte reaches the
//! upstream before that. Half-close and reset propagate both ways (FIN ↔ END_STREAM,
//! RST ↔ RST_STREAM; see [`crate::relay`]).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod client;
pub mod pool;
pub mod server;

/// The HBONE port inside every enrolled pod's netns.
pub const PORT: u16 = 15008;

/// HTTP/2 settings for tunnels: large windows, since one stream carries a whole TCP connection
/// and the default 64 KiB window caps throughput at window/RTT.
pub mod window {
    /// Per-stream receive window.
    pub const STREAM: u32 = 4 * 1024 * 1024;
    /// Per-connection receive window (shared by its streams).
    pub const CONNECTION: u32 = 16 * 1024 * 1024;
    /// Largest DATA frame we accept.
    pub const MAX_FRAME: u32 = 1024 * 1024;
}

/// How an HBONE connection's TLS handshake went (the proxies' metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// From the first byte to an established session (on the client: TCP, TLS and HTTP/2).
    pub took: std::time::Duration,
    /// Resumed from an earlier session's ticket: no certificates or signatures exchanged.
    pub resumed: bool,
}

impl Handshake {
    /// How a rustls handshake that ended with `kind` went.
    pub fn new(took: std::time::Duration, kind: Option<rustls::HandshakeKind>) -> Self {
        Self { took, resumed: resumed(kind) }
    }
}

/// Whether a rustls handshake that ended with `kind` resumed an earlier session.
pub(crate) fn resumed(kind: Option<rustls::HandshakeKind>) -> bool {
    kind == Some(rustls::HandshakeKind::Resumed)
}

/// Largest decoded header list accepted (a CONNECT needs a few hundred bytes).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// How often each end of an HBONE connection PINGs the other, and how long it waits for the
/// answer before it gives the connection up: a peer that vanished (a node gone, a half-open TCP
/// connection) must not hold the connection and its streams forever.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// PINGs the peer every [`KEEPALIVE_INTERVAL`]; resolves when one goes unanswered for
/// [`KEEPALIVE_TIMEOUT`] (or the connection failed). The connection must be driven meanwhile.
pub(crate) async fn keepalive(mut ping_pong: h2::PingPong) -> String {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return error.to_string(),
            Err(_) => return format!("no answer to a PING within {KEEPALIVE_TIMEOUT:?}"),
        }
    }
}

/// One HBONE stream as a byte stream: reads come from the peer's DATA frames (flow-control
/// credit returned as the bytes are consumed), writes become DATA frames, shutdown sends
/// END_STREAM. A peer's RST_STREAM surfaces as `ConnectionReset`.
#[derive(Debug)]
pub struct Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet read.
    pending: Bytes,
    /// Counts the stream in the census for as long as it lives.
    _held: crate::census::StreamHeld,
}

impl Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv, pending: Bytes::new(), _held: crate::census::StreamHeld::new() }
    }

    /// Its halves (for [`crate::relay`], which polls them directly).
    pub(crate) fn halves(&mut self) -> (&mut SendStream<Bytes>, &mut RecvStream) {
        (&mut self.send, &mut self.recv)
    }

    /// The bytes received but not yet read, taken (for [`crate::relay`]).
    pub(crate) fn take_pending(&mut self) -> Bytes {
        std::mem::take(&mut self.pending)
    }

    /// Waits until bytes arrived (or the stream ended) and shows them without consuming them —
    /// what a proxy sniffs to tell a protocol; empty at the end of the stream. Later reads
    /// still return them.
    pub async fn peek(&mut self) -> io::Result<&[u8]> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        Ok(&self.pending)
    }

    /// Ready once `pending` holds bytes or the peer ended the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let len = data.len();
                    self.pending = data;
                    // The bytes are ours now: give the peer its window back.
                    let _ = self.recv.flow_control().release_capacity(len);
                }
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                None => break, // END_STREAM: EOF
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Aborts the stream: the peer sees RST_STREAM (CANCEL).
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

pub(crate) fn io_error(error: h2::Error) -> io::Error {
    if error.is_reset() || error.is_go_away() {
        io::Error::new(io::ErrorKind::ConnectionReset, error)
    } else if error.is_io() {
        error.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(error)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_fill(cx))?;
        let len = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..len]);
        self.pending.advance(len);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let len = granted.min(buf.len());
                    self.send.send_data(Bytes::copy_from_slice(&buf[..len]), false).map_err(io_error)?;
                    return Poll::Ready(Ok(len));
                }
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes queued frames when the connection task runs; nothing buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(io_error))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    /// An HTTP/2 connection over an in-memory pipe (no I/O driver, so paused time is safe):
    /// the server's ping handle, the client's connection to drive or not, and the server's.
    async fn pair() -> (
        h2::PingPong,
        (h2::client::SendRequest<Bytes>, h2::client::Connection<tokio::io::DuplexStream, Bytes>),
        h2::server::Connection<tokio::io::DuplexStream, Bytes>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(h2::server::handshake(server_io));
        let (send_request, client) = h2::client::handshake(client_io).await.unwrap();
        // The server's handshake completes once the client's preface is read.
        let mut client = client;
        let mut server = tokio::select! {
            server = server => server.unwrap().unwrap(),
            _ = &mut client => panic!("client connection ended"),
        };
        let ping_pong = server.ping_pong().unwrap();
        (ping_pong, (send_request, client), server)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_pings_is_given_up_and_one_that_answers_is_kept() {
        let (ping_pong, (_handle, client), mut server) = pair().await;
        let answering = tokio::spawn(client);
        let kept = tokio::time::timeout(Duration::from_secs(300), async {
            tokio::select! {
                reason = super::keepalive(ping_pong) => reason,
                _ = server.accept() => "server connection ended".to_owned(),
            }
        })
        .await;
        assert!(kept.is_err(), "an answering peer was given up: {kept:?}");
        answering.abort();

        let (ping_pong, silent, mut server) = pair().await;
        let given_up = tokio::time::timeout(Duration::from_secs(300), async {
            tokio::select! {
                reason = super::keepalive(ping_pong) => reason,
                _ = server.accept() => "server connection ended".to_owned(),
            }
        })
        .await
        .expect("a silent peer was kept");
        assert!(given_up.contains("no answer"), "{given_up}");
        drop(silent);
    }
}
