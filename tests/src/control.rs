//! The control plane on the harness: `weft-control` in the harness's own network namespace (so
//! it reaches the API server on loopback), serving its CA on the fabric bridge's address
//! (socket activation: the listening socket is made inside the fabric namespace and passed in),
//! where every node's ztunnel can reach it, after installing Weft's CRDs from `manifests/`. Also
//! the node proxies' identities: a ztunnel Pod object per node and a token bound to it, as a
//! kubelet would project it, and the trust bundle's file kept current as a kubelet keeps a
//! ConfigMap volume (a stand-in: this harness runs no kubelet).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context;
use k8s_openapi::{
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{ConfigMap, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    serde::Deserialize,
};
use kube::{Api, api::PostParams};

use crate::{
    apps,
    cluster::Cluster,
    kubelet::PodTemplate,
    process::Process,
    topology::{FABRIC_GATEWAY, Node},
};

pub const NAMESPACE: &str = "weft-system";
pub const PROXY_SERVICE_ACCOUNT: &str = "weft-ztunnel";
pub const CA_PORT: u16 = 15012;
/// The token audience the CA accepts.
pub const AUDIENCE: &str = "istio-ca";

/// Creates the CRDs of `manifests/crds.yaml` (the deployed file itself) unless they exist, and
/// waits until the API server serves them.
pub async fn install_crds(client: kube::Client) -> anyhow::Result<()> {
    install_crds_from(client, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds.yaml")).await
}

/// Creates every CRD of the YAML file `path` unless it exists, and waits until the API server
/// serves them.
pub async fn install_crds_from(client: kube::Client, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for document in serde_yaml::Deserializer::from_str(&text) {
        let crd = CustomResourceDefinition::deserialize(document)
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.metadata.name.clone().context("a CRD without a name")?;
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error).with_context(|| format!("creating CRD {name}")),
        }
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} not established within 30 s"))??;
    }
    Ok(())
}

/// Creates the Gateway API's experimental-channel CRDs (from `cargo xtask setup`) unless they exist, and
/// waits until they are served. Before the control plane starts: it looks for them once.
pub async fn install_gateway_api_crds(client: kube::Client) -> anyhow::Result<()> {
    install_crds_from(client, &crate::apiserver::kube_bin()?.join("gateway-api-crds.yaml")).await
}

/// A running `weft-control`.
#[derive(Debug)]
pub struct ControlPlane {
    process: Process,
    /// `/metrics` and `/healthz/ready` (on the harness's loopback).
    monitoring: SocketAddr,
    /// The same and `/config_dump` (on the harness's loopback).
    admin: SocketAddr,
    listener: std::net::TcpListener,
    dir: tempfile::TempDir,
    root_file: PathBuf,
    /// Rewrites `root_file` whenever the published bundle changes; stops on drop.
    root_volume: Option<RootVolume>,
    kubeconfig: PathBuf,
    /// Added to `weft-control`'s command line, at every start.
    flags: Vec<String>,
}

/// The task keeping the root file current.
#[derive(Debug)]
struct RootVolume(tokio::task::JoinHandle<()>);

impl Drop for RootVolume {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ControlPlane {
    /// Starts the control plane for `cluster` and waits until it has published the mesh root.
    pub async fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        Self::start_with(cluster, &[]).await
    }

    /// [`ControlPlane::start`] with `flags` added to `weft-control`'s command line.
    pub async fn start_with(cluster: &Cluster, flags: &[&str]) -> anyhow::Result<Self> {
        let client = cluster.client();
        install_crds(client.clone()).await?;
        cluster.kubelet().ensure_namespace(NAMESPACE, &[]).await?;
        cluster.kubelet().ensure_service_account(NAMESPACE, PROXY_SERVICE_ACCOUNT).await?;
        let address = SocketAddr::from((FABRIC_GATEWAY, CA_PORT));
        let listener = cluster
            .topology()
            .fabric()
            .run(move || std::net::TcpListener::bind(address))?
            .with_context(|| format!("binding {address} in the fabric namespace"))?;
        let dir = tempfile::Builder::new().prefix("weft-control-").tempdir()?;
        let flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
        let (process, monitoring, admin) = spawn(cluster.api().kubeconfig(), &listener, &flags)?;
        let mut plane = Self {
            process,
            monitoring,
            admin,
            listener,
            root_file: dir.path().join("root-cert.pem"),
            root_volume: None,
            kubeconfig: cluster.api().kubeconfig().to_owned(),
            flags,
            dir,
        };
        plane.write_root(client.clone()).await?;
        plane.root_volume = Some(RootVolume(tokio::spawn(follow_root(client, plane.root_file.clone()))));
        Ok(plane)
    }

    /// Kills the control plane and starts it again on the same socket.
    pub async fn restart(&mut self, client: kube::Client) -> anyhow::Result<()> {
        self.process.kill()?;
        (self.process, self.monitoring, self.admin) = spawn(&self.kubeconfig, &self.listener, &self.flags)?;
        self.write_root(client).await
    }

    /// `https://172.18.0.1:15012`, the CA as node proxies reach it.
    pub fn address(&self) -> String {
        format!("https://{FABRIC_GATEWAY}:{CA_PORT}")
    }

    /// The monitoring endpoint, `http://127.0.0.1:PORT` in the harness's namespace.
    pub fn monitoring(&self) -> SocketAddr {
        self.monitoring
    }

    /// The admin endpoint (`/config_dump` too), `http://127.0.0.1:PORT` in the harness's namespace.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The mesh root, as published by the control plane.
    pub fn root_file(&self) -> &Path {
        &self.root_file
    }

    /// Creates node `node`'s ztunnel Pod object and returns a file holding a token for it:
    /// service account `weft-ztunnel`, audience `istio-ca`, bound to that pod.
    pub async fn proxy_token(&self, cluster: &Cluster, node: &Node) -> anyhow::Result<PathBuf> {
        let account = (NAMESPACE, PROXY_SERVICE_ACCOUNT);
        node_proxy_token(cluster, node, account, self.dir.path()).await
    }

    /// The control plane's log.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    async fn write_root(&mut self, client: kube::Client) -> anyhow::Result<()> {
        let config_maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
        let root =
            crate::eventually("the control plane to publish its root", Duration::from_secs(30), || {
                let config_maps = config_maps.clone();
                async move {
                    let config_map = config_maps.get_opt("weft-ca-root-cert").await.ok()??;
                    config_map.data?.get("root-cert.pem").cloned()
                }
            })
            .await?;
        std::fs::write(&self.root_file, root)?;
        Ok(())
    }
}

/// Writes the published trust bundle to `file` whenever it changes, replacing the file whole
/// (as the kubelet swaps a ConfigMap volume's contents), until aborted.
async fn follow_root(client: kube::Client, file: PathBuf) {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let config_maps: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
    let only_root = kube::runtime::watcher::Config::default().fields("metadata.name=weft-ca-root-cert");
    // Backing off is what yields once the API server is gone: a watcher that retries at once
    // fails at once, and a task looping on that never yields — its abort is never seen and a
    // test's runtime never finishes dropping (the hang of issue 21).
    let watch = kube::runtime::watcher(config_maps, only_root).default_backoff();
    let mut events = std::pin::pin!(watch.applied_objects());
    while let Some(event) = events.next().await {
        let Some(bundle) = event.ok().and_then(|map| map.data?.get("root-cert.pem").cloned()) else {
            continue;
        };
        let staged = file.with_extension("new");
        if std::fs::write(&staged, bundle).and_then(|()| std::fs::rename(&staged, &file)).is_err() {
            return;
        }
    }
}

fn spawn(
    kubeconfig: &Path,
    listener: &std::net::TcpListener,
    flags: &[String],
) -> anyhow::Result<(Process, SocketAddr, SocketAddr)> {
    let mut command = Command::new(apps::binary("weft-control")?);
    command.arg("--kubeconfig").arg(kubeconfig).arg("--serving-name").arg(FABRIC_GATEWAY.to_string());
    command.args(flags);
    // Tests run side by side in the harness's namespace: any free port (the log names it).
    command.arg("--monitoring-listen").arg("127.0.0.1:0").arg("--admin-listen").arg("127.0.0.1:0");
    let reader = crate::process::merged_output(&mut command)?;
    let mut process = Process::start_with_listener(command, listener)?;
    process.read_lines_from(reader);
    let monitoring = process.logged_address("serving metrics", Duration::from_secs(30))?;
    let admin = process.logged_address("serving config_dump", Duration::from_secs(30))?;
    Ok((process, monitoring, admin))
}

/// Creates node `node`'s proxy Pod object, `ztunnel-<node>` running as service account
/// `account` (namespace, name), and returns a file in `dir` holding a token for it, audience
/// `istio-ca`, bound to that pod (as the kubelet projects it).
pub async fn node_proxy_token(
    cluster: &Cluster,
    node: &Node,
    account: (&str, &str),
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let (namespace, service_account) = account;
    let name = format!("ztunnel-{}", node.name);
    let template = PodTemplate::new(namespace, &name).service_account(service_account);
    let pod = cluster.kubelet().create_pod(&template, &node.name).await?;
    cluster.kubelet().mark_running(namespace, &name, &[node.ipv4.into()]).await?;
    let uid = pod.metadata.uid.as_deref();
    let token = request_token_for(cluster.client(), account, &name, uid, AUDIENCE).await?;
    let file = dir.join(format!("{name}.token"));
    std::fs::write(&file, token)?;
    Ok(file)
}

/// A service-account token from the TokenRequest API, for `weft-ztunnel`, with `audience`,
/// bound to pod `pod` when given.
pub async fn request_token(
    client: kube::Client,
    pod: &str,
    uid: Option<&str>,
    audience: &str,
) -> anyhow::Result<String> {
    request_token_for(client, (NAMESPACE, PROXY_SERVICE_ACCOUNT), pod, uid, audience).await
}

/// A token of service account `account` (namespace, name) with `audience`, bound to pod `pod`
/// of its namespace when given.
pub async fn request_token_for(
    client: kube::Client,
    account: (&str, &str),
    pod: &str,
    uid: Option<&str>,
    audience: &str,
) -> anyhow::Result<String> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            bound_object_ref: (!pod.is_empty()).then(|| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.to_owned()),
                uid: uid.map(str::to_owned),
            }),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client, account.0);
    let issued: TokenRequest =
        accounts.create_subresource("token", account.1, &PostParams::default(), &request).await?;
    issued.status.and_then(|status| status.token).context("TokenRequest answered without a token")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose every request fails without waiting for anything — as one does at a
    /// test's end, once the runtime its buffer ran on is going — must not keep the task that
    /// follows the root from seeing its abort (it kept a test's runtime from ever finishing;
    /// without the backoff this test hangs the same way, and nextest ends it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn following_the_root_ends_when_aborted_while_every_request_fails_at_once() {
        let unreachable = tower::service_fn(|_: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::other("the API server is gone"))
        });
        let client = std::thread::spawn(move || {
            let gone = tokio::runtime::Builder::new_current_thread().build().unwrap();
            gone.block_on(async { kube::Client::new(unreachable, "default") })
        })
        .join()
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (started, following) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = started.send(());
            // Entered in the same poll as the send: from here on only the task's own awaits
            // can yield.
            follow_root(client, dir.path().join("root.pem")).await;
        });
        following.await.unwrap();
        task.abort();
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(ended.is_ok(), "the task never yielded to its abort");
    }
}
