//! Moving bytes between a TCP connection and its other side — an HBONE stream or another TCP
//! connection — until both directions end. No buffer is held while a connection is idle: a
//! direction takes a chunk only once its socket is readable, hands that same chunk to HTTP/2
//! (no copy), and writes HBONE DATA frames to the socket straight from the frames. So an idle
//! proxied connection costs its task and sockets, not a buffer per direction, and each byte is
//! copied once less each way. EOF half-closes the other side (FIN ↔ END_STREAM); an error or a
//! reset on either side resets the other (RST_STREAM, or a TCP RST through a zero linger).
//! Each relay is a state machine polled by hand ([`HboneRelay`], [`TcpRelay`]) rather than two
//! joined `async` loops: it is what an idle proxied connection's task holds for as long as it
//! lives, and the loops' futures (readiness waiters, write and capacity futures, for each
//! direction) took several times its few states and buffers' handles.
use std::{
    borrow::BorrowMut,
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use h2::SendStream;
use tokio::{
    io::{AsyncReadExt, AsyncWrite},
    net::TcpStream,
};

use crate::hbone::{Stream, io_error};

/// The most one read takes from a socket: a bulk transfer's reads, h2 DATA frames and the
/// other side's writes are this large, and so are HBONE's TLS reads and writes (`tls`), and
/// Istio's ztunnel grows its buffers to the same. 64 KiB cost the two proxies 15 % more CPU
/// per GB moved (four interleaved runs, 2026-12-07). A short read touches only the pages it
/// fills of a fresh block, but a chunk waiting for the other side (its flow-control window, or
/// its socket) holds the whole block until it goes.
pub(crate) const CHUNK: usize = 256 * 1024;

/// What `tcp` has to read, up to [`CHUNK`]; empty at its end. The chunk is allocated only
/// once the socket is readable. The read goes through `AsyncRead`, which takes a short read as
/// the socket drained and clears its readiness (`try_read_buf` does not, so the next wait began
/// with a read that only said "nothing": a third of a 1 KB request's reads, both proxies).
pub(crate) fn poll_read_chunk(tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<BytesMut>> {
    ready!(tcp.poll_read_ready(cx))?;
    let mut chunk = BytesMut::with_capacity(CHUNK);
    // Ready at once unless the readiness was stale; then it is cleared and this task waits
    // for the next, holding no chunk.
    ready!(std::pin::pin!(tcp.read_buf(&mut chunk)).poll(cx))?;
    Poll::Ready(Ok(chunk))
}

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

/// Relays between `tcp` and the HBONE `stream` (each owned, or a borrow of it: a connection's
/// task that keeps them anyway lends them, rather than hold them twice), counting into
/// `counts`; ready once both directions ended, or either failed (the other then reset).
pub fn hbone<T: BorrowMut<TcpStream>, S: BorrowMut<Stream>>(
    tcp: T,
    mut stream: S,
    counts: &Counts,
) -> HboneRelay<'_, T, S> {
    // Bytes the stream had received before the relay began go first.
    let pending = stream.borrow_mut().take_pending();
    let down = match pending.is_empty() {
        true => Down::Receiving,
        false => Down::Writing { data: pending, release: 0 },
    };
    HboneRelay { tcp, stream, up: Up::Reading, down, down_first: false, counts }
}

/// Both directions of a relay between a TCP connection and an HBONE stream ([`hbone`]).
#[derive(Debug)]
pub struct HboneRelay<'a, T, S> {
    tcp: T,
    stream: S,
    /// From the TCP connection to the stream.
    up: Up,
    /// From the stream to the TCP connection.
    down: Down,
    /// Which direction goes first on this poll: they take turns ([`HboneRelay::poll_both`]).
    down_first: bool,
    counts: &'a Counts,
}

impl<T: BorrowMut<TcpStream> + Unpin, S: BorrowMut<Stream> + Unpin> Future for HboneRelay<'_, T, S> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let relay = self.get_mut();
        let relayed = ready!(relay.poll_both(cx));
        if relayed.is_err() {
            relay.stream.borrow_mut().halves().0.send_reset(h2::Reason::CANCEL);
            reset(relay.tcp.borrow());
        }
        Poll::Ready(relayed)
    }
}

/// Where the TCP → HBONE direction is.
#[derive(Debug)]
enum Up {
    /// Waiting for the socket to be readable.
    Reading,
    /// A chunk read, sent as the peer's window allows.
    Sending(BytesMut),
    /// The socket's EOF read: END_STREAM to send.
    Ending,
    Done,
}

/// Where the HBONE → TCP direction is.
#[derive(Debug)]
enum Down {
    /// Waiting for DATA.
    Receiving,
    /// Bytes to write to the socket; then `release` bytes of window go back to the peer (none
    /// for what the stream held before the relay).
    Writing {
        data: Bytes,
        release: usize,
    },
    /// The stream ended: the socket's write side to shut.
    Shutting,
    Done,
}

impl<T: BorrowMut<TcpStream>, S: BorrowMut<Stream>> HboneRelay<'_, T, S> {
    /// Ready once both directions are done, or either failed.
    fn poll_both(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Each direction goes as far as it can, so each waits on what it needs (readiness,
        // window, DATA) with this task's waker. They take turns going first, as `try_join!`'s
        // branches did: one that always has work would otherwise spend the task's budget for
        // I/O on every poll and leave the other none.
        self.down_first = !self.down_first;
        let (up, down) = match self.down_first {
            true => {
                let down = self.poll_down(cx)?;
                (self.poll_up(cx)?, down)
            }
            false => {
                let up = self.poll_up(cx)?;
                (up, self.poll_down(cx)?)
            }
        };
        match (up, down) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.up {
                Up::Reading => {
                    let chunk = ready!(poll_read_chunk(self.tcp.borrow_mut(), cx))?;
                    match chunk.len() {
                        0 => self.up = Up::Ending,
                        read => {
                            add(&self.counts.sent, read);
                            self.up = Up::Sending(chunk);
                        }
                    }
                }
                Up::Sending(chunk) if chunk.is_empty() => self.up = Up::Reading,
                Up::Sending(chunk) => {
                    let send = self.stream.borrow_mut().halves().0;
                    // Only as much as the peer's window allows: flow control holds the reader back.
                    send.reserve_capacity(chunk.len());
                    let granted = match ready!(send.poll_capacity(cx)) {
                        Some(Ok(granted)) => granted.min(chunk.len()),
                        Some(Err(error)) => return Poll::Ready(self.end_up_unless_failed(error)),
                        // The stream is gone: cleanly if the peer answered in full and reset it
                        // with NO_ERROR while this chunk waited for window.
                        None => {
                            self.up = Up::Done;
                            return Poll::Ready(match peer_reset(send) {
                                Some(h2::Reason::NO_ERROR) => Ok(()),
                                _ => Err(io::ErrorKind::BrokenPipe.into()),
                            });
                        }
                    };
                    if granted > 0
                        && let Err(error) = send.send_data(chunk.split_to(granted).freeze(), false)
                    {
                        return Poll::Ready(self.end_up_unless_failed(error));
                    }
                }
                Up::Ending => {
                    let ended = self.stream.borrow_mut().halves().0.send_data(Bytes::new(), true);
                    self.up = Up::Done;
                    if let Err(error) = ended {
                        return Poll::Ready(self.end_up_unless_failed(error));
                    }
                }
                Up::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// A send that failed because the peer reset the stream with NO_ERROR ends this direction
    /// cleanly ([`done_unless_failed`]); any other failure is one.
    fn end_up_unless_failed(&mut self, error: h2::Error) -> io::Result<()> {
        self.up = Up::Done;
        done_unless_failed(self.stream.borrow_mut().halves().0, error)
    }

    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.down {
                Down::Receiving => match ready!(self.stream.borrow_mut().halves().1.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let release = data.len();
                        self.down = Down::Writing { data, release };
                    }
                    Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                    None => self.down = Down::Shutting,
                },
                Down::Writing { data, release } => {
                    while !data.is_empty() {
                        let written = ready!(Pin::new(self.tcp.borrow_mut()).poll_write(cx, data))?;
                        if written == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        add(&self.counts.received, written);
                        data.advance(written);
                    }
                    // Window back only once the bytes left: a slow reader slows the sender.
                    let _ = self.stream.borrow_mut().halves().1.flow_control().release_capacity(*release);
                    self.down = Down::Receiving;
                }
                Down::Shutting => {
                    ready!(Pin::new(self.tcp.borrow_mut()).poll_shutdown(cx))?;
                    self.down = Down::Done;
                }
                Down::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Relays between two TCP connections, counting what `tcp` sends and receives into `counts`;
/// ready once both directions ended, or either failed (both then reset).
pub fn tcp<'a>(tcp: &'a mut TcpStream, upstream: &'a mut TcpStream, counts: &'a Counts) -> TcpRelay<'a> {
    TcpRelay { tcp, upstream, there: Leg::Reading, back: Leg::Reading, back_first: false, counts }
}

/// Both directions of a relay between two TCP connections ([`tcp`]), polled by hand as
/// [`HboneRelay`] is.
#[derive(Debug)]
pub struct TcpRelay<'a> {
    tcp: &'a mut TcpStream,
    upstream: &'a mut TcpStream,
    /// From `tcp` to `upstream`.
    there: Leg,
    /// From `upstream` to `tcp`.
    back: Leg,
    /// Which direction goes first on this poll: they take turns, as [`HboneRelay`]'s do.
    back_first: bool,
    counts: &'a Counts,
}

/// Where one direction of a TCP relay is.
#[derive(Debug)]
enum Leg {
    /// Waiting for its source to be readable.
    Reading,
    /// A chunk read, being written.
    Writing(BytesMut),
    /// Its source's EOF read: the other's write side to shut.
    Shutting,
    Done,
}

impl Future for TcpRelay<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let relay = self.get_mut();
        let relayed = ready!(relay.poll_both(cx));
        if relayed.is_err() {
            reset(relay.tcp);
            reset(relay.upstream);
        }
        Poll::Ready(relayed)
    }
}

impl TcpRelay<'_> {
    /// Ready once both directions are done, or either failed.
    fn poll_both(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.back_first = !self.back_first;
        let (sent, received) = (&self.counts.sent, &self.counts.received);
        let (there, back) = match self.back_first {
            true => {
                let back = copy(self.upstream, self.tcp, &mut self.back, received, cx)?;
                (copy(self.tcp, self.upstream, &mut self.there, sent, cx)?, back)
            }
            false => {
                let there = copy(self.tcp, self.upstream, &mut self.there, sent, cx)?;
                (there, copy(self.upstream, self.tcp, &mut self.back, received, cx)?)
            }
        };
        match (there, back) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}

/// Moves what `from` has to `to` as far as it can, counting into `counter`; ready once `from`
/// ended and `to` was shut.
fn copy(
    from: &mut TcpStream,
    to: &mut TcpStream,
    state: &mut Leg,
    counter: &AtomicU64,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        match state {
            Leg::Reading => {
                let chunk = ready!(poll_read_chunk(from, cx))?;
                *state = if chunk.is_empty() { Leg::Shutting } else { Leg::Writing(chunk) };
            }
            Leg::Writing(chunk) => {
                while !chunk.is_empty() {
                    let written = ready!(Pin::new(&mut *to).poll_write(cx, chunk))?;
                    if written == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    add(counter, written);
                    chunk.advance(written);
                }
                *state = Leg::Reading;
            }
            Leg::Shutting => {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                *state = Leg::Done;
            }
            Leg::Done => return Poll::Ready(Ok(())),
        }
    }
}

/// Makes closing `tcp` send RST rather than FIN: the peer learns the other side failed.
fn reset(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
}

/// A send that failed because the peer reset the stream with NO_ERROR ends this direction
/// cleanly: the peer answered in full and wants no more (RFC 9113 §8.1, what an HTTP server
/// behind a waypoint does when it answers before the request's end), and its answer must reach
/// the client rather than a reset. What the client still sends is not read; the kernel answers
/// it as TCP does when a peer has closed. Any other failure is one. (The error itself may only
/// say the stream is gone, so the stream is asked why.)
fn done_unless_failed(send: &mut SendStream<Bytes>, error: h2::Error) -> io::Result<()> {
    match peer_reset(send) {
        Some(h2::Reason::NO_ERROR) => Ok(()),
        _ => Err(io_error(error)),
    }
}

/// Why the peer reset the stream `send` belongs to, if it did.
fn peer_reset(send: &mut SendStream<Bytes>) -> Option<h2::Reason> {
    let mut asked = std::task::Context::from_waker(std::task::Waker::noop());
    match send.poll_reset(&mut asked) {
        Poll::Ready(Ok(reason)) => Some(reason),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
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

    /// An HBONE stream to a peer that echoes what it receives, DATA for DATA, and ends when
    /// the stream does; a small window (16 KiB) so that flow control holds the relay back.
    async fn echoing() -> Stream {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut server =
                h2::server::Builder::new().initial_window_size(16 * 1024).handshake(server_io).await.unwrap();
            let (request, mut respond) = server.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while server.accept().await.is_some() {} });
            let mut send = respond.send_response(http::Response::new(()), false).unwrap();
            let mut body = request.into_body();
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                let _ = body.flow_control().release_capacity(data.len());
                send.reserve_capacity(data.len());
                let mut data = data;
                while !data.is_empty() {
                    let granted = std::future::poll_fn(|cx| send.poll_capacity(cx)).await.unwrap().unwrap();
                    send.send_data(data.split_to(granted.min(data.len())), false).unwrap();
                }
            }
            send.send_data(Bytes::new(), true).unwrap();
        });
        let (mut client, connection) =
            h2::client::Builder::new().initial_window_size(16 * 1024).handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder().method("POST").uri("http://peer/").body(()).unwrap();
        let (response, send) = client.send_request(request, false).unwrap();
        Stream::new(send, response.await.unwrap().into_body())
    }

    #[tokio::test]
    async fn hbone_relay_carries_both_ways_past_the_window_half_closes_and_counts() {
        let (mut app, mut pod_side) = pair().await;
        let counts = Counts::default();
        let relay = hbone(&mut pod_side, echoing().await, &counts);
        // Four windows' worth: the relay must wait for window on the way up, and give it back
        // on the way down, or this stalls.
        let sent: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let app_side = async {
            let (mut reader, mut writer) = app.split();
            let write = async {
                writer.write_all(&sent).await.unwrap();
                writer.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let read = reader.read_to_end(&mut back);
            let ((), read) = tokio::join!(write, read);
            read.unwrap();
            back
        };
        let (relayed, back) = tokio::join!(relay, app_side);
        relayed.unwrap();
        assert!(back == sent, "the echo differs: {} bytes back of {}", back.len(), sent.len());
        assert_eq!(counts.get(), (sent.len() as u64, sent.len() as u64));
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
    async fn what_the_client_still_sends_to_a_peer_done_with_no_error_ends_the_relay_cleanly() {
        let (mut app, mut pod_side) = pair().await;
        let stream = answered_and_reset().await;
        let counts = Counts::default();
        let relay = hbone(&mut pod_side, stream, &counts);
        let app_side = async {
            // More of the request, after the peer answered: there is no stream left to send it
            // on, which is no failure of the relay.
            app.write_all(b"the rest of the upload").await.unwrap();
            let mut answer = Vec::new();
            app.read_to_end(&mut answer).await.unwrap();
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
