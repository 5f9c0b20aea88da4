//! The stand-in proxy: the smallest transparent proxy that exercises capture the way ztunnel
//! will. It listens on the outbound (15001) and inbound (15006) ports inside its pod's netns
//! (the datapath registers the inbound one as it listens), marks every socket with the proxy mark,
//! learns each accepted connection's original destination through `SO_ORIGINAL_DST`, prints one
//! line per connection, and relays bytes to that destination in plaintext.
use std::{
    io::Write,
    net::{Ipv6Addr, Shutdown, SocketAddr, SocketAddrV6, TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use weft_ebpf_common::{PROXY_MARK, port};

/// Runs until killed.
pub fn run() -> anyhow::Result<()> {
    let outbound = listen(port::OUTBOUND)?;
    let inbound = listen(port::INBOUND)?;
    println!("ready");
    std::io::stdout().flush()?;
    let outbound = std::thread::spawn(move || serve(outbound));
    serve(inbound);
    let _ = outbound.join();
    Ok(())
}

/// A dual-stack listener on `[::]:port`, marked, reusable by a successor.
fn listen(port: u16) -> anyhow::Result<TcpListener> {
    let socket = marked_socket()?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn marked_socket() -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(PROXY_MARK).context("setting SO_MARK (needs CAP_NET_ADMIN)")?;
    Ok(socket)
}

fn serve(listener: TcpListener) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let peer = conn.peer_addr().map(canonical).ok();
            match original_dst(&conn) {
                Ok(orig) => {
                    println!(
                        "accepted listener={local_port} peer={} orig={orig}",
                        peer.map(|p| p.to_string()).unwrap_or_default()
                    );
                    if let Err(error) = relay(conn, orig) {
                        println!("relay-failed orig={orig} error={error:#}");
                    }
                }
                Err(error) => println!("no-orig-dst listener={local_port} error={error}"),
            }
        });
    }
}

/// `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`, answered by the datapath.
fn original_dst(conn: &TcpStream) -> std::io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in6>()).expect("invariant: fits");
    // SAFETY: addr and len are live and sized as passed.
    let rc = unsafe {
        libc::getsockopt(conn.as_raw_fd(), libc::SOL_IPV6, SO_ORIGINAL_DST, (&raw mut addr).cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
    Ok(canonical(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), 0, 0))))
}

/// IPv4-mapped addresses shown as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn relay(client: TcpStream, orig: SocketAddr) -> anyhow::Result<()> {
    let upstream = marked_socket()?;
    upstream.set_only_v6(false)?;
    let target = match orig {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    upstream.connect(&SockAddr::from(target)).with_context(|| format!("connecting to {orig}"))?;
    let upstream: TcpStream = upstream.into();
    let (mut client_read, mut upstream_write) = (client.try_clone()?, upstream.try_clone()?);
    let forward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(Shutdown::Write);
    });
    let (mut upstream_read, mut client_write) = (upstream, client);
    let _ = std::io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = forward.join();
    Ok(())
}
