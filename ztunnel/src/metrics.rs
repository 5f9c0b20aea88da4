//! Prometheus metrics of proxied connections, named and labelled like Istio's TCP metrics so
//! existing dashboards translate (`weft_tcp_connections_opened_total`, …, labelled by reporter,
//! source and destination workload and principal). Series of workloads that are gone are
//! dropped ([`Metrics::retain_workloads`]), so short-lived workloads (Jobs, CronJobs) do not
//! grow the scrape without bound.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
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

/// The workload, namespace and principal labels of an end that is not a known workload.
pub const UNKNOWN: &str = "unknown";
/// `connection_security_policy` of a connection over mutual TLS (else `none`).
pub const MUTUAL_TLS: &str = "mutual_tls";

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

/// Which side of a TLS handshake this proxy was, and whether it resumed an earlier session.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub reporter: Reporter,
    pub resumed: Resumed,
}

/// `resumed="true"` for a handshake that resumed a session (no certificates exchanged).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Resumed(pub bool);

impl EncodeLabelValue for Resumed {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(if self.0 { "true" } else { "false" })
    }
}

/// Why a connection failed, by which end.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reporter: Reporter,
    pub reason: String,
}

/// Handshake latency buckets, seconds: 0.5 ms to 2.5 s.
const HANDSHAKE_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    sent: Family<ConnectionLabels, Counter>,
    received: Family<ConnectionLabels, Counter>,
    handshakes: Family<HandshakeLabels, Histogram>,
    failed: Family<FailureLabels, Counter>,
    /// Every label set of the connection families, so the series of gone workloads can be
    /// found (a `Family` cannot be listed); shared with the open connections that have it.
    series: Mutex<HashSet<Arc<ConnectionLabels>>>,
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
        let handshakes = Family::<HandshakeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(HANDSHAKE_BUCKETS.iter().copied())
        });
        registry.register(
            "tls_handshake_seconds",
            "HBONE connection setup time (source: TCP, mTLS and HTTP/2 from the client end; destination: the mTLS handshake at the server end)",
            handshakes.clone(),
        );
        let failed = Family::default();
        registry.register(
            "tcp_connections_failed",
            "Connections the proxy could not carry (or that broke), by end and reason",
            failed.clone(),
        );
        Self { registry, opened, closed, sent, received, handshakes, failed, series: Mutex::default() }
    }
}

impl Metrics {
    /// A connection opened with `labels`; returns them as every open connection with them
    /// shares them, to name again when it closes: an idle connection holds a pointer, not seven
    /// strings of its own.
    pub fn opened(&self, labels: ConnectionLabels) -> Arc<ConnectionLabels> {
        // Counted first, then tracked: a sweep between the two finds the series tracked.
        self.opened.get_or_create(&labels).inc();
        let mut series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match series.get(&labels) {
            Some(known) => known.clone(),
            None => {
                let shared = Arc::new(labels);
                series.insert(shared.clone());
                shared
            }
        }
    }

    /// Drops the connection series whose source or destination is a workload `exists` no
    /// longer knows (by namespace and name); ends that were never a workload (`unknown`) do not
    /// count. Returns how many label sets went.
    pub fn retain_workloads(&self, exists: impl Fn(&str, &str) -> bool) -> usize {
        let known = |namespace: &str, name: &str| namespace == UNKNOWN || exists(namespace, name);
        let mut series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = series.len();
        series.retain(|labels| {
            let keep = known(&labels.source_workload_namespace, &labels.source_workload)
                && known(&labels.destination_workload_namespace, &labels.destination_workload);
            if !keep {
                for family in [&self.opened, &self.closed, &self.sent, &self.received] {
                    family.remove(labels);
                }
            }
            keep
        });
        before - series.len()
    }

    /// A connection closed after the source sent `sent` bytes and received `received`.
    pub fn closed(&self, labels: &ConnectionLabels, sent: u64, received: u64) {
        self.closed.get_or_create(labels).inc();
        self.sent.get_or_create(labels).inc_by(sent);
        self.received.get_or_create(labels).inc_by(received);
        // A connection that outlived its workload's sweep brings its series back: tracked
        // again, so the next sweep takes them.
        let mut series = self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !series.contains(labels) {
            series.insert(Arc::new(labels.clone()));
        }
    }

    /// A connection failed at `reporter`'s end for `reason`.
    pub fn failed(&self, reporter: Reporter, reason: &str) {
        self.failed.get_or_create(&FailureLabels { reporter, reason: reason.to_owned() }).inc();
    }

    /// An HBONE connection's mTLS handshake went as `handshake` says.
    pub fn handshake(&self, reporter: Reporter, handshake: weft_proxy::hbone::Handshake) {
        let labels = HandshakeLabels { reporter, resumed: Resumed(handshake.resumed) };
        self.handshakes.get_or_create(&labels).observe(handshake.took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        weft_api::admin::exposition(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(source: (&str, &str), destination: (&str, &str)) -> ConnectionLabels {
        ConnectionLabels {
            reporter: Reporter::Source,
            source_workload: source.1.to_owned(),
            source_workload_namespace: source.0.to_owned(),
            source_principal: String::new(),
            destination_workload: destination.1.to_owned(),
            destination_workload_namespace: destination.0.to_owned(),
            destination_principal: String::new(),
            connection_security_policy: "mutual_tls".to_owned(),
        }
    }

    #[test]
    fn series_of_gone_workloads_are_dropped_and_the_rest_kept() {
        let metrics = Metrics::default();
        let kept = labels(("shop", "web"), ("shop", "db"));
        let to_job = labels(("shop", "web"), ("batch", "report-28391"));
        let from_outside = labels((UNKNOWN, UNKNOWN), ("shop", "db"));
        for series in [&kept, &to_job, &from_outside] {
            let shared = metrics.opened(series.clone());
            assert!(Arc::ptr_eq(&shared, &metrics.opened(series.clone())), "one label set for both");
            metrics.closed(&shared, 10, 20);
        }
        assert!(metrics.encode().contains("report-28391"));

        let gone = metrics.retain_workloads(|namespace, name| namespace == "shop" && name != "gone");
        assert_eq!(gone, 1);
        let text = metrics.encode();
        assert!(!text.contains("report-28391"), "{text}");
        assert_eq!(
            text.matches("destination_workload=\"db\"").count(),
            8,
            "both db series in 4 families: {text}"
        );
        assert_eq!(metrics.retain_workloads(|_, _| true), 0);

        // A connection open across the sweep brings its series back when it closes: tracked
        // again, so the next sweep takes it.
        metrics.closed(&to_job, 1, 1);
        assert_eq!(metrics.retain_workloads(|namespace, _| namespace == "shop"), 1);
        assert!(!metrics.encode().contains("report-28391"));
    }
}
