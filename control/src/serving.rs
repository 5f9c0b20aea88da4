//! The control plane's own TLS listener (xDS and the CA on :15012): a serving certificate that
//! follows the CA — re-issued whenever the intermediate or the roots change, so proxies that
//! trust only the current bundle keep reaching it — and TLS handshakes done off the accept loop,
//! each bounded in time, so a client that never finishes one holds up nobody else. Its listen
//! backlog holds a cluster's proxies coming back at once ([`listen`]).
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::ca::Authority;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const BACKLOG: usize = 64;
/// Connections the kernel queues until they are accepted (capped by `net.core.somaxconn`,
/// 4096 by default). After a restart every node proxy reconnects within its first backoff: with
/// the default of 1024, a thousand nodes' SYNs at once while the control plane is busy
/// overflowed it, and the kernel's SYN cookies then left some proxies hanging for minutes.
const LISTEN_BACKLOG: u32 = 4096;

/// The listener for xDS and the CA on `addr`, with [`LISTEN_BACKLOG`].
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind`: a restarted control plane binds while the old one's connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The listener passed by a parent (`LISTEN_FDS`), with [`LISTEN_BACKLOG`]: whoever bound it
/// listened with a backlog of its own (std's is 128); listening again sets ours.
pub fn adopt(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a socket this process owns; on one already listening it only sets
    // the backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG as libc::c_int) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// The serving certificate in use, replaced by [`Self::renew`].
#[derive(Debug)]
pub struct ServingCert {
    names: Vec<String>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    /// A certificate for `names` (IP addresses or DNS names) from `authority`.
    pub fn new(authority: &Authority, names: Vec<String>) -> anyhow::Result<Self> {
        let current = RwLock::new(certified(authority, &names)?);
        Ok(Self { names, current })
    }

    /// Issues a new certificate from the CA as it is now; connections from now on get it.
    pub fn renew(&self, authority: &Authority) -> anyhow::Result<()> {
        let fresh = certified(authority, &self.names)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

fn certified(authority: &Authority, names: &[String]) -> anyhow::Result<Arc<CertifiedKey>> {
    let (chain, key) = authority.serving_cert(names)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider)?))
}

/// Accepts on `listener` and yields each connection once its TLS handshake (ALPN h2) is done.
pub fn incoming(
    listener: TcpListener,
    cert: Arc<ServingCert>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("invariant: the default provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (ready, incoming) = tokio::sync::mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // The server stopped taking connections.
                () = ready.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            };
            let (acceptor, ready) = (acceptor.clone(), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener's backlog as `ss` shows it (its Send-Q).
    fn backlog(port: u16) -> String {
        let filter = format!("sport = :{port}");
        let out = std::process::Command::new("ss").args(["-ltnH", &filter]).output().unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        out.split_whitespace().nth(2).unwrap_or_else(|| panic!("no listener in {out:?}")).to_owned()
    }

    #[tokio::test]
    async fn a_passed_listener_is_given_the_backlog() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(backlog(port), "128");
        let _adopted = adopt(listener).unwrap();
        // The kernel caps it at net.core.somaxconn.
        let cap: u32 =
            std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        assert_eq!(backlog(port), LISTEN_BACKLOG.min(cap).to_string());
    }
}
