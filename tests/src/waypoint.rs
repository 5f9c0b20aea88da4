//! A waypoint as a user gets one, in the harness: the Gateway (class `weft-waypoint`), for
//! which the control plane deploys a ServiceAccount, a Service (HBONE, 15008) and a Deployment;
//! the harness, playing the kubelet, runs one pod of it by hand running `weft-waypoint` with a
//! token bound to that pod, outside capture (`weft.dev/dataplane-mode: none`), taking its
//! certificate and configuration from the control plane, and the environment the Deployment
//! gives it (the values written there: the settings of the control plane's PodTemplate).
use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Service, ServiceAccount},
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};

use crate::{
    apps,
    cluster::Cluster,
    control::{AUDIENCE, ControlPlane, request_token_for},
    kubelet::PodTemplate,
    process::Process,
    topology::Pod,
};

/// The label a Gateway's pods carry.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running waypoint.
#[derive(Debug)]
pub struct Waypoint {
    process: Process,
    pod: Pod,
    _dir: tempfile::TempDir,
}

/// The Gateway API's `Gateway` objects of `namespace`.
pub fn gateways(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk_with_plural(&gvk, "gateways"))
}

/// The Gateway API's routes of `kind` (`HTTPRoute`, `GRPCRoute`) in `namespace`.
pub fn routes(client: kube::Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk_with_plural(&gvk, &plural))
}

/// Creates HTTPRoute `name` in `namespace` with `spec`.
pub async fn create_http_route(
    client: kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    create_route(client, "HTTPRoute", namespace, name, spec).await
}

/// Creates a route of `kind` (`HTTPRoute`, `GRPCRoute`) named `name` in `namespace` with `spec`.
pub async fn create_route(
    client: kube::Client,
    kind: &str,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let route = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    });
    routes(client, kind, namespace).create(&PostParams::default(), &serde_json::from_value(route)?).await?;
    Ok(())
}

/// Creates the object of `kind` (`plural`, in `api_version`) named `namespace/name` with `spec`:
/// one of Weft's policies, say.
pub async fn create_object(
    client: kube::Client,
    (api_version, kind, plural): (&str, &str, &str),
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let (group, version) = api_version.split_once('/').context("an API version of a group")?;
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let object = serde_json::json!({
        "apiVersion": api_version, "kind": kind, "metadata": { "name": name, "namespace": namespace }, "spec": spec,
    });
    Api::<DynamicObject>::namespaced_with(client, namespace, &resource)
        .create(&PostParams::default(), &serde_json::from_value(object)?)
        .await
        .with_context(|| format!("creating {kind} {namespace}/{name}"))?;
    Ok(())
}

/// Creates Gateway `name` of class `weft-waypoint` in `namespace`, listening for HBONE.
pub async fn create_gateway(client: kube::Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let gateway = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "gatewayClassName": "weft-waypoint",
            "listeners": [{ "name": "mesh", "port": 15008, "protocol": "HBONE" }],
        },
    });
    gateways(client, namespace).create(&PostParams::default(), &serde_json::from_value(gateway)?).await?;
    Ok(())
}

impl Waypoint {
    /// Deploys waypoint `name` in `namespace` with its pod on node `node`, and returns once the
    /// waypoint is ready (its configuration arrived). The Gateway API CRDs must be installed.
    pub async fn start(
        cluster: &mut Cluster,
        plane: &ControlPlane,
        namespace: &str,
        name: &str,
        node: usize,
    ) -> anyhow::Result<Self> {
        let client = cluster.client();
        create_gateway(client.clone(), namespace, name).await.context("creating the Gateway")?;
        // The control plane deploys the rest for the Gateway; the harness, playing the kubelet,
        // runs one pod of it by hand (the Deployment's own pods are never scheduled here).
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let deployment = crate::eventually(
            "the control plane to deploy the waypoint's Service, account and Deployment",
            READY_TIMEOUT,
            || async {
                let deployed = services.get_opt(name).await.ok()?.is_some()
                    && accounts.get_opt(name).await.ok()?.is_some();
                deployments.get_opt(name).await.ok()?.filter(|_| deployed)
            },
        )
        .await?;
        // The arguments below say where things are in the harness and win over these.
        let environment: Vec<(String, String)> = deployment
            .spec
            .template
            .spec
            .and_then(|spec| spec.containers.into_iter().next())
            .and_then(|container| container.env)
            .into_iter()
            .flatten()
            .filter_map(|variable| Some((variable.name, variable.value?)))
            .collect();
        let pod_name = format!("{name}-0");
        let template = PodTemplate::new(namespace, &pod_name)
            .service_account(name)
            .label(GATEWAY_NAME_LABEL, name)
            .label("weft.dev/dataplane-mode", "none");
        let pod = cluster.add_pod(node, &template).await?;
        let dir = tempfile::Builder::new().prefix("weft-waypoint-").tempdir()?;
        let token = request_token_for(client, (namespace, name), &pod_name, Some(&pod.uid), AUDIENCE).await?;
        let token_file: PathBuf = dir.path().join("token");
        std::fs::write(&token_file, token)?;
        let mut command = std::process::Command::new(apps::binary("weft-waypoint")?);
        command
            .args(["--gateway-name", name, "--pod-namespace", namespace, "--service-account", name])
            .args(["--pod-name", &pod_name, "--instance-ip", &pod.ipv4.to_string()])
            .args(["--xds-address", &plane.address(), "--ca-address", &plane.address()])
            .arg("--ca-root-file")
            .arg(plane.root_file())
            .arg("--token-file")
            .arg(&token_file)
            .envs(environment)
            .env("RUST_LOG", "info,weft_waypoint=debug");
        let output = crate::process::merged_output(&mut command)?;
        let mut process = pod.spawn(command)?;
        process.read_lines_from(output);
        let mut waypoint = Self { process, pod, _dir: dir };
        waypoint.wait_until_ready().with_context(|| format!("waypoint {namespace}/{name}"))?;
        Ok(waypoint)
    }

    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let netns = self.pod.netns.clone();
        tokio::task::block_in_place(|| {
            crate::until("the waypoint to be ready", READY_TIMEOUT, || {
                apps::http_get(&netns, 15021, "/healthz/ready")
                    .is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
            })
        })
    }

    /// The waypoint's log.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn pod(&self) -> &Pod {
        &self.pod
    }
}
