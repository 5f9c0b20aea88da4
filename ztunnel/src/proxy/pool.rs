//! HBONE connections for reuse, keyed by (source identity, destination identity, destination
//! IP, source pod IP): a new proxied connection opens a stream on a pooled connection, and only
//! the first pays for TCP, TLS and HTTP/2 handshakes. A connection carries at most
//! [`Settings::max_streams`] streams at once; under more load the pool opens another to the
//! same peer, so one TCP connection's window never caps a busy pair. A connection the peer
//! closed (or sent GOAWAY on) is replaced; one without streams for the idle timeout is released
//! (Istio's `POOL_UNUSED_RELEASE_TIMEOUT`), so idle peers cost no memory or file descriptors.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::connect_in;
use crate::{
    hbone::{
        self,
        client::{Connection, MAX_STREAMS},
    },
    identity::Identity,
    inpod::netns::Netns,
    tls::{self, WorkloadCert},
};

type Key = (Identity, Identity, IpAddr, IpAddr);

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

type Slot = Arc<tokio::sync::Mutex<Vec<Pooled>>>;

/// How the pool shares connections (Istio's `POOL_MAX_STREAMS_PER_CONNECTION` and
/// `POOL_UNUSED_RELEASE_TIMEOUT`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Streams one connection carries at once.
    pub max_streams: usize,
    /// How long a connection without streams stays for reuse (zero: released at once).
    pub idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { max_streams: MAX_STREAMS, idle_timeout: Duration::from_secs(300) }
    }
}

/// The node's HBONE connection pool.
#[derive(Debug)]
pub struct Pool {
    connections: Mutex<HashMap<Key, Slot>>,
    metrics: Arc<crate::metrics::Metrics>,
    settings: Settings,
}

/// An open stream through the pool; its connection counts it until it drops.
#[derive(Debug)]
pub struct Tunnel {
    pub stream: hbone::Stream,
    _active: Active,
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
    /// A pool that shares connections as `settings` say and reports handshake times to
    /// `metrics`.
    pub fn new(metrics: Arc<crate::metrics::Metrics>, settings: Settings) -> Self {
        Self {
            connections: Mutex::default(),
            metrics,
            settings: Settings { max_streams: settings.max_streams.max(1), ..settings },
        }
    }

    /// Opens a stream to `target` (a meshed workload proving `expected`) on behalf of the
    /// workload holding `cert`, whose connection came from `source`.
    pub async fn open(
        &self,
        netns: &Netns,
        cert: &WorkloadCert,
        expected: &Identity,
        target: SocketAddr,
        source: SocketAddr,
    ) -> Result<Tunnel, hbone::client::Error> {
        let key = (cert.identity.clone(), expected.clone(), target.ip(), source.ip().to_canonical());
        let slot = self.connections.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone();
        // One attempt on a pooled connection, and one on a fresh one if that was dead.
        for fresh in [false, true] {
            let (connection, active) = {
                let mut pooled = slot.lock().await;
                pooled.retain(|pooled| !pooled.idle_for_at_least(self.settings.idle_timeout));
                let reusable = pooled.iter().find(|pooled| {
                    !fresh && pooled.active.open.load(Ordering::Acquire) < self.settings.max_streams
                });
                let (connection, active) = match reusable {
                    Some(pooled) => (pooled.connection.clone(), pooled.active.clone()),
                    None => {
                        let started = std::time::Instant::now();
                        let connection = connect(netns, cert, expected, target.ip()).await?;
                        self.metrics.handshake(crate::metrics::Reporter::Source, started.elapsed());
                        let active = Arc::new(Streams {
                            open: AtomicUsize::new(0),
                            idle_since: Mutex::new(Instant::now()),
                        });
                        pooled.push(Pooled { connection: connection.clone(), active: active.clone() });
                        (connection, active)
                    }
                };
                // Counted before the lock goes, so concurrent openers see it.
                active.open.fetch_add(1, Ordering::AcqRel);
                (connection, Active(active))
            };
            match connection.open(target, source).await {
                Ok(stream) => return Ok(Tunnel { stream, _active: active }),
                Err(hbone::client::Error::Http2(error)) if !fresh => {
                    tracing::debug!(%error, "pooled HBONE connection unusable; reconnecting");
                    slot.lock().await.retain(|pooled| !Arc::ptr_eq(&pooled.active, &active.0));
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the second attempt always returns")
    }

    /// Drops the connections opened for a pod with `addresses` (it left the node): their
    /// streams end when their last user lets go.
    pub fn forget_source(&self, addresses: &[IpAddr]) {
        let gone: Vec<IpAddr> = addresses.iter().map(|ip| ip.to_canonical()).collect();
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).retain(|key, _| !gone.contains(&key.3));
    }

    /// Releases the connections idle for the timeout, and the keys left without any. Run
    /// periodically; a key busy opening is skipped until the next round.
    pub fn release_idle(&self) {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, slot| {
            let Ok(mut pooled) = slot.try_lock() else { return true };
            pooled.retain(|pooled| !pooled.idle_for_at_least(self.settings.idle_timeout));
            // Openers clone the slot under the map's lock, held here: a count of one means no
            // opener holds it.
            !pooled.is_empty() || Arc::strong_count(slot) > 1
        });
    }

    /// How often [`Pool::release_idle`] should run: often enough to keep the timeout roughly.
    pub fn release_interval(&self) -> Duration {
        (self.settings.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// How many connections the pool holds (for tests and the admin endpoint).
    pub async fn connections(&self) -> usize {
        let slots: Vec<_> =
            self.connections.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut count = 0;
        for slot in slots {
            count += slot.lock().await.len();
        }
        count
    }
}

async fn connect(
    netns: &Netns,
    cert: &WorkloadCert,
    expected: &Identity,
    ip: IpAddr,
) -> Result<Connection, hbone::client::Error> {
    let peer = SocketAddr::new(ip, hbone::PORT);
    let tcp = connect_in(netns, peer).await.map_err(|source| hbone::client::Error::Tls { peer, source })?;
    let config = tls::client_config(cert, expected)
        .map_err(|error| hbone::client::Error::Tls { peer, source: std::io::Error::other(error) })?;
    Connection::handshake(tcp, config).await
}
