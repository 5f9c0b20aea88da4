//! The connections a proxy carries now, for `/config_dump` and `weftctl connections`: which pod,
//! who to whom, where, since when, and the bytes so far — counted as they pass, with one
//! relaxed atomic add per read or write.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::SystemTime,
};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One open connection.
#[derive(Debug, Serialize)]
pub struct Connection {
    /// `namespace/name` of the pod it belongs to.
    pub pod: String,
    pub source: String,
    /// The destination's identity, or `-` outside the mesh.
    pub destination: String,
    pub target: SocketAddr,
    /// Seconds since the Unix epoch.
    pub since: u64,
    /// From the pod's app to the destination, so far.
    pub sent: AtomicU64,
    /// Back to the pod's app, so far.
    pub received: AtomicU64,
}

/// The open connections of a node's proxy.
#[derive(Debug, Default)]
pub struct Live {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

/// A connection's place in [`Live`]; dropping it removes the connection.
#[derive(Debug)]
pub struct Registration<'a> {
    live: &'a Live,
    id: u64,
    pub connection: Arc<Connection>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.live.open().remove(&self.id);
    }
}

impl Live {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a connection of `pod` from `source` to `destination` at `target`.
    pub fn register(
        &self,
        pod: String,
        source: String,
        destination: String,
        target: SocketAddr,
    ) -> Registration<'_> {
        let since =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let connection = Arc::new(Connection {
            pod,
            source,
            destination,
            target,
            since,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open().insert(id, connection.clone());
        Registration { live: self, id, connection }
    }

    /// Every open connection, oldest first.
    pub fn dump(&self) -> Vec<Arc<Connection>> {
        let mut open: Vec<(u64, Arc<Connection>)> =
            self.open().iter().map(|(id, connection)| (*id, connection.clone())).collect();
        open.sort_by_key(|(id, _)| *id);
        open.into_iter().map(|(_, connection)| connection).collect()
    }
}

/// The pod's side of a connection, counting what it reads (sent) and writes (received).
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    connection: Arc<Connection>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, connection: Arc<Connection>) -> Self {
        Self { inner, connection }
    }
}

fn add(counter: &AtomicU64, bytes: usize) {
    counter.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        add(&self.connection.sent, buf.filled().len() - before);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            add(&self.connection.received, *written);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsFd> AsFd for Counted<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}
