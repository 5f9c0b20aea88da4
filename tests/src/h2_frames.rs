//! HTTP/2 frames written by hand (RFC 9113 §4, HPACK literals of RFC 7541), for the abuse no
//! HTTP/2 library will produce: rapid resets, header blocks that never end, oversized headers.
//! Shared by the node proxy's HBONE tests (`proxy/tests/hbone.rs` includes this file) and the
//! test pods' `h2-abuse` client.
#![allow(dead_code, reason = "each includer uses its own share of the frames")]

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// RST_STREAM's CANCEL error code.
pub const CANCEL: u32 = 0x8;

/// One frame: its 9-byte head and `payload`.
///
/// # Panics
/// If `payload` is 16 MiB or more (no frame can carry it).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).ok().filter(|len| *len < 1 << 24).expect("a frame's payload");
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn integer(value: usize, n: u32, first: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2).
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(0x00);
    integer(name.len(), 7, 0, &mut out);
    out.extend(name.as_bytes());
    integer(value.len(), 7, 0, &mut out);
    out.extend(value.as_bytes());
    out
}

/// The pseudo-headers of a CONNECT to `authority` (HBONE's request).
pub fn connect(authority: &str) -> Vec<u8> {
    [literal(":method", "CONNECT"), literal(":authority", authority)].concat()
}

/// The pseudo-headers of a plain `http` GET of `path` at `authority`.
pub fn get(authority: &str, path: &str) -> Vec<u8> {
    [
        literal(":method", "GET"),
        literal(":scheme", "http"),
        literal(":authority", authority),
        literal(":path", path),
    ]
    .concat()
}

/// RST_STREAM with CANCEL: the client gave up on `stream`.
pub fn cancel(stream: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
}
