//! The enrollment label, shared by the agent (which captures enrolled pods) and the control
//! plane (which tells proxies to tunnel to them): a namespace or pod labelled
//! `weft.dev/dataplane-mode=ambient` is in the mesh, a pod labelled `none` opts out — Istio
//! ambient's rule, with Weft's label.
use std::collections::BTreeMap;

/// The label that enrolls a namespace or pod.
pub const LABEL: &str = "weft.dev/dataplane-mode";
/// Its value that enrolls.
pub const AMBIENT: &str = "ambient";
/// Its value, on a pod, that opts out.
pub const NONE: &str = "none";

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
}
