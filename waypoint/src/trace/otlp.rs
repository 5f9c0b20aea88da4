//! Exports spans to an OpenTelemetry collector over OTLP/gRPC (`TraceService/Export`), in
//! batches, from a task of its own: a request only hands its span to a bounded queue and never
//! waits for the collector. A full queue drops the span; a collector that is down or refuses
//! loses that batch; each is counted (`weft_trace_spans_total{outcome}`) and logged once until
//! exports succeed again. Plaintext HTTP/2, as collectors serve OTLP inside a cluster. Bounded
//! in bytes too: attribute values are cut at [`MAX_VALUE`], the queue holds at most
//! [`MAX_QUEUED_BYTES`], an export at most about [`MAX_BATCH_BYTES`] (a collector's gRPC
//! receiver takes 4 MiB by default).
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use weft_api::otlp::{
    ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
    trace_service_client::TraceServiceClient,
};

/// Spans waiting for export; more are dropped.
const QUEUE: usize = 4096;
/// The encoded size of the spans waiting for export at most; more are dropped.
const MAX_QUEUED_BYTES: usize = 8 << 20;
/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// Once a batch holds this many bytes, it goes.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// An attribute's value is cut to this many bytes (a path, say).
pub const MAX_VALUE: usize = 1024;
/// How long a span may wait for others to share its export.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long an export (or connecting for one) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why tracing cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "OTLP endpoint {0:?}: give the collector's OTLP/gRPC address as http://host:port or host:port (plaintext)"
    )]
    Endpoint(String),
}

/// What became of the spans handed over, as counted.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub exported: Counter,
    pub dropped: Counter,
    pub failed: Counter,
}

/// What the exporter's task is told.
#[derive(Debug)]
enum Message {
    /// A span (boxed: the queue's slots stay small) and its encoded size.
    Span(Box<Span>, usize),
    /// Export what came before now, then answer.
    Flush(oneshot::Sender<()>),
}

/// The sending end: cheap to use from every request.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<Message>,
    queued_bytes: Arc<AtomicUsize>,
    dropped: Counter,
}

impl Exporter {
    /// Starts exporting to the collector at `endpoint` (`http://host:port`, or `host:port`),
    /// every batch under `resource` (who the waypoint is); the connection is made when the
    /// first batch goes. Must be called within a Tokio runtime.
    pub fn start(endpoint: &str, resource: Resource, counters: Counters) -> Result<Self, Error> {
        let refused = || Error::Endpoint(endpoint.to_owned());
        let written = endpoint.trim();
        let uri: http::Uri = match written.contains("://") {
            true => written.parse(),
            false => format!("http://{written}").parse(),
        }
        .map_err(|_| refused())?;
        if uri.scheme_str() != Some("http") || uri.port().is_none() || uri.path() != "/" {
            return Err(refused());
        }
        let channel = tonic::transport::Endpoint::from(uri)
            .connect_timeout(EXPORT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let (queue, messages) = mpsc::channel(QUEUE);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let dropped = counters.dropped.clone();
        let task =
            Task { resource, counters, endpoint: written.to_owned(), queued_bytes: queued_bytes.clone() };
        tokio::spawn(task.run(TraceServiceClient::new(channel), messages));
        Ok(Self { queue, queued_bytes, dropped })
    }

    /// Queues `span` for export; dropped (counted) when the queue is full.
    pub fn export(&self, span: Span) {
        let size = span.encoded_len();
        if self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        if self.queue.try_send(Message::Span(Box::new(span), size)).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    /// Exports what was queued before now, waiting at most `within` (at shutdown: the last
    /// requests' spans are not left behind).
    pub async fn flush(&self, within: Duration) {
        let (done, exported) = oneshot::channel();
        let flushed = async {
            if self.queue.send(Message::Flush(done)).await.is_ok() {
                let _ = exported.await;
            }
        };
        if tokio::time::timeout(within, flushed).await.is_err() {
            tracing::warn!("spans still queued for export at shutdown were not exported");
        }
    }
}

/// The exporting task's state.
struct Task {
    resource: Resource,
    counters: Counters,
    endpoint: String,
    queued_bytes: Arc<AtomicUsize>,
}

impl Task {
    /// Batches what arrives and exports it, one export at a time, until every sender is gone.
    async fn run(
        self,
        mut client: TraceServiceClient<tonic::transport::Channel>,
        mut messages: mpsc::Receiver<Message>,
    ) {
        let mut failing = false;
        while let Some(first) = messages.recv().await {
            let (mut batch, mut bytes) = (Vec::new(), 0);
            let mut flushed = None;
            let mut next = Some(first);
            let due = tokio::time::Instant::now() + BATCH_DELAY;
            loop {
                match next.take() {
                    Some(Message::Span(span, size)) => {
                        self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                        batch.push(*span);
                        bytes += size;
                    }
                    Some(Message::Flush(done)) => {
                        flushed = Some(done);
                        break;
                    }
                    None => {}
                }
                if batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                    break;
                }
                match tokio::time::timeout_at(due, messages.recv()).await {
                    Ok(Some(message)) => next = Some(message),
                    Ok(None) | Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.export(&mut client, batch, &mut failing).await;
            }
            if let Some(done) = flushed {
                let _ = done.send(());
            }
        }
    }

    /// One export of `batch`, counted; `failing` says whether the last one failed.
    async fn export(
        &self,
        client: &mut TraceServiceClient<tonic::transport::Channel>,
        batch: Vec<Span>,
        failing: &mut bool,
    ) {
        let count = batch.len() as u64;
        let scope = InstrumentationScope {
            name: "weft-waypoint".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans { scope: Some(scope), spans: batch, schema_url: String::new() }],
                schema_url: String::new(),
            }],
        };
        let endpoint = &self.endpoint;
        let error = match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
            Ok(Ok(response)) => {
                let partial = response.into_inner().partial_success.unwrap_or_default();
                let rejected = u64::try_from(partial.rejected_spans).unwrap_or(0).min(count);
                self.counters.exported.inc_by(count - rejected);
                self.counters.failed.inc_by(rejected);
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
                self.counters.failed.inc_by(count);
                if !*failing {
                    tracing::warn!(%endpoint, %error, "spans not exported (counted until exports succeed again)");
                }
                *failing = true;
            }
            None if *failing => {
                tracing::info!(%endpoint, "spans exported again");
                *failing = false;
            }
            None => {}
        }
    }
}

/// A string attribute, its value cut at [`MAX_VALUE`] bytes (on a character's boundary).
pub fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    use weft_api::otlp::any_value::Value;
    let mut value = value.into();
    if value.len() > MAX_VALUE {
        let end = (0..=MAX_VALUE).rev().find(|at| value.is_char_boundary(*at)).unwrap_or(0);
        value.truncate(end);
    }
    KeyValue {
        key: key.to_owned(),
        value: Some(weft_api::otlp::AnyValue { value: Some(Value::StringValue(value)) }),
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

    /// A collector's address where none listens: every export fails at once.
    const NOWHERE: &str = "http://127.0.0.1:9";

    #[tokio::test]
    async fn an_endpoint_is_a_plaintext_collectors_host_and_port() {
        for bad in [
            "https://collector:4317",
            "grpc://collector:4317",
            "http://collector",
            "collector",
            "http://collector:4317/v1/traces",
            "",
        ] {
            assert!(Exporter::start(bad, Resource::default(), Counters::default()).is_err(), "{bad:?}");
        }
        for good in ["http://collector.observability:4317", "collector.observability:4317", " 10.0.0.1:4317 "]
        {
            assert!(Exporter::start(good, Resource::default(), Counters::default()).is_ok(), "{good:?}");
        }
    }

    #[tokio::test]
    async fn spans_beyond_the_queue_in_number_or_bytes_are_dropped_and_counted_never_waited_for() {
        // On this one-thread runtime the exporter's task takes nothing off the queue before the
        // test awaits.
        let counters = Counters::default();
        let exporter = Exporter::start(NOWHERE, Resource::default(), counters.clone()).unwrap();
        for _ in 0..QUEUE + 10 {
            exporter.export(Span::default());
        }
        assert_eq!(counters.dropped.get(), 10);

        let counters = Counters::default();
        let exporter = Exporter::start(NOWHERE, Resource::default(), counters.clone()).unwrap();
        let big = Span {
            attributes: (0..16).map(|at| attribute(&format!("a{at}"), "x".repeat(MAX_VALUE))).collect(),
            ..Span::default()
        };
        let fitting = MAX_QUEUED_BYTES / big.encoded_len();
        assert!(fitting < QUEUE);
        for _ in 0..fitting + 10 {
            exporter.export(big.clone());
        }
        assert_eq!(counters.dropped.get(), 10);
    }

    #[tokio::test]
    async fn a_flush_exports_what_was_queued_and_a_collector_not_there_fails_it_counted() {
        let counters = Counters::default();
        let exporter = Exporter::start(NOWHERE, Resource::default(), counters.clone()).unwrap();
        for _ in 0..3 {
            exporter.export(Span::default());
        }
        exporter.flush(Duration::from_secs(30)).await;
        assert_eq!((counters.failed.get(), counters.exported.get(), counters.dropped.get()), (3, 0, 0));
    }

    #[test]
    fn an_attribute_is_cut_at_its_bound_on_a_characters_boundary() {
        use weft_api::otlp::any_value::Value;
        let text = |key_value: KeyValue| match key_value.value.and_then(|value| value.value) {
            Some(Value::StringValue(text)) => text,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(attribute("url.path", "/orders")), "/orders");
        let cut = text(attribute("url.path", format!("/{}", "é".repeat(MAX_VALUE))));
        assert_eq!(cut.len(), MAX_VALUE - 1, "the last é would cross the bound");
    }
}
