//! One proxy's subscription to one resource type: what it asked for, what it holds as far as
//! our responses go, and the responses it has not answered yet (to undo one it rejects).
//!
//! A wildcard subscriber, once answered, holds exactly the resources of the snapshot it was
//! last sent: it is remembered as that snapshot (shared with every other stream), not as a
//! map of names and versions of its own, and the next response is what the snapshot's
//! history says changed since (`index::changes`). Names and versions are kept only where the
//! proxy's holdings differ from any snapshot: a named subscription, the versions a
//! reconnecting proxy says it holds, a rejected response.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use prost::bytes::Bytes;

use crate::index::{Resource, Resources, Snapshot};

/// Unanswered responses remembered (for rejections); older ones count as delivered.
const PENDING: usize = 16;

#[derive(Debug, Default)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
    held: Held,
    /// Whether a first response went out (it goes out even when empty: "you have it all").
    answered: bool,
    /// Responses not yet acked, oldest first, with what each changed in `held`.
    pending: Vec<(String, Sent)>,
}

/// What a proxy holds of one type.
#[derive(Debug)]
enum Held {
    /// Exactly this snapshot's resources of the type.
    Snapshot(Arc<Snapshot>),
    /// These names at these versions.
    Versions(HashMap<String, String>),
}

impl Default for Held {
    fn default() -> Self {
        Self::Versions(HashMap::new())
    }
}

/// What a response changed in what the proxy holds, to undo it if rejected.
#[derive(Debug)]
enum Sent {
    /// For each name: (name, version before, version after).
    Names(Vec<(String, Option<String>, Option<String>)>),
    /// From `from` to all of `to`.
    Whole { from: Held, to: Arc<Snapshot> },
}

/// A response to send: the resources changed, and the names removed.
#[derive(Debug)]
pub struct Response {
    pub resources: Changed,
    pub removed: Vec<String>,
}

/// The resources a response carries.
#[derive(Debug)]
pub enum Changed {
    /// Every resource of the type in the snapshot (a first response, typically): written out
    /// from the snapshot as the response is sent, rather than listed for each stream.
    All { snapshot: Arc<Snapshot>, type_url: String },
    /// These, each encoded for the wire.
    These(Vec<Bytes>),
}

impl Changed {
    /// How many resources.
    pub fn count(&self) -> usize {
        match self {
            Changed::All { snapshot, type_url } => resources(snapshot, type_url).len(),
            Changed::These(resources) => resources.len(),
        }
    }
}

impl Held {
    fn version<'a>(&'a self, type_url: &str, name: &str) -> Option<&'a str> {
        match self {
            Held::Snapshot(snapshot) => resources(snapshot, type_url).get(name).map(|r| r.version.as_str()),
            Held::Versions(versions) => versions.get(name).map(String::as_str),
        }
    }

    fn names<'a>(&'a self, type_url: &str) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        match self {
            Held::Snapshot(snapshot) => Box::new(resources(snapshot, type_url).keys()),
            Held::Versions(versions) => Box::new(versions.keys()),
        }
    }

    /// The names and versions held, written out if they were a snapshot's.
    fn versions(&mut self, type_url: &str) -> &mut HashMap<String, String> {
        if let Held::Snapshot(snapshot) = self {
            let versions = resources(snapshot, type_url)
                .iter()
                .map(|(name, r)| (name.clone(), r.version.clone()))
                .collect();
            *self = Held::Versions(versions);
        }
        match self {
            Held::Versions(versions) => versions,
            Held::Snapshot(_) => unreachable!("written out above"),
        }
    }
}

fn resources<'a>(snapshot: &'a Snapshot, type_url: &str) -> &'a Resources {
    snapshot.of_type(type_url).expect("subscriptions are only to types served")
}

impl Subscription {
    /// A new subscription, to `initial` (name → version): what a reconnecting proxy holds.
    pub fn new(wildcard: bool, initial: HashMap<String, String>) -> Self {
        Self { wildcard, held: Held::Versions(initial), ..Default::default() }
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Forgets that the proxy holds `name` (it is sent again if wanted).
    pub fn forget(&mut self, type_url: &str, name: &str) {
        self.held.versions(type_url).remove(name);
    }

    /// The proxy rejected response `nonce`: what it carried counts as not delivered again
    /// (names a later response changed since keep that response's version). Returns whether
    /// the nonce was one of ours.
    pub fn rejected(&mut self, type_url: &str, nonce: &str) -> bool {
        let Some(index) = self.pending.iter().position(|(pending, _)| pending == nonce) else { return false };
        let (_, sent) = self.pending.remove(index);
        let held = self.held.versions(type_url);
        let mut undo = |name: &str, before: Option<&str>, after: Option<&str>| {
            if held.get(name).map(String::as_str) == after {
                match before {
                    Some(version) => held.insert(name.to_owned(), version.to_owned()),
                    None => held.remove(name),
                };
            }
        };
        match sent {
            Sent::Names(changes) => {
                for (name, before, after) in &changes {
                    undo(name, before.as_deref(), after.as_deref());
                }
            }
            Sent::Whole { from, to } => {
                let to = resources(&to, type_url);
                let names: BTreeSet<&String> = from.names(type_url).chain(to.keys()).collect();
                for name in names {
                    let (before, after) =
                        (from.version(type_url, name), to.get(name).map(|r| r.version.as_str()));
                    if before != after {
                        undo(name, before, after);
                    }
                }
            }
        }
        true
    }

    /// The proxy accepted response `nonce`. Returns whether the nonce was one of ours.
    pub fn accepted(&mut self, nonce: &str) -> bool {
        let before = self.pending.len();
        self.pending.retain(|(pending, _)| pending != nonce);
        self.pending.len() < before
    }

    /// What of `snapshot` the proxy lacks, as response `nonce`, recorded as sent; `None` when
    /// it lacks nothing and has had its first response.
    pub fn respond(&mut self, type_url: &str, snapshot: &Arc<Snapshot>, nonce: &str) -> Option<Response> {
        let now = resources(snapshot, type_url);
        let (changed, removed) = match &self.held {
            Held::Snapshot(held) if self.wildcard => since(held, snapshot, type_url),
            held => {
                let changed: Vec<(&String, &Arc<Resource>)> = now
                    .iter()
                    .filter(|(name, r)| self.wants(name) && held.version(type_url, name) != Some(&r.version))
                    .collect();
                let removed = held.names(type_url).filter(|name| !now.contains_key(*name)).cloned().collect();
                (changed, removed)
            }
        };
        if changed.is_empty() && removed.is_empty() && self.answered {
            return None;
        }
        self.answered = true;
        let sent = if self.wildcard {
            // The proxy now holds exactly this snapshot's resources.
            let from = std::mem::replace(&mut self.held, Held::Snapshot(snapshot.clone()));
            Sent::Whole { from, to: snapshot.clone() }
        } else {
            let held = self.held.versions(type_url);
            let mut undo = Vec::with_capacity(removed.len() + changed.len());
            for name in &removed {
                undo.push((name.clone(), held.remove(name), None));
            }
            for (name, resource) in &changed {
                let before = held.insert((*name).clone(), resource.version.clone());
                undo.push(((*name).clone(), before, Some(resource.version.clone())));
            }
            Sent::Names(undo)
        };
        self.pending.push((nonce.to_owned(), sent));
        if self.pending.len() > PENDING {
            self.pending.remove(0);
        }
        let resources = if self.wildcard && changed.len() == now.len() {
            Changed::All { snapshot: snapshot.clone(), type_url: type_url.to_owned() }
        } else {
            Changed::These(changed.iter().map(|(name, resource)| resource.wire(name)).collect())
        };
        Some(Response { resources, removed })
    }
}

/// What changed of `type_url` from `held` to `now`: from `now`'s history when it reaches back
/// to `held`, else by comparing the two in full.
fn since<'a>(
    held: &Snapshot,
    now: &'a Snapshot,
    type_url: &str,
) -> (Vec<(&'a String, &'a Arc<Resource>)>, Vec<String>) {
    let (before, after) = (resources(held, type_url), resources(now, type_url));
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    if held.version == now.version {
        return (changed, removed);
    }
    let differs = |before: Option<&Arc<Resource>>, after: &Arc<Resource>| {
        before.is_none_or(|before| !Arc::ptr_eq(before, after) && before.version != after.version)
    };
    match now.changes.since(held.version, type_url) {
        Some(names) => {
            for name in names {
                match (before.get(name), after.get_key_value(name)) {
                    (before, Some((name, after))) if differs(before, after) => changed.push((name, after)),
                    (Some(_), None) => removed.push(name.to_owned()),
                    _ => {}
                }
            }
        }
        None => {
            changed.extend(after.iter().filter(|(name, after)| differs(before.get(*name), after)));
            removed.extend(before.keys().filter(|name| !after.contains_key(*name)).cloned());
        }
    }
    (changed, removed)
}

#[cfg(test)]
mod tests;
