//! Which waypoint a Service or a pod's workload uses: the one its label [`USE_WAYPOINT`] names,
//! else the one its namespace's label names (`none` on the object opts out). A waypoint is a
//! Gateway of class [`CLASS`], reached at the Service of its name in its namespace on the HBONE
//! port. A labelled object gets that address whether or not the waypoint exists: node proxies
//! must never bypass a waypoint that was asked for, and refuse traffic when it has no endpoints.
//! A waypoint's own pods and Service never use a waypoint (no loops).
use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use weft_api::workload as api;

use super::{Naming, gateway_api::Gateway, hostname};

/// The label naming the waypoint of a Service, a pod, or (on a Namespace) of those in it.
pub const USE_WAYPOINT: &str = "weft.dev/use-waypoint";
/// The value of [`USE_WAYPOINT`] by which a Service or pod opts out of its namespace's waypoint.
pub const NONE: &str = "none";
/// The `gatewayClassName` of the Gateways that are waypoints.
pub const CLASS: &str = "weft-waypoint";
/// The label the Gateway API puts on a Gateway's pods: such a pod is a waypoint itself.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Where a waypoint accepts HBONE.
pub const HBONE_PORT: u32 = 15008;

type Labels = BTreeMap<String, String>;

/// The waypoints of the mesh, to address the objects that use one.
#[derive(Debug)]
pub struct Waypoints<'n, 'a> {
    naming: &'n Naming,
    /// Gateways of class [`CLASS`], `(namespace, name)`.
    gateways: HashSet<(&'a str, &'a str)>,
}

impl<'n, 'a> Waypoints<'n, 'a> {
    /// The waypoints among `gateways`.
    pub fn new(naming: &'n Naming, gateways: impl IntoIterator<Item = &'a Gateway>) -> Self {
        let gateways = gateways
            .into_iter()
            .filter(|gateway| gateway.spec.gateway_class_name == CLASS)
            .filter_map(|gateway| {
                Some((gateway.metadata.namespace.as_deref()?, gateway.metadata.name.as_deref()?))
            })
            .collect();
        Self { naming, gateways }
    }

    /// Whether Gateway `namespace/name` is a waypoint (of class [`CLASS`]).
    pub fn exists(&self, namespace: &str, name: &str) -> bool {
        self.gateways.contains(&(namespace, name))
    }

    /// The waypoint of Service `namespace/name`, if it uses one.
    pub fn of_service(
        &self,
        namespace: &str,
        name: &str,
        labels: Option<&Labels>,
        namespace_labels: Option<&Labels>,
    ) -> Option<api::GatewayAddress> {
        let waypoint = self.name_for_service(namespace, name, labels, namespace_labels)?;
        Some(self.address(namespace, waypoint))
    }

    /// The name of the waypoint (in its namespace) that Service `namespace/name` uses, if any.
    pub fn name_for_service<'l>(
        &self,
        namespace: &str,
        name: &str,
        labels: Option<&'l Labels>,
        namespace_labels: Option<&'l Labels>,
    ) -> Option<&'l str> {
        if self.gateways.contains(&(namespace, name)) {
            return None;
        }
        // Its own waypoint, by name, even before the Gateway shows up: never a loop.
        named(labels, namespace_labels).filter(|waypoint| *waypoint != name)
    }

    fn address(&self, namespace: &str, waypoint: &str) -> api::GatewayAddress {
        address(self.naming, namespace, waypoint)
    }
}

/// The waypoint of a pod's workload, if it uses one: the pod's label or its namespace's, whether
/// or not that waypoint exists (see the module's purpose).
pub fn of_pod(naming: &Naming, pod: &Pod, namespace_labels: Option<&Labels>) -> Option<api::GatewayAddress> {
    let labels = pod.metadata.labels.as_ref();
    if labels.is_some_and(|labels| labels.contains_key(GATEWAY_NAME_LABEL)) {
        return None;
    }
    let namespace = pod.metadata.namespace.as_deref()?;
    Some(address(naming, namespace, named(labels, namespace_labels)?))
}

/// Where the waypoint `namespace/waypoint` is reached: its Service, on the HBONE port.
fn address(naming: &Naming, namespace: &str, waypoint: &str) -> api::GatewayAddress {
    api::GatewayAddress {
        destination: Some(api::gateway_address::Destination::Hostname(api::NamespacedHostname {
            namespace: namespace.to_owned(),
            hostname: hostname(naming, waypoint, namespace),
        })),
        hbone_mtls_port: HBONE_PORT,
    }
}

/// The waypoint an object's labels name, else its namespace's; `None` for none or [`NONE`]. An
/// empty value names nothing, as if unset.
fn named<'l>(labels: Option<&'l Labels>, namespace_labels: Option<&'l Labels>) -> Option<&'l str> {
    let value = |labels: Option<&'l Labels>| {
        labels
            .and_then(|labels| labels.get(USE_WAYPOINT))
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    };
    value(labels).or_else(|| value(namespace_labels)).filter(|waypoint| *waypoint != NONE)
}
