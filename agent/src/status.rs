//! What the agent reports about its node: each wanted pod's enrollment (enrolled, or pending
//! with the stage that failed and why), Prometheus metrics (enrolled pods, enrollment failures
//! by stage, the datapath's counters) and readiness — served with `weft_api::admin` — a
//! Kubernetes Event on a pod whenever its enrollment state changes, so `kubectl describe pod`
//! says why a pod is not in the mesh, and the pod's capture annotation
//! (`weft_api::enrollment::CAPTURED`), which the control plane goes by.
use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use weft_api::enrollment;
use weft_ebpf_common::Counter as DatapathCounter;

/// Where enrolling a pod stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Finding the pod's network namespace.
    Netns,
    /// Handing the pod to ztunnel.
    Handoff,
    /// Switching capture on.
    Capture,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Netns => "netns",
            Stage::Handoff => "handoff",
            Stage::Capture => "capture",
        }
    }
}

/// A wanted pod's enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Enrolled,
    Pending { stage: Stage, error: String },
}

/// A pod as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodReport {
    pub name: String,
    pub namespace: String,
    #[serde(flatten)]
    pub state: State,
    /// TCP connections it had open when captured: they stay outside the mesh until they close.
    pub preexisting_connections: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// The agent's report, shared by the reconcile loop (writer) and the HTTP endpoints (readers).
pub struct Status {
    node: String,
    pods: Mutex<BTreeMap<String, PodReport>>,
    ready: AtomicBool,
    registry: Registry,
    enrolled: Gauge,
    failures: Family<StageLabels, Counter>,
    datapath: Family<EventLabels, Gauge>,
    /// Where Events and annotations go; `None` reports nothing to the API (tests of the logic
    /// alone).
    client: Option<kube::Client>,
    /// Whose capture annotation to set.
    labels: enrollment::Labels,
}

impl Status {
    pub fn new(node: String, client: Option<kube::Client>, labels: enrollment::Labels) -> Self {
        let mut registry = Registry::with_prefix("weft_agent");
        let (enrolled, failures, datapath) = (Gauge::default(), Family::default(), Family::default());
        registry.register("enrolled_pods", "Pods of this node enrolled in the mesh", enrolled.clone());
        registry.register("enroll_failures", "Failed enrollment attempts, by stage", failures.clone());
        registry.register(
            "datapath_events",
            "The eBPF programs' counters (redirected, exempt, refused, steered, …)",
            datapath.clone(),
        );
        Self {
            node,
            pods: Mutex::default(),
            ready: AtomicBool::new(false),
            registry,
            enrolled,
            failures,
            datapath,
            client,
            labels,
        }
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodReport>> {
        self.pods.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records pod `uid`'s enrollment state; an Event goes out when it changed.
    pub fn set(&self, uid: &str, name: &str, namespace: &str, state: State) {
        self.record(uid, name, namespace, state, None);
    }

    /// Records that pod `uid` is enrolled and had `preexisting_connections` open when it was
    /// captured, in one step: nobody reads it enrolled before its count is there.
    pub fn enrolled(&self, uid: &str, name: &str, namespace: &str, preexisting_connections: usize) {
        self.record(uid, name, namespace, State::Enrolled, Some(preexisting_connections));
    }

    fn record(&self, uid: &str, name: &str, namespace: &str, state: State, preexisting: Option<usize>) {
        if let State::Pending { stage, .. } = &state {
            self.failures.get_or_create(&StageLabels { stage: stage.as_str().to_owned() }).inc();
        }
        let (report, changed) = {
            let mut pods = self.pods();
            let preexisting_connections = preexisting
                .unwrap_or_else(|| pods.get(uid).map_or(0, |report| report.preexisting_connections));
            let report = PodReport {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                state,
                preexisting_connections,
            };
            let changed = pods.get(uid) != Some(&report);
            pods.insert(uid.to_owned(), report.clone());
            self.enrolled.set(count_enrolled(&pods));
            (report, changed)
        };
        if changed {
            let (reason, kind, message) = match &report.state {
                State::Enrolled => {
                    ("WeftEnrolled", "Normal", format!("enrolled in the mesh on node {}", self.node))
                }
                State::Pending { stage, error } => (
                    "WeftEnrollFailed",
                    "Warning",
                    format!("not enrolled yet ({} failed): {error}; retrying", stage.as_str()),
                ),
            };
            self.event(uid, &report, reason, kind, message);
        }
    }

    /// Forgets pod `uid` (it left the mesh or is no longer wanted); an Event if it was enrolled.
    pub fn remove(&self, uid: &str) {
        let removed = {
            let mut pods = self.pods();
            let removed = pods.remove(uid);
            self.enrolled.set(count_enrolled(&pods));
            removed
        };
        if let Some(report) = removed
            && report.state == State::Enrolled
        {
            let message = format!("left the mesh on node {}", self.node);
            self.event(uid, &report, "WeftLeft", "Normal", message);
        }
    }

    /// Uids with a report.
    pub fn uids(&self) -> Vec<String> {
        self.pods().keys().cloned().collect()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The datapath's counters, as last read.
    pub fn set_datapath_counters(&self, counters: &[(DatapathCounter, u64)]) {
        for (counter, value) in counters {
            let labels = EventLabels { event: counter_name(*counter).to_owned() };
            self.datapath.get_or_create(&labels).set(i64::try_from(*value).unwrap_or(i64::MAX));
        }
    }

    /// Sets (or removes) pod `uid`'s capture annotation: proxies tunnel to a pod only once its
    /// agent says it captured it. The patch names the uid, so a new pod of the same name is
    /// never marked for the old one's capture.
    pub fn captured(&self, uid: &str, name: &str, namespace: &str, captured: bool) {
        let Some(client) = &self.client else { return };
        let value = captured.then_some(enrollment::ENABLED);
        let patch = serde_json::json!({ "metadata": {
            "uid": uid,
            "annotations": { self.labels.captured_annotation(): value },
        }});
        let (pods, name, uid) =
            (Api::<Pod>::namespaced(client.clone(), namespace), name.to_owned(), uid.to_owned());
        // Reporting must never hold up enrollment.
        tokio::spawn(async move {
            if let Err(error) = pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(pod = %uid, %name, captured, %error, "annotating the pod failed");
            }
        });
    }

    fn event(&self, uid: &str, report: &PodReport, reason: &str, kind: &str, message: String) {
        let Some(client) = &self.client else { return };
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", report.name)),
                namespace: Some(report.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(report.name.clone()),
                namespace: Some(report.namespace.clone()),
                uid: Some(uid.to_owned()),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(message),
            type_: Some(kind.to_owned()),
            source: Some(EventSource { component: Some("weft-agent".into()), host: Some(self.node.clone()) }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let events = Api::<Event>::namespaced(client.clone(), &report.namespace);
        // Reporting must never hold up enrollment.
        tokio::spawn(async move {
            if let Err(error) = events.create(&PostParams::default(), &event).await {
                tracing::debug!(%error, "posting an Event failed");
            }
        });
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("node", &self.node)
            .field("pods", &*self.pods())
            .finish_non_exhaustive()
    }
}

fn count_enrolled(pods: &BTreeMap<String, PodReport>) -> i64 {
    i64::try_from(pods.values().filter(|pod| pod.state == State::Enrolled).count()).unwrap_or(i64::MAX)
}

fn counter_name(counter: DatapathCounter) -> &'static str {
    match counter {
        DatapathCounter::Redirected => "redirected",
        DatapathCounter::ExemptLocal => "exempt_local",
        DatapathCounter::ExemptProxy => "exempt_proxy",
        DatapathCounter::RefusedNoState => "refused_no_state",
        DatapathCounter::InboundSteered => "inbound_steered",
        DatapathCounter::InboundRefused => "inbound_refused",
        DatapathCounter::OrigDstAnswered => "orig_dst_answered",
        DatapathCounter::InboundFromNode => "inbound_from_node",
        DatapathCounter::InboundFromProxy => "inbound_from_proxy",
        DatapathCounter::ListenerRegistered => "listener_registered",
        DatapathCounter::ListenerIgnored => "listener_ignored",
        DatapathCounter::ListenerFailed => "listener_failed",
    }
}

impl weft_api::admin::Source for Status {
    fn metrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Ready once the first snapshot reached ztunnel.
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn config_dump(&self) -> String {
        serde_json::json!({ "node": self.node, "ready": self.ready(), "pods": *self.pods() }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use weft_api::admin::Source;

    use super::*;

    #[test]
    fn reports_pending_reasons_and_counts_enrolled_pods() {
        let status = Status::new("node0".into(), None, enrollment::Labels::Weft);
        let pending = State::Pending { stage: Stage::Netns, error: "no process of pod a".into() };
        status.set("a", "web", "shop", pending);
        status.enrolled("b", "db", "shop", 2);
        let dump: serde_json::Value = serde_json::from_str(&status.config_dump()).unwrap();
        assert_eq!(dump["pods"]["a"]["state"], "pending");
        assert_eq!(dump["pods"]["a"]["stage"], "netns");
        assert_eq!(dump["pods"]["b"]["state"], "enrolled");
        assert_eq!(dump["pods"]["b"]["preexisting_connections"], 2);
        // Handed back to a reconnected proxy, it keeps its count.
        status.set("b", "db", "shop", State::Enrolled);
        let dump: serde_json::Value = serde_json::from_str(&status.config_dump()).unwrap();
        assert_eq!(dump["pods"]["b"]["preexisting_connections"], 2);
        let metrics = status.metrics();
        assert!(metrics.contains("weft_agent_enrolled_pods 1"), "{metrics}");
        assert!(metrics.contains("weft_agent_enroll_failures_total{stage=\"netns\"} 1"), "{metrics}");
        status.remove("b");
        assert!(status.metrics().contains("weft_agent_enrolled_pods 0"));
    }
}
