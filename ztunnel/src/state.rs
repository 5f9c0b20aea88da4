//! What the proxy knows about the mesh: workloads by address. Filled from a local JSON file
//! until the control plane's xDS stream arrives (DESIGN.md §4); the lookups stay the same.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
};

use serde::Deserialize;

use crate::identity::Identity;

/// How traffic to a workload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TunnelProtocol {
    /// Meshed: mTLS + HBONE to its pod's port 15008.
    #[default]
    Hbone,
    /// Not meshed: plaintext.
    None,
}

/// A workload (pod) of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub addresses: Vec<IpAddr>,
    pub node: String,
    #[serde(default)]
    pub protocol: TunnelProtocol,
}

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
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

/// The workload index; replaced whole on each update, read on every connection.
#[derive(Debug, Default)]
pub struct State {
    by_ip: RwLock<Arc<HashMap<IpAddr, Arc<Workload>>>>,
}

impl State {
    /// Replaces every workload at once. A workload set that gives one address to two workloads
    /// is rejected and the previous one kept.
    pub fn replace(&self, workloads: Vec<Workload>) -> Result<(), Error> {
        let mut by_ip: HashMap<IpAddr, Arc<Workload>> = HashMap::new();
        for workload in workloads.into_iter().map(Arc::new) {
            for ip in &workload.addresses {
                if let Some(first) = by_ip.insert(*ip, workload.clone()) {
                    return Err(Error::DuplicateAddress {
                        ip: *ip,
                        first: first.uid.clone(),
                        second: workload.uid.clone(),
                    });
                }
            }
        }
        *self.by_ip.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(by_ip);
        Ok(())
    }

    /// Loads `{"workloads": [...]}` from a JSON file.
    pub fn load_file(&self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { path: path.display().to_string(), source })?;
        let config: LocalConfig = serde_json::from_str(&text)
            .map_err(|source| Error::Parse { path: path.display().to_string(), source })?;
        self.replace(config.workloads)
    }

    /// The workload with address `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        let ip = ip.to_canonical();
        self.by_ip.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&ip).cloned()
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
        }
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
    }
}
