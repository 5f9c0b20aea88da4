//! What the mesh says about itself, gathered from its endpoints and the Kubernetes API and
//! shaped as JSON values (what `-o json` prints) that [`crate::output`] can also tabulate.
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use weft_api::enrollment::{AMBIENT, CAPTURED, ENABLED, LABEL, Labels};

use crate::endpoint::Endpoint;

mod request;
mod waypoints;

pub use request::Probe;

/// The namespace Weft runs in, and the labels of its pods.
pub const SYSTEM_NAMESPACE: &str = "weft-system";
pub const CONTROL_LABEL: &str = "app.kubernetes.io/name=weft-control";
pub const AGENT_LABEL: &str = "app.kubernetes.io/name=weft-agent";
pub const ZTUNNEL_LABEL: &str = "app.kubernetes.io/name=weft-ztunnel";
/// The control plane's CA Secret.
pub const CA_SECRET: &str = "weft-ca";
/// The localhost-only admin ports (`/config_dump`, `/metrics`, `/healthz/ready`) in those pods,
/// reached by port-forward. The agent runs in the node's network namespace, hence its own port.
pub const CONTROL_ADMIN_PORT: u16 = 15000;
pub const AGENT_ADMIN_PORT: u16 = 15031;
pub const ZTUNNEL_ADMIN_PORT: u16 = 15000;

/// A node's endpoints.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub agent: Option<Endpoint>,
    pub ztunnel: Option<Endpoint>,
}

/// Everything the CLI can reach.
pub struct Mesh {
    pub client: Option<kube::Client>,
    /// Given, or found by [`Mesh::discover`].
    pub control: Option<Endpoint>,
    pub nodes: Vec<Node>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("control", &self.control)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Fills in, from Weft's pods in `weft-system`, the control plane's admin port (if not given)
    /// and each node's agent and proxy admin ports (those not given explicitly). Each kind is
    /// looked for on its own: what could not be listed is reported, the rest still found.
    pub async fn discover(&mut self) -> anyhow::Result<()> {
        let Some(client) = &self.client else { return Ok(()) };
        let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        let mut failures = Vec::new();
        if self.control.is_none() {
            match running(&pods, CONTROL_LABEL).await {
                Ok(found) => {
                    if let Some((name, _)) = found.first() {
                        self.control = Some(Endpoint::pod(SYSTEM_NAMESPACE, name, CONTROL_ADMIN_PORT));
                    }
                }
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        for (label, port, is_agent) in
            [(AGENT_LABEL, AGENT_ADMIN_PORT, true), (ZTUNNEL_LABEL, ZTUNNEL_ADMIN_PORT, false)]
        {
            let found = match running(&pods, label).await {
                Ok(found) => found,
                Err(error) => {
                    failures.push(format!("{error:#}"));
                    continue;
                }
            };
            for (name, node) in found {
                let index = self.node_index(&node);
                let slot =
                    if is_agent { &mut self.nodes[index].agent } else { &mut self.nodes[index].ztunnel };
                slot.get_or_insert_with(|| Endpoint::pod(SYSTEM_NAMESPACE, &name, port));
            }
        }
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
        Ok(())
    }

    /// The index of node `name` in [`Mesh::nodes`], added if new.
    pub fn node_index(&mut self, name: &str) -> usize {
        match self.nodes.iter().position(|node| node.name == name) {
            Some(index) => index,
            None => {
                self.nodes.push(Node { name: name.to_owned(), agent: None, ztunnel: None });
                self.nodes.len() - 1
            }
        }
    }

    /// The control plane's endpoint, or why there is none.
    fn control(&self) -> anyhow::Result<&Endpoint> {
        self.control.as_ref().context(
            "no control plane endpoint: give --control, or a kubeconfig of a cluster where weft-control runs",
        )
    }

    /// `path` from `endpoint` as JSON; an unreachable endpoint is an error naming it.
    async fn json(&self, endpoint: &Endpoint, path: &str) -> anyhow::Result<Value> {
        let answer = endpoint.get(self.client.as_ref(), path).await?;
        anyhow::ensure!(
            answer.status == 200,
            "{endpoint} answered {} to {path}: {}",
            answer.status,
            answer.body.trim()
        );
        serde_json::from_str(&answer.body).with_context(|| format!("{endpoint}{path} is not JSON"))
    }

    async fn ready(&self, endpoint: &Endpoint) -> Value {
        match endpoint.get(self.client.as_ref(), "/healthz/ready").await {
            Ok(answer) => json!(answer.status == 200),
            Err(error) => json!(format!("unreachable: {error:#}")),
        }
    }

    /// The control plane and every node: readiness, versions, proxies, pods.
    pub async fn status(&self) -> anyhow::Result<Value> {
        let control = match self.control() {
            Ok(endpoint) => self.control_status(endpoint).await,
            // The nodes still say what they know.
            Err(error) => json!({ "ready": format!("{error:#}") }),
        };

        let mut nodes = Vec::new();
        for node in &self.nodes {
            let mut row = json!({ "node": node.name });
            if let Some(agent) = &node.agent {
                row["agent_ready"] = self.ready(agent).await;
                if let Ok(dump) = self.json(agent, "/config_dump").await {
                    let pods: Vec<&Value> =
                        dump["pods"].as_object().map(|pods| pods.values().collect()).unwrap_or_default();
                    row["enrolled"] = json!(pods.iter().filter(|pod| pod["state"] == "enrolled").count());
                    row["pending"] = json!(pods.iter().filter(|pod| pod["state"] == "pending").count());
                }
            }
            if let Some(ztunnel) = &node.ztunnel {
                match self.json(ztunnel, "/config_dump").await {
                    Ok(dump) => {
                        row["ztunnel_ready"] = dump["ready"].clone();
                        row["pods_served"] = json!(dump["pods"].as_array().map_or(0, Vec::len));
                        row["certificates"] = json!(dump["certificates"].as_array().map_or(0, Vec::len));
                    }
                    Err(error) => row["ztunnel_ready"] = json!(format!("unreachable: {error:#}")),
                }
            }
            nodes.push(row);
        }
        Ok(json!({ "control": control, "nodes": nodes }))
    }

    /// The control plane's row of [`Mesh::status`].
    async fn control_status(&self, endpoint: &Endpoint) -> Value {
        let dump = self.json(endpoint, "/config_dump").await;
        let metrics = endpoint
            .get(self.client.as_ref(), "/metrics")
            .await
            .map(|answer| answer.body)
            .unwrap_or_default();
        json!({
            "ready": self.ready(endpoint).await,
            "config_version": dump.as_ref().ok().and_then(|dump| dump["version"].as_u64()),
            "workloads": dump.as_ref().ok().and_then(|dump| dump["workloads"].as_array().map(Vec::len)),
            "services": dump.as_ref().ok().and_then(|dump| dump["services"].as_array().map(Vec::len)),
            "connected_proxies": metric(&metrics, "weft_control_xds_connected_proxies"),
        })
    }

    /// Every workload the control plane serves.
    pub async fn workloads(&self) -> anyhow::Result<Value> {
        Ok(self.json(self.control()?, "/config_dump").await?["workloads"].clone())
    }

    /// Every service the control plane serves.
    pub async fn services(&self) -> anyhow::Result<Value> {
        Ok(self.json(self.control()?, "/config_dump").await?["services"].clone())
    }

    /// Every authorization policy and request authentication (action `JWT`) as the control
    /// plane understood it: whom it applies to, whether proxies enforce it, and what of it they
    /// cannot.
    pub async fn policies(&self) -> anyhow::Result<Value> {
        let dump = self.json(self.control()?, "/config_dump").await?;
        let all = |key: &str| dump[key].as_array().cloned().unwrap_or_default();
        let rows = all("policies")
            .into_iter()
            .chain(all("request_authentications"))
            .map(|policy| {
                let mut row = policy.clone();
                let applies_to = match (policy["served"].as_bool(), policy["scope"].as_str()) {
                    (Some(false), _) => "nothing (not enforced)".to_owned(),
                    (_, Some("GLOBAL")) => "every workload".to_owned(),
                    (_, Some("NAMESPACE")) => {
                        format!("namespace {}", policy["namespace"].as_str().unwrap_or("?"))
                    }
                    _ => match policy["selects"].as_array().map(Vec::as_slice) {
                        Some([]) | None => "no pod yet".to_owned(),
                        Some(pods) => pods.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
                    },
                };
                row["applies_to"] = json!(applies_to);
                // Notes hold commas: one cell, separated so a table still reads.
                let notes: Vec<&str> =
                    policy["notes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                row["not_enforced"] = json!(if notes.is_empty() { "-".to_owned() } else { notes.join("; ") });
                row
            })
            .collect();
        Ok(Value::Array(rows))
    }

    /// Every traffic policy (fault injection, rate limit, circuit breaker, load balancer) as the control plane
    /// understood it: per target, applied or why not.
    pub async fn traffic_policies(&self) -> anyhow::Result<Value> {
        let dump = self.json(self.control()?, "/config_dump").await?;
        let rows = dump["traffic_policies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|policy| {
                let mut row = policy.clone();
                let targets: Vec<String> = policy["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|target| {
                        let (kind, name) =
                            (target["kind"].as_str().unwrap_or("?"), target["name"].as_str().unwrap_or("?"));
                        if target["accepted"] == true {
                            format!("{kind} {name}: applied")
                        } else {
                            let (reason, message) = (
                                target["reason"].as_str().unwrap_or("?"),
                                target["message"].as_str().unwrap_or(""),
                            );
                            format!("{kind} {name}: {reason} ({message})")
                        }
                    })
                    .collect();
                row["applies_to"] = json!(targets.join("; "));
                row
            })
            .collect();
        Ok(Value::Array(rows))
    }

    /// Every node proxy's `/config_dump`, by node name; an error if no proxy endpoint is known.
    async fn ztunnel_dumps(&self) -> anyhow::Result<Vec<(&str, Value)>> {
        let mut dumps = Vec::new();
        for node in &self.nodes {
            let Some(ztunnel) = &node.ztunnel else { continue };
            dumps.push((node.name.as_str(), self.json(ztunnel, "/config_dump").await?));
        }
        anyhow::ensure!(
            !dumps.is_empty(),
            "no node proxy found (give a kubeconfig of a cluster where Weft runs, or --ztunnel NODE=ENDPOINT)"
        );
        Ok(dumps)
    }

    /// The certificates each node's proxy holds.
    pub async fn certs(&self) -> anyhow::Result<Value> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let mut rows = Vec::new();
        for (node, dump) in self.ztunnel_dumps().await? {
            for cert in dump["certificates"].as_array().into_iter().flatten() {
                let expires = cert["not_after"].as_u64().unwrap_or(0);
                rows.push(json!({
                    "node": node,
                    "identity": cert["identity"],
                    "serial": cert["serial"],
                    "expires_in": human(expires.saturating_sub(now)),
                    "not_after": expires,
                }));
            }
        }
        Ok(Value::Array(rows))
    }

    /// The connections each node's proxy carries now (outbound, as the source's proxy sees them).
    pub async fn connections(&self) -> anyhow::Result<Value> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let mut rows = Vec::new();
        for (node, dump) in self.ztunnel_dumps().await? {
            for open in dump["connections"].as_array().into_iter().flatten() {
                let mut row = open.clone();
                row["node"] = json!(node);
                row["age"] = json!(human(now.saturating_sub(open["since"].as_u64().unwrap_or(now))));
                rows.push(row);
            }
        }
        Ok(Value::Array(rows))
    }

    /// Why pod `namespace/name` is or is not in the mesh, one finding per step.
    pub async fn check(&self, namespace: &str, name: &str) -> anyhow::Result<Value> {
        let client = self.client.as_ref().context("check needs the Kubernetes API (--kubeconfig)")?;
        let pod = Api::<Pod>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .with_context(|| format!("pod {namespace}/{name}"))?;
        let ns = Api::<Namespace>::all(client.clone()).get(namespace).await?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone()).unwrap_or_default();
        let label = |labels: Option<&std::collections::BTreeMap<String, String>>| {
            labels.and_then(|labels| labels.get(LABEL)).cloned()
        };
        let (pod_label, ns_label) = (label(pod.metadata.labels.as_ref()), label(ns.metadata.labels.as_ref()));
        let mut findings = vec![finding(
            "labelled",
            Labels::Weft.labelled(pod.metadata.labels.as_ref(), ns.metadata.labels.as_ref()),
            format!(
                "pod label {LABEL}={}, namespace label {}",
                pod_label.as_deref().unwrap_or("(none)"),
                ns_label.as_deref().unwrap_or("(none)")
            ),
        )];
        findings.push(if Labels::Weft.captured(pod.metadata.annotations.as_ref()) {
            finding("reported", true, format!("its agent reports it captured ({CAPTURED}={ENABLED})"))
        } else {
            finding(
                "reported",
                false,
                format!("no {CAPTURED}={ENABLED} from its agent: peers reach it in plaintext until it captures the pod"),
            )
        });
        let workload = self.workloads().await.ok().and_then(|workloads| {
            workloads.as_array()?.iter().find(|workload| workload["uid"] == uid.as_str()).cloned()
        });
        findings.push(match &workload {
            Some(workload) => finding(
                "configured",
                workload["protocol"] == "HBONE",
                format!(
                    "the control plane tells proxies to reach it over {}",
                    workload["protocol"].as_str().unwrap_or("?")
                ),
            ),
            None => finding(
                "configured",
                false,
                "the control plane does not list it (no address yet, or host network)".into(),
            ),
        });
        let node_endpoints = self.nodes.iter().find(|known| known.name == node);
        match node_endpoints.and_then(|known| known.agent.as_ref()) {
            Some(agent) => match self.json(agent, "/config_dump").await {
                Ok(dump) => {
                    let report = &dump["pods"][&uid];
                    let preexisting = report["preexisting_connections"].as_u64().unwrap_or(0);
                    if preexisting > 0 {
                        findings.push(finding(
                            "preexisting",
                            false,
                            format!(
                                "{preexisting} connection(s) it had open when captured stay outside the mesh until they close"
                            ),
                        ));
                    }
                    findings.push(match report["state"].as_str() {
                        Some("enrolled") => {
                            finding("captured", true, format!("the agent on {node} enrolled it"))
                        }
                        Some(_) => finding(
                            "captured",
                            false,
                            format!(
                                "{} failed: {}",
                                report["stage"].as_str().unwrap_or("?"),
                                report["error"].as_str().unwrap_or("?")
                            ),
                        ),
                        None => finding("captured", false, format!("the agent on {node} does not hold it")),
                    });
                }
                Err(error) => findings.push(finding("captured", false, format!("{error:#}"))),
            },
            None => findings.push(finding("captured", false, format!("no agent endpoint for node {node}"))),
        }
        if let Some(ztunnel) = node_endpoints.and_then(|known| known.ztunnel.as_ref()) {
            // The pod's identity in whatever trust domain the mesh uses.
            let service_account = pod
                .spec
                .as_ref()
                .and_then(|spec| spec.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let workload_path = format!("/ns/{namespace}/sa/{service_account}");
            match self.json(ztunnel, "/config_dump").await {
                Ok(dump) => {
                    let entry = dump["pods"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|served| served["uid"] == uid.as_str());
                    findings.push(finding(
                        "proxied",
                        entry.is_some(),
                        format!(
                            "the proxy on {node} {} its listeners",
                            if entry.is_some() { "runs" } else { "does not run" }
                        ),
                    ));
                    // The policies that proxy applies to the pod, as it decides them.
                    let names = entry.and_then(|entry| entry["policies"].as_array());
                    let waiting = entry.and_then(|entry| entry["waiting_for_policy"].as_str());
                    if let Some(missing) = waiting {
                        findings.push(finding(
                            "policies",
                            false,
                            format!(
                                "its proxy waits for policy {missing}: every connection to it is refused until it arrives"
                            ),
                        ));
                    } else if let (Some(names), Ok(policies)) = (names, self.policies().await) {
                        let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
                        findings.push(finding("policies", true, deciding_policies(&policies, &names)));
                    }
                    let cert = dump["certificates"].as_array().into_iter().flatten().find(|cert| {
                        cert["identity"].as_str().is_some_and(|identity| {
                            identity.starts_with("spiffe://") && identity.ends_with(&workload_path)
                        })
                    });
                    findings.push(match cert {
                        Some(cert) => finding(
                            "certificate",
                            true,
                            format!(
                                "{}, serial {}",
                                cert["identity"].as_str().unwrap_or("?"),
                                cert["serial"].as_str().unwrap_or("?")
                            ),
                        ),
                        None => finding(
                            "certificate",
                            false,
                            format!("no certificate for spiffe://…{workload_path} on {node}"),
                        ),
                    });
                }
                Err(error) => findings.push(finding("proxied", false, format!("{error:#}"))),
            }
        }
        Ok(Value::Array(findings))
    }

    /// Asks the CA for a root rotation: a new value of its Secret's request annotation.
    pub async fn rotate_root(&self) -> anyhow::Result<Value> {
        let client = self.client.as_ref().context("rotate-root needs the Kubernetes API (--kubeconfig)")?;
        let requested =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs()).to_string();
        let patch = json!({ "metadata": { "annotations": { weft_api::ca::ROTATE_ROOT: requested } } });
        Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
            .patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .with_context(|| format!("annotating Secret {SYSTEM_NAMESPACE}/{CA_SECRET}"))?;
        Ok(json!({ "secret": format!("{SYSTEM_NAMESPACE}/{CA_SECRET}"), "requested": requested }))
    }

    /// Sets (or removes) the enrollment label on a namespace.
    pub async fn enroll(&self, namespace: &str, enroll: bool) -> anyhow::Result<Value> {
        let client = self.client.as_ref().context("enroll needs the Kubernetes API (--kubeconfig)")?;
        let value = if enroll { json!(AMBIENT) } else { Value::Null };
        let patch = json!({ "metadata": { "labels": { LABEL: value } } });
        Api::<Namespace>::all(client.clone())
            .patch(namespace, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .with_context(|| format!("labelling namespace {namespace}"))?;
        Ok(json!({ "namespace": namespace, "enrolled": enroll }))
    }
}

/// Weft's pods matching `label` that run and are not shutting down, newest first (during an
/// upgrade a node has two proxies for a while; the newer one serves): `(name, node)`.
async fn running(pods: &Api<Pod>, label: &str) -> anyhow::Result<Vec<(String, String)>> {
    let listed = pods
        .list(&ListParams::default().labels(label))
        .await
        .with_context(|| format!("listing Weft's pods ({label})"))?;
    let mut running: Vec<Pod> = listed
        .items
        .into_iter()
        .filter(|pod| {
            pod.status.as_ref().and_then(|status| status.phase.as_deref()) == Some("Running")
                && pod.metadata.deletion_timestamp.is_none()
        })
        .collect();
    running.sort_by(|a, b| b.metadata.creation_timestamp.cmp(&a.metadata.creation_timestamp));
    Ok(running.into_iter().filter_map(|pod| Some((pod.metadata.name?, pod.spec?.node_name?))).collect())
}

/// What the policies a node proxy applies to a pod mean together: `names` (`namespace/name`)
/// as the proxy's `config_dump` lists them — its own choice, the one its decisions use
/// (`weft_proxy::state::State::policies_for`) — with each one's action and notes from the
/// control plane's rows (of [`Mesh::policies`]).
fn deciding_policies(policies: &Value, names: &[&str]) -> String {
    let key = |policy: &Value| {
        format!("{}/{}", policy["namespace"].as_str().unwrap_or("?"), policy["name"].as_str().unwrap_or("?"))
    };
    let applying: Vec<&Value> = policies
        .as_array()
        .into_iter()
        .flatten()
        .filter(|policy| names.contains(&key(policy).as_str()))
        .collect();
    if applying.is_empty() {
        return "none apply: every peer may connect".into();
    }
    let named = |action: &str| -> Vec<String> {
        applying
            .iter()
            .filter(|policy| policy["action"] == action)
            .map(|policy| {
                format!(
                    "{}/{}",
                    policy["namespace"].as_str().unwrap_or("?"),
                    policy["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    let (allows, denies) = (named("ALLOW"), named("DENY"));
    let mut detail = Vec::new();
    if !denies.is_empty() {
        detail.push(format!("refused if any of DENY {} matches", denies.join(", ")));
    }
    detail.push(if allows.is_empty() {
        "otherwise allowed (no ALLOW applies)".to_owned()
    } else {
        format!("allowed only if one of ALLOW {} matches", allows.join(", "))
    });
    let noted = applying
        .iter()
        .filter(|policy| policy["notes"].as_array().is_some_and(|notes| !notes.is_empty()))
        .count();
    if noted > 0 {
        detail.push(format!("{noted} not enforced as written (weftctl policies)"));
    }
    detail.join("; ")
}

fn finding(check: &str, ok: bool, detail: String) -> Value {
    json!({ "check": check, "ok": ok, "detail": detail })
}

/// The value of an unlabelled Prometheus series (a gauge or counter: a whole number).
fn metric(text: &str, name: &str) -> Option<u64> {
    let value: f64 =
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())?;
    format!("{value:.0}").parse().ok()
}

/// `3h12m`, `45m`, `20s`.
fn human(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        _ => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_which_policies_decide_for_a_pod() {
        let policies = json!([
            { "namespace": "weft-system", "name": "mesh", "action": "DENY", "scope": "GLOBAL", "served": true, "selects": [], "notes": [] },
            { "namespace": "shop", "name": "web", "action": "ALLOW", "scope": "WORKLOAD_SELECTOR", "served": true, "selects": ["shop/web"], "notes": ["rule 0 dropped"] },
            { "namespace": "shop", "name": "db", "action": "ALLOW", "scope": "WORKLOAD_SELECTOR", "served": true, "selects": ["shop/db"], "notes": [] },
            { "namespace": "other", "name": "ns", "action": "ALLOW", "scope": "NAMESPACE", "served": true, "selects": [], "notes": [] },
            { "namespace": "shop", "name": "audit", "action": "", "scope": "", "served": false, "selects": [], "notes": ["AUDIT"] },
        ]);
        // As the pod's proxy lists them for shop/web: the mesh's and its own selector's.
        assert_eq!(
            deciding_policies(&policies, &["weft-system/mesh", "shop/web"]),
            "refused if any of DENY weft-system/mesh matches; allowed only if one of ALLOW shop/web matches; 1 not enforced as written (weftctl policies)"
        );
        assert_eq!(
            deciding_policies(&policies, &["weft-system/mesh", "other/ns"]),
            "refused if any of DENY weft-system/mesh matches; allowed only if one of ALLOW other/ns matches"
        );
        assert_eq!(deciding_policies(&policies, &[]), "none apply: every peer may connect");
    }

    #[test]
    fn reads_unlabelled_series_and_prints_durations() {
        let text = "# HELP x\nweft_control_xds_connected_proxies 2\nweft_control_xds_connected_proxies_x 9\n";
        assert_eq!(metric(text, "weft_control_xds_connected_proxies"), Some(2));
        assert_eq!(metric(text, "absent"), None);
        assert_eq!(
            (human(20), human(125), human(3 * 3600 + 720)),
            ("20s".into(), "2m".into(), "3h12m".into())
        );
    }
}
