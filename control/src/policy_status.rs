//! Reports on every traffic policy (`networking.weft.dev`) what the control plane made of it,
//! in its status as Gateway API policy attachment does (GEP-713): `status.ancestors`, one entry
//! per target with its `Accepted` condition (applied by a waypoint, or why not: no such target,
//! no waypoint in front of it, an older policy of the kind holding it — `Conflicted` —, or the
//! policy itself invalid), so `kubectl get faultinjectionpolicy -o yaml` says why it does
//! nothing. The CRDs are Weft's own: their status is all Weft's. Level-triggered like
//! [`crate::route_status`]: every new snapshot and a periodic tick rewrite what differs.
use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::{
    index::{
        Snapshot,
        traffic::{GROUP, TrafficPolicyStatus, VERSION},
    },
    route_status::{CONTROLLER, condition},
};

/// How often every policy's status is checked, whatever changed.
const TICK: Duration = Duration::from_secs(30);

/// Writes policy statuses from each new snapshot until the snapshots end; a policy that fails
/// is logged and retried at the next change or tick, and costs the others nothing.
pub async fn run(client: kube::Client, mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.version > 0 {
            for policy in &snapshot.traffic_policies {
                if let Err(error) = report(&client, policy).await {
                    tracing::warn!(kind = policy.kind.kind(), namespace = %policy.namespace, name = %policy.name, %error, "policy status not written");
                }
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Writes `policy`'s status, unless it says that already.
async fn report(client: &kube::Client, policy: &TrafficPolicyStatus) -> Result<(), kube::Error> {
    let gvk = GroupVersionKind::gvk(GROUP, VERSION, policy.kind.kind());
    let resource = ApiResource::from_gvk_with_plural(&gvk, policy.kind.plural());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &policy.namespace, &resource);
    let current = match api.get(&policy.name).await {
        Ok(current) => current,
        // Deleted since the snapshot: nothing to report on.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(error) => return Err(error),
    };
    let existing = current.data["status"]["ancestors"].as_array().cloned().unwrap_or_default();
    let ancestors = ancestors(policy, &existing);
    if ancestors == existing {
        return Ok(());
    }
    api.patch_status(
        &policy.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "ancestors": ancestors } })),
    )
    .await?;
    Ok(())
}

/// The entries `policy`'s status should hold: one per target, its condition keeping its
/// transition time from `existing` while its status stays.
pub fn ancestors(policy: &TrafficPolicyStatus, existing: &[Value]) -> Vec<Value> {
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or_default();
    policy
        .targets
        .iter()
        .map(|(target, verdict)| {
            let ancestor_ref = json!({
                "group": target.group,
                "kind": target.kind,
                "namespace": policy.namespace,
                "name": target.name,
            });
            let before: Vec<Value> = existing
                .iter()
                .find(|entry| entry["ancestorRef"] == ancestor_ref)
                .and_then(|entry| entry["conditions"].as_array().cloned())
                .unwrap_or_default();
            let accepted = condition("Accepted", verdict, &before, policy.generation, &now);
            json!({ "ancestorRef": ancestor_ref, "controllerName": CONTROLLER, "conditions": [accepted] })
        })
        .collect()
}
