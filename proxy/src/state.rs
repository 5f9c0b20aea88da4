//! What the proxy knows about the mesh: workloads by address, services by virtual IP and
//! authorization policies by scope, from the control plane's xDS stream ([`crate::xds`]) or a
//! local JSON file. Every update builds a new immutable index and swaps it in; an update that
//! would give one address to two workloads (or one VIP to two services) is rejected whole and
//! the last good index kept.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::Path,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

use crate::{
    authz::{Connection, Policy, Scope, Verdict},
    identity::Identity,
};

/// How traffic to a workload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum TunnelProtocol {
    /// Meshed: mTLS + HBONE to its pod's port 15008.
    #[default]
    Hbone,
    /// Not meshed: plaintext.
    None,
    /// A protocol of a newer control plane (Istio's LEGACY_ISTIO_MTLS, a sidecar's mTLS): this
    /// proxy cannot speak it, so it refuses rather than send the workload plaintext.
    Unsupported,
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
    /// Its network (empty: the one network). Only a workload of the proxy's own network is
    /// reached at its addresses; one of another network is behind that network's gateway.
    #[serde(default)]
    pub network: String,
    pub name: String,
    pub namespace: String,
    /// Its identity's trust domain when not the mesh's own (a workload of another mesh).
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// The workload it belongs to (its Deployment, ...): what metrics name it by.
    #[serde(default)]
    pub workload_name: String,
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
    /// Workload-selector policies that apply to it (`namespace/name`).
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    /// Its address may be another's too (a host-network pod, an EndpointSlice address that is no
    /// pod): it is reached only through its services, never found by address.
    #[serde(default)]
    pub shared_address: bool,
    /// The waypoint its traffic must pass through, when it has one.
    #[serde(default)]
    pub waypoint: Option<Waypoint>,
    /// Where it runs: its node's region, zone and subzone.
    #[serde(default)]
    pub locality: Locality,
}

/// Where a workload runs: its node's `topology.kubernetes.io/region` and `zone` labels and
/// Istio's `topology.istio.io/subzone` (empty where the node has none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// Which of a Service's endpoints are close to a client (a Service's `trafficDistribution`,
/// Istio's `LoadBalancing.routing_preference`), and whether only those may serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalityPreference {
    /// What a close endpoint shares with the client, broadest first.
    pub scopes: Vec<LocalityScope>,
    /// Only endpoints sharing every scope (Istio's STRICT); otherwise the endpoints sharing the
    /// longest run of them (FAILOVER: when no endpoint is in the client's zone, the region's
    /// serve it, and so on).
    pub strict: bool,
}

/// What two workloads may share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LocalityScope {
    Region,
    Zone,
    Subzone,
    Node,
    /// One cluster per control plane: always shared.
    Cluster,
    Network,
}

impl LocalityPreference {
    /// How many of its scopes, in order, `endpoint` shares with `client`.
    pub fn rank(&self, client: &Workload, endpoint: &Workload) -> usize {
        let (near, far) = (&client.locality, &endpoint.locality);
        self.scopes
            .iter()
            .take_while(|scope| match scope {
                LocalityScope::Region => near.region == far.region,
                LocalityScope::Zone => near.zone == far.zone,
                LocalityScope::Subzone => near.subzone == far.subzone,
                LocalityScope::Node => client.node == endpoint.node,
                LocalityScope::Cluster => true,
                LocalityScope::Network => client.network == endpoint.network,
            })
            .count()
    }

    /// Of `candidates` (whose workload `workload` gives), those closest to `client`: sharing
    /// every scope when strict (maybe none), else the longest run of scopes any does.
    pub fn closest<T>(
        &self,
        client: Option<&Workload>,
        candidates: Vec<T>,
        workload: impl Fn(&T) -> &Workload,
    ) -> Vec<T> {
        let ranked = self.ranked(client, candidates, workload);
        let best = ranked.iter().map(|(rank, _)| *rank).max().unwrap_or(0);
        ranked.into_iter().filter(|(rank, _)| *rank == best).map(|(_, candidate)| candidate).collect()
    }

    /// `candidates`, the closest to `client` first (their order within a rank kept), so a
    /// connection fails over farther only when every near one fails; strict, only those sharing
    /// every scope.
    pub fn nearest_first<T>(
        &self,
        client: Option<&Workload>,
        candidates: Vec<T>,
        workload: impl Fn(&T) -> &Workload,
    ) -> Vec<T> {
        let mut ranked = self.ranked(client, candidates, workload);
        ranked.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        ranked.into_iter().map(|(_, candidate)| candidate).collect()
    }

    /// Each candidate with its rank; strict, only those of full rank. A client the proxy does
    /// not know is near none: strict leaves nothing, failover all of them, of equal rank.
    fn ranked<T>(
        &self,
        client: Option<&Workload>,
        candidates: Vec<T>,
        workload: impl Fn(&T) -> &Workload,
    ) -> Vec<(usize, T)> {
        let Some(client) = client else {
            return if self.strict {
                Vec::new()
            } else {
                candidates.into_iter().map(|candidate| (0, candidate)).collect()
            };
        };
        let ranked =
            candidates.into_iter().map(|candidate| (self.rank(client, workload(&candidate)), candidate));
        ranked.filter(|(rank, _)| !self.strict || *rank == self.scopes.len()).collect()
    }
}

/// A waypoint, as a workload or Service names it (`GatewayAddress`): traffic for them goes to
/// the waypoint, over HBONE on `port`, never straight to them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Waypoint {
    pub address: WaypointAddress,
    /// Its HBONE port (15008).
    pub port: u16,
}

impl std::fmt::Display for Waypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            WaypointAddress::Service(key) => write!(f, "{key}"),
            WaypointAddress::Ip(address) => write!(f, "{}", address.ip),
        }
    }
}

/// Where a waypoint is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WaypointAddress {
    /// Its Service, by key (`namespace/hostname`): one of that Service's endpoints.
    Service(String),
    /// Its Service's VIP.
    Ip(NetworkIp),
}

/// Why a Service's port is no port of a local pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("the configuration holds no workload for this pod yet")]
    NoWorkload,
    #[error("this pod backs no such service port")]
    NotBacked,
}

/// A pod this proxy serves, as the agent named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl Workload {
    /// Whether this workload resource is `pod`: the same name, namespace and service account,
    /// as Istio's ztunnel matches its local pods (istiod names workloads
    /// `<cluster>//Pod/<namespace>/<name>`, not by the pod's uid as Weft's control plane does).
    pub fn is(&self, pod: LocalPod<'_>) -> bool {
        self.name == pod.name
            && self.namespace == pod.namespace
            && self.service_account == pod.service_account
    }
}

fn healthy() -> bool {
    true
}

impl Workload {
    /// Its SPIFFE identity: in its own trust domain if it has one, else in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(
            self.trust_domain.as_deref().unwrap_or(trust_domain),
            &self.namespace,
            &self.service_account,
        )
    }

    /// The name metrics label it with: its workload's (as Istio's `source_workload`), or the
    /// pod's when none was given. Pods come and go; workload names stay, and so do series.
    pub fn metrics_name(&self) -> &str {
        if self.workload_name.is_empty() { &self.name } else { &self.workload_name }
    }
}

/// An address on a network (empty: the one network): the same IP may be another's on
/// another network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkIp {
    pub network: String,
    pub ip: IpAddr,
}

/// A service: virtual IPs in front of the workloads that back it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkIp>,
    pub ports: Vec<u16>,
    /// Unhealthy endpoints are as good as healthy ones (the Service publishes not-ready
    /// addresses).
    pub allow_unhealthy: bool,
    /// Which endpoints are close to a client; none: any is as good as another.
    pub locality_preference: Option<LocalityPreference>,
    /// Identities its endpoints may prove besides their own.
    pub subject_alt_names: Vec<crate::identity::Identity>,
    /// The waypoint its traffic must pass through, when it has one.
    pub waypoint: Option<Waypoint>,
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
#[derive(Debug)]
pub struct Update<T = Address> {
    pub changed: Vec<(String, String, T)>,
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

/// Authorization policies by name (with versions) and by the scope they apply to.
#[derive(Debug, Default)]
struct Policies {
    by_name: HashMap<String, (String, Arc<Policy>)>,
    global: Vec<Arc<Policy>>,
    by_namespace: HashMap<String, Vec<Arc<Policy>>>,
}

impl Policies {
    fn build(by_name: HashMap<String, (String, Arc<Policy>)>) -> Self {
        let mut policies = Policies::default();
        for (_, policy) in by_name.values() {
            match policy.scope {
                Scope::Global => policies.global.push(policy.clone()),
                Scope::Namespace => {
                    policies.by_namespace.entry(policy.namespace.clone()).or_default().push(policy.clone());
                }
                Scope::WorkloadSelector => {}
            }
        }
        policies.by_name = by_name;
        policies
    }

    /// What decides connections to `workload` of `namespace`: the mesh-wide policies, its
    /// namespace's, and the selector policies the workload names — the one place that says
    /// which policies apply to a pod. `Err(name)`: it names a policy not arrived yet.
    fn applying(&self, workload: &Workload, namespace: &str) -> Result<Vec<&Policy>, String> {
        let scoped = self.global.iter().chain(self.by_namespace.get(namespace).into_iter().flatten());
        let mut applying: Vec<&Policy> = scoped.map(AsRef::as_ref).collect();
        for name in &workload.authorization_policies {
            match self.by_name.get(name) {
                Some((_, policy)) if policy.scope == Scope::WorkloadSelector => applying.push(policy),
                // Named by the workload but not a selector policy: it applies by its scope.
                Some(_) => {}
                None => return Err(name.clone()),
            }
        }
        Ok(applying)
    }
}

/// Which configuration kinds have arrived complete at least once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub addresses: bool,
    pub policies: bool,
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
    /// Indexes `resources` as seen from `network`: workloads and service addresses of other
    /// networks are neither found by address nor taken as endpoints (Istio reaches them through
    /// their network's gateway, double HBONE, which Weft does not do yet), and their addresses
    /// may be anyone's here.
    fn build(resources: HashMap<String, (String, Arc<Resource>)>, network: &str) -> Result<Self, Error> {
        let mut index = Index::default();
        for (name, (_, resource)) in &resources {
            match resource.as_ref() {
                Resource::Workload(workload) if workload.network != network => {}
                Resource::Workload(workload) => {
                    let owned = if workload.shared_address { &[][..] } else { &workload.addresses[..] };
                    for ip in owned {
                        if let Some(first) = index.by_ip.insert(ip.to_canonical(), workload.clone()) {
                            return Err(duplicate(*ip, &first.uid, &workload.uid));
                        }
                    }
                    for service in workload.services.keys() {
                        index.endpoints.entry(service.clone()).or_default().push(workload.clone());
                    }
                }
                Resource::Service(service) => {
                    for vip in service.vips.iter().filter(|vip| vip.network == network) {
                        if let Some(first) = index.by_vip.insert(vip.ip.to_canonical(), service.clone()) {
                            return Err(duplicate(vip.ip, &first.key(), name));
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
    policies: RwLock<Arc<Policies>>,
    /// Whether a complete configuration has arrived; until then nothing may be assumed
    /// unmeshed (a destination not yet known could be a workload that must be tunnelled) and
    /// no connection authorized (a DENY policy may be on its way).
    synced: tokio::sync::watch::Sender<Synced>,
    /// Notified at every applied update, for connections that must follow policy changes. A
    /// `Notify`: every open connection waits on it, and its waiter is half a watch's. Only
    /// `notify_waiters`, which wakes every waiter made before it.
    changes: tokio::sync::Notify,
    /// The proxy's network: addresses are looked up on it.
    network: String,
}

impl Default for State {
    fn default() -> Self {
        Self::on_network("")
    }
}

impl State {
    /// An empty index for a proxy on `network` (empty: the one network).
    pub fn on_network(network: &str) -> Self {
        Self {
            index: RwLock::default(),
            policies: RwLock::default(),
            synced: tokio::sync::watch::Sender::new(Synced::default()),
            changes: tokio::sync::Notify::new(),
            network: network.to_owned(),
        }
    }

    /// Marks the whole configuration complete (the local file read).
    pub fn mark_synced(&self) {
        self.synced.send_replace(Synced { addresses: true, policies: true });
    }

    /// Marks one kind complete (its first xDS response applied).
    pub fn mark_kind_synced(&self, kind: impl FnOnce(&mut Synced)) {
        self.synced.send_modify(kind);
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow() == Synced { addresses: true, policies: true }
    }

    /// Waits until the configuration is complete.
    pub async fn synced(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives as long as `self`.
        let _ = synced.wait_for(|synced| synced.addresses && synced.policies).await;
    }

    fn current(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn swap(&self, index: Index) {
        *self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(index);
        self.changed();
    }

    fn changed(&self) {
        self.changes.notify_waiters();
    }

    /// Resolves at the first applied update after it was made (addresses too: they say which
    /// policies a workload has): make it before asking the state, so that an update in between
    /// is not missed.
    pub fn next_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.changes.notified()
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
        self.swap(Index::build(resources, &self.network)?);
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
        self.swap(Index::build(resources, &self.network)?);
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

    /// Every workload's namespace and the name its metrics carry.
    pub fn metrics_names(&self) -> HashSet<(String, String)> {
        let index = self.current();
        index
            .resources
            .values()
            .filter_map(|(_, resource)| match resource.as_ref() {
                Resource::Workload(workload) => {
                    Some((workload.namespace.clone(), workload.metrics_name().to_owned()))
                }
                Resource::Service(_) => None,
            })
            .collect()
    }

    /// The service with virtual IP `ip`, and the workloads backing it.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<(Arc<Service>, Vec<Arc<Workload>>)> {
        let index = self.current();
        let service = index.by_vip.get(&ip.to_canonical())?.clone();
        let endpoints = index.endpoints.get(&service.key()).cloned().unwrap_or_default();
        Some((service, endpoints))
    }

    /// Whether `source` is `waypoint`'s identity ([`State::waypoint_identity`]).
    fn is_waypoint_identity(&self, waypoint: &Waypoint, source: Option<&Identity>) -> bool {
        let Some(source) = source else { return false };
        // The trust domain is the mesh's, which the peer's certificate chain to the mesh's
        // roots has already vouched for.
        self.waypoint_identity(waypoint, &source.trust_domain).is_some_and(|identity| identity == *source)
    }

    /// The identity `waypoint`'s pods must prove: its Gateway's service account, named like
    /// the Gateway and its Service (the control plane deploys it so). Not whatever account a
    /// pod behind its Service runs as: anyone may label a pod into that Service.
    pub fn waypoint_identity(&self, waypoint: &Waypoint, trust_domain: &str) -> Option<Identity> {
        let (service, _) = self.waypoint(waypoint)?;
        Some(Identity::new(trust_domain, &service.namespace, &service.name))
    }

    /// The Service named `key` (`namespace/hostname`), without its endpoints (no copy of
    /// their list).
    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        let index = self.current();
        let Resource::Service(service) = index.resources.get(key)?.1.as_ref() else { return None };
        Some(service.clone())
    }

    /// The Service named `key` (`namespace/hostname`), and the workloads backing it.
    pub fn service_by_key(&self, key: &str) -> Option<(Arc<Service>, Vec<Arc<Workload>>)> {
        let index = self.current();
        let Resource::Service(service) = index.resources.get(key)?.1.as_ref() else { return None };
        let endpoints = index.endpoints.get(key).cloned().unwrap_or_default();
        Some((service.clone(), endpoints))
    }

    /// Where `waypoint` is: its Service and the workloads backing it (named by address, the
    /// Service with that VIP on this proxy's network).
    pub fn waypoint(&self, waypoint: &Waypoint) -> Option<(Arc<Service>, Vec<Arc<Workload>>)> {
        match &waypoint.address {
            WaypointAddress::Service(key) => self.service_by_key(key),
            WaypointAddress::Ip(address) if address.network == self.network => {
                self.service_by_vip(address.ip)
            }
            WaypointAddress::Ip(_) => None,
        }
    }

    /// Every address resource's name with its version: what a reconnecting xDS client says it
    /// holds.
    pub fn versions(&self) -> HashMap<String, String> {
        self.current().resources.iter().map(|(name, (version, _))| (name.clone(), version.clone())).collect()
    }

    /// The same for authorization policies.
    pub fn policy_versions(&self) -> HashMap<String, String> {
        self.current_policies()
            .by_name
            .iter()
            .map(|(name, (version, _))| (name.clone(), version.clone()))
            .collect()
    }

    fn current_policies(&self) -> Arc<Policies> {
        self.policies.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Applies a delta of authorization policies (they cannot conflict with one another).
    pub fn apply_policies(&self, update: Update<Policy>) {
        let mut by_name = self.current_policies().by_name.clone();
        for name in &update.removed {
            by_name.remove(name);
        }
        for (name, version, policy) in update.changed {
            by_name.insert(name, (version, Arc::new(policy)));
        }
        *self.policies.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Arc::new(Policies::build(by_name));
        self.changed();
    }

    /// The port `pod`, at `ip`, serves `service_port` of the Service named `hostname` on, as its
    /// workload maps it.
    pub fn service_target_port(
        &self,
        pod: LocalPod<'_>,
        ip: IpAddr,
        hostname: &str,
        service_port: u16,
    ) -> Result<u16, Unresolved> {
        let workload =
            self.workload_by_ip(ip).filter(|workload| workload.is(pod)).ok_or(Unresolved::NoWorkload)?;
        workload
            .services
            .iter()
            .filter(|(key, _)| key.rsplit_once('/').is_some_and(|(_, name)| name == hostname))
            .flat_map(|(_, ports)| ports)
            .find(|mapping| mapping.service_port == service_port)
            .map(|mapping| mapping.target_port)
            .ok_or(Unresolved::NotBacked)
    }

    /// [`State::service_target_port`], waiting up to `patience` while the configuration lacks
    /// the pod's workload (a pod handed over before its workload arrived).
    pub async fn service_target_port_known(
        &self,
        pod: LocalPod<'_>,
        ip: IpAddr,
        hostname: &str,
        service_port: u16,
        patience: std::time::Duration,
    ) -> Result<u16, Unresolved> {
        self.known(
            patience,
            |state| state.service_target_port(pod, ip, hostname, service_port),
            |resolved| *resolved == Err(Unresolved::NoWorkload),
        )
        .await
    }

    /// `ask` of this state, asked again on every applied update while `incomplete` says the
    /// configuration may yet answer it differently, for at most `patience`; the last answer.
    async fn known<T>(
        &self,
        patience: std::time::Duration,
        ask: impl Fn(&Self) -> T,
        incomplete: impl Fn(&T) -> bool,
    ) -> T {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Asked once waiting, so a change just before is not missed.
            let next = self.next_change();
            let answer = ask(self);
            if !incomplete(&answer) || tokio::time::timeout_at(deadline, next).await.is_err() {
                return answer;
            }
        }
    }

    /// Decides an inbound connection to `pod`: the mesh-wide policies, its namespace's, and
    /// those its workload resource names. Without its workload (at the connection's
    /// destination address), or one of the policies it names, the verdict is a refusal
    /// ([`Verdict::incomplete`]).
    pub fn authorize(&self, pod: LocalPod<'_>, connection: &Connection) -> Verdict {
        let policies = self.current_policies();
        let Some(workload) =
            self.workload_by_ip(connection.destination.ip()).filter(|workload| workload.is(pod))
        else {
            return Verdict::UnknownWorkload;
        };
        if let Some(waypoint) = &workload.waypoint
            && !self.is_waypoint_identity(waypoint, connection.source)
        {
            return Verdict::BypassedWaypoint { waypoint: waypoint.to_string() };
        }
        match policies.applying(&workload, pod.namespace) {
            Ok(applying) => crate::authz::decide(applying, connection),
            // A DENY among them would go unseen: nothing is allowed until it arrives.
            Err(policy) => Verdict::UnknownPolicy { policy },
        }
    }

    /// The names of the policies that decide connections to `pod` (its workload at `address`),
    /// as [`State::authorize`] takes them, for `config_dump` and `weftctl check`: `None` without
    /// its workload; `Err(name)` while a policy it names has not arrived (every connection is
    /// refused meanwhile).
    pub fn policies_for(&self, pod: LocalPod<'_>, address: IpAddr) -> Option<Result<Vec<String>, String>> {
        let policies = self.current_policies();
        let workload = self.workload_by_ip(address).filter(|workload| workload.is(pod))?;
        Some(policies.applying(&workload, pod.namespace).map(|applying| {
            applying.iter().map(|policy| format!("{}/{}", policy.namespace, policy.name)).collect()
        }))
    }

    /// [`State::authorize`], waiting up to `patience` while the configuration lacks the pod's
    /// workload (a pod handed over before its workload arrived) or a policy it names: a
    /// connection is never decided without every policy that selects its pod.
    pub async fn authorize_known(
        &self,
        pod: LocalPod<'_>,
        connection: &Connection<'_>,
        patience: std::time::Duration,
    ) -> Verdict {
        self.known(patience, |state| state.authorize(pod, connection), Verdict::incomplete).await
    }

    /// Everything known, for the admin `config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let index = self.current();
        // From the resources, not the address index: shared addresses are not in that one.
        let mut workloads: Vec<&Workload> = index
            .resources
            .values()
            .filter_map(|(_, resource)| match resource.as_ref() {
                Resource::Workload(workload) => Some(workload.as_ref()),
                Resource::Service(_) => None,
            })
            .collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<&Service> = index.by_vip.values().map(AsRef::as_ref).collect();
        services.sort_by_key(|service| service.key());
        services.dedup_by(|a, b| a.key() == b.key());
        let policies = self.current_policies();
        let mut policies: Vec<&Policy> =
            policies.by_name.values().map(|(_, policy)| policy.as_ref()).collect();
        policies.sort_by_key(|policy| policy.key());
        serde_json::json!({ "workloads": workloads, "services": services, "policies": policies })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// The pod of the test workload named `name`.
    fn local(name: &str) -> LocalPod<'_> {
        LocalPod { name, namespace: "ns", service_account: "sa" }
    }

    fn workload(uid: &str, ip: &str) -> Workload {
        Workload {
            trust_domain: None,
            uid: uid.into(),
            network: String::new(),
            name: uid.into(),
            namespace: "ns".into(),
            workload_name: String::new(),
            service_account: "sa".into(),
            addresses: vec![ip.parse().unwrap()],
            node: "node0".into(),
            protocol: TunnelProtocol::Hbone,
            services: BTreeMap::new(),
            healthy: true,
            authorization_policies: Vec::new(),
            shared_address: false,
            waypoint: None,
            locality: Locality::default(),
        }
    }

    fn service(name: &str, vip: &str) -> Service {
        Service {
            name: name.into(),
            namespace: "ns".into(),
            hostname: format!("{name}.ns.svc.cluster.local"),
            vips: vec![NetworkIp { network: String::new(), ip: vip.parse().unwrap() }],
            ports: vec![80],
            allow_unhealthy: false,
            locality_preference: None,
            subject_alt_names: Vec::new(),
            waypoint: None,
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
    fn the_closest_endpoints_share_the_longest_run_of_scopes_or_all_of_them_when_strict() {
        let placed = |uid: &str, region: &str, zone: &str, node: &str| Workload {
            locality: Locality { region: region.into(), zone: zone.into(), subzone: String::new() },
            node: node.into(),
            ..workload(uid, "10.0.0.1")
        };
        let client = placed("client", "eu", "eu-a", "n1");
        let endpoints = || {
            vec![
                placed("same-node", "eu", "eu-a", "n1"),
                placed("same-zone", "eu", "eu-a", "n2"),
                placed("same-region", "eu", "eu-b", "n3"),
                placed("elsewhere", "us", "us-a", "n4"),
            ]
        };
        let uids = |chosen: Vec<Workload>| chosen.into_iter().map(|w| w.uid).collect::<Vec<_>>();
        let zone = LocalityPreference {
            scopes: vec![
                LocalityScope::Network,
                LocalityScope::Region,
                LocalityScope::Zone,
                LocalityScope::Subzone,
            ],
            strict: false,
        };
        let closest = |preference: &LocalityPreference, candidates: Vec<Workload>| {
            uids(preference.closest(Some(&client), candidates, |w| w))
        };
        assert_eq!(closest(&zone, endpoints()), ["same-node", "same-zone"]);
        // None left in the zone: the region's; none in the region: anywhere.
        assert_eq!(closest(&zone, endpoints().split_off(2)), ["same-region"]);
        assert_eq!(closest(&zone, endpoints().split_off(3)), ["elsewhere"]);
        let node =
            LocalityPreference { scopes: vec![LocalityScope::Zone, LocalityScope::Node], strict: true };
        assert_eq!(closest(&node, endpoints()), ["same-node"]);
        assert!(closest(&node, endpoints().split_off(1)).is_empty(), "strict: nothing else will do");
        assert_eq!(uids(zone.closest(None, endpoints(), |w| w)).len(), 4, "an unknown client: any");
        assert!(node.closest(None, endpoints(), |w| w).is_empty());
        // Nearest first, for a connection to fail over in that order.
        let ordered = uids(zone.nearest_first(Some(&client), endpoints().into_iter().rev().collect(), |w| w));
        assert_eq!(ordered, ["same-zone", "same-node", "same-region", "elsewhere"]);
        assert_eq!(uids(node.nearest_first(Some(&client), endpoints(), |w| w)), ["same-node"]);
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
    fn a_services_hostname_and_port_resolve_to_the_local_pods_target_port() {
        let state = State::default();
        let mut a = workload("a", "10.0.0.1");
        a.services.insert(
            "ns/web.ns.svc.cluster.local".into(),
            vec![PortMapping { service_port: 80, target_port: 8080 }],
        );
        state.replace(vec![a]).unwrap();
        let ip = "10.0.0.1".parse().unwrap();
        let resolve = |pod, hostname, port| state.service_target_port(pod, ip, hostname, port);
        assert_eq!(resolve(local("a"), "web.ns.svc.cluster.local", 80), Ok(8080));
        assert_eq!(resolve(local("a"), "web.ns.svc.cluster.local", 81), Err(Unresolved::NotBacked));
        assert_eq!(resolve(local("a"), "db.ns.svc.cluster.local", 80), Err(Unresolved::NotBacked));
        assert_eq!(resolve(local("b"), "web.ns.svc.cluster.local", 80), Err(Unresolved::NoWorkload));
    }

    #[test]
    fn only_the_proxys_own_network_is_reached_and_another_may_reuse_its_addresses() {
        let state = State::on_network("net1");
        let on = |network: &str, mut workload: Workload| {
            workload.network = network.into();
            workload.services.insert(
                "ns/web.ns.svc.cluster.local".into(),
                vec![PortMapping { service_port: 80, target_port: 8080 }],
            );
            workload
        };
        let mut web = service("web", "10.96.0.10");
        // The same VIP on both networks, and one only the other network has.
        let vip = |network: &str, ip: &str| NetworkIp { network: network.into(), ip: ip.parse().unwrap() };
        web.vips = vec![vip("net1", "10.96.0.10"), vip("net2", "10.96.0.10"), vip("net2", "10.96.0.11")];
        state
            .apply(Update {
                changed: vec![
                    // One address, two networks: no conflict.
                    changed(Address::Workload(on("net1", workload("here", "10.0.0.1")))),
                    changed(Address::Workload(on("net2", workload("there", "10.0.0.1")))),
                    changed(Address::Service(web)),
                ],
                removed: vec![],
            })
            .unwrap();
        assert_eq!(state.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid, "here");
        let (_, endpoints) = state.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
        let endpoints: Vec<&str> = endpoints.iter().map(|workload| workload.uid.as_str()).collect();
        assert_eq!(endpoints, ["here"], "an endpoint of another network is behind its gateway");
        assert!(state.service_by_vip("10.96.0.11".parse().unwrap()).is_none());
        // Two owners of one address on the proxy's own network still conflict.
        let clash = Update {
            changed: vec![changed(Address::Workload(on("net1", workload("again", "10.0.0.1"))))],
            removed: vec![],
        };
        assert!(state.apply(clash).is_err());
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
        let key = "ns/web.ns.svc.cluster.local";
        assert!(Arc::ptr_eq(&state.service(key).unwrap(), &state.service_by_key(key).unwrap().0));
        assert!(state.service("b").is_none(), "a workload is no Service");
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

    #[test]
    fn shared_addresses_back_services_but_are_never_found_by_address() {
        let state = State::default();
        let shared = |uid: &str| {
            let mut endpoint = workload(uid, "10.0.0.1");
            endpoint.shared_address = true;
            endpoint.services.insert(
                "ns/web.ns.svc.cluster.local".into(),
                vec![PortMapping { service_port: 80, target_port: 8080 }],
            );
            endpoint
        };
        // The same address twice, and a pod's too: no conflict, the pod keeps its address.
        state
            .apply(Update {
                changed: vec![
                    changed(Address::Workload(shared("slice-a"))),
                    changed(Address::Workload(shared("slice-b"))),
                    changed(Address::Workload(workload("pod", "10.0.0.1"))),
                    changed(Address::Service(service("web", "10.96.0.10"))),
                ],
                removed: vec![],
            })
            .unwrap();
        assert_eq!(state.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid, "pod");
        let (_, endpoints) = state.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!(endpoints.iter().map(|w| w.uid.as_str()).collect::<Vec<_>>(), ["slice-a", "slice-b"]);
        let dumped = state.dump()["workloads"].as_array().unwrap().len();
        assert_eq!(dumped, 3, "the config dump lists every workload");
        state.apply(Update { changed: vec![], removed: vec!["pod".into()] }).unwrap();
        assert!(state.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn a_pod_is_its_workload_by_name_namespace_and_account_whatever_the_control_plane_calls_its_uid() {
        let state = State::default();
        // istiod's name for pod ns/a; Weft's control plane would use the pod's uid.
        let mut a = workload("Kubernetes//Pod/ns/a", "10.0.0.1");
        a.name = "a".into();
        state.replace(vec![a]).unwrap();
        state.apply_policies(Update { changed: vec![], removed: vec![] });
        let to_a = Connection {
            source: None,
            source_ip: "10.9.9.9".parse().unwrap(),
            destination: SocketAddr::new("10.0.0.1".parse().unwrap(), 80),
        };
        assert!(state.authorize(local("a"), &to_a).allowed());
        let other_account = LocalPod { service_account: "other", ..local("a") };
        assert_eq!(state.authorize(other_account, &to_a), Verdict::UnknownWorkload);
        assert_eq!(state.authorize(local("b"), &to_a), Verdict::UnknownWorkload);
    }

    #[test]
    fn a_pod_behind_a_waypoint_admits_only_the_waypoints_pods() {
        let state = State::default();
        let waypoint =
            Waypoint { address: WaypointAddress::Service("ns/wp.ns.svc.cluster.local".into()), port: 15008 };
        let mut app = workload("app", "10.0.0.1");
        app.waypoint = Some(waypoint.clone());
        let mut wp_pod = workload("wp-pod", "10.0.0.2");
        wp_pod.service_account = "wp".into();
        wp_pod.services.insert(
            "ns/wp.ns.svc.cluster.local".into(),
            vec![PortMapping { service_port: 15008, target_port: 15008 }],
        );
        state.apply_policies(Update { changed: vec![], removed: vec![] });
        let from = |identity: Option<&Identity>| {
            let connection = Connection {
                source: identity,
                source_ip: "10.0.0.2".parse().unwrap(),
                destination: SocketAddr::new("10.0.0.1".parse().unwrap(), 80),
            };
            state.authorize(local("app"), &connection)
        };
        let waypoints = Identity::new("cluster.local", "ns", "wp");
        let bypassed = Verdict::BypassedWaypoint { waypoint: "ns/wp.ns.svc.cluster.local".into() };
        // The waypoint's Service is not known yet: nobody is its pod.
        state.replace(vec![app.clone(), wp_pod.clone()]).unwrap();
        assert_eq!(from(Some(&waypoints)), bypassed);
        let mut service = service("wp", "10.96.0.9");
        service.ports = vec![15008];
        state.apply(Update { changed: vec![changed(Address::Service(service))], removed: vec![] }).unwrap();
        assert!(from(Some(&waypoints)).allowed());
        assert_eq!(from(Some(&Identity::new("cluster.local", "ns", "sa"))), bypassed, "another workload");
        // A pod labelled into the waypoint's Service under another account is no waypoint.
        let mut impostor = workload("impostor", "10.0.0.3");
        impostor.service_account = "impostor".into();
        impostor.services = wp_pod.services.clone();
        state.apply(Update { changed: vec![changed(Address::Workload(impostor))], removed: vec![] }).unwrap();
        assert_eq!(
            from(Some(&Identity::new("cluster.local", "ns", "impostor"))),
            bypassed,
            "an impostor behind the Service"
        );
        assert_eq!(from(None), bypassed, "plaintext");
        let (found, pods) = state.waypoint(&waypoint).unwrap();
        assert_eq!((found.name.as_str(), pods.len()), ("wp", 2));
    }

    #[test]
    fn a_pod_is_governed_by_global_namespace_and_its_own_selected_policies_only() {
        use crate::authz::{Action, Policy, Scope};
        let policy = |namespace: &str, name: &str, scope| Policy {
            name: name.into(),
            namespace: namespace.into(),
            scope,
            action: Action::Allow,
            groups: vec![],
            dry_run: false,
        };
        let named = |policy: Policy| (policy.key(), "1".to_owned(), policy);
        let state = State::default();
        let mut selected = workload("a", "10.0.0.1");
        selected.authorization_policies = vec!["ns/mine".into(), "ns/scoped-elsewhere".into()];
        state.replace(vec![selected, workload("b", "10.0.0.2")]).unwrap();
        state.apply_policies(Update {
            changed: vec![
                named(policy("weft-system", "mesh", Scope::Global)),
                named(policy("ns", "namespace", Scope::Namespace)),
                named(policy("other", "namespace", Scope::Namespace)),
                named(policy("ns", "mine", Scope::WorkloadSelector)),
                // Named by the workload but not a selector policy: it cannot apply twice.
                named(policy("ns", "scoped-elsewhere", Scope::Namespace)),
                named(policy("ns", "someone-elses", Scope::WorkloadSelector)),
            ],
            removed: vec![],
        });
        let applying = |uid: &str, ip: &str| {
            let connection = Connection {
                source: None,
                source_ip: "10.9.9.9".parse().unwrap(),
                destination: SocketAddr::new(ip.parse().unwrap(), 80),
            };
            match state.authorize(local(uid), &connection) {
                Verdict::NotAllowed { mut policies } => {
                    policies.sort();
                    policies
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            applying("a", "10.0.0.1"),
            ["ns/mine", "ns/namespace", "ns/scoped-elsewhere", "weft-system/mesh"]
        );
        assert_eq!(applying("b", "10.0.0.2"), ["ns/namespace", "ns/scoped-elsewhere", "weft-system/mesh"]);
        // What the dump lists for a pod is what decides for it.
        let listed = |uid: &str, ip: &str| {
            let mut names = state.policies_for(local(uid), ip.parse().unwrap()).unwrap().unwrap();
            names.sort();
            names
        };
        assert_eq!(listed("a", "10.0.0.1"), applying("a", "10.0.0.1"));
        assert_eq!(listed("b", "10.0.0.2"), applying("b", "10.0.0.2"));
        assert_eq!(state.policies_for(local("c"), "10.0.0.1".parse().unwrap()), None, "not its workload");
        // An address now held by another workload does not lend it its policies: refused.
        let to_c = Connection {
            source: None,
            source_ip: "10.9.9.9".parse().unwrap(),
            destination: SocketAddr::new("10.0.0.1".parse().unwrap(), 80),
        };
        assert_eq!(state.authorize(local("c"), &to_c), Verdict::UnknownWorkload);
        state.apply_policies(Update { changed: vec![], removed: vec!["ns/namespace".into()] });
        assert_eq!(applying("b", "10.0.0.2"), ["ns/scoped-elsewhere", "weft-system/mesh"]);
        assert_eq!(state.policy_versions().len(), 5);
        // A policy the workload names is gone: it could have been a DENY, so nothing passes.
        state.apply_policies(Update { changed: vec![], removed: vec!["ns/mine".into()] });
        let to_a = Connection { destination: SocketAddr::new("10.0.0.1".parse().unwrap(), 80), ..to_c };
        assert_eq!(state.authorize(local("a"), &to_a), Verdict::UnknownPolicy { policy: "ns/mine".into() });
        assert_eq!(
            state.policies_for(local("a"), "10.0.0.1".parse().unwrap()),
            Some(Err("ns/mine".into())),
            "the one it waits for"
        );
    }

    /// Polls `decision` once: whether it is still waiting.
    async fn pending(decision: &mut std::pin::Pin<&mut impl std::future::Future<Output = Verdict>>) -> bool {
        tokio::select! {
            biased;
            verdict = decision.as_mut() => panic!("decided too early: {verdict}"),
            () = std::future::ready(()) => true,
        }
    }

    #[tokio::test]
    async fn a_pod_whose_workload_and_deny_arrive_late_is_denied_never_allowed_meanwhile() {
        use crate::authz::{Action, Policy, Scope};
        let state = State::default();
        let to_a = Connection {
            source: None,
            source_ip: "10.9.9.9".parse().unwrap(),
            destination: SocketAddr::new("10.0.0.1".parse().unwrap(), 80),
        };
        // Nothing arrives: refused once the patience runs out.
        let short = std::time::Duration::from_millis(20);
        assert_eq!(state.authorize_known(local("a"), &to_a, short).await, Verdict::UnknownWorkload);

        let decision = state.authorize_known(local("a"), &to_a, std::time::Duration::from_secs(30));
        tokio::pin!(decision);
        assert!(pending(&mut decision).await);
        // The workload arrives naming a DENY the proxy does not hold yet: still undecided.
        let mut a = workload("a", "10.0.0.1");
        a.authorization_policies = vec!["ns/deny-all".into()];
        state.replace(vec![a]).unwrap();
        assert!(pending(&mut decision).await);
        let deny_all = Policy {
            name: "deny-all".into(),
            namespace: "ns".into(),
            scope: Scope::WorkloadSelector,
            action: Action::Deny,
            groups: vec![vec![]],
            dry_run: false,
        };
        state.apply_policies(Update {
            changed: vec![("ns/deny-all".into(), "1".into(), deny_all)],
            removed: vec![],
        });
        assert_eq!(decision.await, Verdict::Denied { policy: "ns/deny-all".into() });
    }

    #[tokio::test]
    async fn a_services_port_waits_for_the_pods_workload_to_arrive() {
        let state = State::default();
        let ip = "10.0.0.1".parse().unwrap();
        let short = std::time::Duration::from_millis(20);
        let resolve = |patience| {
            state.service_target_port_known(local("a"), ip, "web.ns.svc.cluster.local", 80, patience)
        };
        assert_eq!(resolve(short).await, Err(Unresolved::NoWorkload), "nothing arrives: given up");
        let resolved = resolve(std::time::Duration::from_secs(30));
        tokio::pin!(resolved);
        let waiting = tokio::select! {
            biased;
            resolved = resolved.as_mut() => panic!("resolved too early: {resolved:?}"),
            () = std::future::ready(()) => true,
        };
        assert!(waiting);
        let mut a = workload("a", "10.0.0.1");
        a.services.insert(
            "ns/web.ns.svc.cluster.local".into(),
            vec![PortMapping { service_port: 80, target_port: 8080 }],
        );
        state.replace(vec![a]).unwrap();
        assert_eq!(resolved.await, Ok(8080));
    }
}
