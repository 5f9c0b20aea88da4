//! Keeps the [`Snapshot`] current: reflectors on namespaces, pods, nodes (their metadata),
//! services, EndpointSlices,
//! authorization policies, Weft's traffic policies, request authentication (with the
//! ConfigMaps and Secrets labelled as key sets) and, when the Gateway API's CRDs are
//! installed, Gateways, HTTPRoutes, GRPCRoutes and TCPRoutes; every change updates the
//! [`Index`] (by the pods, Services and EndpointSlices it names) and, when the resources
//! differ, publishes the snapshot with the next version.
//! Nothing is published until every reflector has listed once, so a (re)started control plane
//! never serves a partial mesh that would make proxies drop workloads.
use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::ListParams,
    core::PartialObjectMeta,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use weft_api::watch::{Taken, Touched, Watched, reflect, reflect_touched, reflect_when};

use super::{
    Changed, Index, Naming, Objects, Snapshot,
    authentication::{JWKS_LABEL, RequestAuthentication},
    gateway_api::{Gateway, HttpRoute, grpc::GrpcRoute, tcp::TcpRoute},
    policy::AuthorizationPolicy,
    traffic::{CircuitBreakerPolicy, FaultInjectionPolicy, LoadBalancerPolicy, RateLimitPolicy},
};

/// Runs until a watch ends for good; `publish` holds the latest snapshot (version 0 = none yet).
pub async fn run(
    client: kube::Client,
    naming: Naming,
    publish: watch::Sender<Arc<Snapshot>>,
) -> anyhow::Result<()> {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let mut watchers = JoinSet::new();
    let all = watcher::Config::default;
    let namespaces = reflect(&mut watchers, Api::<Namespace>::all(client.clone()), all(), changed_tx.clone());
    // The kinds there are many of, and that change most: each change names what it touched.
    let (pods, pods_touched) =
        reflect_touched(&mut watchers, Api::<Pod>::all(client.clone()), all(), changed_tx.clone());
    let (services, services_touched) =
        reflect_touched(&mut watchers, Api::<Service>::all(client.clone()), all(), changed_tx.clone());
    let (slices, slices_touched) =
        reflect_touched(&mut watchers, Api::<EndpointSlice>::all(client.clone()), all(), changed_tx.clone());
    // Where pods run: their nodes' topology labels. Without the right to list nodes the watch
    // would retry forever, serving nothing.
    Api::<Node>::all(client.clone()).list_metadata(&ListParams::default().limit(1)).await.map_err(
        |error| {
            anyhow::anyhow!(
                "listing nodes ({error}): may weft-control list and watch them (manifests/control.yaml)?"
            )
        },
    )?;
    // Their metadata alone (an `Api` of `PartialObjectMeta` asks for no more): a Node's status
    // lists every image it holds. Only a change of their topology labels rebuilds the index,
    // not every status report.
    let nodes = reflect_when(
        &mut watchers,
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        all(),
        changed_tx.clone(),
        |node| super::locality::topology_hash(&node.metadata),
    );
    // Without the CRD the watch would retry forever and nothing would ever be served.
    let policies_api = Api::<AuthorizationPolicy>::all(client.clone());
    policies_api.list_metadata(&ListParams::default().limit(1)).await.map_err(|error| {
        anyhow::anyhow!(
            "listing authorizationpolicies.security.weft.dev ({error}): is the CRD installed (manifests/crds.yaml) and may weft-control list it?"
        )
    })?;
    let policies = reflect(&mut watchers, policies_api, all(), changed_tx.clone());
    // The Gateway API is optional: without it no waypoint exists (a Service or pod labelled
    // for one is addressed to it all the same, and proxies refuse its traffic).
    let gateway_api = if gateway_api_installed(&client).await? {
        // GRPCRoute came to the standard channel after the others (v1.1), TCPRoute's v1 later
        // still (v1.5): an older install lacks them and still gets HTTP routing.
        let grpc = if installed(Api::<GrpcRoute>::all(client.clone()), "grpcroutes.gateway.networking.k8s.io")
            .await?
        {
            Some(reflect(&mut watchers, Api::<GrpcRoute>::all(client.clone()), all(), changed_tx.clone()))
        } else {
            tracing::warn!("the Gateway API's GRPCRoute CRD is not installed: GRPCRoutes are off");
            None
        };
        let tcp = if installed(Api::<TcpRoute>::all(client.clone()), "tcproutes.gateway.networking.k8s.io")
            .await?
        {
            Some(reflect(&mut watchers, Api::<TcpRoute>::all(client.clone()), all(), changed_tx.clone()))
        } else {
            tracing::warn!("the Gateway API's TCPRoute CRD (v1) is not installed: TCPRoutes are off");
            None
        };
        Some(GatewayApi {
            gateways: reflect(&mut watchers, Api::<Gateway>::all(client.clone()), all(), changed_tx.clone()),
            http: reflect(&mut watchers, Api::<HttpRoute>::all(client.clone()), all(), changed_tx.clone()),
            grpc,
            tcp,
        })
    } else {
        tracing::warn!("Gateway API CRDs not installed: waypoints are off");
        None
    };
    // Weft's traffic policies: each kind off, with a warning, where its CRD is not installed
    // yet (an upgrade that has not applied `manifests/crds.yaml`); the others still work.
    let traffic = TrafficPolicies {
        faults: optional(&mut watchers, &client, "faultinjectionpolicies.networking.weft.dev", &changed_tx)
            .await?,
        rate_limits: optional(&mut watchers, &client, "ratelimitpolicies.networking.weft.dev", &changed_tx)
            .await?,
        breakers: optional(&mut watchers, &client, "circuitbreakerpolicies.networking.weft.dev", &changed_tx)
            .await?,
        balancers: optional(&mut watchers, &client, "loadbalancerpolicies.networking.weft.dev", &changed_tx)
            .await?,
    };
    // Request authentication, with the ConfigMaps and Secrets labelled as holding key sets
    // (only those: not every Secret of the cluster), where its CRD is installed.
    let authentication = match optional::<RequestAuthentication>(
        &mut watchers,
        &client,
        "requestauthentications.security.weft.dev",
        &changed_tx,
    )
    .await?
    {
        Some(policies) => {
            let labelled = || watcher::Config::default().labels(JWKS_LABEL);
            let (maps, secrets) = (Api::<ConfigMap>::all(client.clone()), Api::<Secret>::all(client.clone()));
            // Without the right to list them the watches would retry forever, serving nothing.
            let one = ListParams::default().labels(JWKS_LABEL).limit(1);
            let listed = [
                ("configmaps", maps.list_metadata(&one).await.err()),
                ("secrets", secrets.list_metadata(&one).await.err()),
            ];
            for (what, error) in listed {
                if let Some(error) = error {
                    anyhow::bail!(
                        "listing {what} labelled {JWKS_LABEL} ({error}): may weft-control list them (manifests/control.yaml)?"
                    );
                }
            }
            Some(Authentication {
                policies,
                config_maps: reflect(&mut watchers, maps, labelled(), changed_tx.clone()),
                secrets: reflect(&mut watchers, secrets, labelled(), changed_tx.clone()),
            })
        }
        None => None,
    };
    namespaces.wait_until_ready().await?;
    pods.wait_until_ready().await?;
    services.wait_until_ready().await?;
    slices.wait_until_ready().await?;
    nodes.wait_until_ready().await?;
    policies.wait_until_ready().await?;
    if let Some(api) = &gateway_api {
        api.gateways.wait_until_ready().await?;
        api.http.wait_until_ready().await?;
        if let Some(grpc) = &api.grpc {
            grpc.wait_until_ready().await?;
        }
        if let Some(tcp) = &api.tcp {
            tcp.wait_until_ready().await?;
        }
    }
    if let Some(store) = &traffic.faults {
        store.wait_until_ready().await?;
    }
    if let Some(store) = &traffic.rate_limits {
        store.wait_until_ready().await?;
    }
    if let Some(store) = &traffic.breakers {
        store.wait_until_ready().await?;
    }
    if let Some(store) = &traffic.balancers {
        store.wait_until_ready().await?;
    }
    if let Some(authentication) = &authentication {
        authentication.policies.wait_until_ready().await?;
        authentication.config_maps.wait_until_ready().await?;
        authentication.secrets.wait_until_ready().await?;
    }
    tracing::info!("Kubernetes index synced");
    let mut index = Index::new(naming);
    loop {
        // Taken before the stores are read: what changes meanwhile is in the next take too.
        let touched_pods = changed_in(&pods, &pods_touched);
        let touched_services = changed_in(&services, &services_touched);
        let touched_slices = changed_in(&slices, &slices_touched);
        let (namespaces, pods, services, slices, policies) =
            (namespaces.state(), pods.state(), services.state(), slices.state(), policies.state());
        let (gateways, routes, grpc_routes, tcp_routes) = match &gateway_api {
            Some(api) => (
                api.gateways.state(),
                api.http.state(),
                api.grpc.as_ref().map(|grpc| grpc.state()).unwrap_or_default(),
                api.tcp.as_ref().map(|tcp| tcp.state()).unwrap_or_default(),
            ),
            None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        let (fault_policies, rate_limit_policies, circuit_breaker_policies, load_balancer_policies) = (
            listed(&traffic.faults),
            listed(&traffic.rate_limits),
            listed(&traffic.breakers),
            listed(&traffic.balancers),
        );
        let (request_authentications, jwks_config_maps, jwks_secrets) = match &authentication {
            Some(authentication) => (
                authentication.policies.state(),
                authentication.config_maps.state(),
                authentication.secrets.state(),
            ),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        let nodes = nodes.state();
        let objects = Objects::default()
            .nodes(nodes.iter().map(AsRef::as_ref))
            .namespaces(namespaces.iter().map(AsRef::as_ref))
            .pods(pods.iter().map(AsRef::as_ref))
            .services(services.iter().map(AsRef::as_ref))
            .slices(slices.iter().map(AsRef::as_ref))
            .policies(policies.iter().map(AsRef::as_ref))
            .gateways(gateways.iter().map(AsRef::as_ref))
            .http_routes(routes.iter().map(AsRef::as_ref))
            .grpc_routes(grpc_routes.iter().map(AsRef::as_ref))
            .tcp_routes(tcp_routes.iter().map(AsRef::as_ref))
            .fault_policies(fault_policies.iter().map(AsRef::as_ref))
            .rate_limit_policies(rate_limit_policies.iter().map(AsRef::as_ref))
            .circuit_breaker_policies(circuit_breaker_policies.iter().map(AsRef::as_ref))
            .load_balancer_policies(load_balancer_policies.iter().map(AsRef::as_ref))
            .request_authentications(request_authentications.iter().map(AsRef::as_ref))
            .jwks_config_maps(jwks_config_maps.iter().map(AsRef::as_ref))
            .jwks_secrets(jwks_secrets.iter().map(AsRef::as_ref));
        let touched = match (&touched_pods, &touched_services, &touched_slices) {
            (Some(pods), Some(services), Some(slices)) => {
                Some(Changed { pods: named(pods), services: named(services), slices: named(slices) })
            }
            _ => None,
        };
        publish_next(&publish, index.update(&objects, touched.as_ref()));
        tokio::select! {
            Some(()) = changed.recv() => {}
            Some(ended) = watchers.join_next() => anyhow::bail!("a Kubernetes watch ended: {ended:?}"),
        }
    }
}

/// Publishes `next` with the next version unless it serves what the current snapshot does;
/// logs each policy, route or authentication newly not applied as written.
pub fn publish_next(publish: &watch::Sender<Arc<Snapshot>>, mut next: Snapshot) {
    // Compared and succeeded outside the channel's lock, which every stream takes to read
    // the snapshot: this is its only publisher, so `current` stays current meanwhile.
    let current = publish.borrow().clone();
    if current.version > 0 && current.same_resources(&next) {
        return;
    }
    next.version = current.version + 1;
    super::changes::succeed(&mut next, &current);
    tracing::debug!(
        version = next.version,
        addresses = next.addresses.len(),
        policies = next.authorizations.len(),
        "publishing"
    );
    // Once per new outcome, not on every publish.
    let new_notes = next.policies.iter().filter(|policy| !policy.notes.is_empty());
    for policy in new_notes.filter(|policy| !current.policies.contains(policy)) {
        tracing::warn!(namespace = %policy.namespace, name = %policy.name, notes = ?policy.notes, "policy not enforced as written");
    }
    let new_notes = next.authentications.iter().filter(|policy| !policy.notes.is_empty());
    for policy in new_notes.filter(|policy| !current.authentications.contains(policy)) {
        tracing::warn!(namespace = %policy.namespace, name = %policy.name, notes = ?policy.notes, "request authentication not applied as written");
    }
    let new_notes = next.mesh_routes.iter().filter(|route| !route.notes.is_empty());
    for route in new_notes.filter(|route| !current.mesh_routes.contains(route)) {
        tracing::warn!(kind = route.kind.kind(), namespace = %route.namespace, name = %route.name, notes = ?route.notes, "route not applied as written");
    }
    let refused = next
        .traffic_policies
        .iter()
        .filter(|policy| policy.targets.iter().any(|(_, verdict)| !verdict.status));
    for policy in refused.filter(|policy| !current.traffic_policies.contains(policy)) {
        let why: Vec<String> = policy
            .targets
            .iter()
            .filter(|(_, verdict)| !verdict.status)
            .map(|(target, verdict)| format!("{} {}: {}", target.kind, target.name, verdict.message))
            .collect();
        tracing::warn!(kind = policy.kind.kind(), namespace = %policy.namespace, name = %policy.name, ?why, "traffic policy not applied to every target");
    }
    publish.send_replace(Arc::new(next));
}

/// An object that changed, and what it is now (`None`: gone).
type Now<K> = (ObjectRef<K>, Option<Arc<K>>);

/// The objects of `store` that changed since the last take, as they are now (`None`: gone);
/// `None` when it was listed again (any may have).
fn changed_in<K: Watched>(store: &Store<K>, touched: &Touched<K>) -> Option<Vec<Now<K>>> {
    match touched.take() {
        Taken::Listed => None,
        Taken::Objects(objects) => Some(
            objects
                .into_iter()
                .map(|object| {
                    let now = store.get(&object);
                    (object, now)
                })
                .collect(),
        ),
    }
}

/// Each changed object by namespace and name, with what it is now.
fn named<K: Watched>(changed: &[Now<K>]) -> Vec<(&str, &str, Option<&K>)> {
    changed
        .iter()
        .map(|(object, now)| {
            (object.namespace.as_deref().unwrap_or_default(), object.name.as_str(), now.as_deref())
        })
        .collect()
}

/// The Gateway API's reflectors: GRPCRoute's and TCPRoute's only where their CRDs are.
struct GatewayApi {
    gateways: Store<Gateway>,
    http: Store<HttpRoute>,
    grpc: Option<Store<GrpcRoute>>,
    tcp: Option<Store<TcpRoute>>,
}

/// The traffic policies' reflectors, each where its CRD is.
struct TrafficPolicies {
    faults: Option<Store<FaultInjectionPolicy>>,
    rate_limits: Option<Store<RateLimitPolicy>>,
    breakers: Option<Store<CircuitBreakerPolicy>>,
    balancers: Option<Store<LoadBalancerPolicy>>,
}

/// Request authentication's reflectors: the policies and the labelled key sets.
struct Authentication {
    policies: Store<RequestAuthentication>,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
}

/// What `store` holds; nothing without one.
fn listed<K>(store: &Option<Store<K>>) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.as_ref().map(Store::state).unwrap_or_default()
}

/// A reflector on `resource` (`plural.group`) where the API server serves it; `None`, with a
/// warning, where not.
async fn optional<K: Watched>(
    watchers: &mut JoinSet<()>,
    client: &kube::Client,
    resource: &str,
    changed: &mpsc::Sender<()>,
) -> anyhow::Result<Option<Store<K>>> {
    if installed(Api::<K>::all(client.clone()), resource).await? {
        Ok(Some(reflect(watchers, Api::all(client.clone()), watcher::Config::default(), changed.clone())))
    } else {
        tracing::warn!(resource, "CRD not installed (manifests/crds.yaml): these policies are off");
        Ok(None)
    }
}

/// Whether the Gateway API's Gateway and HTTPRoute CRDs are installed. Checked once, at start
/// (installing them later takes a restart): a watch on a missing one would retry forever and
/// nothing would ever be served.
async fn gateway_api_installed(client: &kube::Client) -> anyhow::Result<bool> {
    Ok(installed(Api::<Gateway>::all(client.clone()), "gateways.gateway.networking.k8s.io").await?
        && installed(Api::<HttpRoute>::all(client.clone()), "httproutes.gateway.networking.k8s.io").await?)
}

/// Whether the API server serves `resource` (`plural.group`): not found means not installed;
/// any other failure (RBAC, say) stops the control plane with a message.
async fn installed<K>(api: Api<K>, resource: &str) -> anyhow::Result<bool>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        // A resource the API server does not serve answers a bare 404, not a NotFound Status.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(anyhow::anyhow!("listing {resource} ({error}): may weft-control list it?")),
    }
}
