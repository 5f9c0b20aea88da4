//! What the mesh CA is made of, as its Secret keeps it, and how it moves with time. A pure
//! function of the state and the clock ([`State::advance`]) decides each step, so a simulated
//! clock can run years of it in a test:
//!
//! - The intermediate is re-issued by the signing root once less than
//!   [`Lifetimes::renew_intermediate_before`] of it is left; leaves never outlive it.
//! - The root is rotated once less than [`Lifetimes::rotate_root_before`] of it is left, in
//!   three steps, each a leaf lifetime (plus a margin) after the last, so that no two proxies
//!   ever stop trusting each other: a new root joins the trust bundle (every leaf issued from now
//!   on carries the bundle); it starts signing (every proxy has the bundle by then: the leaves
//!   issued before it have expired); the old one leaves the bundle (every leaf it signed has
//!   expired by then).
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use k8s_openapi::ByteString;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::Error;

/// How long the CA's certificates live and when they are replaced.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub root: Duration,
    pub intermediate: Duration,
    pub renew_intermediate_before: Duration,
    pub rotate_root_before: Duration,
    /// The longest a leaf lives: each root rotation step waits this long, plus a margin.
    pub max_leaf: Duration,
    /// Added to each rotation step for clock skew and renewals that ran late.
    pub rotation_margin: Duration,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Lifetimes {
    /// Ten-year roots rotated a year before they end; one-year intermediates re-issued with a
    /// third of their life left; leaves of at most `max_leaf`.
    pub fn with_max_leaf(max_leaf: Duration) -> Self {
        Self {
            root: 3650 * DAY,
            intermediate: 365 * DAY,
            renew_intermediate_before: 120 * DAY,
            rotate_root_before: 365 * DAY,
            max_leaf,
            rotation_margin: Duration::from_secs(300),
        }
    }

    /// How long each root rotation step waits: a leaf lifetime and a quarter, and the margin.
    pub fn rotation_step(&self) -> Duration {
        self.max_leaf + self.max_leaf / 4 + self.rotation_margin
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// A root rotation under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// `next` is trusted (in the bundle) but does not sign yet.
    Introduced { next: Pair, since: SystemTime },
    /// The new root signs; `old` is still trusted until the leaves it signed have expired.
    Retiring { old: String, since: SystemTime },
}

/// The whole CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The root that issues intermediates.
    pub root: Pair,
    /// The intermediate that signs leaves.
    pub intermediate: Pair,
    /// Every root proxies trust, oldest first; the signing root among them.
    pub bundle: Vec<String>,
    pub rotation: Option<Rotation>,
    /// The operator's last rotation request acted on (the value of
    /// [`weft_api::ca::ROTATE_ROOT`]).
    pub handled_request: Option<String>,
}

// Secret keys. The first four are those of the CA before trust bundles existed.
const ROOT_CERT: &str = "root.pem";
const ROOT_KEY: &str = "root-key.pem";
const INTERMEDIATE_CERT: &str = "intermediate.pem";
const INTERMEDIATE_KEY: &str = "intermediate-key.pem";
const BUNDLE: &str = "trust-bundle.pem";
const NEXT_ROOT_CERT: &str = "next-root.pem";
const NEXT_ROOT_KEY: &str = "next-root-key.pem";
const RETIRING_ROOT: &str = "retiring-root.pem";
const ROTATION_SINCE: &str = "rotation-since";
const HANDLED_REQUEST: &str = "rotation-request";

impl State {
    /// A new root and intermediate.
    pub fn generate(now: SystemTime, lifetimes: &Lifetimes) -> Result<Self, Error> {
        let root = new_root(now, lifetimes)?;
        let intermediate = new_intermediate(&root, now, lifetimes)?;
        Ok(Self {
            bundle: vec![root.cert.clone()],
            root,
            intermediate,
            rotation: None,
            handled_request: None,
        })
    }

    /// What is due at `now`, if anything, with the operator's rotation `request` (the
    /// [`weft_api::ca::ROTATE_ROOT`] annotation's value): the next state and what changed.
    pub fn advance(
        &self,
        now: SystemTime,
        lifetimes: &Lifetimes,
        request: Option<&str>,
    ) -> Result<Option<(Self, &'static str)>, Error> {
        // Whole seconds: what the Secret keeps of a rotation's start.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds(now));
        let step = lifetimes.rotation_step();
        let due = |since: SystemTime| now.duration_since(since).is_ok_and(|waited| waited >= step);
        let requested = request.filter(|request| Some(*request) != self.handled_request.as_deref());
        let mut next = self.clone();
        let change = match &self.rotation {
            None if requested.is_some() || left(&self.root.cert, now)? < lifetimes.rotate_root_before => {
                let root = new_root(now, lifetimes)?;
                next.bundle.push(root.cert.clone());
                next.rotation = Some(Rotation::Introduced { next: root, since: now });
                if let Some(request) = requested {
                    next.handled_request = Some(request.to_owned());
                    "a new root joined the trust bundle (rotation requested)"
                } else {
                    "a new root joined the trust bundle"
                }
            }
            Some(Rotation::Introduced { next: root, since }) if due(*since) => {
                next.intermediate = new_intermediate(root, now, lifetimes)?;
                next.root = root.clone();
                next.rotation = Some(Rotation::Retiring { old: self.root.cert.clone(), since: now });
                "the new root signs"
            }
            Some(Rotation::Retiring { old, since }) if due(*since) => {
                next.bundle.retain(|root| root != old);
                next.rotation = None;
                "the old root left the trust bundle"
            }
            _ if left(&self.intermediate.cert, now)? < lifetimes.renew_intermediate_before => {
                next.intermediate = new_intermediate(&self.root, now, lifetimes)?;
                "the intermediate was re-issued"
            }
            _ => return Ok(None),
        };
        Ok(Some((next, change)))
    }

    /// The Secret's data.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = vec![
            (ROOT_CERT, self.root.cert.clone()),
            (ROOT_KEY, self.root.key.clone()),
            (INTERMEDIATE_CERT, self.intermediate.cert.clone()),
            (INTERMEDIATE_KEY, self.intermediate.key.clone()),
            (BUNDLE, self.bundle.concat()),
        ];
        match &self.rotation {
            Some(Rotation::Introduced { next, since }) => {
                data.push((NEXT_ROOT_CERT, next.cert.clone()));
                data.push((NEXT_ROOT_KEY, next.key.clone()));
                data.push((ROTATION_SINCE, unix_seconds(*since).to_string()));
            }
            Some(Rotation::Retiring { old, since }) => {
                data.push((RETIRING_ROOT, old.clone()));
                data.push((ROTATION_SINCE, unix_seconds(*since).to_string()));
            }
            None => {}
        }
        if let Some(request) = &self.handled_request {
            data.push((HANDLED_REQUEST, request.clone()));
        }
        data.into_iter().map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes()))).collect()
    }

    /// Reads the Secret's data; `Err` names the first key missing or unreadable. A Secret from
    /// before trust bundles trusts its root alone.
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Result<Self, &'static str> {
        let field = |key: &'static str| {
            data.get(key).map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned()).ok_or(key)
        };
        let root = Pair { cert: field(ROOT_CERT)?, key: field(ROOT_KEY)? };
        let intermediate = Pair { cert: field(INTERMEDIATE_CERT)?, key: field(INTERMEDIATE_KEY)? };
        let bundle = match field(BUNDLE) {
            Ok(pem) => split_pem(&pem).ok_or(BUNDLE)?,
            Err(_) => vec![root.cert.clone()],
        };
        let since = || -> Result<SystemTime, &'static str> {
            let seconds = field(ROTATION_SINCE)?.trim().parse::<u64>().map_err(|_| ROTATION_SINCE)?;
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
        };
        let rotation = if data.contains_key(NEXT_ROOT_CERT) {
            let next = Pair { cert: field(NEXT_ROOT_CERT)?, key: field(NEXT_ROOT_KEY)? };
            Some(Rotation::Introduced { next, since: since()? })
        } else if data.contains_key(RETIRING_ROOT) {
            Some(Rotation::Retiring { old: field(RETIRING_ROOT)?, since: since()? })
        } else {
            None
        };
        Ok(Self { root, intermediate, bundle, rotation, handled_request: field(HANDLED_REQUEST).ok() })
    }
}

/// How long `cert_pem` is still valid at `now` (zero once expired).
pub fn left(cert_pem: &str, now: SystemTime) -> Result<Duration, Error> {
    Ok(not_after(cert_pem)?.duration_since(now).unwrap_or_default())
}

/// The end of `cert_pem`'s validity.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, Error> {
    let pem = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| material(e.to_string()))?.1;
    not_after_der(&pem.contents)
}

/// The end of a DER certificate's validity.
pub fn not_after_der(der: &[u8]) -> Result<SystemTime, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| material(e.to_string()))?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

fn material(error: String) -> Error {
    Error::Material(rcgen::Error::X509(error))
}

/// The certificates of a PEM bundle, each as its own PEM; `None` if it holds none.
fn split_pem(bundle: &str) -> Option<Vec<String>> {
    const END: &str = "-----END CERTIFICATE-----";
    let certs: Vec<String> = bundle
        .split_inclusive(END)
        .map(str::trim_start)
        .filter(|cert| cert.ends_with(END))
        .map(|cert| format!("{cert}\n"))
        .collect();
    (!certs.is_empty()).then_some(certs)
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

fn new_root(now: SystemTime, lifetimes: &Lifetimes) -> Result<Pair, Error> {
    let key = KeyPair::generate().map_err(Error::Material)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::OrganizationName, "weft");
    // Named by its start, so two roots of one mesh differ in subject too.
    params.distinguished_name.push(DnType::CommonName, format!("weft mesh root {}", unix_seconds(now)));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + lifetimes.root).into();
    let cert = params.self_signed(&key).map_err(Error::Material)?;
    Ok(Pair { cert: cert.pem(), key: key.serialize_pem() })
}

/// An intermediate from `root`, ending no later than the root.
fn new_intermediate(root: &Pair, now: SystemTime, lifetimes: &Lifetimes) -> Result<Pair, Error> {
    let root_key = KeyPair::from_pem(&root.key).map_err(Error::Material)?;
    let issuer = Issuer::from_ca_cert_pem(&root.cert, root_key).map_err(Error::Material)?;
    let key = KeyPair::generate().map_err(Error::Material)?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::OrganizationName, "weft");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("weft mesh intermediate {}", unix_seconds(now)));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + lifetimes.intermediate).min(not_after(&root.cert)?).into();
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).map_err(Error::Material)?;
    Ok(Pair { cert: cert.pem(), key: key.serialize_pem() })
}
