//! The waypoint's worker threads, each running a single-threaded runtime of its own (Envoy's
//! model): a connection handed to a worker is served whole there — its TLS and HTTP/2, its
//! sessions, the upstream connections they open, and (with a pool per worker, [`current`]) the
//! HBONE connections those dial — so a request handed from task to task wakes no other thread. On one multi-threaded runtime each such hand-off could wake a parked thread,
//! a futex call and a context switch: measured, four per request through the waypoint and a
//! quarter of its CPU per request. A new connection goes to the worker with the fewest tasks
//! open: work is spread by connection, not by request. The caller's own (main) thread keeps
//! what is not per connection: accepting, xDS, certificates, the admin endpoints, span export.
//! (The node proxy measured no gain from the same model: its relays and pooled connections
//! already met on one thread of its multi-threaded runtime often enough, and bulk over several
//! connections and idle memory got worse; it keeps one multi-threaded runtime.)
//!
//! A socket accepted on the main thread must leave that thread's reactor for the worker's
//! (`into_std` there, `from_std` in the task), or every readiness event of it would still go
//! through the main thread.
use std::{
    cell::Cell,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{runtime::Handle, sync::Notify, task::JoinHandle};

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker this code runs on, or `None` on any other thread.
pub fn current() -> Option<usize> {
    WORKER.get()
}

/// The running workers; their threads end when this drops (tasks still on them are dropped).
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
    /// Told whenever a task on any worker ends.
    ended: Arc<Notify>,
    /// Set by [`Workers::drain`]: nothing more is taken.
    draining: AtomicBool,
}

#[derive(Debug)]
struct Worker {
    runtime: Handle,
    /// Its tasks not yet ended.
    open: Arc<AtomicUsize>,
    /// Dropped with the workers: the thread's runtime stops.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Workers {
    /// Starts `count` workers (at least one), their threads named `weft-worker-<n>`.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("weft-worker-{index}")).spawn(move || {
                WORKER.set(Some(index));
                // Counted while the worker runs; its runtime goes with its thread.
                let _tasks_counted = weft_proxy::census::count_runtime(runtime.handle().clone());
                let _ = runtime.block_on(stopped);
            })?;
            workers.push(Worker { runtime: handle, open: Arc::new(AtomicUsize::new(0)), _stop: stop });
        }
        Ok(Self { workers, ended: Arc::new(Notify::new()), draining: AtomicBool::new(false) })
    }

    /// Runs `task` on the worker with the fewest tasks open: its handle (dropped, the task runs
    /// on detached), or `None` (and the task dropped unrun) once draining.
    pub fn spawn<F, T>(&self, task: F) -> Option<JoinHandle<T>>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (runtime, task) = self.counted(task)?;
        Some(runtime.spawn(task))
    }

    /// The least busy worker's runtime, and `task` counted as open there until it ends
    /// (however: run out, aborted or panicked).
    fn counted<F: Future>(&self, task: F) -> Option<(&Handle, impl Future<Output = F::Output> + use<F>)> {
        let worker = self.workers.iter().min_by_key(|worker| worker.open.load(Ordering::Relaxed))?;
        // Counted before the drain is looked at (and the drain looks at the counts after it
        // began), so a drain beginning meanwhile either sees this task or this sees the drain.
        worker.open.fetch_add(1, Ordering::SeqCst);
        let open = Open { open: worker.open.clone(), ended: self.ended.clone() };
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        Some((&worker.runtime, async move {
            let _open = open;
            task.await
        }))
    }

    /// Tasks open on every worker.
    pub fn open(&self) -> usize {
        self.workers.iter().map(|worker| worker.open.load(Ordering::SeqCst)).sum()
    }

    /// Takes no more tasks; resolves once every open one has ended.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        loop {
            let ended = self.ended.notified();
            let mut ended = std::pin::pin!(ended);
            // Registered before the count is read, so an end in between is not missed.
            ended.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// A task handed to a worker, counted in its `open` until this goes.
struct Open {
    open: Arc<AtomicUsize>,
    ended: Arc<Notify>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future as _, net::Ipv4Addr, sync::Arc, time::Duration};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::{Workers, current};
    use weft_proxy::{
        hbone::{
            Stream,
            client::{Connection, Origin},
            server::{ConnectRequest, Handler, Refusal, Upstream, serve_connection},
        },
        identity::Identity,
        relay::Counts,
        tls::{self, test_ca::TestCa},
    };

    /// The worker a task ran on and its thread's name, once `release` lets it end.
    async fn reporting(release: tokio::sync::oneshot::Receiver<()>) -> (Option<usize>, String) {
        let _ = release.await;
        (current(), std::thread::current().name().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn tasks_go_to_the_least_busy_worker_and_a_drain_waits_for_them_and_takes_no_more() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(current(), None, "the caller's thread is no worker");
        let (first, first_ends) = tokio::sync::oneshot::channel();
        let (second, second_ends) = tokio::sync::oneshot::channel();
        let handles = [workers.spawn(reporting(first_ends)), workers.spawn(reporting(second_ends))];
        assert!(handles.iter().all(Option::is_some));
        assert_eq!(workers.open(), 2);
        first.send(()).unwrap();
        second.send(()).unwrap();
        let mut ran = Vec::new();
        for handle in handles.into_iter().flatten() {
            ran.push(handle.await.unwrap());
        }
        ran.sort();
        assert_eq!(
            ran,
            [(Some(0), "weft-worker-0".to_owned()), (Some(1), "weft-worker-1".to_owned())],
            "one task on each worker"
        );

        let (held, held_ends) = tokio::sync::oneshot::channel::<()>();
        assert!(
            workers
                .spawn(async move {
                    let _ = held_ends.await;
                })
                .is_some()
        );
        let drain = workers.drain();
        let mut drain = std::pin::pin!(drain);
        let mut asked = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(drain.as_mut().poll(&mut asked).is_pending(), "a task is open");
        assert!(workers.spawn(async {}).is_none(), "a task handed over after the drain began is not run");
        drop(held);
        tokio::time::timeout(Duration::from_secs(10), drain).await.unwrap();
        assert_eq!(workers.open(), 0);
    }

    #[tokio::test]
    async fn a_task_that_panics_or_is_aborted_is_counted_out() {
        let workers = Workers::start(1).unwrap();
        let panicking = workers.spawn(async { panic!("a connection's bug") }).unwrap();
        assert!(panicking.await.unwrap_err().is_panic());
        let pending = workers.spawn(std::future::pending::<()>()).unwrap();
        pending.abort();
        assert!(pending.await.unwrap_err().is_cancelled());
        tokio::time::timeout(Duration::from_secs(10), workers.drain()).await.unwrap();
        assert_eq!(workers.open(), 0);
    }

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

    /// Real HBONE (TLS 1.3, HTTP/2 CONNECT on loopback), as the waypoint hands connections over.
    #[tokio::test]
    async fn an_hbone_connection_handed_to_a_worker_is_served_whole_there() {
        let ca = TestCa::new("mesh");
        let server = Identity::new("cluster.local", "shop", "waypoint");
        let client = ca.issue(&Identity::new("cluster.local", "shop", "client"));
        let acceptor = tls::Acceptor::from(tls::server_config(&ca.issue(&server)).unwrap());
        let workers = Workers::start(2).unwrap();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut connections, mut threads) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            let (accepted, acceptor) = (accepted.into_std().unwrap(), acceptor.clone());
            let spawned = workers.spawn(async move {
                let accepted = TcpStream::from_std(accepted).unwrap();
                let _ = serve_connection(accepted, acceptor, Arc::new(ThreadNames)).await;
            });
            assert!(spawned.is_some());
            let config = tls::client_config(&client, &server.clone().into()).unwrap();
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
    }
}
