//! A cluster's network on one machine: a fabric namespace with a bridge joins one namespace per
//! node; each node has a pod bridge (`cni0`) and routes to the other nodes' pod ranges; each pod
//! is a namespace with a veth onto its node's bridge, a cgroup v2 directory under its node's, and
//! a pause process in it. Dual-stack. Addresses exist only inside these namespaces:
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | fabric bridge (cluster services) | 172.18.0.1/24 | — |
//! | node `i` on the fabric (`eth0`) | 172.18.0.(10+i)/24 | fd00:172:18::(10+i)/64 |
//! | node `i` pod gateway (`cni0`) | 10.244.i.1/24 | fd00:10:244:i::1/64 |
//! | pod `h` on node `i` | 10.244.i.h/24 | fd00:10:244:i::h/64 |
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, ensure};

use crate::{
    cleanup::{self, Guard},
    netns::NetNs,
    process::{self, Process},
};

/// The fabric bridge's address (in the fabric netns), reachable from every node: where
/// cluster-level services such as the control plane listen.
pub const FABRIC_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);

/// First host number handed to pods on a node (below it: the gateway).
const FIRST_POD_HOST: u8 = 10;
const LAST_POD_HOST: u8 = 250;
const MAX_NODES: usize = 100;

/// A node: its namespace, fabric addresses and pod cgroup.
#[derive(Debug, Clone)]
pub struct Node {
    pub index: usize,
    pub name: String,
    pub netns: NetNs,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The cgroup directory under which this node's pods get theirs (as kubelet's `kubepods`);
    /// the datapath attaches here.
    pub cgroup: PathBuf,
    /// The node proxy's cgroup, inside [`Node::cgroup`] as the ztunnel pod's would be.
    pub proxy_cgroup: PathBuf,
    /// The cgroup of the node's own processes (as a node's `system.slice`, the kubelet's), a
    /// sibling of [`Node::cgroup`].
    pub system_cgroup: PathBuf,
    /// This node's bpffs root for the datapath's pins.
    pub bpffs_root: PathBuf,
}

impl Node {
    /// Starts `command` as one of the node's own processes (its netns and system cgroup), as
    /// the kubelet runs.
    pub fn spawn(&self, command: Command) -> anyhow::Result<Process> {
        Process::spawn(command, &self.netns, Some(&self.system_cgroup))
    }
}

/// A pod: its namespace, addresses and cgroup. Cheap to clone; the topology owns the resources.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub node: usize,
    pub netns: NetNs,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub cgroup: PathBuf,
}

impl Pod {
    /// The pod's addresses, IPv4 first.
    pub fn addresses(&self) -> [std::net::IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }

    /// Starts `command` as one of the pod's processes (its netns and cgroup).
    pub fn spawn(&self, command: Command) -> anyhow::Result<Process> {
        Process::spawn(command, &self.netns, Some(&self.cgroup))
    }
}

/// The whole network; everything it created is removed when it drops.
#[derive(Debug)]
pub struct Topology {
    name: String,
    fabric: NetNs,
    nodes: Vec<Node>,
    pods: Vec<(Pod, Process)>,
    // Declared last so it drops after the pods' pause processes.
    guard: Guard,
}

impl Topology {
    /// Builds the fabric and `nodes` nodes, fully routed, with no pods yet.
    pub fn new(nodes: usize) -> anyhow::Result<Self> {
        crate::require_root();
        crate::hang::report_stacks_on_termination();
        ensure!((1..=MAX_NODES).contains(&nodes), "a topology has 1 to {MAX_NODES} nodes");
        let cgroup_root = process::cgroup2_root()?;
        cleanup::sweep_stale(&cgroup_root);
        let name = crate::unique_name();
        let mut guard = Guard::default();

        let run_cgroup = process::create_cgroup(&cgroup_root.join(&name))?;
        defer_cgroup(&mut guard, &run_cgroup);
        let run_bpffs = Path::new(BPFFS).join(&name);
        defer_bpffs(&mut guard, &run_bpffs);
        let fabric = NetNs::create(&format!("{name}-fabric"))?;
        defer_netns(&mut guard, &fabric);
        fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
        // The fabric's own address: where cluster services (the control plane) listen.
        fabric.ip(&["addr", "add", &format!("{FABRIC_GATEWAY}/24"), "dev", "br0"])?;
        fabric.ip(&["link", "set", "br0", "up"])?;

        let mut built = Vec::with_capacity(nodes);
        for index in 0..nodes {
            let node_name = format!("node{index}");
            let netns = NetNs::create(&format!("{name}-{node_name}"))?;
            defer_netns(&mut guard, &netns);
            let host = u8::try_from(10 + index).context("node index")?;
            let cgroup = process::create_cgroup(&run_cgroup.join(&node_name))?;
            let node = Node {
                index,
                name: node_name.clone(),
                ipv4: Ipv4Addr::new(172, 18, 0, host),
                ipv6: format!("fd00:172:18::{host}").parse()?,
                proxy_cgroup: process::create_cgroup(&cgroup.join("proxy"))?,
                system_cgroup: process::create_cgroup(&run_cgroup.join(format!("{node_name}-system")))?,
                cgroup,
                bpffs_root: run_bpffs.join(&node_name),
                netns,
            };
            wire_node(&fabric, &node)?;
            built.push(node);
        }
        for node in &built {
            // Cluster services in the fabric (the API server) answer pods through their node.
            fabric.ip(&["route", "add", &pod_cidrs(node.index).0, "via", &node.ipv4.to_string()])?;
            for peer in built.iter().filter(|peer| peer.index != node.index) {
                let (v4, v6) = pod_cidrs(peer.index);
                node.netns.ip(&["route", "add", &v4, "via", &peer.ipv4.to_string()])?;
                node.netns.ip(&["-6", "route", "add", &v6, "via", &peer.ipv6.to_string()])?;
            }
        }
        Ok(Self { name, fabric, nodes: built, pods: Vec::new(), guard })
    }

    /// This topology's unique name (`weft-<pid>-<n>`), the prefix of all its namespaces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fabric namespace, where the wire monitor listens.
    pub fn fabric(&self) -> &NetNs {
        &self.fabric
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().map(|(pod, _)| pod)
    }

    /// Creates pod `name` with Kubernetes uid `uid` on node `node`: namespace, veth, addresses
    /// (the lowest free host number on that node, so a deleted pod's addresses are reused),
    /// cgroup `pod<uid>` and a pause process in it.
    pub fn add_pod(&mut self, node: usize, name: &str, uid: &str) -> anyhow::Result<Pod> {
        let node_ref = self.nodes.get(node).with_context(|| format!("no node {node}"))?.clone();
        let host = (FIRST_POD_HOST..=LAST_POD_HOST)
            .find(|host| !self.pods().any(|pod| pod.node == node && pod_host(pod) == *host))
            .context("node has no free pod address")?;
        let netns = NetNs::create(&format!("{}-n{node}-p{host}", self.name))?;
        defer_netns(&mut self.guard, &netns);
        let pod = Pod {
            name: name.to_owned(),
            uid: uid.to_owned(),
            node,
            ipv4: Ipv4Addr::new(10, 244, u8::try_from(node)?, host),
            ipv6: format!("fd00:10:244:{node}::{host}").parse()?,
            cgroup: process::create_cgroup(&node_ref.cgroup.join(format!("pod{uid}")))?,
            netns,
        };
        defer_cgroup(&mut self.guard, &pod.cgroup);
        self.start_sandbox(pod)
    }

    /// Removes the pod with `uid`: its processes, cgroup and namespace (and so its veth).
    pub fn remove_pod(&mut self, uid: &str) -> anyhow::Result<()> {
        self.end_sandbox(uid).map(drop)
    }

    /// Replaces the sandbox of the pod with `uid`, as a kubelet does when it died: every process
    /// of the pod ends and its namespace goes (and its veth with it); a new namespace under the
    /// same name gets the same addresses (static addressing, or an IPAM that kept them) and a
    /// new pause process in the pod's cgroup. Returns the pod, whose `netns` now names the new
    /// namespace.
    pub fn recreate_sandbox(&mut self, uid: &str) -> anyhow::Result<Pod> {
        let pod = self.end_sandbox(uid)?;
        process::create_cgroup(&pod.cgroup)?;
        let pod = Pod { netns: NetNs::create(pod.netns.name())?, ..pod };
        self.start_sandbox(pod)
    }

    /// Wires `pod`'s namespace to its node and starts its pause process.
    fn start_sandbox(&mut self, pod: Pod) -> anyhow::Result<Pod> {
        wire_pod(&self.nodes[pod.node], &pod, pod_host(&pod))?;
        let mut pause = Command::new("sleep");
        pause.arg("infinity").stdin(Stdio::null()).stdout(Stdio::null());
        let pause = pod.spawn(pause)?;
        self.pods.push((pod.clone(), pause));
        Ok(pod)
    }

    /// Ends every process of the pod with `uid` and removes its cgroup, namespace and veth;
    /// returns the pod.
    fn end_sandbox(&mut self, uid: &str) -> anyhow::Result<Pod> {
        let at = self
            .pods
            .iter()
            .position(|(pod, _)| pod.uid == uid)
            .with_context(|| format!("no pod with uid {uid}"))?;
        let (pod, pause) = self.pods.remove(at);
        drop(pause);
        process::remove_cgroup_tree(&pod.cgroup)?;
        // Deleting the node's end removes the pair at once; a deleted namespace takes its end
        // down only asynchronously, and the next pod on this address needs the name.
        let node = &self.nodes[pod.node];
        node.netns.ip(&["link", "delete", &format!("vp{}", pod_host(&pod))])?;
        NetNs::delete_named(pod.netns.name())?;
        Ok(pod)
    }
}

impl Drop for Topology {
    /// Every test of a topology ends here: once it is taken down, and whatever else the test
    /// checked, nothing the harness read may have panicked or written a private key
    /// ([`crate::invariants`]).
    fn drop(&mut self) {
        self.pods.clear();
        self.guard.run();
        if !std::thread::panicking()
            && let Err(findings) = crate::invariants::logs_clean()
        {
            panic!("{findings:#}");
        }
    }
}

fn pod_host(pod: &Pod) -> u8 {
    pod.ipv4.octets()[3]
}

fn pod_cidrs(node: usize) -> (String, String) {
    (format!("10.244.{node}.0/24"), format!("fd00:10:244:{node}::/64"))
}

/// Joins `node` to the fabric bridge and gives it its pod bridge and forwarding.
fn wire_node(fabric: &NetNs, node: &Node) -> anyhow::Result<()> {
    let port = format!("n{}", node.index);
    fabric.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", node.netns.name()])?;
    fabric.ip(&["link", "set", &port, "master", "br0", "up"])?;
    let ns = &node.netns;
    ns.ip(&["addr", "add", &format!("{}/24", node.ipv4), "dev", "eth0"])?;
    ns.ip(&["-6", "addr", "add", &format!("{}/64", node.ipv6), "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
    ns.ip(&["addr", "add", &format!("10.244.{}.1/24", node.index), "dev", "cni0"])?;
    ns.ip(&["-6", "addr", "add", &format!("fd00:10:244:{}::1/64", node.index), "dev", "cni0", "nodad"])?;
    ns.ip(&["link", "set", "cni0", "up"])?;
    // New namespaces do not forward by default (and copy some values from the host).
    ns.sysctl("ipv4/ip_forward", "1")?;
    ns.sysctl("ipv6/conf/all/forwarding", "1")?;
    Ok(())
}

fn wire_pod(node: &Node, pod: &Pod, host: u8) -> anyhow::Result<()> {
    let port = format!("vp{host}");
    let node_ns = &node.netns;
    node_ns.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", pod.netns.name()])?;
    node_ns.ip(&["link", "set", &port, "master", "cni0", "up"])?;
    let ns = &pod.netns;
    ns.ip(&["addr", "add", &format!("{}/24", pod.ipv4), "dev", "eth0"])?;
    ns.ip(&["-6", "addr", "add", &format!("{}/64", pod.ipv6), "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", &format!("10.244.{}.1", node.index)])?;
    ns.ip(&["-6", "route", "add", "default", "via", &format!("fd00:10:244:{}::1", node.index)])?;
    Ok(())
}

fn defer_netns(guard: &mut Guard, netns: &NetNs) {
    let name = netns.name().to_owned();
    guard.defer(format!("netns {name}"), move || {
        if netns_exists(&name) {
            NetNs::delete_named(&name)?;
        }
        Ok(())
    });
}

/// Where bpffs is mounted; each topology pins below `<BPFFS>/<topology name>/<node>`.
pub const BPFFS: &str = "/sys/fs/bpf";

fn defer_bpffs(guard: &mut Guard, dir: &Path) {
    let dir = dir.to_path_buf();
    guard.defer(format!("bpffs pins {}", dir.display()), move || match std::fs::remove_dir_all(&dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    });
}

fn defer_cgroup(guard: &mut Guard, dir: &Path) {
    let dir = dir.to_path_buf();
    guard.defer(format!("cgroup {}", dir.display()), move || process::remove_cgroup_tree(&dir));
}

/// Whether the named namespace still exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}
