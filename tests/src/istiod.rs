//! Istio's own control plane on the harness: `pilot-discovery` (istiod, built by `cargo xtask
//! setup` from the istio.io/istio module) in ambient mode, against the harness's API server with
//! Istio's CRDs installed, in the harness's namespace; its xDS and CA port (15012) reached by the
//! nodes at the fabric gateway's address through a relay. It signs with a root of its own
//! making and publishes it in `istio-ca-root-cert`, as in a cluster. Node proxies run as
//! `istio-system/ztunnel`, the account istiod trusts to ask certificates for the pods of their
//! node, each with a token bound to its node's ztunnel Pod object.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use crate::{
    apiserver::Relay,
    cluster::Cluster,
    process::Process,
    topology::{FABRIC_GATEWAY, Node},
};

pub const NAMESPACE: &str = "istio-system";
/// The node proxies' service account, the one Istio's chart names in `CA_TRUSTED_NODE_ACCOUNTS`.
pub const PROXY_SERVICE_ACCOUNT: &str = "ztunnel";
const XDS_PORT: u16 = 15012;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running istiod.
#[derive(Debug)]
pub struct Istiod {
    process: Process,
    /// istiod's debug and readiness endpoint (`/ready`, `/debug/...`) on the harness's loopback.
    http: SocketAddr,
    _relay: Relay,
    dir: tempfile::TempDir,
    root_file: PathBuf,
}

impl Istiod {
    /// Installs Istio's CRDs, starts istiod for `cluster` and waits until it is ready and has
    /// published its root.
    pub async fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let crds = crate::apiserver::kube_bin()?.join("istio-crds.yaml");
        crate::control::install_crds_from(cluster.client(), &crds).await?;
        cluster.kubelet().ensure_namespace(NAMESPACE, &[]).await?;
        cluster.kubelet().ensure_service_account(NAMESPACE, PROXY_SERVICE_ACCOUNT).await?;
        let dir = tempfile::Builder::new().prefix("weft-istiod-").tempdir()?;
        // Every listener on loopback: tests run side by side in the harness's namespace.
        let [http, grpc, secure, monitoring, webhook, ctrlz] = crate::ports::free_loopback_ports()?;
        let mesh_config = dir.path().join("mesh.yaml");
        std::fs::write(&mesh_config, "trustDomain: cluster.local\n")?;
        let loopback = |port: u16| format!("127.0.0.1:{port}");
        let mut command = Command::new(crate::apiserver::kube_bin()?.join("pilot-discovery"));
        command
            .arg("discovery")
            .arg("--kubeconfig")
            .arg(cluster.api().kubeconfig())
            .arg("--meshConfig")
            .arg(&mesh_config)
            .args(["--namespace", NAMESPACE, "--domain", "cluster.local", "--clusterID", "Kubernetes"])
            .args(["--httpAddr", &loopback(http), "--grpcAddr", &loopback(grpc)])
            .args(["--secureGRPCAddr", &loopback(secure), "--monitoringAddr", &loopback(monitoring)])
            .args(["--httpsAddr", &loopback(webhook), "--ctrlz_address", "127.0.0.1"])
            .args(["--ctrlz_port", &ctrlz.to_string()])
            // istiod writes its serving certificate under its working directory.
            .current_dir(dir.path())
            .env("POD_NAME", "istiod-harness")
            .env("POD_NAMESPACE", NAMESPACE)
            .env("PILOT_ENABLE_AMBIENT", "true")
            .env("JWT_POLICY", "third-party-jwt")
            // The node proxies may ask certificates for the pods of their node, as Istio's
            // chart sets it when ztunnel is installed.
            .env("CA_TRUSTED_NODE_ACCOUNTS", format!("{NAMESPACE}/{PROXY_SERVICE_ACCOUNT}"))
            // The nodes reach it at the fabric gateway's address: its serving certificate names it.
            .env("ISTIOD_CUSTOM_HOST", FABRIC_GATEWAY.to_string())
            // Off by default in istiod because ztunnels before 1.29 enforced dry-run policies;
            // Weft's node proxies only log them.
            .env("AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY", "true")
            // No webhooks to patch here.
            .env("VALIDATION_WEBHOOK_CONFIG_NAME", "")
            .env("INJECTION_WEBHOOK_CONFIG_NAME", "");
        let reader = crate::process::merged_output(&mut command)?;
        let mut process = Process::start(command)?;
        process.read_lines_from(reader);
        let relay = Relay::from_fabric(
            cluster.topology().fabric(),
            XDS_PORT,
            SocketAddr::from((Ipv4Addr::LOCALHOST, secure)),
        )?;
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, http));
        let root_file = dir.path().join("root-cert.pem");
        let mut istiod = Self { process, http, _relay: relay, dir, root_file };
        istiod.wait_ready(cluster.client()).await?;
        Ok(istiod)
    }

    /// `https://172.18.0.1:15012`, istiod's xDS and CA as node proxies reach it.
    pub fn address(&self) -> String {
        format!("https://{FABRIC_GATEWAY}:{XDS_PORT}")
    }

    /// istiod's root, as it published it.
    pub fn root_file(&self) -> &Path {
        &self.root_file
    }

    /// Creates node `node`'s ztunnel Pod object in `istio-system` and returns a file holding a
    /// token for it (service account `ztunnel`, audience `istio-ca`, bound to that pod).
    pub async fn proxy_token(&self, cluster: &Cluster, node: &Node) -> anyhow::Result<PathBuf> {
        crate::control::node_proxy_token(cluster, node, (NAMESPACE, PROXY_SERVICE_ACCOUNT), self.dir.path())
            .await
    }

    /// A GET of `path` on istiod's debug endpoint (`/debug/...`).
    pub fn get(&self, path: &str) -> anyhow::Result<String> {
        crate::apps::http_get_at(self.http, path)
    }

    /// The istiod process (its log, whether it exited).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    async fn wait_ready(&mut self, client: kube::Client) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if self.process.exited() {
                let log = self.process.lines()?.rest(std::time::Instant::now())?;
                anyhow::bail!("istiod exited:\n{}", log.join("\n"));
            }
            let ready = tokio::task::block_in_place(|| self.get("/ready"));
            if ready.is_ok_and(|response| response.starts_with("HTTP/1.1 200")) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                self.process.kill()?;
                let log = self.process.lines()?.rest(std::time::Instant::now() + Duration::from_secs(5))?;
                let tail = &log[log.len().saturating_sub(40)..];
                anyhow::bail!(
                    "istiod not ready within {READY_TIMEOUT:?}; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let config_maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
        let root = crate::eventually("istiod to publish its root", READY_TIMEOUT, || {
            let config_maps = config_maps.clone();
            async move {
                config_maps.get_opt("istio-ca-root-cert").await.ok()??.data?.get("root-cert.pem").cloned()
            }
        })
        .await?;
        std::fs::write(&self.root_file, root).context("writing istiod's root")?;
        Ok(())
    }
}
