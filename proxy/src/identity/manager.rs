//! Holds one certificate per identity with pods on this node: created on first use (a fresh
//! P-256 key and CSR per request), renewed in the background once half its lifetime has passed.
//! Callers never wait for a renewal while the held certificate is valid; only an identity
//! without a valid certificate waits, for its own request (identities do not wait for each
//! other). A failed renewal keeps the valid certificate and is retried with capped exponential
//! backoff; an expired certificate is never handed out (fail closed).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
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
/// Renewal retries: the first wait, doubled per failure up to the cap.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// How often the background refresher looks for certificates past half-life.
pub const REFRESH_TICK: Duration = Duration::from_secs(1);

pub use weft_api::clock::{Clock, SystemClock};

/// One identity's certificate and the state of its renewal.
#[derive(Default)]
struct Slot {
    cert: RwLock<Option<Arc<WorkloadCert>>>,
    /// Held while a CA request for this identity is in flight (one at a time).
    request: tokio::sync::Mutex<Backoff>,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    /// No background retry before this.
    retry_at: Option<SystemTime>,
    /// Why the last request failed.
    last_error: Option<String>,
}

impl Slot {
    fn cert(&self) -> Option<Arc<WorkloadCert>> {
        self.cert.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Certificates by identity.
pub struct Manager {
    ca: Arc<dyn CaClient>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<Identity, Arc<Slot>>>,
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
        Self::with_clock(ca, ttl, Arc::new(SystemClock))
    }

    pub fn with_clock(ca: Arc<dyn CaClient>, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self { ca, ttl, clock, slots: Mutex::default() }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slot(&self, identity: &Identity) -> Arc<Slot> {
        self.slots().entry(identity.clone()).or_default().clone()
    }

    /// A valid certificate for `identity`: the held one (renewal, if due, happens in the
    /// background), or a new one from the CA now.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, Error> {
        let slot = self.slot(identity);
        if let Some(cert) = slot.cert().filter(|cert| cert.not_after > self.clock.now()) {
            return Ok(cert);
        }
        // No valid certificate: ask now, whatever the backoff says (a connection waits).
        let (mut backoff, waited) = match slot.request.try_lock() {
            Ok(backoff) => (backoff, false),
            Err(_) => (slot.request.lock().await, true),
        };
        if let Some(cert) = slot.cert().filter(|cert| cert.not_after > self.clock.now()) {
            return Ok(cert); // The request this caller waited behind got one.
        }
        // The request this caller waited behind failed: share its answer rather than asking
        // the CA once more per waiting connection.
        if waited && let Some(error) = &backoff.last_error {
            return Err(Error::Unavailable(error.clone()));
        }
        self.renew(identity, &slot, &mut backoff).await
    }

    /// Renews every certificate past half its lifetime whose backoff allows; the background
    /// refresher calls it every [`REFRESH_TICK`].
    pub async fn refresh_due(&self) {
        let slots: Vec<(Identity, Arc<Slot>)> =
            self.slots().iter().map(|(identity, slot)| (identity.clone(), slot.clone())).collect();
        let now = self.clock.now();
        for (identity, slot) in slots {
            let Some(cert) = slot.cert() else { continue };
            if now < half_life(&cert) {
                continue;
            }
            // Someone is already asking for this one.
            let Ok(mut backoff) = slot.request.try_lock() else { continue };
            if backoff.retry_at.is_some_and(|at| now < at) {
                continue;
            }
            if let Err(error) = self.renew(&identity, &slot, &mut backoff).await {
                let valid = cert.not_after > self.clock.now();
                tracing::warn!(%identity, %error, valid, retry_in = ?backoff.retry_at.and_then(|at| at.duration_since(now).ok()),
                    "certificate renewal failed; keeping the current one while it is valid");
            }
        }
    }

    /// Runs [`Manager::refresh_due`] forever.
    pub async fn refresh(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REFRESH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh_due().await;
        }
    }

    async fn renew(
        &self,
        identity: &Identity,
        slot: &Slot,
        backoff: &mut Backoff,
    ) -> Result<Arc<WorkloadCert>, Error> {
        match self.request(identity).await {
            Ok(cert) => {
                let cert = Arc::new(cert);
                *slot.cert.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cert.clone());
                *backoff = Backoff::default();
                Ok(cert)
            }
            Err(error) => {
                let wait = BACKOFF.0.saturating_mul(1 << backoff.failures.min(16)).min(BACKOFF.1);
                backoff.failures = backoff.failures.saturating_add(1);
                backoff.retry_at = Some(self.clock.now() + wait);
                backoff.last_error = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Forgets identities for which `keep` is false (no pod of theirs left on the node).
    pub async fn retain(&self, keep: impl Fn(&Identity) -> bool) {
        self.slots().retain(|identity, _| keep(identity));
    }

    /// The certificates held now.
    pub fn summary(&self) -> Vec<CertSummary> {
        let epoch =
            |time: SystemTime| time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let mut summary: Vec<CertSummary> = self
            .slots()
            .values()
            .filter_map(|slot| slot.cert())
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
        summary
    }

    async fn request(&self, identity: &Identity) -> Result<WorkloadCert, Error> {
        let material = |error: rcgen::Error| Error::Material(error.to_string());
        let key = KeyPair::generate().map_err(material)?;
        let mut params = CertificateParams::default();
        let uri = rcgen::string::Ia5String::try_from(identity.to_string()).map_err(material)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&key).map_err(material)?.pem().map_err(material)?;
        let issued = self.ca.sign(identity, &csr, self.ttl).await?;
        // Never present, or trust by, what the CA got wrong: another identity, a broken chain.
        crate::tls::verify::issued(&issued.chain, &issued.roots, identity, self.clock.now()).map_err(
            |error| Error::Material(format!("CA issued a bad certificate for {identity}: {error}")),
        )?;
        let (not_before, not_after) = validity(&issued.chain[0])?;
        Ok(WorkloadCert {
            identity: identity.clone(),
            chain: issued.chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots: issued.roots,
            not_before,
            not_after,
            received: self.clock.now(),
        })
    }
}

/// Halfway through the certificate's life as this proxy holds it: from its `not_before` or,
/// if later, its receipt (a backdated `not_before` must not make a short-lived certificate look
/// due at once, and then renewed on every tick).
fn half_life(cert: &WorkloadCert) -> SystemTime {
    let from = cert.not_before.max(cert.received);
    from + cert.not_after.duration_since(from).unwrap_or_default() / 2
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use rcgen::{BasicConstraints, CertificateSigningRequestParams, IsCa, Issuer};
    use rustls::pki_types::CertificateDer;

    use super::*;
    use crate::identity::ca::BoxFuture;

    /// A clock the test moves.
    #[derive(Debug)]
    struct TestClock(AtomicU64);

    impl TestClock {
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
    }

    /// A CA that signs on the test clock and can be taken down.
    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        root: CertificateDer<'static>,
        clock: Arc<TestClock>,
        down: AtomicBool,
        attempts: AtomicU64,
        signed: AtomicU64,
        /// How far back `notBefore` is set, in seconds (weft-control: 300).
        backdate: AtomicU64,
    }

    impl TestCa {
        fn new(clock: Arc<TestClock>) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let root = params.self_signed(&key).unwrap();
            Self {
                root: root.der().clone(),
                issuer: Issuer::new(params, key),
                clock,
                down: AtomicBool::new(false),
                attempts: AtomicU64::new(0),
                signed: AtomicU64::new(0),
                backdate: AtomicU64::new(0),
            }
        }
    }

    impl CaClient for TestCa {
        fn sign<'a>(
            &'a self,
            _identity: &'a Identity,
            csr_pem: &'a str,
            validity: Duration,
        ) -> BoxFuture<'a, Result<super::super::ca::Issued, Error>> {
            Box::pin(async move {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    // A CA that is down answers slowly (a timeout), so callers pile up.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(Error::Unavailable("the test CA is down".into()));
                }
                let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
                let now = self.clock.now();
                csr.params.not_before =
                    (now - Duration::from_secs(self.backdate.load(Ordering::SeqCst))).into();
                csr.params.not_after = (now + validity).into();
                self.signed.fetch_add(1, Ordering::SeqCst);
                let leaf = csr.signed_by(&self.issuer).unwrap().der().clone();
                Ok(super::super::ca::Issued { chain: vec![leaf], roots: vec![self.root.clone()] })
            })
        }
    }

    #[tokio::test]
    async fn a_ca_outage_keeps_the_valid_certificate_then_fails_closed_then_recovers() {
        let ttl = Duration::from_secs(3600);
        let clock = Arc::new(TestClock(AtomicU64::new(1_000_000_000)));
        let ca = Arc::new(TestCa::new(clock.clone()));
        let manager = Manager::with_clock(ca.clone(), ttl, clock.clone());
        let identity = Identity::new("cluster.local", "shop", "web");
        let first = manager.fetch(&identity).await.unwrap();

        // Before half-life nothing is renewed.
        clock.advance(ttl / 4);
        manager.refresh_due().await;
        assert_eq!(ca.signed.load(Ordering::SeqCst), 1);

        // Past half-life with the CA down: renewal fails, the valid certificate is still used,
        // and the retry waits for its backoff.
        ca.down.store(true, Ordering::SeqCst);
        clock.advance(ttl / 2);
        manager.refresh_due().await;
        assert_eq!(ca.attempts.load(Ordering::SeqCst), 2);
        assert!(Arc::ptr_eq(&manager.fetch(&identity).await.unwrap(), &first));
        manager.refresh_due().await;
        assert_eq!(ca.attempts.load(Ordering::SeqCst), 2, "retried within the backoff");
        clock.advance(BACKOFF.0);
        manager.refresh_due().await;
        assert_eq!(ca.attempts.load(Ordering::SeqCst), 3, "not retried after the backoff");

        // Expired with the CA still down: fail closed.
        clock.advance(ttl / 2);
        assert!(matches!(manager.fetch(&identity).await, Err(Error::Unavailable(_))));

        // The CA returns: a new certificate, valid from now.
        ca.down.store(false, Ordering::SeqCst);
        let renewed = manager.fetch(&identity).await.unwrap();
        assert!(!Arc::ptr_eq(&renewed, &first));
        assert!(renewed.not_after > clock.now());
        assert_eq!(ca.signed.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_waiting_behind_a_failed_request_share_its_failure() {
        let clock = Arc::new(TestClock(AtomicU64::new(1_000_000_000)));
        let ca = Arc::new(TestCa::new(clock.clone()));
        ca.down.store(true, Ordering::SeqCst);
        let manager = Arc::new(Manager::with_clock(ca.clone(), Duration::from_secs(3600), clock));
        let identity = Identity::new("cluster.local", "shop", "web");
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (manager, identity) = (manager.clone(), identity.clone());
            callers.spawn(async move { manager.fetch(&identity).await.is_err() });
        }
        while let Some(failed) = callers.join_next().await {
            assert!(failed.unwrap(), "no certificate while the CA is down");
        }
        assert_eq!(ca.attempts.load(Ordering::SeqCst), 1, "one request, not one per waiting caller");
    }

    #[tokio::test]
    async fn renewal_at_half_life_replaces_the_certificate_in_the_background() {
        let ttl = Duration::from_secs(3600);
        let clock = Arc::new(TestClock(AtomicU64::new(1_000_000_000)));
        let ca = Arc::new(TestCa::new(clock.clone()));
        let manager = Manager::with_clock(ca.clone(), ttl, clock.clone());
        let identity = Identity::new("cluster.local", "shop", "web");
        let first = manager.fetch(&identity).await.unwrap();
        clock.advance(ttl / 2 + Duration::from_secs(1));
        // A caller past half-life gets the held certificate at once...
        assert!(Arc::ptr_eq(&manager.fetch(&identity).await.unwrap(), &first));
        // ...and the refresher renews it.
        manager.refresh_due().await;
        let renewed = manager.fetch(&identity).await.unwrap();
        assert!(!Arc::ptr_eq(&renewed, &first));
        assert_eq!(manager.summary().len(), 1);
        manager.retain(|_| false).await;
        assert!(manager.summary().is_empty(), "forgotten identities are not shown");
    }

    #[tokio::test]
    async fn a_short_lived_certificate_from_a_backdating_ca_is_renewed_at_half_its_held_life() {
        let ttl = Duration::from_secs(20);
        let clock = Arc::new(TestClock(AtomicU64::new(1_000_000_000)));
        let ca = Arc::new(TestCa::new(clock.clone()));
        ca.backdate.store(300, Ordering::SeqCst);
        let manager = Manager::with_clock(ca.clone(), ttl, clock.clone());
        let identity = Identity::new("cluster.local", "shop", "web");
        manager.fetch(&identity).await.unwrap();
        // Counted from its backdated notBefore it would be long past half-life: renewed on
        // every tick.
        clock.advance(Duration::from_secs(9));
        manager.refresh_due().await;
        assert_eq!(ca.signed.load(Ordering::SeqCst), 1, "renewed before half its held life");
        clock.advance(Duration::from_secs(2));
        manager.refresh_due().await;
        assert_eq!(ca.signed.load(Ordering::SeqCst), 2, "not renewed past half its held life");
    }
}
