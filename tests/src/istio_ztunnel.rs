//! Istio's own ztunnel as the node proxy of harness nodes, so that a benchmark measures Weft's
//! beside it in one run (`weft-mesh-bench --istio-ztunnel`). Nothing of Istio is part of Weft:
//! whoever compares builds the binary from Istio's source with `--features testing`, which gives
//! it a fake CA (every instance signs with the same compiled-in root, so two trust each other and
//! no control plane is needed). It takes its node's pods from the Weft agent's ZDS socket, as it
//! would from istio-cni, and its workloads from a local file in its own format, and otherwise
//! runs as in a cluster: shared mode, two worker threads, its default logging.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::json;

use crate::{
    apps,
    mesh::Member,
    process::{Process, merged_output},
    topology::{Node, Topology},
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Where Istio's ztunnel serves `/healthz/ready`, in its own (the node's) namespace.
const READINESS_PORT: u16 = 15021;
/// Where it serves Prometheus metrics, in the same namespace.
const STATS_PORT: u16 = 15020;

/// Istio's local workloads file (`LOCAL_XDS_PATH`; YAML, of which JSON is a part) naming
/// `members`, every one reached over HBONE, written at `path`.
pub fn write_workloads(path: &Path, topology: &Topology, members: &[Member]) -> anyhow::Result<()> {
    let workloads: Vec<_> = members
        .iter()
        .map(|member| {
            json!({
                "uid": member.pod.uid,
                "name": member.pod.name,
                "namespace": member.namespace,
                "serviceAccount": member.service_account,
                "trustDomain": "cluster.local",
                "workloadIps": member.pod.addresses().map(|address| address.to_string()),
                "protocol": "HBONE",
                "node": topology.nodes()[member.pod.node].name,
                "network": "",
                "services": {},
            })
        })
        .collect();
    std::fs::write(path, json!({ "workloads": workloads }).to_string())
        .with_context(|| format!("writing {}", path.display()))
}

/// How an instance pools its connections to other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Istio's defaults: streams share an HBONE connection per peer.
    Shared,
    /// One stream per HBONE connection, released when it ends: every new connection pays a
    /// full TCP, TLS and HTTP/2 handshake.
    FreshEach,
}

/// Starts Istio's ztunnel `binary` as `node`'s proxy, in its namespace and proxy cgroup as
/// Weft's runs, taking pods from the agent's `zds_socket` and workloads from `workloads`, in a
/// working directory of its own under `parent` (where it looks for mesh configuration and
/// secrets); returns once it says it is ready (its pods' snapshot taken).
pub fn start(
    binary: &Path,
    node: &Node,
    zds_socket: &Path,
    workloads: &Path,
    parent: &Path,
    pool: Pool,
) -> anyhow::Result<Process> {
    let dir = parent.join(format!("istio-{}", node.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = Command::new(binary);
    command
        .current_dir(dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("PROXY_MODE", "shared")
        .env("INPOD_UDS", zds_socket)
        .env("FAKE_CA", "true")
        // Empty, not unset: unset means istiod's address.
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", workloads)
        .env("NODE_NAME", &node.name)
        .env("ZTUNNEL_WORKER_THREADS", "2")
        // Weft's node proxy has no DNS proxy either.
        .env("ISTIO_META_DNS_CAPTURE", "false")
        // It delivers from the pod's own address: from the client's, the app's replies need
        // the return path Istio's CNI sets up in each pod (iptables connmark on its 0x539
        // mark). Weft's agent sets up one for its own proxy's delivery mark only.
        .env("ENABLE_ORIG_SRC", "false");
    if pool == Pool::FreshEach {
        command.env("POOL_MAX_STREAMS_PER_CONNECTION", "1").env("POOL_UNUSED_RELEASE_TIMEOUT", "0s");
    }
    let output = merged_output(&mut command)?;
    let mut proxy = Process::spawn(command, &node.netns, Some(&node.proxy_cgroup))?;
    proxy.read_lines_from(output);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let answer = apps::http_get(&node.netns, READINESS_PORT, "/healthz/ready");
        if matches!(&answer, Ok(response) if response.starts_with("HTTP/1.1 200")) {
            return Ok(proxy);
        }
        if proxy.exited() || Instant::now() >= deadline {
            let logged = proxy.lines()?.so_far().concat();
            anyhow::bail!("Istio's ztunnel on {} is not ready ({answer:?}); it logged:\n{logged}", node.name);
        }
        // Polling its readiness endpoint: it has nothing to wait on from here.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many connections the instance on `node` has taken in as their destination's proxy (its
/// `istio_tcp_connections_opened_total` reported by the destination): a connection to one of
/// its pods counts only if it arrived over HBONE.
pub fn inbound_connections(node: &Node) -> anyhow::Result<f64> {
    let metrics = apps::http_get(&node.netns, STATS_PORT, "/metrics")?;
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("istio_tcp_connections_opened_total{"))
        .filter(|line| line.contains("reporter=\"destination\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}
