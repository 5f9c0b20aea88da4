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
use std::{
    io,
    net::{IpAddr, SocketAddr},
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
    /// `client`'s port, when not 0, is never the one bound: that connection is this pod's own
    /// (plaintext captured to the proxy), and a delivery with the same address and port would
    /// be taken for it.
    pub async fn connect(&self, target: SocketAddr, client: SocketAddr) -> io::Result<TcpStream> {
        let client_ip = client.ip().to_canonical();
        if !self.from_client || client_ip == target.ip() || client_ip.is_ipv4() != target.is_ipv4() {
            return super::connect_in(&self.netns, target).await;
        }
        let socket = self.netns.run(|| transparent_socket(client_ip, client.port()))??;
        super::connect_socket(socket, target).await
    }
}

/// A socket bound to `client` (a port the kernel picks, never `avoid_port`).
fn transparent_socket(client: IpAddr, avoid_port: u16) -> io::Result<socket2::Socket> {
    for _ in 0..BIND_ATTEMPTS {
        let socket =
            super::proxy_socket(socket2::Domain::for_address(SocketAddr::new(client, 0)), DELIVERY_MARK)?;
        if client.is_ipv4() {
            socket.set_ip_transparent_v4(true)?;
        } else {
            socket.set_ip_transparent_v6(true)?;
        }
        // Bound now, not at connect: capture reads the port when the connect starts.
        socket.bind(&SocketAddr::new(client, 0).into())?;
        let port = socket.local_addr()?.as_socket().map_or(0, |addr| addr.port());
        if avoid_port == 0 || port != avoid_port {
            return Ok(socket);
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, format!("no port for {client} other than {avoid_port}")))
}
