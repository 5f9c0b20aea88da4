//! HBONE between two in-process proxy halves, for real: TLS 1.3 with workload certificates from
//! a test CA, HTTP/2 CONNECT, and real TCP upstreams on loopback.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    hash::{DefaultHasher, Hasher},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;
use weft_proxy::{
    hbone::{
        self,
        client::{Connection, Origin},
        server::{ConnectRequest, Handler, Refusal},
    },
    identity::{Expected, Identity},
    tls::{
        self, WorkloadCert,
        test_ca::{Leaf, TestCa},
    },
};

const TD: &str = "cluster.local";

fn client_id() -> Identity {
    Identity::new(TD, "shop", "cart")
}

fn server_id() -> Identity {
    Identity::new(TD, "shop", "payments")
}

/// The destination side: which addresses are "its pods", and whom policy denies.
#[derive(Default)]
struct TestHandler {
    local: Vec<IpAddr>,
    deny: Option<Identity>,
    seen: Mutex<Vec<ConnectRequest>>,
}

impl Handler for TestHandler {
    type Upstream = TcpStream;

    async fn connect(&self, request: ConnectRequest) -> Result<TcpStream, Refusal> {
        self.seen.lock().unwrap().push(request.clone());
        if !self.local.contains(&request.target.ip()) {
            return Err(Refusal::BadRequest(format!("{} is not a pod here", request.target)));
        }
        if self.deny.as_ref() == Some(&request.peer.identity) {
            return Err(Refusal::Denied(format!("{} may not connect", request.peer.identity)));
        }
        TcpStream::connect(request.target).await.map_err(|error| Refusal::Unavailable(error.to_string()))
    }
}

/// An HBONE server on loopback, serving with `cert` and `handler`.
async fn hbone_server(cert: &WorkloadCert, handler: Arc<TestHandler>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls::Acceptor::from(tls::server_config(cert).unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let _ = hbone::server::serve_connection(tcp, acceptor, handler).await;
            });
        }
    });
    addr
}

/// An upstream that echoes everything and half-closes after the client did; counts accepts.
async fn echo_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

async fn connect(
    server: SocketAddr,
    cert: &WorkloadCert,
    expected: impl Into<Expected>,
) -> Result<Connection, hbone::client::Error> {
    let tcp = TcpStream::connect(server).await.unwrap();
    Connection::handshake(tcp, tls::client_config(cert, &expected.into()).unwrap()).await
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_cross_intact_both_ways_with_half_close_for_1_byte_1_mib_and_100_mib() {
    let ca = TestCa::new("mesh");
    let handler = Arc::new(TestHandler { local: vec![Ipv4Addr::LOCALHOST.into()], ..Default::default() });
    let server = hbone_server(&ca.issue(&server_id()), handler.clone()).await;
    let (upstream, _) = echo_upstream().await;
    let connection = connect(server, &ca.issue(&client_id()), server_id()).await.unwrap();

    for len in [1, 1 << 20, 100 << 20] {
        let origin = Origin {
            source: "10.1.2.3:4567".parse().unwrap(),
            service_host: Some("echo.shop.svc.cluster.local".into()),
            baggage: Origin::baggage_of("shop", "web"),
            via: "1.1 waypoint.shop.weft-waypoint".into(),
        };
        let mut stream = connection.open(upstream, &origin, Origin::TEST_TRACEPARENT).await.unwrap();
        let data = pattern(len);
        let (mut read, mut write) = tokio::io::split(&mut stream);
        let writer = async {
            write.write_all(&data).await.unwrap();
            write.shutdown().await.unwrap(); // END_STREAM → upstream sees FIN → echoes its FIN back
        };
        let reader = async {
            let mut back = Vec::with_capacity(len);
            read.read_to_end(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::join!(writer, reader);
        assert_eq!(back.len(), len);
        assert_eq!(digest(&back), digest(&data), "{len} bytes came back altered");
    }
    let seen = handler.seen.lock().unwrap();
    assert_eq!(seen[0].peer.identity, client_id());
    assert_eq!(seen[0].forwarded_for, Some("10.1.2.3".parse().unwrap()));
    assert_eq!(seen[0].via.as_deref(), Some("1.1 waypoint.shop.weft-waypoint"));
    assert_eq!(
        seen[0].traceparent.map(|context| context.to_string()).as_deref(),
        Some(Origin::TEST_TRACEPARENT)
    );
}

/// A raw HTTP/2 client over mTLS, to send what the HBONE client never would.
async fn raw_h2(server: SocketAddr, cert: &WorkloadCert) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = TlsConnector::from(tls::client_config(cert, &server_id().into()).unwrap())
        .connect(tls::unused_server_name(), tcp)
        .await
        .unwrap();
    let (send, driver) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(driver);
    send
}

async fn status_of(send: &h2::client::SendRequest<Bytes>, request: Request<()>) -> StatusCode {
    let mut send = send.clone().ready().await.unwrap();
    let (response, _body) = send.send_request(request, false).unwrap();
    response.await.unwrap().status()
}

fn connect_to(authority: &str) -> Request<()> {
    Request::builder().method(Method::CONNECT).uri(authority).body(()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_code() {
    let ca = TestCa::new("mesh");
    let handler = Arc::new(TestHandler {
        local: vec![Ipv4Addr::LOCALHOST.into()],
        deny: Some(Identity::new(TD, "shop", "intruder")),
        ..Default::default()
    });
    let server = hbone_server(&ca.issue(&server_id()), handler).await;
    let (upstream, _) = echo_upstream().await;
    let closed = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap() // dropped: nothing listens there
    };
    let good = raw_h2(server, &ca.issue(&client_id())).await;
    let intruder = raw_h2(server, &ca.issue(&Identity::new(TD, "shop", "intruder"))).await;

    let get = Request::builder().method(Method::GET).uri(format!("http://{upstream}/")).body(()).unwrap();
    assert_eq!(status_of(&good, get).await, StatusCode::BAD_REQUEST);
    assert_eq!(status_of(&good, connect_to("example.com:80")).await, StatusCode::BAD_REQUEST);
    assert_eq!(status_of(&good, connect_to("10.9.9.9:80")).await, StatusCode::BAD_REQUEST, "not a pod here");
    assert_eq!(status_of(&intruder, connect_to(&upstream.to_string())).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&good, connect_to(&closed.to_string())).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status_of(&good, connect_to(&upstream.to_string())).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_before_a_refusal_never_reaches_the_upstream() {
    let ca = TestCa::new("mesh");
    let intruder = Identity::new(TD, "shop", "intruder");
    let handler = Arc::new(TestHandler {
        local: vec![Ipv4Addr::LOCALHOST.into()],
        deny: Some(intruder.clone()),
        ..Default::default()
    });
    let server = hbone_server(&ca.issue(&server_id()), handler).await;
    let (upstream, accepted) = echo_upstream().await;
    let send = raw_h2(server, &ca.issue(&intruder)).await;

    let mut send = send.ready().await.unwrap();
    let (response, mut body) = send.send_request(connect_to(&upstream.to_string()), false).unwrap();
    body.send_data(Bytes::from_static(b"early bytes"), false).unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the upstream was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_do_not_prove_the_right_identity_are_refused_before_any_byte_moves() {
    let ca = TestCa::new("mesh");
    let handler = Arc::new(TestHandler { local: vec![Ipv4Addr::LOCALHOST.into()], ..Default::default() });
    let server = hbone_server(&ca.issue(&server_id()), handler.clone()).await;
    let (upstream, accepted) = echo_upstream().await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    let foreign = ca.issue(&Identity::new("evil.example", "shop", "cart"));
    let mut expired = Leaf::for_identity(&client_id());
    (expired.not_before, expired.not_after) = (now - 3 * hour, now - hour);
    let mut future = Leaf::for_identity(&client_id());
    (future.not_before, future.not_after) = (now + hour, now + 3 * hour);
    let mut dns_only = Leaf::for_identity(&client_id());
    dns_only.sans = vec![rcgen::SanType::DnsName("cart.shop.svc".try_into().unwrap())];
    let other_root = TestCa::new("other mesh").issue(&client_id());

    let bad_clients = [
        ("another trust domain", foreign),
        ("expired", ca.issue_leaf(&expired)),
        ("not yet valid", ca.issue_leaf(&future)),
        ("DNS SAN only", ca.issue_leaf(&dns_only)),
        ("another root", WorkloadCert { roots: vec![ca.root()], ..other_root }),
    ];
    for (what, cert) in bad_clients {
        let refused = match connect(server, &cert, server_id()).await {
            Err(_) => true,
            // TLS 1.3: the client may finish before the server rejects its certificate; the
            // first stream then fails.
            Ok(connection) => connection
                .open(
                    upstream,
                    &Origin::from_address("10.0.0.1:1".parse().unwrap()),
                    Origin::TEST_TRACEPARENT,
                )
                .await
                .is_err(),
        };
        assert!(refused, "client certificate accepted: {what}");
    }
    // The server proves the wrong identity: the client refuses it.
    let good = ca.issue(&client_id());
    assert!(
        connect(server, &good, Identity::new(TD, "shop", "other")).await.is_err(),
        "wrong server identity accepted"
    );
    // Nor does one of a Service's alternatives that the server is not.
    let service_sans = Expected {
        workload: Identity::new(TD, "shop", "other"),
        alternatives: vec![Identity::new(TD, "shop", "also-other")],
    };
    assert!(connect(server, &good, service_sans).await.is_err(), "an identity outside the list accepted");
    assert!(handler.seen.lock().unwrap().is_empty(), "a stream got through");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the upstream was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_proving_one_of_a_services_subject_alt_names_is_accepted() {
    let ca = TestCa::new("mesh");
    let handler = Arc::new(TestHandler { local: vec![Ipv4Addr::LOCALHOST.into()], ..Default::default() });
    let server = hbone_server(&ca.issue(&server_id()), handler).await;
    // The endpoint's workload is another identity; the Service names the server's.
    let expected = Expected { workload: Identity::new(TD, "shop", "other"), alternatives: vec![server_id()] };
    assert!(connect(server, &ca.issue(&client_id()), expected).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_reaches_the_client_as_a_reset() {
    let ca = TestCa::new("mesh");
    let handler = Arc::new(TestHandler { local: vec![Ipv4Addr::LOCALHOST.into()], ..Default::default() });
    let server = hbone_server(&ca.issue(&server_id()), handler).await;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 5];
        tcp.read_exact(&mut first).await.unwrap();
        socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).unwrap();
        drop(tcp); // RST
    });
    let connection = connect(server, &ca.issue(&client_id()), server_id()).await.unwrap();
    let mut stream = connection
        .open(upstream, &Origin::from_address("10.0.0.1:1".parse().unwrap()), Origin::TEST_TRACEPARENT)
        .await
        .unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let error = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_client_is_cut_off_and_a_well_behaved_one_is_not() {
    let ca = TestCa::new("mesh");
    let handler = Arc::new(TestHandler { local: vec![Ipv4Addr::LOCALHOST.into()], ..Default::default() });
    let server = hbone_server(&ca.issue(&server_id()), handler).await;
    let (upstream, _) = echo_upstream().await;
    let good = connect(server, &ca.issue(&client_id()), server_id()).await.unwrap();
    let abuser = raw_h2(server, &ca.issue(&Identity::new(TD, "shop", "abuser"))).await;

    const ATTEMPTS: usize = 5000;
    let mut sent = 0;
    for _ in 0..ATTEMPTS {
        let Ok(mut send) = abuser.clone().ready().await else { break };
        let Ok((_response, mut body)) = send.send_request(connect_to(&upstream.to_string()), false) else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        sent += 1;
        tokio::task::yield_now().await;
    }
    assert!(sent < ATTEMPTS, "the abuser was never cut off ({sent} resets)");

    let mut stream = good
        .open(upstream, &Origin::from_address("10.0.0.1:1".parse().unwrap()), Origin::TEST_TRACEPARENT)
        .await
        .unwrap();
    stream.write_all(b"still fine").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still fine");
}

#[path = "../../tests/src/h2_frames.rs"]
mod raw;

/// Writes `frames` until the server stops reading or closes; returns the bytes it took.
async fn flood(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    mut frames: impl FnMut(usize) -> Vec<u8>,
    limit: usize,
) -> usize {
    let mut written = 0;
    let mut index = 0;
    while written < limit {
        let bytes = frames(index);
        index += 1;
        match tokio::time::timeout(Duration::from_secs(5), tls.write_all(&bytes)).await {
            Ok(Ok(())) => written += bytes.len(),
            _ => break,
        }
    }
    written
}

async fn raw_tls(server: SocketAddr, cert: &WorkloadCert) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server).await.unwrap();
    let mut tls = TlsConnector::from(tls::client_config(cert, &server_id().into()).unwrap())
        .connect(tls::unused_server_name(), tcp)
        .await
        .unwrap();
    tls.write_all(raw::PREFACE).await.unwrap();
    tls.write_all(&raw::frame(raw::SETTINGS, 0, 0, &[])).await.unwrap();
    tls
}

/// A good client's round trip through `server` to `upstream`.
async fn round_trip(server: SocketAddr, ca: &TestCa, upstream: SocketAddr) {
    let good = connect(server, &ca.issue(&client_id()), server_id()).await.unwrap();
    let mut stream = good
        .open(upstream, &Origin::from_address("10.0.0.1:1".parse().unwrap()), Origin::TEST_TRACEPARENT)
        .await
        .unwrap();
    stream.write_all(b"still fine").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_and_oversized_headers_are_cut_off_and_others_keep_working() {
    const FLOOD: usize = 64 << 20;
    let ca = TestCa::new("mesh");
    let handler = Arc::new(TestHandler { local: vec![Ipv4Addr::LOCALHOST.into()], ..Default::default() });
    let server = hbone_server(&ca.issue(&server_id()), handler.clone()).await;
    let (upstream, upstream_accepts) = echo_upstream().await;
    let abuser = ca.issue(&Identity::new(TD, "shop", "abuser"));

    // CONTINUATION flood: a header block that never ends, 16 KiB of new header names a frame.
    let mut tls = raw_tls(server, &abuser).await;
    let authority = upstream.to_string();
    let taken = flood(
        &mut tls,
        |index| match index {
            0 => raw::frame(raw::HEADERS, 0, 1, &raw::connect(&authority)),
            n => {
                let block: Vec<u8> =
                    (0..64).flat_map(|i| raw::literal(&format!("x-{n}-{i}"), &"v".repeat(240))).collect();
                raw::frame(raw::CONTINUATION, 0, 1, &block)
            }
        },
        FLOOD,
    )
    .await;
    eprintln!("continuation flood: the server stopped after {taken} bytes");
    assert!(taken < FLOOD / 4, "the server kept reading a never-ending header block ({taken} bytes)");
    round_trip(server, &ca, upstream).await;

    // Oversized decoded headers in one complete block: refused, never connected upstream.
    let before = upstream_accepts.load(Ordering::SeqCst);
    let mut tls = raw_tls(server, &abuser).await;
    let huge: Vec<u8> = [
        raw::connect(&authority),
        raw::literal("x-huge", &"h".repeat(15_000)),
        raw::literal("x-more", &"m".repeat(15_000)),
    ]
    .concat();
    let mut frames = vec![raw::frame(raw::HEADERS, 0, 1, &huge[..16_000])];
    frames.push(raw::frame(raw::CONTINUATION, raw::END_HEADERS, 1, &huge[16_000..]));
    for frame in frames {
        let _ = tls.write_all(&frame).await;
    }
    // Whatever the server answers (a reset, a 431, GOAWAY), it never connects upstream.
    let mut answer = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut answer)).await;
    round_trip(server, &ca, upstream).await;
    assert_eq!(
        upstream_accepts.load(Ordering::SeqCst),
        before + 1,
        "only the good client reached the upstream"
    );
    let seen = handler.seen.lock().unwrap();
    assert!(
        seen.iter().all(|request| request.peer.identity != Identity::new(TD, "shop", "abuser")),
        "an abuser's stream reached the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_agree_on_the_post_quantum_group_and_aes_128_gcm() {
    let ca = TestCa::new("mesh");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    // The configurations are what is tested: rustls's own connections carry them here.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&ca.issue(&server_id())).unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let session = tls.get_ref().1;
        (
            session.negotiated_cipher_suite().map(|suite| suite.suite()),
            session.negotiated_key_exchange_group().map(|group| group.name()),
        )
    });
    let tcp = TcpStream::connect(address).await.unwrap();
    let client =
        TlsConnector::from(tls::client_config(&ca.issue(&client_id()), &server_id().into()).unwrap())
            .connect(tls::unused_server_name(), tcp)
            .await
            .unwrap();
    let session = client.get_ref().1;
    // AES-128-GCM's SHA-256 has hardware help where SHA-384 has none, and costs fewer rounds per
    // record; the hybrid group keeps recorded traffic safe from a future quantum computer.
    let expected =
        (Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256), Some(rustls::NamedGroup::X25519MLKEM768));
    let client_side = (
        session.negotiated_cipher_suite().map(|suite| suite.suite()),
        session.negotiated_key_exchange_group().map(|group| group.name()),
    );
    assert_eq!(client_side, expected);
    assert_eq!(server.await.unwrap(), expected);
}

#[test]
fn a_resumed_session_is_refused_once_the_certificate_it_restored_has_expired() {
    let ca = TestCa::new("mesh");
    let now = std::time::SystemTime::now();
    let leaf = tls::test_ca::Leaf {
        not_after: now + Duration::from_secs(3600),
        ..tls::test_ca::Leaf::for_identity(&client_id())
    };
    let chain = ca.issue_leaf(&leaf).chain;
    assert!(tls::still_valid(Some(&chain), now).is_ok());
    let later = tls::still_valid(Some(&chain), now + Duration::from_secs(7200));
    assert!(later.is_err(), "an expired certificate taken as valid");
    assert!(tls::still_valid(None, now).is_err(), "no certificate taken as valid");
}
