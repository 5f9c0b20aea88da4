//! Moving bytes between a TCP connection and its other side — an HBONE stream or another TCP
//! connection — until both directions end. No buffer is held while a connection is idle: a
//! direction takes a chunk only once its socket is readable, hands that same chunk to HTTP/2
//! (no copy), and writes HBONE DATA frames to the socket straight from the frames. So an idle
//! proxied connection costs its task and sockets, not 128 KiB of buffers, and each byte is
//! copied once less each way. EOF half-closes the other side (FIN ↔ END_STREAM); an error or a
//! reset on either side resets the other (RST_STREAM, or a TCP RST through a zero linger).
use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};

use crate::hbone::{Stream, io_error};

/// The most one read takes from a socket.
const CHUNK: usize = 64 * 1024;

/// Bytes relayed so far, readable while the relay runs.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    /// From the TCP connection to the other side.
    pub sent: AtomicU64,
    /// From the other side to the TCP connection.
    pub received: AtomicU64,
}

impl Counts {
    /// (sent, received).
    pub fn get(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

fn add(counter: &AtomicU64, bytes: usize) {
    counter.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Relays between `tcp` and the HBONE `stream`, counting into `counts`.
pub async fn hbone(tcp: &mut TcpStream, stream: Stream, counts: &Counts) -> io::Result<()> {
    let (mut send, mut recv, pending, _held) = stream.into_parts();
    let (reader, mut writer) = tcp.split();
    let relayed = async {
        tokio::try_join!(tcp_to_hbone(&reader, &mut send, &counts.sent), async {
            // Bytes the stream had received before the relay began go first.
            if !pending.is_empty() {
                writer.write_all(&pending).await?;
                add(&counts.received, pending.len());
            }
            hbone_to_tcp(&mut recv, &mut writer, &counts.received).await
        })
    }
    .await;
    if relayed.is_err() {
        send.send_reset(h2::Reason::CANCEL);
        reset(tcp);
    }
    relayed.map(drop)
}

/// Relays between two TCP connections, counting what `tcp` sends and receives into `counts`.
pub async fn tcp(tcp: &mut TcpStream, upstream: &mut TcpStream, counts: &Counts) -> io::Result<()> {
    let ((from_tcp, mut to_tcp), (from_upstream, mut to_upstream)) = (tcp.split(), upstream.split());
    let relayed = tokio::try_join!(
        tcp_to_tcp(&from_tcp, &mut to_upstream, &counts.sent),
        tcp_to_tcp(&from_upstream, &mut to_tcp, &counts.received),
    );
    if relayed.is_err() {
        reset(tcp);
        reset(upstream);
    }
    relayed.map(drop)
}

/// Makes closing `tcp` send RST rather than FIN: the peer learns the other side failed.
fn reset(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
}

/// What `from` has once it is readable, in a chunk taken then; `None` at EOF.
async fn read_chunk(from: &ReadHalf<'_>) -> io::Result<Option<BytesMut>> {
    loop {
        from.readable().await?;
        let mut chunk = BytesMut::with_capacity(CHUNK);
        match from.try_read_buf(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(chunk)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

async fn tcp_to_tcp(from: &ReadHalf<'_>, to: &mut WriteHalf<'_>, counter: &AtomicU64) -> io::Result<()> {
    while let Some(chunk) = read_chunk(from).await? {
        to.write_all(&chunk).await?;
        add(counter, chunk.len());
    }
    to.shutdown().await
}

async fn tcp_to_hbone(
    from: &ReadHalf<'_>,
    send: &mut SendStream<Bytes>,
    counter: &AtomicU64,
) -> io::Result<()> {
    while let Some(mut chunk) = read_chunk(from).await? {
        add(counter, chunk.len());
        // Only as much as the peer's window allows: flow control holds the reader back.
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => granted.min(chunk.len()),
                Some(Err(error)) => return done_unless_failed(send, error),
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            if let Err(error) = send.send_data(chunk.split_to(granted).freeze(), false) {
                return done_unless_failed(send, error);
            }
        }
    }
    match send.send_data(Bytes::new(), true) {
        Ok(()) => Ok(()),
        Err(error) => done_unless_failed(send, error),
    }
}

/// A send that failed because the peer reset the stream with NO_ERROR ends this direction
/// cleanly: the peer answered in full and wants no more (RFC 9113 §8.1, what an HTTP server
/// behind a waypoint does when it answers before the request's end), and its answer must reach
/// the client rather than a reset. What the client still sends is not read; the kernel answers
/// it as TCP does when a peer has closed. Any other failure is one. (The error itself may only
/// say the stream is gone, so the stream is asked why.)
fn done_unless_failed(send: &mut SendStream<Bytes>, error: h2::Error) -> io::Result<()> {
    let mut asked = std::task::Context::from_waker(std::task::Waker::noop());
    match send.poll_reset(&mut asked) {
        std::task::Poll::Ready(Ok(h2::Reason::NO_ERROR)) => Ok(()),
        _ => Err(io_error(error)),
    }
}

async fn hbone_to_tcp(recv: &mut RecvStream, to: &mut WriteHalf<'_>, counter: &AtomicU64) -> io::Result<()> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(io_error)?;
        to.write_all(&data).await?;
        // Window back only once the bytes left: a slow reader slows the sender.
        let _ = recv.flow_control().release_capacity(data.len());
        add(counter, data.len());
    }
    to.shutdown().await
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// A connected pair of loopback sockets: (the near end, the far end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (near, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn tcp_relay_carries_both_ways_half_closes_and_counts() {
        let ((mut app, mut pod_side), (mut upstream, mut server)) = (pair().await, pair().await);
        let counts = Counts::default();
        let relay = tcp(&mut pod_side, &mut upstream, &counts);
        let peers = async {
            app.write_all(b"hello").await.unwrap();
            app.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello", "the app's bytes and its FIN reach the server");
            server.write_all(b"bye!!!").await.unwrap();
            drop(server);
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"bye!!!");
        };
        let (relayed, ()) = tokio::join!(relay, peers);
        relayed.unwrap();
        assert_eq!(counts.get(), (5, 6));
    }

    /// An HBONE stream whose peer answered (END_STREAM) and then reset it with NO_ERROR, as an
    /// HTTP/2 server does when it answers before the request ended, seen to be reset before it
    /// is returned; and the connection task.
    async fn answered_and_reset() -> Stream {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut server = h2::server::handshake(server_io).await.unwrap();
            let (_request, mut respond) = server.accept().await.unwrap().unwrap();
            let mut send = respond.send_response(http::Response::new(()), false).unwrap();
            send.send_data(Bytes::new(), true).unwrap();
            // Dropping the request's body before it ended resets the stream, with NO_ERROR.
            drop((_request, send, respond));
            std::future::poll_fn(|cx| server.poll_closed(cx)).await.unwrap();
        });
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder().method("POST").uri("http://peer/").body(()).unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        let mut recv = response.await.unwrap().into_body();
        while let Some(data) = recv.data().await {
            data.expect("the answer, then its end, even with the reset behind it");
        }
        let reason = std::future::poll_fn(|cx| send.poll_reset(cx)).await.unwrap();
        assert_eq!(reason, h2::Reason::NO_ERROR);
        Stream::new(send, recv)
    }

    #[tokio::test]
    async fn a_peer_that_answered_and_reset_with_no_error_ends_the_relay_cleanly() {
        let (mut app, mut pod_side) = pair().await;
        let stream = answered_and_reset().await;
        let counts = Counts::default();
        let relay = hbone(&mut pod_side, stream, &counts);
        let app_side = async {
            let mut answer = Vec::new();
            app.read_to_end(&mut answer).await.unwrap();
            // The client half-closes after reading the answer: its END_STREAM finds the stream
            // reset by the peer.
            app.shutdown().await.unwrap();
        };
        let (relayed, ()) = tokio::join!(relay, app_side);
        relayed.expect("a peer done with NO_ERROR is no failure");
    }

    #[tokio::test]
    async fn tcp_relay_turns_a_reset_into_a_reset() {
        let ((app, mut pod_side), (mut upstream, mut server)) = (pair().await, pair().await);
        let counts = Counts::default();
        let relay = async {
            let relayed = tcp(&mut pod_side, &mut upstream, &counts).await;
            // As the proxy does when a relay ends: the sockets close.
            drop((pod_side, upstream));
            relayed
        };
        let peers = async {
            socket2::SockRef::from(&app).set_linger(Some(std::time::Duration::ZERO)).unwrap();
            drop(app);
            let mut byte = [0u8; 1];
            server.read(&mut byte).await
        };
        let (relayed, seen) = tokio::join!(relay, peers);
        assert!(relayed.is_err(), "the relay reports the reset");
        assert_eq!(seen.unwrap_err().kind(), io::ErrorKind::ConnectionReset, "and passes it on, not a FIN");
    }
}
