//! Kubernetes watches as the agent and the control plane use them (feature `kubernetes`): a
//! reflector keeps a store current and pokes one coalescing channel on every event, so a single
//! level-triggered loop recomputes from the stores.
use std::time::Duration;

use futures::StreamExt;
use kube::{
    Api,
    runtime::{reflector, watcher},
};
use tokio::{sync::mpsc, task::JoinSet};

/// Pause after a failed watch request before the reflector retries.
const RETRY: Duration = Duration::from_secs(1);

/// What a reflector can keep: an object of a static Kubernetes type.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Starts a reflector for `api` (in `watchers`) whose every event pokes `changed`; returns its
/// store.
pub fn reflect<K: Watched>(
    watchers: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changed: mpsc::Sender<()>,
) -> reflector::Store<K> {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config));
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
