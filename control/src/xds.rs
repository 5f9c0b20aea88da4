//! Delta ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`):
//! each proxy (node proxy or waypoint), authenticated by its service-account token like the
//! CA's callers, holds one
//! stream and subscribes to resource types; it gets every resource of a type it subscribed to
//! (wildcard) or the names it asked for, then only what changed: new or changed resources, and
//! the names of removed ones. Responses carry a nonce the proxy acks, or nacks with an error
//! detail. A nack is counted and logged; the proxy keeps its last good config, and what the
//! rejected response carried is again counted as not delivered, so the next push re-sends it
//! (with whatever changed since) — never in a loop of its own. A reconnecting proxy may say
//! which versions it holds (`initial_resource_versions`): it gets the difference, removals
//! included. Requests for types the control plane does not serve are logged and ignored.
//!
//! Address resources are mesh-wide: any pod on a node may connect to any workload or service.
//! So are route resources (`weft.route.ServiceRoutes`, for waypoints).
//!
//! Every stream runs in its own task and reads the latest snapshot from a `watch` channel, so a
//! slow or dead proxy skips intermediate versions and never holds up the others.
use std::{
    collections::{BTreeSet, HashMap},
    pin::Pin,
    sync::Arc,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use weft_api::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
    aggregated_discovery_service_server::AggregatedDiscoveryService,
};

use crate::{
    ca::caller::Authenticator,
    index::{Resources, Snapshot},
    metrics::Metrics,
};

/// Responses a stream may have queued before it waits for its proxy to read.
const QUEUE: usize = 4;
/// Unanswered responses remembered per type (for nacks); older ones count as delivered.
const PENDING: usize = 16;

/// The ADS service.
#[derive(Debug, Clone)]
pub struct Server {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    authenticator: Authenticator,
    metrics: Arc<Metrics>,
    /// Turns true at shutdown: every stream ends (`unavailable`) so the server can stop.
    stopping: watch::Receiver<bool>,
}

impl Server {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        authenticator: Authenticator,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self { snapshots, authenticator, metrics, stopping }
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Server {
    type DeltaAggregatedResourcesStream = Responses;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let caller = match self.authenticator.authenticate_request(request.metadata()).await {
            Ok(caller) => caller,
            Err(error) => {
                tracing::info!(%error, "xDS stream refused");
                return Err(error.into());
            }
        };
        let (sender, receiver) = mpsc::channel(QUEUE);
        let session = Session {
            node: caller.node,
            snapshots: self.snapshots.clone(),
            subscriptions: HashMap::new(),
            sender,
            nonces: 0,
            metrics: self.metrics.clone(),
            stopping: self.stopping.clone(),
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// What a proxy asked for of one type, and what it has been sent.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Resource name → version, as the proxy holds them (after our last response).
    sent: HashMap<String, String>,
    /// Whether a first response went out (it goes out even when empty: "you have it all").
    answered: bool,
    /// Responses not yet acked, oldest first, with what each changed in `sent`.
    pending: Vec<(String, Vec<Change>)>,
}

/// One name's entry in `sent` before and after a response: (name, before, after).
type Change = (String, Option<String>, Option<String>);

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The proxy rejected response `nonce`: what it carried counts as not delivered again
    /// (names a later response changed since keep that response's version). Returns whether
    /// the nonce was one of ours.
    fn rejected(&mut self, nonce: &str) -> bool {
        let Some(index) = self.pending.iter().position(|(pending, _)| pending == nonce) else { return false };
        let (_, changes) = self.pending.remove(index);
        for (name, before, after) in changes {
            if self.sent.get(&name) == after.as_ref() {
                match before {
                    Some(version) => self.sent.insert(name, version),
                    None => self.sent.remove(&name),
                };
            }
        }
        true
    }

    /// The proxy accepted response `nonce`. Returns whether the nonce was one of ours.
    fn accepted(&mut self, nonce: &str) -> bool {
        let before = self.pending.len();
        self.pending.retain(|(pending, _)| pending != nonce);
        self.pending.len() < before
    }
}

/// One proxy's stream.
struct Session {
    node: String,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    subscriptions: HashMap<String, Subscription>,
    sender: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    nonces: u64,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<bool>,
}

impl Session {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        tracing::info!(node = %self.node, "proxy connected");
        self.metrics.proxy_connected(1);
        let result = self.serve(&mut requests).await;
        self.metrics.proxy_connected(-1);
        match result {
            Ok(()) => tracing::info!(node = %self.node, "proxy disconnected"),
            Err(status) => {
                tracing::info!(node = %self.node, %status, "proxy stream ended");
                let _ = self.sender.send(Err(status)).await;
            }
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<DeltaDiscoveryRequest>) -> Result<(), Status> {
        // Version 0 means the index has not synced yet: answer nothing until it has.
        let mut synced = self.snapshots.borrow().version > 0;
        let mut stopping = self.stopping.clone();
        loop {
            tokio::select! {
                () = stopped(&mut stopping) => {
                    return Err(Status::unavailable("control plane shutting down"));
                }
                request = requests.message() => {
                    let Some(request) = request? else { return Ok(()) };
                    if let Some(type_url) = self.handle(request) && synced {
                        self.push(&type_url).await?;
                    }
                }
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("control plane shutting down"));
                    }
                    synced = true;
                    let mut types: Vec<String> = self.subscriptions.keys().cloned().collect();
                    // Policies before the workloads that may name them, and workloads and
                    // services before the routes that name them: a proxy then never holds a
                    // resource naming one it has not received (it would wait).
                    types.sort_by_key(|type_url| match type_url.as_str() {
                        weft_api::security::AUTHORIZATION_TYPE => 0,
                        weft_api::workload::ADDRESS_TYPE => 1,
                        _ => 2,
                    });
                    for type_url in types {
                        self.push(&type_url).await?;
                    }
                }
            }
        }
    }

    /// Applies a request; returns the type to push when the subscription changed.
    fn handle(&mut self, request: DeltaDiscoveryRequest) -> Option<String> {
        let type_url = request.type_url;
        if self.snapshots.borrow().of_type(&type_url).is_none() {
            // Another client's types (a newer Istio ztunnel's) must not end the stream.
            tracing::info!(node = %self.node, %type_url, "ignoring a subscription to a type not served");
            return None;
        }
        let first = !self.subscriptions.contains_key(&type_url);
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            let nonce = &request.response_nonce;
            match request.error_detail {
                Some(error) if subscription.rejected(nonce) => {
                    self.metrics.nack(&type_url);
                    tracing::warn!(node = %self.node, %type_url, %nonce, error = %error.message,
                        "proxy rejected a response; its contents will be sent again with the next push");
                }
                None if subscription.accepted(nonce) => self.metrics.ack(&type_url),
                _ => {
                    tracing::debug!(node = %self.node, %type_url, %nonce, "reply to an unknown or forgotten nonce")
                }
            }
        }
        if first {
            subscription.wildcard = request.resource_names_subscribe.is_empty();
            subscription.sent = request.initial_resource_versions;
        }
        let mut changed = first;
        for name in request.resource_names_subscribe {
            changed = true;
            if name == "*" {
                subscription.wildcard = true;
            } else {
                // Re-sent even if unchanged: the proxy may have dropped it meanwhile.
                subscription.sent.remove(&name);
                subscription.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(&name);
            }
            subscription.sent.remove(&name);
        }
        changed.then_some(type_url)
    }

    /// Sends what changed for `type_url` since the proxy's last response, if anything did.
    async fn push(&mut self, type_url: &str) -> Result<(), Status> {
        let snapshot = self.snapshots.borrow().clone();
        let Some(subscription) = self.subscriptions.get_mut(type_url) else { return Ok(()) };
        let resources: &Resources = snapshot.of_type(type_url).unwrap_or(&snapshot.authorizations);
        let mut changed = Vec::new();
        for (name, resource) in resources {
            if subscription.wants(name) && subscription.sent.get(name) != Some(&resource.version) {
                changed.push(Resource {
                    name: name.clone(),
                    version: resource.version.clone(),
                    resource: Some(resource.body.clone()),
                    aliases: Vec::new(),
                });
            }
        }
        let removed: Vec<String> =
            subscription.sent.keys().filter(|name| !resources.contains_key(*name)).cloned().collect();
        if changed.is_empty() && removed.is_empty() && subscription.answered {
            return Ok(());
        }
        let mut undo = Vec::with_capacity(removed.len() + changed.len());
        for name in &removed {
            undo.push((name.clone(), subscription.sent.remove(name), None));
        }
        for resource in &changed {
            let before = subscription.sent.insert(resource.name.clone(), resource.version.clone());
            undo.push((resource.name.clone(), before, Some(resource.version.clone())));
        }
        subscription.answered = true;
        self.nonces += 1;
        let nonce = format!("{}-{}", snapshot.version, self.nonces);
        subscription.pending.push((nonce.clone(), undo));
        if subscription.pending.len() > PENDING {
            subscription.pending.remove(0);
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.version.to_string(),
            resources: changed,
            type_url: type_url.to_owned(),
            nonce,
            removed_resources: removed,
        };
        tracing::debug!(node = %self.node, %type_url, version = snapshot.version,
            changed = response.resources.len(), removed = response.removed_resources.len(), "push");
        self.metrics.push(type_url);
        self.sender.send(Ok(response)).await.map_err(|_| Status::cancelled("proxy went away"))
    }
}

/// Resolves once `stopping` turns true (the guard `wait_for` returns is dropped inside).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}
