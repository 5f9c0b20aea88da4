//! The routes the control plane sends (`weft.route.ServiceRoutes`), by Service key: the
//! waypoint's xDS subscription beside addresses and policies. Every response is converted whole;
//! one route that does not convert (a bad regular expression) rejects the response and the last
//! good table stays.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use prost::Message;
use weft_api::{
    discovery::DeltaDiscoveryResponse,
    route::{ROUTES_TYPE, ServiceRoutes},
};
use weft_proxy::xds::Subscriber;

use crate::route::Routes;

/// Service key (`namespace/hostname`) → (version, its routes).
type Table = HashMap<String, (String, Arc<Routes>)>;

/// The routes of every Service that has some.
#[derive(Debug, Default)]
pub struct RouteTable {
    table: RwLock<Arc<Table>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl RouteTable {
    /// The routes of the Service `key`; `None` when it has none (its requests go to itself).
    pub fn get(&self, key: &str) -> Option<Arc<Routes>> {
        self.current().get(key).map(|(_, routes)| routes.clone())
    }

    /// Whether the first response arrived.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Every Service's routes by key, for the config dump.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current().keys().cloned().collect();
        names.sort();
        names
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl Subscriber for RouteTable {
    fn type_url(&self) -> &'static str {
        ROUTES_TYPE
    }

    fn versions(&self) -> HashMap<String, String> {
        self.current().iter().map(|(name, (version, _))| (name.clone(), version.clone())).collect()
    }

    fn apply(&self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let mut next: Table = (*self.current()).clone();
        for name in &response.removed_resources {
            next.remove(name);
        }
        for resource in &response.resources {
            let name = &resource.name;
            let body = resource.resource.as_ref().ok_or_else(|| format!("{name}: no resource body"))?;
            if body.type_url != ROUTES_TYPE {
                return Err(format!("{name}: body of type {}", body.type_url));
            }
            let message =
                ServiceRoutes::decode(body.value.as_slice()).map_err(|error| format!("{name}: {error}"))?;
            let routes = Routes::try_from(&message).map_err(|error| format!("{name}: {error}"))?;
            next.insert(name.clone(), (resource.version.clone(), Arc::new(routes)));
        }
        *self.table.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
        self.synced.send_replace(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use weft_api::{
        discovery::Resource,
        route::{PathMatch, Route, Rule, path_match::Kind},
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
            path: Some(PathMatch { kind: Kind::Regex.into(), value: regex.into() }),
            ..Default::default()
        }];
        ServiceRoutes {
            service: service.into(),
            routes: vec![Route {
                name: "ns/r".into(),
                ports: vec![],
                rules: vec![Rule { matches, ..Default::default() }],
            }],
        }
    }

    #[test]
    fn a_response_with_one_bad_route_is_rejected_whole_and_the_last_good_table_kept() {
        let table = RouteTable::default();
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
