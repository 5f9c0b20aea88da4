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
    start(watchers, api, config, changed, None)
}

/// [`reflect`], but an object that changed pokes `changed` only when `matters` of it changed
/// (one coming or going always does): a Node's labels, not its status reports.
pub fn reflect_when<K: Watched>(
    watchers: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changed: mpsc::Sender<()>,
    matters: fn(&K) -> u64,
) -> reflector::Store<K> {
    start(watchers, api, config, changed, Some(matters))
}

/// The reflector: every event pokes, but a changed object's only when `matters` of it changed.
fn start<K: Watched>(
    watchers: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changed: mpsc::Sender<()>,
    matters: Option<fn(&K) -> u64>,
) -> reflector::Store<K> {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config));
    watchers.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // What mattered of each object when it was last seen, by uid (else name).
        let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        while let Some(event) = stream.next().await {
            let poke = match &event {
                Err(error) => {
                    tracing::warn!(%error, "Kubernetes watch error; retrying");
                    tokio::time::sleep(RETRY).await;
                    true
                }
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => match matters {
                    None => true,
                    Some(matters) => {
                        let meta = kube::Resource::meta(object);
                        let id = meta.uid.clone().or_else(|| meta.name.clone()).unwrap_or_default();
                        let now = matters(object);
                        seen.insert(id, now) != Some(now)
                    }
                },
                Ok(watcher::Event::Delete(object)) => {
                    let meta = kube::Resource::meta(object);
                    seen.remove(meta.uid.as_ref().or(meta.name.as_ref()).map_or("", String::as_str));
                    true
                }
                // A new list: whatever it holds is seen anew (and what it lacks forgotten).
                Ok(watcher::Event::Init) => {
                    seen.clear();
                    true
                }
                Ok(watcher::Event::InitDone) => true,
            };
            // Coalesce: one pending poke is enough.
            if poke {
                let _ = changed.try_send(());
            }
        }
    });
    store
}
