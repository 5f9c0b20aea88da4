//! The small apps real-node tests and the real-node demo run on a [`RealCluster`]: an echo
//! Deployment behind a Service, a long-lived client pod, and `weft-testpod` commands run inside
//! pods through the API server and kubelet (`kubectl exec`), as a user would run them.
use std::{process::Stdio, time::Duration};

use anyhow::Context;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Service},
};
use kube::{Api, api::PostParams};

use super::RealCluster;
use crate::process::Process;

/// The test image's reference ([`crate::images::testpod`]).
pub const TESTPOD_IMAGE: &str = "weft.local/testpod:1";
/// How long a command in a pod may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// A Kubernetes object from its JSON.
pub fn object<T: k8s_openapi::serde::de::DeserializeOwned>(value: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(value).context("not a valid object")
}

/// Creates namespace `name` with `labels`.
pub async fn create_namespace(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
) -> anyhow::Result<()> {
    let namespace = object(serde_json::json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    Ok(())
}

/// An echo server Deployment on `node` (ready once it listens, by the kubelet's probe) behind
/// the Service `echo` (port 80 → 8080) in `namespace`; returns the Service's address.
pub async fn deploy_echo(client: &kube::Client, namespace: &str, node: &str) -> anyhow::Result<String> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = object(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{
                        "name": "echo",
                        "image": TESTPOD_IMAGE,
                        "args": ["echo", "--port", "8080"],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))?;
    deployments.create(&PostParams::default(), &deployment).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = object(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let created = services.create(&PostParams::default(), &service).await?;
    created.spec.and_then(|spec| spec.cluster_ip).context("the Service got no ClusterIP")
}

/// Pod `namespace/name` on `node` that stays up (an idle echo server), to run commands in.
pub async fn start_idle_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    node: &str,
) -> anyhow::Result<()> {
    let pod = object(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": name, "image": TESTPOD_IMAGE, "args": ["echo", "--port", "9000"]}],
        },
    }))?;
    Api::<Pod>::namespaced(client.clone(), namespace).create(&PostParams::default(), &pod).await?;
    Ok(())
}

impl RealCluster {
    /// `kubectl exec -i` of `weft-testpod ARGS` in pod `namespace/pod`, its output piped (its
    /// input is empty unless the caller pipes it).
    pub fn testpod_exec(
        &self,
        namespace: &str,
        pod: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Command> {
        let mut exec = self.kubectl()?;
        exec.args(["exec", "-i", "-n", namespace, pod, "--", "weft-testpod"])
            .args(args)
            .stdout(Stdio::piped());
        Ok(exec)
    }

    /// Whether `message` sent from pod `namespace/pod` to `to` (`name:port` or `ip:port`) comes
    /// back; bounded.
    pub fn reaches(&self, namespace: &str, pod: &str, to: &str, message: &str) -> anyhow::Result<bool> {
        let exec = self.testpod_exec(namespace, pod, &["send", "--to", to, "--message", message])?;
        let (ok, stdout) = Process::start(exec)?.finish(EXEC_TIMEOUT)?;
        Ok(ok && stdout.contains(message))
    }

    /// Waits until Weft's agent reports each of `pods` in `namespace` captured.
    pub async fn wait_for_capture(
        &self,
        namespace: &str,
        pods: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client(), namespace);
        for name in pods {
            crate::eventually(
                &format!("pod {namespace}/{name} captured by its node's agent"),
                timeout,
                || async {
                    let pod = api.get(name).await.ok()?;
                    weft_api::enrollment::Labels::Weft
                        .captured(pod.metadata.annotations.as_ref())
                        .then_some(())
                },
            )
            .await?;
        }
        Ok(())
    }
}
