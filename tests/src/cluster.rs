//! A test cluster: the real API server (reachable from the pods at its advertised address), the
//! namespace topology, and the harness as kubelet keeping the two in step (a Pod object for
//! every pod namespace, with its real uid and IPs).
use anyhow::Context;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

use crate::{
    apiserver::{ApiServer, Relay},
    kubelet::{Kubelet, PodTemplate},
    topology::{Pod, Topology},
};

/// API server + topology + kubelet.
#[derive(Debug)]
pub struct Cluster {
    // The network goes first on drop, then the API server.
    _relay: Relay,
    topology: Topology,
    kubelet: Kubelet,
    api: ApiServer,
}

impl Cluster {
    /// Starts the API server, builds `nodes` nodes and registers them.
    pub async fn start(nodes: usize) -> anyhow::Result<Self> {
        let api = ApiServer::start().await?;
        let topology = Topology::new(nodes)?;
        let relay = api.relay_from(topology.fabric())?;
        let kubelet = Kubelet::new(api.client());
        for node in topology.nodes() {
            kubelet.register_node(node).await?;
        }
        Ok(Self { _relay: relay, topology, kubelet, api })
    }

    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    pub fn client(&self) -> kube::Client {
        self.api.client()
    }

    pub fn kubelet(&self) -> &Kubelet {
        &self.kubelet
    }

    /// The topology, to add a pod's namespace and processes by hand.
    pub fn topology_mut(&mut self) -> &mut Topology {
        &mut self.topology
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Creates the Pod object on node `node`, then its namespace, cgroup and pause process under
    /// the uid the API server assigned, then reports it Running with its IPs.
    pub async fn add_pod(&mut self, node: usize, template: &PodTemplate) -> anyhow::Result<Pod> {
        self.kubelet.ensure_namespace(&template.namespace, &[]).await?;
        let node_name =
            self.topology.nodes().get(node).with_context(|| format!("no node {node}"))?.name.clone();
        let object = self.kubelet.create_pod(template, &node_name).await?;
        let uid = object.metadata.uid.context("the API server assigned no uid")?;
        let pod = self.topology.add_pod(node, &template.name, &uid)?;
        self.kubelet.mark_running(&template.namespace, &template.name, &pod.addresses()).await?;
        Ok(pod)
    }

    /// Creates Service `name` in `namespace` with `port`, selecting pods with every label of
    /// `selector`, and returns its virtual IP.
    pub async fn create_service(
        &self,
        namespace: &str,
        name: &str,
        selector: &[(&str, &str)],
        port: ServicePort,
    ) -> anyhow::Result<std::net::IpAddr> {
        let service = Service {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some(
                    selector.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
                ),
                ports: Some(vec![port]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = Api::<Service>::namespaced(self.client(), namespace)
            .create(&PostParams::default(), &service)
            .await
            .with_context(|| format!("creating Service {namespace}/{name}"))?;
        let vip = created.spec.and_then(|spec| spec.cluster_ip).context("the Service got no ClusterIP")?;
        Ok(vip.parse()?)
    }

    /// Deletes the Pod object (grace 0) and tears down its namespace and cgroup.
    pub async fn remove_pod(&mut self, namespace: &str, pod: &Pod) -> anyhow::Result<()> {
        self.kubelet.delete_pod(namespace, &pod.name).await?;
        self.topology.remove_pod(&pod.uid)
    }
}
