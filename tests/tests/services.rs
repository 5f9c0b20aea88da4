//! Services end to end: a pod connects to a Service's virtual IP (there is no kube-proxy here;
//! only the mesh can make that work), its node proxy spreads connections over the endpoints
//! of the Service's EndpointSlices (one on the client's node, one on the other), over HBONE,
//! and skips an endpoint that is down.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use weft_tests::{
    apps,
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    mesh::{self, Mesh},
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
    let service = Service {
        metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), "web".to_owned())].into()),
            ports: Some(vec![ServicePort {
                port: SERVICE_PORT.into(),
                target_port: Some(IntOrString::Int(ECHO_PORT.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = Api::<Service>::namespaced(cluster.client(), "shop")
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let vip: IpAddr = created.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let node0 = cluster.topology().nodes()[0].netns.clone();
    let to = SocketAddr::new(vip, SERVICE_PORT);
    let backends: BTreeSet<String> = [&web1, &web2].iter().map(|pod| pod.ipv4.to_string()).collect();

    tokio::task::block_in_place(|| {
        // The client's proxy has both endpoints from the EndpointSlice the cluster keeps.
        mesh::wait_for_endpoints(&cluster.topology().nodes()[0], "shop/web.shop.svc.cluster.local", 2, WAIT)
            .unwrap();
        // Round robin: four connections reach both endpoints.
        for round in 0..4 {
            let message = format!("round {round}");
            assert_eq!(apps::send(&client, to, &message).unwrap(), message);
        }
        let seen: BTreeSet<String> = upstreams(&mut mesh, 4).into_iter().collect();
        assert_eq!(seen, backends);

        // One endpoint's app stops: every connection still succeeds, on the other one.
        drop(echo2.take());
        for round in 0..4 {
            let message = format!("after round {round}");
            assert_eq!(apps::send(&client, to, &message).unwrap(), message);
        }
        let seen: BTreeSet<String> = upstreams(&mut mesh, 4).into_iter().collect();
        assert_eq!(seen, BTreeSet::from([web1.ipv4.to_string()]));
        // The destination's proxy (the client's own node's) counted the refused attempts on the
        // stopped endpoint.
        let metrics = apps::http_get(&node0, 15020, "/metrics").unwrap();
        let failed = "weft_tcp_connections_failed_total{reporter=\"destination\",reason=\"upstream\"}";
        assert!(metrics.contains(failed), "{metrics}");
    });
}
