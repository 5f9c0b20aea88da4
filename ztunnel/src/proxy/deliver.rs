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
//! Capture must know the delivery's port before its SYN. A delivery binds without a port
//! (`IP_BIND_ADDRESS_NO_PORT`: the connect picks one unique for its destination, so a client's
//! address is not limited to one delivery per port across the pod, and no bind scans past the
//! ports that closed deliveries hold in `TIME_WAIT`) when the connected agent says its datapath
//! records the connection once the port is picked; otherwise it binds its port first, which
//! every datapath records at the connect.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
    /// The connected agent's word that its datapath records deliveries bound without a port.
    port_at_connect: Arc<AtomicBool>,
}

impl Deliverer {
    /// Checks once whether the pod has the return path for deliveries from the client.
    pub fn new(netns: Arc<Netns>, port_at_connect: Arc<AtomicBool>) -> io::Result<Self> {
        let from_client = netns.run(|| std::fs::read_to_string(FWMARK_ACCEPT))??.trim() == "1";
        Ok(Self { netns, from_client, port_at_connect })
    }

    /// Whether deliveries come from the client's address (the original source).
    pub fn original_source(&self) -> bool {
        self.from_client
    }

    /// Connects to `target` in the pod as `client` would: from its address when possible.
    /// `client`'s port, when not 0, is never the one bound: that connection is this pod's own
    /// (plaintext captured to the proxy), and a delivery with the same address and port would
    /// land on it. So such a delivery binds its port first, whatever the datapath does: a port
    /// picked at connect is only unique among the delivery's own kind.
    pub async fn connect(&self, target: SocketAddr, client: SocketAddr) -> io::Result<TcpStream> {
        let client_ip = client.ip().to_canonical();
        if !self.from_client || client_ip == target.ip() || client_ip.is_ipv4() != target.is_ipv4() {
            return super::connect_in(&self.netns, target).await;
        }
        let bind = if client.port() == 0 && self.port_at_connect.load(Ordering::Acquire) {
            Bind::AtConnect
        } else {
            Bind::Now { avoid_port: client.port() }
        };
        let socket = self.netns.run(|| transparent_socket(client_ip, bind))??;
        super::connect_socket(socket, target).await
    }
}

/// When a delivery's port is picked.
#[derive(Debug, Clone, Copy)]
enum Bind {
    /// By its connect (`IP_BIND_ADDRESS_NO_PORT`).
    AtConnect,
    /// By its bind, never `avoid_port`.
    Now { avoid_port: u16 },
}

/// A socket bound to `client`, its port picked as `bind` says.
fn transparent_socket(client: IpAddr, bind: Bind) -> io::Result<socket2::Socket> {
    let local = SocketAddr::new(client, 0).into();
    match bind {
        Bind::AtConnect => {
            let socket = unbound_transparent(client)?;
            bind_address_no_port(&socket)?;
            socket.bind(&local)?;
            Ok(socket)
        }
        Bind::Now { avoid_port } => {
            for _ in 0..BIND_ATTEMPTS {
                let socket = unbound_transparent(client)?;
                socket.bind(&local)?;
                let port = socket.local_addr()?.as_socket().map_or(0, |addr| addr.port());
                if avoid_port == 0 || port != avoid_port {
                    return Ok(socket);
                }
            }
            Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("no port for {client} other than {avoid_port}"),
            ))
        }
    }
}

/// A delivery's socket, not yet bound: marked, and free to bind the client's address.
fn unbound_transparent(client: IpAddr) -> io::Result<socket2::Socket> {
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
