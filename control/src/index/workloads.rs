//! The index's workloads, kept current one change at a time: each pod's workload, which pod owns
//! each address, which Services each pod backs (its EndpointSlices, [`endpoints`]) and the
//! workloads of endpoints that are not pods. A pod's, a Service's or a slice's change redoes
//! what depends on it — the pods claiming the same addresses, the slices naming that pod or
//! those addresses, the slices of that Service — not the cluster: at 50 000 pods this part of a
//! pod's change took under 0.1 ms here, a build from nothing about 0.7 s. What every pod depends on
//! (its namespace's labels, the policies' selectors, the nodes' localities: [`Context`]) changes
//! rarely; when it does, the pods of that namespace or node are redone ([`super::Index`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service, ServicePort},
    discovery::v1::EndpointSlice,
};
use weft_api::workload as api;

use super::{
    Naming, PodMap, Resources, encode_as,
    endpoints::{self, PodKind, SliceMembers},
    ip_bytes, keys_differing, locality, waypoint,
};

/// A namespaced object's namespace and name.
type Key = (String, String);

/// A slice's key, shared by every set that names it.
type SliceKey = Arc<Key>;

/// A pod's uid, shared by every map that holds it.
type Uid = Arc<str>;

/// A set of pods, hashed as [`PodMap`]s are.
type Pods = HashSet<Uid, foldhash::fast::RandomState>;

type Labels = BTreeMap<String, String>;

/// An authorization policy's key, and the labels it selects pods by.
pub type Selector = (String, Labels);

/// What every pod's workload depends on besides the pod.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Context {
    /// Each namespace's labels (they enroll pods and name waypoints).
    pub namespace_labels: HashMap<String, Option<Labels>>,
    /// The authorization policies with a selector, by namespace: their keys and the labels
    /// they select pods by.
    pub selectors: HashMap<String, Vec<Selector>>,
    pub localities: locality::Localities,
}

impl Context {
    /// The namespaces whose labels or selecting policies differ in `other`, and the nodes
    /// whose localities do: what the workloads of their pods depend on.
    pub fn changed_for(&self, other: &Context) -> (HashSet<String>, HashSet<String>) {
        let namespaces = keys_differing(&self.namespace_labels, &other.namespace_labels)
            .chain(keys_differing(&self.selectors, &other.selectors))
            .map(str::to_owned)
            .collect();
        (namespaces, self.localities.differing(&other.localities).map(str::to_owned).collect())
    }
}

/// A pod, as far as the index reads it.
#[derive(Debug)]
struct PodEntry {
    key: Arc<Key>,
    host_network: bool,
    /// Its workload before addresses are shared out and Services joined; `None`: it has no
    /// workload (not running, on its node's network, no address yet).
    workload: Option<(Claim, api::Workload)>,
}

/// A slice: what it places, and what that depends on.
#[derive(Debug)]
struct SliceEntry {
    slice: EndpointSlice,
    /// Its Service, `(namespace, name)`.
    service: Option<Key>,
    members: Option<SliceMembers>,
}

/// How strongly a workload holds its addresses: live beats terminating, newer beats older.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    live: bool,
    created: Option<k8s_openapi::jiff::Timestamp>,
    uid: Uid,
}

/// The workloads and what they were made from. Changes are recorded ([`Workloads::pod`],
/// [`Workloads::service`], [`Workloads::slice`]) and then [`Workloads::settle`]d.
#[derive(Debug)]
pub struct Workloads {
    naming: Naming,
    context: Context,
    pods: PodMap<Uid, PodEntry>,
    /// Each pod's uid, by namespace and name, as changes name pods.
    uids: HashMap<Arc<Key>, Uid>,
    /// Each address's claimants; the strongest owns it.
    claims: PodMap<Vec<u8>, Vec<Claim>>,
    /// How endpoints naming a pod place it, for the pods they may name.
    kinds: PodMap<Uid, PodKind>,
    /// Each Service's ports (what places its endpoints).
    services: HashMap<Key, Vec<ServicePort>>,
    slices: HashMap<SliceKey, SliceEntry>,
    slices_of_service: HashMap<Key, BTreeSet<SliceKey>>,
    slices_naming_pod: PodMap<Uid, BTreeSet<SliceKey>>,
    slices_naming_address: PodMap<IpAddr, BTreeSet<SliceKey>>,
    /// The slices that place each pod, in order: a pod's Services are merged from them.
    placing: PodMap<Uid, BTreeSet<SliceKey>>,
    /// What each pod with an address and policies counted for in `selected`: its policies and
    /// its name.
    counted: PodMap<Uid, (Vec<String>, String)>,
    /// Each policy's selected pods (`namespace/name`, with how many pods have that name).
    selected: HashMap<String, BTreeMap<String, usize>>,
    /// The workloads, by uid.
    resources: Resources,
    /// Pods whose addresses and kind must be redone.
    dirty_pods: Pods,
    /// Pods whose workload must be published again.
    redo: Pods,
    dirty_slices: BTreeSet<SliceKey>,
}

impl Workloads {
    pub fn new(naming: Naming, context: Context) -> Self {
        Self {
            naming,
            context,
            pods: PodMap::default(),
            uids: HashMap::new(),
            claims: PodMap::default(),
            kinds: PodMap::default(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of_service: HashMap::new(),
            slices_naming_pod: PodMap::default(),
            slices_naming_address: PodMap::default(),
            placing: PodMap::default(),
            counted: PodMap::default(),
            selected: HashMap::new(),
            resources: Resources::new(),
            dirty_pods: Pods::default(),
            redo: Pods::default(),
            dirty_slices: BTreeSet::new(),
        }
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// What every pod depends on is now `context`: the pods it changed for must be redone
    /// ([`Workloads::pod`]).
    pub fn set_context(&mut self, context: Context) {
        self.context = context;
    }

    /// Pod `namespace/name` is now `pod` (`None`: gone).
    pub fn pod(&mut self, namespace: &str, name: &str, pod: Option<&Pod>) {
        let key = Arc::new((namespace.to_owned(), name.to_owned()));
        let uid: Option<Uid> = pod.and_then(|pod| pod.metadata.uid.as_deref()).map(Arc::from);
        if let Some(other) = uid.as_ref().and_then(|uid| self.pods.get(uid)).map(|other| other.key.clone())
            && other != key
        {
            // The same uid under another name: never from an API server; this one wins.
            self.pod(&other.0, &other.1, None);
        }
        let before = self.uids.remove(&key).and_then(|uid| Some((uid.clone(), self.pods.remove(&uid)?)));
        let after = pod.zip(uid).map(|(pod, uid)| {
            let host_network = pod.spec.as_ref().and_then(|spec| spec.host_network) == Some(true);
            let workload = workload(&self.naming, &self.context, pod, &uid);
            (uid, PodEntry { key: key.clone(), host_network, workload })
        });
        // Only the addresses whose claim changed: a pod's update seldom touches them.
        let claims = |entry: Option<&(Uid, PodEntry)>| -> Vec<(Vec<u8>, Claim)> {
            let Some((claim, workload)) = entry.and_then(|(_, entry)| entry.workload.as_ref()) else {
                return Vec::new();
            };
            workload.addresses.iter().map(|address| (address.clone(), claim.clone())).collect()
        };
        let (old, new) = (claims(before.as_ref()), claims(after.as_ref()));
        for (address, claim) in old.iter().filter(|claim| !new.contains(claim)) {
            if let Some(claims) = self.claims.get_mut(address) {
                claims.retain(|held| held != claim);
                if claims.is_empty() {
                    self.claims.remove(address);
                }
            }
            self.address_touched(address);
        }
        for (address, claim) in new.into_iter().filter(|claim| !old.contains(claim)) {
            self.claims.entry(address.clone()).or_default().push(claim);
            self.address_touched(&address);
        }
        if let Some((uid, _)) = before {
            self.dirty_pods.insert(uid);
        }
        if let Some((uid, entry)) = after {
            self.dirty_pods.insert(uid.clone());
            self.pods.insert(uid.clone(), entry);
            self.uids.insert(key, uid);
        }
    }

    /// Service `namespace/name` is now `service` (`None`: gone).
    pub fn service(&mut self, namespace: &str, name: &str, service: Option<&Service>) {
        let key = (namespace.to_owned(), name.to_owned());
        self.dirty_slices.extend(self.slices_of_service.get(&key).into_iter().flatten().cloned());
        match service {
            Some(service) => {
                let ports = service.spec.as_ref().and_then(|spec| spec.ports.clone()).unwrap_or_default();
                self.services.insert(key, ports)
            }
            None => self.services.remove(&key),
        };
    }

    /// EndpointSlice `namespace/name` is now `slice` (`None`: gone).
    pub fn slice(&mut self, namespace: &str, name: &str, slice: Option<&EndpointSlice>) {
        let key: SliceKey = Arc::new((namespace.to_owned(), name.to_owned()));
        let members = match self.slices.remove(&key) {
            Some(old) => {
                // What it named no longer brings it back.
                let (uids, addresses) = endpoints::references(&old.slice);
                for uid in uids {
                    remove_from(&mut self.slices_naming_pod, uid, &key);
                }
                for address in addresses {
                    remove_from(&mut self.slices_naming_address, &address, &key);
                }
                if let Some(service) = &old.service {
                    remove_from(&mut self.slices_of_service, service, &key);
                }
                old.members
            }
            None => None,
        };
        let Some(slice) = slice else {
            if let Some(members) = members {
                unplace(&self.pods, &mut self.placing, &mut self.resources, &mut self.redo, &key, members);
            }
            return;
        };
        let (uids, addresses) = endpoints::references(slice);
        for uid in uids {
            self.slices_naming_pod.entry(Arc::from(uid)).or_default().insert(key.clone());
        }
        for address in addresses {
            self.slices_naming_address.entry(address).or_default().insert(key.clone());
        }
        let service =
            endpoints::service_of(slice).map(|(namespace, name)| (namespace.to_owned(), name.to_owned()));
        if let Some(service) = &service {
            self.slices_of_service.entry(service.clone()).or_default().insert(key.clone());
        }
        // Kept without what the index never reads (the bulk of a slice's metadata).
        let mut slice = slice.clone();
        slice.metadata.managed_fields = None;
        slice.metadata.annotations = None;
        self.slices.insert(key.clone(), SliceEntry { slice, service, members });
        self.dirty_slices.insert(key);
    }

    /// Redoes what the recorded changes touched; returns the workloads (by uid) and each
    /// policy's selected pods.
    pub fn settle(&mut self) -> (&Resources, &HashMap<String, BTreeMap<String, usize>>) {
        // Addresses and kinds first: slices place pods by them.
        for uid in std::mem::take(&mut self.dirty_pods) {
            let kind = self.kind_of(&uid);
            let before = match kind {
                Some(kind) => self.kinds.insert(uid.clone(), kind),
                None => self.kinds.remove(&uid),
            };
            if before != kind {
                self.dirty_slices.extend(self.slices_naming_pod.get(&uid).into_iter().flatten().cloned());
            }
            self.redo.insert(uid);
        }
        let placed: Vec<(SliceKey, Option<SliceMembers>)> = std::mem::take(&mut self.dirty_slices)
            .into_iter()
            .map(|key| {
                let members = self.slices.get(&key).and_then(|entry| {
                    let service = self.services.get(entry.service.as_ref()?)?;
                    endpoints::members(&self.naming, service, &entry.slice, &*self)
                });
                (key, members)
            })
            .collect();
        for (key, members) in placed {
            let Some(entry) = self.slices.get_mut(&key) else { continue };
            let old = std::mem::replace(&mut entry.members, members).unwrap_or_default();
            let new = entry.members.as_ref();
            // Only the pods whose place changed are redone, the other endpoints' workloads
            // made again only when they changed: a slice holds up to a hundred endpoints.
            let ports = |uid: &String| new.and_then(|new| new.pods.get(uid));
            for (uid, _) in old.pods.iter().filter(|(uid, ports_before)| ports(uid) != Some(ports_before)) {
                remove_from(&mut self.placing, uid.as_str(), &key);
                self.redo.insert(intern(&self.pods, uid));
            }
            for (uid, _) in
                new.into_iter().flat_map(|new| &new.pods).filter(|(uid, now)| old.pods.get(*uid) != Some(now))
            {
                let uid = intern(&self.pods, uid);
                self.placing.entry(uid.clone()).or_default().insert(key.clone());
                self.redo.insert(uid);
            }
            if old.key != new.map_or("", |new| new.key.as_str()) {
                // Another Service: every pod it still places has another entry (those it no
                // longer places were redone above).
                let placed = new.into_iter().flat_map(|new| new.pods.keys());
                self.redo.extend(placed.map(|uid| intern(&self.pods, uid)));
            }
            let others = new.map_or(&[][..], |new| &new.others[..]);
            if old.others != others {
                for other in &old.others {
                    self.resources.remove(&other.uid);
                }
                for other in others {
                    self.resources.insert(other.uid.clone(), workload_resource(other));
                }
            }
        }
        for uid in std::mem::take(&mut self.redo) {
            self.redo_workload(&uid);
        }
        (&self.resources, &self.selected)
    }

    /// Publishes pod `uid`'s workload as it now stands: the addresses it owns, the Services
    /// its slices place it in; none without an address.
    fn redo_workload(&mut self, uid: &Uid) {
        let (policies, name) = self.counted.remove(uid).unwrap_or_default();
        for policy in policies {
            let Some(names) = self.selected.get_mut(&policy) else { continue };
            if let Some(count) = names.get_mut(&name) {
                *count -= 1;
                if *count == 0 {
                    names.remove(&name);
                }
            }
            if names.is_empty() {
                self.selected.remove(&policy);
            }
        }
        let owned: Vec<Vec<u8>> = self.owned(uid).cloned().collect();
        if owned.is_empty() {
            self.resources.remove(&**uid);
            return;
        }
        let mut services: BTreeMap<String, api::PortList> = BTreeMap::new();
        for slice in self.placing.get(uid).into_iter().flatten() {
            let Some(members) = self.slices.get(slice).and_then(|entry| entry.members.as_ref()) else {
                continue;
            };
            let list = services.entry(members.key.clone()).or_default();
            for port in members.pods.get(&**uid).into_iter().flatten() {
                if !list.ports.contains(port) {
                    list.ports.push(*port);
                }
            }
        }
        let Some((_, workload)) = self.pods.get_mut(uid).and_then(|entry| entry.workload.as_mut()) else {
            return;
        };
        if !workload.authorization_policies.is_empty() {
            let name = format!("{}/{}", workload.namespace, workload.name);
            for policy in &workload.authorization_policies {
                *self.selected.entry(policy.clone()).or_default().entry(name.clone()).or_default() += 1;
            }
            self.counted.insert(uid.clone(), (workload.authorization_policies.clone(), name));
        }
        // Encoded as published; the pod's own kept as it came, for the next change.
        let all = std::mem::replace(&mut workload.addresses, owned);
        workload.services = services;
        let resource = workload_resource(workload);
        workload.addresses = all;
        workload.services.clear();
        self.resources.insert(uid.to_string(), resource);
    }

    /// How endpoints naming pod `uid` place it: its workload's if it owns an address.
    fn kind_of(&self, uid: &Uid) -> Option<PodKind> {
        let entry = self.pods.get(uid)?;
        endpoints::pod_kind(entry.host_network, self.owned(uid).next().is_some())
    }

    /// The addresses of pod `uid`'s workload that it owns.
    fn owned<'a>(&'a self, uid: &'a Uid) -> impl Iterator<Item = &'a Vec<u8>> {
        let workload = self.pods.get(uid).and_then(|entry| entry.workload.as_ref());
        let addresses = workload.into_iter().flat_map(|(_, workload)| &workload.addresses);
        addresses.filter(move |address| self.owner(address) == Some(&**uid))
    }

    /// The uid of the workload that owns `address`: its strongest claimant.
    fn owner(&self, address: &[u8]) -> Option<&str> {
        self.claims.get(address)?.iter().max().map(|claim| &*claim.uid)
    }

    /// Every claimant of `address` may have gained or lost it, and every slice that may place a
    /// pod by it may place another.
    fn address_touched(&mut self, address: &[u8]) {
        self.dirty_pods.extend(self.claims.get(address).into_iter().flatten().map(|claim| claim.uid.clone()));
        if let Some(ip) = super::ip_from_bytes(address) {
            self.dirty_slices.extend(self.slices_naming_address.get(&ip).into_iter().flatten().cloned());
        }
    }
}

impl endpoints::Pods for Workloads {
    fn kind(&self, uid: &str) -> Option<PodKind> {
        self.kinds.get(uid).copied()
    }

    fn owner(&self, ip: &IpAddr) -> Option<&str> {
        Workloads::owner(self, &ip_bytes(ip))
    }
}

/// `uid` as the pods' map holds it (a pod a slice places is one the index holds).
fn intern(pods: &PodMap<Uid, PodEntry>, uid: &str) -> Uid {
    pods.get_key_value(uid).map_or_else(|| Arc::from(uid), |(uid, _)| uid.clone())
}

/// A workload as an `istio.workload.Address` resource, encoded from a reference (the index
/// keeps each pod's workload, and copying every one was a good part of a build).
fn workload_resource(workload: &api::Workload) -> Arc<super::Resource> {
    // `Address { oneof type { Workload workload = 1; ... } }`.
    const WORKLOAD: u32 = 1;
    let mut value = Vec::with_capacity(prost::encoding::message::encoded_len(WORKLOAD, workload));
    prost::encoding::message::encode(WORKLOAD, workload, &mut value);
    encode_as(api::ADDRESS_TYPE, value)
}

/// Takes what a slice placed out of the workloads: its pods' Services are redone, its other
/// endpoints' workloads are gone.
fn unplace(
    pods: &PodMap<Uid, PodEntry>,
    placing: &mut PodMap<Uid, BTreeSet<SliceKey>>,
    resources: &mut Resources,
    redo: &mut Pods,
    key: &SliceKey,
    members: SliceMembers,
) {
    for uid in members.pods.into_keys() {
        remove_from(placing, uid.as_str(), key);
        redo.insert(intern(pods, &uid));
    }
    for other in members.others {
        resources.remove(&other.uid);
    }
}

/// Takes `item` out of the set at `key`, and the set once empty.
fn remove_from<K, Q, T, S>(sets: &mut HashMap<K, BTreeSet<T>, S>, key: &Q, item: &T)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
    T: Ord,
    S: std::hash::BuildHasher,
{
    if let Some(set) = sets.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            sets.remove(key);
        }
    }
}

/// A pod's workload before addresses are shared out and Services joined, if it has one.
fn workload(naming: &Naming, context: &Context, pod: &Pod, uid: &Uid) -> Option<(Claim, api::Workload)> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    // Host-network pods share the node's address: no identity can be tied to it.
    if spec.host_network == Some(true) || !matches!(status.phase.as_deref(), Some("Running" | "Pending")) {
        return None;
    }
    let ips: Vec<IpAddr> = match &status.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect(),
        _ => status.pod_ip.iter().filter_map(|ip| ip.parse().ok()).collect(),
    };
    if ips.is_empty() {
        return None;
    }
    let metadata = &pod.metadata;
    let namespace = metadata.namespace.clone()?;
    let namespace_labels = context.namespace_labels.get(&namespace).and_then(Option::as_ref);
    // The agent's rule, and its word that it captured the pod: a pod nobody captures is never
    // tunnelled to (it has no HBONE listener), it is reached in plaintext.
    let enrolled = weft_api::enrollment::PodState::of(pod).capturable()
        && naming.labels.labelled(metadata.labels.as_ref(), namespace_labels)
        && naming.labels.captured(metadata.annotations.as_ref());
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let claim = Claim {
        live: metadata.deletion_timestamp.is_none(),
        created: metadata.creation_timestamp.as_ref().map(|time| time.0),
        uid: uid.clone(),
    };
    let label = |key: &String| metadata.labels.as_ref().and_then(|labels| labels.get(key));
    let mut authorization_policies: Vec<String> = context
        .selectors
        .get(&namespace)
        .into_iter()
        .flatten()
        .filter(|(_, selector)| selector.iter().all(|(key, value)| label(key) == Some(value)))
        .map(|(key, _)| key.clone())
        .collect();
    authorization_policies.sort();
    let node = spec.node_name.clone().unwrap_or_default();
    let workload = api::Workload {
        uid: uid.to_string(),
        name: metadata.name.clone().unwrap_or_default(),
        addresses: ips.iter().map(ip_bytes).collect(),
        tunnel_protocol: if enrolled { api::TunnelProtocol::Hbone } else { api::TunnelProtocol::None }.into(),
        trust_domain: naming.trust_domain.clone(),
        service_account: spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
        locality: context.localities.of(&node),
        node,
        workload_name: workload_name(metadata),
        // Healthy: running and Ready, as its kubelet reports, and not shutting down.
        status: if status.phase.as_deref() == Some("Running")
            && ready
            && metadata.deletion_timestamp.is_none()
        {
            api::WorkloadStatus::Healthy
        } else {
            api::WorkloadStatus::Unhealthy
        }
        .into(),
        waypoint: waypoint::of_pod(naming, pod, namespace_labels),
        authorization_policies,
        namespace,
        ..Default::default()
    };
    Some((claim, workload))
}

/// The name of the workload a pod belongs to, as Istio derives it for metrics and telemetry:
/// its controller's — a Deployment's for a ReplicaSet's pod (the ReplicaSet's name less the
/// pod template hash), a CronJob's for its Job's pod (less the schedule suffix) — else its own.
/// Pods come and go; this name stays, so per-workload metric series stay few.
pub fn workload_name(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    let pod = metadata.name.clone().unwrap_or_default();
    let Some(owner) = metadata.owner_references.iter().flatten().find(|owner| owner.controller == Some(true))
    else {
        return pod;
    };
    let hash = metadata.labels.as_ref().and_then(|labels| labels.get("pod-template-hash"));
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => {
            owner.name.strip_suffix(&format!("-{hash}")).unwrap_or(&owner.name).to_owned()
        }
        ("Job", _) => match owner.name.rsplit_once('-') {
            // CronJobs name their Jobs `<cronjob>-<minutes since the epoch>`.
            Some((cron_job, suffix)) if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) => {
                cron_job.to_owned()
            }
            _ => owner.name.clone(),
        },
        _ => owner.name.clone(),
    }
}
