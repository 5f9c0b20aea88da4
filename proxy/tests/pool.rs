//! The HBONE pool against a real HBONE server: streams share a connection up to the per-
//! connection limit, more load opens another connection to the same peer, finished streams
//! free their places for reuse, connections idle for the timeout are released, openers of a
//! black-holed peer share one attempt while others go ahead, openers at once whose streams one
//! connection cannot all carry make their connects at once, and a connection whose stream fails
//! for any reason leaves the pool.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use weft_proxy::{
    hbone::{
        self,
        client::{MAX_STREAMS, Origin},
        pool::{Dial, Pool, Settings as PoolSettings, Tunnel},
        server::{ConnectRequest, Handler, Refusal},
    },
    identity::Identity,
    tls::{self, test_ca::TestCa},
};

/// Dials from this process, as if from `0` (the address the pool keys connections by).
struct FromHere(IpAddr);

impl Dial for FromHere {
    fn source(&self) -> IpAddr {
        self.0
    }

    fn dial(&self, peer: SocketAddr) -> impl Future<Output = std::io::Result<TcpStream>> + Send {
        TcpStream::connect(peer)
    }
}

/// Delivers every stream to one upstream.
struct ToUpstream(SocketAddr);

impl Handler for ToUpstream {
    type Upstream = TcpStream;

    async fn connect(&self, _request: ConnectRequest) -> Result<TcpStream, Refusal> {
        TcpStream::connect(self.0).await.map_err(|error| Refusal::Unavailable(error.to_string()))
    }
}

/// A real HBONE peer on a loopback address of its own (the pool always dials port 15008),
/// counting the connections it accepts, and a pool with `settings` whose `open(n)` opens `n`
/// tunnels to it at once.
struct Peer {
    accepted: Arc<AtomicUsize>,
    /// Connections to gather before beginning any of their TLS handshakes; set back to 1 (no
    /// holding) after each batch.
    hold: Arc<AtomicUsize>,
    pool: Arc<Pool>,
    cert: Arc<tls::WorkloadCert>,
    server_id: Identity,
    target: SocketAddr,
    source: SocketAddr,
}

impl Peer {
    async fn start(octet: u8, settings: PoolSettings) -> Self {
        Self::start_with(octet, settings, ToUpstream).await
    }

    /// A peer whose streams `handler(upstream)` delivers.
    async fn start_with<H: Handler>(
        octet: u8,
        settings: PoolSettings,
        handler: impl FnOnce(SocketAddr) -> H,
    ) -> Self {
        Self::start_holding(octet, settings, handler, 1).await
    }

    /// A peer that begins no TLS handshake until it holds `together` TCP connections (and
    /// again after [`Peer::hold_next`]).
    async fn start_holding<H: Handler>(
        octet: u8,
        settings: PoolSettings,
        handler: impl FnOnce(SocketAddr) -> H,
        together: usize,
    ) -> Self {
        let ca = TestCa::new("pool");
        let (client_id, server_id) =
            (Identity::new("cluster.local", "shop", "cart"), Identity::new("cluster.local", "shop", "web"));
        let ip = Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8, octet);
        let listener = TcpListener::bind((ip, hbone::PORT)).await.unwrap();
        let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = upstream.accept().await {
                held.push(tcp);
            }
        });
        let (accepted, hold) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(together)));
        let (acceptor, counter, holds) = (
            tls::Acceptor::from(tls::server_config(&ca.issue(&server_id)).unwrap()),
            accepted.clone(),
            hold.clone(),
        );
        let handler = Arc::new(handler(upstream_addr));
        tokio::spawn(async move {
            let mut holding = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                holding.push(tcp);
                if holding.len() < holds.load(Ordering::SeqCst) {
                    continue;
                }
                holds.store(1, Ordering::SeqCst);
                for tcp in holding.drain(..) {
                    let (acceptor, handler) = (acceptor.clone(), handler.clone());
                    tokio::spawn(async move {
                        let _ = hbone::server::serve_connection(tcp, acceptor, handler).await;
                    });
                }
            }
        });
        Self {
            accepted,
            hold,
            pool: Arc::new(Pool::new(settings, |_| {})),
            cert: Arc::new(ca.issue(&client_id)),
            server_id,
            target: SocketAddr::new(IpAddr::V4(ip), 8080),
            source: "10.244.0.10:40000".parse().unwrap(),
        }
    }

    /// Opening one tunnel to `target` through the pool, as a task can own it.
    fn opener(
        &self,
        target: SocketAddr,
    ) -> impl std::future::Future<Output = Result<Tunnel, hbone::client::Error>> + Send + 'static {
        let (pool, cert, server_id, source) =
            (self.pool.clone(), self.cert.clone(), self.server_id.clone(), self.source);
        async move {
            let origin = Origin::from_address(source);
            pool.open(
                &FromHere(source.ip()),
                &cert,
                &hbone::pool::Peer { ip: target.ip(), expected: server_id.into() },
                target,
                &origin,
                Origin::TEST_TRACEPARENT,
            )
            .await
        }
    }

    async fn open(&self, count: usize) -> Vec<Tunnel> {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..count {
            let opener = self.opener(self.target);
            opening.spawn(async move { opener.await.unwrap() });
        }
        let mut tunnels = Vec::new();
        while let Some(tunnel) = opening.join_next().await {
            tunnels.push(tunnel.unwrap());
        }
        tunnels
    }

    /// Holds the next `count` TCP connections until all of them are there: no handshake is
    /// answered, and so no ticket comes back, before every client has connected (and as good
    /// as always sent its ClientHello, with the ticket it took).
    fn hold_next(&self, count: usize) {
        self.hold.store(count, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_one_connection_carries_open_a_second_and_freed_places_are_reused() {
    let peer = Peer::start(1, PoolSettings::default()).await;
    let (pool, source) = (&peer.pool, peer.source);
    let open = |count| peer.open(count);

    let first = open(MAX_STREAMS).await;
    assert_eq!(
        (peer.accepted(), pool.connections().await),
        (1, 1),
        "one connection carries the first {MAX_STREAMS}"
    );
    let more = open(MAX_STREAMS / 2).await;
    assert_eq!(peer.accepted(), 2, "a full connection makes the pool open another");
    drop(first);
    let again = open(MAX_STREAMS / 2).await;
    assert_eq!(peer.accepted(), 2, "freed places are reused before any new connection");
    assert_eq!(pool.connections().await, 2);
    drop((more, again));
    // The source pod leaves: its connections go with it.
    pool.forget_source(&[source.ip()]);
    assert_eq!(pool.connections().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pair_opens_its_lanes_before_its_streams_share_a_connection() {
    let spread = Peer::start(7, PoolSettings { lanes: 2, ..PoolSettings::default() }).await;
    let first = spread.open(1).await;
    let second = spread.open(1).await;
    assert_eq!(spread.accepted(), 2, "while the first connection is busy, a second lane opens");
    let third = spread.open(1).await;
    assert_eq!(spread.accepted(), 2, "with every lane open, streams share them");
    drop((first, second, third));
    drop(spread.open(1).await);
    assert_eq!((spread.accepted(), spread.pool.connections().await), (2, 2), "idle lanes are reused");

    // A burst of openers at once opens its lanes, and no more.
    let burst = Peer::start(9, PoolSettings { lanes: 2, ..PoolSettings::default() }).await;
    let _all = burst.open(8).await;
    assert_eq!(burst.accepted(), 2);

    // One lane, Istio's way: streams pack onto the first connection with room.
    let packed = Peer::start(8, PoolSettings::default()).await;
    let _held = (packed.open(1).await, packed.open(1).await);
    assert_eq!(packed.accepted(), 1);
}

/// With one stream per connection (a fresh mTLS tunnel each), openers at once handshake at
/// once, as do a busy pair's lanes: the peer here starts no handshake before it holds all the
/// connections expected, so openers that waited for each other's connect would never get there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_connections_of_one_stream_each_or_on_lanes_makes_its_handshakes_at_once() {
    let settings = PoolSettings { max_streams: 1, idle_timeout: Duration::ZERO, ..PoolSettings::default() };
    let peer = Peer::start_holding(11, settings, ToUpstream, 3).await;
    let tunnels = tokio::time::timeout(Duration::from_secs(20), peer.open(3)).await;
    assert!(tunnels.is_ok(), "the openers made their connects one after another");
    assert_eq!(peer.accepted(), 3);

    // So does a burst on a pair's lanes: both open at once, and the rest share them.
    let lanes = PoolSettings { lanes: 2, ..PoolSettings::default() };
    let peer = Peer::start_holding(12, lanes, ToUpstream, 2).await;
    let tunnels = tokio::time::timeout(Duration::from_secs(20), peer.open(6)).await;
    assert!(tunnels.is_ok(), "the lanes were connected one after another");
    assert_eq!(peer.accepted(), 2);
}

/// Dials nowhere, never done, counting its dials.
#[derive(Default)]
struct CountingDial(AtomicUsize);

impl Dial for CountingDial {
    fn source(&self) -> IpAddr {
        Ipv4Addr::new(10, 244, 0, 10).into()
    }

    fn dial(&self, _peer: SocketAddr) -> impl Future<Output = std::io::Result<TcpStream>> + Send {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::pending()
    }
}

/// An opener that gives up while it waits for another's connect gives its place back: those
/// who wait are never more than the connection will carry, and those who left take no place.
#[tokio::test]
async fn an_opener_that_gives_up_waiting_for_a_connect_gives_its_place_back() {
    let ca = TestCa::new("pool");
    let cert = Arc::new(ca.issue(&Identity::new("cluster.local", "shop", "cart")));
    let peer = hbone::pool::Peer {
        ip: Ipv4Addr::new(10, 244, 1, 10).into(),
        expected: Identity::new("cluster.local", "shop", "web").into(),
    };
    let target = SocketAddr::new(peer.ip, 8080);
    let origin = Origin::from_address("10.244.0.10:40000".parse().unwrap());
    // Two streams a connection: the connect under way has one place for a waiter.
    let pool = Pool::new(PoolSettings { max_streams: 2, ..PoolSettings::default() }, |_| {});
    let dial = CountingDial::default();
    let open = || Box::pin(pool.open(&dial, &cert, &peer, target, &origin, Origin::TEST_TRACEPARENT));
    // Polled once, an opener goes as far as it can at once: its dial, or its wait.
    let mut asked = std::task::Context::from_waker(std::task::Waker::noop());
    let mut connecting = open();
    assert!(connecting.as_mut().poll(&mut asked).is_pending());
    let mut waiting = open();
    assert!(waiting.as_mut().poll(&mut asked).is_pending());
    assert_eq!(dial.0.load(Ordering::SeqCst), 1, "the second opener waits for the first's connect");
    drop(waiting);
    let mut in_its_place = open();
    assert!(in_its_place.as_mut().poll(&mut asked).is_pending());
    assert_eq!(dial.0.load(Ordering::SeqCst), 1, "the place given back is taken by the next opener");
    let mut one_more = open();
    assert!(one_more.as_mut().poll(&mut asked).is_pending());
    assert_eq!(dial.0.load(Ordering::SeqCst), 2, "past the connection's places, an opener connects itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_streams_for_the_idle_timeout_is_released() {
    let lasting = Peer::start(2, PoolSettings::default()).await;
    drop(lasting.open(1).await);
    drop(lasting.open(1).await);
    lasting.pool.release_idle();
    assert_eq!((lasting.accepted(), lasting.pool.connections().await), (1, 1), "kept for reuse");

    let released =
        Peer::start(3, PoolSettings { idle_timeout: Duration::ZERO, ..PoolSettings::default() }).await;
    let held = released.open(1).await;
    released.pool.release_idle();
    assert_eq!(released.pool.connections().await, 1, "a connection with a stream stays");
    drop(held);
    drop(released.open(1).await);
    assert_eq!(released.accepted(), 2, "an idle connection is not reused past the timeout");
    released.pool.release_idle();
    assert_eq!(released.pool.connections().await, 0, "and the sweep releases it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openers_of_a_black_holed_peer_share_one_attempt_and_stall_no_one_else() {
    let healthy = Peer::start(4, PoolSettings::default()).await;
    // A peer that accepts TCP and never answers the TLS handshake.
    let hole = Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8, 5);
    let listener = TcpListener::bind((hole, hbone::PORT)).await.unwrap();
    let (accepted, first) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Notify::new()));
    let (counter, notify) = (accepted.clone(), first.clone());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            notify.notify_one();
            held.push(tcp);
        }
    });
    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let opener = healthy.opener(SocketAddr::new(IpAddr::V4(hole), 8080));
        stalled.spawn(async move { opener.await.map(drop) });
    }
    first.notified().await;

    // Meanwhile the same pool reaches a healthy peer at once.
    let tunnel = healthy.open(1).await;
    assert_eq!(stalled.len(), 3);
    assert!(stalled.try_join_next().is_none(), "the black-holed openers are still waiting");
    drop(tunnel);
    let mut failed = 0;
    while let Some(opened) = stalled.join_next().await {
        assert!(opened.unwrap().is_err());
        failed += 1;
    }
    assert_eq!(failed, 3);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "three openers, one attempt");
}

/// Delivers every stream to one upstream, except that the first CONNECT after `hang` is set is
/// never answered.
struct HangOnce {
    upstream: SocketAddr,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

impl Handler for HangOnce {
    type Upstream = TcpStream;

    async fn connect(&self, _request: ConnectRequest) -> Result<TcpStream, Refusal> {
        if self.hang.swap(false, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        TcpStream::connect(self.upstream).await.map_err(|error| Refusal::Unavailable(error.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_whose_stream_times_out_is_dropped_and_the_open_retried_on_a_new_one() {
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = hang.clone();
    let idle_timeout = PoolSettings::default().idle_timeout;
    let peer =
        Peer::start_with(6, PoolSettings { idle_timeout, ..PoolSettings::default() }, move |upstream| {
            HangOnce { upstream, hang: flag }
        })
        .await;

    let first = peer.open(1).await;
    hang.store(true, Ordering::SeqCst);
    // Not an HTTP/2 error: the CONNECT is never answered. The connection goes all the same.
    let second = peer.open(1).await;
    assert_eq!(peer.accepted(), 2, "the retry opened a new connection");
    assert_eq!(peer.pool.connections().await, 1, "the connection that timed out left the pool");
    drop((first, second));
}

/// Delivers every stream to one upstream, noting whose it is and which handshakes resumed.
struct NotingResumptions {
    upstream: SocketAddr,
    resumed: Arc<std::sync::Mutex<Vec<bool>>>,
    peers: Arc<std::sync::Mutex<Vec<Identity>>>,
}

impl Handler for NotingResumptions {
    type Upstream = TcpStream;

    async fn connect(&self, request: ConnectRequest) -> Result<TcpStream, Refusal> {
        self.peers.lock().unwrap().push(request.peer.identity.clone());
        ToUpstream(self.upstream).connect(request).await
    }

    fn tls_established(&self, handshake: hbone::Handshake) {
        self.resumed.lock().unwrap().push(handshake.resumed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_to_a_pod_resumes_its_session_until_the_certificate_is_renewed() {
    let (resumed, peers) = (Arc::default(), Arc::default());
    // Every tunnel on a connection of its own, released as soon as it ends.
    let settings = PoolSettings { max_streams: 1, idle_timeout: Duration::ZERO, lanes: 1 };
    let mut peer = Peer::start_with(10, settings, |upstream| NotingResumptions {
        upstream,
        resumed: Arc::clone(&resumed),
        peers: Arc::clone(&peers),
    })
    .await;
    for _ in 0..3 {
        drop(peer.open(1).await);
        // Its connection goes at once; the tickets stay.
        peer.pool.release_idle();
        assert_eq!(peer.pool.connections().await, 0);
    }
    // A renewal hands out a new certificate (here the same one anew): its first connection
    // shows it, then resumes again.
    peer.cert = Arc::new(tls::WorkloadCert::clone(&peer.cert));
    for _ in 0..2 {
        drop(peer.open(1).await);
    }
    assert_eq!(peer.accepted(), 5, "each tunnel had a connection of its own");
    assert_eq!(*resumed.lock().unwrap(), [false, true, true, false, true]);
    let client = peer.cert.identity.clone();
    assert!(
        peers.lock().unwrap().iter().all(|identity| *identity == client),
        "a resumed session still names the client's identity: {:?}",
        peers.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_pod_begun_together_all_resume_once_earlier_ones_left_tickets() {
    let (resumed, peers) = (Arc::default(), Arc::default());
    let settings = PoolSettings { max_streams: 1, idle_timeout: Duration::ZERO, lanes: 1 };
    let peer = Peer::start_with(13, settings, |upstream| NotingResumptions {
        upstream,
        resumed: Arc::clone(&resumed),
        peers: Arc::clone(&peers),
    })
    .await;
    // One after another: each takes a ticket and brings two.
    const TOGETHER: usize = 32;
    for _ in 0..TOGETHER + 8 {
        drop(peer.open(1).await);
    }
    let full_before = resumed.lock().unwrap().iter().filter(|resumed| !**resumed).count();
    assert_eq!(full_before, 1, "only the first exchanged certificates: {:?}", resumed.lock().unwrap());
    peer.hold_next(TOGETHER);
    let tunnels = tokio::time::timeout(Duration::from_secs(30), peer.open(TOGETHER))
        .await
        .expect("the tunnels begun together did not all open");
    let together = resumed.lock().unwrap().split_off(TOGETHER + 8);
    assert_eq!(together.len(), TOGETHER);
    let full = together.iter().filter(|resumed| !**resumed).count();
    assert_eq!(full, 0, "{full} of {TOGETHER} begun together found no ticket left");
    drop(tunnels);
}
