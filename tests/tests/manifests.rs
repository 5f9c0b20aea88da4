//! The deployment manifests in `manifests/`: offline, every object is of a kind Weft deploys and
//! survives a round trip through its k8s-openapi type unchanged (a misspelt or unknown field
//! would vanish), every container asks for resources, every image is set in kustomization.yaml,
//! and ztunnel's grace period outlasts its drain; then against the real API server, what
//! `kubectl apply --dry-run=server` does: a dry-run create of every object, in order, after the
//! Namespace itself is created for real (a dry run would not keep it, and the objects in it could
//! not be checked without it), and nothing that was sent missing from what came back.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Namespace, PodSpec, PodTemplate, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    serde::{Deserialize, Serialize, de::DeserializeOwned},
};
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind, PostParams},
    discovery::{self, Scope},
};
use serde_json::Value;
use weft_tests::cluster::Cluster;

/// One YAML document of a manifest file.
#[derive(Debug)]
struct Document {
    file: String,
    value: Value,
}

impl Document {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("<no kind>")
    }

    /// `file: Kind name`, for failure messages.
    fn describe(&self) -> String {
        let name = self.value["metadata"]["name"].as_str().unwrap_or("<no name>");
        format!("{}: {} {name}", self.file, self.kind())
    }

    /// The pod spec of a workload's template; `None` for other kinds.
    fn pod_spec(&self) -> Option<PodSpec> {
        let template = match self.kind() {
            "Deployment" => typed::<Deployment>(self).spec.template,
            "DaemonSet" => typed::<DaemonSet>(self).spec.template,
            "PodTemplate" => typed::<PodTemplate>(self).template.unwrap_or_default(),
            _ => return None,
        };
        Some(template.spec.unwrap_or_else(|| panic!("{}: a pod template without a spec", self.describe())))
    }
}

fn typed<K: DeserializeOwned>(document: &Document) -> K {
    serde_json::from_value(document.value.clone())
        .unwrap_or_else(|error| panic!("{}: not a valid object: {error}", document.describe()))
}

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn read(file: &str) -> String {
    let path = manifests_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn kustomization() -> Value {
    serde_yaml::from_str(&read("kustomization.yaml"))
        .unwrap_or_else(|error| panic!("parsing kustomization.yaml: {error}"))
}

/// The files kustomization.yaml lists under `resources:`, in order.
fn resource_files() -> Vec<String> {
    let kustomization = kustomization();
    let resources = kustomization["resources"].as_array().expect("kustomization.yaml lists resources");
    resources.iter().map(|file| file.as_str().expect("a resource is a file name").to_owned()).collect()
}

/// Every document of every resource file, in order; empty documents are skipped.
fn documents() -> Vec<Document> {
    let mut documents = Vec::new();
    for file in resource_files() {
        let text = read(&file);
        for yaml in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(yaml).unwrap_or_else(|error| panic!("parsing {file}: {error}"));
            if !value.is_null() {
                documents.push(Document { file: file.clone(), value });
            }
        }
    }
    assert!(!documents.is_empty(), "the manifests hold no object");
    documents
}

/// `value` read as a `K` and written back.
fn round_trip<K: Serialize + DeserializeOwned>(value: &Value) -> Result<Value, serde_json::Error> {
    serde_json::to_value(serde_json::from_value::<K>(value.clone())?)
}

/// Whether what was read back may hold fields that were not written (an API server's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    Forbidden,
    Allowed,
}

/// The first place, as a JSON pointer, where `read` is not what was `written`.
fn difference(at: &str, written: &Value, read: &Value, extra: Extra) -> Option<String> {
    match (written, read) {
        (Value::Object(written_fields), Value::Object(read_fields)) => {
            let lost = written_fields.iter().find_map(|(key, written_value)| {
                let at = format!("{at}/{key}");
                match read_fields.get(key) {
                    Some(read_value) => difference(&at, written_value, read_value, extra),
                    None => Some(format!("{at}: {written_value} was dropped (misspelt, or unknown here)")),
                }
            });
            lost.or_else(|| match extra {
                Extra::Allowed => None,
                Extra::Forbidden => read_fields
                    .iter()
                    .find(|(key, _)| !written_fields.contains_key(key.as_str()))
                    .map(|(key, read_value)| format!("{at}/{key}: not written, read back as {read_value}")),
            })
        }
        (Value::Array(written_items), Value::Array(read_items))
            if written_items.len() == read_items.len() =>
        {
            written_items.iter().zip(read_items).enumerate().find_map(|(index, (written_item, read_item))| {
                difference(&format!("{at}/{index}"), written_item, read_item, extra)
            })
        }
        // A schema's `minimum` and `maximum` are doubles: 599 reads back as 599.0, the same.
        (Value::Number(written_number), Value::Number(read_number))
            if written_number.as_f64() == read_number.as_f64() =>
        {
            None
        }
        _ if written == read => None,
        _ => Some(format!("{at}: written {written}, read back as {read}")),
    }
}

#[test]
fn every_manifest_is_a_known_object_without_unknown_fields() {
    // Every YAML file in manifests/ is deployed: none forgotten in kustomization.yaml.
    let listed: BTreeSet<String> = resource_files().into_iter().collect();
    for entry in std::fs::read_dir(manifests_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(listed.contains(&name), "manifests/{name} is not listed in kustomization.yaml");
        }
    }

    for document in documents() {
        let value = &document.value;
        let read_back = match document.kind() {
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(value),
            "Namespace" => round_trip::<Namespace>(value),
            "ConfigMap" => round_trip::<ConfigMap>(value),
            "ServiceAccount" => round_trip::<ServiceAccount>(value),
            "ClusterRole" => round_trip::<ClusterRole>(value),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(value),
            "Role" => round_trip::<Role>(value),
            "RoleBinding" => round_trip::<RoleBinding>(value),
            "Deployment" => round_trip::<Deployment>(value),
            "Service" => round_trip::<Service>(value),
            "DaemonSet" => round_trip::<DaemonSet>(value),
            "PodTemplate" => round_trip::<PodTemplate>(value),
            other => panic!("{}: kind {other} is not one Weft deploys", document.describe()),
        }
        .unwrap_or_else(|error| panic!("{}: not a valid object: {error}", document.describe()));
        if let Some(found) = difference("", value, &read_back, Extra::Forbidden) {
            panic!("{}: {found}", document.describe());
        }
    }
}

#[test]
fn every_container_asks_for_resources_and_has_its_image_set_in_the_kustomization() {
    let kustomization = kustomization();
    let images: BTreeSet<&str> = kustomization["images"]
        .as_array()
        .expect("kustomization.yaml sets images")
        .iter()
        .map(|image| image["name"].as_str().expect("an image entry has a name"))
        .collect();
    let mut containers = 0;
    for document in documents() {
        let Some(pod) = document.pod_spec() else { continue };
        for container in pod.init_containers.iter().flatten().chain(&pod.containers) {
            containers += 1;
            let what = format!("{}, container {}", document.describe(), container.name);
            let resources = container.resources.as_ref();
            let requests = resources.and_then(|resources| resources.requests.as_ref());
            for resource in ["cpu", "memory"] {
                assert!(
                    requests.is_some_and(|requests| requests.contains_key(resource)),
                    "{what}: no {resource} request"
                );
            }
            let limits = resources.and_then(|resources| resources.limits.as_ref());
            assert!(limits.is_some_and(|limits| limits.contains_key("memory")), "{what}: no memory limit");
            assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"), "{what}: pull policy");
            let image = container.image.as_deref().unwrap_or_else(|| panic!("{what}: no image"));
            assert!(
                images.contains(image_name(image)),
                "{what}: image {image} is not under `images:` in kustomization.yaml ({images:?})"
            );
        }
    }
    assert!(
        containers >= 4,
        "expected the control plane, agent, ztunnel and waypoint containers, found {containers}"
    );
}

/// An image reference without its tag or digest: the name kustomize's `images:` matches.
fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        // A colon before the last slash is a registry's port, not a tag.
        Some((name, tag)) if !tag.contains('/') => name,
        _ => image,
    }
}

#[test]
fn ztunnel_is_given_longer_to_stop_than_it_drains() {
    let document = documents()
        .into_iter()
        .find(|document| {
            document.kind() == "DaemonSet" && document.value["metadata"]["name"] == "weft-ztunnel"
        })
        .expect("a DaemonSet weft-ztunnel");
    let pod = document.pod_spec().unwrap();
    let container = pod.containers.iter().find(|container| container.name == "weft-ztunnel").unwrap();
    let args = container.args.clone().unwrap_or_default();
    // `--drain-seconds N` or `--drain-seconds=N`.
    let drain: i64 = args
        .iter()
        .enumerate()
        .find_map(|(index, arg)| match arg.strip_prefix("--drain-seconds") {
            Some("") => args.get(index + 1).map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        })
        .expect("ztunnel's args set --drain-seconds")
        .parse()
        .expect("--drain-seconds is a whole number of seconds");
    let grace =
        pod.termination_grace_period_seconds.expect("ztunnel's pod sets terminationGracePeriodSeconds");
    assert!(grace > drain, "terminationGracePeriodSeconds {grace} must exceed --drain-seconds {drain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_every_manifest_as_written() {
    let cluster = Cluster::start(1).await.unwrap();
    let client = cluster.client();
    let (namespaces, others): (Vec<Document>, Vec<Document>) =
        documents().into_iter().partition(|document| document.kind() == "Namespace");
    assert!(!namespaces.is_empty(), "the manifests create no Namespace");
    for document in namespaces.iter().chain(&others) {
        let object: DynamicObject = serde_json::from_value(document.value.clone())
            .unwrap_or_else(|error| panic!("{}: {error}", document.describe()));
        let types =
            object.types.clone().unwrap_or_else(|| panic!("{}: no apiVersion or kind", document.describe()));
        let gvk = GroupVersionKind::try_from(&types)
            .unwrap_or_else(|error| panic!("{}: {error}", document.describe()));
        let (resource, capabilities) = discovery::pinned_kind(&client, &gvk).await.unwrap_or_else(|error| {
            panic!("{}: this API server does not serve it: {error}", document.describe())
        });
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => {
                let namespace = object.metadata.namespace.as_deref().unwrap_or_else(|| {
                    panic!(
                        "{}: namespaced, but names no namespace (kustomization sets none)",
                        document.describe()
                    )
                });
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let params = PostParams { dry_run: gvk.kind != "Namespace", ..PostParams::default() };
        let created = api
            .create(&params, &object)
            .await
            .unwrap_or_else(|error| panic!("{}: the API server refused it: {error}", document.describe()));
        // An API server drops fields it does not know without a word; what came back must hold
        // everything that was sent, beside the defaults it added.
        let returned = serde_json::to_value(&created).unwrap();
        if let Some(found) = difference("", &document.value, &returned, Extra::Allowed) {
            panic!("{}: the API server did not keep it as written: {found}", document.describe());
        }
    }
}
