//! A test certificate authority: a throwaway root that issues real workload certificates, for
//! the tests of this crate and others (feature `testing`). It also issues the malformed and
//! out-of-date certificates that the TLS layer must refuse.
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::WorkloadCert;
use crate::identity::Identity;

/// A root that signs workload certificates.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

/// What to put in a certificate; [`Leaf::for_identity`] is a valid one.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub identity: Identity,
    pub sans: Vec<SanType>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Leaf {
    /// A valid certificate for `identity`: URI SAN, valid from an hour ago for a day.
    pub fn for_identity(identity: &Identity) -> Self {
        let now = SystemTime::now();
        let uri = rcgen::string::Ia5String::try_from(identity.to_string()).expect("invariant: ASCII URI");
        Self {
            identity: identity.clone(),
            sans: vec![SanType::URI(uri)],
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(24 * 3600),
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("invariant: P-256 key generation");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).expect("invariant: self-signing").der().clone();
        Self { issuer: Issuer::new(params, key), root }
    }

    /// The root certificate.
    pub fn root(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// A valid workload certificate for `identity`.
    pub fn issue(&self, identity: &Identity) -> WorkloadCert {
        self.issue_leaf(&Leaf::for_identity(identity))
    }

    /// A certificate as `leaf` describes it (possibly invalid on purpose).
    pub fn issue_leaf(&self, leaf: &Leaf) -> WorkloadCert {
        let key = KeyPair::generate().expect("invariant: P-256 key generation");
        let mut params = CertificateParams::default();
        params.subject_alt_names = leaf.sans.clone();
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("invariant: signing");
        WorkloadCert {
            identity: leaf.identity.clone(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots: vec![self.root()],
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            received: leaf.not_before,
        }
    }
}
