//! Measures the control plane's index (issue "control", Measure): snapshot build time, the time
//! to encode a full push to one proxy, and memory, for 1k / 10k / 50k pods in-process.
//! `cargo run --release -p weft-control --example index_bench`. Prints; never fails.
use std::time::{Duration, Instant};

use k8s_openapi::api::{
    core::v1::{
        Namespace, ObjectReference, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
    },
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::api::ObjectMeta;
use prost::Message;
use weft_api::discovery::{DeltaDiscoveryResponse, Resource};
use weft_control::index::{Naming, Objects, build};

const PODS_PER_SERVICE: usize = 10;
const NAMESPACES: usize = 100;
const REPEATS: usize = 5;

/// The objects of a cluster with `pods` pods, a Service for every ten with the EndpointSlice the
/// cluster would keep for it.
fn objects(pods: usize) -> (Vec<Namespace>, Vec<Pod>, Vec<Service>, Vec<EndpointSlice>) {
    let namespace = |i: usize| format!("ns{}", i % NAMESPACES);
    let namespaces = (0..NAMESPACES)
        .map(|i| Namespace {
            metadata: ObjectMeta {
                name: Some(namespace(i)),
                labels: Some([("weft.dev/dataplane-mode".to_owned(), "ambient".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let pod_objects: Vec<Pod> = (0..pods)
        .map(|i| Pod {
            metadata: ObjectMeta {
                name: Some(format!("pod-{i}")),
                namespace: Some(namespace(i)),
                uid: Some(format!("00000000-0000-0000-0000-{i:012}")),
                labels: Some([("app".to_owned(), format!("app-{}", i / PODS_PER_SERVICE))].into()),
                annotations: Some(
                    [(weft_api::enrollment::CAPTURED.to_owned(), weft_api::enrollment::ENABLED.to_owned())]
                        .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(format!("node{}", i % 50)),
                service_account_name: Some(format!("sa-{}", i / PODS_PER_SERVICE)),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(vec![PodIP { ip: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255) }]),
                ..Default::default()
            }),
        })
        .collect();
    let services = (0..pods / PODS_PER_SERVICE)
        .map(|s| Service {
            metadata: ObjectMeta {
                name: Some(format!("svc-{s}")),
                namespace: Some(namespace(s * PODS_PER_SERVICE)),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("172.{}.{}.{}", 16 + (s >> 16), (s >> 8) & 255, s & 255)),
                selector: Some([("app".to_owned(), format!("app-{s}"))].into()),
                ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let slices = pod_objects
        .chunks(PODS_PER_SERVICE)
        .enumerate()
        .map(|(s, backing)| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("svc-{s}-abcde")),
                namespace: Some(namespace(s * PODS_PER_SERVICE)),
                labels: Some([("kubernetes.io/service-name".to_owned(), format!("svc-{s}"))].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                backing
                    .iter()
                    .map(|pod| Endpoint {
                        addresses: pod
                            .status
                            .iter()
                            .flat_map(|s| s.pod_ips.iter().flatten())
                            .map(|ip| ip.ip.clone())
                            .collect(),
                        conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                        target_ref: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            uid: pod.metadata.uid.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                port: Some(80),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
        .collect();
    (namespaces, pod_objects, services, slices)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
        })
        .flatten()
        .unwrap_or(0)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let naming = Naming {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        root_namespace: "weft-system".into(),
        labels: weft_api::enrollment::Labels::Weft,
    };
    println!(
        "{:>7} {:>9} {:>12} {:>12} {:>12} {:>14}",
        "pods", "services", "build ms", "push ms", "push MiB", "snapshot MiB"
    );
    for pods in [1_000, 10_000, 50_000] {
        let (namespaces, pod_objects, services, slices) = objects(pods);
        let mut builds = Vec::new();
        let mut pushes = Vec::new();
        let mut push_bytes = 0;
        let mut snapshot_kib = 0;
        for _ in 0..REPEATS {
            let before = rss_kib();
            let start = Instant::now();
            let snapshot = build(
                &naming,
                &Objects::default()
                    .namespaces(&namespaces)
                    .pods(&pod_objects)
                    .services(&services)
                    .slices(&slices),
            );
            builds.push(start.elapsed());
            snapshot_kib = rss_kib().saturating_sub(before).max(snapshot_kib);
            // A full push to one proxy: every resource into one response, encoded.
            let start = Instant::now();
            let response = DeltaDiscoveryResponse {
                resources: snapshot
                    .addresses
                    .iter()
                    .map(|(name, resource)| Resource {
                        name: name.clone(),
                        version: resource.version.clone(),
                        resource: Some(resource.body.clone()),
                        aliases: Vec::new(),
                    })
                    .collect(),
                ..Default::default()
            };
            push_bytes = response.encode_to_vec().len();
            pushes.push(start.elapsed());
        }
        println!(
            "{pods:>7} {:>9} {:>12.1} {:>12.1} {:>12.2} {:>14.1}",
            pods / PODS_PER_SERVICE,
            median(builds).as_secs_f64() * 1e3,
            median(pushes).as_secs_f64() * 1e3,
            push_bytes as f64 / (1 << 20) as f64,
            snapshot_kib as f64 / 1024.0,
        );
    }
    println!(
        "(median of {REPEATS}; build = all workloads and services from the objects; snapshot MiB = RSS growth while one is held)"
    );
}
