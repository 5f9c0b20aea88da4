//! Which pods are in the mesh, one rule for the agent (which captures them) and the control plane
//! (which tells proxies to tunnel to them): a namespace or pod labelled
//! `weft.dev/dataplane-mode=ambient` is in the mesh, a pod labelled `none` opts out — Istio
//! ambient's rule, with Weft's label — and only while the pod is [`PodState::capturable`]. The
//! agent annotates a pod it has captured ([`CAPTURED`], Istio's `ambient.istio.io/redirection`
//! with Weft's name) and proxies tunnel only to pods so annotated ([`Labels::captured`]), so a labelled
//! pod its agent could not capture stays reachable, in plaintext. With [`Labels::Istio`] the same
//! rule reads and writes Istio ambient's own label and annotation, so Weft's node side can take
//! over namespaces labelled for Istio, and run under istiod (which tunnels only to pods Istio's
//! annotation marks).
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

/// Istio ambient's label and annotation, for [`Labels::Istio`] (same values).
pub const ISTIO_LABEL: &str = "istio.io/dataplane-mode";
pub const ISTIO_CAPTURED: &str = "ambient.istio.io/redirection";

/// Whose label enrolls pods and whose annotation says they are captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Labels {
    /// [`LABEL`] and [`CAPTURED`].
    #[default]
    Weft,
    /// [`ISTIO_LABEL`] and [`ISTIO_CAPTURED`].
    Istio,
}

impl Labels {
    /// The label that enrolls a namespace or pod.
    pub fn label(self) -> &'static str {
        match self {
            Self::Weft => LABEL,
            Self::Istio => ISTIO_LABEL,
        }
    }

    /// The annotation the agent sets on a pod it captured.
    pub fn captured_annotation(self) -> &'static str {
        match self {
            Self::Weft => CAPTURED,
            Self::Istio => ISTIO_CAPTURED,
        }
    }

    /// Whether a pod's annotations say its node's agent captured it.
    pub fn captured(self, annotations: Option<&BTreeMap<String, String>>) -> bool {
        annotations
            .and_then(|annotations| annotations.get(self.captured_annotation()))
            .is_some_and(|value| value == ENABLED)
    }

    /// Whether labels enroll a pod: the pod's own label decides, else its namespace's.
    pub fn labelled(
        self,
        pod: Option<&BTreeMap<String, String>>,
        namespace: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match mode(pod, self.label()) {
            Some(NONE) => false,
            Some(AMBIENT) => true,
            _ => mode(namespace, self.label()) == Some(AMBIENT),
        }
    }
}

/// The value of `label` among `labels`.
fn mode<'a>(labels: Option<&'a BTreeMap<String, String>>, label: &str) -> Option<&'a str> {
    labels.and_then(|labels| labels.get(label)).map(String::as_str)
}

impl std::str::FromStr for Labels {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "weft" => Ok(Self::Weft),
            "istio" => Ok(Self::Istio),
            other => Err(format!("labels {other:?}: expected weft or istio")),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(key: &str, value: Option<&str>) -> Option<BTreeMap<String, String>> {
        value.map(|value| [(key.to_owned(), value.to_owned())].into())
    }

    #[test]
    fn the_namespace_label_enrolls_and_the_pod_label_decides_last() {
        for scheme in [Labels::Weft, Labels::Istio] {
            let labels = |value| labels(scheme.label(), value);
            let ambient = labels(Some(AMBIENT));
            assert!(scheme.labelled(None, ambient.as_ref()));
            assert!(!scheme.labelled(None, None));
            assert!(!scheme.labelled(labels(Some(NONE)).as_ref(), ambient.as_ref()), "opt-out wins");
            assert!(scheme.labelled(ambient.as_ref(), None), "a pod may opt in alone");
            assert!(!scheme.labelled(labels(Some("sidecar")).as_ref(), None));
        }
    }

    #[test]
    fn each_scheme_reads_only_its_own_label_and_annotation() {
        let istio = labels(ISTIO_LABEL, Some(AMBIENT));
        assert!(Labels::Istio.labelled(None, istio.as_ref()));
        assert!(!Labels::Weft.labelled(None, istio.as_ref()), "Weft's default ignores Istio's label");
        let marked = labels(ISTIO_CAPTURED, Some(ENABLED));
        assert!(Labels::Istio.captured(marked.as_ref()));
        assert!(!Labels::Weft.captured(marked.as_ref()));
        assert_eq!("istio".parse::<Labels>(), Ok(Labels::Istio));
        assert!("ISTIO".parse::<Labels>().is_err());
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
