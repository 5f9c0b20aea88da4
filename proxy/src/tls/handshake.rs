//! HBONE's TLS handshakes, driven through rustls's unbuffered API: rustls does the handshake
//! in buffers of ours, then hands over its secrets, so that the connection's records are read
//! and written by [`super::records`].
use std::{io, ops::DerefMut, sync::Arc};

use bytes::{Buf, BytesMut};
use rustls::{
    ClientConfig, HandshakeKind, ServerConfig, SupportedCipherSuite,
    client::{ClientConnectionData, UnbufferedClientConnection},
    pki_types::{CertificateDer, ServerName},
    server::{ServerConnectionData, UnbufferedServerConnection},
    unbuffered::{ConnectionState, EncodeError, EncodeTlsData, UnbufferedConnectionCommon, UnbufferedStatus},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::records::{Handover, Kernel, TlsStream, protocol_error, tls_error};

/// The room made for each read of the handshake: a flight with a certificate chain fits.
const HANDSHAKE_READ: usize = 16 * 1024;
/// How long a failed handshake's alert may wait for the socket.
const ALERT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A server's side of an accepted connection, once its handshake is done.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TlsStream,
    pub kind: Option<HandshakeKind>,
    /// The client's chain, leaf first.
    pub peer_certificates: Option<Vec<CertificateDer<'static>>>,
}

/// The server's handshake on `tcp`, per `config` (which must allow secret extraction, as
/// [`super::server_config`]'s does).
pub async fn accept(config: Arc<ServerConfig>, mut tcp: TcpStream) -> io::Result<Accepted> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let flight = drive(&mut conn, &mut tcp).await?;
    let kind = conn.handshake_kind();
    let peer_certificates = conn.peer_certificates().map(<[_]>::to_vec);
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    let suite = kernel.negotiated_cipher_suite();
    let stream = TlsStream::new(tcp, handover(Kernel::Server(kernel), suite, secrets, flight)?)?;
    Ok(Accepted { stream, kind, peer_certificates })
}

/// The client's handshake on `tcp`, per `config` (which must allow secret extraction, as
/// [`super::client_config`]'s does); `name` keys its session tickets.
pub async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    mut tcp: TcpStream,
) -> io::Result<(TlsStream, Option<HandshakeKind>)> {
    let mut conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    let flight = drive(&mut conn, &mut tcp).await?;
    let kind = conn.handshake_kind();
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    let suite = kernel.negotiated_cipher_suite();
    Ok((TlsStream::new(tcp, handover(Kernel::Client(kernel), suite, secrets, flight)?)?, kind))
}

fn handover(
    kernel: Kernel,
    suite: SupportedCipherSuite,
    secrets: rustls::ExtractedSecrets,
    flight: Flight,
) -> io::Result<Handover> {
    let SupportedCipherSuite::Tls13(suite) = suite else {
        return Err(protocol_error("a TLS 1.2 connection, which HBONE's configuration never allows"));
    };
    Ok(Handover {
        kernel,
        confidentiality_limit: suite.common.confidentiality_limit,
        tx: secrets.tx,
        rx: secrets.rx,
        read: flight.incoming,
    })
}

/// Either side of an unbuffered connection.
trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// A handshake's buffers: what it read (at its end: the records after its last), and what it
/// has to send.
struct Flight {
    incoming: BytesMut,
    /// How much of `incoming` rustls has been shown: whole records, one more each time it needs
    /// more, so that it never reads past the handshake's last record. What it read past that
    /// (the first part of a ticket or key update split across records) it would hold for
    /// itself and take with it at the handover.
    shown: usize,
    outgoing: Vec<u8>,
}

enum Next {
    Process,
    Read,
    Done,
}

/// The end of the first complete record after `from`, if `incoming` holds one.
fn record_after(incoming: &[u8], from: usize) -> Option<usize> {
    let header = incoming.get(from..from + 5)?;
    let end = from + 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
    (end <= incoming.len()).then_some(end)
}

/// Runs the handshake until rustls may send and receive application data.
async fn drive<S: Side>(conn: &mut S, tcp: &mut TcpStream) -> io::Result<Flight> {
    let mut flight = Flight { incoming: BytesMut::new(), shown: 0, outgoing: Vec::new() };
    loop {
        let status = conn.process(&mut flight.incoming[..flight.shown]);
        let discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(error) => {
                flight.incoming.advance(discard);
                flight.shown -= discard;
                alert_peer(conn, tcp, &mut flight).await;
                return Err(tls_error(error));
            }
        };
        let next = match state {
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, &mut flight.outgoing)?;
                Next::Process
            }
            // Sent when the handshake waits for its peer or ends: one write a flight.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                Next::Process
            }
            ConnectionState::BlockedHandshake => Next::Read,
            // A server may send before the client's Finished; the handshake is not over then.
            ConnectionState::WriteTraffic(_) => Next::Done,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed TLS in its handshake",
                ));
            }
            // Application data, before the handshake's end (never shown to rustls), or early data.
            _ => return Err(protocol_error("application data in the handshake")),
        };
        flight.incoming.advance(discard);
        flight.shown -= discard;
        match next {
            Next::Process => {}
            Next::Done | Next::Read => {
                // Sent before waiting for the peer, and at the end: a client's Finished held for
                // its first records would stall a server that waits for it before it speaks.
                if !flight.outgoing.is_empty() {
                    tcp.write_all(&flight.outgoing).await?;
                    flight.outgoing.clear();
                }
                if matches!(next, Next::Done) && !conn.is_handshaking() {
                    return Ok(flight);
                }
                if let Some(end) = record_after(&flight.incoming, flight.shown) {
                    flight.shown = end;
                    continue;
                }
                flight.incoming.reserve(HANDSHAKE_READ);
                if tcp.read_buf(&mut flight.incoming).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection in the TLS handshake",
                    ));
                }
            }
        }
    }
}

/// Appends what rustls has to send to `outgoing`.
fn encode_into<Data>(encode: &mut EncodeTlsData<'_, Data>, outgoing: &mut Vec<u8>) -> io::Result<()> {
    let start = outgoing.len();
    outgoing.resize(start + HANDSHAKE_READ, 0);
    let written = loop {
        match encode.encode(&mut outgoing[start..]) {
            Ok(written) => break written,
            Err(EncodeError::InsufficientSize(needed)) => outgoing.resize(start + needed.required_size, 0),
            Err(error) => return Err(protocol_error(&error.to_string())),
        }
    };
    outgoing.truncate(start + written);
    Ok(())
}

/// After a failed handshake, sends what was left to send and the alert rustls queued saying why
/// (a bad certificate, say), as far as the socket takes it: the peer learns the cause rather
/// than seeing the connection just close.
/// rustls is shown what it was shown before, not an empty buffer: it keeps its own offset into
/// the records it was shown, and an empty one made it slice out of bounds (a panic, after a
/// ClientHello announcing 64 KiB).
async fn alert_peer<S: Side>(conn: &mut S, tcp: &mut TcpStream, flight: &mut Flight) {
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
        conn.process(&mut flight.incoming[..flight.shown]).state
    {
        let _ = encode_into(&mut encode, &mut flight.outgoing);
    }
    if !flight.outgoing.is_empty() {
        let _ = tokio::time::timeout(ALERT_TIMEOUT, tcp.write_all(&flight.outgoing)).await;
    }
}
