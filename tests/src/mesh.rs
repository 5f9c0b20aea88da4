//! The mesh on the harness topology, as it will run on nodes: per node a `weft-agent` (capture,
//! pod handoff; in the harness's namespace, where the API server is) and a `weft-ztunnel` (in
//! the node's netns, in the node proxy cgroup), sharing the handoff socket. With the control
//! plane ([`Ca::Control`]) proxies get certificates from its CA and workloads over its xDS;
//! tests without an API server use ztunnel's development CA and a local workloads file made
//! from the members ([`Ca::Development`]). Agents enroll pods from the Kubernetes API or,
//! statically, from a per-node pods file.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::Context;
use serde_json::json;

use crate::{
    apps,
    cluster::Cluster,
    control::ControlPlane,
    invariants::ProxyBaseline,
    istiod::Istiod,
    process::{Process, merged_output},
    topology::{Node, Pod, Topology},
};

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A pod enrolled in the mesh, with its Kubernetes identity.
#[derive(Debug, Clone)]
pub struct Member {
    pub pod: Pod,
    pub namespace: String,
    pub service_account: String,
    /// The name the development configuration gives its workload, if not the pod's.
    pub workload_name: Option<String>,
}

impl Member {
    pub fn new(pod: &Pod, namespace: &str, service_account: &str) -> Self {
        Self {
            pod: pod.clone(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            workload_name: None,
        }
    }

    /// The development configuration names its workload `name`: its address is another
    /// pod's there (a configuration behind a replaced pod), so nothing is allowed to it.
    pub fn configured_as(self, name: &str) -> Self {
        Self { workload_name: Some(name.to_owned()), ..self }
    }

    pub fn identity(&self) -> String {
        format!("spiffe://cluster.local/ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// Where the node proxies get their certificates and workloads.
#[derive(Debug)]
pub enum Ca<'a> {
    /// A development root and a workloads file the harness writes (no API server needed).
    Development,
    /// The control plane's CA and xDS, with each node's proxy token (index = node).
    Control { plane: &'a ControlPlane, tokens: Vec<PathBuf> },
    /// Istio's control plane: its CA and xDS, each node's proxy token (index = node) and its
    /// pod's name told as the downward API would (istiod checks a proxy's claimed namespace
    /// against its token); agents go by Istio's labels.
    Istiod { istiod: &'a Istiod, tokens: Vec<PathBuf> },
}

/// How agents learn which pods to enroll.
#[derive(Debug, Clone)]
pub enum Enrollment {
    /// Every member, from a per-node pods file.
    Static,
    /// From the Kubernetes API (namespace and pod labels), with this kubeconfig.
    Kubernetes(PathBuf),
}

/// The running mesh: agents and ztunnels for every node. Dropping it kills them (capture stays
/// pinned until the topology goes).
#[derive(Debug)]
pub struct Mesh {
    /// Per node: (agent, ztunnel).
    processes: Vec<(Process, Process)>,
    /// Per node: the agent's endpoints (Kubernetes enrollment only).
    endpoints: Vec<Option<AgentEndpoints>>,
    /// Per node: how to start them again.
    setups: Vec<Setup>,
    _dir: tempfile::TempDir,
}

/// The arguments a node's agent and ztunnel were started with.
#[derive(Debug, Clone)]
struct Setup {
    node: Node,
    source: Vec<String>,
    socket: PathBuf,
    /// Where certificates and workloads come from, and any other ztunnel flags.
    control_flags: Vec<String>,
}

impl Mesh {
    /// Starts the mesh on every node of `topology`, enrolling `members`, with certificates from
    /// the development CA.
    pub fn start(topology: &Topology, members: &[Member]) -> anyhow::Result<Self> {
        Self::start_with(topology, members, &Ca::Development, &Enrollment::Static)
    }

    /// Starts the mesh with certificates (and workloads) from `ca`. `members` are the pods
    /// enrolled with [`Enrollment::Static`] and the workloads of [`Ca::Development`].
    pub fn start_with(
        topology: &Topology,
        members: &[Member],
        ca: &Ca<'_>,
        enrollment: &Enrollment,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weft-mesh-").tempdir()?;
        let ca_dir = dir.path().join("ca");
        if matches!(ca, Ca::Development) {
            std::fs::create_dir_all(&ca_dir)?;
            weft_proxy::identity::ca::write_dev_root(&ca_dir)?;
        }
        let workloads: Vec<_> = members
            .iter()
            .map(|member| {
                json!({
                    "uid": member.pod.uid,
                    "name": member.workload_name.as_ref().unwrap_or(&member.pod.name),
                    "namespace": member.namespace,
                    "service_account": member.service_account,
                    "addresses": member.pod.addresses(),
                    "node": topology.nodes()[member.pod.node].name,
                })
            })
            .collect();
        let local_config = dir.path().join("workloads.json");
        std::fs::write(&local_config, json!({ "workloads": workloads }).to_string())?;

        let (mut processes, mut setups, mut endpoints) = (Vec::new(), Vec::new(), Vec::new());
        for node in topology.nodes() {
            let pods: Vec<_> = members
                .iter()
                .filter(|member| member.pod.node == node.index)
                .map(|member| {
                    json!({
                        "uid": member.pod.uid,
                        "name": member.pod.name,
                        "namespace": member.namespace,
                        "service_account": member.service_account,
                        "netns": member.pod.netns.path(),
                        "ips": member.pod.addresses(),
                    })
                })
                .collect();
            let node_dir = dir.path().join(&node.name);
            std::fs::create_dir_all(&node_dir)?;
            let pods_file = node_dir.join("pods.json");
            std::fs::write(&pods_file, json!({ "pods": pods }).to_string())?;
            let socket = node_dir.join("zds.sock");
            let mut source = match enrollment {
                Enrollment::Static => vec!["static".into(), "--pods".into(), pods_file.display().to_string()],
                Enrollment::Kubernetes(kubeconfig) => vec![
                    "run".into(),
                    "--node".into(),
                    node.name.clone(),
                    // As the manifests name it: its pod need not exist, its namespace does.
                    "--pod".into(),
                    format!("weft-system/weft-agent-{}", node.name),
                    "--kubeconfig".into(),
                    kubeconfig.display().to_string(),
                    // Agents share the harness's namespace: any free ports (the log names them).
                    "--monitoring-listen".into(),
                    "127.0.0.1:0".into(),
                    "--admin-listen".into(),
                    "127.0.0.1:0".into(),
                ],
            };
            if matches!(ca, Ca::Istiod { .. }) && matches!(enrollment, Enrollment::Kubernetes(_)) {
                source.extend(["--labels".into(), "istio".into()]);
            }
            let mut agent = start_agent(node, &source, &socket)?;
            endpoints.push(agent_endpoints(&mut agent, &source)?);
            let control_flags = match ca {
                Ca::Development => vec![
                    "--dev-ca-dir".into(),
                    ca_dir.display().to_string(),
                    "--local-config".into(),
                    local_config.display().to_string(),
                ],
                Ca::Control { plane, tokens } => vec![
                    "--ca-address".into(),
                    plane.address(),
                    "--xds-address".into(),
                    plane.address(),
                    "--ca-root-file".into(),
                    plane.root_file().display().to_string(),
                    "--token-file".into(),
                    tokens.get(node.index).context("no proxy token for this node")?.display().to_string(),
                ],
                Ca::Istiod { istiod, tokens } => vec![
                    "--ca-address".into(),
                    istiod.address(),
                    "--xds-address".into(),
                    istiod.address(),
                    "--ca-root-file".into(),
                    istiod.root_file().display().to_string(),
                    "--token-file".into(),
                    tokens.get(node.index).context("no proxy token for this node")?.display().to_string(),
                    "--pod-name".into(),
                    format!("ztunnel-{}", node.name),
                    "--pod-namespace".into(),
                    crate::istiod::NAMESPACE.into(),
                    "--node-name".into(),
                    node.name.clone(),
                    "--instance-ip".into(),
                    node.ipv4.to_string(),
                ],
            };
            let ztunnel = start_ztunnel(node, &socket, &control_flags)?;
            agent.wait_for_line("ready", READY_TIMEOUT).with_context(|| format!("mesh on {}", node.name))?;
            processes.push((agent, ztunnel));
            setups.push(Setup { node: node.clone(), source, socket, control_flags });
        }
        Ok(Self { processes, endpoints, setups, _dir: dir })
    }

    /// The mesh as it runs in a cluster: every node's agent enrolls from the API server's
    /// labels, every proxy takes certificates and configuration from `plane`. Call it on a
    /// multi-threaded runtime (it waits for the nodes in place).
    pub async fn start_managed(cluster: &Cluster, plane: &ControlPlane) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for node in cluster.topology().nodes() {
            tokens.push(plane.proxy_token(cluster, node).await?);
        }
        let ca = Ca::Control { plane, tokens };
        let enrollment = Enrollment::Kubernetes(cluster.api().kubeconfig().to_owned());
        tokio::task::block_in_place(|| {
            let mesh = Self::start_with(cluster.topology(), &[], &ca, &enrollment)?;
            mesh.wait_until_tunnelled(READY_TIMEOUT)?;
            Ok(mesh)
        })
    }

    /// The mesh's node side under istiod: every node's agent enrolls by Istio's labels, every
    /// proxy takes certificates and configuration from `istiod`; returns once every proxy
    /// tunnels to each of `enrolled`. Call it on a multi-threaded runtime.
    pub async fn start_under_istiod(
        cluster: &Cluster,
        istiod: &Istiod,
        enrolled: &[&Pod],
    ) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for node in cluster.topology().nodes() {
            tokens.push(istiod.proxy_token(cluster, node).await?);
        }
        let ca = Ca::Istiod { istiod, tokens };
        let enrollment = Enrollment::Kubernetes(cluster.api().kubeconfig().to_owned());
        tokio::task::block_in_place(|| {
            let mesh = Self::start_with(cluster.topology(), &[], &ca, &enrollment)?;
            mesh.wait_until_tunnelled_to(enrolled, READY_TIMEOUT)?;
            Ok(mesh)
        })
    }

    /// Waits until every node's proxy knows each of `pods` as a workload it tunnels to (by
    /// address: whatever names the control plane gives workloads). Blocking.
    pub fn wait_until_tunnelled_to(&self, pods: &[&Pod], timeout: Duration) -> anyhow::Result<()> {
        until_tunnelled(timeout, || {
            let mut untunnelled = Vec::new();
            for setup in &self.setups {
                let workloads = proxy_workloads(&setup.node)?;
                for pod in pods.iter().filter(|pod| !tunnels_to(&workloads, pod)) {
                    untunnelled.push(format!("{} on {}", pod.name, setup.node.name));
                }
            }
            Ok(untunnelled)
        })
    }

    /// Waits until every node's proxy tunnels to every pod an agent reports enrolled: each agent
    /// annotates the pods it captured and the control plane then serves them as HBONE, so
    /// until then peers still reach them in plaintext. Agents with Kubernetes enrollment only.
    /// Blocking: call it outside the runtime's threads (`block_in_place`).
    pub fn wait_until_tunnelled(&self, timeout: Duration) -> anyhow::Result<()> {
        until_tunnelled(timeout, || {
            let mut enrolled = Vec::new();
            for node in 0..self.setups.len() {
                let dump = apps::json_body(&self.agent_get(node, "/config_dump")?);
                let pods = dump["pods"].as_object().cloned().unwrap_or_default();
                enrolled.extend(
                    pods.into_iter().filter(|(_, pod)| pod["state"] == "enrolled").map(|(uid, _)| uid),
                );
            }
            let mut untunnelled = Vec::new();
            for setup in &self.setups {
                let workloads = proxy_workloads(&setup.node)?;
                let hbone = |uid: &String| {
                    workloads
                        .iter()
                        .any(|workload| workload["uid"] == uid.as_str() && workload["protocol"] == "HBONE")
                };
                untunnelled.extend(
                    enrolled
                        .iter()
                        .filter(|uid| !hbone(uid))
                        .map(|uid| format!("{uid} on {}", setup.node.name)),
                );
            }
            Ok(untunnelled)
        })
    }

    /// `weftctl` flags that reach this mesh: the API server, the control plane's and agents'
    /// endpoints, and each proxy's node-local admin port inside its node's namespace.
    pub fn weftctl_flags(&self, cluster: &Cluster, plane: &ControlPlane) -> anyhow::Result<Vec<String>> {
        let mut flags = vec![
            "--kubeconfig".to_owned(),
            cluster.api().kubeconfig().display().to_string(),
            "--control".to_owned(),
            format!("http://{}", plane.admin()),
        ];
        for node in cluster.topology().nodes() {
            let agent = self.agent_endpoints(node.index).context("agents with Kubernetes enrollment")?;
            flags.extend(["--agent".to_owned(), format!("{}=http://{}", node.name, agent.admin)]);
            let admin = format!("{}=netns={}@http://127.0.0.1:15000", node.name, node.netns.path().display());
            flags.extend(["--ztunnel".to_owned(), admin]);
        }
        Ok(flags)
    }

    /// Kills node `node`'s agent (SIGKILL): capture stays pinned, ztunnel keeps its pods.
    pub fn kill_agent(&mut self, node: usize) -> anyhow::Result<()> {
        self.processes[node].0.kill()
    }

    /// Starts node `node`'s agent again and waits until it delivered its snapshot to ztunnel.
    pub fn start_agent(&mut self, node: usize) -> anyhow::Result<()> {
        let setup = &self.setups[node];
        let mut agent = start_agent(&setup.node, &setup.source, &setup.socket)?;
        self.endpoints[node] = agent_endpoints(&mut agent, &setup.source)?;
        agent.wait_for_line("ready", READY_TIMEOUT).context("restarted agent")?;
        self.processes[node].0 = agent;
        Ok(())
    }

    /// Kills node `node`'s ztunnel (SIGKILL).
    pub fn kill_ztunnel(&mut self, node: usize) -> anyhow::Result<()> {
        self.processes[node].1.kill()
    }

    /// Starts node `node`'s ztunnel again (it reconnects to the agent and gets the snapshot).
    pub fn start_ztunnel(&mut self, node: usize) -> anyhow::Result<()> {
        let setup = &self.setups[node];
        self.processes[node].1 = start_ztunnel(&setup.node, &setup.socket, &setup.control_flags)?;
        Ok(())
    }

    /// Replaces node `node`'s ztunnel with the process `start` begins, given the node and its
    /// agent's ZDS socket: another node proxy, such as Istio's to measure beside
    /// ([`crate::istio_ztunnel`]). A later restart starts Weft's again.
    pub fn replace_ztunnel(
        &mut self,
        node: usize,
        start: impl FnOnce(&Node, &std::path::Path) -> anyhow::Result<Process>,
    ) -> anyhow::Result<()> {
        self.kill_ztunnel(node)?;
        let setup = &self.setups[node];
        self.processes[node].1 = start(&setup.node, &setup.socket)?;
        Ok(())
    }

    /// Restarts node `node`'s ztunnel as an operator's restart does: SIGTERM (it drains: open
    /// connections finish, new ones are refused), then, once it says it drained (or after
    /// `timeout`, when it is killed), a new one, which gets the node's pods from the agent;
    /// returns once it serves `pods` pods. A drain that overran fails the call, but only after
    /// the new proxy runs: the node is never left without one.
    pub fn restart_ztunnel(&mut self, node: usize, pods: usize, timeout: Duration) -> anyhow::Result<()> {
        self.ztunnel(node).terminate()?;
        let ended =
            |line: &str| line.contains("drained: every connection ended") || line.contains("drain deadline");
        let drained = self.ztunnel(node).wait_for(ended, timeout).map(drop).context("the old proxy's drain");
        // Reaped before the new one starts (killed if it is still draining).
        self.kill_ztunnel(node)?;
        self.start_ztunnel_serving(node, pods, timeout)?;
        drained
    }

    /// Starts node `node`'s ztunnel and waits, at most `timeout` each, until it serves `pods`
    /// pods.
    fn start_ztunnel_serving(&mut self, node: usize, pods: usize, timeout: Duration) -> anyhow::Result<()> {
        self.start_ztunnel(node)?;
        for _ in 0..pods {
            self.ztunnel(node).wait_for(|line| line.contains("pod proxy started"), timeout)?;
        }
        Ok(())
    }

    /// Restarts node `node`'s ztunnel with `flags` added to its command line (and to every later
    /// start), and waits until it serves `pods` pods again.
    pub fn restart_ztunnel_with(&mut self, node: usize, flags: &[&str], pods: usize) -> anyhow::Result<()> {
        self.kill_ztunnel(node)?;
        self.setups[node].control_flags.extend(flags.iter().map(|flag| flag.to_string()));
        self.start_ztunnel_serving(node, pods, READY_TIMEOUT)
    }

    /// The agent of node `node`, e.g. to read its log.
    pub fn agent(&mut self, node: usize) -> &mut Process {
        &mut self.processes[node].0
    }

    /// Node `node`'s agent endpoints (Kubernetes enrollment only).
    pub fn agent_endpoints(&self, node: usize) -> Option<AgentEndpoints> {
        self.endpoints[node]
    }

    /// A GET of `path` on node `node`'s agent admin endpoint (`/metrics`, `/config_dump`, …).
    pub fn agent_get(&self, node: usize, path: &str) -> anyhow::Result<String> {
        let endpoints = self.endpoints[node].context("this agent serves no endpoints (static enrollment)")?;
        apps::http_get_at(endpoints.admin, path)
    }

    /// The ztunnel of node `node`, e.g. to read its log.
    pub fn ztunnel(&mut self, node: usize) -> &mut Process {
        &mut self.processes[node].1
    }

    /// What node `node`'s ztunnel holds once no stream is, to come back to after a fault
    /// ([`crate::invariants`]); taken anew after a restart.
    pub fn ztunnel_baseline(&self, node: usize, timeout: Duration) -> anyhow::Result<ProxyBaseline> {
        ProxyBaseline::take(self.processes[node].1.pid(), &self.setups[node].node.netns, timeout)
    }
}

/// Polls `untunnelled` (what proxies still reach in plaintext) until it is empty; fails after
/// `timeout`, naming what is left. Blocking.
fn until_tunnelled(
    timeout: Duration,
    mut untunnelled: impl FnMut() -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = untunnelled()?;
        if left.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "proxies still reach these in plaintext after {timeout:?}: {}",
            left.join(", ")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a proxy holding `workloads` (its `config_dump`'s) tunnels to `pod`: knows it, by its
/// address, as an HBONE workload.
pub fn tunnels_to(workloads: &[serde_json::Value], pod: &Pod) -> bool {
    let address = serde_json::Value::from(pod.ipv4.to_string());
    workloads.iter().any(|workload| {
        workload["protocol"] == "HBONE"
            && workload["addresses"].as_array().is_some_and(|list| list.contains(&address))
    })
}

/// Every workload node `node`'s proxy holds, as its `config_dump` lists them.
pub fn proxy_workloads(node: &Node) -> anyhow::Result<Vec<serde_json::Value>> {
    workloads_known_in(&node.netns)
}

/// Every workload the proxy whose admin port is in `netns` (a node's, or a waypoint's pod's)
/// holds, as its `config_dump` lists them.
fn workloads_known_in(netns: &crate::netns::NetNs) -> anyhow::Result<Vec<serde_json::Value>> {
    let dump = apps::json_body(&apps::http_get(netns, 15000, "/config_dump")?);
    Ok(dump["mesh"]["workloads"].as_array().cloned().unwrap_or_default())
}

/// Waits until the proxy whose admin port is in `netns` (a node's, or a waypoint's pod's)
/// knows `count` endpoints of the Service with key `namespace/hostname` (workloads that list
/// it in its `config_dump`), at most `timeout`. Blocking: call it outside the runtime's
/// threads (`block_in_place`).
pub fn wait_for_endpoints(
    netns: &crate::netns::NetNs,
    service: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let workloads = workloads_known_in(netns)?;
        let known = workloads.iter().filter(|workload| workload["services"].get(service).is_some()).count();
        if known >= count {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let served: Vec<String> = workloads
                .iter()
                .map(|workload| format!("{} serves {}", workload["uid"], workload["services"]))
                .collect();
            anyhow::bail!(
                "the proxy in {} knows {known} of {count} endpoints of {service} after {timeout:?}: {}",
                netns.name(),
                served.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_agent(node: &Node, source: &[String], socket: &std::path::Path) -> anyhow::Result<Process> {
    let (subcommand, flags) = source.split_first().context("an agent source names its subcommand")?;
    let mut command = apps::agent_command(node, subcommand)?;
    command.args(flags).arg("--zds-socket").arg(socket);
    apps::start_agent(command)
}

/// Where an agent with Kubernetes enrollment serves: the cluster-reachable monitoring port
/// (`/metrics`, `/healthz/ready`) and the node-local admin port (those and `/config_dump`).
#[derive(Debug, Clone, Copy)]
pub struct AgentEndpoints {
    pub monitoring: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

/// The endpoint addresses an agent with Kubernetes enrollment logs at start.
fn agent_endpoints(agent: &mut Process, source: &[String]) -> anyhow::Result<Option<AgentEndpoints>> {
    if !source.iter().any(|arg| arg == "--node") {
        return Ok(None);
    }
    let monitoring = agent.logged_address("serving metrics", READY_TIMEOUT)?;
    let admin = agent.logged_address("serving config_dump", READY_TIMEOUT)?;
    Ok(Some(AgentEndpoints { monitoring, admin }))
}

fn start_ztunnel(node: &Node, socket: &std::path::Path, control_flags: &[String]) -> anyhow::Result<Process> {
    let mut command = Command::new(apps::binary("weft-ztunnel")?);
    command.arg("--zds-socket").arg(socket).args(control_flags);
    let output = merged_output(&mut command)?;
    let mut ztunnel = Process::spawn(command, &node.netns, Some(&node.proxy_cgroup))?;
    ztunnel.read_lines_from(output);
    Ok(ztunnel)
}
