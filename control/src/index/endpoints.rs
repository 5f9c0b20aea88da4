//! Which workloads back which Service, from the EndpointSlices the cluster keeps (what kube-proxy
//! reads): every endpoint that is ready, or still serving while it terminates, backs its Service
//! on the slice's ports, each matched to the Service port of the same name. An endpoint that is a
//! pod of the mesh joins that pod's workload; any other address (the API server behind
//! `kubernetes.default`, a hand-made slice, a host-network pod) becomes a workload of its own:
//! plaintext, never looked up by address (it may be shared), reachable through its Services.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{
    core::v1::ServicePort,
    discovery::v1::{Endpoint, EndpointSlice},
};
use weft_api::workload as api;

use super::{Naming, hostname};

/// The label naming a slice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What one EndpointSlice says: the pods of the mesh it places (their uids, each with the ports
/// it serves the slice's Service on) and the workloads of its other endpoints.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SliceMembers {
    /// The key of the slice's Service (`namespace/hostname`).
    pub key: String,
    /// Pod uid → the ports it serves the Service on.
    pub pods: BTreeMap<String, Vec<api::Port>>,
    /// Endpoints that are not pods of the mesh.
    pub others: Vec<api::Workload>,
}

/// What a pod uid stands for, to place an endpoint that refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodKind {
    /// A workload of the index: the endpoint joins it.
    Workload,
    /// A pod that shares its node's address: a workload of the endpoint's own.
    HostNetwork,
}

/// The pods an endpoint may refer to: by uid, and by address (the workload that owns it).
pub trait Pods {
    fn kind(&self, uid: &str) -> Option<PodKind>;
    fn owner(&self, ip: &IpAddr) -> Option<&str>;
}

/// The Service a slice is for: its namespace and its `kubernetes.io/service-name` label.
pub fn service_of(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let namespace = slice.metadata.namespace.as_deref()?;
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((namespace, service))
}

/// Reads `slice` against its Service's ports and the pods (`pods`). An endpoint that names a
/// pod the index does not hold (not yet seen, or its address given to a newer pod) is left out
/// until it does: sending it plaintext could carry a meshed pod's traffic in the clear. `None`
/// when the slice places nothing (no Service, an FQDN slice, no port the Service has).
pub fn members(
    naming: &Naming,
    service_ports: &[ServicePort],
    slice: &EndpointSlice,
    pods: &impl Pods,
) -> Option<SliceMembers> {
    let (namespace, service_name) = service_of(slice)?;
    let slice_name = slice.metadata.name.as_ref()?;
    if slice.address_type == "FQDN" {
        return None;
    }
    let key = format!("{namespace}/{}", hostname(naming, service_name, namespace));
    let ports = ports(service_ports, slice);
    if ports.is_empty() {
        return None;
    }
    let mut members = SliceMembers { key, ..Default::default() };
    for endpoint in slice.endpoints.iter().flatten() {
        let Some(healthy) = admitted(endpoint) else { continue };
        let owner = match target(endpoint).map(|uid| (uid, pods.kind(uid))) {
            Some((uid, Some(PodKind::Workload))) => Some(uid),
            Some((_, None)) => continue,
            // No pod named, yet an address of a pod of the mesh (a hand-made slice): that
            // pod, never a plaintext stand-in for it.
            None | Some((_, Some(PodKind::HostNetwork))) => endpoint
                .addresses
                .iter()
                .filter_map(|address| address.parse::<IpAddr>().ok())
                .find_map(|ip| pods.owner(&ip)),
        };
        if let Some(uid) = owner {
            let list = members.pods.entry(uid.to_owned()).or_default();
            // Dual-stack: the IPv4 and IPv6 slices list the same pod and ports.
            for port in &ports {
                if !list.contains(port) {
                    list.push(*port);
                }
            }
            continue;
        }
        for address in &endpoint.addresses {
            let Ok(ip) = address.parse() else { continue };
            members.others.push(api::Workload {
                uid: format!("EndpointSlice/{namespace}/{slice_name}/{address}"),
                name: slice_name.clone(),
                namespace: namespace.to_owned(),
                addresses: vec![super::ip_bytes(&ip)],
                tunnel_protocol: api::TunnelProtocol::None.into(),
                trust_domain: naming.trust_domain.clone(),
                node: endpoint.node_name.clone().unwrap_or_default(),
                services: [(members.key.clone(), api::PortList { ports: ports.clone() })].into(),
                status: if healthy { api::WorkloadStatus::Healthy } else { api::WorkloadStatus::Unhealthy }
                    .into(),
                network_mode: api::NetworkMode::HostNetwork.into(),
                ..Default::default()
            });
        }
    }
    Some(members)
}

/// What a slice's placing depends on besides the slice and its Service: the pod uids its
/// endpoints name, and every address they list (an endpoint may be placed by its address).
pub fn references(slice: &EndpointSlice) -> (Vec<&str>, Vec<IpAddr>) {
    let mut uids = Vec::new();
    let mut addresses = Vec::new();
    for endpoint in slice.endpoints.iter().flatten() {
        // Whatever its kind: a pod named may become a workload, or a host-network one.
        if let Some(uid) = target(endpoint) {
            uids.push(uid);
        }
        addresses.extend(endpoint.addresses.iter().filter_map(|address| address.parse::<IpAddr>().ok()));
    }
    (uids, addresses)
}

/// The uid of the pod an endpoint names, if it names one.
fn target(endpoint: &Endpoint) -> Option<&str> {
    endpoint
        .target_ref
        .as_ref()
        .filter(|target| target.kind.as_deref() == Some("Pod"))
        .and_then(|target| target.uid.as_deref())
}

/// Whether an endpoint backs its Service, and if so whether it is ready: a ready endpoint does,
/// and so does one that is still serving while it terminates (proxies fall back to those when
/// none is ready, as kube-proxy does). Unset conditions read as ready, as the API documents.
fn admitted(endpoint: &Endpoint) -> Option<bool> {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    (ready || serving).then_some(ready)
}

/// The slice's TCP ports as `(service port, endpoint port)`, each matched to the Service port of
/// the same name (an unnamed port matches the unnamed one): the slice has resolved named target
/// ports already, per endpoint.
fn ports(service_ports: &[ServicePort], slice: &EndpointSlice) -> Vec<api::Port> {
    let tcp = |protocol: Option<&String>| protocol.is_none_or(|protocol| protocol == "TCP");
    slice
        .ports
        .iter()
        .flatten()
        .filter(|port| tcp(port.protocol.as_ref()))
        .filter_map(|port| {
            let target = u32::try_from(port.port?).ok()?;
            let name = port.name.as_deref().unwrap_or_default();
            let service_port = service_ports
                .iter()
                .filter(|candidate| tcp(candidate.protocol.as_ref()))
                .find(|candidate| candidate.name.as_deref().unwrap_or_default() == name)?;
            Some(api::Port { service_port: u32::try_from(service_port.port).ok()?, target_port: target })
        })
        .collect()
}

/// How the index places endpoints that refer to a pod it knows: as its workload if it has one,
/// else as an address of its node if it runs on the node's network; else not at all.
pub fn pod_kind(host_network: bool, has_workload: bool) -> Option<PodKind> {
    if has_workload {
        Some(PodKind::Workload)
    } else if host_network {
        Some(PodKind::HostNetwork)
    } else {
        None
    }
}
