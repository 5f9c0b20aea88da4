//! The waypoint's worker threads, each running a single-threaded runtime of its own (Envoy's
//! model): an accepted HBONE connection, its sessions and the upstream connections they open
//! all stay on one thread, so a request handed from task to task wakes no other thread.
//! On one multi-threaded runtime each such hand-off could wake a parked thread, a futex call and
//! a context switch: four per request as measured, and a quarter of the waypoint's CPU per
//! request (0.197 → 0.147 vCPU at 1000 requests/s, `cargo xtask bench --waypoint`). For the same reason each worker dials endpoints from a pool of its own
//! ([`crate::app::Context::pool`]).
//! A new connection goes to the worker with the fewest open. The main thread keeps what is not
//! per request: accepting, xDS, certificates, the admin endpoints, span export.
use std::{
    cell::Cell,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{runtime::Runtime, sync::mpsc, task::JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::inbound::Inbound;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker this code runs on; 0 on any other thread.
pub fn current() -> usize {
    WORKER.get()
}

/// A connection accepted on the main thread, for a worker to serve.
pub struct Accepted {
    pub tcp: std::net::TcpStream,
    pub acceptor: TlsAcceptor,
    pub peer: SocketAddr,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted").field("peer", &self.peer).finish_non_exhaustive()
    }
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    /// Closed once every worker's thread has ended (each holds a sender).
    ended: mpsc::Receiver<()>,
}

#[derive(Debug)]
struct Worker {
    /// None once draining.
    queue: Option<mpsc::UnboundedSender<Accepted>>,
    /// Its connections open, or handed to it and not yet served.
    open: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` workers (at least one) serving HBONE connections with `handler`.
    pub fn start(count: usize, handler: &Arc<Inbound>) -> std::io::Result<Self> {
        let (done, ended) = mpsc::channel(1);
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (queue, accepted) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let (handler, counted, done) = (handler.clone(), open.clone(), done.clone());
            std::thread::Builder::new()
                .name(format!("weft-worker-{index}"))
                .spawn(move || run(index, &runtime, accepted, &handler, &counted, done))?;
            workers.push(Worker { queue: Some(queue), open });
        }
        Ok(Self { workers, ended })
    }

    /// Hands `accepted` to the worker with the fewest open connections.
    pub fn serve(&self, accepted: Accepted) {
        let worker = self
            .workers
            .iter()
            .min_by_key(|worker| worker.open.load(Ordering::Relaxed))
            .expect("invariant: at least one worker");
        let Some(queue) = &worker.queue else {
            tracing::debug!(peer = %accepted.peer, "draining: HBONE connection dropped");
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        if queue.send(accepted).is_err() {
            // Its thread is gone: the connection goes with it.
            worker.open.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("a worker thread has ended; HBONE connection dropped");
        }
    }

    /// Connections open on every worker.
    pub fn open(&self) -> usize {
        self.workers.iter().map(|worker| worker.open.load(Ordering::Relaxed)).sum()
    }

    /// Takes no more connections; resolves once every open one has ended.
    pub async fn drain(&mut self) {
        // A worker's queue ends when its sender goes: the worker serves what is in it, then stops
        // taking more.
        for worker in &mut self.workers {
            worker.queue = None;
        }
        while self.ended.recv().await.is_some() {}
    }
}

/// A worker's thread: serves the connections handed to it until its queue ends and they have.
fn run(
    index: usize,
    runtime: &Runtime,
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    handler: &Arc<Inbound>,
    open: &Arc<AtomicUsize>,
    _done: mpsc::Sender<()>,
) {
    WORKER.set(index);
    runtime.block_on(async {
        let mut connections = JoinSet::new();
        let serve = |connections: &mut JoinSet<()>, Accepted { tcp, acceptor, peer }: Accepted| {
            let (handler, open) = (handler.clone(), open.clone());
            connections.spawn(async move {
                let served = match tokio::net::TcpStream::from_std(tcp) {
                    Ok(tcp) => weft_proxy::hbone::server::serve_connection(tcp, acceptor, handler)
                        .await
                        .map_err(|error| error.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                if let Err(error) = served {
                    tracing::info!(%peer, %error, "HBONE connection failed");
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        };
        loop {
            tokio::select! {
                next = accepted.recv() => match next {
                    Some(next) => serve(&mut connections, next),
                    None => break,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        while connections.join_next().await.is_some() {}
    });
}
