//! HBONE's own TLS record layer (`tls::records`) against itself and against rustls's own
//! connections (as Istio's ztunnel runs them), on real TCP: bytes in order both ways, key
//! updates either side asks for, session tickets kept for resumption, close_notify, and a
//! tampered record ending only its own connection.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    task::{Context, Waker},
};

use rustls::HandshakeKind;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_proxy::{
    identity::Identity,
    tls::{self, records::TlsStream, test_ca::TestCa},
};

const TD: &str = "cluster.local";

fn client_id() -> Identity {
    Identity::new(TD, "shop", "cart")
}

fn server_id() -> Identity {
    Identity::new(TD, "shop", "payments")
}

struct Mesh {
    ca: TestCa,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    listener: TcpListener,
    address: SocketAddr,
}

impl Mesh {
    async fn new() -> Self {
        let ca = TestCa::new("mesh");
        let server = tls::server_config(&ca.issue(&server_id())).unwrap();
        let client = tls::client_config(&ca.issue(&client_id()), &server_id().into()).unwrap();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        Self { ca, server, client, listener, address }
    }

    /// Our client's handshake, through `to` (the server, or a relay to it).
    async fn our_client(&self, to: SocketAddr) -> (TlsStream, Option<HandshakeKind>) {
        let tcp = TcpStream::connect(to).await.unwrap();
        tls::handshake::connect(self.client.clone(), tls::resumption_name(self.address.ip()), tcp)
            .await
            .unwrap()
    }

    async fn ours_to_ours(&self) -> (TlsStream, TlsStream, Option<HandshakeKind>) {
        let accepting = async {
            let (tcp, _) = self.listener.accept().await.unwrap();
            tls::Acceptor::from(self.server.clone()).accept(tcp).await.unwrap()
        };
        let ((client, kind), accepted) = tokio::join!(self.our_client(self.address), accepting);
        assert_eq!(accepted.kind, kind, "the two ends disagree on resumption");
        (client, accepted.stream, kind)
    }

    /// Our client, through `to`, against rustls's server.
    async fn ours_to_rustls(
        &self,
        to: SocketAddr,
    ) -> (TlsStream, Option<HandshakeKind>, tokio_rustls::server::TlsStream<TcpStream>) {
        let accepting = async {
            let (tcp, _) = self.listener.accept().await.unwrap();
            TlsAcceptor::from(self.server.clone()).accept(tcp).await.unwrap()
        };
        let ((client, kind), server) = tokio::join!(self.our_client(to), accepting);
        (client, kind, server)
    }

    /// rustls's client, connecting to `to` (our server, or a relay to it), against our server.
    async fn rustls_to_ours(
        &self,
        to: SocketAddr,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, TlsStream) {
        let connecting = async {
            TlsConnector::from(self.client.clone())
                .connect(tls::unused_server_name(), TcpStream::connect(to).await.unwrap())
                .await
                .unwrap()
        };
        let accepting = async {
            let (tcp, _) = self.listener.accept().await.unwrap();
            tls::Acceptor::from(self.server.clone()).accept(tcp).await.unwrap()
        };
        let (client, accepted) = tokio::join!(connecting, accepting);
        (client, accepted.stream)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Sends `len` bytes each way at once, both halves closing after, and checks what arrives.
async fn exchange<A, B>(a: A, b: B, len: usize)
where
    A: AsyncRead + AsyncWrite + Send + 'static,
    B: AsyncRead + AsyncWrite + Send + 'static,
{
    async fn side<S: AsyncRead + AsyncWrite>(stream: S, send: Vec<u8>, expect: Vec<u8>) {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let writing = async {
            // Writes of uneven sizes, as relays and h2 make them.
            for chunk in send.chunks(70_001) {
                writer.write_all(chunk).await.unwrap();
            }
            writer.shutdown().await.unwrap();
        };
        let reading = async {
            let mut received = Vec::new();
            reader.read_to_end(&mut received).await.unwrap();
            received
        };
        let ((), received) = tokio::join!(writing, reading);
        assert!(
            received == expect,
            "{} bytes arrived of {} sent, or out of order",
            received.len(),
            expect.len()
        );
    }
    let (ab, ba) = (pattern(len, 1), pattern(len, 2));
    let one = tokio::spawn(side(a, ab.clone(), ba.clone()));
    let other = tokio::spawn(side(b, ba, ab));
    one.await.unwrap();
    other.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_cross_intact_both_ways_between_two_of_ours_and_each_end_sees_the_others_close() {
    let mesh = Mesh::new().await;
    for len in [0, 1, 16 * 1024 - 1, 16 * 1024 + 1, 3 * 1024 * 1024 + 17] {
        let (client, server, _) = mesh.ours_to_ours().await;
        exchange(client, server, len).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_talk_to_rustls_both_ways_and_our_client_resumes_with_the_tickets_it_was_sent() {
    let mesh = Mesh::new().await;
    // Our client against rustls's server, twice: the second resumes on a ticket that arrived
    // after the handshake, through our records.
    for expected in [HandshakeKind::Full, HandshakeKind::Resumed] {
        let (client, kind, server) = mesh.ours_to_rustls(mesh.address).await;
        assert_eq!(kind, Some(expected));
        exchange(client, server, 1024 * 1024 + 3).await;
    }
    // rustls's client against our server.
    let (client, server) = mesh.rustls_to_ours(mesh.address).await;
    exchange(client, server, 1024 * 1024 + 3).await;
}

/// Our records' AEAD is ring's and rustls's is aws-lc's: for each suite HBONE offers, a rustls
/// server offering only that one, bytes both ways (each end sealing what the other opens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_suite_hbone_offers_carries_bytes_both_ways_against_rustls() {
    let mesh = Mesh::new().await;
    let cert = mesh.ca.issue(&server_id());
    for suite in tls::provider().cipher_suites.iter().copied() {
        let mut provider = (*tls::provider()).clone();
        provider.cipher_suites = vec![suite];
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())
            .unwrap();
        let accepting = async {
            let (tcp, _) = mesh.listener.accept().await.unwrap();
            TlsAcceptor::from(Arc::new(server)).accept(tcp).await.unwrap()
        };
        let ((client, _), server) = tokio::join!(mesh.our_client(mesh.address), accepting);
        assert_eq!(server.get_ref().1.negotiated_cipher_suite(), Some(suite));
        exchange(client, server, 256 * 1024 + 5).await;
    }
}

/// A rustls peer that moves to new keys mid-stream and asks ours to do the same (as rustls
/// does by itself near AES-GCM's record limit): both directions go on under the new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_update_the_peer_asks_for_moves_both_directions_to_new_keys() {
    let mesh = Mesh::new().await;
    let (go, held) = tokio::sync::oneshot::channel();
    go.send(()).unwrap();
    let (passed, sent) = tokio::sync::watch::channel(0);
    let relay = meddling_relay(mesh.address, held, |_| {}, passed).await;
    let (mut client, _, mut server) = mesh.ours_to_rustls(relay).await;
    let mut buf = [0; 5];
    for round in 0..3u8 {
        server.get_mut().1.refresh_traffic_keys().unwrap();
        server.write_all(&[round; 5]).await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [round; 5]);
        // Our answer's KeyUpdate went first: rustls fails this read if our keys did not
        // change with it.
        client.write_all(&[round + 10; 5]).await.unwrap();
        client.flush().await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [round + 10; 5]);
    }
    // The client's Finished, then per round our KeyUpdate and the data.
    assert_eq!(*sent.borrow(), 1 + 3 * 2, "our answers' KeyUpdates did not all go out");
}

/// A relay from a client to `upstream`: passes the handshake, then holds the client's records
/// after its Finished (its first protected record) until `go`, lets `meddle` change the next
/// one, and passes the rest, saying in `passed` how many protected records it has passed. Held so that
/// the record reaches the server's record layer, not rustls's handshake, however the reads fall.
async fn meddling_relay(
    upstream: SocketAddr,
    go: tokio::sync::oneshot::Receiver<()>,
    meddle: impl FnOnce(&mut Vec<u8>) + Send + 'static,
    passed: tokio::sync::watch::Sender<usize>,
) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut down, _) = listener.accept().await.unwrap();
        let mut up = TcpStream::connect(upstream).await.unwrap();
        let (mut down_read, mut down_write) = down.split();
        let (mut up_read, mut up_write) = up.split();
        let to_server = async {
            let (mut protected, mut go, mut meddle) = (0, Some(go), Some(meddle));
            loop {
                let mut record = vec![0; 5];
                if down_read.read_exact(&mut record).await.is_err() {
                    break;
                }
                record.resize(5 + usize::from(u16::from_be_bytes([record[3], record[4]])), 0);
                down_read.read_exact(&mut record[5..]).await.unwrap();
                protected += usize::from(record[0] == 23);
                if protected == 2 {
                    go.take().unwrap().await.unwrap();
                    meddle.take().unwrap()(&mut record);
                }
                if up_write.write_all(&record).await.is_err() {
                    break;
                }
                passed.send_replace(protected);
            }
        };
        let to_client = tokio::io::copy(&mut up_read, &mut down_write);
        let _ = tokio::join!(to_server, to_client);
    });
    address
}

/// A record changed on the wire fails its reader's connection with an error, and the peer is
/// told (a fatal alert); a connection beside it is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_record_fails_its_connection_only_and_the_peer_hears_of_it() {
    let mesh = Mesh::new().await;
    let (mut untouched_client, mut untouched_server, _) = mesh.ours_to_ours().await;
    let (go, held) = tokio::sync::oneshot::channel();
    let relay = meddling_relay(mesh.address, held, |record| record[7] ^= 1, Default::default()).await;
    let (mut client, mut server) = mesh.rustls_to_ours(relay).await;
    client.write_all(b"tampered").await.unwrap();
    client.flush().await.unwrap();
    go.send(()).unwrap();
    let mut buf = [0; 8];
    let error = server.read(&mut buf).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
    assert!(server.read(&mut buf).await.is_err(), "a failed connection read on");
    let heard = client.read(&mut buf).await.unwrap_err();
    assert!(heard.to_string().contains("BadRecordMac"), "the client heard: {heard}");
    untouched_client.write_all(b"still here").await.unwrap();
    untouched_client.flush().await.unwrap();
    let mut buf = [0; 10];
    untouched_server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

/// A record longer than TLS allows is refused from its header, before its body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_longer_than_tls_allows_is_refused_from_its_header() {
    let mesh = Mesh::new().await;
    let (go, held) = tokio::sync::oneshot::channel();
    let relay =
        meddling_relay(mesh.address, held, |record| *record = vec![23, 3, 3, 0xff, 0xff], Default::default())
            .await;
    let (mut client, mut server) = mesh.rustls_to_ours(relay).await;
    client.write_all(b"x").await.unwrap();
    client.flush().await.unwrap();
    go.send(()).unwrap();
    let error = server.read(&mut [0; 8]).await.unwrap_err();
    assert!(error.to_string().contains("record too long"), "{error}");
}

/// A peer that sends part of a record and then nothing pins no 256 KiB block: while the socket
/// has nothing more, the partial record is all that is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_record_waiting_for_its_rest_holds_no_more_than_a_record() {
    let mesh = Mesh::new().await;
    let (go, held) = tokio::sync::oneshot::channel();
    let (passed, mut relayed) = tokio::sync::watch::channel(0);
    let relay = meddling_relay(mesh.address, held, |record| record.truncate(3), passed).await;
    let (mut client, mut server) = mesh.rustls_to_ours(relay).await;
    client.write_all(b"x").await.unwrap();
    client.flush().await.unwrap();
    go.send(()).unwrap();
    // On loopback the bytes are in the server's socket once the relay's write returned.
    relayed.wait_for(|passed| *passed == 2).await.unwrap();
    let mut buf = [0; 8];
    let mut out = tokio::io::ReadBuf::new(&mut buf);
    let poll = std::pin::Pin::new(&mut server).poll_read(&mut Context::from_waker(Waker::noop()), &mut out);
    assert!(poll.is_pending(), "three bytes of a record were read as something");
    let held = server.read_buffer_capacity();
    assert!(held <= 5 + 16 * 1024 + 256, "a partial record holds a block of {held} bytes");
}

/// Key updates asked for again and again, with no data between, are a flood: the connection
/// fails rather than answer each (rustls's own limit is the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_key_update_requests_fails_the_connection() {
    let mesh = Mesh::new().await;
    let (mut client, _, mut server) = mesh.ours_to_rustls(mesh.address).await;
    for _ in 0..40 {
        server.get_mut().1.refresh_traffic_keys().unwrap();
    }
    // Data after them: without the limit, the read would return it.
    server.write_all(b"data").await.unwrap();
    server.flush().await.unwrap();
    let error = client.read(&mut [0; 8]).await.unwrap_err();
    assert!(error.to_string().contains("without application data"), "{error}");
}

/// A client our server refuses (a certificate of another mesh) hears why, as rustls's own
/// server would tell it, rather than see the connection just close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_hears_the_alert_saying_why() {
    let mesh = Mesh::new().await;
    // Trusts this mesh's root, but its certificate is another's.
    let mut stranger = TestCa::new("elsewhere").issue(&client_id());
    stranger.roots = vec![mesh.ca.root()];
    let stranger = tls::client_config(&stranger, &server_id().into()).unwrap();
    let connecting = async {
        let tcp = TcpStream::connect(mesh.address).await.unwrap();
        // TLS 1.3: the client is done before the server has checked its certificate.
        let mut tls = TlsConnector::from(stranger).connect(tls::unused_server_name(), tcp).await.unwrap();
        tls.read(&mut [0; 8]).await.unwrap_err()
    };
    let accepting = async {
        let (tcp, _) = mesh.listener.accept().await.unwrap();
        tls::Acceptor::from(mesh.server.clone()).accept(tcp).await.unwrap_err()
    };
    let (heard, refused) = tokio::join!(connecting, accepting);
    assert!(heard.to_string().contains("received fatal alert"), "the client heard: {heard}");
    assert!(refused.to_string().contains("certificate"), "the server said: {refused}");
}

/// A ClientHello announcing more than rustls takes fails that handshake with an error, and
/// nothing panics: the alert after a failed handshake once showed rustls an empty buffer, and
/// rustls sliced it at its own offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_announcing_64_kib_fails_its_handshake_without_a_panic() {
    let mesh = Mesh::new().await;
    let mut tcp = TcpStream::connect(mesh.address).await.unwrap();
    tcp.write_all(&[0x16, 3, 1, 0, 4, 1, 1, 0, 0]).await.unwrap();
    let (accepted, _) = mesh.listener.accept().await.unwrap();
    let error = tls::Acceptor::from(mesh.server.clone()).accept(accepted).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
}
