//! Holds one certificate per identity with pods on this node: created on first use (a fresh
//! P-256 key and CSR per request), reused until half its lifetime has passed, then renewed.
//! When renewal fails the still-valid certificate is kept; an expired one is never handed out.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{
    Identity,
    ca::{CaClient, Error},
};
use crate::tls::WorkloadCert;

/// Default certificate lifetime (DESIGN.md §2).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Certificates by identity.
pub struct Manager {
    ca: Arc<dyn CaClient>,
    ttl: Duration,
    certs: tokio::sync::Mutex<HashMap<Identity, Arc<WorkloadCert>>>,
    /// What is held, readable without waiting for a CA call in progress.
    summary: std::sync::Mutex<Vec<CertSummary>>,
}

/// A held certificate, as the admin endpoint shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    pub identity: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Manager {
    pub fn new(ca: Arc<dyn CaClient>, ttl: Duration) -> Self {
        Self { ca, ttl, certs: tokio::sync::Mutex::new(HashMap::new()), summary: std::sync::Mutex::default() }
    }

    /// The certificates held now.
    pub fn summary(&self) -> Vec<CertSummary> {
        self.summary.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn summarize(&self, certs: &HashMap<Identity, Arc<WorkloadCert>>) {
        let epoch =
            |time: SystemTime| time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let mut summary: Vec<CertSummary> = certs
            .values()
            .map(|cert| CertSummary {
                identity: cert.identity.to_string(),
                serial: cert
                    .chain
                    .first()
                    .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
                    .map(|(_, leaf)| leaf.raw_serial_as_string().replace(':', ""))
                    .unwrap_or_default(),
                not_before: epoch(cert.not_before),
                not_after: epoch(cert.not_after),
            })
            .collect();
        summary.sort_by(|a, b| a.identity.cmp(&b.identity));
        *self.summary.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = summary;
    }

    /// A valid certificate for `identity`, from the cache or the CA.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, Error> {
        // One request at a time: concurrent callers for one identity wait for the first.
        let mut certs = self.certs.lock().await;
        let now = SystemTime::now();
        let cached = certs.get(identity).filter(|cert| cert.not_after > now).cloned();
        if let Some(cert) = &cached
            && now < half_life(cert)
        {
            return Ok(cert.clone());
        }
        match self.request(identity).await {
            Ok(cert) => {
                let cert = Arc::new(cert);
                certs.insert(identity.clone(), cert.clone());
                self.summarize(&certs);
                Ok(cert)
            }
            Err(error) => match cached {
                Some(still_valid) => {
                    tracing::warn!(%identity, %error, "certificate renewal failed; keeping the valid one");
                    Ok(still_valid)
                }
                None => Err(error),
            },
        }
    }

    /// Forgets identities for which `keep` is false (no pod of theirs left on the node).
    pub async fn retain(&self, keep: impl Fn(&Identity) -> bool) {
        let mut certs = self.certs.lock().await;
        certs.retain(|identity, _| keep(identity));
        self.summarize(&certs);
    }

    async fn request(&self, identity: &Identity) -> Result<WorkloadCert, Error> {
        let material = |error: rcgen::Error| Error::Material(error.to_string());
        let key = KeyPair::generate().map_err(material)?;
        let mut params = CertificateParams::default();
        let uri = rcgen::string::Ia5String::try_from(identity.to_string()).map_err(material)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&key).map_err(material)?.pem().map_err(material)?;
        let mut chain = self.ca.sign(identity, &csr, self.ttl).await?;
        if chain.len() < 2 {
            return Err(Error::Material("CA answered without a root".into()));
        }
        let root = chain.pop().expect("invariant: at least two certificates");
        let leaf = chain.first().expect("invariant: at least one certificate left");
        let (not_before, not_after) = validity(leaf)?;
        Ok(WorkloadCert {
            identity: identity.clone(),
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots: vec![root],
            not_before,
            not_after,
        })
    }
}

fn half_life(cert: &WorkloadCert) -> SystemTime {
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap_or_default();
    cert.not_before + lifetime / 2
}

fn validity(der: &rustls::pki_types::CertificateDer<'_>) -> Result<(SystemTime, SystemTime), Error> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|error| Error::Material(format!("issued certificate: {error}")))?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok((at(cert.validity().not_before), at(cert.validity().not_after)))
}
