//! The waypoint's worker threads, each running a single-threaded runtime of its own (Envoy's
//! model): an accepted HBONE connection, its sessions and the upstream connections they open
//! all stay on one thread, so a request handed from task to task wakes no other thread.
//! On one multi-threaded runtime each such hand-off could wake a parked thread, a futex call and
//! a context switch: four per request as measured, and a quarter of the waypoint's CPU per
//! request (0.197 → 0.147 vCPU at 1000 requests/s, `cargo xtask bench --waypoint`). For the same reason each worker dials endpoints from a pool of its own
//! ([`crate::app::Context::pool`]).
//! A new connection goes to the worker with the fewest open: work is spread by connection, not
//! by request (a node proxy under load opens several to the waypoint, its pool's lanes). The main thread keeps what is not
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
use weft_proxy::hbone::server::Handler;

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

/// The count of a worker whose thread is gone: more than any other's.
const GONE: usize = usize::MAX / 2;

#[derive(Debug)]
struct Worker {
    /// None once draining.
    queue: Option<mpsc::UnboundedSender<Accepted>>,
    /// Its connections open, or handed to it and not yet served.
    open: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` workers (at least one) serving HBONE connections with `handler` (the
    /// waypoint's [`crate::inbound::Inbound`]).
    pub fn start<H: Handler>(count: usize, handler: &Arc<H>) -> std::io::Result<Self> {
        let (done, ended) = mpsc::channel(1);
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (queue, accepted) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let (handler, counted, done) = (handler.clone(), open.clone(), done.clone());
            std::thread::Builder::new().name(format!("weft-worker-{index}")).spawn(move || {
                // Counted while the worker runs; its runtime goes with its thread.
                let _tasks_counted = weft_proxy::census::count_runtime(runtime.handle().clone());
                run(index, &runtime, accepted, &handler, &counted, done);
            })?;
            workers.push(Worker { queue: Some(queue), open });
        }
        Ok(Self { workers, ended })
    }

    /// Hands `accepted` to the worker with the fewest open connections.
    pub fn serve(&self, mut accepted: Accepted) {
        let mut workers: Vec<&Worker> = self.workers.iter().collect();
        workers.sort_by_key(|worker| worker.open.load(Ordering::Relaxed));
        for worker in workers {
            let Some(queue) = &worker.queue else {
                tracing::debug!(peer = %accepted.peer, "draining: HBONE connection dropped");
                return;
            };
            worker.open.fetch_add(1, Ordering::Relaxed);
            match queue.send(accepted) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    // Its thread is gone (it panicked): never chosen again, the next one serves.
                    worker.open.store(GONE, Ordering::Relaxed);
                    tracing::error!("a worker thread has ended; its connections went with it");
                    accepted = back;
                }
            }
        }
        tracing::error!(peer = %accepted.peer, "no worker thread left; HBONE connection dropped");
    }

    /// Connections open on every worker.
    pub fn open(&self) -> usize {
        let counts = self.workers.iter().map(|worker| worker.open.load(Ordering::Relaxed));
        counts.filter(|open| *open < GONE).sum()
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

/// A connection handed to a worker, counted in its `open` until this goes.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's thread: serves the connections handed to it until its queue ends and they have.
fn run<H: Handler>(
    index: usize,
    runtime: &Runtime,
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    handler: &Arc<H>,
    open: &Arc<AtomicUsize>,
    _done: mpsc::Sender<()>,
) {
    WORKER.set(index);
    runtime.block_on(async {
        let mut connections = JoinSet::new();
        let serve = |connections: &mut JoinSet<()>, Accepted { tcp, acceptor, peer }: Accepted| {
            let (handler, open) = (handler.clone(), Open(open.clone()));
            connections.spawn(async move {
                // Counted out when the task ends, even by a panic.
                let _open = open;
                let served = match tokio::net::TcpStream::from_std(tcp) {
                    Ok(tcp) => weft_proxy::hbone::server::serve_connection(tcp, acceptor, handler)
                        .await
                        .map_err(|error| error.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                if let Err(error) = served {
                    tracing::info!(%peer, %error, "HBONE connection failed");
                }
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

#[cfg(test)]
mod tests {
    //! Workers serving real HBONE: TLS 1.3 and HTTP/2 CONNECT on loopback.
    use std::{net::Ipv4Addr, time::Duration};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };
    use tokio_rustls::TlsAcceptor;
    use weft_proxy::{
        hbone::{
            Stream,
            client::{Connection, Origin},
            server::{ConnectRequest, Handler, Refusal, Upstream},
        },
        identity::Identity,
        relay::Counts,
        tls::{self, test_ca::TestCa},
    };

    use super::{Accepted, Workers};

    /// Answers every stream with the name of the thread serving it.
    struct ThreadNames;

    struct NameOfThread;

    impl Upstream for NameOfThread {
        async fn carry(self, mut stream: Stream, _counts: &Counts) -> std::io::Result<()> {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            stream.write_all(name.as_bytes()).await?;
            stream.shutdown().await
        }
    }

    impl Handler for ThreadNames {
        type Upstream = NameOfThread;

        async fn connect(&self, _request: ConnectRequest) -> Result<NameOfThread, Refusal> {
            Ok(NameOfThread)
        }
    }

    /// The thread that serves a new stream on `connection`.
    async fn serving_thread(connection: &Connection, target: std::net::SocketAddr) -> String {
        let origin = Origin::from_address(target);
        let mut stream = connection.open(target, &origin, Origin::TEST_TRACEPARENT).await.unwrap();
        let mut name = String::new();
        stream.read_to_string(&mut name).await.unwrap();
        name
    }

    #[tokio::test]
    async fn a_connection_is_served_whole_on_the_least_busy_worker_and_a_drain_ends_with_the_connections() {
        let ca = TestCa::new("mesh");
        let waypoint = Identity::new("cluster.local", "shop", "waypoint");
        let client = ca.issue(&Identity::new("cluster.local", "shop", "client"));
        let acceptor = TlsAcceptor::from(tls::server_config(&ca.issue(&waypoint)).unwrap());
        let mut workers = Workers::start(2, &std::sync::Arc::new(ThreadNames)).unwrap();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connections = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (accepted, peer) = listener.accept().await.unwrap();
            workers.serve(Accepted { tcp: accepted.into_std().unwrap(), acceptor: acceptor.clone(), peer });
            let config = tls::client_config(&client, &waypoint.clone().into()).unwrap();
            let connection = Connection::handshake(tcp, config).await.unwrap();
            // Every stream of a connection, on the thread its connection is on.
            let first = serving_thread(&connection, addr).await;
            assert_eq!(serving_thread(&connection, addr).await, first);
            threads.push(first);
            connections.push(connection);
        }
        assert!(threads.iter().all(|name| name.starts_with("weft-worker-")), "{threads:?}");
        assert_ne!(threads[0], threads[1], "the second connection went to the busier worker");
        assert_eq!(workers.open(), 2);

        drop(connections);
        tokio::time::timeout(Duration::from_secs(10), workers.drain()).await.unwrap();
        assert_eq!(workers.open(), 0);
        // A connection handed over after the drain began is not served.
        let _tcp = TcpStream::connect(addr).await.unwrap();
        let (late, peer) = listener.accept().await.unwrap();
        workers.serve(Accepted { tcp: late.into_std().unwrap(), acceptor, peer });
        assert_eq!(workers.open(), 0);
    }
}
