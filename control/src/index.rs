//! The mesh as node proxies see it: an immutable, versioned [`Snapshot`] of xDS resources built
//! from Kubernetes objects. Every pod with an address becomes a `Workload` (tunnelled over HBONE
//! when enrolled and its agent reports it captured, plaintext otherwise) named by its uid; every
//! Service a `Service` named `namespace/hostname`; its EndpointSlices say which workloads back it
//! on which ports
//! ([`endpoints`]), endpoints that are not pods of the mesh included. Two pods claiming one
//! address (a terminating pod whose IP was already reused) never share it: the address goes to
//! the live, newer pod — an identity never follows an IP to another pod. Every
//! `AuthorizationPolicy` becomes an `Authorization` ([`policy`]); the pods a policy's selector
//! picks name it in their workload. Services and workloads labelled for a waypoint (a Gateway
//! of class `weft-waypoint`) carry its address ([`waypoint`]), and the Gateway API HTTPRoutes
//! and GRPCRoutes attached to a Service become its `ServiceRoutes` ([`routes`], objects in [`gateway_api`]).
//!
//! [`build`] is a function of the objects alone (an [`Index`]'s first update), so snapshots are
//! cheap to test and to measure; [`watch`] keeps an [`Index`] current from the API server, its
//! workloads updated by what changed ([`workloads`]).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::core::PartialObjectMeta;
use prost::Message;
use serde::Serialize;
use weft_api::{
    http_authorization::{HTTP_AUTHORIZATION_TYPE, REQUEST_AUTHENTICATION_TYPE},
    security::AUTHORIZATION_TYPE,
    workload as api,
};

/// Implements `kube::Resource` for a namespaced object of `$group/$version` declared with
/// serde alone (its `metadata` and the fields Weft reads; no schema), so one pattern serves
/// the CRDs Weft reads and the ones it installs from `manifests/crds.yaml`.
macro_rules! resource {
    ($type:ty, $group:expr, $version:expr, $kind:literal, $plural:literal) => {
        impl kube::Resource for $type {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind((): &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group((): &()) -> std::borrow::Cow<'_, str> {
                $group.into()
            }
            fn version((): &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural((): &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &kube::api::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

pub mod authentication;
pub mod changes;
pub mod endpoints;
pub mod gateway_api;
pub mod locality;
pub mod policy;
pub mod routes;
pub mod traffic;
pub mod watch;
pub mod waypoint;
pub mod workloads;

use gateway_api::{Gateway, HttpRoute, grpc::GrpcRoute, tcp::TcpRoute};
use policy::AuthorizationPolicy;
#[cfg(test)]
use workloads::workload_name;

/// One xDS resource, encoded once and shared by every subscriber.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Content hash: equal versions, equal bytes.
    pub version: String,
    pub body: prost_types::Any,
    /// The xDS `Resource` message that carries it (name, version, body), encoded by the first
    /// stream to send it; every other stream sends the same bytes. A snapshot keeps the
    /// resources that did not change from the one before (`changes::succeed`), and so their
    /// encoding.
    wire: std::sync::OnceLock<prost::bytes::Bytes>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        // The same resource, most often: kept from snapshot to snapshot.
        std::ptr::eq(self, other) || (self.version == other.version && self.body == other.body)
    }
}

impl Resource {
    pub fn new(version: String, body: prost_types::Any) -> Self {
        Self { version, body, wire: Default::default() }
    }

    /// This resource as the xDS `Resource` named `name`, encoded.
    pub fn wire(&self, name: &str) -> prost::bytes::Bytes {
        self.wire
            .get_or_init(|| {
                weft_api::discovery::Resource {
                    name: name.to_owned(),
                    version: self.version.clone(),
                    resource: Some(self.body.clone()),
                    aliases: Vec::new(),
                }
                .encode_to_vec()
                .into()
            })
            .clone()
    }
}

/// Every resource of one type, by name.
pub type Resources = BTreeMap<String, Arc<Resource>>;

/// A map a build makes for each of the cluster's pods or addresses, with a fast hasher
/// (foldhash, randomly seeded but no defence against a chosen-key flood) rather than std's
/// SipHash: hashing 50 000 pods' uids and addresses was a fifth of a build. Only for keys the
/// API server or the kubelet assigns (uids, pod addresses), never names users choose.
pub type PodMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the control plane serves at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Increases with every published change.
    pub version: u64,
    /// `istio.workload.Address`: workloads by uid, services by `namespace/hostname`.
    pub addresses: Resources,
    /// `istio.security.Authorization`: policies by `namespace/name`.
    pub authorizations: Resources,
    /// `weft.security.HttpAuthorization`: the policies waypoints enforce, by `namespace/name`.
    pub http_authorizations: Resources,
    /// Every policy as understood, served or not, for `/config_dump` and `weftctl policies`.
    pub policies: Vec<PolicyStatus>,
    /// `weft.security.RequestAuthentication`: the JWT rules waypoints apply, by
    /// `namespace/name`.
    pub request_authentications: Resources,
    /// Every RequestAuthentication as understood (action `JWT`), for the same.
    pub authentications: Vec<PolicyStatus>,
    /// `weft.route.ServiceRoutes`: the HTTPRoutes attached to each Service, by the Service's
    /// `namespace/hostname`.
    pub routes: Resources,
    /// Every HTTPRoute and GRPCRoute attached to a Service, as understood, for `/config_dump`.
    pub mesh_routes: Vec<RouteStatus>,
    /// Every traffic policy (`networking.weft.dev`), as understood, for its status.
    pub traffic_policies: Vec<traffic::TrafficPolicyStatus>,
    /// What the last versions changed, for streams that hold one of them.
    pub changes: changes::History,
}

/// What the control plane made of one `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    pub namespace: String,
    pub name: String,
    /// ALLOW or DENY; empty when not served.
    pub action: String,
    /// GLOBAL (the root namespace, no selector), NAMESPACE or WORKLOAD_SELECTOR; empty when
    /// not served.
    pub scope: String,
    /// Whether node proxies receive it.
    pub served: bool,
    /// For a selector: the pods it picks (`namespace/name`).
    pub selects: Vec<String>,
    /// What node proxies cannot enforce, and what was done about it.
    pub notes: Vec<String>,
}

/// What the control plane made of one HTTPRoute or GRPCRoute attached to a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// The generation its conditions are about.
    pub generation: Option<i64>,
    /// The `ServiceRoutes` it is part of (`namespace/hostname`); empty when applied nowhere.
    pub services: Vec<String>,
    /// What waypoints cannot apply, and what was done about it.
    pub notes: Vec<String>,
    /// `Accepted` for each of its Service parents, as its status reports them.
    pub parents: Vec<ParentStatus>,
    /// `ResolvedRefs`: whether every backend could be used.
    pub resolved_refs: Verdict,
    /// Why rules were left out, if any were (`PartiallyInvalid`).
    pub partially_invalid: Option<String>,
}

/// The Gateway API route kinds a waypoint applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
    #[serde(rename = "TCPRoute")]
    Tcp,
}

impl RouteKind {
    pub const ALL: [RouteKind; 3] = [RouteKind::Http, RouteKind::Grpc, RouteKind::Tcp];

    pub fn kind(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
            Self::Tcp => "TCPRoute",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::Http => "httproutes",
            Self::Grpc => "grpcroutes",
            Self::Tcp => "tcproutes",
        }
    }
}

/// A route's `Accepted` condition for one of its parents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentStatus {
    pub parent_ref: gateway_api::ParentReference,
    pub accepted: Verdict,
}

/// A condition as the Gateway API reports it: true or not, a reason from its list, a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Self { status: true, reason, message: message.into() }
    }

    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Self { status: false, reason, message: message.into() }
    }
}

impl Snapshot {
    /// The resources of an xDS type, if the control plane serves it.
    pub fn of_type(&self, type_url: &str) -> Option<&Resources> {
        match type_url {
            api::ADDRESS_TYPE => Some(&self.addresses),
            weft_api::security::AUTHORIZATION_TYPE => Some(&self.authorizations),
            weft_api::route::ROUTES_TYPE => Some(&self.routes),
            HTTP_AUTHORIZATION_TYPE => Some(&self.http_authorizations),
            REQUEST_AUTHENTICATION_TYPE => Some(&self.request_authentications),
            _ => None,
        }
    }

    /// Every type served, with its resources.
    fn served_mut(&mut self) -> [(&'static str, &mut Resources); 5] {
        [
            (api::ADDRESS_TYPE, &mut self.addresses),
            (weft_api::security::AUTHORIZATION_TYPE, &mut self.authorizations),
            (weft_api::route::ROUTES_TYPE, &mut self.routes),
            (HTTP_AUTHORIZATION_TYPE, &mut self.http_authorizations),
            (REQUEST_AUTHENTICATION_TYPE, &mut self.request_authentications),
        ]
    }

    /// The resources as JSON, for `/config_dump` and the CLI: workloads and services decoded;
    /// routes and L7 policies also as sent (hex), so `weftctl check` decides with the
    /// waypoint's own code on what waypoints were told.
    pub fn dump(&self) -> serde_json::Value {
        let ip = |bytes: &[u8]| ip_from_bytes(bytes).map(|ip| ip.to_string());
        let waypoint =
            |address: Option<&api::GatewayAddress>| match address.and_then(|a| a.destination.as_ref()) {
                Some(api::gateway_address::Destination::Hostname(name)) => Some(name.hostname.clone()),
                Some(api::gateway_address::Destination::Address(address)) => ip(&address.address),
                None => None,
            };
        let (mut workloads, mut services) = (Vec::new(), Vec::new());
        for (name, resource) in &self.addresses {
            match api::Address::decode(resource.body.value.as_slice()).ok().and_then(|address| address.r#type) {
                Some(api::address::Type::Workload(workload)) => workloads.push(serde_json::json!({
                    "uid": workload.uid,
                    "name": workload.name,
                    "namespace": workload.namespace,
                    "service_account": workload.service_account,
                    "addresses": workload.addresses.iter().filter_map(|bytes| ip(bytes)).collect::<Vec<_>>(),
                    "node": workload.node,
                    "protocol": workload.tunnel_protocol().as_str_name(),
                    "services": workload.services.keys().collect::<Vec<_>>(),
                    "healthy": workload.status() == api::WorkloadStatus::Healthy,
                    "waypoint": waypoint(workload.waypoint.as_ref()),
                    // Istio's form: region/zone/subzone.
                    "locality": workload.locality.as_ref().map(|l| format!("{}/{}/{}", l.region, l.zone, l.subzone)),
                    "version": resource.version,
                })),
                Some(api::address::Type::Service(service)) => services.push(serde_json::json!({
                    "key": name,
                    "name": service.name,
                    "namespace": service.namespace,
                    "hostname": service.hostname,
                    "vips": service.addresses.iter().filter_map(|address| ip(&address.address)).collect::<Vec<_>>(),
                    "ports": service.ports.iter().map(|port| port.service_port).collect::<Vec<_>>(),
                    "waypoint": waypoint(service.waypoint.as_ref()),
                    "version": resource.version,
                })),
                None => {}
            }
        }
        let routes: Vec<_> = self
            .routes
            .iter()
            .map(|(name, resource)| {
                let routes = weft_api::route::ServiceRoutes::decode(resource.body.value.as_slice())
                    .map(|routes| {
                        routes
                            .routes
                            .into_iter()
                            .chain(routes.tcp_routes)
                            .map(|route| route.name)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                serde_json::json!({
                    "service": name,
                    "routes": routes,
                    "version": resource.version,
                    "resource": weft_api::hex::encode(&resource.body.value),
                })
            })
            .collect::<Vec<_>>();
        let http_authorizations: Vec<_> = self
            .http_authorizations
            .iter()
            .map(|(name, resource)| {
                serde_json::json!({ "name": name, "resource": weft_api::hex::encode(&resource.body.value) })
            })
            .collect();
        let traffic_policies: Vec<_> = self
            .traffic_policies
            .iter()
            .map(|policy| {
                let targets: Vec<_> = policy
                    .targets
                    .iter()
                    .map(|(target, verdict)| {
                        serde_json::json!({
                            "kind": target.kind,
                            "name": target.name,
                            "accepted": verdict.status,
                            "reason": verdict.reason,
                            "message": verdict.message,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "kind": policy.kind,
                    "namespace": policy.namespace,
                    "name": policy.name,
                    "targets": targets,
                })
            })
            .collect();
        serde_json::json!({
            "version": self.version,
            "workloads": workloads,
            "services": services,
            "policies": self.policies,
            "routes": routes,
            "mesh_routes": self.mesh_routes,
            "http_authorizations": http_authorizations,
            "request_authentications": self.authentications,
            "traffic_policies": traffic_policies,
        })
    }

    /// Whether `other` serves the same resources (versions aside) and says the same of every
    /// policy and route (what their statuses are written from).
    pub fn same_resources(&self, other: &Snapshot) -> bool {
        self.addresses == other.addresses
            && self.authorizations == other.authorizations
            && self.http_authorizations == other.http_authorizations
            && self.policies == other.policies
            && self.request_authentications == other.request_authentications
            && self.authentications == other.authentications
            && self.routes == other.routes
            && self.mesh_routes == other.mesh_routes
            && self.traffic_policies == other.traffic_policies
    }
}

/// Mesh-wide naming, and the enrollment rule's labels.
#[derive(Debug, Clone)]
pub struct Naming {
    pub trust_domain: String,
    /// Service hostnames are `<name>.<namespace>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Policies here without a selector apply to the whole mesh (the control plane's own).
    pub root_namespace: String,
    pub labels: weft_api::enrollment::Labels,
}

/// Every Kubernetes object the index is built from, by kind; a kind left out is none.
/// `Objects::default().pods(&pods).services(&services)`.
#[derive(Debug, Default, Clone)]
pub struct Objects<'a> {
    pub namespaces: Vec<&'a Namespace>,
    pub pods: Vec<&'a Pod>,
    pub services: Vec<&'a Service>,
    pub slices: Vec<&'a EndpointSlice>,
    pub policies: Vec<&'a AuthorizationPolicy>,
    pub gateways: Vec<&'a Gateway>,
    pub http_routes: Vec<&'a HttpRoute>,
    pub grpc_routes: Vec<&'a GrpcRoute>,
    pub tcp_routes: Vec<&'a TcpRoute>,
    pub fault_policies: Vec<&'a traffic::FaultInjectionPolicy>,
    pub rate_limit_policies: Vec<&'a traffic::RateLimitPolicy>,
    pub circuit_breaker_policies: Vec<&'a traffic::CircuitBreakerPolicy>,
    pub load_balancer_policies: Vec<&'a traffic::LoadBalancerPolicy>,
    pub request_authentications: Vec<&'a authentication::RequestAuthentication>,
    /// Only those labelled [`authentication::JWKS_LABEL`].
    pub jwks_config_maps: Vec<&'a ConfigMap>,
    pub jwks_secrets: Vec<&'a Secret>,
    /// Their metadata: the labels that place pods.
    pub nodes: Vec<&'a PartialObjectMeta<Node>>,
}

/// A setter per kind of [`Objects`], taking any iterator of references.
macro_rules! objects {
    ($($kind:ident: $type:ty),* $(,)?) => {
        impl<'a> Objects<'a> {
            $(
                pub fn $kind(mut self, objects: impl IntoIterator<Item = &'a $type>) -> Self {
                    self.$kind = objects.into_iter().collect();
                    self
                }
            )*
        }
    };
}

objects!(
    namespaces: Namespace,
    pods: Pod,
    services: Service,
    slices: EndpointSlice,
    policies: AuthorizationPolicy,
    gateways: Gateway,
    http_routes: HttpRoute,
    grpc_routes: GrpcRoute,
    tcp_routes: TcpRoute,
    fault_policies: traffic::FaultInjectionPolicy,
    rate_limit_policies: traffic::RateLimitPolicy,
    circuit_breaker_policies: traffic::CircuitBreakerPolicy,
    load_balancer_policies: traffic::LoadBalancerPolicy,
    request_authentications: authentication::RequestAuthentication,
    jwks_config_maps: ConfigMap,
    jwks_secrets: Secret,
    nodes: PartialObjectMeta<Node>,
);

/// The pods, Services and EndpointSlices that changed since the index's last update, each by
/// namespace and name with what it is now (`None`: gone).
#[derive(Debug, Default)]
pub struct Changed<'a> {
    pub pods: Vec<(&'a str, &'a str, Option<&'a Pod>)>,
    pub services: Vec<(&'a str, &'a str, Option<&'a Service>)>,
    pub slices: Vec<(&'a str, &'a str, Option<&'a EndpointSlice>)>,
}

/// The index kept from change to change ([`watch`]): its workloads are redone by what changed
/// ([`workloads`]), not rebuilt; the rest (Services, policies, routes: objects far fewer than
/// pods) is made anew at every update.
#[derive(Debug)]
pub struct Index {
    naming: Naming,
    workloads: Option<workloads::Workloads>,
}

impl Index {
    pub fn new(naming: Naming) -> Self {
        Self { naming, workloads: None }
    }

    /// The snapshot of `objects` (its version left at 0 for the publisher). `changed` names the
    /// pods, Services and slices that changed since the last update (`objects` holds them as
    /// they are now); `None` when anything may have (a first update, a watch that listed
    /// again), and then the workloads are rebuilt from `objects`. Where what every pod depends
    /// on changed (a namespace's labels or selecting policies, a node's locality), the pods of
    /// that namespace or node are redone from `objects`.
    pub fn update(&mut self, objects: &Objects<'_>, changed: Option<&Changed<'_>>) -> Snapshot {
        let naming = &self.naming;
        let converted = convert_policies(naming, &objects.policies);
        let mut selectors: HashMap<String, Vec<workloads::Selector>> = HashMap::new();
        for (key, converted, _) in &converted {
            if let (Some(authorization), Some(selector)) = (&converted.authorization, &converted.selector) {
                selectors
                    .entry(authorization.namespace.clone())
                    .or_default()
                    .push((key.clone(), selector.clone()));
            }
        }
        // In the policies' order, not the store's: a policy coming or going elsewhere must
        // not read as a change of what every pod depends on.
        for selectors in selectors.values_mut() {
            selectors.sort();
        }
        let context = workloads::Context {
            namespace_labels: objects
                .namespaces
                .iter()
                .filter_map(|ns| Some((ns.metadata.name.clone()?, ns.metadata.labels.clone())))
                .collect(),
            selectors,
            localities: locality::Localities::new(&objects.nodes),
        };
        let workloads = match (changed, self.workloads.take()) {
            (Some(changed), Some(mut workloads)) => {
                let (namespaces, nodes) = workloads.context().changed_for(&context);
                workloads.set_context(context);
                for &(namespace, name, service) in &changed.services {
                    workloads.service(namespace, name, service);
                }
                for &(namespace, name, pod) in &changed.pods {
                    workloads.pod(namespace, name, pod);
                }
                // What every pod depends on changed for some: those are redone as if they had
                // (from `objects`, read after `changed`).
                if !namespaces.is_empty() || !nodes.is_empty() {
                    for &pod in &objects.pods {
                        let Some((namespace, name)) = named(pod) else { continue };
                        let node =
                            pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()).unwrap_or_default();
                        if namespaces.contains(namespace) || nodes.contains(node) {
                            workloads.pod(namespace, name, Some(pod));
                        }
                    }
                }
                for &(namespace, name, slice) in &changed.slices {
                    workloads.slice(namespace, name, slice);
                }
                self.workloads.insert(workloads)
            }
            _ => {
                let mut workloads = workloads::Workloads::new(naming.clone(), context);
                for (service, (namespace, name)) in
                    objects.services.iter().filter_map(|&s| Some((s, named(s)?)))
                {
                    workloads.service(namespace, name, Some(service));
                }
                for (pod, (namespace, name)) in objects.pods.iter().filter_map(|&p| Some((p, named(p)?))) {
                    workloads.pod(namespace, name, Some(pod));
                }
                for (slice, (namespace, name)) in objects.slices.iter().filter_map(|&s| Some((s, named(s)?)))
                {
                    workloads.slice(namespace, name, Some(slice));
                }
                self.workloads.insert(workloads)
            }
        };
        let (workloads, selected) = workloads.settle();
        assemble(naming, objects, &converted, workloads, selected)
    }
}

/// A namespaced object's namespace and name, as changes name it.
fn named<K: kube::Resource>(object: &K) -> Option<(&str, &str)> {
    Some((object.meta().namespace.as_deref()?, object.meta().name.as_deref()?))
}

/// The keys whose values differ between `one` and `other`, or that only one of them has.
fn keys_differing<'a, V: PartialEq>(
    one: &'a HashMap<String, V>,
    other: &'a HashMap<String, V>,
) -> impl Iterator<Item = &'a str> {
    let changed = one.iter().filter(|(key, value)| other.get(*key) != Some(*value));
    let added = other.keys().filter(|key| !one.contains_key(*key));
    changed.map(|(key, _)| key.as_str()).chain(added.map(String::as_str))
}

/// Builds the resources for these objects (the version is left at 0 for the publisher): an
/// index's first update.
pub fn build(naming: &Naming, objects: &Objects<'_>) -> Snapshot {
    Index::new(naming.clone()).update(objects, None)
}

/// Each policy as node proxies enforce it, and as waypoints do (one or the other), by
/// `namespace/name`.
fn convert_policies(
    naming: &Naming,
    policies: &[&AuthorizationPolicy],
) -> Vec<(String, policy::Converted, Option<Waypoints>)> {
    policies
        .iter()
        .filter_map(|policy| {
            let key =
                format!("{}/{}", policy.metadata.namespace.as_deref()?, policy.metadata.name.as_deref()?);
            Some((
                key,
                policy::convert(policy, &naming.root_namespace),
                policy::http::convert(policy, naming),
            ))
        })
        .collect()
}

/// The snapshot: `workloads` (by uid) with everything else made from `objects` — Services,
/// policies (`selected`: the pods each picks), routes, traffic policies, request authentication.
fn assemble(
    naming: &Naming,
    objects: &Objects<'_>,
    converted: &[(String, policy::Converted, Option<Waypoints>)],
    workloads: &Resources,
    selected: &HashMap<String, BTreeMap<String, usize>>,
) -> Snapshot {
    let Objects {
        namespaces,
        services,
        gateways,
        http_routes,
        grpc_routes,
        tcp_routes,
        fault_policies,
        rate_limit_policies,
        circuit_breaker_policies,
        load_balancer_policies,
        request_authentications,
        jwks_config_maps,
        jwks_secrets,
        ..
    } = objects;
    let labels_by_namespace: HashMap<&str, Option<&BTreeMap<String, String>>> = namespaces
        .iter()
        .filter_map(|ns| Some((ns.metadata.name.as_deref()?, ns.metadata.labels.as_ref())))
        .collect();
    let waypoints = waypoint::Waypoints::new(naming, gateways.iter().copied());
    let mut services_by_name: HashMap<(&str, &str), &Service> = HashMap::new();
    let mut with_waypoint = std::collections::HashSet::new();
    // Their waypoints' names (in the Service's namespace), for the traffic policies.
    let mut service_waypoints: HashMap<(&str, &str), &str> = HashMap::new();
    // The same Services by key (`namespace/hostname`), as policies name their targets.
    let mut waypointed = std::collections::HashSet::new();
    let mut addresses = Resources::new();
    for &service in services {
        let (Some(name), Some(namespace)) = (&service.metadata.name, &service.metadata.namespace) else {
            continue;
        };
        let mut resource = service_resource(naming, name, namespace, service);
        resource.waypoint = waypoints.of_service(
            namespace,
            name,
            service.metadata.labels.as_ref(),
            labels_by_namespace.get(namespace.as_str()).copied().flatten(),
        );
        if resource.waypoint.is_some() {
            with_waypoint.insert((namespace.as_str(), name.as_str()));
            if let Some(waypoint) = waypoints.name_for_service(
                namespace,
                name,
                service.metadata.labels.as_ref(),
                labels_by_namespace.get(namespace.as_str()).copied().flatten(),
            ) {
                service_waypoints.insert((namespace.as_str(), name.as_str()), waypoint);
            }
            waypointed.insert(format!("{namespace}/{}", resource.hostname));
        }
        addresses.insert(
            format!("{namespace}/{}", resource.hostname),
            encode(api::address::Type::Service(resource)),
        );
        services_by_name.insert((namespace, name), service);
    }

    let mut authorizations = Resources::new();
    let mut http_authorizations = Resources::new();
    let mut statuses = Vec::new();
    for (key, converted, for_waypoints) in converted {
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        let mut status = PolicyStatus {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            action: String::new(),
            scope: String::new(),
            served: converted.authorization.is_some() || for_waypoints.is_some(),
            selects: selected
                .get(key.as_str())
                .into_iter()
                .flatten()
                .flat_map(|(name, pods)| std::iter::repeat_n(name.clone(), *pods))
                .collect(),
            notes: converted.notes.clone(),
        };
        if let Some((http, notes)) = for_waypoints {
            status.action = if http.deny { "DENY" } else { "ALLOW" }.to_owned();
            status.scope = "WAYPOINT".to_owned();
            status.selects = http.services.iter().chain(&http.gateways).cloned().collect();
            status.notes.extend(notes.iter().cloned());
            status.served = enforced_somewhere(
                &http.services,
                &http.gateways,
                &waypointed,
                &waypoints,
                &mut status.notes,
            );
            http_authorizations.insert(key.clone(), encode_as(HTTP_AUTHORIZATION_TYPE, http.encode_to_vec()));
        }
        status.selects.sort();
        if let Some(authorization) = &converted.authorization {
            status.action = authorization.action().as_str_name().to_owned();
            status.scope = authorization.scope().as_str_name().to_owned();
            authorizations.insert(key.clone(), encode_as(AUTHORIZATION_TYPE, authorization.encode_to_vec()));
        }
        statuses.push(status);
    }
    statuses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let key_sets = authentication::KeySets::new(jwks_config_maps, jwks_secrets);
    let mut request_authentication_resources = Resources::new();
    let mut authentications = Vec::new();
    for &policy in request_authentications {
        let (Some(namespace), Some(name)) = (&policy.metadata.namespace, &policy.metadata.name) else {
            continue;
        };
        let (resource, notes) = authentication::convert(policy, naming, &key_sets);
        let mut status = PolicyStatus {
            namespace: namespace.clone(),
            name: name.clone(),
            action: "JWT".into(),
            scope: "WAYPOINT".into(),
            served: false,
            selects: Vec::new(),
            notes,
        };
        if let Some(resource) = resource {
            status.selects = resource.services.iter().chain(&resource.gateways).cloned().collect();
            status.selects.sort();
            status.served = enforced_somewhere(
                &resource.services,
                &resource.gateways,
                &waypointed,
                &waypoints,
                &mut status.notes,
            );
            request_authentication_resources.insert(
                format!("{namespace}/{name}"),
                encode_as(REQUEST_AUTHENTICATION_TYPE, resource.encode_to_vec()),
            );
        }
        authentications.push(status);
    }
    authentications.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    addresses.extend(workloads.iter().map(|(uid, workload)| (uid.clone(), workload.clone())));
    let grpc_routes: Vec<HttpRoute> = grpc_routes.iter().map(|route| route.as_http()).collect();
    let tcp_routes: Vec<HttpRoute> = tcp_routes.iter().map(|route| route.as_http()).collect();
    let all_routes = http_routes
        .iter()
        .map(|&route| (RouteKind::Http, route))
        .chain(grpc_routes.iter().map(|route| (RouteKind::Grpc, route)))
        .chain(tcp_routes.iter().map(|route| (RouteKind::Tcp, route)));
    let (mut routes, mesh_routes) = routes::compile(naming, &services_by_name, &with_waypoint, all_routes);
    let service_keys: HashMap<(&str, &str), String> = services_by_name
        .keys()
        .map(|&(namespace, name)| {
            ((namespace, name), format!("{namespace}/{}", hostname(naming, name, namespace)))
        })
        .collect();
    let mesh = traffic::Mesh {
        service_waypoints: &service_waypoints,
        service_keys: &service_keys,
        routes: &mesh_routes,
        waypoints: &waypoints,
    };
    let traffic = fault_policies
        .iter()
        .map(|&policy| traffic::Read::from(policy))
        .chain(rate_limit_policies.iter().map(|&policy| traffic::Read::from(policy)))
        .chain(circuit_breaker_policies.iter().map(|&policy| traffic::Read::from(policy)))
        .chain(load_balancer_policies.iter().map(|&policy| traffic::Read::from(policy)));
    let traffic_policies = traffic::apply(&mesh, traffic, &mut routes);
    let routes = routes::encode(routes);
    Snapshot {
        version: 0,
        addresses,
        authorizations,
        http_authorizations,
        policies: statuses,
        request_authentications: request_authentication_resources,
        authentications,
        routes,
        mesh_routes,
        traffic_policies,
        changes: Default::default(),
    }
}

/// Whether a policy for `services` (keys) and `gateways` (`namespace/name`) has a waypoint to
/// enforce it anywhere; each target none stands in front of gets a note (enforced by nobody:
/// said, rather than report a DENY that silently does nothing).
fn enforced_somewhere(
    services: &[String],
    gateways: &[String],
    waypointed: &std::collections::HashSet<String>,
    waypoints: &waypoint::Waypoints,
    notes: &mut Vec<String>,
) -> bool {
    let mut enforced = false;
    for service in services {
        if waypointed.contains(service) {
            enforced = true;
        } else {
            notes.push(format!("Service {service} uses no waypoint: not enforced there"));
        }
    }
    for gateway in gateways {
        let (gateway_namespace, gateway_name) = gateway.split_once('/').unwrap_or_default();
        if waypoints.exists(gateway_namespace, gateway_name) {
            enforced = true;
        } else {
            notes.push(format!("Gateway {gateway} is no waypoint: not enforced there"));
        }
    }
    enforced
}

/// A policy as a waypoint enforces it, and notes on it.
type Waypoints = (weft_api::http_authorization::HttpAuthorization, Vec<String>);

fn service_resource(naming: &Naming, name: &str, namespace: &str, service: &Service) -> api::Service {
    let spec = service.spec.as_ref();
    let ips: Vec<IpAddr> = match spec.and_then(|spec| spec.cluster_ips.as_ref()) {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        _ => spec
            .and_then(|spec| spec.cluster_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .into_iter()
            .collect(),
    };
    api::Service {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        hostname: hostname(naming, name, namespace),
        addresses: ips
            .iter()
            .map(|ip| api::NetworkAddress { network: String::new(), address: ip_bytes(ip) })
            .collect(),
        ports: service_ports(service)
            .map(|(port, target)| api::Port {
                service_port: port,
                target_port: match target {
                    Some(IntOrString::Int(number)) => u32::try_from(*number).unwrap_or(0),
                    // Named: resolved per workload.
                    _ => 0,
                },
            })
            .collect(),
        // Istio fills these from ServiceEntries and annotations Weft does not read.
        subject_alt_names: Vec::new(),
        waypoint: None,
        load_balancing: locality::load_balancing(service),
    }
}

/// The TCP ports of a service: `(port, targetPort)`.
fn service_ports(service: &Service) -> impl Iterator<Item = (u32, Option<&IntOrString>)> {
    service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|port| port.protocol.as_deref().is_none_or(|protocol| protocol == "TCP"))
        .filter_map(|port| Some((u32::try_from(port.port).ok()?, port.target_port.as_ref())))
}

fn hostname(naming: &Naming, name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{}", naming.cluster_domain)
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// The address `ip_bytes` made, if `bytes` are one.
fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn encode(address: api::address::Type) -> Arc<Resource> {
    encode_as(api::ADDRESS_TYPE, api::Address { r#type: Some(address) }.encode_to_vec())
}

fn encode_as(type_url: &str, value: Vec<u8>) -> Arc<Resource> {
    Arc::new(Resource::new(
        format!("{:016x}", weft_api::hash::fnv1a(&value)),
        prost_types::Any { type_url: type_url.to_owned(), value },
    ))
}

#[cfg(test)]
mod tests;
