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
use std::{collections::HashMap, sync::Arc};

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::{Status, metadata::MetadataMap};
use weft_api::discovery::DeltaDiscoveryRequest;

use crate::{ca::caller::Authenticator, index::Snapshot, metrics::Metrics};

mod subscription;
mod wire;

use subscription::Subscription;

/// Responses a stream may have queued before it waits for its proxy to read.
const QUEUE: usize = 4;

/// The ADS service (served by `wire`, as a tonic router's service).
#[derive(Debug, Clone)]
pub struct Server<A = Authenticator> {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    authenticator: A,
    metrics: Arc<Metrics>,
    /// Turns true at shutdown: every stream ends (`unavailable`) so the server can stop.
    stopping: watch::Receiver<bool>,
}

/// Who may open a stream.
pub trait Authenticate: Clone + Send + Sync + 'static {
    /// The proxy a stream's request comes from (its node, named in logs), or why it is refused.
    fn authenticate(&self, metadata: &MetadataMap) -> impl Future<Output = Result<String, Status>> + Send;
}

impl Authenticate for Authenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        match self.authenticate_request(metadata).await {
            Ok(caller) => Ok(caller.node),
            Err(error) => {
                tracing::info!(%error, "xDS stream refused");
                Err(error.into())
            }
        }
    }
}

impl<A: Authenticate> Server<A> {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        authenticator: A,
        metrics: Arc<Metrics>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self { snapshots, authenticator, metrics, stopping }
    }

    /// Serves one authenticated proxy's stream (`node` names it in logs): its session runs in
    /// a task of its own until the proxy or the control plane ends it.
    fn open(&self, node: String, requests: wire::Requests) -> mpsc::Receiver<Result<wire::Push, Status>> {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let session = Session {
            node,
            snapshots: self.snapshots.clone(),
            subscriptions: HashMap::new(),
            sender,
            nonces: 0,
            metrics: self.metrics.clone(),
            stopping: self.stopping.clone(),
        };
        tokio::spawn(session.run(requests));
        receiver
    }
}

/// One proxy's stream.
struct Session {
    node: String,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    subscriptions: HashMap<String, Subscription>,
    sender: mpsc::Sender<Result<wire::Push, Status>>,
    nonces: u64,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<bool>,
}

impl Session {
    async fn run(mut self, mut requests: wire::Requests) {
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

    async fn serve(&mut self, requests: &mut wire::Requests) -> Result<(), Status> {
        // Version 0 means the index has not synced yet: answer nothing until it has.
        let mut synced = self.snapshots.borrow().version > 0;
        let mut stopping = self.stopping.clone();
        loop {
            tokio::select! {
                () = stopped(&mut stopping) => {
                    return Err(Status::unavailable("control plane shutting down"));
                }
                request = requests.next() => {
                    let Some(request) = request.transpose()? else { return Ok(()) };
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
        let subscription = self.subscriptions.entry(type_url.clone()).or_insert_with(|| {
            Subscription::new(request.resource_names_subscribe.is_empty(), request.initial_resource_versions)
        });
        if !request.response_nonce.is_empty() {
            let nonce = &request.response_nonce;
            match request.error_detail {
                Some(error) if subscription.rejected(&type_url, nonce) => {
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
        let mut changed = first;
        for name in request.resource_names_subscribe {
            changed = true;
            if name == "*" {
                subscription.wildcard = true;
            } else {
                // Re-sent even if unchanged: the proxy may have dropped it meanwhile.
                subscription.forget(&type_url, &name);
                subscription.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(&name);
            }
            subscription.forget(&type_url, &name);
        }
        changed.then_some(type_url)
    }

    /// Sends what changed for `type_url` since the proxy's last response, if anything did.
    async fn push(&mut self, type_url: &str) -> Result<(), Status> {
        let snapshot = self.snapshots.borrow().clone();
        let Some(subscription) = self.subscriptions.get_mut(type_url) else { return Ok(()) };
        let nonce = format!("{}-{}", snapshot.version, self.nonces + 1);
        let Some(response) = subscription.respond(type_url, &snapshot, &nonce) else { return Ok(()) };
        self.nonces += 1;
        tracing::debug!(node = %self.node, %type_url, version = snapshot.version,
            changed = response.resources.count(), removed = response.removed.len(), "push");
        self.metrics.push(type_url);
        let push = wire::Push {
            version: snapshot.version.to_string(),
            type_url: type_url.to_owned(),
            nonce,
            response,
        };
        self.sender.send(Ok(push)).await.map_err(|_| Status::cancelled("proxy went away"))
    }
}

/// Resolves once `stopping` turns true (the guard `wait_for` returns is dropped inside).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}
