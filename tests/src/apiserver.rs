//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager at
//! the releases `cargo xtask setup` builds, on free loopback ports with a temporary directory. The
//! API server serves TLS with a certificate the harness issues and authenticates an admin and the
//! controller manager by static tokens; the controller manager runs the controllers a cluster
//! relies on (ServiceAccounts and their tokens, Deployments, ReplicaSets, EndpointSlices, garbage
//! collection), each with its own service-account credentials, as kubeadm sets it up. Every
//! process is killed when the [`ApiServer`] drops.
use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
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

/// A running etcd, kube-apiserver and kube-controller-manager.
pub struct ApiServer {
    // Field order is drop order: the controller manager, then the API server, then its etcd.
    controller_manager: Process,
    apiserver: Process,
    etcd: Process,
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

impl ApiServer {
    /// Starts etcd and the API server and waits until `/readyz` answers ok. Free ports are
    /// picked by binding port 0 and letting go, so a parallel test may take one first: such a
    /// start is retried with fresh ports.
    pub async fn start() -> anyhow::Result<Self> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once().await {
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

    async fn start_once() -> anyhow::Result<Self> {
        crate::require_root();
        let bin = kube_bin()?;
        let dir = tempfile::Builder::new().prefix("weft-apiserver-").tempdir()?;
        let path = dir.path();

        let (etcd_port, peer_port, secure_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--data-dir")
            .arg(path.join("etcd"))
            .args(["--name", "weft", "--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .arg(format!("--initial-cluster=weft={peer_url}"));
        let etcd = Process::start(logged(etcd, &path.join("etcd.log"))?)?;

        let pki = write_pki(path)?;
        let (token, controller_token) = ("weft-admin-token", "weft-controller-manager-token");
        // The controller manager's user is the one RBAC's bootstrap policy binds its role to.
        let tokens = format!(
            "{token},admin,admin,system:masters\n\
             {controller_token},system:kube-controller-manager,system:kube-controller-manager\n"
        );
        std::fs::write(path.join("tokens.csv"), tokens)?;
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            // What the `kubernetes` Service's endpoints name: the API server as the cluster
            // reaches it, at the fabric's gateway (a loopback address is refused for it).
            .arg(format!("--advertise-address={FABRIC_GATEWAY}"))
            .arg(format!("--secure-port={secure_port}"))
            .arg(format!("--cert-dir={}", path.join("certs").display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", pki.serving_key.display()))
            .arg(format!("--token-auth-file={}", path.join("tokens.csv").display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={ISSUER}"))
            .arg(format!("--service-account-key-file={}", pki.sa_public.display()))
            .arg(format!("--service-account-signing-key-file={}", pki.sa_private.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .args(["--allow-privileged=true", "--enable-priority-and-fairness=false", "--profiling=false"]);
        let apiserver = Process::start(logged(apiserver, &path.join("apiserver.log"))?)?;

        let url = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig = path.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url, &pki.ca_cert, token))?;
        let controller_kubeconfig = path.join("controller-manager.kubeconfig");
        std::fs::write(&controller_kubeconfig, kubeconfig_yaml(&url, &pki.ca_cert, controller_token))?;
        let mut controller_manager = Command::new(bin.join("kube-controller-manager"));
        controller_manager
            .arg(format!("--kubeconfig={}", controller_kubeconfig.display()))
            // No HTTPS endpoint: nothing here scrapes it, and it would need a port of its own.
            .args(["--secure-port=0", "--leader-elect=false", "--use-service-account-credentials=true"])
            // Every default controller but node lifecycle: the harness registers nodes without a
            // kubelet renewing their leases, and that controller would declare them lost and mark
            // their pods NotReady after 50 s.
            .arg("--controllers=*,-nodelifecycle")
            .arg(format!("--service-account-private-key-file={}", pki.sa_private.display()))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"));
        let controller_manager =
            Process::start(logged(controller_manager, &path.join("controller-manager.log"))?)?;
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let ca = pki.ca_cert.clone();
        let mut server =
            Self { controller_manager, apiserver, etcd, client, kubeconfig, url, port: secure_port, ca, dir };
        server.wait_ready().await?;
        Ok(server)
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
        let address = SocketAddr::from((FABRIC_GATEWAY, self.port));
        let listener = fabric
            .run(move || std::net::TcpListener::bind(address))?
            .with_context(|| format!("binding {address} in the fabric namespace"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        Ok(Relay(tokio::spawn(async move {
            // Owned here, so aborting the relay ends every connection too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        })))
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

/// The API server's path into a cluster network ([`ApiServer::relay_from`]); stops on drop.
#[derive(Debug)]
pub struct Relay(tokio::task::JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The directory holding `etcd`, `kube-apiserver` and `kube-controller-manager`:
/// `$WEFT_KUBE_BIN`, or where `cargo xtask setup` links them.
fn kube_bin() -> anyhow::Result<PathBuf> {
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

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn logged(mut command: Command, log: &Path) -> anyhow::Result<Command> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    Ok(command)
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

struct Pki {
    ca_cert: PathBuf,
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

    let sa_key = KeyPair::generate()?;
    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        sa_private: dir.join("sa.key"),
        sa_public: dir.join("sa.pub"),
    };
    std::fs::write(&pki.ca_cert, ca_cert.pem())?;
    std::fs::write(&pki.serving_cert, serving_cert.pem())?;
    std::fs::write(&pki.serving_key, serving_key.serialize_pem())?;
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
