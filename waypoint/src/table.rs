//! The waypoint's own xDS resources, one table per type, by name: the routes of each Service
//! (`weft.route.ServiceRoutes`), the L7 authorization policies
//! (`weft.security.HttpAuthorization`) and request authentication
//! (`weft.security.RequestAuthentication`), subscribed to beside addresses and policies. Every
//! response is converted whole; one resource that does not convert (a bad regular expression)
//! rejects the response, and the last good table stays.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use prost::Message;
use weft_api::discovery::DeltaDiscoveryResponse;
use weft_proxy::xds::Subscriber;

use crate::{authz::Policy, route::Routes};

/// Resources of one type by name: (version, value).
type Entries<T> = HashMap<String, (String, Arc<T>)>;

/// A resource type: its URL, and how a resource of it becomes a `T`.
#[derive(Debug, Clone, Copy)]
pub struct Kind<T> {
    pub type_url: &'static str,
    pub convert: fn(&[u8]) -> Result<T, String>,
}

/// The resources of one type.
pub struct Table<T> {
    kind: Kind<T>,
    entries: RwLock<Arc<Entries<T>>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl<T> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("type_url", &self.kind.type_url).field("names", &self.names()).finish()
    }
}

impl<T> Table<T> {
    pub fn new(kind: Kind<T>) -> Self {
        Self { kind, entries: RwLock::default(), synced: tokio::sync::watch::Sender::new(false) }
    }

    /// The resource named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        self.current().get(name).map(|(_, value)| value.clone())
    }

    /// Every resource.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.current().values().map(|(_, value)| value.clone()).collect()
    }

    /// Whether the first response arrived.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once the first response arrived.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as the table: the wait ends only when synced.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Every resource's name, sorted, for the config dump.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current().keys().cloned().collect();
        names.sort();
        names
    }

    fn current(&self) -> Arc<Entries<T>> {
        self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl<T: Send + Sync + 'static> Subscriber for Table<T> {
    fn type_url(&self) -> &'static str {
        self.kind.type_url
    }

    fn versions(&self) -> HashMap<String, String> {
        self.current().iter().map(|(name, (version, _))| (name.clone(), version.clone())).collect()
    }

    fn apply(&self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let mut next: Entries<T> = (*self.current()).clone();
        for name in &response.removed_resources {
            next.remove(name);
        }
        for resource in &response.resources {
            let name = &resource.name;
            let body = resource.resource.as_ref().ok_or_else(|| format!("{name}: no resource body"))?;
            if body.type_url != self.kind.type_url {
                return Err(format!("{name}: body of type {}", body.type_url));
            }
            let value = (self.kind.convert)(&body.value).map_err(|error| format!("{name}: {error}"))?;
            next.insert(name.clone(), (resource.version.clone(), Arc::new(value)));
        }
        *self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
        self.synced.send_replace(true);
        Ok(())
    }
}

/// Each Service's routes, by its key.
pub const ROUTES: Kind<Routes> = Kind {
    type_url: weft_api::route::ROUTES_TYPE,
    convert: |bytes| {
        let message = weft_api::route::ServiceRoutes::decode(bytes).map_err(|error| error.to_string())?;
        Routes::try_from(&message).map_err(|error| error.to_string())
    },
};

/// The L7 authorization policies, by `namespace/name`.
pub const POLICIES: Kind<Policy> = Kind {
    type_url: weft_api::http_authorization::HTTP_AUTHORIZATION_TYPE,
    convert: |bytes| {
        let message = weft_api::http_authorization::HttpAuthorization::decode(bytes)
            .map_err(|error| error.to_string())?;
        Policy::try_from(message).map_err(|error| error.to_string())
    },
};

/// The RequestAuthentications, by `namespace/name`. A rule whose key set is missing or does
/// not parse is kept — it refuses every token of its issuer, failing closed — and said once.
pub const AUTHENTICATIONS: Kind<crate::authn::Policy> = Kind {
    type_url: weft_api::http_authorization::REQUEST_AUTHENTICATION_TYPE,
    convert: |bytes| {
        let message = weft_api::http_authorization::RequestAuthentication::decode(bytes)
            .map_err(|error| error.to_string())?;
        let policy = crate::authn::Policy::try_from(message).map_err(|error| error.to_string())?;
        for (issuer, why) in policy.unusable_keys() {
            tracing::warn!(policy = %policy.key(), issuer, why, "no usable keys: every token of this issuer is refused");
        }
        Ok(policy)
    },
};

#[cfg(test)]
mod tests {
    use prost::Message;
    use weft_api::{
        discovery::Resource,
        route::{PathMatch, ROUTES_TYPE, Route, Rule, ServiceRoutes, path_match::Kind as PathKind},
    };

    use super::*;

    fn response(resources: Vec<(&str, ServiceRoutes)>, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: ROUTES_TYPE.into(),
            resources: resources
                .into_iter()
                .map(|(name, routes)| Resource {
                    name: name.into(),
                    version: "1".into(),
                    resource: Some(prost_types::Any {
                        type_url: ROUTES_TYPE.into(),
                        value: routes.encode_to_vec(),
                    }),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|name| (*name).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn routes(service: &str, regex: &str) -> ServiceRoutes {
        let matches = vec![weft_api::route::Match {
            path: Some(PathMatch { kind: PathKind::Regex.into(), value: regex.into() }),
            ..Default::default()
        }];
        ServiceRoutes {
            service: service.into(),
            routes: vec![Route {
                name: "ns/r".into(),
                ports: vec![],
                rules: vec![Rule { matches, ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_response_with_one_bad_resource_is_rejected_whole_and_the_last_good_table_kept() {
        let table = Table::new(ROUTES);
        assert!(!table.is_synced());
        let key = "ns/echo.ns.svc.cluster.local";
        table.apply(&response(vec![(key, routes(key, "/v[12]"))], &[])).unwrap();
        assert!(table.is_synced() && table.get(key).is_some());
        let other = "ns/other.ns.svc.cluster.local";
        let bad = response(vec![(other, routes(other, "/v[")), (key, routes(key, "/v1"))], &[]);
        let error = table.apply(&bad).unwrap_err();
        assert!(error.contains(other), "{error}");
        assert!(table.get(other).is_none());
        assert_eq!(table.versions().len(), 1);
        table.apply(&response(vec![], &[key])).unwrap();
        assert!(table.get(key).is_none());
    }
}
