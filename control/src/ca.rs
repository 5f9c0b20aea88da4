//! The mesh certificate authority: a long-lived root that signs an intermediate, which signs
//! workload certificates. Both are generated on first start and kept in a Secret, so a restarted
//! control plane keeps the root every proxy trusts. [`service`] is the gRPC face; [`caller`]
//! finds out who is asking.
use std::time::{Duration, SystemTime};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub mod caller;
pub mod service;

const ROOT_CERT: &str = "root.pem";
const ROOT_KEY: &str = "root-key.pem";
const INTERMEDIATE_CERT: &str = "intermediate.pem";
const INTERMEDIATE_KEY: &str = "intermediate-key.pem";
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

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
    #[error("CA Secret {namespace}/{name} is incomplete: {missing} missing")]
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
}

/// The signing half of the CA.
pub struct Authority {
    intermediate: Issuer<'static, KeyPair>,
    /// PEM: the intermediate, then the root — appended to every leaf.
    chain_tail: Vec<String>,
    root_pem: String,
    max_ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("max_ttl", &self.max_ttl).finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from Secret `namespace/name`, or generates one and stores it there. When two
    /// control planes start at once the Secret that was created first wins.
    pub async fn load_or_create(
        client: kube::Client,
        namespace: &str,
        name: &str,
        max_ttl: Duration,
    ) -> Result<Self, Error> {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let secret_error =
            |source| Error::Secret { namespace: namespace.to_owned(), name: name.to_owned(), source };
        let secret = match secrets.get_opt(name).await.map_err(secret_error)? {
            Some(secret) => secret,
            None => {
                let fresh = generate(namespace, name)?;
                match secrets.create(&PostParams::default(), &fresh).await {
                    Ok(created) => {
                        tracing::info!(%namespace, %name, "generated a new mesh CA");
                        created
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        secrets.get(name).await.map_err(secret_error)?
                    }
                    Err(source) => return Err(secret_error(source)),
                }
            }
        };
        Self::from_secret(&secret, namespace, name, max_ttl)
    }

    fn from_secret(secret: &Secret, namespace: &str, name: &str, max_ttl: Duration) -> Result<Self, Error> {
        let data = secret.data.clone().unwrap_or_default();
        let field = |key: &'static str| {
            data.get(key).map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned()).ok_or(
                Error::Incomplete { namespace: namespace.to_owned(), name: name.to_owned(), missing: key },
            )
        };
        let (root_pem, intermediate_pem) = (field(ROOT_CERT)?, field(INTERMEDIATE_CERT)?);
        let key = KeyPair::from_pem(&field(INTERMEDIATE_KEY)?).map_err(Error::Material)?;
        let intermediate = Issuer::from_ca_cert_pem(&intermediate_pem, key).map_err(Error::Material)?;
        Ok(Self { intermediate, chain_tail: vec![intermediate_pem, root_pem.clone()], root_pem, max_ttl })
    }

    /// A serving certificate for the control plane's own TLS listener, valid for `names` (IP
    /// addresses or DNS names): `(chain PEM, key PEM)`.
    pub fn serving_cert(&self, names: &[String]) -> Result<(String, String), Error> {
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
        let cert = params.signed_by(&key, &self.intermediate).map_err(Error::Material)?;
        Ok((format!("{}{}", cert.pem(), self.chain_tail[0]), key.serialize_pem()))
    }

    /// The root certificate (PEM) every workload trusts.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs `csr_pem` for `identity` (a SPIFFE URI) for `ttl`, clamped to the maximum. Returns
    /// the chain: leaf, intermediate, root.
    pub fn sign(&self, csr_pem: &str, identity: &str, ttl: Duration) -> Result<Vec<String>, Refusal> {
        check_csr(csr_pem, identity)?;
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| Refusal::BadCsr(e.to_string()))?;
        let now = SystemTime::now();
        let ttl = if ttl.is_zero() { self.max_ttl } else { ttl.min(self.max_ttl) };
        let params = &mut csr.params;
        // Only what the CA decides goes in: the identity, the lifetime, the usages.
        params.subject_alt_names = vec![SanType::URI(
            identity.try_into().map_err(|_| Refusal::BadCsr("identity is not ASCII".into()))?,
        )];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + ttl).into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = csr.signed_by(&self.intermediate).map_err(|e| Refusal::BadCsr(e.to_string()))?;
        let mut chain = vec![leaf.pem()];
        chain.extend(self.chain_tail.iter().cloned());
        Ok(chain)
    }
}

/// The CSR's own claims: exactly one URI SAN, `identity`, and no CA bit.
fn check_csr(csr_pem: &str, identity: &str) -> Result<(), Refusal> {
    use x509_parser::{
        certification_request::X509CertificationRequest, extensions::GeneralName,
        extensions::ParsedExtension, prelude::FromDer,
    };
    let pem =
        x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|e| Refusal::BadCsr(e.to_string()))?.1;
    let (_, csr) =
        X509CertificationRequest::from_der(&pem.contents).map_err(|e| Refusal::BadCsr(e.to_string()))?;
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
    Ok(())
}

/// A new root and intermediate, as a Secret.
fn generate(namespace: &str, name: &str) -> Result<Secret, Error> {
    let now = SystemTime::now();
    let root_key = KeyPair::generate().map_err(Error::Material)?;
    let mut root = CertificateParams::default();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.distinguished_name.push(DnType::OrganizationName, "weft");
    root.distinguished_name.push(DnType::CommonName, "weft mesh root");
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root.not_before = now.into();
    root.not_after = (now + ROOT_LIFETIME).into();
    let root_cert = root.self_signed(&root_key).map_err(Error::Material)?;
    let root_pem = root_cert.pem();
    let root_key_pem = root_key.serialize_pem();
    let root_issuer = Issuer::new(root, root_key);

    let key = KeyPair::generate().map_err(Error::Material)?;
    let mut intermediate = CertificateParams::default();
    intermediate.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    intermediate.distinguished_name.push(DnType::OrganizationName, "weft");
    intermediate.distinguished_name.push(DnType::CommonName, "weft mesh intermediate");
    intermediate.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    intermediate.not_before = now.into();
    intermediate.not_after = (now + INTERMEDIATE_LIFETIME).into();
    intermediate.use_authority_key_identifier_extension = true;
    let intermediate_cert = intermediate.signed_by(&key, &root_issuer).map_err(Error::Material)?;

    let data = [
        (ROOT_CERT, root_pem),
        (ROOT_KEY, root_key_pem),
        (INTERMEDIATE_CERT, intermediate_cert.pem()),
        (INTERMEDIATE_KEY, key.serialize_pem()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
    .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        let secret = generate("weft-system", "weft-ca").unwrap();
        Authority::from_secret(&secret, "weft-system", "weft-ca", Duration::from_secs(24 * 3600)).unwrap()
    }

    fn csr(sans: Vec<SanType>, ca: bool) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
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
mod chain_tests {
    use super::*;

    #[test]
    fn the_serving_chain_verifies_against_the_root() {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let secret = generate("ns", "ca").unwrap();
        let ca = Authority::from_secret(&secret, "ns", "ca", Duration::from_secs(3600)).unwrap();
        let (chain, _key) = ca.serving_cert(&["172.18.0.1".into()]).unwrap();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>().unwrap();
        let root = CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).unwrap();
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
