//! Where workloads run and which endpoints a Service prefers, as Istio's control plane tells
//! proxies: a pod's locality is its node's `topology.kubernetes.io/region` and `zone` labels and
//! Istio's `topology.istio.io/subzone`; a Service's `spec.trafficDistribution` (else Istio's
//! `networking.istio.io/traffic-distribution` annotation) becomes the routing preference
//! proxies choose endpoints by — `PreferClose`: the client's subzone, zone, region, then
//! anywhere; `PreferSameZone`: its zone first; `PreferSameNode`: its node first — and
//! `internalTrafficPolicy: Local` its node only. Only the nodes' metadata is watched: their
//! labels are all that is read.
use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::core::PartialObjectMeta;
use weft_api::workload as api;

/// Istio's annotation choosing a Service's traffic distribution; it wins over the spec's.
pub const TRAFFIC_DISTRIBUTION: &str = "networking.istio.io/traffic-distribution";

/// Each node's locality, by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Localities(HashMap<String, api::Locality>);

impl Localities {
    pub fn new(nodes: &[&PartialObjectMeta<Node>]) -> Self {
        let localities = nodes.iter().filter_map(|node| {
            let labels = node.metadata.labels.as_ref();
            let label = |key: &str| labels.and_then(|labels| labels.get(key)).cloned().unwrap_or_default();
            let [region, zone, subzone] = TOPOLOGY_LABELS.map(label);
            let locality = api::Locality { region, zone, subzone };
            Some((node.metadata.name.clone()?, locality))
        });
        Self(localities.collect())
    }

    /// The nodes whose locality differs in `other` (or that only one of them knows).
    pub fn differing<'a>(&'a self, other: &'a Localities) -> impl Iterator<Item = &'a str> {
        super::keys_differing(&self.0, &other.0)
    }

    /// The locality of pods on `node`; none for a node without topology labels (or unknown).
    pub fn of(&self, node: &str) -> Option<api::Locality> {
        self.0.get(node).filter(|locality| **locality != api::Locality::default()).cloned()
    }
}

/// A hash of what places pods on a node (its topology labels): what a change of must rebuild
/// the index.
pub fn topology_hash(node: &kube::api::ObjectMeta) -> u64 {
    let labels = node.labels.as_ref();
    let text: String = TOPOLOGY_LABELS
        .iter()
        .map(|key| {
            format!("{key}={}\n", labels.and_then(|labels| labels.get(*key)).map_or("", String::as_str))
        })
        .collect();
    weft_api::hash::fnv1a(text.as_bytes())
}

/// The node labels a locality is read from: region, zone, subzone.
const TOPOLOGY_LABELS: [&str; 3] =
    ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];

/// How proxies choose among `service`'s endpoints: which unhealthy ones count (endpoints it
/// publishes before they are ready are meant to be used) and which are close; none when
/// neither is said. As istiod: `internalTrafficPolicy: Local` keeps traffic on the client's
/// node (STRICT); else a `trafficDistribution` the spec gives wins over the annotation's.
pub fn load_balancing(service: &Service) -> Option<api::LoadBalancing> {
    use api::load_balancing::{HealthPolicy, Mode, Scope};
    let spec = service.spec.as_ref();
    let all_endpoints = spec.and_then(|spec| spec.publish_not_ready_addresses).unwrap_or(false);
    let preference = |value: &str| {
        let zone = [Scope::Network, Scope::Region, Scope::Zone];
        let scopes = match value.to_ascii_lowercase().as_str() {
            "preferclose" => [&zone[..], &[Scope::Subzone]].concat(),
            "prefersamezone" => zone.to_vec(),
            "prefersamenode" => [&zone[..], &[Scope::Subzone, Scope::Node]].concat(),
            _ => return None,
        };
        Some((scopes, Mode::Failover))
    };
    let local = spec.and_then(|spec| spec.internal_traffic_policy.as_deref()) == Some("Local");
    let annotation =
        service.metadata.annotations.as_ref().and_then(|annotations| annotations.get(TRAFFIC_DISTRIBUTION));
    let (scopes, mode) = if local {
        (vec![Scope::Node], Mode::Strict)
    } else {
        spec.and_then(|spec| spec.traffic_distribution.as_deref())
            .and_then(preference)
            .or_else(|| annotation.and_then(|value| preference(value)))
            .unwrap_or((Vec::new(), Mode::UnspecifiedMode))
    };
    if !all_endpoints && scopes.is_empty() {
        return None;
    }
    Some(api::LoadBalancing {
        health_policy: if all_endpoints { HealthPolicy::AllowAll } else { HealthPolicy::OnlyHealthy }.into(),
        mode: mode.into(),
        routing_preference: scopes.into_iter().map(i32::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use api::load_balancing::{Mode, Scope};
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value, annotations: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({ "metadata": { "name": "s", "annotations": annotations }, "spec": spec }),
        )
        .unwrap_or_else(|error| panic!("a test Service: {error}"))
    }

    #[test]
    fn traffic_distribution_becomes_istios_routing_preference_the_spec_winning_and_a_local_policy_strict() {
        let scopes = |balancing: Option<api::LoadBalancing>| {
            balancing.map(|balancing| (balancing.routing_preference().collect::<Vec<_>>(), balancing.mode()))
        };
        let close = service(json!({ "trafficDistribution": "PreferClose" }), json!({}));
        let subzone = vec![Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone];
        assert_eq!(scopes(load_balancing(&close)), Some((subzone, Mode::Failover)));
        let node = service(json!({}), json!({ TRAFFIC_DISTRIBUTION: "prefersamenode" }));
        assert_eq!(
            scopes(load_balancing(&node)).map(|(scopes, _)| scopes.last().copied()),
            Some(Some(Scope::Node))
        );
        let both = service(
            json!({ "trafficDistribution": "PreferSameZone" }),
            json!({ TRAFFIC_DISTRIBUTION: "PreferSameNode" }),
        );
        let zone = vec![Scope::Network, Scope::Region, Scope::Zone];
        assert_eq!(scopes(load_balancing(&both)), Some((zone, Mode::Failover)), "the spec wins");
        let local = service(
            json!({ "internalTrafficPolicy": "Local", "trafficDistribution": "PreferClose" }),
            json!({}),
        );
        assert_eq!(scopes(load_balancing(&local)), Some((vec![Scope::Node], Mode::Strict)));
        assert_eq!(load_balancing(&service(json!({ "trafficDistribution": "Anywhere" }), json!({}))), None);
        let unready = service(json!({ "publishNotReadyAddresses": true }), json!({}));
        let balancing = load_balancing(&unready).unwrap_or_default();
        assert!(balancing.routing_preference.is_empty());
        assert_eq!(balancing.health_policy(), api::load_balancing::HealthPolicy::AllowAll);
    }

    #[test]
    fn a_pod_is_where_its_node_is() {
        let node = |name: &str, labels: serde_json::Value| -> PartialObjectMeta<Node> {
            serde_json::from_value(json!({ "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                                       "metadata": { "name": name, "labels": labels } }))
            .unwrap_or_else(|error| panic!("a test node: {error}"))
        };
        let zoned = node(
            "n1",
            json!({ "topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-a" }),
        );
        let bare = node("n2", json!({}));
        let localities = Localities::new(&[&zoned, &bare]);
        let locality = localities.of("n1").unwrap_or_default();
        assert_eq!(
            (locality.region.as_str(), locality.zone.as_str(), locality.subzone.as_str()),
            ("eu", "eu-a", "")
        );
        assert_eq!(localities.of("n2"), None);
        assert_eq!(localities.of("unknown"), None);
    }
}
