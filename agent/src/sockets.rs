//! The established TCP sockets of the calling thread's network namespace, as the kernel's
//! socket diagnostics list them (`NETLINK_SOCK_DIAG`, `inet_diag`), each with its ends and its
//! mark: `/proc/net/tcp` shows no marks, and the mark is what tells the node proxy's sockets
//! (and an app's end of a connection the proxy delivered) from the pod's own.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::netlink::{Netlink, SOCK_DIAG_BY_FAMILY, find_u32};

/// An established TCP socket: its ends and its `SO_MARK` (0 when it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub mark: u32,
}

/// `TCP_ESTABLISHED`, as a state bit of `idiag_states`.
const ESTABLISHED: u32 = 1 << 1;
/// `inet_diag_msg` length, before its attributes: family, state, timer, retransmits, the
/// socket's id (48 bytes), then expires, receive and send queues, uid and inode.
const INET_DIAG_MSG: usize = 72;
/// The attribute with the socket's mark; the kernel adds it for an asker with
/// `CAP_NET_ADMIN` (the agent).
const INET_DIAG_MARK: u16 = 15;

/// Every established TCP socket, IPv4 and IPv6, of the calling thread's network namespace.
pub fn established() -> io::Result<Vec<Socket>> {
    let netlink = Netlink::open(libc::NETLINK_SOCK_DIAG)?;
    let mut sockets = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        // inet_diag_req_v2: family, protocol, extensions, pad, states, then a zeroed id.
        let mut request = vec![family as u8, libc::IPPROTO_TCP as u8, 0, 0];
        request.extend_from_slice(&ESTABLISHED.to_ne_bytes());
        request.extend_from_slice(&[0; 48]);
        for message in netlink.dump(SOCK_DIAG_BY_FAMILY, &request)? {
            sockets.push(socket(&message.payload)?);
        }
    }
    Ok(sockets)
}

/// The socket an `inet_diag_msg` describes. One too short or of another family is an error,
/// and so is one without its mark: every socket of the proxy would read as the pod's own.
fn socket(message: &[u8]) -> io::Result<Socket> {
    let malformed = || {
        io::Error::other(format!(
            "socket diagnostics answered a message of {} bytes that is no TCP socket",
            message.len()
        ))
    };
    if message.len() < INET_DIAG_MSG {
        return Err(malformed());
    }
    let family = i32::from(message[0]);
    let id = &message[4..52];
    let port = |at: usize| u16::from_be_bytes([id[at], id[at + 1]]);
    let address = |at: usize| -> Option<IpAddr> {
        let bytes = &id[at..at + 16];
        match family {
            libc::AF_INET => Some(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?).into()),
            libc::AF_INET6 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into()),
            _ => None,
        }
    };
    let (Some(local), Some(remote)) = (address(4), address(20)) else { return Err(malformed()) };
    let mark = find_u32(&message[INET_DIAG_MSG..], INET_DIAG_MARK).ok_or_else(|| {
        io::Error::other(
            "socket diagnostics report no marks (the agent needs CAP_NET_ADMIN in the pod's network namespace)",
        )
    })?;
    Ok(Socket { local: SocketAddr::new(local, port(0)), remote: SocketAddr::new(remote, port(2)), mark })
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn lists_both_ends_of_a_connection_with_their_marks() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_mark(0x539).unwrap();
        socket.connect(&listener.local_addr().unwrap().into()).unwrap();
        let client = TcpStream::from(socket);
        let (_server, _) = listener.accept().unwrap();
        let (near, far) = (client.local_addr().unwrap(), client.peer_addr().unwrap());

        let sockets = established().unwrap();
        let marked = sockets.iter().find(|socket| socket.local == near && socket.remote == far);
        assert_eq!(marked, Some(&Socket { local: near, remote: far, mark: 0x539 }), "{sockets:?}");
        // The accepted end has the SYN's mark where the namespace copies it.
        let copied = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept").unwrap().trim() == "1";
        let mark = if copied { 0x539 } else { 0 };
        let accepted = sockets.iter().find(|socket| socket.local == far && socket.remote == near);
        assert_eq!(accepted, Some(&Socket { local: far, remote: near, mark }), "{sockets:?}");
    }

    #[test]
    fn reads_an_ipv6_message_and_tells_a_missing_mark_and_a_short_message() {
        let mut message = vec![libc::AF_INET6 as u8, 1, 0, 0];
        message.extend_from_slice(&8080_u16.to_be_bytes());
        message.extend_from_slice(&40000_u16.to_be_bytes());
        message.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        message.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        message.extend_from_slice(&[0; 12 + 20]);
        crate::netlink::put_u32(&mut message, INET_DIAG_MARK, 0x1539);
        let described = Socket {
            local: "[fd00::1]:8080".parse().unwrap(),
            remote: "[fd00::2]:40000".parse().unwrap(),
            mark: 0x1539,
        };
        assert_eq!(socket(&message).unwrap(), described);
        // Without the attribute (an asker without CAP_NET_ADMIN): an error, not mark 0.
        let unmarked = socket(&message[..INET_DIAG_MSG]).unwrap_err().to_string();
        assert!(unmarked.contains("no marks"), "{unmarked}");
        let short = socket(&message[..INET_DIAG_MSG - 1]).unwrap_err().to_string();
        assert!(short.contains("no TCP socket"), "{short}");
    }
}
