//! Which pods are in the mesh, one rule for the agent (which captures them) and the control plane
//! (which tells proxies to tunnel to them): a namespace or pod labelled
//! `weft.dev/dataplane-mode=ambient` is in the mesh, a pod labelled `none` opts out — Istio
//! ambient's rule, with Weft's label — and only while the pod is [`PodState::capturable`]. The
//! agent annotates a pod it has captured ([`CAPTURED`], Istio's `ambient.istio.io/redirection`
//! with Weft's name) and proxies tunnel only to pods so annotated ([`captured`]), so a labelled
//! pod its agent could not capture stays reachable, in plaintext.
use std::collections::BTreeMap;

/// The label that enrolls a namespace or pod.
pub const LABEL: &str = "weft.dev/dataplane-mode";
/// Its value that enrolls.
pub const AMBIENT: &str = "ambient";
/// Its value, on a pod, that opts out.
pub const NONE: &str = "none";

/// The annotation the agent sets on a pod once its capture is on, and removes when it is off.
pub const CAPTURED: &str = "weft.dev/redirection";
/// Its value.
pub const ENABLED: &str = "enabled";

/// Whether a pod's annotations say its node's agent captured it.
pub fn captured(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations.and_then(|annotations| annotations.get(CAPTURED)).is_some_and(|value| value == ENABLED)
}

/// Whether labels enroll a pod: the pod's own label decides, else its namespace's.
pub fn labelled(
    pod: Option<&BTreeMap<String, String>>,
    namespace: Option<&BTreeMap<String, String>>,
) -> bool {
    match mode(pod) {
        Some(NONE) => false,
        Some(AMBIENT) => true,
        _ => mode(namespace) == Some(AMBIENT),
    }
}

/// What decides, besides labels, whether a pod can be captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodState {
    pub running: bool,
    pub has_address: bool,
    pub host_network: bool,
}

impl PodState {
    /// A Pod object's state.
    #[cfg(feature = "kubernetes")]
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        let status = pod.status.as_ref();
        Self {
            running: status.and_then(|status| status.phase.as_deref()) == Some("Running"),
            has_address: status.and_then(|status| status.pod_ip.as_ref()).is_some(),
            host_network: pod.spec.as_ref().and_then(|spec| spec.host_network).unwrap_or(false),
        }
    }

    /// Running with an address, not sharing the node's network. A pod being deleted is still
    /// running while its containers shut down: it stays in the mesh until they are gone (its
    /// phase ends or its object goes), so its last connections are neither sent in plaintext
    /// nor refused by STRICT peers.
    pub fn capturable(&self) -> bool {
        self.running && self.has_address && !self.host_network
    }
}

fn mode(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    labels.and_then(|labels| labels.get(LABEL)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(value: Option<&str>) -> Option<BTreeMap<String, String>> {
        value.map(|value| [(LABEL.to_owned(), value.to_owned())].into())
    }

    #[test]
    fn the_namespace_label_enrolls_and_the_pod_label_decides_last() {
        let ambient = labels(Some(AMBIENT));
        assert!(labelled(None, ambient.as_ref()));
        assert!(!labelled(None, None));
        assert!(!labelled(labels(Some(NONE)).as_ref(), ambient.as_ref()), "opt-out wins");
        assert!(labelled(ambient.as_ref(), None), "a pod may opt in alone");
        assert!(!labelled(labels(Some("sidecar")).as_ref(), None));
    }

    #[test]
    fn only_running_addressed_pods_off_the_host_network_are_capturable() {
        let running = PodState { running: true, has_address: true, host_network: false };
        assert!(running.capturable());
        assert!(!PodState { running: false, ..running }.capturable());
        assert!(!PodState { has_address: false, ..running }.capturable());
        assert!(!PodState { host_network: true, ..running }.capturable());
    }
}
