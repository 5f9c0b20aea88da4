//! Exports spans to an OpenTelemetry collector over OTLP/gRPC (`TraceService/Export`), in
//! batches, from a task of its own: a request only hands its span to a bounded queue and never
//! waits for the collector. A full queue drops the span; a collector that is down or refuses
//! loses that batch; each is counted (`weft_trace_spans_total{outcome}`) and logged once until
//! exports succeed again. Plaintext HTTP/2, as collectors serve OTLP inside a cluster.
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use weft_api::otlp::{
    ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
    trace_service_client::TraceServiceClient,
};

/// Spans waiting for export; more are dropped.
const QUEUE: usize = 4096;
/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// How long a span may wait for others to share its export.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long an export (or connecting for one) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why tracing cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OTLP endpoint {0:?}: give the collector's OTLP/gRPC address as http://host:port (plaintext)")]
    Endpoint(String),
}

/// What became of the spans handed over, as counted.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub exported: Counter,
    pub dropped: Counter,
    pub failed: Counter,
}

/// The sending end: cheap to use from every request.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    dropped: Counter,
}

impl Exporter {
    /// Starts exporting to the collector at `endpoint` (`http://host:port`), every batch under
    /// `resource` (who the waypoint is); the connection is made when the first batch goes.
    /// Must be called within a Tokio runtime.
    pub fn start(endpoint: &str, resource: Resource, counters: Counters) -> Result<Self, Error> {
        let refused = || Error::Endpoint(endpoint.to_owned());
        let uri: http::Uri = endpoint.parse().map_err(|_| refused())?;
        if uri.scheme_str() != Some("http") || uri.port().is_none() || uri.path() != "/" {
            return Err(refused());
        }
        let channel = tonic::transport::Endpoint::from(uri)
            .connect_timeout(EXPORT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let (queue, spans) = mpsc::channel(QUEUE);
        let dropped = counters.dropped.clone();
        tokio::spawn(run(TraceServiceClient::new(channel), spans, resource, counters, endpoint.to_owned()));
        Ok(Self { queue, dropped })
    }

    /// Queues `span` for export; dropped (counted) when the queue is full.
    pub fn export(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// Batches what arrives and exports it, one export at a time, until every sender is gone.
async fn run(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    mut spans: mpsc::Receiver<Span>,
    resource: Resource,
    counters: Counters,
    endpoint: String,
) {
    let scope = InstrumentationScope {
        name: "weft-waypoint".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut failing = false;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let due = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(due, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: batch,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let answer = tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await;
        let error = match answer {
            Ok(Ok(response)) => {
                let partial = response.into_inner().partial_success.unwrap_or_default();
                let rejected = u64::try_from(partial.rejected_spans).unwrap_or(0).min(count);
                counters.exported.inc_by(count - rejected);
                counters.failed.inc_by(rejected);
                if rejected > 0 {
                    tracing::warn!(%endpoint, rejected, message = %partial.error_message, "the collector rejected spans");
                }
                None
            }
            Ok(Err(status)) => Some(status.to_string()),
            Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
        };
        match error {
            Some(error) => {
                counters.failed.inc_by(count);
                if !failing {
                    tracing::warn!(%endpoint, %error, "spans not exported (counted until exports succeed again)");
                }
                failing = true;
            }
            None if failing => {
                tracing::info!(%endpoint, "spans exported again");
                failing = false;
            }
            None => {}
        }
    }
}

/// A string attribute.
pub fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    use weft_api::otlp::any_value::Value;
    KeyValue {
        key: key.to_owned(),
        value: Some(weft_api::otlp::AnyValue { value: Some(Value::StringValue(value.into())) }),
    }
}

/// An integer attribute.
pub fn int_attribute(key: &str, value: i64) -> KeyValue {
    use weft_api::otlp::any_value::Value;
    KeyValue {
        key: key.to_owned(),
        value: Some(weft_api::otlp::AnyValue { value: Some(Value::IntValue(value)) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endpoint_must_be_a_plaintext_collectors_host_and_port() {
        for bad in [
            "collector:4317",
            "https://collector:4317",
            "http://collector",
            "http://collector:4317/v1/traces",
            "",
        ] {
            assert!(Exporter::start(bad, Resource::default(), Counters::default()).is_err(), "{bad:?}");
        }
        assert!(
            Exporter::start("http://collector.observability:4317", Resource::default(), Counters::default())
                .is_ok()
        );
    }

    #[tokio::test]
    async fn spans_beyond_the_queue_are_dropped_and_counted_never_waited_for() {
        let counters = Counters::default();
        // Nothing listens on port 9 of the loopback; and on this one-thread runtime the
        // exporter's task takes nothing off the queue before the test awaits.
        let exporter = Exporter::start("http://127.0.0.1:9", Resource::default(), counters.clone()).unwrap();
        for _ in 0..QUEUE + 10 {
            exporter.export(Span::default());
        }
        assert_eq!(counters.dropped.get(), 10);
    }
}
