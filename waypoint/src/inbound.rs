//! HBONE into the waypoint: each CONNECT names a destination — a Service's VIP and port (or its
//! `hostname:port`), or a workload's address — that must have this waypoint as its own; its
//! stream is then read as HTTP, or relayed at L4 when it is not HTTP ([`crate::forward`]).
use std::{net::SocketAddr, sync::Arc};

use weft_proxy::{
    hbone::{
        Stream,
        server::{ConnectRequest, Handler, Refusal, Upstream},
    },
    identity::Identity,
    relay::Counts,
    state::{Service, Workload},
};

use crate::{app::Context, forward::Session};

/// How long a CONNECT may wait for the configuration to name its destination.
const CONFIG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a CONNECT goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A Service, on a service port.
    Service(Arc<Service>, u16),
    /// A workload, on a port of its own.
    Workload(Arc<Workload>, u16),
}

/// The waypoint's HBONE handler.
#[derive(Debug)]
pub struct Inbound {
    context: Arc<Context>,
}

impl Inbound {
    pub fn new(context: Arc<Context>) -> Self {
        Self { context }
    }

    /// The destination `request` names, if it is behind this waypoint.
    fn destination(&self, request: &ConnectRequest) -> Result<Destination, Refusal> {
        let state = &self.context.state;
        let port = request.target.port();
        let destination = match &request.service {
            Some(named) => {
                let key = state_key(&named.hostname);
                let service = state
                    .service(&key)
                    .ok_or_else(|| Refusal::BadRequest(format!("no service {}", named.hostname)))?;
                Destination::Service(service, named.port)
            }
            None => match state.service_by_vip(request.target.ip()) {
                Some((service, _)) => Destination::Service(service, port),
                None => {
                    let workload = state.workload_by_ip(request.target.ip()).ok_or_else(|| {
                        Refusal::BadRequest(format!("{} is no workload or service", request.target))
                    })?;
                    Destination::Workload(workload, port)
                }
            },
        };
        let (waypoint, name) = match &destination {
            Destination::Service(service, _) => (&service.waypoint, service.key()),
            Destination::Workload(workload, _) => (&workload.waypoint, workload.uid.clone()),
        };
        match waypoint {
            Some(waypoint) if self.context.is_me(waypoint) => Ok(destination),
            _ => Err(Refusal::BadRequest(format!("{name} is not behind this waypoint"))),
        }
    }
}

/// A Service's key from its hostname (`name.namespace.svc.…`): its namespace is the hostname's
/// second label.
fn state_key(hostname: &str) -> String {
    let namespace = hostname.split('.').nth(1).unwrap_or_default();
    format!("{namespace}/{hostname}")
}

impl Handler for Inbound {
    type Upstream = Session;

    /// A Service's `hostname:port` is served as it is: the waypoint routes to the Service,
    /// never to a pod of its own.
    async fn resolve(&self, _request: &mut ConnectRequest) -> Result<(), Refusal> {
        Ok(())
    }

    async fn connect(&self, request: ConnectRequest) -> Result<Session, Refusal> {
        // Until the L7 policies are in too, a request could be allowed that one of them denies.
        let synced = tokio::time::timeout(CONFIG_WAIT, self.context.synced()).await;
        if synced.is_err() {
            return Err(Refusal::Unavailable("no complete configuration yet".into()));
        }
        let destination = self.destination(&request).inspect_err(|refusal| {
            tracing::info!(src = %request.peer.identity, target = %request.target, %refusal, "CONNECT refused");
        })?;
        // The client's node proxy connects from inside the client's pod: the tunnel's source is
        // the client. `Forwarded` is not believed: any holder of a mesh certificate could name
        // any address in it, and policies decide on source addresses.
        let client = Client {
            identity: request.peer.identity.clone(),
            address: request.peer.source,
            via: request.via.as_deref().map(str::to_owned),
        };
        Ok(Session::new(self.context.clone(), destination, client))
    }

    fn draining(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.context.drain.subscribe())
    }
}

/// Who sent the requests of a stream.
#[derive(Debug, Clone)]
pub struct Client {
    /// The identity its node proxy proved (the client workload's).
    pub identity: Identity,
    /// Its address: the tunnel's source.
    pub address: SocketAddr,
    /// The CONNECT's `Via`: the waypoints the stream came through, chained.
    pub via: Option<String>,
}

impl Upstream for Session {
    async fn carry(self, stream: Stream, _counts: &Counts) -> std::io::Result<()> {
        self.serve(stream).await
    }
}
