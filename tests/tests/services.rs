//! Services end to end: a pod connects to a Service's virtual IP (there is no kube-proxy here;
//! only the mesh can make that work), its node proxy spreads connections over the endpoints
//! of the Service's EndpointSlices (one on the client's node, one on the other), over HBONE,
//! and skips an endpoint that is down. Services whose endpoints are not pods of the mesh work
//! too: `kubernetes.default` (the API server itself) and a Service without a selector whose
//! hand-made EndpointSlice points at a pod outside the mesh.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use k8s_openapi::{
    api::{
        core::v1::ServicePort,
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use weft_tests::{
    apiserver, apps, canary,
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    mesh::{self, Mesh},
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const WAIT: Duration = Duration::from_secs(20);

/// The upstream of every outbound HBONE connection node0's proxy logs from now until `count`.
fn upstreams(mesh: &mut Mesh, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let line =
                mesh.ztunnel(0).wait_for(|line| line.contains("outbound via HBONE closed"), WAIT).unwrap();
            let upstream = line.split_whitespace().find_map(|field| field.strip_prefix("upstream=")).unwrap();
            upstream.rsplit_once(':').unwrap().0.to_owned()
        })
        .collect()
}

/// Creates Service `name` in `shop` with `port`, selecting pods labelled `app=<selector>` if
/// given, and returns its virtual IP.
async fn create_service(cluster: &Cluster, name: &str, selector: Option<&str>, port: ServicePort) -> IpAddr {
    let selector: Vec<(&str, &str)> = selector.map(|app| ("app", app)).into_iter().collect();
    cluster.create_service("shop", name, &selector, port).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_vip_spreads_over_its_endpoints_and_skips_one_that_is_down() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[("weft.dev/dataplane-mode", "ambient")]).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let web = PodTemplate::new("shop", "web-1").service_account("web").label("app", "web");
    let web1 = cluster.add_pod(1, &web).await.unwrap();
    // One endpoint on the client's own node: same-node traffic to a VIP goes through HBONE too.
    let web2 = cluster
        .add_pod(0, &PodTemplate::new("shop", "web-2").service_account("web").label("app", "web"))
        .await
        .unwrap();
    let _echo1 = apps::echo_server(&web1, ECHO_PORT).unwrap();
    let mut echo2 = Some(apps::echo_server(&web2, ECHO_PORT).unwrap());
    let port = ServicePort {
        port: SERVICE_PORT.into(),
        target_port: Some(IntOrString::Int(ECHO_PORT.into())),
        ..Default::default()
    };
    let vip = create_service(&cluster, "web", Some("web"), port).await;
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let node0 = cluster.topology().nodes()[0].netns.clone();
    let to = SocketAddr::new(vip, SERVICE_PORT);
    let backends: BTreeSet<String> = [&web1, &web2].iter().map(|pod| pod.ipv4.to_string()).collect();
    // Every message carries the canary: none may cross the fabric in plaintext, an endpoint
    // down included.
    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();

    tokio::task::block_in_place(|| {
        // The client's proxy has both endpoints from the EndpointSlice the cluster keeps.
        mesh::wait_for_endpoints(
            &cluster.topology().nodes()[0].netns,
            "shop/web.shop.svc.cluster.local",
            2,
            WAIT,
        )
        .unwrap();
        // Round robin: four connections reach both endpoints.
        for round in 0..4 {
            let message = format!("round {round} {canary}");
            assert_eq!(apps::send(&client, to, &message).unwrap(), message);
        }
        let seen: BTreeSet<String> = upstreams(&mut mesh, 4).into_iter().collect();
        assert_eq!(seen, backends);
        let baseline = mesh.ztunnel_baseline(0, WAIT).unwrap();

        // One endpoint's app stops: every connection still succeeds, on the other one.
        drop(echo2.take());
        for round in 0..4 {
            let message = format!("after round {round} {canary}");
            assert_eq!(apps::send(&client, to, &message).unwrap(), message);
        }
        let seen: BTreeSet<String> = upstreams(&mut mesh, 4).into_iter().collect();
        assert_eq!(seen, BTreeSet::from([web1.ipv4.to_string()]));
        // The destination's proxy (the client's own node's) counted the refused attempts on the
        // stopped endpoint.
        let metrics = apps::http_get(&node0, 15020, "/metrics").unwrap();
        let failed = "weft_tcp_connections_failed_total{reporter=\"destination\",reason=\"upstream\"}";
        assert!(metrics.contains(failed), "{metrics}");
        // The failed attempts left nothing behind but a busier pool's lanes.
        let lanes = weft_tests::invariants::pool_lanes();
        baseline.returned(lanes, WAIT).unwrap();
        monitor.settle(WAIT).unwrap();
        assert!(monitor.frames() > 0, "the monitor saw no traffic");
        assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_pod_reaches_the_api_server_and_a_selectorless_service_outside_the_mesh() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[("weft.dev/dataplane-mode", "ambient")]).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    // Outside the mesh, on the other node; reached through a Service that only names its address.
    let legacy = cluster.add_pod(1, &PodTemplate::new("outside", "legacy")).await.unwrap();
    let _echo = apps::echo_server(&legacy, ECHO_PORT).unwrap();
    let port = ServicePort { port: SERVICE_PORT.into(), ..Default::default() };
    let vip = create_service(&cluster, "legacy", None, port).await;
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("legacy-by-hand".into()),
            labels: Some([("kubernetes.io/service-name".to_owned(), "legacy".to_owned())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint { addresses: vec![legacy.ipv4.to_string()], ..Default::default() }]),
        ports: Some(vec![EndpointPort { port: Some(ECHO_PORT.into()), ..Default::default() }]),
    };
    Api::<EndpointSlice>::namespaced(cluster.client(), "shop")
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let node0 = cluster.topology().nodes()[0].clone();
    let ca = cluster.api().ca_file().to_owned();

    tokio::task::block_in_place(|| {
        mesh::wait_for_endpoints(&node0.netns, "default/kubernetes.default.svc.cluster.local", 1, WAIT)
            .unwrap();
        mesh::wait_for_endpoints(&node0.netns, "shop/legacy.shop.svc.cluster.local", 1, WAIT).unwrap();
        // What an in-cluster client does: TLS to the kubernetes Service, verified by its name.
        let to = SocketAddr::new(apiserver::KUBERNETES_SERVICE_IP.into(), 443);
        let version = apps::https_get(&client, to, "kubernetes.default.svc", &ca, "/version").unwrap();
        assert!(version.contains("\"gitVersion\""), "{version}");
        let line =
            mesh.ztunnel(0).wait_for(|line| line.contains("outbound passthrough closed"), WAIT).unwrap();
        assert!(line.contains(&format!("target={to}")), "{line}");

        let to = SocketAddr::new(vip, SERVICE_PORT);
        assert_eq!(apps::send(&client, to, "to the legacy app").unwrap(), "to the legacy app");
        let line =
            mesh.ztunnel(0).wait_for(|line| line.contains("outbound passthrough closed"), WAIT).unwrap();
        assert!(line.contains(&format!("upstream={}:{ECHO_PORT}", legacy.ipv4)), "{line}");
    });
}
