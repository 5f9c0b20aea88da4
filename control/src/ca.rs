//! The mesh certificate authority: a root that signs an intermediate, which signs workload
//! certificates, and the trust bundle of every root proxies accept. Generated on first start
//! and kept in a Secret, so a restarted control plane keeps the roots every proxy trusts;
//! [`Authority::maintain`] re-issues the intermediate and rotates the root as time passes
//! ([`state`]). [`service`] is the gRPC face; [`caller`] finds out who is asking.
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SubjectPublicKeyInfo,
};

pub mod caller;
pub mod service;
pub mod state;

/// The ConfigMap publishing the mesh root: in the control plane's namespace for node proxies,
/// and in each waypoint's namespace for its pods (a pod mounts ConfigMaps of its own only).
pub const ROOT_CONFIG_MAP: &str = "weft-ca-root-cert";
/// Its key holding the bundle (PEM).
pub const ROOT_CONFIG_MAP_KEY: &str = "root-cert.pem";

/// Publishes the mesh root in `namespace` (server-side apply: idempotent).
pub async fn publish_root(client: kube::Client, namespace: &str, root_pem: &str) -> Result<(), kube::Error> {
    let config_map = ConfigMap {
        metadata: ObjectMeta { name: Some(ROOT_CONFIG_MAP.into()), ..Default::default() },
        data: Some(BTreeMap::from([(ROOT_CONFIG_MAP_KEY.to_owned(), root_pem.to_owned())])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client, namespace)
        .patch(ROOT_CONFIG_MAP, &PatchParams::apply("weft-control").force(), &Patch::Apply(&config_map))
        .await?;
    Ok(())
}

pub use state::{Lifetimes, State};

/// Errors of the authority itself (not of a request).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing CA Secret {namespace}/{name}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CA Secret {namespace}/{name} is incomplete: {missing} missing or unreadable")]
    Incomplete { namespace: String, name: String, missing: &'static str },
    #[error("CA key material")]
    Material(#[source] rcgen::Error),
}

/// Why a signing request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unparsable CSR: {0}")]
    BadCsr(String),
    #[error("the CSR must name exactly {expected} as its only URI SAN; it names {found:?}")]
    WrongSan { expected: String, found: Vec<String> },
    #[error("the CSR asks for a CA certificate")]
    CaRequested,
    #[error("the CA's intermediate has expired")]
    Expired,
}

pub use weft_api::clock::{Clock, SystemClock};

/// The CA state in use, ready to sign.
struct Signing {
    state: State,
    intermediate: Issuer<'static, KeyPair>,
    intermediate_ends: SystemTime,
    /// The Secret's version this state was read from or written as.
    resource_version: Option<String>,
}

impl Signing {
    fn new(state: State, resource_version: Option<String>) -> Result<Self, Error> {
        let key = KeyPair::from_pem(&state.intermediate.key).map_err(Error::Material)?;
        let intermediate =
            Issuer::from_ca_cert_pem(&state.intermediate.cert, key).map_err(Error::Material)?;
        let intermediate_ends = state::not_after(&state.intermediate.cert)?;
        Ok(Self { state, intermediate, intermediate_ends, resource_version })
    }
}

/// Where the state is kept.
struct Store {
    secrets: Api<Secret>,
    namespace: String,
    name: String,
}

impl Store {
    fn error(&self, source: kube::Error) -> Error {
        Error::Secret { namespace: self.namespace.clone(), name: self.name.clone(), source }
    }

    fn read(&self, secret: &Secret) -> Result<Signing, Error> {
        let data = secret.data.clone().unwrap_or_default();
        let state = State::from_data(&data).map_err(|missing| Error::Incomplete {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            missing,
        })?;
        Signing::new(state, secret.metadata.resource_version.clone())
    }

    /// The Secret holding `state`; `annotations` are kept as they were (an operator's request).
    fn secret(
        &self,
        state: &State,
        resource_version: Option<String>,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                annotations,
                ..Default::default()
            },
            data: Some(state.to_data()),
            type_: Some("Opaque".to_owned()),
            ..Default::default()
        }
    }
}

/// The signing half of the CA.
pub struct Authority {
    current: RwLock<Arc<Signing>>,
    lifetimes: Lifetimes,
    clock: Arc<dyn Clock>,
    store: Option<Store>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("lifetimes", &self.lifetimes).finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from Secret `namespace/name`, or generates one and stores it there. When two
    /// control planes start at once the Secret that was created first wins.
    pub async fn load_or_create(
        client: kube::Client,
        namespace: &str,
        name: &str,
        lifetimes: Lifetimes,
    ) -> Result<Self, Error> {
        let store = Store {
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
        };
        let secret = match store.secrets.get_opt(name).await.map_err(|source| store.error(source))? {
            Some(secret) => secret,
            None => {
                let fresh = store.secret(&State::generate(SystemTime::now(), &lifetimes)?, None, None);
                match store.secrets.create(&PostParams::default(), &fresh).await {
                    Ok(created) => {
                        tracing::info!(%namespace, %name, "generated a new mesh CA");
                        created
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        store.secrets.get(name).await.map_err(|source| store.error(source))?
                    }
                    Err(source) => return Err(store.error(source)),
                }
            }
        };
        let signing = store.read(&secret)?;
        Ok(Self {
            current: RwLock::new(Arc::new(signing)),
            lifetimes,
            clock: Arc::new(SystemClock),
            store: Some(store),
        })
    }

    /// A CA of `state` kept nowhere but here, on `clock` (tests).
    pub fn in_memory(state: State, lifetimes: Lifetimes, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let signing = Signing::new(state, None)?;
        Ok(Self { current: RwLock::new(Arc::new(signing)), lifetimes, clock, store: None })
    }

    fn current(&self) -> Arc<Signing> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn replace(&self, signing: Signing) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(signing);
    }

    /// Does what is due (re-issue the intermediate, a step of a root rotation, one an operator
    /// asked for on the Secret), keeping the Secret first. Returns what changed, if anything;
    /// another control plane's change to the Secret is adopted instead of this one's.
    pub async fn maintain(&self) -> Result<Option<&'static str>, Error> {
        let Some(store) = &self.store else {
            let Some((next, change)) =
                self.current().state.advance(self.clock.now(), &self.lifetimes, None)?
            else {
                return Ok(None);
            };
            self.replace(Signing::new(next, None)?);
            return Ok(Some(change));
        };
        let stored = store.secrets.get(&store.name).await.map_err(|source| store.error(source))?;
        // Another replica's step, or an operator's annotation: start from what is kept, and
        // report a changed state, so the caller serves and publishes what the other wrote.
        let mut adopted = None;
        if stored.metadata.resource_version != self.current().resource_version {
            let theirs = store.read(&stored)?;
            if theirs.state != self.current().state {
                adopted = Some("another control plane changed the CA");
            }
            self.replace(theirs);
        }
        let current = self.current();
        let request =
            stored.metadata.annotations.as_ref().and_then(|notes| notes.get(weft_api::ca::ROTATE_ROOT));
        let Some((next, change)) =
            current.state.advance(self.clock.now(), &self.lifetimes, request.map(String::as_str))?
        else {
            return Ok(adopted);
        };
        let secret =
            store.secret(&next, current.resource_version.clone(), stored.metadata.annotations.clone());
        match store.secrets.replace(&store.name, &PostParams::default(), &secret).await {
            Ok(written) => {
                self.replace(Signing::new(next, written.metadata.resource_version)?);
                Ok(Some(change))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let theirs = store.secrets.get(&store.name).await.map_err(|source| store.error(source))?;
                self.replace(store.read(&theirs)?);
                Ok(Some("another control plane changed the CA"))
            }
            Err(source) => Err(store.error(source)),
        }
    }

    /// A serving certificate for the control plane's own TLS listener, valid for `names` (IP
    /// addresses or DNS names) as long as the intermediate: `(chain PEM, key PEM)`.
    pub fn serving_cert(&self, names: &[String]) -> Result<(String, String), Error> {
        let current = self.current();
        let key = KeyPair::generate().map_err(Error::Material)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::Material)?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into().map_err(Error::Material)?),
            });
        }
        params.distinguished_name.push(DnType::CommonName, "weft-control");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (self.clock.now() - Duration::from_secs(300)).into();
        params.not_after = current.intermediate_ends.into();
        let cert = params.signed_by(&key, &current.intermediate).map_err(Error::Material)?;
        Ok((format!("{}{}", cert.pem(), current.state.intermediate.cert), key.serialize_pem()))
    }

    /// Every root proxies trust (PEM, concatenated): what the CA appends to every chain and
    /// the control plane publishes.
    pub fn bundle_pem(&self) -> String {
        self.current().state.bundle.concat()
    }

    /// Signs `csr_pem` for `identity` (a SPIFFE URI) for `ttl`, clamped to the maximum and to
    /// the intermediate's own end. Returns the chain as Istio's CA does: the leaf, the
    /// intermediate, and last the trust bundle (every root, concatenated).
    pub fn sign(&self, csr_pem: &str, identity: &str, ttl: Duration) -> Result<Vec<String>, Refusal> {
        // The PEM is read once: the request checked is the request signed (two PEM readers could
        // each take a different block of one text).
        let der = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
            .map_err(|e| Refusal::BadCsr(e.to_string()))?
            .1
            .contents;
        let key = check_csr(&der, identity)?;
        let current = self.current();
        let mut csr = CertificateSigningRequestParams::from_der(&der.into())
            .map_err(|e| Refusal::BadCsr(e.to_string()))?;
        let now = self.clock.now();
        let max_ttl = self.lifetimes.max_leaf;
        let ttl = if ttl.is_zero() { max_ttl } else { ttl.min(max_ttl) };
        let not_after = (now + ttl).min(current.intermediate_ends);
        if not_after <= now {
            return Err(Refusal::Expired);
        }
        let params = &mut csr.params;
        // Only what the CA decides goes in: the identity, the lifetime, the usages.
        params.subject_alt_names = vec![SanType::URI(
            identity.try_into().map_err(|_| Refusal::BadCsr("identity is not ASCII".into()))?,
        )];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        // The leaf's key is the request's key information as it stands: rcgen's own `signed_by`
        // labels it by the request's signature algorithm, and a P-384 key signed with SHA-256
        // came out labelled P-256 — a leaf nobody can use.
        let leaf =
            csr.params.signed_by(&key, &current.intermediate).map_err(|e| Refusal::BadCsr(e.to_string()))?;
        Ok(vec![leaf.pem(), current.state.intermediate.cert.clone(), current.state.bundle.concat()])
    }
}

/// The CSR's (DER) own claims: exactly one URI SAN, `identity`, and no CA bit. Returns the key
/// to certify.
fn check_csr(der: &[u8], identity: &str) -> Result<SubjectPublicKeyInfo, Refusal> {
    use x509_parser::{
        certification_request::X509CertificationRequest, extensions::GeneralName,
        extensions::ParsedExtension, prelude::FromDer,
    };
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|e| Refusal::BadCsr(e.to_string()))?;
    let mut uris = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uris.push((*uri).to_owned());
                    }
                }
            }
            ParsedExtension::BasicConstraints(constraints) if constraints.ca => {
                return Err(Refusal::CaRequested);
            }
            _ => {}
        }
    }
    if uris != [identity] {
        return Err(Refusal::WrongSan { expected: identity.to_owned(), found: uris });
    }
    let key = &csr.certification_request_info.subject_pki;
    SubjectPublicKeyInfo::from_der(key.raw)
        .map_err(|e| Refusal::BadCsr(format!("its key ({}): {e}", key.algorithm.algorithm)))
}

#[cfg(test)]
mod tests {
    use x509_parser::{certification_request::X509CertificationRequest, prelude::FromDer};

    use super::*;

    fn authority() -> Authority {
        let lifetimes = Lifetimes::with_max_leaf(Duration::from_secs(24 * 3600));
        let state = State::generate(SystemTime::now(), &lifetimes).unwrap();
        Authority::in_memory(state, lifetimes, Arc::new(SystemClock)).unwrap()
    }

    fn csr(sans: Vec<SanType>, ca: bool) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().unwrap())
    }

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

    #[test]
    fn signs_exactly_the_requested_identity_with_intermediate_and_root() {
        let chain = authority().sign(&csr(vec![uri(ID)], false), ID, Duration::from_secs(3600)).unwrap();
        assert_eq!(chain.len(), 3);
        let der = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap().1;
        let cert = der.parse_x509().unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(sans, [format!("URI({ID})")]);
        assert!(!cert.is_ca());
    }

    #[test]
    fn refuses_two_sans_a_wrong_san_and_a_ca_bit() {
        let ca = authority();
        let ttl = Duration::from_secs(3600);
        let two = csr(vec![uri(ID), uri("spiffe://cluster.local/ns/shop/sa/other")], false);
        assert!(matches!(ca.sign(&two, ID, ttl), Err(Refusal::WrongSan { .. })));
        let wrong = csr(vec![uri("spiffe://cluster.local/ns/shop/sa/other")], false);
        assert!(matches!(ca.sign(&wrong, ID, ttl), Err(Refusal::WrongSan { .. })));
        assert_eq!(ca.sign(&csr(vec![uri(ID)], true), ID, ttl), Err(Refusal::CaRequested));
        assert!(matches!(ca.sign("not a csr", ID, ttl), Err(Refusal::BadCsr(_))));
    }

    /// A P-384 key's request signed with ecdsa-with-SHA256 (made with `openssl req -new -newkey
    /// ec -pkeyopt ec_paramgen_curve:P-384 -sha256`): the signature's algorithm names no curve.
    const P384_SIGNED_WITH_SHA256: &str = "\
-----BEGIN CERTIFICATE REQUEST-----
MIIBPTCBwwIBADAAMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE2tz6y4Dh6JjwN93z
VWfI6Ivf+bvRnaDI+rLVIxIQtG3OT6TMTvdBBAfNq7CRZvCW6ZvYdiUNf6n8YAf3
0zngma6icOutca3OqQwHVhaDvXS1Rgtf9X6bl5R5KvgiOp2NoEQwQgYJKoZIhvcN
AQkOMTUwMzAxBgNVHREEKjAohiZzcGlmZmU6Ly9jbHVzdGVyLmxvY2FsL25zL3No
b3Avc2EvY2FydDAKBggqhkjOPQQDAgNpADBmAjEAiOCMI2zMrDTqaoZ152JzzMQs
JnoAjRRr7PiK056GkgUqIAJSQ1HxsTCxpoSMJOY3AjEA2EtAveg9jLNC6ieNEUyE
QAsWvk8X0mhLztgLmf7/ABRfT4mwDYlYhiF4dBloHy/v
-----END CERTIFICATE REQUEST-----
";

    #[test]
    fn certifies_the_requests_key_whatever_its_signature_algorithm() {
        let chain = authority().sign(P384_SIGNED_WITH_SHA256, ID, Duration::from_secs(3600)).unwrap();
        let leaf = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap().1;
        let leaf = leaf.parse_x509().unwrap();
        let csr = x509_parser::pem::parse_x509_pem(P384_SIGNED_WITH_SHA256.as_bytes()).unwrap().1;
        let (_, csr) = <X509CertificationRequest as FromDer<_>>::from_der(&csr.contents).unwrap();
        // Labelled by the signature's algorithm, the leaf said prime256v1 over a P-384 point.
        assert_eq!(leaf.public_key().raw, csr.certification_request_info.subject_pki.raw);
    }

    #[test]
    fn clamps_the_lifetime() {
        let chain =
            authority().sign(&csr(vec![uri(ID)], false), ID, Duration::from_secs(365 * 24 * 3600)).unwrap();
        let der = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap().1;
        let cert = der.parse_x509().unwrap();
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(lifetime <= 24 * 3600 + 300, "lifetime {lifetime}s");
    }
}

#[cfg(test)]
mod lifecycle_tests;

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn the_serving_chain_verifies_against_the_root() {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let lifetimes = Lifetimes::with_max_leaf(Duration::from_secs(3600));
        let state = State::generate(SystemTime::now(), &lifetimes).unwrap();
        let ca = Authority::in_memory(state, lifetimes, Arc::new(SystemClock)).unwrap();
        let (chain, _key) = ca.serving_cert(&["172.18.0.1".into()]).unwrap();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>().unwrap();
        let root = CertificateDer::from_pem_slice(ca.bundle_pem().as_bytes()).unwrap();
        let issuer_of_leaf =
            x509_parser::parse_x509_certificate(&certs[0]).unwrap().1.issuer().as_raw().to_vec();
        let intermediate = x509_parser::parse_x509_certificate(&certs[1]).unwrap().1;
        assert_eq!(issuer_of_leaf, intermediate.subject().as_raw(), "leaf issuer vs intermediate subject");
        let root_cert = x509_parser::parse_x509_certificate(&root).unwrap().1;
        assert_eq!(
            intermediate.issuer().as_raw(),
            root_cert.subject().as_raw(),
            "intermediate issuer vs root subject"
        );
        let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
        webpki::EndEntityCert::try_from(&certs[0])
            .unwrap()
            .verify_for_usage(
                rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all,
                &[anchor],
                &certs[1..],
                rustls_pki_types::UnixTime::now(),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .unwrap();
    }
}
