//! Who is asking for a certificate or configuration, and may they have it. The caller is one of
//! Weft's proxies, authenticated by its service-account token bound to its own pod; the API
//! server's TokenReview vouches for the token (and its audience), and the pod it is bound to
//! says which node the caller runs on. A node proxy may obtain certificates only for identities
//! with a running pod on its own node — what limits a compromised node to its own workloads. A
//! waypoint (a pod labelled with the name of a Gateway of class `weft-waypoint` and running as
//! that Gateway's account, as the control plane deploys them) may obtain only its own
//! identity's. Any other caller is refused.
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// One of Weft's proxies, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub kind: CallerKind,
}

/// Which of Weft's proxies a caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// A node proxy: it asks for the identities of its node's pods.
    NodeProxy,
    /// A waypoint: it asks for its own identity only.
    Waypoint,
}

/// Why a caller is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no bearer token")]
    NoToken,
    #[error("token not accepted: {0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("Kubernetes API")]
    Kube(#[from] kube::Error),
}

/// Checks callers against the Kubernetes API.
#[derive(Clone)]
pub struct Authenticator {
    client: kube::Client,
    /// Audience the tokens must be issued for.
    audience: String,
    /// `(namespace, service account)` of the node proxies.
    proxy: (String, String),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("audience", &self.audience).field("proxy", &self.proxy).finish()
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::NoToken | Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::Forbidden(_) => tonic::Status::permission_denied(message),
            Error::Kube(_) => tonic::Status::unavailable(message),
        }
    }
}

impl Authenticator {
    /// Authenticates the bearer token of a gRPC request.
    pub async fn authenticate_request(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, Error> {
        let token = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(Error::NoToken)?;
        self.authenticate(token).await
    }

    pub fn new(client: kube::Client, audience: String, proxy: (String, String)) -> Self {
        Self { client, audience, proxy }
    }

    /// Authenticates `token`: a node proxy's or a waypoint's token, bound to a pod that is on a
    /// node.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Error> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let reviewed =
            Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Error::Unauthenticated(status.error.unwrap_or_else(|| "rejected".into())));
        }
        // The API server checked the audience we asked for; make sure it says so.
        if !status.audiences.unwrap_or_default().contains(&self.audience) {
            return Err(Error::Unauthenticated(format!("token not issued for audience {}", self.audience)));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| Error::Forbidden(format!("{username} is no service account")))?;
        let node_proxy = (namespace, service_account) == (self.proxy.0.as_str(), self.proxy.1.as_str());
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|values| values.first()).cloned();
        let pod_name =
            first(POD_NAME_EXTRA).ok_or_else(|| Error::Forbidden("token is not bound to a pod".into()))?;
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace).get_opt(&pod_name).await?;
        let pod =
            pod.ok_or_else(|| Error::Forbidden(format!("the token's pod {pod_name} does not exist")))?;
        let pod_uid =
            first(POD_UID_EXTRA).ok_or_else(|| Error::Forbidden("token is not bound to a pod".into()))?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(Error::Forbidden(format!("the token's pod {pod_name} was replaced")));
        }
        let waypoint = !node_proxy && self.is_waypoint(&pod, namespace, service_account).await?;
        let kind = match (node_proxy, waypoint) {
            (true, _) => CallerKind::NodeProxy,
            (false, true) => CallerKind::Waypoint,
            (false, false) => {
                let expected = format!("system:serviceaccount:{}:{}", self.proxy.0, self.proxy.1);
                return Err(Error::Forbidden(format!(
                    "{username} is neither the node proxy ({expected}) nor a waypoint's pod"
                )));
            }
        };
        let node = pod
            .spec
            .and_then(|spec| spec.node_name)
            .ok_or_else(|| Error::Forbidden("caller's pod has no node".into()))?;
        Ok(Caller {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            node,
            kind,
        })
    }

    /// Whether `pod` (of `namespace`, running as `service_account`) is a waypoint's: labelled
    /// with the name of a Gateway of class `weft-waypoint` in its namespace, and running as that
    /// Gateway's account, as the control plane deploys waypoints. A label alone proves nothing:
    /// anyone who may create pods may set it.
    async fn is_waypoint(&self, pod: &Pod, namespace: &str, service_account: &str) -> Result<bool, Error> {
        use crate::index::{gateway_api::Gateway, waypoint};
        let label = pod.metadata.labels.as_ref().and_then(|labels| labels.get(waypoint::GATEWAY_NAME_LABEL));
        let Some(gateway) = label.filter(|name| *name == service_account) else { return Ok(false) };
        let found = match Api::<Gateway>::namespaced(self.client.clone(), namespace).get_opt(gateway).await {
            Ok(found) => found,
            // Without the Gateway API's CRDs there are no waypoints.
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(error) => return Err(error.into()),
        };
        Ok(found.is_some_and(|gateway| gateway.spec.gateway_class_name == waypoint::CLASS))
    }

    /// Whether `namespace/service_account` has a running pod on `node` (one shutting down too:
    /// it stays in the mesh until its containers are gone, and a restarted proxy still needs
    /// its certificate).
    pub async fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> Result<bool, Error> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default().fields(&format!("spec.nodeName={node},status.phase=Running")))
            .await?;
        Ok(pods.items.iter().any(|pod| {
            pod.spec.as_ref().and_then(|spec| spec.service_account_name.as_deref()) == Some(service_account)
        }))
    }
}
