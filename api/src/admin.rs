//! The daemons' HTTP endpoints, as Prometheus and Kubernetes probes speak to them: `/metrics`,
//! `/healthz/ready` and the JSON `/config_dump` (ztunnel: metrics 15020, readiness 15021,
//! admin localhost:15000; weft-control and the agent: metrics and readiness on one port, all
//! three on a localhost admin port that `weftctl` reaches by port-forward). The dump holds the
//! mesh's inventory, so it is never served beyond the node (or pod). A deliberately small
//! HTTP/1.1 responder: GET only, one request per connection, no body accepted.
use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinSet,
};

/// What the endpoints report.
pub trait Source: Send + Sync + 'static {
    /// Prometheus text.
    fn metrics(&self) -> String;
    /// Whether the daemon is ready to serve.
    fn ready(&self) -> bool;
    /// The daemon's state as JSON.
    fn config_dump(&self) -> String;
}

/// Which endpoints a listener answers; the others are 404 there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub metrics: bool,
    pub ready: bool,
    pub config_dump: bool,
}

impl Endpoints {
    pub const ALL: Self = Self { metrics: true, ready: true, config_dump: true };
    /// What a cluster-reachable port serves: everything but the dump.
    pub const MONITORING: Self = Self { metrics: true, ready: true, config_dump: false };
    pub const METRICS: Self = Self { metrics: true, ready: false, config_dump: false };
    pub const READY: Self = Self { metrics: false, ready: true, config_dump: false };
    pub const CONFIG_DUMP: Self = Self { metrics: false, ready: false, config_dump: true };
}

/// The Prometheus text exposition of `registry`, for [`Source::metrics`].
pub fn exposition(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Serves `endpoints` of `source` on `listener` until dropped.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>, endpoints: Endpoints) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else {
                    // Out of descriptors or the like: don't spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let source = source.clone();
                connections.spawn(async move {
                    let mut request = [0u8; 2048];
                    let Ok(Ok(len)) = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut request)).await else {
                        return;
                    };
                    let (status, content_type, body) = respond(&request[..len], source.as_ref(), endpoints);
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The control plane's and the agent's pair: `monitoring` (cluster-reachable: metrics and
/// readiness) and `admin` (meant for loopback: those and the dump), both bound; returns the
/// addresses bound (the harness asks for port 0) and the future serving both.
pub async fn bind_monitoring_and_admin(
    monitoring: SocketAddr,
    admin: SocketAddr,
    source: Arc<dyn Source>,
) -> std::io::Result<(SocketAddr, SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| std::io::Error::new(error.kind(), format!("binding {addr}: {error}")))
    };
    let (monitoring, admin) = (bind(monitoring).await?, bind(admin).await?);
    let bound = (monitoring.local_addr()?, admin.local_addr()?);
    let serving = async move {
        tokio::join!(
            serve(monitoring, source.clone(), Endpoints::MONITORING),
            serve(admin, source, Endpoints::ALL)
        );
    };
    Ok((bound.0, bound.1, serving))
}

fn respond(
    request: &[u8],
    source: &dyn Source,
    endpoints: Endpoints,
) -> (&'static str, &'static str, String) {
    let line =
        String::from_utf8_lossy(request.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != "GET" {
        return ("405 Method Not Allowed", "text/plain", "GET only\n".into());
    }
    match path {
        "/metrics" | "/stats/prometheus" if endpoints.metrics => {
            ("200 OK", "text/plain; version=0.0.4", source.metrics())
        }
        "/healthz/ready" if endpoints.ready && source.ready() => ("200 OK", "text/plain", "ready\n".into()),
        "/healthz/ready" if endpoints.ready => {
            ("503 Service Unavailable", "text/plain", "not ready\n".into())
        }
        "/config_dump" if endpoints.config_dump => ("200 OK", "application/json", source.config_dump()),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

/// Where ztunnel's endpoints listen.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
    pub admin: SocketAddr,
}

impl Default for Addresses {
    fn default() -> Self {
        Self {
            metrics: SocketAddr::from(([0, 0, 0, 0], 15020)),
            readiness: SocketAddr::from(([0, 0, 0, 0], 15021)),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
        }
    }
}
