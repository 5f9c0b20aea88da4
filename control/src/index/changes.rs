//! What changed from one published snapshot to the next. A snapshot remembers, for its last
//! [`KEPT`] versions, the names of the resources each version added, changed or removed, by
//! type: a stream holding any of those versions sends only what changed since (`xds.rs`), in
//! time proportional to the change rather than to the cluster, and a thousand streams do not
//! each compare fifty thousand resources for one pod's change. Succeeding a snapshot also keeps
//! the resources that did not change (the same `Arc`s), so their encoding is shared across
//! versions as well as streams.
use std::{
    collections::{BTreeSet, VecDeque},
    sync::Arc,
};

use super::{Resources, Snapshot};

/// Versions whose changes a snapshot remembers; a stream further behind compares whole maps.
pub const KEPT: usize = 64;

/// A version that touched more names than this (a root policy, a namespace relabelled) is
/// remembered without them: streams compare whole maps across it, which costs about the same.
const MAX_NAMES: usize = 4096;

/// One version's changes: the names it touched of each type (`None`: too many to keep).
#[derive(Debug)]
struct Change {
    version: u64,
    names: Option<Vec<(&'static str, Vec<String>)>>,
}

/// The changes of the last [`KEPT`] versions, oldest first. Cloned into each next snapshot:
/// the versions are shared.
#[derive(Debug, Default, Clone)]
pub struct History(VecDeque<Arc<Change>>);

impl History {
    /// The names of `type_url`'s resources that versions after `version` touched, up to the
    /// snapshot's own; `None` when they are not all known (older than kept, or too many).
    pub fn since(&self, version: u64, type_url: &str) -> Option<BTreeSet<&str>> {
        let oldest = self.0.front()?.version;
        if version + 1 < oldest {
            return None;
        }
        let mut touched = BTreeSet::new();
        for change in self.0.iter().filter(|change| change.version > version) {
            let names = change.names.as_ref()?;
            for (_, names) in names.iter().filter(|(of, _)| *of == type_url) {
                touched.extend(names.iter().map(String::as_str));
            }
        }
        Some(touched)
    }
}

/// Makes `next` (its version already set) the successor of `current`: where a resource is the
/// same, `next` takes `current`'s (and its encoding); `next.changes` is `current`'s history and
/// what `next` changed.
pub fn succeed(next: &mut Snapshot, current: &Snapshot) {
    if current.version == 0 {
        // Nothing was published before: no stream holds anything to compare with.
        next.changes = History::default();
        return;
    }
    let mut names = Vec::new();
    let mut total = 0;
    for (type_url, resources) in next.served_mut() {
        let before = current.of_type(type_url).expect("a type this snapshot serves");
        let touched = share_unchanged(resources, before);
        total += touched.len();
        if !touched.is_empty() {
            names.push((type_url, touched));
        }
    }
    let mut history = current.changes.clone();
    history
        .0
        .push_back(Arc::new(Change { version: next.version, names: (total <= MAX_NAMES).then_some(names) }));
    while history.0.len() > KEPT {
        history.0.pop_front();
    }
    next.changes = history;
}

/// Replaces each resource of `resources` that `before` has unchanged by `before`'s; returns the
/// names added, changed or removed.
fn share_unchanged(resources: &mut Resources, before: &Resources) -> Vec<String> {
    let mut touched = Vec::new();
    for (name, resource) in resources.iter_mut() {
        match before.get(name) {
            Some(kept) if kept == resource => *resource = kept.clone(),
            _ => touched.push(name.clone()),
        }
    }
    touched.extend(before.keys().filter(|name| !resources.contains_key(*name)).cloned());
    touched
}

/// A snapshot of `addresses` (name, content; each resource's version `v-<content>`), for the
/// tests of what streams make of snapshots.
#[cfg(test)]
pub(crate) fn snapshot(version: u64, addresses: &[(&str, &str)]) -> Snapshot {
    let resource = |value: &str| {
        let body =
            prost_types::Any { type_url: weft_api::workload::ADDRESS_TYPE.into(), value: value.into() };
        Arc::new(super::Resource::new(format!("v-{value}"), body))
    };
    Snapshot {
        version,
        addresses: addresses.iter().map(|(name, value)| (name.to_string(), resource(value))).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: &str = weft_api::workload::ADDRESS_TYPE;

    #[test]
    fn a_successor_shares_what_did_not_change_and_names_what_did() {
        let first = snapshot(1, &[("a", "1"), ("b", "1"), ("c", "1")]);
        let mut second = snapshot(2, &[("a", "1"), ("b", "2"), ("d", "1")]);
        succeed(&mut second, &first);
        assert!(Arc::ptr_eq(&second.addresses["a"], &first.addresses["a"]));
        assert!(!Arc::ptr_eq(&second.addresses["b"], &first.addresses["b"]));
        assert_eq!(second.changes.since(1, ADDRESS), Some(["b", "c", "d"].into()));
        assert_eq!(second.changes.since(2, ADDRESS), Some(BTreeSet::new()));
        assert_eq!(second.changes.since(1, weft_api::security::AUTHORIZATION_TYPE), Some(BTreeSet::new()));

        let mut third = snapshot(3, &[("a", "3"), ("b", "2"), ("d", "1")]);
        succeed(&mut third, &second);
        assert_eq!(third.changes.since(1, ADDRESS), Some(["a", "b", "c", "d"].into()));
        assert_eq!(third.changes.since(2, ADDRESS), Some(["a"].into()));
    }

    #[test]
    fn versions_older_than_kept_or_too_large_are_not_answered() {
        let mut current = snapshot(1, &[("a", "0")]);
        for version in 2..=(KEPT as u64 + 2) {
            let mut next = snapshot(version, &[("a", &version.to_string())]);
            succeed(&mut next, &current);
            current = next;
        }
        let newest = current.version;
        assert_eq!(current.changes.since(newest - KEPT as u64, ADDRESS), Some(["a"].into()));
        assert_eq!(current.changes.since(newest - KEPT as u64 - 1, ADDRESS), None);

        let many: Vec<String> = (0..=MAX_NAMES).map(|i| i.to_string()).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|name| (name.as_str(), "x")).collect();
        let mut large = snapshot(newest + 1, &many);
        succeed(&mut large, &current);
        assert_eq!(large.changes.since(newest, ADDRESS), None);
        let mut after = snapshot(newest + 2, &many);
        succeed(&mut after, &large);
        assert_eq!(after.changes.since(newest + 1, ADDRESS), Some(BTreeSet::new()));
    }
}
