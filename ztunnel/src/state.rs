//! What the proxy knows about the mesh: workloads by address and services by virtual IP, from
//! the control plane's xDS stream ([`crate::xds`]) or a local JSON file. Every update builds a
//! new immutable index and swaps it in; an update that would give one address to two workloads
//! (or one VIP to two services) is rejected whole and the last good index kept.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// How traffic to a workload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TunnelProtocol {
    /// Meshed: mTLS + HBONE to its pod's port 15008.
    #[default]
    Hbone,
    /// Not meshed: plaintext.
    None,
}

/// A service port and the workload port behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub service_port: u16,
    pub target_port: u16,
}

/// A workload (pod) of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub addresses: Vec<IpAddr>,
    pub node: String,
    #[serde(default)]
    pub protocol: TunnelProtocol,
    /// Services it backs (`namespace/hostname`) and on which ports.
    #[serde(default)]
    pub services: BTreeMap<String, Vec<PortMapping>>,
    #[serde(default = "healthy")]
    pub healthy: bool,
}

fn healthy() -> bool {
    true
}

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// A service: virtual IPs in front of the workloads that back it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<u16>,
}

impl Service {
    /// The xDS name: `namespace/hostname`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// One named resource of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Workload(Workload),
    Service(Service),
}

/// A change to the index: resources added or replaced (name, version, value) and names removed.
#[derive(Debug, Default)]
pub struct Update {
    pub changed: Vec<(String, String, Address)>,
    pub removed: Vec<String>,
}

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("address {ip} belongs to both {first} and {second}")]
    DuplicateAddress { ip: IpAddr, first: String, second: String },
}

#[derive(Debug, Deserialize)]
struct LocalConfig {
    workloads: Vec<Workload>,
}

/// One immutable version of everything known.
#[derive(Debug, Default)]
struct Index {
    /// Resources by xDS name, with their versions.
    resources: HashMap<String, (String, Arc<Resource>)>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Service key → the workloads backing it.
    endpoints: HashMap<String, Vec<Arc<Workload>>>,
}

#[derive(Debug)]
enum Resource {
    Workload(Arc<Workload>),
    Service(Arc<Service>),
}

impl Index {
    fn build(resources: HashMap<String, (String, Arc<Resource>)>) -> Result<Self, Error> {
        let mut index = Index::default();
        for (name, (_, resource)) in &resources {
            match resource.as_ref() {
                Resource::Workload(workload) => {
                    for ip in &workload.addresses {
                        if let Some(first) = index.by_ip.insert(ip.to_canonical(), workload.clone()) {
                            return Err(duplicate(*ip, &first.uid, &workload.uid));
                        }
                    }
                    for service in workload.services.keys() {
                        index.endpoints.entry(service.clone()).or_default().push(workload.clone());
                    }
                }
                Resource::Service(service) => {
                    for ip in &service.vips {
                        if let Some(first) = index.by_vip.insert(ip.to_canonical(), service.clone()) {
                            return Err(duplicate(*ip, &first.key(), name));
                        }
                    }
                }
            }
        }
        // A stable endpoint order, so round robin visits each in turn.
        for endpoints in index.endpoints.values_mut() {
            endpoints.sort_by(|a, b| a.uid.cmp(&b.uid));
        }
        index.resources = resources;
        Ok(index)
    }
}

fn duplicate(ip: IpAddr, first: &str, second: &str) -> Error {
    Error::DuplicateAddress { ip, first: first.to_owned(), second: second.to_owned() }
}

/// The index; replaced whole on each update, read on every connection.
#[derive(Debug)]
pub struct State {
    index: RwLock<Arc<Index>>,
    /// Whether a complete configuration has arrived; until then nothing may be assumed
    /// unmeshed (a destination not yet known could be a workload that must be tunnelled).
    synced: tokio::sync::watch::Sender<bool>,
}

impl Default for State {
    fn default() -> Self {
        Self { index: RwLock::default(), synced: tokio::sync::watch::Sender::new(false) }
    }
}

impl State {
    /// Marks the configuration complete (first xDS response applied, or the local file read).
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the configuration is complete.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as `self`.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    fn current(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn swap(&self, index: Index) {
        *self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(index);
    }

    /// Applies an xDS delta on top of the current index, or nothing if the result is invalid.
    pub fn apply(&self, update: Update) -> Result<(), Error> {
        let mut resources = self.current().resources.clone();
        for name in &update.removed {
            resources.remove(name);
        }
        for (name, version, address) in update.changed {
            let resource = match address {
                Address::Workload(workload) => Resource::Workload(Arc::new(workload)),
                Address::Service(service) => Resource::Service(Arc::new(service)),
            };
            resources.insert(name, (version, Arc::new(resource)));
        }
        self.swap(Index::build(resources)?);
        Ok(())
    }

    /// Replaces every workload at once (local configuration), or nothing if invalid.
    pub fn replace(&self, workloads: Vec<Workload>) -> Result<(), Error> {
        let resources = workloads
            .into_iter()
            .map(|workload| {
                (workload.uid.clone(), (String::new(), Arc::new(Resource::Workload(Arc::new(workload)))))
            })
            .collect();
        self.swap(Index::build(resources)?);
        Ok(())
    }

    /// Loads `{"workloads": [...]}` from a JSON file.
    pub fn load_file(&self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { path: path.display().to_string(), source })?;
        let config: LocalConfig = serde_json::from_str(&text)
            .map_err(|source| Error::Parse { path: path.display().to_string(), source })?;
        self.replace(config.workloads)?;
        self.mark_synced();
        Ok(())
    }

    /// The workload with address `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.current().by_ip.get(&ip.to_canonical()).cloned()
    }

    /// The service with virtual IP `ip`, and the workloads backing it.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<(Arc<Service>, Vec<Arc<Workload>>)> {
        let index = self.current();
        let service = index.by_vip.get(&ip.to_canonical())?.clone();
        let endpoints = index.endpoints.get(&service.key()).cloned().unwrap_or_default();
        Some((service, endpoints))
    }

    /// Every resource name with its version: what a reconnecting xDS client says it holds.
    pub fn versions(&self) -> HashMap<String, String> {
        self.current().resources.iter().map(|(name, (version, _))| (name.clone(), version.clone())).collect()
    }

    /// Everything known, for the admin `config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let index = self.current();
        let mut workloads: Vec<&Workload> = index.by_ip.values().map(AsRef::as_ref).collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        workloads.dedup_by(|a, b| a.uid == b.uid);
        let mut services: Vec<&Service> = index.by_vip.values().map(AsRef::as_ref).collect();
        services.sort_by_key(|service| service.key());
        services.dedup_by(|a, b| a.key() == b.key());
        serde_json::json!({ "workloads": workloads, "services": services })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str, ip: &str) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            addresses: vec![ip.parse().unwrap()],
            node: "node0".into(),
            protocol: TunnelProtocol::Hbone,
            services: BTreeMap::new(),
            healthy: true,
        }
    }

    fn service(name: &str, vip: &str) -> Service {
        Service {
            name: name.into(),
            namespace: "ns".into(),
            hostname: format!("{name}.ns.svc.cluster.local"),
            vips: vec![vip.parse().unwrap()],
            ports: vec![80],
        }
    }

    fn changed(address: Address) -> (String, String, Address) {
        let name = match &address {
            Address::Workload(workload) => workload.uid.clone(),
            Address::Service(service) => service.key(),
        };
        (name, "1".into(), address)
    }

    #[test]
    fn finds_workloads_by_address_including_ipv4_mapped() {
        let state = State::default();
        state.replace(vec![workload("a", "10.0.0.1")]).unwrap();
        assert_eq!(state.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid, "a");
        assert_eq!(state.workload_by_ip("::ffff:10.0.0.1".parse().unwrap()).unwrap().uid, "a");
        assert!(state.workload_by_ip("10.0.0.2".parse().unwrap()).is_none());
    }

    #[test]
    fn a_conflicting_update_is_rejected_and_the_last_good_state_kept() {
        let state = State::default();
        state.replace(vec![workload("a", "10.0.0.1")]).unwrap();
        let error = state.replace(vec![workload("b", "10.0.0.2"), workload("c", "10.0.0.2")]).unwrap_err();
        assert!(matches!(error, Error::DuplicateAddress { .. }), "{error}");
        assert_eq!(state.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid, "a");
        let clash =
            Update { changed: vec![changed(Address::Workload(workload("d", "10.0.0.1")))], removed: vec![] };
        assert!(state.apply(clash).is_err());
        assert_eq!(state.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid, "a");
    }

    #[test]
    fn deltas_add_replace_and_remove_and_services_find_their_endpoints() {
        let state = State::default();
        let mut backend = workload("b", "10.0.0.2");
        backend.services.insert(
            "ns/web.ns.svc.cluster.local".into(),
            vec![PortMapping { service_port: 80, target_port: 8080 }],
        );
        state
            .apply(Update {
                changed: vec![
                    changed(Address::Workload(workload("a", "10.0.0.1"))),
                    changed(Address::Workload(backend)),
                    changed(Address::Service(service("web", "10.96.0.10"))),
                ],
                removed: vec![],
            })
            .unwrap();
        let (web, endpoints) = state.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!(web.name, "web");
        assert_eq!(endpoints.iter().map(|w| w.uid.as_str()).collect::<Vec<_>>(), ["b"]);
        // A pod's address moves to a new pod (new uid) in one delta: the old identity is gone.
        state
            .apply(Update {
                changed: vec![changed(Address::Workload(workload("c", "10.0.0.1")))],
                removed: vec!["a".into()],
            })
            .unwrap();
        assert_eq!(state.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid, "c");
        assert_eq!(state.versions().len(), 3);
        state.apply(Update { changed: vec![], removed: vec!["ns/web.ns.svc.cluster.local".into()] }).unwrap();
        assert!(state.service_by_vip("10.96.0.10".parse().unwrap()).is_none());
    }
}
