//! Keeps the [`Snapshot`] current: reflectors on namespaces, pods and services; every change
//! rebuilds the snapshot and, when the resources differ, publishes it with the next version.
//! Nothing is published until every reflector has listed once, so a (re)started control plane
//! never serves a partial mesh that would make proxies drop workloads.
use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::{
    Api,
    runtime::{reflector, watcher},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{Naming, Snapshot, build};

/// Pause after a failed watch request before the reflector retries.
const RETRY: Duration = Duration::from_secs(1);

/// Runs until a watch ends for good; `publish` holds the latest snapshot (version 0 = none yet).
pub async fn run(
    client: kube::Client,
    naming: Naming,
    publish: watch::Sender<Arc<Snapshot>>,
) -> anyhow::Result<()> {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let mut watchers = JoinSet::new();
    let namespaces = reflect(&mut watchers, Api::<Namespace>::all(client.clone()), changed_tx.clone());
    let pods = reflect(&mut watchers, Api::<Pod>::all(client.clone()), changed_tx.clone());
    let services = reflect(&mut watchers, Api::<Service>::all(client), changed_tx);
    namespaces.wait_until_ready().await?;
    pods.wait_until_ready().await?;
    services.wait_until_ready().await?;
    tracing::info!("Kubernetes index synced");
    loop {
        let (namespaces, pods, services) = (namespaces.state(), pods.state(), services.state());
        let mut next = build(
            &naming,
            namespaces.iter().map(AsRef::as_ref),
            pods.iter().map(AsRef::as_ref),
            services.iter().map(AsRef::as_ref),
        );
        publish.send_if_modified(|current| {
            if current.version > 0 && current.same_resources(&next) {
                return false;
            }
            next.version = current.version + 1;
            tracing::debug!(version = next.version, resources = next.addresses.len(), "publishing");
            *current = Arc::new(std::mem::take(&mut next));
            true
        });
        tokio::select! {
            Some(()) = changed.recv() => {}
            Some(ended) = watchers.join_next() => anyhow::bail!("a Kubernetes watch ended: {ended:?}"),
        }
    }
}

/// Starts a reflector for `api` whose every event pokes `changed`; returns its store.
fn reflect<K>(watchers: &mut JoinSet<()>, api: Api<K>, changed: mpsc::Sender<()>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()));
    watchers.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, "Kubernetes watch error; retrying");
                tokio::time::sleep(RETRY).await;
            }
            // Coalesce: one pending poke is enough.
            let _ = changed.try_send(());
        }
    });
    store
}
