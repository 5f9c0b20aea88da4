//! The HBONE pool against a real HBONE server: streams share a connection up to the per-
//! connection limit, more load opens another connection to the same peer, and finished streams
//! free their places for reuse.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_ztunnel::{
    hbone::{
        self,
        client::MAX_STREAMS,
        server::{ConnectRequest, Handler, Refusal},
    },
    identity::Identity,
    inpod::netns::{Netns, home_netns},
    proxy::Pool,
    tls::{self, test_ca::TestCa},
};

/// Delivers every stream to one upstream.
struct ToUpstream(SocketAddr);

impl Handler for ToUpstream {
    async fn connect(&self, _request: ConnectRequest) -> Result<TcpStream, Refusal> {
        TcpStream::connect(self.0).await.map_err(|error| Refusal::Unavailable(error.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_one_connection_carries_open_a_second_and_freed_places_are_reused() {
    let ca = TestCa::new("pool");
    let (client_id, server_id) =
        (Identity::new("cluster.local", "shop", "cart"), Identity::new("cluster.local", "shop", "web"));
    // A loopback address of its own: the pool always dials port 15008.
    let ip = Ipv4Addr::new(127, 77, (std::process::id() % 250) as u8, 1);
    let listener = TcpListener::bind((ip, hbone::PORT)).await.unwrap();
    let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = upstream.accept().await {
            held.push(tcp);
        }
    });
    let accepted = Arc::new(AtomicUsize::new(0));
    let (acceptor, counter) =
        (TlsAcceptor::from(tls::server_config(&ca.issue(&server_id)).unwrap()), accepted.clone());
    let handler = Arc::new(ToUpstream(upstream_addr));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let _ = hbone::server::serve_connection(tcp, acceptor, handler).await;
            });
        }
    });

    let pool = Arc::new(Pool::default());
    let cert = Arc::new(ca.issue(&client_id));
    let here = Arc::new(Netns::new(
        std::fs::File::open("/proc/thread-self/ns/net").unwrap().into(),
        home_netns().unwrap(),
    ));
    let target = SocketAddr::new(IpAddr::V4(ip), 8080);
    let source: SocketAddr = "10.244.0.10:40000".parse().unwrap();
    let open = |count: usize| {
        let (pool, cert, here, server_id) = (pool.clone(), cert.clone(), here.clone(), server_id.clone());
        async move {
            let mut opening = tokio::task::JoinSet::new();
            for _ in 0..count {
                let (pool, cert, here, server_id) =
                    (pool.clone(), cert.clone(), here.clone(), server_id.clone());
                opening
                    .spawn(async move { pool.open(&here, &cert, &server_id, target, source).await.unwrap() });
            }
            let mut tunnels = Vec::new();
            while let Some(tunnel) = opening.join_next().await {
                tunnels.push(tunnel.unwrap());
            }
            tunnels
        }
    };

    let first = open(MAX_STREAMS).await;
    assert_eq!(
        (accepted.load(Ordering::SeqCst), pool.connections().await),
        (1, 1),
        "one connection carries the first {MAX_STREAMS}"
    );
    let more = open(MAX_STREAMS / 2).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a full connection makes the pool open another");
    drop(first);
    let again = open(MAX_STREAMS / 2).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "freed places are reused before any new connection");
    assert_eq!(pool.connections().await, 2);
    drop((more, again));
    // The source pod leaves: its connections go with it.
    pool.forget_source(&[source.ip()]);
    assert_eq!(pool.connections().await, 0);
}
