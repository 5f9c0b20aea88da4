//! Which workloads back which Service, from the EndpointSlices the cluster keeps (what kube-proxy
//! reads): every endpoint that is ready, or still serving while it terminates, backs its Service
//! on the slice's ports, each matched to the Service port of the same name. An endpoint that is a
//! pod of the mesh joins that pod's workload; any other address (the API server behind
//! `kubernetes.default`, a hand-made slice, a host-network pod) becomes a workload of its own:
//! plaintext, never looked up by address (it may be shared), reachable through its Services.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::{Endpoint, EndpointSlice},
};
use weft_api::workload as api;

use super::{Naming, PodMap, hostname};

/// The label naming a slice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Service memberships: for pods, to merge into their workloads; for the rest, whole workloads.
#[derive(Debug, Default)]
pub struct Membership {
    /// Pod uid → service key → the ports it serves it on.
    pub pods: PodMap<String, BTreeMap<String, api::PortList>>,
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

/// Reads `slices` against `services` (by `namespace/name`), `pods` (by uid) and the addresses
/// of the pods that are workloads (`pod_addresses`, to their uids). An endpoint that names a pod
/// the index does not hold (not yet seen, or its address given to a newer pod) is left out until
/// it does: sending it plaintext could carry a meshed pod's traffic in the clear.
pub fn membership<'a>(
    naming: &Naming,
    services: &HashMap<(&str, &str), &Service>,
    pods: &PodMap<&str, PodKind>,
    pod_addresses: &PodMap<IpAddr, &str>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Membership {
    let mut membership = Membership::default();
    for slice in slices {
        let (Some(namespace), Some(slice_name)) = (&slice.metadata.namespace, &slice.metadata.name) else {
            continue;
        };
        let Some(service_name) =
            slice.metadata.labels.as_ref().and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let Some(service) = services.get(&(namespace.as_str(), service_name.as_str())) else { continue };
        if slice.address_type == "FQDN" {
            continue;
        }
        let key = format!("{namespace}/{}", hostname(naming, service_name, namespace));
        let ports = ports(service, slice);
        if ports.is_empty() {
            continue;
        }
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(healthy) = admitted(endpoint) else { continue };
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|target| target.kind.as_deref() == Some("Pod"))
                .and_then(|target| target.uid.as_deref());
            let owner = match pod.map(|uid| (uid, pods.get(uid))) {
                Some((uid, Some(PodKind::Workload))) => Some(uid),
                Some((_, None)) => continue,
                // No pod named, yet an address of a pod of the mesh (a hand-made slice): that
                // pod, never a plaintext stand-in for it.
                None | Some((_, Some(PodKind::HostNetwork))) => endpoint
                    .addresses
                    .iter()
                    .filter_map(|address| address.parse::<IpAddr>().ok())
                    .find_map(|ip| pod_addresses.get(&ip).copied()),
            };
            if let Some(uid) = owner {
                let served = membership.pods.entry(uid.to_owned()).or_default();
                let list = served.entry(key.clone()).or_default();
                // Dual-stack: the IPv4 and IPv6 slices list the same pod and ports.
                for port in &ports {
                    if !list.ports.contains(port) {
                        list.ports.push(*port);
                    }
                }
                continue;
            }
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse() else { continue };
                membership.others.push(api::Workload {
                    uid: format!("EndpointSlice/{namespace}/{slice_name}/{address}"),
                    name: slice_name.clone(),
                    namespace: namespace.clone(),
                    addresses: vec![super::ip_bytes(&ip)],
                    tunnel_protocol: api::TunnelProtocol::None.into(),
                    trust_domain: naming.trust_domain.clone(),
                    node: endpoint.node_name.clone().unwrap_or_default(),
                    services: [(key.clone(), api::PortList { ports: ports.clone() })].into(),
                    status: if healthy {
                        api::WorkloadStatus::Healthy
                    } else {
                        api::WorkloadStatus::Unhealthy
                    }
                    .into(),
                    network_mode: api::NetworkMode::HostNetwork.into(),
                    ..Default::default()
                });
            }
        }
    }
    membership
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
fn ports(service: &Service, slice: &EndpointSlice) -> Vec<api::Port> {
    let service_ports = service.spec.iter().flat_map(|spec| spec.ports.iter().flatten());
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
                .clone()
                .filter(|candidate| tcp(candidate.protocol.as_ref()))
                .find(|candidate| candidate.name.as_deref().unwrap_or_default() == name)?;
            Some(api::Port { service_port: u32::try_from(service_port.port).ok()?, target_port: target })
        })
        .collect()
}

/// How the index places endpoints that refer to `pod`, if it is one it knows.
pub fn pod_kind(pod: &Pod, has_workload: bool) -> Option<PodKind> {
    if has_workload {
        Some(PodKind::Workload)
    } else if pod.spec.as_ref().and_then(|spec| spec.host_network) == Some(true) {
        Some(PodKind::HostNetwork)
    } else {
        None
    }
}
