//! Who is asking for a certificate, and may they have it. The caller is a node proxy that
//! authenticates with its service-account token, bound to its own pod; the API server's
//! TokenReview vouches for the token (and its audience), and the pod it is bound to says which
//! node the caller runs on. A node proxy may obtain certificates only for identities with a
//! running pod on its own node — what limits a compromised node to its own workloads.
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

/// A node proxy, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub node: String,
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

    /// Authenticates `token`: a node proxy's token, bound to a pod that is on a node.
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
        let expected = format!("system:serviceaccount:{}:{}", self.proxy.0, self.proxy.1);
        if username != expected {
            return Err(Error::Forbidden(format!("{username} is not the node proxy ({expected})")));
        }
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|values| values.first()).cloned();
        let pod_name =
            first(POD_NAME_EXTRA).ok_or_else(|| Error::Forbidden("token is not bound to a pod".into()))?;
        let pod = Api::<Pod>::namespaced(self.client.clone(), &self.proxy.0).get_opt(&pod_name).await?;
        let pod =
            pod.ok_or_else(|| Error::Forbidden(format!("the token's pod {pod_name} does not exist")))?;
        let pod_uid =
            first(POD_UID_EXTRA).ok_or_else(|| Error::Forbidden("token is not bound to a pod".into()))?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(Error::Forbidden(format!("the token's pod {pod_name} was replaced")));
        }
        let node = pod
            .spec
            .and_then(|spec| spec.node_name)
            .ok_or_else(|| Error::Forbidden("caller's pod has no node".into()))?;
        Ok(Caller { namespace: self.proxy.0.clone(), service_account: self.proxy.1.clone(), node })
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
