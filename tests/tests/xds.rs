//! The control plane's delta xDS against the real API server: what a node proxy is told follows
//! namespace labels, pod addresses, pods and services; acks, nacks, resumed and fresh reconnects; no token, no
//! stream.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use weft_api::workload::{TunnelProtocol, address};
use weft_tests::{
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    xds::{Held, XdsClient, workload},
};

const WAIT: Duration = Duration::from_secs(20);
const SERVICE: &str = "shop/web.shop.svc.cluster.local";

fn tunnel(held: &Held, name: &str) -> Option<TunnelProtocol> {
    workload(held, name).map(|workload| workload.tunnel_protocol())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_follow_labels_pods_and_services_and_resume_after_reconnects() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let client = cluster.client();
    cluster.add_pod(0, &PodTemplate::new("shop", "cart").service_account("cart")).await.unwrap();
    let web = cluster
        .add_pod(1, &PodTemplate::new("shop", "web").service_account("web").label("app", "web"))
        .await
        .unwrap();
    let mut plane = ControlPlane::start(&cluster).await.unwrap();
    let node0 = cluster.topology().nodes()[0].clone();
    let token = plane.proxy_token(&cluster, &node0).await.unwrap();

    let mut proxy =
        tokio::task::block_in_place(|| XdsClient::connect(&node0, &plane, &token, &Held::new())).unwrap();
    tokio::task::block_in_place(|| {
        // Everything, at once: both pods (of both nodes), plaintext while not enrolled.
        proxy
            .until("both pods", WAIT, |held| tunnel(held, "cart").is_some() && tunnel(held, "web").is_some())
            .unwrap();
        assert_eq!(tunnel(&proxy.held, "cart"), Some(TunnelProtocol::None));
        let cart = workload(&proxy.held, "cart").unwrap();
        assert_eq!((cart.namespace.as_str(), cart.service_account.as_str()), ("shop", "cart"));
        assert_eq!(cart.node, "node0");
    });

    // The pod's address changes (a status update): the same workload, the new address only.
    cluster.kubelet().mark_running("shop", "cart", &["10.244.0.222".parse().unwrap()]).await.unwrap();
    tokio::task::block_in_place(|| {
        proxy
            .until("the new address", WAIT, |held| {
                workload(held, "cart").is_some_and(|cart| cart.addresses == [vec![10, 244, 0, 222]])
            })
            .unwrap();
    });

    // Label the namespace, and (as their agents would, none runs here) report both captured:
    // both are tunnelled.
    let label = serde_json::json!({ "metadata": { "labels": { "weft.dev/dataplane-mode": "ambient" } } });
    Api::<Namespace>::all(client.clone())
        .patch("shop", &PatchParams::default(), &Patch::Merge(label))
        .await
        .unwrap();
    for name in ["cart", "web"] {
        cluster.kubelet().report_captured("shop", name).await.unwrap();
    }
    tokio::task::block_in_place(|| {
        proxy
            .until("enrollment", WAIT, |held| {
                tunnel(held, "cart") == Some(TunnelProtocol::Hbone)
                    && tunnel(held, "web") == Some(TunnelProtocol::Hbone)
            })
            .unwrap();
    });

    // A service: its VIP arrives, and the selected pod lists it.
    let service = Service {
        metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_owned(), "web".to_owned())].into()),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let created = services.create(&PostParams::default(), &service).await.unwrap();
    let vip: std::net::IpAddr = created.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    tokio::task::block_in_place(|| {
        proxy
            .until("the service and its endpoint", WAIT, |held| {
                held.contains_key(SERVICE)
                    && workload(held, "web").is_some_and(|web| web.services.contains_key(SERVICE))
            })
            .unwrap();
        let Some((_, address::Type::Service(service))) = proxy.held.get(SERVICE) else {
            panic!("not a service")
        };
        let std::net::IpAddr::V4(vip) = vip else { panic!("IPv6 VIP") };
        assert_eq!(service.addresses[0].address, vip.octets().to_vec());
        let ports = &workload(&proxy.held, "web").unwrap().services[SERVICE].ports;
        assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    });

    // A nack is logged by the control plane, and what was rejected is sent again with the next
    // push (here, an unrelated change), not taken as delivered.
    let mut patched = services.get("web").await.unwrap();
    patched.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
    services.replace("web", &PostParams::default(), &patched).await.unwrap();
    tokio::task::block_in_place(|| {
        let response = proxy.next(WAIT).unwrap().unwrap();
        assert!(response.resources.iter().any(|resource| resource.name == SERVICE), "{response:?}");
        proxy.nack(&response, "test says no").unwrap();
        plane
            .process()
            .wait_for(
                |line| line.contains("proxy rejected a response") && line.contains("test says no"),
                WAIT,
            )
            .unwrap();
    });
    cluster.kubelet().mark_running("shop", "cart", &["10.244.0.223".parse().unwrap()]).await.unwrap();
    tokio::task::block_in_place(|| {
        let response = proxy.next(WAIT).unwrap().unwrap();
        let names: Vec<&str> = response.resources.iter().map(|resource| resource.name.as_str()).collect();
        assert!(names.contains(&SERVICE), "the rejected service was not sent again: {names:?}");
        proxy.ack(&response).unwrap();
    });

    // Deleting the service and a pod withdraws them.
    services.delete("web", &Default::default()).await.unwrap();
    cluster.remove_pod("shop", &web).await.unwrap();
    tokio::task::block_in_place(|| {
        proxy
            .until("withdrawals", WAIT, |held| !held.contains_key(SERVICE) && tunnel(held, "web").is_none())
            .unwrap();
    });
    let held = proxy.held.clone();
    drop(proxy);

    // A reconnect that names what it holds gets only the difference: one entry forgotten is
    // sent again, one the server never had is removed, the rest is not resent.
    let mut stale = held.clone();
    let (forgotten, _) = stale
        .iter()
        .find(|(_, (_, value))| matches!(value, address::Type::Workload(w) if w.name == "cart"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    stale.remove(&forgotten);
    stale.insert("gone-uid".into(), ("0".into(), address::Type::Workload(Default::default())));
    let mut resumed =
        tokio::task::block_in_place(|| XdsClient::connect(&node0, &plane, &token, &stale)).unwrap();
    tokio::task::block_in_place(|| {
        let response = resumed.next(WAIT).unwrap().unwrap();
        let names: Vec<&str> = response.resources.iter().map(|resource| resource.name.as_str()).collect();
        assert_eq!(names, [forgotten.as_str()]);
        assert_eq!(response.removed_resources, ["gone-uid"]);
        assert_eq!(resumed.held, held);
    });
    drop(resumed);

    // After a control-plane restart a fresh proxy converges on the same state.
    plane.restart(client).await.unwrap();
    let mut fresh =
        tokio::task::block_in_place(|| XdsClient::connect(&node0, &plane, &token, &Held::new())).unwrap();
    tokio::task::block_in_place(|| {
        let response = fresh.next(WAIT).unwrap().unwrap();
        fresh.ack(&response).unwrap();
        assert_eq!(fresh.held, held);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_valid_proxy_token_is_refused() {
    let cluster = Cluster::start(1).await.unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let node0 = cluster.topology().nodes()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("token");
    std::fs::write(&bogus, "not-a-token").unwrap();
    let mut proxy =
        tokio::task::block_in_place(|| XdsClient::connect(&node0, &plane, &bogus, &Held::new())).unwrap();
    let status = tokio::task::block_in_place(|| proxy.next(WAIT)).unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
}
