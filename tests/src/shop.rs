//! The scene many mesh tests start from: two nodes, namespace `shop` enrolled, a client pod
//! (`cart`) on node 0 and a server pod (`payments`, an echo server) on node 1, the control
//! plane, a managed mesh, and a monitor on the fabric for a canary.
use std::net::SocketAddr;

use crate::{
    apps, canary, cluster::Cluster, control::ControlPlane, kubelet::PodTemplate, mesh::Mesh,
    process::Process, topology::Pod, wire::WireMonitor,
};

/// The enrollment label.
pub const LABEL: &str = "weft.dev/dataplane-mode";
/// The server's echo port.
pub const ECHO_PORT: u16 = 8080;

/// The scene, running.
#[derive(Debug)]
pub struct Shop {
    pub cluster: Cluster,
    pub client: Pod,
    pub server: Pod,
    pub echo: Process,
    pub plane: ControlPlane,
    pub mesh: Mesh,
    pub canary: String,
    pub monitor: WireMonitor,
    /// The server's echo address (IPv4).
    pub to: SocketAddr,
}

impl Shop {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// The scene with `control_flags` added to `weft-control`'s command line.
    pub async fn start_with(control_flags: &[&str]) -> anyhow::Result<Self> {
        let mut cluster = Cluster::start(2).await?;
        cluster.kubelet().ensure_namespace("shop", &[(LABEL, "ambient")]).await?;
        let client = cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await?;
        let server =
            cluster.add_pod(1, &PodTemplate::new("shop", "server").service_account("payments")).await?;
        let echo = apps::echo_server(&server, ECHO_PORT)?;
        let plane = ControlPlane::start_with(&cluster, control_flags).await?;
        let mesh = Mesh::start_managed(&cluster, &plane).await?;
        let canary = canary();
        let monitor = WireMonitor::start(cluster.topology().fabric(), &canary)?;
        let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
        Ok(Self { cluster, client, server, echo, plane, mesh, canary, monitor, to })
    }
}
