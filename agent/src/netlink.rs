//! The little of netlink the agent speaks: one request at a time on a socket of the calling
//! thread's network namespace, and the first message of the answer, or every message of a
//! dump. Used for routing rules ([`crate::return_path`]), to find the peer of the handoff
//! socket ([`crate::proxy_cgroup`]) and to list a pod's TCP sockets ([`crate::sockets`]).
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `nlmsghdr` length.
const HEADER: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
/// `sock_diag.h`'s request for a family's sockets (`NETLINK_SOCK_DIAG`).
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_ROOT | NLM_F_MATCH`: every object, in as many messages as it takes.
pub const NLM_F_DUMP: u16 = 0x300;

/// A netlink socket.
#[derive(Debug)]
pub struct Netlink(OwnedFd);

/// One message of an answer: its type and what follows the header.
#[derive(Debug)]
pub struct Message {
    pub kind: u16,
    pub payload: Vec<u8>,
}

impl Message {
    /// For an `NLMSG_ERROR` message, its errno (0 for an acknowledgement); for a dump's
    /// `NLMSG_DONE`, the errno of a dump that failed part-way (0 for one that did not). Both
    /// carry it negated in their payload's first four bytes.
    pub fn errno(&self) -> Option<i32> {
        let code = self.payload.get(..4)?;
        matches!(self.kind, NLMSG_ERROR | NLMSG_DONE)
            .then(|| -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]))
    }
}

impl Netlink {
    /// A socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`).
    pub fn open(protocol: i32) -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one request (`NLM_F_REQUEST` added to `flags`) and returns the answer's first
    /// message.
    pub fn request(&self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Message> {
        self.send(kind, NLM_F_REQUEST | flags, body)?;
        let mut reply = vec![0_u8; 8192];
        // SAFETY: receives into a live buffer of the given length.
        let read = unsafe { libc::recv(self.0.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
        parse(&reply[..read])
            .map(|(message, _)| message)
            .ok_or_else(|| io::Error::other(format!("netlink answered {read} bytes that are no message")))
    }

    fn send(&self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        let length = u32::try_from(HEADER + body.len()).map_err(io::Error::other)?;
        let mut message = Vec::with_capacity(HEADER + body.len());
        message.extend_from_slice(&length.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&[0; 8]); // sequence and port id: one request at a time
        message.extend_from_slice(body);
        // SAFETY: sends from a live buffer of the given length.
        if unsafe { libc::send(self.0.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one dump request (`NLM_F_REQUEST | NLM_F_DUMP`) and returns every message of
    /// the answer, up to `NLMSG_DONE`; an `NLMSG_ERROR` among them is the answer's error.
    pub fn dump(&self, kind: u16, body: &[u8]) -> io::Result<Vec<Message>> {
        self.send(kind, NLM_F_REQUEST | NLM_F_DUMP, body)?;
        let mut messages = Vec::new();
        let mut reply = vec![0_u8; 32 * 1024];
        loop {
            // SAFETY: receives into a live buffer of the given length.
            let read = unsafe { libc::recv(self.0.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
            let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
            let mut rest = &reply[..read];
            while !rest.is_empty() {
                let (message, length) = parse(rest).ok_or_else(|| {
                    io::Error::other(format!("netlink answered {} bytes that are no message", rest.len()))
                })?;
                match message.kind {
                    NLMSG_DONE => match message.errno() {
                        Some(errno) if errno > 0 => return Err(io::Error::from_raw_os_error(errno)),
                        _ => return Ok(messages),
                    },
                    NLMSG_ERROR => {
                        let errno = message.errno().filter(|errno| *errno != 0).unwrap_or(libc::EIO);
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    NLMSG_NOOP | NLMSG_OVERRUN => {}
                    _ => messages.push(message),
                }
                rest = &rest[length.next_multiple_of(4).min(rest.len())..];
            }
        }
    }
}

/// The message at the start of `bytes`, and its length.
fn parse(bytes: &[u8]) -> Option<(Message, usize)> {
    let length = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if !(HEADER..=bytes.len()).contains(&length) {
        return None;
    }
    let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
    Some((Message { kind, payload: bytes[HEADER..length].to_vec() }, length))
}

/// Appends a `u32` attribute (`rtattr`; the body is 4-byte aligned already).
pub fn put_u32(body: &mut Vec<u8>, kind: u16, value: u32) {
    body.extend_from_slice(&8_u16.to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(&value.to_ne_bytes());
}

/// The `u32` attribute of `kind` among `attributes` (a run of `rtattr`s), if present.
pub fn find_u32(mut attributes: &[u8], kind: u16) -> Option<u32> {
    while attributes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let this = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if length < 4 || length > attributes.len() {
            return None;
        }
        if this == kind && length >= 8 {
            return Some(u32::from_ne_bytes([attributes[4], attributes[5], attributes[6], attributes[7]]));
        }
        attributes = &attributes[length.next_multiple_of(4).min(attributes.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_attribute_after_others_and_stops_at_malformed_ones() {
        let mut attributes = Vec::new();
        put_u32(&mut attributes, 1, 7);
        put_u32(&mut attributes, 2, 42);
        assert_eq!(find_u32(&attributes, 2), Some(42));
        assert_eq!(find_u32(&attributes, 3), None);
        attributes[0] = 200; // longer than what follows
        assert_eq!(find_u32(&attributes, 2), None);
    }
}
