//! Real nodes: on each node of a [`Topology`] (its network namespace, cgroups and pod bridge) a
//! containerd, a kubelet and a kube-proxy of the tested release, against a control plane inside
//! the fabric ([`ApiServer::start_for_nodes`], with the scheduler). Pods are real containers
//! (runc), wired by the CNI plugins (bridge, host-local) to the node's `cni0`, from images
//! assembled here and imported into each node's containerd ([`images`]).
//!
//! What a node needs on this machine, and why:
//! - One containerd per node: its CRI always uses the `k8s.io` namespace, so kubelets sharing
//!   one kill each other's pods as orphans. Each has its own root, state, socket and runc root.
//! - `restrict_oom_score_adj`: root here lacks CAP_SYS_RESOURCE, so the negative OOM scores
//!   runc would set for sandboxes are refused ("can't get final child's PID from pipe").
//! - cgroups are hybrid (v1 controllers, v2 at `/sys/fs/cgroup/unified` with no controllers):
//!   the kubelet runs in v1 mode (`failCgroupV1: false`) with the cgroupfs driver, and each node
//!   gets its own `cgroupRoot`, `/<topology>/<node>`, made beforehand in every v1 hierarchy. runc
//!   puts a container's processes at the same path in v2, so pods land below [`Node::cgroup`],
//!   where Weft's datapath attaches, as on any cgroupfs node.
//! - Node processes join the node's network namespace and its own mount namespace
//!   ([`host::mount_namespace`]: a node's `/var/run/weft`, `/var/lib/cni` and bpffs are its own, as
//!   in kind's node containers), made with `unshare`, not `ip netns exec`, which would remount
//!   `/sys` and hide the cgroup hierarchies.
//!
//! Everything is torn down when the [`RealCluster`] drops: node processes, containers (and with
//! the last of them every mount inside the nodes' namespaces), the v1 cgroups, the namespaces'
//! pins in the cluster's directory, then the control plane and the topology. The empty mount
//! points `/var/run/weft` and `/var/lib/cni` stay on the host. The containers' logs are read as
//! the kubelet writes them ([`pod_logs`]) and inspected as the harness's own processes' are.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod as PodObject};
use kube::Api;

use crate::{
    apiserver::{ApiServer, kube_bin, log_tail, logged},
    cleanup::Guard,
    images::{self, Image},
    process::{self, Process},
    topology::{Node, Topology},
};

mod config;
mod host;
mod pod_logs;
pub mod workloads;

use config::{cni_config, containerd_config, kube_proxy_config_yaml, kubelet_config_yaml};
use host::{make_v1_cgroup, mount_namespace};
pub use host::{remove_cluster_dir, v1_hierarchies};

/// How long a node may take to register and report Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A cluster of real nodes.
pub struct RealCluster {
    nodes: Vec<RealNode>,
    /// `/tmp/<topology>`: the nodes' directories, and what the harness writes for the cluster.
    dir: PathBuf,
    // Unmounts and cgroup removal, after the node processes and containers are gone.
    guard: Guard,
    api: ApiServer,
    /// Its containers' logs, inspected as they are written.
    pod_logs: pod_logs::PodLogs,
    topology: Topology,
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster").field("topology", &self.topology.name()).finish_non_exhaustive()
    }
}

/// One node's own processes; killed on drop (containers are not: see [`RealCluster`]'s drop).
struct RealNode {
    kube_proxy: Process,
    kubelet: Process,
    containerd: Process,
    dir: PathBuf,
}

impl RealCluster {
    /// Builds `nodes` nodes with their processes, imports `images` (and the sandbox image) into
    /// each, and returns once every node is Ready.
    pub async fn start(nodes: usize, images: &[Image]) -> anyhow::Result<Self> {
        let topology = Topology::new(nodes)?;
        let names: Vec<String> = topology.nodes().iter().map(|node| node.name.clone()).collect();
        let api = ApiServer::start_for_nodes(topology.fabric(), &names).await?;
        let dir = std::env::temp_dir().join(topology.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pod_logs = pod_logs::PodLogs::watch(&dir);
        let mut cluster =
            Self { nodes: Vec::new(), dir: dir.clone(), guard: Guard::default(), api, pod_logs, topology };
        let removed = dir.clone();
        cluster.guard.defer(format!("directory {}", dir.display()), move || remove_cluster_dir(&removed));
        let cgroup_root = format!("/{}", cluster.topology.name());
        let v1 = v1_hierarchies();
        let made: Vec<PathBuf> = v1.iter().map(|hierarchy| hierarchy.join(&cgroup_root[1..])).collect();
        cluster.guard.defer("v1 cgroups", move || {
            for dir in made {
                process::remove_cgroup_tree(&dir)?;
            }
            Ok(())
        });
        let mut all_images = vec![images::pause()?, images::coredns()?];
        all_images.extend_from_slice(images);
        for node in cluster.topology.nodes().to_vec() {
            // A node's default gateway, as real nodes have: a host-network process (Weft's
            // agent) dialling a Service address needs a route before kube-proxy's rules
            // rewrite the destination.
            node.netns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &crate::topology::FABRIC_GATEWAY.to_string(),
            ])?;
            let node_cgroup_root = format!("{cgroup_root}/{}", node.name);
            make_v1_cgroup(&v1, &node_cgroup_root)?;
            let started =
                RealNode::start(&cluster.api, &node, &dir.join(&node.name), &node_cgroup_root, &all_images)?;
            cluster.nodes.push(started);
        }
        cluster.wait_ready().await?;
        cluster.start_dns(&dir).await?;
        Ok(cluster)
    }

    /// CoreDNS at the kubelets' `clusterDNS`, ready to answer.
    async fn start_dns(&self, dir: &Path) -> anyhow::Result<()> {
        let manifest = dir.join("coredns.yaml");
        std::fs::write(&manifest, include_str!("coredns.yaml"))?;
        let out =
            self.kubectl()?.arg("apply").arg("-f").arg(&manifest).output().context("running kubectl")?;
        if !out.status.success() {
            bail!("applying CoreDNS: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.wait_for_ready("kube-system", "k8s-app=kube-dns", 1, READY_TIMEOUT).await
    }

    /// Installs Weft as a user does, `kubectl apply -k` of the repository's `manifests/`,
    /// through an overlay that only names the local images ([`images::weft`], imported at
    /// start); returns once the control plane and both DaemonSets are ready on every node.
    pub async fn install_weft(&self) -> anyhow::Result<()> {
        let overlay = self.weft_overlay();
        std::fs::create_dir_all(&overlay)?;
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests").canonicalize()?;
        // kustomize takes a base outside the overlay only by a relative path.
        let up = "../".repeat(overlay.components().count() - 1);
        let base = format!("{up}{}", manifests.strip_prefix("/")?.display());
        let mut kustomization = format!("resources:\n  - {base}\nimages:\n");
        for component in ["agent", "ztunnel", "control", "waypoint"] {
            kustomization.push_str(&format!(
                "  - name: weft/{component}\n    newName: {}/{component}\n    newTag: {}\n",
                images::WEFT_REGISTRY,
                images::WEFT_TAG
            ));
        }
        std::fs::write(overlay.join("kustomization.yaml"), kustomization)?;
        self.kubectl_ok(&["apply", "-k", &overlay.display().to_string()])?;
        let nodes = self.nodes.len();
        for (selector, count) in [
            ("app.kubernetes.io/name=weft-control", 1),
            ("app.kubernetes.io/name=weft-agent", nodes),
            ("app.kubernetes.io/name=weft-ztunnel", nodes),
        ] {
            self.wait_for_ready("weft-system", selector, count, READY_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Removes Weft as a user does, `kubectl delete -k` of what [`RealCluster::install_weft`]
    /// applied; returns once everything it created is gone.
    pub fn uninstall_weft(&self) -> anyhow::Result<()> {
        let overlay = self.weft_overlay().display().to_string();
        self.kubectl_ok(&["delete", "-k", &overlay, "--wait", "--timeout", "120s"]).map(drop)
    }

    /// Where the kustomize overlay over the repository's `manifests/` is written.
    fn weft_overlay(&self) -> PathBuf {
        self.dir.join("weft")
    }

    /// `kubectl ARGS`, its standard output, or an error with its standard error.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl()?.args(args).output().context("running kubectl")?;
        if !out.status.success() {
            bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `weftctl` as a user runs it, from outside the cluster with the admin's kubeconfig: every
    /// endpoint found and reached through the API server.
    pub fn weftctl(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(crate::apps::binary("weftctl")?);
        command.arg("--kubeconfig").arg(self.api.kubeconfig()).stdin(Stdio::null());
        Ok(command)
    }

    /// Waits until `count` pods matching `selector` in `namespace` are Running and Ready.
    pub async fn wait_for_ready(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let pods: Api<PodObject> = Api::namespaced(self.client(), namespace);
        let listing = kube::api::ListParams::default().labels(selector);
        let what = format!("{count} ready pods {selector} in {namespace}");
        let waited = crate::eventually(&what, timeout, || async {
            let ready = pods.list(&listing).await.ok()?.items.iter().filter(|pod| is_ready(pod)).count();
            (ready >= count).then_some(())
        })
        .await;
        if let Err(error) = waited {
            bail!("{error:#}{}{}", self.describe(namespace, selector).await, self.logs_tail());
        }
        Ok(())
    }

    /// The pods matching `selector` in `namespace`: their state and their containers' last log
    /// lines, for failure reports.
    pub async fn describe(&self, namespace: &str, selector: &str) -> String {
        let pods: Api<PodObject> = Api::namespaced(self.client(), namespace);
        let Ok(list) = pods.list(&kube::api::ListParams::default().labels(selector)).await else {
            return String::new();
        };
        let mut text = String::new();
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod.status.clone().unwrap_or_default();
            text.push_str(&format!(
                "\n--- pod {namespace}/{name}: {:?} {:?}",
                status.phase, status.container_statuses
            ));
            let logs = kube::api::LogParams { tail_lines: Some(20), ..Default::default() };
            if let Ok(lines) = pods.logs(&name, &logs).await {
                text.push_str(&format!("\n{lines}"));
            }
        }
        text
    }

    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    pub fn client(&self) -> kube::Client {
        self.api.client()
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// `kubectl` of the tested release, as the cluster's admin.
    pub fn kubectl(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(kube_bin()?.join("kubectl"));
        command.env("KUBECONFIG", self.api.kubeconfig()).stdin(Stdio::null());
        Ok(command)
    }

    /// Waits until pod `name` in `namespace` has `phase` (`Running` means also Ready), and
    /// returns it; fails at once if it reaches `Failed` unexpectedly.
    pub async fn wait_for_pod(
        &self,
        namespace: &str,
        name: &str,
        phase: &str,
        timeout: Duration,
    ) -> anyhow::Result<PodObject> {
        let pods: Api<PodObject> = Api::namespaced(self.client(), namespace);
        let what = format!("pod {namespace}/{name} {phase}");
        let mut last = String::from("not created");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pod) = pods.get_opt(name).await? {
                let status = pod.status.clone().unwrap_or_default();
                let current = status.phase.clone().unwrap_or_default();
                let ready = is_ready(&pod);
                if current == phase && (phase != "Running" || ready) {
                    return Ok(pod);
                }
                if current == "Failed" && phase != "Failed" {
                    bail!("{what}: the pod failed: {:?}", status.container_statuses);
                }
                last = format!("phase {current}, ready {ready}, {:?}", status.container_statuses);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{what}: not within {timeout:?} ({last}){}", self.logs_tail());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until kube-proxy on node `node` sends Service traffic to `endpoint` (`ip:port`):
    /// its rules hold that destination.
    pub async fn wait_for_service_rules(
        &self,
        node: usize,
        endpoint: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let netns = self.topology.nodes().get(node).context("no such node")?.netns.clone();
        let wanted = format!("--to-destination {endpoint}");
        crate::eventually(&format!("kube-proxy on node {node} to program {endpoint}"), timeout, || {
            let netns = netns.clone();
            let wanted = wanted.clone();
            async move {
                let rules = netns.run(|| Command::new("iptables-save").output()).ok()?.ok()?;
                String::from_utf8_lossy(&rules.stdout).contains(&wanted).then_some(())
            }
        })
        .await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let nodes: Api<NodeObject> = Api::all(self.client());
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            for node in &mut self.nodes {
                for (what, process) in [
                    ("containerd", &mut node.containerd),
                    ("kubelet", &mut node.kubelet),
                    ("kube-proxy", &mut node.kube_proxy),
                ] {
                    if process.exited() {
                        let log = node.dir.join(format!("{what}.log"));
                        bail!("{what} of {} exited:\n{}", node.dir.display(), log_tail(&log));
                    }
                }
            }
            let ready = nodes
                .list(&Default::default())
                .await?
                .items
                .iter()
                .filter(|node| {
                    node.status
                        .iter()
                        .flat_map(|status| status.conditions.iter().flatten())
                        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
                })
                .count();
            if ready == self.nodes.len() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{ready} of {} nodes Ready after {READY_TIMEOUT:?}{}",
                    self.nodes.len(),
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of every node's kubelet and containerd logs, for failure reports.
    fn logs_tail(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            for what in ["kubelet", "containerd"] {
                let log = node.dir.join(format!("{what}.log"));
                text.push_str(&format!("\n--- {}:\n{}", log.display(), log_tail(&log)));
            }
        }
        text
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        // The containers' last lines, before they go; the topology, dropped last, reports
        // what was found.
        self.pod_logs.finish();
        // Node processes first, so nothing restarts the containers; then the containers (and
        // their shims), whose mounts the guard then takes down.
        self.nodes.clear();
        for node in self.topology.nodes() {
            for cgroup in [&node.cgroup, &node.system_cgroup] {
                if let Err(error) = process::remove_cgroup_tree(cgroup) {
                    eprintln!("cleanup: {}: {error:#}", cgroup.display());
                }
            }
        }
        self.guard.run();
    }
}

impl RealNode {
    fn start(
        api: &ApiServer,
        node: &Node,
        dir: &Path,
        cgroup_root: &str,
        images: &[Image],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("cni"))?;
        let mount_ns = mount_namespace(dir)?;
        let spawn = |command: Command, log: &str| {
            Process::spawn_in(
                logged(command, &dir.join(log))?,
                &node.netns,
                Some(&node.system_cgroup),
                Some(&mount_ns),
            )
        };
        let socket = dir.join("containerd.sock");
        std::fs::write(dir.join("containerd.toml"), containerd_config(dir, &socket))?;
        std::fs::write(dir.join("cni/10-weft-pods.conflist"), cni_config(node.index))?;
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(dir.join("containerd.toml"));
        let mut containerd = spawn(containerd, "containerd.log")?;
        wait_for_containerd(&mut containerd, &socket, dir)?;
        for image in images {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&image.archive)
                .output()
                .context("running ctr")?;
            if !out.status.success() {
                bail!(
                    "importing {} on {}: {}",
                    image.reference,
                    node.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }

        let kubelet_config = dir.join("kubelet.yaml");
        std::fs::write(&kubelet_config, kubelet_config_yaml(api, node, dir, &socket, cgroup_root))?;
        let mut kubelet = Command::new(kube_bin()?.join("kubelet"));
        kubelet
            .arg(format!("--config={}", kubelet_config.display()))
            .arg(format!("--kubeconfig={}", api.node_kubeconfig(&node.name)?.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--hostname-override={}", node.name))
            .arg(format!("--node-ip={},{}", node.ipv4, node.ipv6));
        let kubelet = spawn(kubelet, "kubelet.log")?;

        let proxy_config = dir.join("kube-proxy.yaml");
        std::fs::write(&proxy_config, kube_proxy_config_yaml(api, node)?)?;
        let mut kube_proxy = Command::new(kube_bin()?.join("kube-proxy"));
        kube_proxy.arg(format!("--config={}", proxy_config.display()));
        let kube_proxy = spawn(kube_proxy, "kube-proxy.log")?;
        Ok(Self { kube_proxy, kubelet, containerd, dir: dir.to_owned() })
    }
}

fn wait_for_containerd(containerd: &mut Process, socket: &Path, dir: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if containerd.exited() {
            bail!("containerd exited:\n{}", log_tail(&dir.join("containerd.log")));
        }
        let answered = Command::new("ctr").arg("--address").arg(socket).arg("version").output();
        if answered.is_ok_and(|out| out.status.success()) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "containerd not answering on {}:\n{}",
                socket.display(),
                log_tail(&dir.join("containerd.log"))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_ready(pod: &PodObject) -> bool {
    pod.status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}
