//! Kubernetes watches as the agent and the control plane use them (feature `kubernetes`): a
//! reflector keeps a store current and pokes one coalescing channel on every event, so a single
//! level-triggered loop recomputes from the stores; a reflector may also say which objects
//! changed ([`reflect_touched`]), for a loop that redoes only what they touch.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api,
    runtime::{
        reflector::{self, ObjectRef},
        watcher,
    },
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
    start(watchers, api, config, changed, None, None)
}

/// [`reflect`], and the objects that changed since they were last taken.
pub fn reflect_touched<K: Watched>(
    watchers: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changed: mpsc::Sender<()>,
) -> (reflector::Store<K>, Touched<K>) {
    let touched = Touched::new();
    (start(watchers, api, config, changed, None, Some(touched.clone())), touched)
}

/// The objects a reflector saw change (in its store) since they were last taken.
#[derive(Debug)]
pub struct Touched<K: kube::Resource<DynamicType = ()>>(Arc<Mutex<Pending<K>>>);

impl<K: kube::Resource<DynamicType = ()>> Clone for Touched<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[derive(Debug)]
struct Pending<K: kube::Resource<DynamicType = ()>> {
    /// The store was filled from a list since the last take: any object may have changed.
    listed: bool,
    /// A list has ended and is being swapped into the store: a take may already see the new
    /// store.
    swapping: bool,
    objects: HashSet<ObjectRef<K>>,
}

/// What changed in a store since the last take.
#[derive(Debug, PartialEq)]
pub enum Taken<K: kube::Resource<DynamicType = ()>> {
    /// It was (re)listed: anything may have.
    Listed,
    /// These objects (each added, changed or deleted).
    Objects(Vec<ObjectRef<K>>),
}

impl<K: kube::Resource<DynamicType = ()>> Touched<K> {
    /// Nothing taken yet: the first take is the store's first list.
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Pending { listed: true, swapping: false, objects: HashSet::new() })))
    }

    /// What changed since the last take (at first, the list that filled the store). Take it
    /// before reading the store: a change after the take is in the next one as well.
    pub fn take(&self) -> Taken<K> {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let objects = std::mem::take(&mut pending.objects);
        if std::mem::replace(&mut pending.listed, false) || pending.swapping {
            Taken::Listed
        } else {
            Taken::Objects(objects.into_iter().collect())
        }
    }

    fn record(&self, object: &K) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pending.objects.insert(ObjectRef::from_obj(object));
    }

    fn swapping(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).swapping = true;
    }

    fn swapped(&self) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pending.swapping = false;
        pending.listed = true;
        pending.objects.clear();
    }
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
    start(watchers, api, config, changed, Some(matters), None)
}

/// The reflector: every event pokes, but a changed object's only when `matters` of it changed.
fn start<K: Watched>(
    watchers: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    changed: mpsc::Sender<()>,
    matters: Option<fn(&K) -> u64>,
    touched: Option<Touched<K>>,
) -> reflector::Store<K> {
    let (store, writer) = reflector::store();
    let swapping = touched.clone();
    // A list's end is heard before the reflector swaps it into the store (it applies each event
    // as it passes it on), so no take can see the new store as anything but listed.
    let events = watcher::watcher(api, config).inspect(move |event| {
        if let (Some(touched), Ok(watcher::Event::InitDone)) = (&swapping, event) {
            touched.swapping();
        }
    });
    let stream = reflector::reflector(writer, events);
    watchers.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // What mattered of each object when it was last seen, by uid (else name).
        let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        while let Some(event) = stream.next().await {
            // The reflector has applied the event to the store by now.
            if let Some(touched) = &touched {
                match &event {
                    Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                        touched.record(object)
                    }
                    Ok(watcher::Event::InitDone) => touched.swapped(),
                    // A list fills the store all at once, at its end: until then, the store is
                    // the one before it.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => {}
                }
            }
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn named(name: &str) -> ConfigMap {
        let metadata = kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            ..Default::default()
        };
        ConfigMap { metadata, ..Default::default() }
    }

    #[test]
    fn a_take_names_what_changed_and_a_list_reads_as_listed_from_its_swap_to_the_take_after() {
        let touched = Touched::<ConfigMap>::new();
        assert_eq!(touched.take(), Taken::Listed, "the first list");
        touched.record(&named("a"));
        touched.record(&named("a"));
        assert_eq!(touched.take(), Taken::Objects(vec![ObjectRef::from_obj(&named("a"))]));
        assert_eq!(touched.take(), Taken::Objects(Vec::new()));
        touched.swapping();
        assert_eq!(touched.take(), Taken::Listed, "the store may already hold the new list");
        assert_eq!(touched.take(), Taken::Listed, "until the reflector has passed its end on");
        touched.record(&named("b"));
        touched.swapped();
        assert_eq!(touched.take(), Taken::Listed, "the take after the swap");
        assert_eq!(touched.take(), Taken::Objects(Vec::new()));
    }
}
