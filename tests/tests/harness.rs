//! Tests of the harness itself: the topology routes pods to each other, the wire monitor can see
//! a plaintext leak (so its zero means something), the API server sees what the harness-kubelet
//! reports, the cluster is a current Kubernetes whose controllers work, and the cleanup guard
//! leaves nothing behind.
use std::{net::SocketAddr, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    core::v1::{Pod, Service, ServiceAccount, ServicePort, ServiceSpec},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use weft_tests::{
    apps, canary,
    cluster::Cluster,
    kubelet::PodTemplate,
    process::cgroup2_root,
    topology::{FABRIC_GATEWAY, Topology, netns_exists},
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;

#[test]
fn pods_on_different_nodes_exchange_bytes_over_ipv4_and_ipv6() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();

    for ip in [server.ipv4.into(), std::net::IpAddr::V6(server.ipv6)] {
        let message = format!("hello over {ip}");
        let reply = apps::send(&client, SocketAddr::new(ip, ECHO_PORT), &message).unwrap();
        assert_eq!(reply, message);
    }
}

#[test]
fn wire_monitor_counts_plaintext_canary_between_nodes_and_nothing_else() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let local = topology.add_pod(1, "local", "uid-local").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let canary = canary();
    let monitor = WireMonitor::start(topology.fabric(), &canary).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);

    // Traffic without the canary crosses the fabric but is not counted.
    apps::send(&client, to, "no secret here").unwrap();
    // Same-node traffic with the canary never touches the fabric.
    apps::send(&local, to, &format!("same node {canary}")).unwrap();
    monitor.settle(Duration::from_secs(5)).unwrap();
    assert!(monitor.frames() > 0, "the monitor saw no frames at all");
    assert_eq!(monitor.canary_frames(), 0);

    // Cross-node plaintext with the canary: request and echo both cross.
    apps::send(&client, to, &format!("leak {canary}")).unwrap();
    monitor.settle(Duration::from_secs(5)).unwrap();
    assert!(monitor.canary_frames() >= 2, "saw {} canary frames", monitor.canary_frames());
}

#[test]
fn dropping_the_topology_removes_namespaces_cgroups_and_processes() {
    let mut topology = Topology::new(2).unwrap();
    let pod = topology.add_pod(0, "pod", "uid-pod").unwrap();
    let echo = apps::echo_server(&pod, ECHO_PORT).unwrap();
    let echo_pid = echo.pid();
    std::mem::forget(echo); // only the guard's cgroup sweep can stop it now
    let name = topology.name().to_owned();
    let netns: Vec<String> = std::iter::once(topology.fabric().name().to_owned())
        .chain(topology.nodes().iter().map(|node| node.netns.name().to_owned()))
        .chain([pod.netns.name().to_owned()])
        .collect();
    let run_cgroup = cgroup2_root().unwrap().join(&name);
    assert!(netns.iter().all(|ns| netns_exists(ns)));
    assert!(pod.cgroup.exists());

    drop(topology);

    for ns in &netns {
        assert!(!netns_exists(ns), "netns {ns} survived");
    }
    assert!(!run_cgroup.exists(), "cgroup {} survived", run_cgroup.display());
    let state = std::fs::read_to_string(format!("/proc/{echo_pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "pod process {echo_pid} survived: {state}");
}

#[test]
fn removing_a_pod_frees_its_address_for_the_next_pod() {
    let mut topology = Topology::new(1).unwrap();
    let first = topology.add_pod(0, "first", "uid-first").unwrap();
    topology.remove_pod("uid-first").unwrap();
    assert!(!netns_exists(first.netns.name()));
    assert!(!first.cgroup.exists());
    let second = topology.add_pod(0, "second", "uid-second").unwrap();
    assert_eq!(second.ipv4, first.ipv4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_created_by_the_harness_is_seen_by_a_watcher_with_its_ip_and_node() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "demo");
    let mut events = watcher(pods, watcher::Config::default()).applied_objects().boxed();

    let pod = cluster.add_pod(1, &PodTemplate::new("demo", "web").service_account("web")).await.unwrap();

    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(object) = events.try_next().await.unwrap() {
            let status = object.status.clone().unwrap_or_default();
            if status.pod_ip.is_some() {
                return object;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("no watch event with the pod's IP within 30 s");
    assert_eq!(seen.metadata.uid.as_deref(), Some(pod.uid.as_str()));
    assert_eq!(seen.status.as_ref().unwrap().pod_ip, Some(pod.ipv4.to_string()));
    let spec = seen.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node1"));
    assert_eq!(spec.service_account_name.as_deref(), Some("web"));
    assert!(pod.cgroup.ends_with(format!("node1/pod{}", pod.uid)));

    cluster.remove_pod("demo", &pod).await.unwrap();
    let gone = weft_tests::eventually("the pod object to go", Duration::from_secs(10), || {
        let api: Api<Pod> = Api::namespaced(cluster.client(), "demo");
        async move { api.get_opt("web").await.unwrap().is_none().then_some(()) }
    })
    .await;
    gone.unwrap();
}

/// The endpoint addresses of the EndpointSlices the controller manager keeps for `service`.
async fn slice_addresses(client: &kube::Client, namespace: &str, service: &str) -> Vec<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let list = slices.list(&params).await.expect("listing EndpointSlices");
    list.items
        .iter()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .flat_map(|endpoint| endpoint.addresses.iter().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_a_current_kubernetes_whose_controllers_work() {
    let mut cluster = Cluster::start(1).await.unwrap();
    let client = cluster.client();
    let version = client.apiserver_version().await.unwrap();
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap();
    assert!(
        version.major == "1" && minor >= 36,
        "Kubernetes {} is not a current release",
        version.git_version
    );

    // The API server advertises itself where the cluster reaches it.
    let kubernetes = weft_tests::eventually("the kubernetes Service's endpoints", Duration::from_secs(30), || {
        let client = client.clone();
        async move { Some(slice_addresses(&client, "default", "kubernetes").await).filter(|a| !a.is_empty()) }
    })
    .await
    .unwrap();
    assert_eq!(kubernetes, [FABRIC_GATEWAY.to_string()]);

    // The service-account controller gives a new namespace its `default` account.
    let pod = cluster.add_pod(0, &PodTemplate::new("shop", "web").label("app", "web")).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "shop");
    weft_tests::eventually("the default service account", Duration::from_secs(30), || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.unwrap().map(drop) }
    })
    .await
    .unwrap();

    // The EndpointSlice controller follows a Service's selector to the running pod.
    let service = Service {
        metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), "web".to_owned())].into()),
            ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Service>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let endpoints = weft_tests::eventually("the web Service's endpoints", Duration::from_secs(30), || {
        let client = client.clone();
        async move { Some(slice_addresses(&client, "shop", "web").await).filter(|a| !a.is_empty()) }
    })
    .await
    .unwrap();
    assert_eq!(endpoints, [pod.ipv4.to_string()]);
}
