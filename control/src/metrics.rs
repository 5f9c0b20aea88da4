//! The control plane's Prometheus metrics: xDS pushes, acks and nacks by resource type,
//! connected proxies, and certificate requests by outcome.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CsrLabels {
    /// `signed`, or why not: `unauthenticated`, `permission_denied`, `invalid_argument`, `unavailable`.
    outcome: String,
}

/// Every metric of the control plane.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pushes: Family<TypeLabels, Counter>,
    acks: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    proxies: Gauge,
    csrs: Family<CsrLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft_control");
        let metrics = Self {
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            proxies: Gauge::default(),
            csrs: Family::default(),
            registry: Registry::default(),
        };
        registry.register("xds_pushes", "xDS responses sent", metrics.pushes.clone());
        registry.register("xds_acks", "xDS responses acked by proxies", metrics.acks.clone());
        registry.register("xds_nacks", "xDS responses rejected by proxies", metrics.nacks.clone());
        registry.register(
            "xds_connected_proxies",
            "Node proxies with an open xDS stream",
            metrics.proxies.clone(),
        );
        registry.register("csr", "Certificate requests by outcome", metrics.csrs.clone());
        Self { registry, ..metrics }
    }
}

impl Metrics {
    pub fn push(&self, type_url: &str) {
        self.pushes.get_or_create(&labels(type_url)).inc();
    }

    pub fn ack(&self, type_url: &str) {
        self.acks.get_or_create(&labels(type_url)).inc();
    }

    pub fn nack(&self, type_url: &str) {
        self.nacks.get_or_create(&labels(type_url)).inc();
    }

    /// A proxy connected (`1`) or went away (`-1`).
    pub fn proxy_connected(&self, change: i64) {
        self.proxies.inc_by(change);
    }

    pub fn csr(&self, outcome: &str) {
        self.csrs.get_or_create(&CsrLabels { outcome: outcome.to_owned() }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        weft_api::admin::exposition(&self.registry)
    }
}

fn labels(type_url: &str) -> TypeLabels {
    TypeLabels { r#type: type_url.rsplit('.').next().unwrap_or(type_url).to_owned() }
}
