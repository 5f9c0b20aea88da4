//! Prometheus metrics of proxied connections, named and labelled like Istio's TCP metrics so
//! existing dashboards translate (`weft_tcp_connections_opened_total`, …, labelled by reporter,
//! source and destination workload and principal).
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// Which end of the connection reports it (`source` or `destination`, as Istio spells them).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The source workload's proxy (outbound).
    Source,
    /// The destination workload's proxy (inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        })
    }
}

/// Labels of a proxied connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// "mutual_tls" or "none".
    pub connection_security_policy: String,
}

/// The proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    sent: Family<ConnectionLabels, Counter>,
    received: Family<ConnectionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let (opened, closed, sent, received) =
            (Family::default(), Family::default(), Family::default(), Family::default());
        registry.register("tcp_connections_opened", "Proxied TCP connections opened", opened.clone());
        registry.register("tcp_connections_closed", "Proxied TCP connections closed", closed.clone());
        registry.register("tcp_sent_bytes", "Bytes sent by the source, per connection end", sent.clone());
        registry.register("tcp_received_bytes", "Bytes received by the source", received.clone());
        Self { registry, opened, closed, sent, received }
    }
}

impl Metrics {
    pub fn opened(&self, labels: &ConnectionLabels) {
        self.opened.get_or_create(labels).inc();
    }

    /// A connection closed after the source sent `sent` bytes and received `received`.
    pub fn closed(&self, labels: &ConnectionLabels, sent: u64, received: u64) {
        self.closed.get_or_create(labels).inc();
        self.sent.get_or_create(labels).inc_by(sent);
        self.received.get_or_create(labels).inc_by(received);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
