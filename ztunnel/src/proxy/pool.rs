//! HBONE connections for reuse, keyed by (source identity, destination identity, destination
//! IP): a new proxied connection opens a stream on the pooled connection, and only the first
//! pays for TCP, TLS and HTTP/2 handshakes. A connection the peer closed is replaced.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use super::connect_in;
use crate::{
    hbone::{self, client::Connection},
    identity::Identity,
    inpod::netns::Netns,
    tls::{self, WorkloadCert},
};

type Key = (Identity, Identity, IpAddr);

/// The node's HBONE connection pool.
#[derive(Debug, Default)]
pub struct Pool {
    connections: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
}

impl Pool {
    /// Opens a stream to `target` (a meshed workload proving `expected`) on behalf of the
    /// workload holding `cert`, whose connection came from `source`.
    pub async fn open(
        &self,
        netns: &Netns,
        cert: &WorkloadCert,
        expected: &Identity,
        target: SocketAddr,
        source: SocketAddr,
    ) -> Result<hbone::Stream, hbone::client::Error> {
        let key = (cert.identity.clone(), expected.clone(), target.ip());
        let slot = self.connections.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone();
        // One attempt on the pooled connection, and one on a fresh one if that was dead.
        for fresh in [false, true] {
            let connection = {
                let mut slot = slot.lock().await;
                match slot.as_ref() {
                    Some(connection) if !fresh => connection.clone(),
                    _ => {
                        let connection = connect(netns, cert, expected, target.ip()).await?;
                        *slot = Some(connection.clone());
                        connection
                    }
                }
            };
            match connection.open(target, source).await {
                Err(hbone::client::Error::Http2(error)) if !fresh => {
                    tracing::debug!(%error, "pooled HBONE connection unusable; reconnecting");
                }
                result => return result,
            }
        }
        unreachable!("the second attempt always returns")
    }
}

async fn connect(
    netns: &Netns,
    cert: &WorkloadCert,
    expected: &Identity,
    ip: IpAddr,
) -> Result<Connection, hbone::client::Error> {
    let peer = SocketAddr::new(ip, hbone::PORT);
    let tcp = connect_in(netns, peer).await.map_err(|source| hbone::client::Error::Tls { peer, source })?;
    let config = tls::client_config(cert, expected)
        .map_err(|error| hbone::client::Error::Tls { peer, source: std::io::Error::other(error) })?;
    Connection::handshake(tcp, config).await
}
