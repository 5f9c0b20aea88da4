//! The TCP side of an HBONE connection's TLS: reads ahead, so that TLS records arrive with
//! one system call per socketful rather than one per record. rustls asks its transport for at
//! most one record at a time (16 KiB and a few bytes); read straight from the socket, a bulk
//! transfer cost the receiving proxy a `recvfrom` per 16 KiB. Here one read takes a relay's
//! chunk from the socket ([`relay::poll_read_chunk`]: up to 256 KiB, so a bulk transfer's TLS
//! reads and its relays' reads keep pace) and rustls's reads are served from it, a copy in
//! cache. Like the relays' chunks, the buffer exists only while it holds bytes: an idle
//! connection holds none.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::relay;

/// A TCP connection that reads ahead of its reader.
#[derive(Debug)]
pub struct ReadAhead {
    tcp: TcpStream,
    /// Read from the socket, not yet by the reader; no allocation when empty.
    ahead: BytesMut,
}

impl ReadAhead {
    pub fn new(tcp: TcpStream) -> Self {
        Self { tcp, ahead: BytesMut::new() }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            // Empty at the end of the stream: the reader then sees EOF too.
            this.ahead = ready!(relay::poll_read_chunk(&mut this.tcp, cx))?;
        }
        let n = this.ahead.len().min(out.remaining());
        out.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        if this.ahead.is_empty() {
            // Gives the block back rather than keep it for the next read.
            this.ahead = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    #[tokio::test]
    async fn record_sized_reads_get_every_byte_in_order_from_socketfuls_and_a_drained_buffer_is_freed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent: Vec<u8> = (0..3 * relay::CHUNK + 12_345).map(|i| (i % 251) as u8).collect();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move { TcpStream::connect(addr).await.unwrap().write_all(&sent).await.unwrap() }
        });
        let mut reader = ReadAhead::new(listener.accept().await.unwrap().0);
        let mut received = Vec::new();
        // As rustls reads: at most a record and its header at a time.
        let mut record = vec![0; 16 * 1024 + 5];
        let mut most_ahead = 0;
        loop {
            let n = reader.read(&mut record).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&record[..n]);
            most_ahead = most_ahead.max(reader.ahead.len());
            if reader.ahead.is_empty() {
                assert_eq!(reader.ahead.capacity(), 0, "a drained read-ahead kept its block");
            }
        }
        writer.await.unwrap();
        assert!(received == sent, "the bytes read are not the bytes sent");
        assert!(most_ahead > record.len(), "no read took more than a record from the socket");
    }
}
