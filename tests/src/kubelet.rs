//! The harness as kubelet: it registers Node objects, creates Pods bound to a node (with the
//! service account each runs as, as the user's manifests would), reports them Running with their
//! IPs once their namespaces exist, and deletes them with grace period 0 (no kubelet would
//! otherwise confirm the deletion).
use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec, ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::topology;

/// What a test asks for in a pod: namespace, name, service account and labels.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl PodTemplate {
    /// A pod `name` in `namespace` running as service account `default`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            service_account: "default".to_owned(),
            labels: BTreeMap::new(),
        }
    }

    pub fn service_account(mut self, service_account: &str) -> Self {
        service_account.clone_into(&mut self.service_account);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// Kubelet duties for every node of a test cluster.
#[derive(Clone)]
pub struct Kubelet {
    client: kube::Client,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").finish_non_exhaustive()
    }
}

impl Kubelet {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// Creates the Node object for `node`, Ready, with its fabric addresses as InternalIPs.
    pub async fn register_node(&self, node: &topology::Node) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let object = Node {
            metadata: ObjectMeta { name: Some(node.name.clone()), ..Default::default() },
            ..Default::default()
        };
        nodes
            .create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating node {}", node.name))?;
        let status = json!({ "status": {
            "addresses": [
                { "type": "InternalIP", "address": node.ipv4.to_string() },
                { "type": "InternalIP", "address": node.ipv6.to_string() },
                { "type": "Hostname", "address": node.name },
            ],
            "conditions": [{ "type": "Ready", "status": "True", "reason": "WeftHarness" }],
        }});
        nodes
            .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .with_context(|| format!("reporting node {} Ready", node.name))?;
        Ok(())
    }

    /// Creates namespace `name` with `labels` if it does not exist yet.
    pub async fn ensure_namespace(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        if namespaces.get_opt(name).await?.is_some() {
            return Ok(());
        }
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let object = Namespace {
            metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(labels), ..Default::default() },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// Creates service account `name` in `namespace` if it does not exist yet. The API server's
    /// ServiceAccount admission refuses a pod whose account is missing; `default` is made by the
    /// controller manager soon after its namespace, so this may race it and find it made.
    pub async fn ensure_service_account(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        if accounts.get_opt(name).await?.is_some() {
            return Ok(());
        }
        let object = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            result => {
                result.with_context(|| format!("creating service account {namespace}/{name}"))?;
                Ok(())
            }
        }
    }

    /// Creates the Pod of `template` bound to `node_name` (Pending, no IP yet), and its service
    /// account if missing, and returns it as stored, with its server-assigned uid.
    pub async fn create_pod(&self, template: &PodTemplate, node_name: &str) -> anyhow::Result<Pod> {
        self.ensure_service_account(&template.namespace, &template.service_account).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &template.namespace);
        let object = Pod {
            metadata: ObjectMeta {
                name: Some(template.name.clone()),
                namespace: Some(template.namespace.clone()),
                labels: Some(template.labels.clone()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node_name.to_owned()),
                service_account_name: Some(template.service_account.clone()),
                containers: vec![Container {
                    name: "app".to_owned(),
                    image: Some("weft.dev/test-app".to_owned()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        pods.create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating pod {}/{}", template.namespace, template.name))
    }

    /// Reports the pod Running and Ready with `ips` (the first is `podIP`).
    pub async fn mark_running(&self, namespace: &str, name: &str, ips: &[IpAddr]) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let first = ips.first().context("a running pod needs an IP")?;
        let status = json!({ "status": {
            "phase": "Running",
            "podIP": first.to_string(),
            "podIPs": ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect::<Vec<_>>(),
            "conditions": [{ "type": "Ready", "status": "True" }],
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .with_context(|| format!("reporting pod {namespace}/{name} Running"))?;
        Ok(())
    }

    /// Reports the pod's container started again, `restarts` times in all, as a kubelet does
    /// once it replaced the pod's dead sandbox (and with it every container).
    pub async fn report_restarted(&self, namespace: &str, name: &str, restarts: i32) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let status = json!({ "status": { "containerStatuses": [{
            "name": "app",
            "image": "weft.dev/test-app",
            "imageID": "",
            "ready": true,
            "restartCount": restarts,
            "state": { "running": {} },
        }]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .with_context(|| format!("reporting pod {namespace}/{name} restarted"))?;
        Ok(())
    }

    /// Annotates the pod as captured, as its node's agent does once capture is on, for tests
    /// whose agents enroll statically or that run none: only then does the control plane tell
    /// proxies to tunnel to it.
    pub async fn report_captured(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        use weft_api::enrollment::{CAPTURED, ENABLED};
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({ "metadata": { "annotations": { CAPTURED: ENABLED } } });
        pods.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .with_context(|| format!("annotating pod {namespace}/{name} as captured"))?;
        Ok(())
    }

    /// Starts a graceful deletion of the pod (`seconds` of grace): the API server marks it
    /// terminating and, with no kubelet here to confirm its containers stopped, keeps it so
    /// until [`Kubelet::delete_pod`].
    pub async fn begin_deleting_pod(&self, namespace: &str, name: &str, seconds: u32) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.delete(name, &DeleteParams { grace_period_seconds: Some(seconds), ..Default::default() })
            .await
            .with_context(|| format!("deleting pod {namespace}/{name} gracefully"))?;
        Ok(())
    }

    /// Deletes the pod at once (grace period 0).
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .with_context(|| format!("deleting pod {namespace}/{name}"))?;
        Ok(())
    }
}
