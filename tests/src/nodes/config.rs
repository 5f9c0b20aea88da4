//! What each real node's processes are configured with: containerd's config, the CNI network,
//! the kubelet's and kube-proxy's configuration files.
use std::path::Path;

use crate::{apiserver::ApiServer, topology::Node};

/// The kube-dns Service's address (`coredns.yaml`), which kubelets give pods as their resolver.
const CLUSTER_DNS: &str = "10.96.0.10";

/// The cluster's pod ranges, for kube-proxy's idea of what is inside the cluster.
const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/48";

pub(super) fn containerd_config(dir: &Path, socket: &Path) -> String {
    let dir = dir.display();
    let socket = socket.display();
    format!(
        r#"version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{dir}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/cni"
    max_conf_num = 1
"#,
        pause = PAUSE_IMAGE,
    )
}

/// The sandbox image's reference ([`images::pause`]).
const PAUSE_IMAGE: &str = "weft.local/pause:1";

/// Pods on node `index` get addresses from its ranges in the topology's plan, on its `cni0`.
pub(super) fn cni_config(index: usize) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft-pods",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [
                    [{"subnet": format!("10.244.{index}.0/24")}],
                    [{"subnet": format!("fd00:10:244:{index}::/64")}],
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            },
        }],
    })
    .to_string()
}

pub(super) fn kubelet_config_yaml(
    api: &ApiServer,
    node: &Node,
    dir: &Path,
    socket: &Path,
    cgroup_root: &str,
) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
address: {address}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
podLogsDir: {dir}/pod-logs
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
clusterDNS: [{CLUSTER_DNS}]
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  imagefs.available: "0%"
  nodefs.inodesFree: "0%"
"#,
        socket = socket.display(),
        address = node.ipv4,
        ca = api.ca_file().display(),
        dir = dir.display(),
    )
}

pub(super) fn kube_proxy_config_yaml(api: &ApiServer, node: &Node) -> anyhow::Result<String> {
    Ok(format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {name}
mode: iptables
clusterCIDR: {CLUSTER_CIDRS}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
"#,
        kubeconfig = api.kube_proxy_kubeconfig()?.display(),
        name = node.name,
    ))
}
