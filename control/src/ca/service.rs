//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate the caller; a node
//! proxy's identity asked for must run on its node, a waypoint gets its own identity only;
//! sign. One conversion to gRPC status.
use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};
use weft_api::ca::{
    IMPERSONATED_IDENTITY, IstioCertificateRequest, IstioCertificateResponse,
    istio_certificate_service_server::IstioCertificateService,
};

use super::{
    Authority, Refusal,
    caller::{self, Authenticator, CallerKind},
};

/// The certificate service.
#[derive(Debug, Clone)]
pub struct Service {
    authority: Arc<Authority>,
    authenticator: Authenticator,
    trust_domain: String,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Service {
    pub fn new(
        authority: Arc<Authority>,
        authenticator: Authenticator,
        trust_domain: String,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self { authority, authenticator, trust_domain, metrics }
    }

    async fn create(&self, request: Request<IstioCertificateRequest>) -> Result<Vec<String>, Denial> {
        let caller =
            self.authenticator.authenticate_request(request.metadata()).await.map_err(Denial::Caller)?;
        let request = request.into_inner();
        let own =
            format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, caller.namespace, caller.service_account);
        let asked = asked(caller.kind, &own, &request, &self.trust_domain).map_err(Denial::Identity)?;
        if let Some((namespace, service_account)) = &asked.pod_on_node
            && !self
                .authenticator
                .runs_on(&caller.node, namespace, service_account)
                .await
                .map_err(Denial::Caller)?
        {
            return Err(Denial::Identity(format!(
                "{} has no running pod on node {}",
                asked.identity, caller.node
            )));
        }
        let chain = self.authority.sign(&request.csr, &asked.identity, asked.ttl).map_err(Denial::Csr)?;
        tracing::info!(node = %caller.node, identity = %asked.identity, "certificate signed");
        Ok(chain)
    }
}

/// What a request asks to be signed, once its caller may have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The SPIFFE identity the certificate will name.
    pub identity: String,
    /// For a node proxy: the namespace and service account of a pod that must run on its node.
    pub pod_on_node: Option<(String, String)>,
    /// The lifetime asked for (zero: the CA's maximum).
    pub ttl: Duration,
}

/// Whose certificate a caller of `kind` whose own identity is `own` asks for in `request`, or
/// why it may not have it: a waypoint its own only; a node proxy the workload of
/// `trust_domain` it names (whose pod the CA then looks for on its node), never none.
pub fn asked(
    kind: CallerKind,
    own: &str,
    request: &IstioCertificateRequest,
    trust_domain: &str,
) -> Result<Asked, String> {
    let (identity, pod_on_node) = match (kind, impersonated(request)) {
        (CallerKind::NodeProxy, Some(identity)) => {
            let (namespace, service_account) = parse_identity(&identity, trust_domain)
                .ok_or_else(|| format!("{identity} is not a workload of {trust_domain}"))?;
            let pod = (namespace.to_owned(), service_account.to_owned());
            (identity, Some(pod))
        }
        (CallerKind::NodeProxy, None) => return Err("the request names no ImpersonatedIdentity".into()),
        // Istio's waypoints ask without one; naming their own identity is no impersonation.
        (CallerKind::Waypoint, None) => (own.to_owned(), None),
        (CallerKind::Waypoint, Some(identity)) if identity == own => (identity, None),
        (CallerKind::Waypoint, Some(identity)) => {
            return Err(format!("impersonation not allowed: {own} asked for {identity}"));
        }
    };
    let ttl = Duration::from_secs(u64::try_from(request.validity_duration).unwrap_or(0));
    Ok(Asked { identity, pod_on_node, ttl })
}

/// Why a request was refused, before it becomes a gRPC status.
#[derive(Debug, thiserror::Error)]
enum Denial {
    #[error(transparent)]
    Caller(caller::Error),
    #[error("{0}")]
    Identity(String),
    #[error(transparent)]
    Csr(Refusal),
}

impl From<Denial> for Status {
    fn from(denial: Denial) -> Self {
        let message = denial.to_string();
        match denial {
            Denial::Caller(error) => error.into(),
            Denial::Identity(_) => Status::permission_denied(message),
            Denial::Csr(_) => Status::invalid_argument(message),
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Service {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        match self.create(request).await {
            Ok(cert_chain) => {
                self.metrics.csr("signed");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(denial) => {
                tracing::info!(%denial, "certificate refused");
                let status = Status::from(denial);
                self.metrics.csr(match status.code() {
                    tonic::Code::Unauthenticated => "unauthenticated",
                    tonic::Code::PermissionDenied => "permission_denied",
                    tonic::Code::InvalidArgument => "invalid_argument",
                    _ => "unavailable",
                });
                Err(status)
            }
        }
    }
}

fn impersonated(request: &IstioCertificateRequest) -> Option<String> {
    let value = request.metadata.as_ref()?.fields.get(IMPERSONATED_IDENTITY)?;
    match &value.kind {
        Some(prost_types::value::Kind::StringValue(identity)) => Some(identity.clone()),
        _ => None,
    }
}

/// `(namespace, service account)` of a workload identity in `trust_domain`: names Kubernetes
/// allows, a namespace a DNS label and an account a DNS subdomain — the namespace goes into
/// the API server's path when the CA checks who runs where.
fn parse_identity<'a>(identity: &'a str, trust_domain: &str) -> Option<(&'a str, &'a str)> {
    let rest = identity.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix("/ns/")?;
    let (namespace, service_account) = rest.split_once("/sa/")?;
    (is_dns_label(namespace) && is_dns_subdomain(service_account)).then_some((namespace, service_account))
}

/// RFC 1123 as Kubernetes reads it: 1 to 63 characters of a subdomain, without a dot.
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// Up to 253 characters: dot-separated labels of lower-case letters, digits and `-`, each
/// starting and ending with a letter or digit.
fn is_dns_subdomain(name: &str) -> bool {
    let alphanumeric = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            label.bytes().all(|byte| alphanumeric(byte) || byte == b'-')
                && label.bytes().next().is_some_and(alphanumeric)
                && label.bytes().last().is_some_and(alphanumeric)
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_api::ca::{IMPERSONATED_IDENTITY, IstioCertificateRequest};

    use super::{Asked, CallerKind, asked, parse_identity};

    const OWN: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";

    fn request(impersonated: Option<&str>) -> IstioCertificateRequest {
        let fields = impersonated.map(|identity| {
            let value =
                prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(identity.to_owned())) };
            (IMPERSONATED_IDENTITY.to_owned(), value)
        });
        IstioCertificateRequest {
            csr: String::new(),
            validity_duration: 600,
            metadata: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
        }
    }

    #[test]
    fn a_waypoint_is_given_its_own_identity_and_a_node_proxy_the_workload_it_names_on_its_node() {
        let cart = "spiffe://cluster.local/ns/shop/sa/cart";
        let ttl = Duration::from_secs(600);
        let own = Asked { identity: OWN.to_owned(), pod_on_node: None, ttl };
        assert_eq!(asked(CallerKind::Waypoint, OWN, &request(None), "cluster.local"), Ok(own.clone()));
        assert_eq!(asked(CallerKind::Waypoint, OWN, &request(Some(OWN)), "cluster.local"), Ok(own));
        let impersonating = asked(CallerKind::Waypoint, OWN, &request(Some(cart)), "cluster.local");
        assert!(impersonating.unwrap_err().contains("impersonation not allowed"));
        let pod = Some(("shop".to_owned(), "cart".to_owned()));
        assert_eq!(
            asked(CallerKind::NodeProxy, OWN, &request(Some(cart)), "cluster.local"),
            Ok(Asked { identity: cart.to_owned(), pod_on_node: pod, ttl })
        );
        assert!(asked(CallerKind::NodeProxy, OWN, &request(None), "cluster.local").is_err());
        let foreign = request(Some("spiffe://evil.example/ns/shop/sa/cart"));
        assert!(asked(CallerKind::NodeProxy, OWN, &foreign, "cluster.local").is_err());
    }

    #[test]
    fn identities_of_other_trust_domains_or_shapes_are_not_workloads() {
        assert_eq!(parse_identity("spiffe://cluster.local/ns/a/sa/b", "cluster.local"), Some(("a", "b")));
        assert_eq!(parse_identity("spiffe://evil.example/ns/a/sa/b", "cluster.local"), None);
        assert_eq!(parse_identity("spiffe://cluster.localx/ns/a/sa/b", "cluster.local"), None);
        assert_eq!(parse_identity("spiffe://cluster.local/ns/a/sa/b/c", "cluster.local"), None);
        assert_eq!(parse_identity("spiffe://cluster.local/ns//sa/b", "cluster.local"), None);
        assert_eq!(
            parse_identity("spiffe://cluster.local/ns/front-end/sa/web.v2", "cluster.local"),
            Some(("front-end", "web.v2"))
        );
        // An account's labels are not capped at 63 characters, only its whole name.
        let long = format!("spiffe://cluster.local/ns/shop/sa/{}", "a".repeat(70));
        assert_eq!(parse_identity(&long, "cluster.local"), Some(("shop", "a".repeat(70).as_str())));
    }

    /// A node proxy names the identity it asks for; its namespace goes into the API server's
    /// path when the CA checks the pod runs on that node, so nothing but Kubernetes names may
    /// pass: `a/b` was taken as the namespace `a/b`.
    #[test]
    fn an_identity_whose_names_kubernetes_would_not_allow_is_refused() {
        for identity in [
            "spiffe://cluster.local/ns/a/b/sa/c",
            "spiffe://cluster.local/ns/victim/pods?x=1/sa/c",
            "spiffe://cluster.local/ns/Shop/sa/c",
            "spiffe://cluster.local/ns/-shop/sa/c",
            "spiffe://cluster.local/ns/shop/sa/c..d",
            "spiffe://cluster.local/ns/shop/sa/c%2Fd",
            "spiffe://cluster.local/ns/a23456789012345678901234567890123456789012345678901234567890123x/sa/c",
        ] {
            assert_eq!(parse_identity(identity, "cluster.local"), None, "{identity}");
        }
    }
}
