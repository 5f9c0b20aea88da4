//! HBONE connections for reuse, keyed by (source identity, destination identity, destination
//! IP, source pod IP): a new proxied connection opens a stream on a pooled connection, and only
//! the first pays for TCP, TLS and HTTP/2 handshakes. A connection carries at most
//! [`Settings::max_streams`] streams at once; under more load the pool opens another to the
//! same peer, so one TCP connection's window never caps a busy pair. Busy pairs also spread
//! over up to [`Settings::lanes`] connections (one per worker thread by default): each
//! connection's TLS and HTTP/2 work runs on one task, so streams sharing one connection share
//! one core, however many the proxy has. A connection the peer
//! closed (or sent GOAWAY on) is replaced; one without streams for the idle timeout is released
//! (Istio's `POOL_UNUSED_RELEASE_TIMEOUT`), so idle peers cost no connections; a pair's TLS
//! configuration and session tickets stay [`TICKETS_KEPT`] longer, so its next connection
//! resumes (the configuration keeps up to 64 tickets for each of a pair's last 32 peers,
//! 256 in all: `tls::tickets`).
//! No lock is held while a connection is being made: openers that need one while another is
//! being made wait for that attempt and share its outcome — as many as its connection will
//! carry besides its own opener's stream; more start an attempt of their own, so a burst on a
//! pool whose connections carry one stream each (a fresh mTLS tunnel per connection) makes its
//! handshakes at once rather than one after another — and a black-holed peer costs its openers
//! one handshake timeout, together, and nobody else anything. A pooled connection on
//! which a stream fails for any reason but the peer's refusal is dropped.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use crate::{
    hbone::{
        self,
        client::{Connection, MAX_STREAMS},
    },
    identity::{Expected, Identity},
    tls::{self, WorkloadCert},
};

/// (source identity, destination identity, peer IP, the address connections are made from).
type Key = (Identity, Expected, IpAddr, IpAddr);

/// How long a pair's TLS configuration, and with it the session tickets that let its next
/// connection resume, outlives its last new connection: as long as a pooled connection waits
/// for reuse by default, however soon the pool lets connections go.
pub const TICKETS_KEPT: Duration = Duration::from_secs(300);

/// How a pool's connections are made: the node proxy dials from inside the client's pod, a
/// waypoint from its own.
pub trait Dial: Sync {
    /// The address the connections are made from (part of the pool's key).
    fn source(&self) -> IpAddr;
    /// A TCP connection to `peer`, within a time of its own: the pool bounds its handshakes
    /// and each CONNECT's answer, not the dial.
    fn dial(&self, peer: SocketAddr) -> impl Future<Output = std::io::Result<TcpStream>> + Send;
}

/// The workload an HBONE connection goes to: its address, and the identities it may prove.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    pub expected: Expected,
}

/// A pooled connection and its open streams.
#[derive(Debug)]
struct Pooled {
    connection: Connection,
    active: Arc<Streams>,
}

/// How many streams a connection carries, and since when it has carried none.
#[derive(Debug)]
struct Streams {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Pooled {
    fn idle_for_at_least(&self, timeout: Duration) -> bool {
        self.active.open.load(Ordering::Acquire) == 0
            && self.active.idle_since.lock().unwrap_or_else(|p| p.into_inner()).elapsed() >= timeout
    }
}

/// One key's connections, and the connects under way for it.
#[derive(Debug, Default)]
struct Connections {
    pooled: Vec<Pooled>,
    connecting: Vec<Pending>,
    /// The next connect's number.
    next_connect: u64,
}

/// A connect under way, and room for the openers who may wait for it.
#[derive(Debug)]
struct Pending {
    id: u64,
    /// Openers that may still wait for it: the streams its connection carries besides its
    /// own opener's.
    seats: usize,
    /// Resolves (to `Some`) when the connect ends: `Ok` once its connection is pooled, `Err`
    /// with the reason it failed.
    done: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

type Slot = Arc<Mutex<Connections>>;

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Connections> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What an opener does next.
enum Next {
    /// Use this pooled connection (its stream already counted).
    Reuse(Connection, Active),
    /// Wait for another opener's connect, holding a seat in it.
    Wait(tokio::sync::watch::Receiver<Option<Result<(), String>>>, Seat),
    /// Connect, telling waiters through this sender.
    Connect(Connecting),
}

/// A waiter's place in a connect under way: given back if the waiter gives up before the
/// connect ends (a request its client reset), so those who left take no place from others.
struct Seat {
    slot: Slot,
    /// Its [`Pending::id`].
    id: u64,
}

impl Drop for Seat {
    fn drop(&mut self) {
        // Once the connect ended it is no longer pending: nothing to give back.
        if let Some(pending) = lock(&self.slot).connecting.iter_mut().find(|pending| pending.id == self.id) {
            pending.seats += 1;
        }
    }
}

/// The connect an opener makes for its key; dropped before it finished (the opener was
/// cancelled), it lets the waiters go with an error rather than leaving them waiting.
struct Connecting {
    slot: Slot,
    /// Its [`Pending::id`].
    id: u64,
    done: tokio::sync::watch::Sender<Option<Result<(), String>>>,
}

impl Connecting {
    fn finish(self, outcome: Result<(), String>) {
        self.forget();
        let _ = self.done.send(Some(outcome));
    }

    /// No longer under way: new openers do not wait for it.
    fn forget(&self) {
        lock(&self.slot).connecting.retain(|pending| pending.id != self.id);
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if self.done.borrow().is_none() {
            self.forget();
            let _ = self.done.send(Some(Err("the opener gave up".into())));
        }
    }
}

/// How the pool shares connections (Istio's `POOL_MAX_STREAMS_PER_CONNECTION` and
/// `POOL_UNUSED_RELEASE_TIMEOUT`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Streams one connection carries at once.
    pub max_streams: usize,
    /// How long a connection without streams stays for reuse (zero: released at once).
    pub idle_timeout: Duration,
    /// Connections a pair opens before its streams share them: a new stream gets a
    /// connection of its own while every pooled one carries a stream and fewer than this many
    /// exist. One (Istio's way) packs every stream onto the first connection with room.
    pub lanes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { max_streams: MAX_STREAMS, idle_timeout: Duration::from_secs(300), lanes: 1 }
    }
}

/// A proxy's HBONE connection pool.
pub struct Pool {
    connections: Mutex<HashMap<Key, Slot>>,
    /// Told how each new connection's TLS + HTTP/2 handshake went (the node proxy's metric).
    on_handshake: Box<dyn Fn(hbone::Handshake) + Send + Sync>,
    settings: Settings,
    /// Kept across connections, so a new connection to a pod resumes the last one's session.
    tls: tls::ClientConfigs,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// An open stream through the pool; its connection counts it until it drops.
#[derive(Debug)]
pub struct Tunnel {
    pub stream: hbone::Stream,
    _active: Active,
}

/// A tunnel reads and writes as its stream does, so it can be handed whole to what speaks over
/// it (the waypoint's HTTP client) and keep its place counted meanwhile.
impl tokio::io::AsyncRead for Tunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct Active(Arc<Streams>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

impl Pool {
    /// A pool that shares connections as `settings` say and tells `on_handshake` how each new
    /// connection's handshakes went.
    pub fn new(settings: Settings, on_handshake: impl Fn(hbone::Handshake) + Send + Sync + 'static) -> Self {
        Self {
            connections: Mutex::default(),
            on_handshake: Box::new(on_handshake),
            tls: tls::ClientConfigs::default(),
            settings: Settings {
                max_streams: settings.max_streams.max(1),
                lanes: settings.lanes.max(1),
                ..settings
            },
        }
    }

    /// Opens a stream to `target` through `peer` (the target's own pod, or the waypoint in
    /// front of it) on behalf of the workload holding `cert`, whose connection came from
    /// `origin`, tagged `traceparent`; a new connection is made by `dial`.
    pub async fn open(
        &self,
        dial: &impl Dial,
        cert: &Arc<WorkloadCert>,
        peer: &Peer,
        target: SocketAddr,
        origin: &hbone::client::Origin,
        traceparent: &str,
    ) -> Result<Tunnel, hbone::client::Error> {
        let Peer { ip: peer, expected } = peer;
        let (peer, expected) = (*peer, expected);
        let key = (cert.identity.clone(), expected.clone(), peer, dial.source().to_canonical());
        let slot = self.connections.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone();
        // A pooled connection that fails is dropped and the open tried once more, on a new one.
        let mut may_retry = true;
        loop {
            let (connection, active, reused) = match self.next(&slot, may_retry) {
                Next::Reuse(connection, active) => (connection, active, true),
                Next::Wait(mut done, _seat) => {
                    let outcome = done.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
                    match outcome {
                        Ok(Some(Err(reason))) => {
                            let peer = SocketAddr::new(peer, hbone::PORT);
                            return Err(hbone::client::Error::Shared { peer, reason });
                        }
                        // Pooled now (or the connector vanished): look again.
                        _ => continue,
                    }
                }
                Next::Connect(connecting) => {
                    let started = std::time::Instant::now();
                    match self.connect(dial, cert, expected, peer).await {
                        Ok(connection) => {
                            (self.on_handshake)(hbone::Handshake {
                                took: started.elapsed(),
                                resumed: connection.resumed(),
                            });
                            // Counted as ours before other openers can see it.
                            let active = Arc::new(Streams {
                                open: AtomicUsize::new(1),
                                idle_since: Mutex::new(Instant::now()),
                            });
                            lock(&slot)
                                .pooled
                                .push(Pooled { connection: connection.clone(), active: active.clone() });
                            connecting.finish(Ok(()));
                            (connection, Active(active), false)
                        }
                        Err(error) => {
                            connecting.finish(Err(error.to_string()));
                            return Err(error);
                        }
                    }
                }
            };
            match connection.open(target, origin, traceparent).await {
                Ok(stream) => return Ok(Tunnel { stream, _active: active }),
                // The peer answered, or the request was never sent: the connection is fine.
                Err(error @ (hbone::client::Error::Refused { .. } | hbone::client::Error::BadRequest(_))) => {
                    return Err(error);
                }
                Err(error) => {
                    tracing::debug!(%error, "HBONE connection unusable; dropped from the pool");
                    lock(&slot).pooled.retain(|pooled| !Arc::ptr_eq(&pooled.active, &active.0));
                    if !(reused && may_retry) {
                        return Err(error);
                    }
                    may_retry = false;
                }
            }
        }
    }

    /// Under the slot's lock, briefly: a pooled connection with room (unless `reuse` is off) —
    /// the least busy, or with one lane the first, Istio's packing — unless every pooled one
    /// carries streams and a lane is still to open; else, when every lane is pooled or being
    /// connected, a connect under way with a seat left (a burst waits for the new lanes rather
    /// than piling onto the first; not when `reuse` is off: its connection would not be used);
    /// else a connect for the caller.
    fn next(&self, slot: &Slot, reuse: bool) -> Next {
        let mut connections = lock(slot);
        connections.pooled.retain(|pooled| !pooled.idle_for_at_least(self.settings.idle_timeout));
        let open = |pooled: &Pooled| pooled.active.open.load(Ordering::Acquire);
        let mut with_room =
            connections.pooled.iter().filter(|pooled| reuse && open(pooled) < self.settings.max_streams);
        let chosen = if self.settings.lanes > 1 {
            with_room.min_by_key(|pooled| open(pooled))
        } else {
            with_room.next()
        };
        let lane_to_open = connections.pooled.len() < self.settings.lanes;
        if let Some(pooled) = chosen.filter(|pooled| open(pooled) == 0 || !lane_to_open) {
            // Counted before the lock goes, so concurrent openers see it.
            pooled.active.open.fetch_add(1, Ordering::AcqRel);
            return Next::Reuse(pooled.connection.clone(), Active(pooled.active.clone()));
        }
        // A lane neither pooled nor being connected: connected now, beside the others under way,
        // so a burst opens its lanes at once rather than one after another.
        let lane_free = connections.pooled.len() + connections.connecting.len() < self.settings.lanes;
        if reuse
            && !lane_free
            && let Some(pending) = connections.connecting.iter_mut().find(|pending| pending.seats > 0)
        {
            pending.seats -= 1;
            return Next::Wait(pending.done.clone(), Seat { slot: slot.clone(), id: pending.id });
        }
        let (done, waiting) = tokio::sync::watch::channel(None);
        let id = connections.next_connect;
        connections.next_connect += 1;
        let seats = self.settings.max_streams - 1;
        connections.connecting.push(Pending { id, seats, done: waiting });
        Next::Connect(Connecting { slot: slot.clone(), id, done })
    }

    /// Drops the connections opened for a pod with `addresses` (it left the node): their
    /// streams end when their last user lets go.
    pub fn forget_source(&self, addresses: &[IpAddr]) {
        let gone: Vec<IpAddr> = addresses.iter().map(|ip| ip.to_canonical()).collect();
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).retain(|key, _| !gone.contains(&key.3));
    }

    /// Releases the connections idle for the timeout, the keys left without any, and the TLS
    /// configurations (with their session tickets) no connection was made with for
    /// [`TICKETS_KEPT`]. Run periodically.
    pub fn release_idle(&self) {
        self.tls.release_unused(TICKETS_KEPT);
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, slot| {
            let mut connections = lock(slot);
            connections.pooled.retain(|pooled| !pooled.idle_for_at_least(self.settings.idle_timeout));
            // Openers clone the slot under the map's lock, held here: a count of one means no
            // opener holds it.
            !connections.pooled.is_empty() || Arc::strong_count(slot) > 1
        });
    }

    /// Runs [`Pool::release_idle`] forever, often enough to keep the timeout roughly.
    pub async fn release_idle_periodically(&self) {
        let period = (self.settings.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut every = tokio::time::interval(period);
        loop {
            every.tick().await;
            self.release_idle();
        }
    }

    /// How many connections the pool holds (for tests and the admin endpoint).
    pub async fn connections(&self) -> usize {
        let slots: Vec<_> =
            self.connections.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        slots.iter().map(|slot| lock(slot).pooled.len()).sum()
    }
}

impl Pool {
    async fn connect(
        &self,
        dial: &impl Dial,
        cert: &Arc<WorkloadCert>,
        expected: &Expected,
        ip: IpAddr,
    ) -> Result<Connection, hbone::client::Error> {
        let peer = SocketAddr::new(ip, hbone::PORT);
        let tcp = dial.dial(peer).await.map_err(|source| hbone::client::Error::Dial { peer, source })?;
        let config = self
            .tls
            .get(cert, expected)
            .map_err(|error| hbone::client::Error::Tls { peer, source: std::io::Error::other(error) })?;
        Connection::handshake(tcp, config).await
    }
}
