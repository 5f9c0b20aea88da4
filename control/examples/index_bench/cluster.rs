//! A synthetic cluster for the benchmark: namespaces, pods, a Service for every ten pods and
//! the EndpointSlice the cluster would keep for each.
use k8s_openapi::api::{
    core::v1::{
        Namespace, ObjectReference, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
    },
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::api::ObjectMeta;
use weft_control::index::Naming;

pub const PODS_PER_SERVICE: usize = 10;
const NAMESPACES: usize = 100;

/// The objects of a cluster with `pods` pods, a Service for every ten with the EndpointSlice the
/// cluster would keep for it.
pub fn objects(pods: usize) -> (Vec<Namespace>, Vec<Pod>, Vec<Service>, Vec<EndpointSlice>) {
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

/// The mesh's names, as a default install has them.
pub fn naming() -> Naming {
    Naming {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        root_namespace: "weft-system".into(),
        labels: weft_api::enrollment::Labels::Weft,
    }
}

/// This process's resident memory.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// A line of `/proc/self/status` in KiB (0 if missing).
pub fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(key).map(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
        })
        .flatten()
        .unwrap_or(0)
}
