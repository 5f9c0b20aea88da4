//! An OpenTelemetry Collector on the harness: `otelcol` (the collector's own OTLP receiver and
//! file exporter, built by `cargo xtask setup` from the Go module proxy) in a pod of namespace
//! `observability`, outside the mesh, taking OTLP/gRPC on 4317 and writing every batch it
//! receives as a line of OTLP JSON, which [`Collector::spans`] reads back. No batch processor
//! or sending queue stands between the two: the exporter writes each export as it is received,
//! so the lines keep the order in which the exports were sent.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use anyhow::Context;

use crate::{cluster::Cluster, kubelet::PodTemplate, process::Process, topology::Pod};

const OTLP_GRPC_PORT: u16 = 4317;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    _process: Process,
    pod: Pod,
    spans_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// A span as the collector received it: ids in hex, attributes' values as text.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's first span.
    pub parent_span_id: String,
    pub trace_state: String,
    pub name: String,
    pub kind: u64,
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: u64,
    /// Its resource's attributes: who sent it.
    pub resource: BTreeMap<String, String>,
}

impl Collector {
    /// Starts the collector in a new pod on node `node` and waits until it listens.
    pub async fn start(cluster: &mut Cluster, node: usize) -> anyhow::Result<Self> {
        let template =
            PodTemplate::new("observability", "collector").label("weft.dev/dataplane-mode", "none");
        let pod = cluster.add_pod(node, &template).await?;
        let dir = tempfile::Builder::new().prefix("weft-collector-").tempdir()?;
        let spans_file = dir.path().join("spans.jsonl");
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 0.0.0.0:{OTLP_GRPC_PORT}\n\
                 exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
                 service:\n  telemetry:\n    metrics:\n      level: none\n  \
                 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
                spans_file.display()
            ),
        )?;
        let mut command = Command::new(crate::apiserver::kube_bin()?.join("otelcol"));
        command.arg("--config").arg(format!("file:{}", config.display()));
        let output = crate::process::merged_output(&mut command)?;
        let mut process = pod.spawn(command)?;
        process.read_lines_from(output);
        tokio::task::block_in_place(|| {
            process.wait_for(|line| line.contains("Everything is ready"), READY_TIMEOUT)
        })
        .context("the OpenTelemetry Collector to start")?;
        Ok(Self { _process: process, pod, spans_file, _dir: dir })
    }

    /// Where it takes OTLP/gRPC: `http://<pod IP>:4317`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", SocketAddr::new(self.pod.ipv4.into(), OTLP_GRPC_PORT))
    }

    /// Every span received so far, in the order received.
    pub fn spans(&self) -> anyhow::Result<Vec<ReceivedSpan>> {
        let text = match std::fs::read_to_string(&self.spans_file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut spans = Vec::new();
        // The exporter may be writing the last line: only whole lines are read.
        for line in text.split_inclusive('\n').filter(|line| line.ends_with('\n')) {
            let batch: serde_json::Value = serde_json::from_str(line).context("a line of OTLP JSON")?;
            for resource_spans in list(&batch, "resourceSpans") {
                let resource = attributes(&resource_spans["resource"]);
                for scope_spans in list(resource_spans, "scopeSpans") {
                    for span in list(scope_spans, "spans") {
                        let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                        spans.push(ReceivedSpan {
                            trace_id: text("traceId"),
                            span_id: text("spanId"),
                            parent_span_id: text("parentSpanId"),
                            trace_state: text("traceState"),
                            name: text("name"),
                            kind: span["kind"].as_u64().unwrap_or_default(),
                            attributes: attributes(span),
                            status_code: span["status"]["code"].as_u64().unwrap_or_default(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        Ok(spans)
    }
}

fn list<'a>(value: &'a serde_json::Value, key: &str) -> impl Iterator<Item = &'a serde_json::Value> {
    value[key].as_array().into_iter().flatten()
}

/// `attributes` of an OTLP JSON object, each value as text (OTLP JSON writes 64-bit integers as
/// strings already).
fn attributes(value: &serde_json::Value) -> BTreeMap<String, String> {
    list(value, "attributes")
        .filter_map(|attribute| {
            let key = attribute["key"].as_str()?.to_owned();
            let value = attribute["value"].as_object()?.values().next()?;
            Some((key, value.as_str().map_or_else(|| value.to_string(), str::to_owned)))
        })
        .collect()
}
