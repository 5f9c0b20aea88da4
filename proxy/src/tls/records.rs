//! HBONE's TLS 1.3 record layer, after rustls's handshake ([`super::handshake`]): records are
//! read a socketful at a time into one buffer and decrypted where they lie, and h2 reads the
//! plaintext from there. Through rustls's own connection each received byte was copied three
//! times before h2 had it (the read-ahead into rustls's deframer, the decrypted record into a
//! new `Vec`, that into h2's buffer); here it is copied once, into h2's buffer. That took 5–9 %
//! off both proxies' CPU per GB moved (README, Performance).
//!
//! rustls still does what needs its state (its "kernel connection", made for kTLS): a key
//! update's new secrets, and a client's session tickets, so that resumption keeps working.
//! [`RecordKey`] seals and opens the records.
use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, HandshakeType, client::ClientConnectionData,
    crypto::cipher::OutboundChunks, kernel::KernelConnection, server::ServerConnectionData,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::record_key::{MAX_FRAGMENT, RecordKey, TAG};
use crate::relay;

/// A record's header: type, legacy version, length.
const HEADER: usize = 5;
/// The longest record body a peer may send: the plaintext, its inner content type, padding and
/// the AEAD's tag (RFC 8446 §5.2).
const MAX_BODY: usize = MAX_FRAGMENT + 256;
/// Post-handshake handshake messages (session tickets, key updates) are small; more than this
/// waiting for the rest of a message is an attack, not a ticket.
const MAX_HANDSHAKE_HELD: usize = 64 * 1024;
/// A KeyUpdate message's type and length, before its one byte.
const KEY_UPDATE_HEADER: [u8; 4] = [24, 0, 0, 1];
/// How far before the suite's confidentiality limit the sender moves to new keys: more records
/// than one write seals.
const REKEY_MARGIN: u64 = 1 << 16;
/// Records in a row that carry no application data (key updates, tickets, empty records,
/// warnings) before the peer is taken for a flood; rustls allows as many key updates in a row.
const MAX_RECORDS_WITHOUT_DATA: u32 = 32;
/// `key_update`'s request field (RFC 8446 §4.6.3).
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

/// rustls's part of a connection after its handshake: each side's own API.
pub(crate) enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(kernel) => kernel.update_rx_secret(),
            Self::Server(kernel) => kernel.update_rx_secret(),
        }
    }

    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(kernel) => kernel.update_tx_secret(),
            Self::Server(kernel) => kernel.update_tx_secret(),
        }
    }
}

/// What the handshake hands over: rustls's state, the suite's limit, both directions' secrets
/// and sequence numbers, and what it read past its end.
pub(crate) struct Handover {
    pub kernel: Kernel,
    pub confidentiality_limit: u64,
    pub tx: (u64, ConnectionTrafficSecrets),
    pub rx: (u64, ConnectionTrafficSecrets),
    /// Records read after the handshake's last one, not yet opened.
    pub read: BytesMut,
}

/// A TLS 1.3 connection over TCP, after its handshake.
pub struct TlsStream {
    tcp: TcpStream,
    kernel: Kernel,
    confidentiality_limit: u64,
    rx: Receiving,
    tx: Sending,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

struct Receiving {
    key: RecordKey,
    seq: u64,
    /// Records read from the socket; the first is being served while `record` is non-zero. No
    /// allocation while empty: an idle connection holds none.
    buf: BytesMut,
    /// The length of the opened record at the front of `buf`, header included; 0 if none.
    record: usize,
    /// Its plaintext not yet served: `buf[served..plain_end]`.
    served: usize,
    plain_end: usize,
    /// Part of a handshake message whose rest is in a later record.
    handshake: Vec<u8>,
    /// Records opened since the last that carried application data.
    without_data: u32,
    /// The peer's close_notify has arrived: the stream's end.
    closed: bool,
    /// A fatal error was met; every later read fails.
    failed: bool,
}

struct Sending {
    key: RecordKey,
    seq: u64,
    /// Sealed records, a write's worth a block, not yet written; `written` bytes of the first
    /// already are.
    queue: VecDeque<Vec<u8>>,
    written: usize,
    queued: usize,
    /// The peer asked for new keys: a KeyUpdate goes before our next records (RFC 8446
    /// §4.6.3). A flag, not a record queued per request, so that requests from a peer that
    /// does not read cannot grow the queue.
    update_requested: bool,
    /// close_notify or a fatal alert was sent: nothing more is.
    closed: bool,
}

pub(super) fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

pub(super) fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

impl TlsStream {
    pub(crate) fn new(tcp: TcpStream, handover: Handover) -> io::Result<Self> {
        let Handover { kernel, confidentiality_limit, tx, rx, read } = handover;
        Ok(Self {
            tcp,
            kernel,
            confidentiality_limit,
            rx: Receiving {
                key: RecordKey::new(rx.1)?,
                seq: rx.0,
                buf: read,
                record: 0,
                served: 0,
                plain_end: 0,
                handshake: Vec::new(),
                without_data: 0,
                closed: false,
                failed: false,
            },
            tx: Sending {
                key: RecordKey::new(tx.1)?,
                seq: tx.0,
                queue: VecDeque::new(),
                written: 0,
                queued: 0,
                update_requested: false,
                closed: false,
            },
        })
    }

    /// The read buffer's size: what the connection holds for records not yet read through.
    pub fn read_buffer_capacity(&self) -> usize {
        self.rx.buf.capacity()
    }

    /// Seals `plaintext` into records of at most [`MAX_FRAGMENT`], queued in one block; near the
    /// suite's confidentiality limit, moves to new keys (a KeyUpdate).
    fn seal(&mut self, typ: ContentType, plaintext: OutboundChunks<'_>) -> io::Result<()> {
        if self.tx.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS: the connection was closed"));
        }
        if self.tx.update_requested && typ != ContentType::Handshake {
            self.tx.update_requested = false;
            self.update_tx_keys()?;
        }
        let records = plaintext.len().div_ceil(MAX_FRAGMENT).max(1);
        let mut sealed = Vec::with_capacity(plaintext.len() + records * (HEADER + 1 + TAG));
        let mut rest = plaintext;
        loop {
            let (record, after) = rest.split_at(MAX_FRAGMENT);
            self.tx.key.seal(typ, &record, self.tx.seq, &mut sealed)?;
            self.tx.seq += 1;
            if after.is_empty() {
                break;
            }
            rest = after;
        }
        self.tx.queued += sealed.len();
        self.tx.queue.push_back(sealed);
        if self.tx.seq >= self.confidentiality_limit.saturating_sub(REKEY_MARGIN)
            && typ == ContentType::ApplicationData
        {
            self.update_tx_keys()?;
        }
        Ok(())
    }

    /// Sends a KeyUpdate under the current keys, then seals later records under the next.
    fn update_tx_keys(&mut self) -> io::Result<()> {
        let mut message = KEY_UPDATE_HEADER.to_vec();
        message.push(UPDATE_NOT_REQUESTED);
        self.seal(ContentType::Handshake, OutboundChunks::Single(&message))?;
        let (seq, secrets) = self.kernel.update_tx().map_err(tls_error)?;
        self.tx.key = RecordKey::new(secrets)?;
        self.tx.seq = seq;
        Ok(())
    }

    /// Writes queued records until none are left or the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tx.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut count = 0;
            for (i, record) in self.tx.queue.iter().take(slices.len()).enumerate() {
                let from = if i == 0 { self.tx.written } else { 0 };
                slices[i] = IoSlice::new(&record[from..]);
                count += 1;
            }
            let mut n = ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx.queued -= n;
            while n > 0 {
                let front = self.tx.queue[0].len() - self.tx.written;
                if n < front {
                    self.tx.written += n;
                    break;
                }
                n -= front;
                self.tx.written = 0;
                self.tx.queue.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the connection on the peer's misbehaviour: tells it why with a fatal alert, as far as
    /// the socket takes it now, and fails this and every later read.
    fn fatal(&mut self, cx: &mut Context<'_>, alert: AlertDescription, error: io::Error) -> io::Error {
        self.rx.failed = true;
        let alert = [2, u8::from(alert)];
        if self.seal(ContentType::Alert, OutboundChunks::Single(&alert)).is_ok() {
            let _ = self.poll_send(cx);
        }
        self.tx.closed = true;
        error
    }

    /// A record that carried no application data; too many in a row fail the connection.
    fn count_without_data(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.rx.without_data += 1;
        if self.rx.without_data > MAX_RECORDS_WITHOUT_DATA {
            return Err(self.fatal(
                cx,
                AlertDescription::UnexpectedMessage,
                protocol_error("too many records without application data"),
            ));
        }
        Ok(())
    }

    /// Opens the complete record at the front of the buffer, if there is one; false if more
    /// must be read first.
    fn open_record(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let buf = &self.rx.buf;
        if buf.len() < HEADER {
            return Ok(false);
        }
        let (typ, length, have) = (buf[0], usize::from(u16::from_be_bytes([buf[3], buf[4]])), buf.len());
        if length > MAX_BODY {
            return Err(self.fatal(cx, AlertDescription::RecordOverflow, protocol_error("record too long")));
        }
        if ContentType::from(typ) != ContentType::ApplicationData {
            // After the handshake every record is protected, and so says it is application data.
            return Err(self.fatal(
                cx,
                AlertDescription::UnexpectedMessage,
                protocol_error("unprotected record"),
            ));
        }
        if have < HEADER + length {
            return Ok(false);
        }
        let header = [buf[0], buf[1], buf[2], buf[3], buf[4]];
        let body = &mut self.rx.buf[HEADER..HEADER + length];
        let (typ, plain_len) = match self.rx.key.open(self.rx.seq, header, body) {
            Ok(opened) => opened,
            Err(error) => return Err(self.fatal(cx, error.alert, protocol_error(error.what))),
        };
        self.rx.seq += 1;
        let (start, end) = (HEADER, HEADER + plain_len);
        self.rx.record = HEADER + length;
        self.rx.served = start;
        self.rx.plain_end = end;
        if start == end || typ != ContentType::ApplicationData {
            self.count_without_data(cx)?;
        } else {
            self.rx.without_data = 0;
        }
        // Handshake messages may span records, but nothing else may come between their parts
        // (RFC 8446 §5.1).
        match typ {
            ContentType::ApplicationData | ContentType::Alert if !self.rx.handshake.is_empty() => {
                return Err(self.fatal(
                    cx,
                    AlertDescription::UnexpectedMessage,
                    protocol_error("a record between the parts of a handshake message"),
                ));
            }
            ContentType::ApplicationData => {}
            ContentType::Handshake if start == end => {
                return Err(self.fatal(
                    cx,
                    AlertDescription::UnexpectedMessage,
                    protocol_error("an empty handshake record"),
                ));
            }
            ContentType::Handshake => {
                let message = self.rx.buf[start..end].to_vec();
                self.rx.served = end;
                self.handshake_message(cx, &message)?;
            }
            ContentType::Alert => {
                self.rx.served = end;
                let alert = self.rx.buf[start..end].to_vec();
                self.alert(cx, &alert)?;
            }
            _ => {
                return Err(self.fatal(
                    cx,
                    AlertDescription::UnexpectedMessage,
                    protocol_error("unexpected record type after the handshake"),
                ));
            }
        }
        Ok(true)
    }

    /// Post-handshake messages: a server's session tickets (rustls keeps them for resumption),
    /// and key updates.
    fn handshake_message(&mut self, cx: &mut Context<'_>, fragment: &[u8]) -> io::Result<()> {
        self.rx.handshake.extend_from_slice(fragment);
        if self.rx.handshake.len() > MAX_HANDSHAKE_HELD {
            return Err(self.fatal(
                cx,
                AlertDescription::UnexpectedMessage,
                protocol_error("handshake message too long"),
            ));
        }
        loop {
            let held = &self.rx.handshake;
            if held.len() < 4 {
                return Ok(());
            }
            let length = u32::from_be_bytes([0, held[1], held[2], held[3]]) as usize;
            if held.len() < 4 + length {
                return Ok(());
            }
            let typ = HandshakeType::from(held[0]);
            let body = held[4..4 + length].to_vec();
            self.rx.handshake.drain(..4 + length);
            if self.rx.handshake.is_empty() {
                // Gives the capacity back: a ticket's is kept otherwise.
                self.rx.handshake = Vec::new();
            }
            match (typ, &mut self.kernel) {
                (HandshakeType::NewSessionTicket, Kernel::Client(kernel)) => {
                    if let Err(error) = kernel.handle_new_session_ticket(&body) {
                        return Err(self.fatal(cx, AlertDescription::DecodeError, tls_error(error)));
                    }
                }
                (HandshakeType::KeyUpdate, _) => {
                    let requested = match body.as_slice() {
                        [UPDATE_NOT_REQUESTED] => false,
                        [UPDATE_REQUESTED] => true,
                        [_] => {
                            return Err(self.fatal(
                                cx,
                                AlertDescription::IllegalParameter,
                                protocol_error("a key update's request is neither 0 nor 1"),
                            ));
                        }
                        _ => {
                            return Err(self.fatal(
                                cx,
                                AlertDescription::DecodeError,
                                protocol_error("a key update of the wrong length"),
                            ));
                        }
                    };
                    // The next record is under the new keys, so nothing may follow in this one.
                    if !self.rx.handshake.is_empty() {
                        return Err(self.fatal(
                            cx,
                            AlertDescription::UnexpectedMessage,
                            protocol_error("a key update with more in its record"),
                        ));
                    }
                    let (seq, secrets) = match self.kernel.update_rx() {
                        Ok(updated) => updated,
                        Err(error) => {
                            return Err(self.fatal(cx, AlertDescription::InternalError, tls_error(error)));
                        }
                    };
                    self.rx.key = RecordKey::new(secrets)?;
                    self.rx.seq = seq;
                    // Answered before our next records, or at the next flush.
                    self.tx.update_requested |= requested;
                }
                _ => {
                    return Err(self.fatal(
                        cx,
                        AlertDescription::UnexpectedMessage,
                        protocol_error("unexpected handshake message after the handshake"),
                    ));
                }
            }
        }
    }

    fn alert(&mut self, cx: &mut Context<'_>, alert: &[u8]) -> io::Result<()> {
        let [level, description] = alert else {
            return Err(self.fatal(
                cx,
                AlertDescription::DecodeError,
                protocol_error("an alert of the wrong length"),
            ));
        };
        if !matches!(level, 1 | 2) {
            return Err(self.fatal(
                cx,
                AlertDescription::IllegalParameter,
                protocol_error("an alert of no known level"),
            ));
        }
        if *level == 2 && *description != u8::from(AlertDescription::CloseNotify) {
            self.rx.failed = true;
            self.tx.closed = true;
            return Err(protocol_error(&format!(
                "the peer sent the fatal alert {:?}",
                AlertDescription::from(*description)
            )));
        }
        match AlertDescription::from(*description) {
            AlertDescription::CloseNotify => self.rx.closed = true,
            // A warning TLS 1.3 still allows; nothing to do.
            AlertDescription::UserCanceled => {}
            other => {
                self.rx.failed = true;
                self.tx.closed = true;
                return Err(protocol_error(&format!("the peer sent the alert {other:?}")));
            }
        }
        Ok(())
    }

    /// Reads what the socket has into the buffer: 0 at its end. The block is allocated once the
    /// socket is readable; while the socket has nothing, no more is held than the partial record
    /// waiting for its rest (a peer sending a byte per connection pins no block).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.tcp.poll_read_ready(cx).is_pending() {
            self.shrink_to_partial_record();
            return Poll::Pending;
        }
        let buf = &mut self.rx.buf;
        if buf.capacity() - buf.len() < HEADER + MAX_BODY {
            // A fresh block with the partial record at its front, rather than `reserve`, which
            // could double the block when the partial record sits at its end.
            let mut fresh = BytesMut::with_capacity(relay::CHUNK.max(buf.len() + HEADER + MAX_BODY));
            fresh.extend_from_slice(buf);
            *buf = fresh;
        }
        // Through `AsyncRead`, which takes a short read as the socket drained (see
        // `relay::poll_read_chunk`).
        let read = std::pin::pin!(self.tcp.read_buf(&mut self.rx.buf)).poll(cx);
        if read.is_pending() {
            self.shrink_to_partial_record();
        }
        read
    }

    /// Moves a partial record out of a block larger than it needs; frees an empty one.
    fn shrink_to_partial_record(&mut self) {
        let buf = &mut self.rx.buf;
        let needed = match buf.len() {
            0 => 0,
            held if held < HEADER => HEADER + MAX_BODY,
            _ => HEADER + usize::from(u16::from_be_bytes([buf[3], buf[4]])),
        };
        if buf.capacity() > needed.max(buf.len()) {
            let mut smaller = BytesMut::with_capacity(needed.max(buf.len()));
            smaller.extend_from_slice(buf);
            *buf = smaller;
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.rx.failed {
                return Poll::Ready(Err(protocol_error("the connection failed")));
            }
            if this.rx.record > 0 {
                let rx = &mut this.rx;
                if rx.served < rx.plain_end {
                    let n = (rx.plain_end - rx.served).min(out.remaining());
                    out.put_slice(&rx.buf[rx.served..rx.served + n]);
                    rx.served += n;
                    if rx.served == rx.plain_end {
                        rx.buf.advance(rx.record);
                        rx.record = 0;
                    }
                    return Poll::Ready(Ok(()));
                }
                rx.buf.advance(rx.record);
                rx.record = 0;
            }
            if this.rx.buf.is_empty() && this.rx.buf.capacity() > 0 {
                // Gives the block back rather than keep it while idle.
                this.rx.buf = BytesMut::new();
            }
            if this.rx.closed {
                return Poll::Ready(Ok(()));
            }
            match this.open_record(cx) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            if ready!(this.poll_fill(cx))? == 0 {
                let what = if this.rx.buf.is_empty() {
                    "the peer closed the connection without close_notify"
                } else {
                    "the peer closed the connection within a record"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Seals what it is given into the queue, up to [`super::SEND_BUFFER`] queued; the queue is
    /// written when full and on flush (h2 flushes after each batch of frames), so a batch's
    /// records go out in one `writev`.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tx.queued >= super::SEND_BUFFER {
            ready!(this.poll_send(cx))?;
        }
        let room = super::SEND_BUFFER - this.tx.queued;
        let mut slices: [&[u8]; 64] = [&[]; 64];
        let (mut count, mut taken) = (0, 0);
        for buf in bufs.iter().filter(|buf| !buf.is_empty()) {
            if count == slices.len() || taken == room {
                break;
            }
            let take = buf.len().min(room - taken);
            slices[count] = &buf[..take];
            count += 1;
            taken += take;
        }
        if taken == 0 {
            return Poll::Ready(Ok(0));
        }
        this.seal(ContentType::ApplicationData, OutboundChunks::new(&slices[..count]))?;
        if this.tx.queued >= super::SEND_BUFFER {
            // Errors show at the next write or flush; what was sealed is taken.
            let _ = this.poll_send(cx);
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tx.update_requested && !this.tx.closed {
            this.tx.update_requested = false;
            this.update_tx_keys()?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tx.closed {
            let alert = [1, u8::from(AlertDescription::CloseNotify)];
            this.seal(ContentType::Alert, OutboundChunks::Single(&alert))?;
            this.tx.closed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
