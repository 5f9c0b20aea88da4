//! Deploys waypoints: for every Gateway of class `weft-waypoint`, the control plane applies in
//! its namespace a ServiceAccount, a Service (HBONE on 15008) and a Deployment of its name
//! running `weft-waypoint`, all owned by the Gateway (deleting it removes them), copies the mesh
//! root there for its pods, and reports on the Gateway's status: `Accepted`, and `Programmed`
//! once a waypoint pod is available — as Istio's deployment controller does. Level-triggered:
//! every Gateway change and a periodic tick reconcile them all. The waypoint container's image,
//! pull policy and resources come from the PodTemplate `weft-waypoint` in the control plane's
//! namespace (`manifests/waypoint.yaml`), so an operator sets them where the other images are;
//! so does the waypoint's environment (tracing's collector, say).
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{PodTemplate, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::{
    ca::{Authority, ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY},
    index::{
        gateway_api::Gateway,
        waypoint::{CLASS, GATEWAY_NAME_LABEL, HBONE_PORT},
    },
};

/// How often every waypoint is reconciled, whatever changed.
const TICK: Duration = Duration::from_secs(10);
const MANAGER: &str = "weft-control";

/// How waypoints are deployed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The waypoint's container image, whatever the template says (`--waypoint-image`);
    /// `None`: the template's, else [`DEFAULT_IMAGE`].
    pub image: Option<String>,
    /// The PodTemplate (`namespace`, `name`) whose `waypoint` container gives the image, pull
    /// policy and resources of every waypoint: where an operator sets them (kustomize's
    /// `images:` rewrites its image with the others).
    pub template: (String, String),
    /// The control plane's xDS and CA address, as the waypoint's pods dial it.
    pub control_address: String,
}

/// Reconciles every waypoint until the task is dropped; a Gateway that fails is logged and
/// retried at the next tick, and costs the others nothing.
pub async fn run(client: kube::Client, settings: Settings, authority: Arc<Authority>) {
    use kube::runtime::WatchStreamExt;
    use tokio_stream::StreamExt;
    let gateways: Api<Gateway> = Api::all(client.clone());
    // Any Gateway event wakes the loop at once; the tick catches Deployments becoming
    // available. Without the CRDs the watch fails, backing off, and only the tick runs.
    let changes =
        kube::runtime::watcher(gateways.clone(), kube::runtime::watcher::Config::default()).default_backoff();
    let mut changes = std::pin::pin!(changes);
    loop {
        match gateways.list(&ListParams::default()).await {
            Ok(list) => {
                for gateway in list.items.iter().filter(|gateway| gateway.spec.gateway_class_name == CLASS) {
                    if let Err(error) = reconcile(&client, &settings, &authority, gateway).await {
                        tracing::warn!(gateway = %gateway.name_any(), namespace = ?gateway.namespace(), %error, "waypoint not deployed");
                    }
                }
            }
            // Without the Gateway API's CRDs there is nothing to deploy (and the index says so).
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::warn!(%error, "listing Gateways"),
        }
        tokio::select! {
            Some(_) = changes.next() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn reconcile(
    client: &kube::Client,
    settings: &Settings,
    authority: &Authority,
    gateway: &Gateway,
) -> Result<(), kube::Error> {
    let (name, namespace) = (gateway.name_any(), gateway.namespace().unwrap_or_default());
    let owner = OwnerReference {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        name: name.clone(),
        uid: gateway.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let apply = PatchParams::apply(MANAGER).force();
    // Applying takes over what it names: never an object someone else made (a Gateway named
    // like an existing Service would otherwise repoint it, and deleting the Gateway remove it).
    if let Some(conflict) = taken(client, &namespace, &name, &owner.uid).await? {
        tracing::warn!(gateway = %name, %namespace, %conflict, "waypoint not deployed");
        return report(client, gateway, Err(conflict)).await;
    }
    crate::ca::publish_root(client.clone(), &namespace, &authority.bundle_pem()).await?;
    let metadata = json!({ "name": name, "namespace": namespace, "ownerReferences": [owner],
        "labels": { GATEWAY_NAME_LABEL: name, "app.kubernetes.io/managed-by": MANAGER } });
    let account = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata });
    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&account))
        .await?;
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": { GATEWAY_NAME_LABEL: name },
            "ports": [{ "name": "mesh", "port": HBONE_PORT, "protocol": "TCP" }],
        },
    });
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&service))
        .await?;
    let container = container(client, settings).await?;
    let deployment = deployment(&name, &metadata, settings, &container);
    let deployed = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&deployment))
        .await?;
    let available = deployed.status.and_then(|status| status.available_replicas).unwrap_or(0);
    report(client, gateway, Ok(available)).await
}

/// What of the waypoint's objects exists and is not this Gateway's (owner `uid`), if any.
async fn taken(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<Option<String>, kube::Error> {
    let owned_elsewhere = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        !meta.owner_references.iter().flatten().any(|owner| owner.uid == uid)
    };
    let service = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    if service.is_some_and(|service| owned_elsewhere(&service.metadata)) {
        return Ok(Some(format!("Service {namespace}/{name} exists and is not this Gateway's")));
    }
    let account = Api::<ServiceAccount>::namespaced(client.clone(), namespace).get_opt(name).await?;
    if account.is_some_and(|account| owned_elsewhere(&account.metadata)) {
        return Ok(Some(format!("ServiceAccount {namespace}/{name} exists and is not this Gateway's")));
    }
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace).get_opt(name).await?;
    if deployment.is_some_and(|deployment| owned_elsewhere(&deployment.metadata)) {
        return Ok(Some(format!("Deployment {namespace}/{name} exists and is not this Gateway's")));
    }
    Ok(None)
}

/// What the operator's template says of the waypoint's container: its image, pull policy and
/// resources (JSON, as applied).
#[derive(Debug, Clone, PartialEq)]
struct Container {
    image: String,
    pull_policy: String,
    resources: serde_json::Value,
    /// The template's environment (its `env` entries as written): settings of every waypoint,
    /// such as tracing's collector (`WEFT_OTLP_ENDPOINT`). The variables the control plane
    /// sets itself are not taken from it.
    env: Vec<serde_json::Value>,
}

/// The waypoint's image when neither the flag nor the template names one.
pub const DEFAULT_IMAGE: &str = "weft/waypoint";

/// The template's `waypoint` container, read at each reconcile (an edit reaches every waypoint
/// within a tick). Without the template or that container: the flag's image or
/// [`DEFAULT_IMAGE`], no resources, and a warning. A template that cannot be read (RBAC)
/// fails the reconcile, which leaves the waypoint's Deployment as it is.
async fn container(client: &kube::Client, settings: &Settings) -> Result<Container, kube::Error> {
    let (namespace, name) = &settings.template;
    let template = Api::<PodTemplate>::namespaced(client.clone(), namespace).get_opt(name).await?;
    if template.is_none() {
        tracing::warn!(%namespace, %name, "no waypoint PodTemplate (manifests/waypoint.yaml): waypoints get no resources and the default image");
    }
    Ok(from_template(template.as_ref(), settings.image.as_deref()))
}

/// The flag's image (`image`) wins over the template's, which wins over [`DEFAULT_IMAGE`];
/// resources and environment are the template's.
fn from_template(template: Option<&PodTemplate>, image: Option<&str>) -> Container {
    let container = template
        .and_then(|template| template.template.as_ref()?.spec.as_ref())
        .and_then(|spec| spec.containers.iter().find(|container| container.name == "waypoint"));
    let templated = container.and_then(|container| container.image.as_deref());
    Container {
        image: image.or(templated).unwrap_or(DEFAULT_IMAGE).to_owned(),
        pull_policy: container
            .and_then(|container| container.image_pull_policy.clone())
            .unwrap_or_else(|| "IfNotPresent".to_owned()),
        resources: container
            .and_then(|container| container.resources.as_ref())
            .and_then(|resources| serde_json::to_value(resources).ok())
            .unwrap_or_else(|| json!({})),
        env: environment(container.and_then(|container| container.env.as_deref()).unwrap_or_default()),
    }
}

/// The template's variables a waypoint's container can take: those with a value or a field
/// of its own pod (a Secret or ConfigMap would be looked for in the Gateway's namespace, a
/// resource field in a container of another pod: passed over, with a warning), once each, the
/// last of a name winning as the kubelet reads a list (server-side apply refuses a list
/// holding a name twice, which would stop every waypoint's reconcile).
fn environment(variables: &[k8s_openapi::api::core::v1::EnvVar]) -> Vec<serde_json::Value> {
    let mut taken: Vec<serde_json::Value> = Vec::new();
    for variable in variables {
        let own_field = variable.value_from.as_ref().is_some_and(|from| {
            from.field_ref.is_some()
                && from.config_map_key_ref.is_none()
                && from.secret_key_ref.is_none()
                && from.resource_field_ref.is_none()
        });
        if variable.value_from.is_some() && !own_field {
            tracing::warn!(name = %variable.name, "waypoint PodTemplate: only a value or a fieldRef is passed to waypoints; variable left out");
            continue;
        }
        let Ok(value) = serde_json::to_value(variable) else { continue };
        taken.retain(|earlier| earlier["name"] != value["name"]);
        taken.push(value);
    }
    taken
}

/// The waypoint's Deployment: not captured itself, its identity its own service account, its
/// token for the CA, the mesh root from the ConfigMap of its namespace.
fn deployment(
    name: &str,
    metadata: &serde_json::Value,
    settings: &Settings,
    container: &Container,
) -> serde_json::Value {
    let field = |path: &str| json!({ "valueFrom": { "fieldRef": { "fieldPath": path } } });
    let mut env: Vec<serde_json::Value> = [
        ("POD_NAME", field("metadata.name")),
        ("POD_NAMESPACE", field("metadata.namespace")),
        ("NODE_NAME", field("spec.nodeName")),
        ("INSTANCE_IP", field("status.podIP")),
        ("SERVICE_ACCOUNT", field("spec.serviceAccountName")),
    ]
    .into_iter()
    .map(|(key, mut value)| {
        value["name"] = json!(key);
        value
    })
    .collect();
    for (key, value) in [
        ("GATEWAY_NAME", name),
        ("WEFT_XDS_ADDRESS", &settings.control_address),
        ("WEFT_CA_ADDRESS", &settings.control_address),
        ("WEFT_CA_ROOT_FILE", "/var/run/weft/root/root-cert.pem"),
        ("WEFT_TOKEN_FILE", "/var/run/weft/token/istio-token"),
    ] {
        env.push(json!({ "name": key, "value": value }));
    }
    let own: Vec<serde_json::Value> = env.iter().map(|variable| variable["name"].clone()).collect();
    env.extend(container.env.iter().filter(|variable| !own.contains(&variable["name"])).cloned());
    let labels = json!({ GATEWAY_NAME_LABEL: name, "weft.dev/dataplane-mode": "none" });
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "selector": { "matchLabels": { GATEWAY_NAME_LABEL: name } },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "serviceAccountName": name,
                    // The Pod Security Standards' `restricted` profile, which many namespaces
                    // enforce: a pod short of it is never created, and the Service's traffic
                    // would meet a waypoint that never comes.
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [{
                        "name": "waypoint",
                        "image": container.image,
                        "imagePullPolicy": container.pull_policy,
                        "resources": container.resources,
                        "command": ["weft-waypoint"],
                        "env": env,
                        "ports": [
                            { "name": "mesh", "containerPort": HBONE_PORT },
                            { "name": "http-metrics", "containerPort": 15020 },
                        ],
                        "readinessProbe": { "httpGet": { "path": "/healthz/ready", "port": 15021 }, "periodSeconds": 5 },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            { "name": "root", "mountPath": "/var/run/weft/root", "readOnly": true },
                            { "name": "token", "mountPath": "/var/run/weft/token", "readOnly": true },
                        ],
                    }],
                    "volumes": [
                        { "name": "root", "configMap": { "name": ROOT_CONFIG_MAP,
                            "items": [{ "key": ROOT_CONFIG_MAP_KEY, "path": "root-cert.pem" }] } },
                        { "name": "token", "projected": { "sources": [{ "serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token" } }] } },
                    ],
                },
            },
        },
    })
}

/// The Gateway's status: accepted (its class is ours, and its objects could be deployed: else
/// `conflict` says why not), programmed once a pod is available. A condition keeps its
/// transition time while its status stays.
async fn report(
    client: &kube::Client,
    gateway: &Gateway,
    available: Result<i32, String>,
) -> Result<(), kube::Error> {
    let generation = gateway.metadata.generation;
    let current: BTreeMap<String, Condition> = gateway
        .status
        .iter()
        .flat_map(|status| status.conditions.iter().cloned())
        .map(|condition| (condition.type_.clone(), condition))
        .collect();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_owned();
        let since = current.get(type_).filter(|old| old.status == status).map_or_else(
            || Time(k8s_openapi::jiff::Timestamp::now()),
            |old| old.last_transition_time.clone(),
        );
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let conditions = match available {
        Err(conflict) => [
            condition("Accepted", false, "InvalidParameters", conflict.clone()),
            condition("Programmed", false, "Invalid", conflict),
        ],
        Ok(available) if available > 0 => [
            condition("Accepted", true, "Accepted", "a waypoint of Weft's".into()),
            condition("Programmed", true, "Programmed", format!("{available} waypoint pod(s) available")),
        ],
        Ok(_) => [
            condition("Accepted", true, "Accepted", "a waypoint of Weft's".into()),
            condition("Programmed", false, "Pending", "no waypoint pod is available yet".into()),
        ],
    };
    let status = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "status": { "conditions": conditions },
    });
    Api::<Gateway>::namespaced(client.clone(), &gateway.namespace().unwrap_or_default())
        .patch_status(&gateway.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&status))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_waypoint_container_gives_image_pull_policy_resources_and_environment_unless_a_flag_names_the_image()
     {
        let template: PodTemplate = serde_json::from_value(json!({
            "metadata": { "name": "weft-waypoint", "namespace": "weft-system" },
            "template": { "spec": { "containers": [
                { "name": "other", "image": "not/this" },
                { "name": "waypoint", "image": "registry.example/waypoint:1.2", "imagePullPolicy": "Always",
                  "resources": { "requests": { "cpu": "100m" }, "limits": { "memory": "256Mi" } },
                  "env": [
                      { "name": "WEFT_OTLP_ENDPOINT", "value": "http://old-collector:4317" },
                      { "name": "GATEWAY_NAME", "value": "not-its-own" },
                      { "name": "WEFT_OTLP_ENDPOINT", "value": "http://collector.observability:4317" },
                      { "name": "NODE_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.hostIP" } } },
                      { "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "weft-secrets", "key": "token" } } },
                  ] },
            ] } },
        }))
        .unwrap();
        let container = from_template(Some(&template), None);
        assert_eq!(
            (container.image.as_str(), container.pull_policy.as_str()),
            ("registry.example/waypoint:1.2", "Always")
        );
        assert_eq!(
            container.resources,
            json!({ "requests": { "cpu": "100m" }, "limits": { "memory": "256Mi" } })
        );
        // Its environment reaches the Deployment, but for what the control plane sets itself.
        let settings = Settings {
            image: None,
            template: ("weft-system".into(), "weft-waypoint".into()),
            control_address: "https://weft-control.weft-system:15012".into(),
        };
        let deployed = deployment("waypoint", &json!({}), &settings, &container);
        let env = &deployed["spec"]["template"]["spec"]["containers"][0]["env"];
        let named = |name: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .filter(|variable| variable["name"] == name)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            named("WEFT_OTLP_ENDPOINT"),
            [json!({ "name": "WEFT_OTLP_ENDPOINT", "value": "http://collector.observability:4317" })]
        );
        assert_eq!(named("GATEWAY_NAME"), [json!({ "name": "GATEWAY_NAME", "value": "waypoint" })]);
        assert_eq!(named("NODE_IP").len(), 1, "a field of its own pod");
        assert!(named("TOKEN").is_empty(), "a Secret of weft-system's is none of the Gateway's namespace");
        let fallback = Container {
            image: "weft/waypoint".into(),
            pull_policy: "IfNotPresent".into(),
            resources: json!({}),
            env: Vec::new(),
        };
        assert_eq!(from_template(None, None), fallback);
        // An image given on the command line wins; the template still gives the rest.
        let flagged = from_template(Some(&template), Some("mirror.example/waypoint:1.2"));
        assert_eq!(
            (flagged.image.as_str(), flagged.pull_policy.as_str()),
            ("mirror.example/waypoint:1.2", "Always")
        );
        let mut unnamed = template;
        unnamed.template.as_mut().unwrap().spec.as_mut().unwrap().containers.remove(1);
        assert_eq!(from_template(Some(&unnamed), None), fallback, "only the container named waypoint counts");
    }
}
