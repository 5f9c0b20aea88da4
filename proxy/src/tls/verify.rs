//! Certificate verifiers that check SPIFFE identities instead of host names: chain to the mesh
//! roots (webpki), then the leaf's only URI SAN — exactly the expected identity for a server,
//! any workload of the trust domain for a client.
use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

use crate::identity::{Expected, Identity};

/// Checks a certificate the CA issued for `identity` before it is used: the leaf (first of
/// `chain`) names exactly that identity and chains, through the rest of `chain`, to one of
/// `roots` at `now`, for both the client and the server side of HBONE.
pub fn issued(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    identity: &Identity,
    now: std::time::SystemTime,
) -> Result<(), String> {
    let leaf = chain.first().ok_or("no certificate")?;
    let named = identity_of(leaf)?;
    if named != *identity {
        return Err(format!("the certificate names {named}, not {identity}"));
    }
    let anchors = roots
        .iter()
        .map(|root| webpki::anchor_from_trusted_cert(root).map_err(|error| format!("trust bundle: {error}")))
        .collect::<Result<Vec<_>, _>>()?;
    let since_epoch = now.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap_or_default();
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|error| error.to_string())?;
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        cert.verify_for_usage(
            crate::tls::provider().signature_verification_algorithms.all,
            &anchors,
            &chain[1..],
            UnixTime::since_unix_epoch(since_epoch),
            usage,
            None,
            None,
        )
        .map_err(|error| format!("the certificate does not chain to the trust bundle: {error}"))?;
    }
    Ok(())
}

/// Verifies a destination's certificate: chains to the roots and names an identity `expected`
/// admits.
#[derive(Debug)]
pub struct ServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Expected,
}

impl ServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>, expected: Expected) -> Self {
        Self { roots, provider, expected }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let identity = identity_of(end_entity).map_err(other_error)?;
        if !self.expected.admits(&identity) {
            return Err(other_error(format!("peer is {identity}, expected {}", self.expected)));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies a client's certificate: chains to the roots (webpki's client verifier) and names a
/// workload of `trust_domain`.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
        trust_domain: String,
    ) -> Result<Self, super::Error> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(super::Error::Verifier)?;
        Ok(Self { inner, trust_domain })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let identity = identity_of(end_entity).map_err(other_error)?;
        if identity.trust_domain != self.trust_domain {
            return Err(other_error(format!("peer {identity} is not of trust domain {}", self.trust_domain)));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The identity named by a certificate's only URI SAN.
pub fn identity_of(der: &CertificateDer<'_>) -> Result<Identity, String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|error| format!("unparsable certificate: {error}"))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|error| format!("bad SAN extension: {error}"))?
        .ok_or("no SAN extension")?;
    let mut uris = sans.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err("a workload certificate carries exactly one URI SAN".to_owned());
    };
    uri.parse().map_err(|error: crate::identity::ParseError| error.to_string())
}

/// Whether the certificate `der` is within its validity period at `now`.
pub fn valid_at(der: &CertificateDer<'_>, now: std::time::SystemTime) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|error| format!("unparsable certificate: {error}"))?;
    let seconds = |time: std::time::SystemTime| match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let (now, validity) = (seconds(now), cert.validity());
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err(format!("outside its validity ({} to {})", validity.not_before, validity.not_after));
    }
    Ok(())
}

fn other_error(reason: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(IdentityError(reason)))))
}

#[derive(Debug)]
struct IdentityError(String);

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityError {}

fn pki_error(error: webpki::Error) -> Error {
    use webpki::Error as E;
    Error::InvalidCertificate(match error {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => return other_error(format!("certificate rejected: {other}")),
    })
}
