//! At shutdown, whether Weft is being removed (`kubectl delete -k manifests/`: the agent's
//! namespace is terminating or gone, or its DaemonSet is) or only restarted or updated (a rolling
//! update: the DaemonSet stays). Removal returns every enrolled pod to plain networking, with
//! no restarts; anything else keeps capture pinned, so pods stay in the mesh while the next
//! agent starts. When the API cannot tell, capture stays (fail closed).
//!
//! What the agent's namespace watch already saw decides first: `kubectl delete -k` deletes the
//! namespace and then, at once, the agent's ServiceAccount and RBAC, all before the kubelet
//! stops the agent, so by then the API refuses to answer it (403).
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api,
    runtime::reflector::{ObjectRef, Store},
};

/// Where the agent's own pod is: from the downward API in the manifests.
#[derive(Debug, Clone)]
pub struct OwnPod {
    pub namespace: String,
    pub name: String,
}

/// Whether Weft is being removed from the node, as the agent's synced watch of `namespaces`
/// saw it or, failing that, as the API says now.
pub async fn weft_removed(
    client: &kube::Client,
    own: &OwnPod,
    namespaces: &Store<Namespace>,
) -> Result<bool, kube::Error> {
    if leaving(namespaces.get(&ObjectRef::new(&own.namespace)).as_deref()) {
        return Ok(true);
    }
    if leaving(Api::<Namespace>::all(client.clone()).get_opt(&own.namespace).await?.as_ref()) {
        return Ok(true);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &own.namespace);
    let Some(pod) = pods.get_opt(&own.name).await? else { return Ok(false) };
    let owners = pod.metadata.owner_references.unwrap_or_default();
    let Some(owner) = owners.iter().find(|owner| owner.controller == Some(true) && owner.kind == "DaemonSet")
    else {
        return Ok(false);
    };
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &own.namespace);
    Ok(match daemon_sets.get_opt(&owner.name).await? {
        None => true,
        // Deleted, or deleted and made again under the same name: not the one that made us.
        Some(daemon_set) => {
            daemon_set.metadata.deletion_timestamp.is_some()
                || daemon_set.metadata.uid.as_deref() != Some(&owner.uid)
        }
    })
}

/// Whether the agent's namespace is gone or terminating.
fn leaving(namespace: Option<&Namespace>) -> bool {
    namespace.is_none_or(|namespace| namespace.metadata.deletion_timestamp.is_some())
}
