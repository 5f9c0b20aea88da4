//! Where workload certificates come from: a [`CaClient`] signs a CSR for an identity.
//! [`GrpcCa`] speaks Istio's `IstioCertificateService` to the control plane over TLS,
//! authenticated by the node proxy's service-account token; [`FileCa`] is a development
//! stand-in that signs locally with a root key from disk.
use std::{future::Future, path::Path, pin::Pin, time::Duration};

use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;

use super::Identity;

/// A boxed future, so that `CaClient` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors obtaining a certificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CA unreachable or failing: {0}")]
    Unavailable(String),
    #[error("CA refused {identity}: {reason}")]
    Refused { identity: String, reason: String },
    #[error("certificate material: {0}")]
    Material(String),
}

/// What a CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf, then its intermediates: what the proxy presents.
    pub chain: Vec<CertificateDer<'static>>,
    /// The trust bundle: every root the mesh trusts now.
    pub roots: Vec<CertificateDer<'static>>,
}

impl Issued {
    /// From a `CreateCertificate` answer, as Istio's CA gives it: the leaf first, then the
    /// intermediates, and last the trust bundle (one PEM holding every root; one during a
    /// rotation's overlap holds two).
    pub fn from_pems(pems: &[String]) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject;
        let bad = |error: rustls::pki_types::pem::Error| {
            Error::Material(format!("CA answered a bad certificate: {error}"))
        };
        let Some((bundle, chain)) = pems.split_last().filter(|(_, chain)| !chain.is_empty()) else {
            return Err(Error::Material("CA answered without a leaf and a root".into()));
        };
        let chain = chain
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).map_err(bad))
            .collect::<Result<_, _>>()?;
        let roots: Vec<_> =
            CertificateDer::pem_slice_iter(bundle.as_bytes()).collect::<Result<_, _>>().map_err(bad)?;
        if roots.is_empty() {
            return Err(Error::Material("CA answered an empty trust bundle".into()));
        }
        Ok(Self { chain, roots })
    }
}

/// Signs certificate requests.
pub trait CaClient: Send + Sync + 'static {
    /// Signs `csr_pem` for `identity`, valid for `validity`.
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Issued, Error>>;
}

/// The control plane's CA (or istiod's): `CreateCertificate` over TLS, trusting the bundle in
/// `root_file` (read again for each request: it changes during a root rotation), with the token
/// read from `token_file` on every request (projected tokens rotate).
#[derive(Debug)]
pub struct GrpcCa {
    channels: crate::control::Channels,
    token_file: std::path::PathBuf,
    cluster: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    /// Whether requests name the identity asked for (a node proxy asks for its pods'); a
    /// waypoint asks for its own, which the CA takes from its token.
    impersonate: bool,
}

impl GrpcCa {
    /// `address`: `https://host:port`. Connects lazily; a CA that is down fails requests, not
    /// construction. Call it inside the runtime that will use it (see [`crate::control::Channels`]).
    pub fn new(
        address: &str,
        root_file: &Path,
        token_file: &Path,
        proxy: &crate::control::ProxyMeta,
    ) -> Result<Self, Error> {
        let channels = crate::control::Channels::new(address, root_file, Some(Duration::from_secs(10)))
            .map_err(Error::Material)?;
        let cluster = proxy.cluster_header().map_err(Error::Material)?;
        Ok(Self { channels, token_file: token_file.to_owned(), cluster, impersonate: true })
    }

    /// Asks for the caller's own identity (its token's): no `ImpersonatedIdentity`, which
    /// only node proxies may send.
    pub fn for_own_identity(self) -> Self {
        Self { impersonate: false, ..self }
    }
}

impl CaClient for GrpcCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Issued, Error>> {
        Box::pin(async move {
            let bearer = crate::control::bearer(&self.token_file).map_err(Error::Material)?;
            let metadata = self.impersonate.then(|| prost_types::Struct {
                fields: [(
                    weft_api::ca::IMPERSONATED_IDENTITY.to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                    },
                )]
                .into(),
            });
            let mut request = tonic::Request::new(weft_api::ca::IstioCertificateRequest {
                csr: csr_pem.to_owned(),
                validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
                metadata,
            });
            request.metadata_mut().insert("authorization", bearer);
            request.metadata_mut().insert("clusterid", self.cluster.clone());
            let channel = self.channels.get().map_err(Error::Unavailable)?;
            let mut client =
                weft_api::ca::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
            let response =
                client.create_certificate(request).await.map_err(|status| match status.code() {
                    tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument => {
                        Error::Refused { identity: identity.to_string(), reason: status.message().to_owned() }
                    }
                    _ => Error::Unavailable(format!("{}: {}", status.code(), status.message())),
                })?;
            Issued::from_pems(&response.into_inner().cert_chain)
        })
    }
}

/// A development CA: a root certificate and key read from `root.pem` and `root-key.pem` in a
/// directory, signing locally. A stand-in for the control plane's CA in component tests and
/// the pre-control-plane demo — it checks nothing about the caller, so never use it for real.
#[derive(Debug)]
pub struct FileCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl FileCa {
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|error| Error::Material(format!("{}: {error}", dir.join(name).display())))
        };
        let (cert_pem, key_pem) = (read("root.pem")?, read("root-key.pem")?);
        let key = KeyPair::from_pem(&key_pem).map_err(|error| Error::Material(error.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|error| Error::Material(error.to_string()))?;
        let root = rustls_pemfile_first(&cert_pem)?;
        Ok(Self { issuer, root })
    }
}

impl CaClient for FileCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        validity: Duration,
    ) -> BoxFuture<'a, Result<Issued, Error>> {
        Box::pin(async move {
            let refused = |reason: String| Error::Refused { identity: identity.to_string(), reason };
            let mut csr =
                CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| refused(e.to_string()))?;
            let expected = identity.to_string();
            let uris: Vec<_> = csr
                .params
                .subject_alt_names
                .iter()
                .filter_map(|san| match san {
                    SanType::URI(uri) => Some(uri.as_str().to_owned()),
                    _ => None,
                })
                .collect();
            if uris != [expected.clone()] {
                return Err(refused(format!("CSR names {uris:?}, not exactly {expected}")));
            }
            let now = std::time::SystemTime::now();
            csr.params.not_before = (now - Duration::from_secs(300)).into();
            csr.params.not_after = (now + validity).into();
            csr.params.is_ca = rcgen::IsCa::ExplicitNoCa;
            csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            csr.params.extended_key_usages =
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let leaf = csr.signed_by(&self.issuer).map_err(|e| refused(e.to_string()))?;
            Ok(Issued { chain: vec![leaf.der().clone()], roots: vec![self.root.clone()] })
        })
    }
}

/// The first certificate of a PEM text, as DER.
fn rustls_pemfile_first(pem: &str) -> Result<CertificateDer<'static>, Error> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| Error::Material(format!("root PEM: {error}")))
}

/// Writes a fresh development root (`root.pem`, `root-key.pem`) into `dir`, for [`FileCa`].
pub fn write_dev_root(dir: &Path) -> Result<(), Error> {
    let key = KeyPair::generate().map_err(|error| Error::Material(error.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "weft development root");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(|error| Error::Material(error.to_string()))?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|error| Error::Material(format!("{name}: {error}")))
    };
    write("root.pem", cert.pem())?;
    write("root-key.pem", key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rcgen::CertificateParams;

    use super::*;

    fn csr_for(identity: &Identity) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[tokio::test]
    async fn the_last_pem_is_the_whole_trust_bundle_and_a_leaf_must_name_who_asked_and_chain_to_it() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_dev_root(first.path()).unwrap();
        write_dev_root(second.path()).unwrap();
        let (ca, other) = (FileCa::load(first.path()).unwrap(), FileCa::load(second.path()).unwrap());
        let cart = Identity::new("cluster.local", "shop", "cart");
        let issued = ca.sign(&cart, &csr_for(&cart), Duration::from_secs(3600)).await.unwrap();
        let now = SystemTime::now();
        assert_eq!(crate::tls::verify::issued(&issued.chain, &issued.roots, &cart, now), Ok(()));
        let payments = Identity::new("cluster.local", "shop", "payments");
        assert!(crate::tls::verify::issued(&issued.chain, &issued.roots, &payments, now).is_err());
        let strangers = [other.root.clone()];
        assert!(crate::tls::verify::issued(&issued.chain, &strangers, &cart, now).is_err());

        // Istio's form: leaf, then one PEM holding both roots of a rotation's overlap.
        let read =
            |dir: &tempfile::TempDir, name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let key = KeyPair::from_pem(&read(&first, "root-key.pem")).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&read(&first, "root.pem"), key).unwrap();
        let leaf =
            CertificateSigningRequestParams::from_pem(&csr_for(&cart)).unwrap().signed_by(&issuer).unwrap();
        let bundle = format!("{}{}", read(&second, "root.pem"), read(&first, "root.pem"));
        let answer = Issued::from_pems(&[leaf.pem(), bundle]).unwrap();
        assert_eq!((answer.chain.len(), answer.roots.len()), (1, 2));
        assert_eq!(crate::tls::verify::issued(&answer.chain, &answer.roots, &cart, now), Ok(()));
        assert!(Issued::from_pems(&[read(&first, "root.pem")]).is_err(), "no leaf");
    }
}
