//! `https-get`: a client as an in-cluster app would be one, e.g. talking to the API server
//! through `kubernetes.default`: TLS verified against a CA file for a server name, one
//! HTTP/1.1 GET, the body printed.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

const TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `path` from `to`, verifying it as `server_name` against the certificates in `ca`;
/// prints the body and fails unless the status is 200.
pub fn get(to: SocketAddr, server_name: &str, ca: &Path, path: &str) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(certificate?)?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned())?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let tcp = TcpStream::connect_timeout(&to, TIMEOUT).with_context(|| format!("connecting to {to}"))?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    write!(tls, "GET {path} HTTP/1.1\r\nhost: {server_name}\r\nconnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        // A server may close without TLS's close_notify once it has answered.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        result => {
            result.with_context(|| format!("reading the response from {to}"))?;
        }
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP response head")?;
    print!("{body}");
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    Ok(())
}
