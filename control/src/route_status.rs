//! Reports on every HTTPRoute, GRPCRoute and TCPRoute attached to a Service what the control
//! plane made of it, in its
//! status as the Gateway API asks (GAMMA): per Service parent, `Accepted` (applied there, or why
//! not: no such Service or port, another namespace, no waypoint yet, a TCPRoute's ports all
//! taken by HTTP routes — `Conflicted`), `ResolvedRefs` (every
//! backend usable, or the first reason one is not) and, when rules were left out,
//! `PartiallyInvalid` — so `kubectl get httproute -o yaml` says why a route does nothing.
//! Other controllers' entries are left as they are; a route attached to no Service any more
//! loses Weft's. Level-triggered: every new snapshot and a periodic tick rewrite what differs.
use std::{collections::HashSet, sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::index::{RouteKind, RouteStatus, Snapshot, Verdict};

/// The `controllerName` of Weft's entries in a route's `status.parents`.
pub const CONTROLLER: &str = "weft.dev/mesh-controller";
/// How often every route's status is checked, whatever changed (another writer may have
/// overwritten it).
const TICK: Duration = Duration::from_secs(30);
/// Conditions' messages are cut here: a route with many problems stays readable.
const MAX_MESSAGE: usize = 1024;

/// Writes route statuses from each new snapshot until the snapshots end; a route that fails is
/// logged and retried at the next change or tick, and costs the others nothing.
pub async fn run(client: kube::Client, mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>) {
    let mut reported = HashSet::new();
    let mut ticked = true;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        // Before the index's first snapshot there is nothing to say: sweeping then would strip
        // every route's status at each restart, to be written again moments later.
        if snapshot.version == 0 {
            if snapshots.changed().await.is_err() {
                return;
            }
            continue;
        }
        for route in &snapshot.mesh_routes {
            if let Err(error) = report(&client, route).await {
                tracing::warn!(kind = route.kind.kind(), namespace = %route.namespace, name = %route.name, %error, "route status not written");
            }
        }
        let now: HashSet<RouteKey> = snapshot.mesh_routes.iter().map(RouteKey::of).collect();
        // A route no longer attached to any Service keeps no entry of Weft's: swept when one
        // left, and at every tick (after a restart, nothing says which left meanwhile).
        if ticked || reported.difference(&now).next().is_some() {
            for kind in RouteKind::ALL {
                if let Err(error) = sweep(&client, kind, &now).await {
                    tracing::warn!(kind = kind.kind(), %error, "stale route statuses not removed");
                }
            }
        }
        reported = now;
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() { return }
                ticked = false;
            }
            () = tokio::time::sleep(TICK) => ticked = true,
        }
    }
}

/// A route, by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey(RouteKind, String, String);

impl RouteKey {
    fn of(route: &RouteStatus) -> Self {
        Self(route.kind, route.namespace.clone(), route.name.clone())
    }
}

fn routes(client: &kube::Client, kind: RouteKind, namespace: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind.kind());
    let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural());
    match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Removes Weft's entries from every route of `kind` that is not one of `current` (attached to
/// no Service any more), leaving other controllers' entries.
async fn sweep(
    client: &kube::Client,
    kind: RouteKind,
    current: &HashSet<RouteKey>,
) -> Result<(), kube::Error> {
    let listed = match routes(client, kind, None).list(&ListParams::default()).await {
        Ok(listed) => listed,
        // The CRD is not installed: nothing to sweep.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(error) => return Err(error),
    };
    for route in listed.items {
        let (Some(namespace), Some(name)) =
            (route.metadata.namespace.as_deref(), route.metadata.name.as_deref())
        else {
            continue;
        };
        if current.contains(&RouteKey(kind, namespace.to_owned(), name.to_owned())) {
            continue;
        }
        let existing = route.data["status"]["parents"].as_array().cloned().unwrap_or_default();
        let others = without_ours(&existing);
        if others.len() == existing.len() {
            continue;
        }
        tracing::info!(
            kind = kind.kind(),
            namespace,
            name,
            "attached to no Service any more: Weft's status entries removed"
        );
        routes(client, kind, Some(namespace))
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "parents": others } })),
            )
            .await?;
    }
    Ok(())
}

/// `existing` without Weft's entries.
fn without_ours(existing: &[Value]) -> Vec<Value> {
    existing.iter().filter(|entry| entry["controllerName"] != CONTROLLER).cloned().collect()
}

/// Writes `route`'s entries, unless they are already there.
async fn report(client: &kube::Client, route: &RouteStatus) -> Result<(), kube::Error> {
    let api = routes(client, route.kind, Some(&route.namespace));
    let current = match api.get(&route.name).await {
        Ok(current) => current,
        // Deleted since the snapshot: nothing to report on.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(error) => return Err(error),
    };
    let existing = current.data["status"]["parents"].as_array().cloned().unwrap_or_default();
    let parents = parents(route, &existing);
    if parents == existing {
        return Ok(());
    }
    api.patch_status(
        &route.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "parents": parents } })),
    )
    .await?;
    Ok(())
}

/// `existing` with Weft's entries made what `route` says: one per Service parent, each
/// condition keeping its transition time while its status stays.
pub fn parents(route: &RouteStatus, existing: &[Value]) -> Vec<Value> {
    let ours = |entry: &&Value| entry["controllerName"] == CONTROLLER;
    let mut parents = without_ours(existing);
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or_default();
    for parent in &route.parents {
        let parent_ref = serde_json::to_value(&parent.parent_ref).unwrap_or_default();
        let before: Vec<Value> = existing
            .iter()
            .filter(ours)
            .find(|entry| entry["parentRef"] == parent_ref)
            .and_then(|entry| entry["conditions"].as_array().cloned())
            .unwrap_or_default();
        let condition =
            |type_: &str, verdict: &Verdict| condition(type_, verdict, &before, route.generation, &now);
        let mut conditions =
            vec![condition("Accepted", &parent.accepted), condition("ResolvedRefs", &route.resolved_refs)];
        if let Some(why) = &route.partially_invalid {
            conditions.push(condition("PartiallyInvalid", &Verdict::yes("UnsupportedValue", why.clone())));
        }
        parents
            .push(json!({ "parentRef": parent_ref, "controllerName": CONTROLLER, "conditions": conditions }));
    }
    parents
}

/// Condition `type_` as `verdict` says, about `generation`; it keeps its transition time from
/// `before` (the object's conditions as they are) while its status stays, else it changed `now`.
pub fn condition(
    type_: &str,
    verdict: &Verdict,
    before: &[Value],
    generation: Option<i64>,
    now: &Value,
) -> Value {
    let status = if verdict.status { "True" } else { "False" };
    let since = before
        .iter()
        .find(|old| old["type"] == type_ && old["status"] == status)
        .map_or_else(|| now.clone(), |old| old["lastTransitionTime"].clone());
    let mut message = verdict.message.clone();
    if message.len() > MAX_MESSAGE {
        let cut = (0..=MAX_MESSAGE).rev().find(|at| message.is_char_boundary(*at)).unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    json!({
        "type": type_,
        "status": status,
        "reason": verdict.reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
