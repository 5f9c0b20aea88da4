//! Which pods this node captures: `weft_api::enrollment`'s rule applied to Pod objects.
use k8s_openapi::api::core::v1::{Namespace, Pod};
use weft_api::enrollment::{Labels, PodState};

/// Whether `pod` carries the annotation (of `labels`) that says its agent captured it.
pub fn annotated(pod: &Pod, labels: Labels) -> bool {
    labels.captured(pod.metadata.annotations.as_ref())
}

/// Whether `pod` (in `namespace`, if known) belongs in the mesh now, by `labels`.
pub fn wanted(pod: &Pod, namespace: Option<&Namespace>, labels: Labels) -> bool {
    if !labels.labelled(pod.metadata.labels.as_ref(), namespace.and_then(|ns| ns.metadata.labels.as_ref())) {
        return false;
    }
    PodState::of(pod).capturable()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;
    use weft_api::enrollment::{AMBIENT, LABEL};

    use super::*;

    fn namespace(label: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                labels: label.map(|value| [(LABEL.to_owned(), value.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pod(label: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: label.map(|value| [(LABEL.to_owned(), value.to_owned())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.244.0.10".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn host_network_pending_and_addressless_pods_are_never_enrolled_and_terminating_ones_stay() {
        let ns = namespace(Some(AMBIENT));
        let mut host = pod(None);
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert!(!wanted(&host, Some(&ns), Labels::Weft));
        let mut pending = pod(None);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert!(!wanted(&pending, Some(&ns), Labels::Weft));
        let mut no_ip = pod(None);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        assert!(!wanted(&no_ip, Some(&ns), Labels::Weft));
        let mut deleting = pod(None);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(
            wanted(&deleting, Some(&ns), Labels::Weft),
            "a pod shutting down stays until its containers are gone"
        );
        deleting.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!wanted(&deleting, Some(&ns), Labels::Weft), "its containers are gone");
        assert!(wanted(&pod(None), Some(&ns), Labels::Weft), "the same pod running, with an address, is");
    }
}
