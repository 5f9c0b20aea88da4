//! Mutual TLS bound to workload identities: TLS 1.3 only, ALPN `h2`, no SNI, the hybrid
//! post-quantum group X25519MLKEM768 offered first (X25519 and P-256 after it for interop),
//! AES-128-GCM preferred.
//! A server requires a client certificate chaining to the mesh root whose only URI SAN is a
//! workload identity of the mesh's trust domain; a client requires the exact identity it
//! expects of the destination.
use std::{sync::Arc, time::SystemTime};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::danger::ServerCertVerifier,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
};

use crate::identity::{Expected, Identity};

pub mod handshake;
mod record_key;
pub mod records;
mod tickets;
pub(crate) mod verify;

#[cfg(feature = "testing")]
pub mod test_ca;

/// How much application data a TLS connection of HBONE seals before writing it out: as much as
/// a relay reads at a time, so that a chunk goes out in one `writev`.
pub const SEND_BUFFER: usize = crate::relay::CHUNK;

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// A workload's certificate chain and private key, with the mesh roots it trusts.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    /// Leaf first, then intermediates (not the root).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this proxy got it. Renewal is timed from here, not from `not_before`, which a CA
    /// may backdate for clock skew (weft-control does, by 5 minutes).
    pub received: SystemTime,
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            received: self.received,
        }
    }
}

/// The TLS acceptor for an identity's current certificate, rebuilt only when the certificate
/// manager hands out another (a renewal), not per connection.
#[derive(Default)]
pub struct CurrentAcceptor(Option<(Arc<WorkloadCert>, Acceptor)>);

impl std::fmt::Debug for CurrentAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CurrentAcceptor").field(&self.0.as_ref().map(|(cert, _)| &cert.identity)).finish()
    }
}

impl CurrentAcceptor {
    /// The acceptor presenting `cert`.
    pub fn presenting(&mut self, cert: Arc<WorkloadCert>) -> Result<Acceptor, Error> {
        if let Some((cached, acceptor)) = &self.0
            && Arc::ptr_eq(cached, &cert)
        {
            return Ok(acceptor.clone());
        }
        let acceptor = Acceptor::from(server_config(&cert)?);
        self.0 = Some((cert, acceptor.clone()));
        Ok(acceptor)
    }
}

/// The server side of HBONE's TLS: a configuration, shared by the connections it accepts.
#[derive(Clone, Debug)]
pub struct Acceptor(Arc<ServerConfig>);

impl From<Arc<ServerConfig>> for Acceptor {
    fn from(config: Arc<ServerConfig>) -> Self {
        Self(config)
    }
}

impl Acceptor {
    /// The server's handshake on an accepted connection.
    pub async fn accept(&self, tcp: tokio::net::TcpStream) -> std::io::Result<handshake::Accepted> {
        handshake::accept(self.0.clone(), tcp).await
    }
}

/// Errors building TLS configurations or reading peer identities.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("mesh root certificate rejected")]
    Root(#[source] rustls::Error),
    #[error("building the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
}

/// The crypto provider: aws-lc-rs, key exchange groups and cipher suites in preference order.
/// AES-128-GCM first (as BoringSSL orders them): its SHA-256 runs on the CPU's SHA extensions,
/// where the SHA-384 of AES-256-GCM had none and took 6 % of a node proxy's CPU making fresh
/// connections; its records take fewer AES rounds.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
    ];
    Arc::new(provider)
}

/// The server side of a workload's HBONE listener: presents `cert`, requires a client
/// certificate of `trust_domain` chaining to the mesh roots.
pub fn server_config(cert: &WorkloadCert) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let verifier =
        verify::ClientVerifier::new(roots(cert)?, provider.clone(), cert.identity.trust_domain.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(Error::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // The records after the handshake are HBONE's own (`records`).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// The client side of a tunnel from the workload of `cert` to a destination that must prove
/// an identity `expected` admits.
pub fn client_config(cert: &WorkloadCert, expected: &Expected) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> =
        Arc::new(verify::ServerVerifier::new(roots(cert)?, provider.clone(), expected.clone()));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(Error::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::store(Arc::new(tickets::Tickets::default()));
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// A server name for a client that keeps no session tickets (tests): never sent (no SNI), the
/// identity is verified from the certificate's URI SAN, but rustls needs one.
pub fn unused_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The server name a tunnel to the pod at `peer` passes to rustls: never sent (no SNI) and not
/// verified (the identity is), but it keys rustls's resumption cache, so a session ticket goes
/// back only to the pod that issued it.
pub fn resumption_name(peer: std::net::IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(peer.to_canonical().into())
}

/// The client configurations of a proxy's tunnels, one per (source certificate, expected
/// destination identity), built once for each certificate the proxy is handed rather than per
/// handshake: building one parses the roots and copies the key, and only a kept configuration
/// keeps the session tickets that let the next connection to the same pod resume without
/// certificates or signatures (TLS 1.3 PSK with a fresh (EC)DHE exchange). A renewed
/// certificate or trust bundle gets a new configuration, and with it an empty ticket cache.
#[derive(Default)]
pub struct ClientConfigs(std::sync::Mutex<ClientConfigMap>);

type ClientConfigMap = std::collections::HashMap<(Identity, Expected), KeptConfig>;

/// A configuration, the certificate it was built for, and when it was last asked for.
struct KeptConfig {
    built_for: Arc<WorkloadCert>,
    config: Arc<ClientConfig>,
    used: std::time::Instant,
}

impl std::fmt::Debug for ClientConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientConfigs").field(&self.lock().len()).finish()
    }
}

impl ClientConfigs {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClientConfigMap> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration for tunnels from the holder of `cert` to a destination `expected`
    /// admits: the kept one while `cert` is the one it was built for.
    pub fn get(&self, cert: &Arc<WorkloadCert>, expected: &Expected) -> Result<Arc<ClientConfig>, Error> {
        let key = (cert.identity.clone(), expected.clone());
        let now = std::time::Instant::now();
        if let Some(kept) = self.lock().get_mut(&key)
            && Arc::ptr_eq(&kept.built_for, cert)
        {
            kept.used = now;
            return Ok(kept.config.clone());
        }
        // Built without the lock: concurrent first handshakes may each build one. A caller still
        // holding the certificate a renewal replaced gets its own, but keeps the newer one kept.
        let config = client_config(cert, expected)?;
        let mut kept = self.lock();
        if kept.get(&key).is_none_or(|newest| newest.built_for.received <= cert.received) {
            kept.insert(key, KeptConfig { built_for: cert.clone(), config: config.clone(), used: now });
        }
        Ok(config)
    }

    /// Drops the configurations (their certificates and tickets) not asked for in `unused`.
    pub fn release_unused(&self, unused: std::time::Duration) {
        self.lock().retain(|_, kept| kept.used.elapsed() < unused);
    }
}

/// Whether the leaf a resumed session restored is still valid at `now`: its chain was verified
/// when the session began, but every resumption brings new tickets, so a peer resuming again
/// and again would otherwise outlive its certificate.
pub fn still_valid(certs: Option<&[CertificateDer<'_>]>, now: SystemTime) -> Result<(), Error> {
    let leaf = certs.and_then(|certs| certs.first()).ok_or(Error::NoPeerCertificate)?;
    verify::valid_at(leaf, now).map_err(Error::PeerCertificate)
}

/// The workload identity in a peer's leaf certificate: its only URI SAN.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Result<Identity, Error> {
    let leaf = certs.and_then(|certs| certs.first()).ok_or(Error::NoPeerCertificate)?;
    verify::identity_of(leaf).map_err(Error::PeerCertificate)
}

fn roots(cert: &WorkloadCert) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for root in &cert.roots {
        store.add(root.clone()).map_err(Error::Root)?;
    }
    Ok(Arc::new(store))
}
