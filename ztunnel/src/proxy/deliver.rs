//! Connecting to the app in a pod, for both inbound paths: from the client's own address, so
//! the app sees who called it (Istio ambient does the same), when the pod has the return path
//! for it; else from the pod's own address.
//!
//! The socket is `IP_TRANSPARENT`, bound to the client's address, and marked
//! [`DELIVERY_MARK`]: capture records it so the pod's inbound capture lets it through, the app's
//! accepted socket inherits the mark (`tcp_fwmark_accept`), and the pod's routing rule for that
//! mark keeps the app's replies on loopback, back to this socket, instead of sending them out
//! of the pod to the client's address. The agent installs that rule and switches
//! `tcp_fwmark_accept` on last, so the switch is what tells the proxy the path is complete.
//!
//! An HBONE delivery (the client's port is not known here) is bound to `lo` and takes its port
//! at connect (`IP_BIND_ADDRESS_NO_PORT`). That rule's table routes it, so its SYN arrives on
//! loopback, which inbound capture lets through without a record. Its port is then unique for
//! its destination only, so one client address is not held to one delivery per port across the
//! pod. And a port that a closed delivery holds in `TIME_WAIT` is taken again after
//! `tcp_tw_reuse_delay` (1 s), which the kernel's default `tcp_tw_reuse=2` does for loopback's
//! only: held for the 60 s instead, a client address could open at most the pod's ephemeral
//! range (28 232 ports) per minute to one pod.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
};

use tokio::net::TcpStream;
use weft_ebpf_common::DELIVERY_MARK;

use crate::inpod::netns::Netns;

/// Where the agent's last step of the return path shows, read inside the pod's namespace.
const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";

/// How often a bound port is drawn again when it equals the one to avoid.
const BIND_ATTEMPTS: usize = 4;

/// Connects to the app in one pod.
#[derive(Debug)]
pub struct Deliverer {
    netns: Arc<Netns>,
    from_client: bool,
}

impl Deliverer {
    /// Checks once whether the pod has the return path for deliveries from the client.
    pub fn new(netns: Arc<Netns>) -> io::Result<Self> {
        let from_client = netns.run(|| std::fs::read_to_string(FWMARK_ACCEPT))??.trim() == "1";
        Ok(Self { netns, from_client })
    }

    /// Whether deliveries come from the client's address (the original source).
    pub fn original_source(&self) -> bool {
        self.from_client
    }

    /// Connects to `target` in the pod as `client` would: from its address when possible.
    /// `client`'s port, when not 0, is that of plaintext captured in this pod, whose connection
    /// the proxy holds: a delivery on that address and port would land on it. So such a
    /// delivery binds its port first, never that one (a port picked at connect is unique only
    /// among connections from the same end), and capture records it at the connect.
    pub async fn connect(&self, target: SocketAddr, client: SocketAddr) -> io::Result<TcpStream> {
        let client_ip = client.ip().to_canonical();
        if !self.from_client || client_ip == target.ip() || client_ip.is_ipv4() != target.is_ipv4() {
            return super::connect_in(&self.netns, target).await;
        }
        let socket = self.netns.run(|| match client.port() {
            0 => over_loopback(client_ip),
            captured => bound_first(client_ip, captured),
        })??;
        super::connect_socket(socket, target).await
    }
}

/// A socket on `client`'s address bound to `lo`, its port picked by its connect.
fn over_loopback(client: IpAddr) -> io::Result<socket2::Socket> {
    let socket = transparent_socket(client)?;
    socket.bind_device(Some(b"lo"))?;
    bind_address_no_port(&socket)?;
    socket.bind(&SocketAddr::new(client, 0).into())?;
    Ok(socket)
}

/// A socket bound to `client` (a port the kernel picks, never `avoid_port`).
fn bound_first(client: IpAddr, avoid_port: u16) -> io::Result<socket2::Socket> {
    for _ in 0..BIND_ATTEMPTS {
        let socket = transparent_socket(client)?;
        socket.bind(&SocketAddr::new(client, 0).into())?;
        let port = socket.local_addr()?.as_socket().map_or(0, |addr| addr.port());
        if port != avoid_port {
            return Ok(socket);
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, format!("no port for {client} other than {avoid_port}")))
}

/// A delivery's socket, not yet bound: marked, and free to bind the client's address.
fn transparent_socket(client: IpAddr) -> io::Result<socket2::Socket> {
    let socket =
        super::proxy_socket(socket2::Domain::for_address(SocketAddr::new(client, 0)), DELIVERY_MARK)?;
    if client.is_ipv4() {
        socket.set_ip_transparent_v4(true)?;
    } else {
        socket.set_ip_transparent_v6(true)?;
    }
    Ok(socket)
}

/// `IP_BIND_ADDRESS_NO_PORT` (either family): a bind to an address takes no port; the connect
/// picks it.
fn bind_address_no_port(socket: &socket2::Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("invariant: fits");
    // SAFETY: `on` is a live c_int and `len` its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
