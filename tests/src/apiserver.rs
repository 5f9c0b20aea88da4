//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager at
//! the releases `cargo xtask setup` builds, on free loopback ports with a temporary directory (or,
//! for real nodes, inside the cluster's fabric namespace with kube-scheduler too). The
//! API server serves TLS with a certificate the harness issues and authenticates an admin and the
//! controller manager by static tokens; the controller manager runs the controllers a cluster
//! relies on (ServiceAccounts and their tokens, Deployments, ReplicaSets, EndpointSlices, garbage
//! collection), each with its own service-account credentials, as kubeadm sets it up. Every
//! process is killed when the [`ApiServer`] drops.
use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use crate::{netns::NetNs, process::Process, topology::FABRIC_GATEWAY};

/// Service-account token issuer and audience the API server is configured with.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Service (ClusterIP) range the API server allocates from.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's ClusterIP: the first address of [`SERVICE_CIDR`].
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const SCHEDULER_TOKEN: &str = "weft-scheduler-token";
const KUBE_PROXY_TOKEN: &str = "weft-kube-proxy-token";
/// The user of the API server's client certificate for kubelets.
const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// The static token of `node`'s kubelet.
fn node_token(node: &str) -> String {
    format!("weft-node-{node}-token")
}

/// A running etcd, kube-apiserver and kube-controller-manager (and kube-scheduler for real
/// nodes).
pub struct ApiServer {
    // Field order is drop order: the scheduler and controller manager, then the API server,
    // then its etcd.
    scheduler: Option<Process>,
    controller_manager: Process,
    apiserver: Process,
    etcd: Process,
    _relay: Option<Relay>,
    client: kube::Client,
    kubeconfig: PathBuf,
    url: String,
    port: u16,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Where the control plane runs.
#[derive(Debug, Clone)]
enum Place {
    /// On the harness's loopback, on free ports; pods reach it through [`ApiServer::relay_from`].
    Loopback,
    /// Inside the fabric namespace on the standard ports, for real nodes: their kubelets and
    /// pods reach it at [`FABRIC_GATEWAY`], it reaches their kubelets, and the harness reaches it
    /// through a relay on its own loopback.
    Fabric { fabric: NetNs, nodes: Vec<String> },
}

/// The API server's port inside the fabric (real-node mode).
pub const FABRIC_PORT: u16 = 6443;

impl ApiServer {
    /// Starts etcd and the API server and waits until `/readyz` answers ok. Free ports are
    /// picked by binding port 0 and letting go, so a parallel test may take one first: such a
    /// start is retried with fresh ports.
    pub async fn start() -> anyhow::Result<Self> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once(Place::Loopback).await {
                Err(error)
                    if attempt < ATTEMPTS && format!("{error:#}").contains("address already in use") =>
                {
                    eprintln!("apiserver: a port was taken meanwhile; retrying ({error:#})");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// The control plane of a cluster with real kubelets named `nodes`: inside `fabric`, with
    /// the scheduler too, node credentials ([`ApiServer::node_kubeconfig`]), the Node authorizer,
    /// and a client certificate for calling kubelets (logs, exec, port-forward).
    pub async fn start_for_nodes(fabric: &NetNs, nodes: &[String]) -> anyhow::Result<Self> {
        Self::start_once(Place::Fabric { fabric: fabric.clone(), nodes: nodes.to_vec() }).await
    }

    async fn start_once(place: Place) -> anyhow::Result<Self> {
        crate::require_root();
        let bin = kube_bin()?;
        let dir = tempfile::Builder::new().prefix("weft-apiserver-").tempdir()?;
        let path = dir.path();
        let fabric = match &place {
            Place::Loopback => None,
            Place::Fabric { fabric, .. } => Some(fabric),
        };
        let start = |command: Command, log: &str| -> anyhow::Result<Process> {
            let command = logged(command, &path.join(log))?;
            match fabric {
                Some(fabric) => Process::spawn(command, fabric, None),
                None => Process::start(command),
            }
        };

        let (etcd_port, peer_port, secure_port) = match fabric {
            Some(_) => (2379, 2380, FABRIC_PORT),
            None => {
                let [etcd, peer, secure] = crate::ports::free_loopback_ports()?;
                (etcd, peer, secure)
            }
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--data-dir")
            .arg(path.join("etcd"))
            .args(["--name", "weft", "--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .arg(format!("--initial-cluster=weft={peer_url}"));
        let etcd = start(etcd, "etcd.log")?;

        let pki = write_pki(path)?;
        let (token, controller_token) = ("weft-admin-token", "weft-controller-manager-token");
        // Users the RBAC bootstrap policy binds their roles to: the controller manager's and
        // the scheduler's; nodes are authorized by the Node authorizer (group system:nodes),
        // kube-proxy by its bootstrap binding.
        let mut tokens = format!(
            "{token},admin,admin,system:masters\n\
             {controller_token},system:kube-controller-manager,system:kube-controller-manager\n\
             {SCHEDULER_TOKEN},system:kube-scheduler,system:kube-scheduler\n\
             {KUBE_PROXY_TOKEN},system:kube-proxy,system:kube-proxy\n"
        );
        if let Place::Fabric { nodes, .. } = &place {
            for node in nodes {
                tokens
                    .push_str(&format!("{},system:node:{node},node-{node},system:nodes\n", node_token(node)));
            }
        }
        std::fs::write(path.join("tokens.csv"), tokens)?;
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address={}", if fabric.is_some() { "0.0.0.0" } else { "127.0.0.1" }))
            // What the `kubernetes` Service's endpoints name: the API server as the cluster
            // reaches it, at the fabric's gateway (a loopback address is refused for it).
            .arg(format!("--advertise-address={FABRIC_GATEWAY}"))
            .arg(format!("--secure-port={secure_port}"))
            .arg(format!("--cert-dir={}", path.join("certs").display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", pki.serving_key.display()))
            .arg(format!("--token-auth-file={}", path.join("tokens.csv").display()))
            .arg(format!("--service-account-issuer={ISSUER}"))
            .arg(format!("--service-account-key-file={}", pki.sa_public.display()))
            .arg(format!("--service-account-signing-key-file={}", pki.sa_private.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .args(["--allow-privileged=true", "--enable-priority-and-fairness=false", "--profiling=false"]);
        match fabric {
            Some(_) => {
                // Kubelets serve with self-signed certificates, as kubeadm's do by default.
                apiserver
                    .arg("--authorization-mode=Node,RBAC")
                    .arg("--enable-admission-plugins=NodeRestriction")
                    .arg(format!("--kubelet-client-certificate={}", pki.kubelet_client_cert.display()))
                    .arg(format!("--kubelet-client-key={}", pki.kubelet_client_key.display()))
                    .arg("--kubelet-preferred-address-types=InternalIP");
            }
            None => {
                apiserver.arg("--authorization-mode=RBAC");
            }
        }
        let apiserver = start(apiserver, "apiserver.log")?;

        // The harness's own way in: on its loopback, or a relay from there into the fabric.
        let (relay, url) = match fabric {
            Some(fabric) => {
                let (relay, port) =
                    Relay::into_fabric(fabric, SocketAddr::from((Ipv4Addr::LOCALHOST, secure_port)))?;
                (Some(relay), format!("https://127.0.0.1:{port}"))
            }
            None => (None, format!("https://127.0.0.1:{secure_port}")),
        };
        // Processes next to the API server reach it on their own loopback.
        let local_url = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig = path.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url, &pki.ca_cert, token))?;
        let controller_kubeconfig = path.join("controller-manager.kubeconfig");
        std::fs::write(&controller_kubeconfig, kubeconfig_yaml(&local_url, &pki.ca_cert, controller_token))?;
        let mut controller_manager = Command::new(bin.join("kube-controller-manager"));
        controller_manager
            .arg(format!("--kubeconfig={}", controller_kubeconfig.display()))
            // No HTTPS endpoint: nothing here scrapes it, and it would need a port of its own.
            .args(["--secure-port=0", "--leader-elect=false", "--use-service-account-credentials=true"])
            .arg(format!("--service-account-private-key-file={}", pki.sa_private.display()))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"));
        let mut scheduler = None;
        match &place {
            Place::Fabric { .. } => {
                let scheduler_kubeconfig = path.join("scheduler.kubeconfig");
                std::fs::write(
                    &scheduler_kubeconfig,
                    kubeconfig_yaml(&local_url, &pki.ca_cert, SCHEDULER_TOKEN),
                )?;
                let mut command = Command::new(bin.join("kube-scheduler"));
                command
                    .arg(format!("--kubeconfig={}", scheduler_kubeconfig.display()))
                    .args(["--secure-port=0", "--leader-elect=false"]);
                scheduler = Some(start(command, "scheduler.log")?);
            }
            Place::Loopback => {
                // Every default controller but node lifecycle: the harness registers nodes
                // without a kubelet renewing their leases, and that controller would declare
                // them lost and mark their pods NotReady after 50 s.
                controller_manager.arg("--controllers=*,-nodelifecycle");
            }
        }
        let controller_manager = start(controller_manager, "controller-manager.log")?;
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let ca = pki.ca_cert.clone();
        let mut server = Self {
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            _relay: relay,
            client,
            kubeconfig,
            url,
            port: secure_port,
            ca,
            dir,
        };
        server.wait_ready().await?;
        if matches!(place, Place::Fabric { .. }) {
            server.authorize_kubelet_calls().await?;
        }
        Ok(server)
    }

    /// A kubeconfig for the kubelet of `node`, reaching the API server across the fabric.
    pub fn node_kubeconfig(&self, node: &str) -> anyhow::Result<PathBuf> {
        self.fabric_kubeconfig(&format!("node-{node}"), &node_token(node))
    }

    /// A kubeconfig for kube-proxy (user `system:kube-proxy`), across the fabric.
    pub fn kube_proxy_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        self.fabric_kubeconfig("kube-proxy", KUBE_PROXY_TOKEN)
    }

    fn fabric_kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let url = format!("https://{FABRIC_GATEWAY}:{}", self.port);
        std::fs::write(&path, kubeconfig_yaml(&url, &self.ca, token))?;
        Ok(path)
    }

    /// Lets the API server's kubelet client (logs, exec, port-forward) through the kubelets'
    /// webhook authorization, as kubeadm's binding does.
    async fn authorize_kubelet_calls(&self) -> anyhow::Result<()> {
        use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "weft-test:apiserver-kubelet-client"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_USER}],
        }))?;
        kube::Api::<ClusterRoleBinding>::all(self.client())
            .create(&Default::default(), &binding)
            .await
            .context("binding the API server's kubelet client")?;
        Ok(())
    }

    /// An admin client (group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig file for the admin, for processes and `kubectl`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the API server's serving certificate (what a pod's service-account
    /// volume holds as `ca.crt`).
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// Carries connections to the advertised address inside `fabric` (where the `kubernetes`
    /// Service's endpoints point) to the API server on the harness's loopback, so pods reach it
    /// as they would on a real network. Runs until the returned relay drops.
    pub fn relay_from(&self, fabric: &NetNs) -> anyhow::Result<Relay> {
        Relay::from_fabric(fabric, self.port, SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if self.etcd.exited() {
                bail!("etcd exited:\n{}", log_tail(&self.dir.path().join("etcd.log")));
            }
            if self.apiserver.exited() {
                bail!("kube-apiserver exited:\n{}", log_tail(&self.dir.path().join("apiserver.log")));
            }
            if self.scheduler.as_mut().is_some_and(Process::exited) {
                bail!("kube-scheduler exited:\n{}", log_tail(&self.dir.path().join("scheduler.log")));
            }
            if self.controller_manager.exited() {
                bail!(
                    "kube-controller-manager exited:\n{}",
                    log_tail(&self.dir.path().join("controller-manager.log"))
                );
            }
            let request = http::Request::get("/readyz").body(Vec::new())?;
            if matches!(self.client.request_text(request).await.as_deref(), Ok("ok")) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "kube-apiserver not ready after {READY_TIMEOUT:?}:\n{}",
                    log_tail(&self.dir.path().join("apiserver.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A TCP relay between the harness's loopback and a cluster network ([`ApiServer::relay_from`]
/// and the way in to a control plane inside the fabric); stops on drop.
#[derive(Debug)]
pub struct Relay {
    task: tokio::task::JoinHandle<()>,
    /// A runtime of its own, so the relay keeps serving processes the harness waits for (kubectl,
    /// weftctl) while the test's own runtime is blocked.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Relay {
    /// Carries connections to port `port` of the fabric gateway's address inside `fabric` to
    /// `upstream` in the harness's namespace, on the current runtime.
    pub fn from_fabric(fabric: &NetNs, port: u16, upstream: SocketAddr) -> anyhow::Result<Self> {
        let address = SocketAddr::from((FABRIC_GATEWAY, port));
        let listener = fabric
            .run(move || std::net::TcpListener::bind(address))?
            .with_context(|| format!("binding {address} in the fabric namespace"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = tokio::spawn(relay(listener, move || async move {
            tokio::net::TcpStream::connect(upstream).await.ok()
        }));
        Ok(Self { task, runtime: None })
    }

    /// Carries connections to a free port on the harness's loopback to `target` inside
    /// `fabric`; returns the relay and that port.
    fn into_fabric(fabric: &NetNs, target: SocketAddr) -> anyhow::Result<(Self, u16)> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let fabric = fabric.clone();
        let task = runtime.spawn(relay(listener, move || {
            let fabric = fabric.clone();
            async move {
                let connect = move || fabric.run(move || std::net::TcpStream::connect(target));
                let Ok(Ok(Ok(outbound))) = tokio::task::spawn_blocking(connect).await else { return None };
                outbound.set_nonblocking(true).ok()?;
                tokio::net::TcpStream::from_std(outbound).ok()
            }
        }));
        Ok((Self { task, runtime: Some(runtime) }, port))
    }
}

/// Accepts on `listener` until aborted, joining each connection to the one `connect` opens.
async fn relay<Connect, Opened>(listener: tokio::net::TcpListener, connect: Connect)
where
    Connect: Fn() -> Opened,
    Opened: std::future::Future<Output = Option<tokio::net::TcpStream>> + Send + 'static,
{
    // Owned here, so aborting the relay ends every connection too.
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        let opened = connect();
        connections.spawn(async move {
            if let Some(mut outbound) = opened.await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The directory holding etcd and the Kubernetes commands (`kube-apiserver`, `kubelet`,
/// `kubectl`, …): `$WEFT_KUBE_BIN`, or where `cargo xtask setup` links them.
pub fn kube_bin() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("WEFT_KUBE_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = match std::env::var_os("WEFT_CACHE") {
                Some(dir) => PathBuf::from(dir),
                None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/weft"),
            };
            cache.join("kubernetes/bin")
        }
    };
    for binary in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        if !bin.join(binary).exists() {
            bail!(
                "{binary} not found in {}: run `cargo xtask setup` (tests need a real Kubernetes)",
                bin.display()
            );
        }
    }
    Ok(bin)
}

/// `command` with its output (both streams) going to the file `log`.
pub(crate) fn logged(mut command: Command, log: &Path) -> anyhow::Result<Command> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    Ok(command)
}

/// The last lines of the file `log`, for failure reports.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

struct Pki {
    ca_cert: PathBuf,
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_private: PathBuf,
    sa_public: PathBuf,
}

/// A CA, a serving certificate for 127.0.0.1 signed by it, and the service-account signing key.
fn write_pki(dir: &Path) -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "weft-test-apiserver-ca");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let serving_key = KeyPair::generate()?;
    // Every name a client may use: the harness's loopback, and in the cluster the advertised
    // address, the `kubernetes` Service's VIP (the first of the range) and its DNS names.
    let names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"];
    let mut serving = CertificateParams::new(names.map(str::to_owned).to_vec())?;
    for ip in [Ipv4Addr::LOCALHOST, FABRIC_GATEWAY, KUBERNETES_SERVICE_IP] {
        serving.subject_alt_names.push(SanType::IpAddress(ip.into()));
    }
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    // The API server's identity towards kubelets (they trust this CA for client certificates).
    let kubelet_client_key = KeyPair::generate()?;
    let mut kubelet_client = CertificateParams::new(Vec::<String>::new())?;
    kubelet_client.distinguished_name.push(DnType::CommonName, KUBELET_CLIENT_USER);
    let kubelet_client_cert = kubelet_client.signed_by(&kubelet_client_key, &issuer)?;

    let sa_key = KeyPair::generate()?;
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_private: dir.join("sa.key"),
        sa_public: dir.join("sa.pub"),
    };
    std::fs::write(&pki.ca_cert, ca_cert.pem())?;
    std::fs::write(&pki.serving_cert, serving_cert.pem())?;
    std::fs::write(&pki.serving_key, serving_key.serialize_pem())?;
    std::fs::write(&pki.kubelet_client_cert, kubelet_client_cert.pem())?;
    std::fs::write(&pki.kubelet_client_key, kubelet_client_key.serialize_pem())?;
    std::fs::write(&pki.sa_private, sa_key.serialize_pem())?;
    std::fs::write(&pki.sa_public, sa_key.public_key_pem())?;
    Ok(pki)
}

fn kubeconfig_yaml(url: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: weft\n  cluster:\n    server: {url}\n    certificate-authority: {}\n\
         users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: weft\n  context:\n    cluster: weft\n    user: admin\n\
         current-context: weft\n",
        ca.display()
    )
}
