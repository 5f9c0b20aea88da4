//! Prometheus metrics of the requests the waypoint handles and the connections it relays at L4,
//! named and labelled like Istio's (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`; `istio_tcp_connections_opened_total`,
//! `…_closed_total`, `istio_tcp_sent_bytes_total`, `…_received_bytes_total`) with Weft's prefix
//! and the route added, so existing dashboards translate.
use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// The workload, namespace and principal labels of an end that is not a known workload.
pub const UNKNOWN: &str = "unknown";

/// Who a request or a relayed connection is between, labelled as Istio labels them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peers {
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    /// The Service asked for (`namespace/hostname`), or the workload addressed directly.
    pub destination_service: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
}

/// Labels of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Always `waypoint`, as Istio's waypoint reports.
    pub reporter: &'static str,
    pub response_code: u16,
    /// `namespace/name` of the HTTPRoute that took it; empty: none (the Service itself, or no
    /// route matched).
    pub route: String,
    #[prometheus(flatten)]
    pub peers: Peers,
    /// A gRPC call's status code (`grpc-status`); empty for other requests, as Istio's.
    pub grpc_response_status: String,
}

/// Labels of a connection relayed at L4 (Istio's `istio_tcp_*`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: &'static str,
    /// The TCPRoute that chose its backend (`TCPRoute:namespace/name`); empty: none.
    pub route: String,
    #[prometheus(flatten)]
    pub peers: Peers,
}

/// Labels of the request spans a waypoint sampled: `exported`; `dropped` (the export queue was
/// full); `failed` (the collector could not be reached, or refused them).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    pub outcome: &'static str,
}

/// Duration buckets, milliseconds: 0.5 ms to 10 s.
const DURATION_BUCKETS: [f64; 14] =
    [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];
/// Size buckets, bytes: 0 to 1 MiB by powers of 4.
const SIZE_BUCKETS: [f64; 11] =
    [0.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0];

/// The waypoint's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
    request_sizes: Family<RequestLabels, Histogram>,
    response_sizes: Family<RequestLabels, Histogram>,
    connections_opened: Family<ConnectionLabels, Counter>,
    connections_closed: Family<ConnectionLabels, Counter>,
    sent_bytes: Family<ConnectionLabels, Counter>,
    received_bytes: Family<ConnectionLabels, Counter>,
    spans: Family<SpanLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let requests = Family::default();
        // Constructors are plain functions: one per kind of bucket.
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS.iter().copied())
        });
        let sizes = || {
            Family::<RequestLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(SIZE_BUCKETS.iter().copied())
            })
        };
        let (request_sizes, response_sizes) = (sizes(), sizes());
        registry.register("requests", "Requests the waypoint answered", requests.clone());
        registry.register(
            "request_duration_milliseconds",
            "From a request's head to its response's head",
            durations.clone(),
        );
        registry.register("request_bytes", "Request body sizes, when known", request_sizes.clone());
        registry.register("response_bytes", "Response body sizes, when known", response_sizes.clone());
        let (connections_opened, connections_closed) = (Family::default(), Family::default());
        let (sent_bytes, received_bytes) = (Family::default(), Family::default());
        registry.register(
            "tcp_connections_opened",
            "Connections relayed at L4, opened",
            connections_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Connections relayed at L4, closed",
            connections_closed.clone(),
        );
        // Istio's directions: sent during the response (to the client), received during the
        // request (from it).
        registry.register(
            "tcp_sent_bytes",
            "Bytes relayed at L4 to the client, at close",
            sent_bytes.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Bytes relayed at L4 from the client, at close",
            received_bytes.clone(),
        );
        let spans = Family::default();
        registry.register("trace_spans", "Sampled request spans, by what became of them", spans.clone());
        Self {
            registry,
            requests,
            durations,
            request_sizes,
            response_sizes,
            connections_opened,
            connections_closed,
            sent_bytes,
            received_bytes,
            spans,
        }
    }
}

/// The request metrics of one label set, taken from their families once: a session keeps the
/// series its requests were counted in, so the next request answered alike is counted without
/// building and hashing its labels again.
#[derive(Debug)]
pub struct RequestSeries {
    labels: RequestLabels,
    requests: Counter,
    durations: Histogram,
    /// Taken when first needed, so that a series of unknown sizes has no size histogram.
    request_sizes: std::sync::OnceLock<Histogram>,
    response_sizes: std::sync::OnceLock<Histogram>,
}

impl RequestSeries {
    /// Counts a request answered after `took`, with body sizes where known.
    pub fn record(&self, metrics: &Metrics, took: Duration, (request, response): (Option<u64>, Option<u64>)) {
        self.requests.inc();
        self.durations.observe(took.as_secs_f64() * 1000.0);
        let sized =
            |kept: &std::sync::OnceLock<Histogram>, family: &Family<RequestLabels, Histogram, _>, size| {
                kept.get_or_init(|| family.get_or_create(&self.labels).clone()).observe(size as f64);
            };
        if let Some(size) = request {
            sized(&self.request_sizes, &metrics.request_sizes, size);
        }
        if let Some(size) = response {
            sized(&self.response_sizes, &metrics.response_sizes, size);
        }
    }

    pub fn labels(&self) -> &RequestLabels {
        &self.labels
    }
}

impl Metrics {
    /// The series of requests labelled `labels`.
    pub fn request_series(&self, labels: RequestLabels) -> RequestSeries {
        RequestSeries {
            requests: self.requests.get_or_create(&labels).clone(),
            durations: self.durations.get_or_create(&labels).clone(),
            request_sizes: std::sync::OnceLock::new(),
            response_sizes: std::sync::OnceLock::new(),
            labels,
        }
    }

    /// Counts a connection relayed at L4 once its tunnel is open.
    pub fn connection_opened(&self, labels: &ConnectionLabels) {
        self.connections_opened.get_or_create(labels).inc();
    }

    /// Counts a relayed connection's end, and the bytes it carried each way: `from_client`
    /// (Istio's received bytes) and `to_client` (its sent bytes).
    pub fn connection_closed(&self, labels: &ConnectionLabels, (from_client, to_client): (u64, u64)) {
        let (sent, received) = (to_client, from_client);
        self.connections_closed.get_or_create(labels).inc();
        self.sent_bytes.get_or_create(labels).inc_by(sent);
        self.received_bytes.get_or_create(labels).inc_by(received);
    }

    /// The counter of sampled spans that met `outcome` (see [`SpanLabels`]).
    pub fn spans(&self, outcome: &'static str) -> Counter {
        self.spans.get_or_create(&SpanLabels { outcome }).clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        weft_api::admin::exposition(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Peers {
        Peers {
            source_workload: "client".into(),
            source_workload_namespace: "shop".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
            destination_service: "shop/echo.shop.svc.cluster.local".into(),
            destination_workload: UNKNOWN.into(),
            destination_workload_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
        }
    }

    #[test]
    fn a_relayed_connection_is_counted_open_and_closed_with_its_bytes() {
        let metrics = Metrics::default();
        let labels =
            ConnectionLabels { reporter: "waypoint", route: "TCPRoute:shop/db".into(), peers: peers() };
        metrics.connection_opened(&labels);
        let text = metrics.encode();
        let series = "{reporter=\"waypoint\",route=\"TCPRoute:shop/db\",source_workload=\"client\"";
        assert!(text.contains(&format!("weft_tcp_connections_opened_total{series}")), "{text}");
        assert!(!text.contains("weft_tcp_connections_closed_total{"), "not closed yet: {text}");
        // 10 bytes from the client, 2048 back to it: Istio's received and sent.
        metrics.connection_closed(&labels, (10, 2048));
        let text = metrics.encode();
        let value = |name: &str| {
            let prefix = format!("{name}{series}");
            text.lines()
                .find(|line| line.starts_with(&prefix))
                .and_then(|line| line.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(value("weft_tcp_connections_closed_total").as_deref(), Some("1"), "{text}");
        assert_eq!(value("weft_tcp_sent_bytes_total").as_deref(), Some("2048"), "{text}");
        assert_eq!(value("weft_tcp_received_bytes_total").as_deref(), Some("10"), "{text}");
    }

    #[test]
    fn a_request_is_counted_timed_and_sized_under_its_labels() {
        let metrics = Metrics::default();
        let labels = RequestLabels {
            reporter: "waypoint",
            response_code: 503,
            route: "shop/echo".into(),
            peers: peers(),
            grpc_response_status: "14".into(),
        };
        metrics.request_series(labels).record(&metrics, Duration::from_millis(3), (Some(100), None));
        let text = metrics.encode();
        assert!(
            text.contains(
                "weft_requests_total{reporter=\"waypoint\",response_code=\"503\",route=\"shop/echo\""
            ),
            "{text}"
        );
        assert!(text.contains(",grpc_response_status=\"14\"} 1"), "{text}");
        assert!(
            text.contains("weft_request_duration_milliseconds_bucket{le=\"5.0\",reporter=\"waypoint\""),
            "{text}"
        );
        assert!(text.contains("weft_request_bytes_count{"), "{text}");
        assert!(!text.contains("weft_response_bytes_count{"), "no size known, none observed: {text}");
    }
}
