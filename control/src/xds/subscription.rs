//! One proxy's subscription to one resource type: what it asked for, what it holds as far as
//! our responses go, and the responses it has not answered yet (to undo one it rejects).
//!
//! A wildcard subscriber, once answered, holds exactly the resources of the snapshot it was
//! last sent: it is remembered as that snapshot (shared with every other stream), not as a
//! map of names and versions of its own, and the next response is what the snapshot's
//! history says changed since (`index::changes`). What a rejected response or a forgotten name
//! leaves it lacking is kept as exceptions to that snapshot. Names and versions of its own are
//! kept only for a named subscription, and for the versions a reconnecting proxy says it holds
//! until its first response.
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
    /// This snapshot's resources of the type, but for `except`: names held at another version,
    /// or not at all (`None`), as a rejected response or a forgotten name leaves them.
    Snapshot { snapshot: Arc<Snapshot>, except: HashMap<String, Option<String>> },
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
    fn of(snapshot: Arc<Snapshot>) -> Self {
        Held::Snapshot { snapshot, except: HashMap::new() }
    }

    fn version<'a>(&'a self, type_url: &str, name: &str) -> Option<&'a str> {
        match self {
            Held::Snapshot { snapshot, except } => match except.get(name) {
                Some(version) => version.as_deref(),
                None => resources(snapshot, type_url).get(name).map(|r| r.version.as_str()),
            },
            Held::Versions(versions) => versions.get(name).map(String::as_str),
        }
    }

    /// Every name held.
    fn names<'a>(&'a self, type_url: &str) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        match self {
            Held::Snapshot { snapshot, except } => {
                let of_snapshot = resources(snapshot, type_url);
                let others = except
                    .iter()
                    .filter(|(name, version)| version.is_some() && !of_snapshot.contains_key(*name))
                    .map(|(name, _)| name);
                Box::new(
                    of_snapshot.keys().filter(|name| !matches!(except.get(*name), Some(None))).chain(others),
                )
            }
            Held::Versions(versions) => Box::new(versions.keys()),
        }
    }

    /// Records that the proxy holds `name` at `version` (`None`: not at all).
    fn set(&mut self, type_url: &str, name: &str, version: Option<&str>) {
        match self {
            Held::Snapshot { snapshot, except } => {
                if resources(snapshot, type_url).get(name).map(|r| r.version.as_str()) == version {
                    except.remove(name);
                } else {
                    except.insert(name.to_owned(), version.map(str::to_owned));
                }
            }
            Held::Versions(versions) => match version {
                Some(version) => {
                    versions.insert(name.to_owned(), version.to_owned());
                }
                None => {
                    versions.remove(name);
                }
            },
        }
    }

    /// The names whose version may differ between this and `now`: what `now`'s history says
    /// changed since this snapshot and its exceptions; `None` when that is not known (every
    /// name may).
    fn maybe_changed<'a>(&'a self, now: &'a Snapshot, type_url: &str) -> Option<BTreeSet<&'a str>> {
        let Held::Snapshot { snapshot, except } = self else { return None };
        let mut names = if snapshot.version == now.version {
            BTreeSet::new()
        } else {
            now.changes.since(snapshot.version, type_url)?
        };
        names.extend(except.keys().map(String::as_str));
        Some(names)
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

    /// Forgets that the proxy holds `name` (it is sent again if wanted).
    pub fn forget(&mut self, type_url: &str, name: &str) {
        self.held.set(type_url, name, None);
    }

    /// The proxy rejected response `nonce`: what it carried counts as not delivered again
    /// (names a later response changed since keep that response's version). Returns whether
    /// the nonce was one of ours.
    pub fn rejected(&mut self, type_url: &str, nonce: &str) -> bool {
        let Some(index) = self.pending.iter().position(|(pending, _)| pending == nonce) else { return false };
        let (_, sent) = self.pending.remove(index);
        match sent {
            Sent::Names(changes) => {
                for (name, before, after) in &changes {
                    if self.held.version(type_url, name) == after.as_deref() {
                        self.held.set(type_url, name, before.as_deref());
                    }
                }
            }
            Sent::Whole { from, to } => self.rejected_whole(type_url, from, to),
        }
        true
    }

    /// Undoes a rejected response that sent everything of `to` to a proxy that held `from`.
    fn rejected_whole(&mut self, type_url: &str, from: Held, to: Arc<Snapshot>) {
        if let Held::Snapshot { snapshot, except } = &mut self.held
            && Arc::ptr_eq(snapshot, &to)
        {
            // No other snapshot went out since: the proxy holds what it held before, with what
            // was forgotten or undone since (a first response rejected would otherwise leave an
            // exception for every resource). Should a response of the same snapshot have gone
            // out since, its resources are sent again: more than needed, never less.
            let except = std::mem::take(except);
            self.held = from;
            for (name, version) in except {
                self.held.set(type_url, &name, version.as_deref());
            }
            return;
        }
        let held = &mut self.held;
        let after = resources(&to, type_url);
        let names: BTreeSet<&str> = match from.maybe_changed(&to, type_url) {
            Some(names) => names,
            None => from.names(type_url).chain(after.keys()).map(String::as_str).collect(),
        };
        for name in names {
            let (before, after) = (from.version(type_url, name), after.get(name).map(|r| r.version.as_str()));
            if before != after && held.version(type_url, name) == after {
                held.set(type_url, name, before);
            }
        }
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
        let held = &self.held;
        let differs =
            |name: &str, resource: &Arc<Resource>| held.version(type_url, name) != Some(&resource.version);
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        match held.maybe_changed(snapshot, type_url).filter(|_| self.wildcard) {
            Some(names) => {
                for name in names {
                    match now.get_key_value(name) {
                        Some((name, resource)) if differs(name, resource) => changed.push((name, resource)),
                        Some(_) => {}
                        None if held.version(type_url, name).is_some() => removed.push(name.to_owned()),
                        None => {}
                    }
                }
            }
            None if self.wildcard => {
                changed.extend(now.iter().filter(|(name, resource)| differs(name, resource)));
                removed.extend(held.names(type_url).filter(|name| !now.contains_key(*name)).cloned());
            }
            None => {
                let asked = self.names.iter().filter_map(|name| now.get_key_value(name.as_str()));
                changed.extend(asked.filter(|(name, resource)| differs(name, resource)));
                removed.extend(held.names(type_url).filter(|name| !now.contains_key(*name)).cloned());
            }
        }
        if changed.is_empty() && removed.is_empty() && self.answered {
            return None;
        }
        self.answered = true;
        let sent = if self.wildcard {
            // The proxy now holds exactly this snapshot's resources.
            let from = std::mem::replace(&mut self.held, Held::of(snapshot.clone()));
            Sent::Whole { from, to: snapshot.clone() }
        } else {
            let mut undo = Vec::with_capacity(removed.len() + changed.len());
            for name in &removed {
                undo.push((name.clone(), self.held.version(type_url, name).map(str::to_owned), None));
                self.held.set(type_url, name, None);
            }
            for (name, resource) in &changed {
                let before = self.held.version(type_url, name).map(str::to_owned);
                self.held.set(type_url, name, Some(&resource.version));
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

#[cfg(test)]
mod tests;
