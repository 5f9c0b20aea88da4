//! The control plane's CA against the real API server: node-bound authorization by
//! TokenReview and pod lookups, CSR checks, and a root that survives restarts. Requests are made
//! from inside a node's network namespace, as that node's ztunnel would.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{path::Path, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use weft_proxy::identity::{
    Identity,
    ca::{CaClient, Error, GrpcCa},
};
use weft_tests::{
    apps,
    cluster::Cluster,
    control::{self, ControlPlane},
    kubelet::PodTemplate,
    topology::Node,
};

fn csr(sans: &[&str], ca: bool) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans.iter().map(|san| SanType::URI((*san).try_into().unwrap())).collect();
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Asks the CA from inside `node`'s network namespace.
fn sign_from(
    node: &Node,
    plane: &ControlPlane,
    token: &Path,
    identity: &Identity,
    csr: String,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let root = plane.root_file().to_owned();
    let (address, token, identity) = (plane.address(), token.to_owned(), identity.clone());
    node.netns
        .run(move || {
            // The client, its runtime and so its sockets all live on this thread, inside the
            // node's namespace: the fabric address means nothing (or somewhere else) outside.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let ca = GrpcCa::new(&address, &root, &token, &Default::default()).unwrap();
                // The chain as the wire had it: leaf, intermediate, and the trust bundle last.
                let issued = ca.sign(&identity, &csr, Duration::from_secs(3600)).await?;
                Ok([issued.chain, issued.roots].concat())
            })
        })
        .unwrap()
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "shop", sa)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_only_for_identities_running_on_the_callers_node() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.add_pod(0, &PodTemplate::new("shop", "cart").service_account("cart")).await.unwrap();
    cluster.add_pod(1, &PodTemplate::new("shop", "payments").service_account("payments")).await.unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let node0 = cluster.topology().nodes()[0].clone();
    let token = plane.proxy_token(&cluster, &node0).await.unwrap();
    let cart = id("cart").to_string();

    // The mesh's inventory stays on the pod-local admin port; probes and metrics are public.
    let public = apps::http_get_at(plane.monitoring(), "/config_dump").unwrap();
    assert!(public.starts_with("HTTP/1.1 404"), "{public}");
    let probe = apps::http_get_at(plane.monitoring(), "/healthz/ready").unwrap();
    assert!(probe.starts_with("HTTP/1.1 200") || probe.starts_with("HTTP/1.1 503"), "{probe}");
    let dump = apps::http_get_at(plane.admin(), "/config_dump").unwrap();
    assert!(dump.starts_with("HTTP/1.1 200") && dump.contains("\"workloads\""), "{dump}");

    // Granted: chain of leaf, intermediate, root; the leaf names exactly the identity and
    // verifies against the published root.
    let chain = sign_from(&node0, &plane, &token, &id("cart"), csr(&[&cart], false)).unwrap();
    assert_eq!(chain.len(), 3);
    let root = CertificateDer::from_pem_file(plane.root_file()).unwrap();
    assert_eq!(chain[2], root);
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    webpki::EndEntityCert::try_from(&chain[0])
        .unwrap()
        .verify_for_usage(
            rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all,
            &[anchor],
            &chain[1..2],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    assert_eq!(weft_proxy::tls::peer_identity(Some(&chain)).unwrap(), id("cart"));

    let refused = |result: Result<_, Error>| match result {
        Err(Error::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Only on node 1.
    let payments = id("payments").to_string();
    let reason = refused(sign_from(&node0, &plane, &token, &id("payments"), csr(&[&payments], false)));
    assert!(reason.contains("no running pod on node node0"), "{reason}");
    // Bad CSRs.
    let other = id("other").to_string();
    refused(sign_from(&node0, &plane, &token, &id("cart"), csr(&[&cart, &other], false)));
    refused(sign_from(&node0, &plane, &token, &id("cart"), csr(&[&cart], true)));
    // No token, and a token for another audience.
    let empty = token.with_extension("empty");
    std::fs::write(&empty, "").unwrap();
    assert!(
        refused(sign_from(&node0, &plane, &empty, &id("cart"), csr(&[&cart], false)))
            .contains("no bearer token")
    );
    let wrong_audience =
        control::request_token(cluster.client(), "ztunnel-node0", None, "kubernetes").await.unwrap();
    let wrong = token.with_extension("audience");
    std::fs::write(&wrong, wrong_audience).unwrap();
    assert!(
        refused(sign_from(&node0, &plane, &wrong, &id("cart"), csr(&[&cart], false)))
            .contains("token not accepted")
    );
    // A token of the proxy's account that is bound to no pod says nothing about a node.
    let unbound = control::request_token(cluster.client(), "", None, control::AUDIENCE).await.unwrap();
    let unbound_file = token.with_extension("unbound");
    std::fs::write(&unbound_file, unbound).unwrap();
    let reason = refused(sign_from(&node0, &plane, &unbound_file, &id("cart"), csr(&[&cart], false)));
    assert!(reason.contains("not bound to a pod"), "{reason}");
    // The pod is gone: its identity is no longer on the node.
    let cart_pod = cluster.topology().pods().find(|pod| pod.name == "cart").unwrap().clone();
    cluster.remove_pod("shop", &cart_pod).await.unwrap();
    refused(sign_from(&node0, &plane, &token, &id("cart"), csr(&[&cart], false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_keeps_its_root() {
    let mut cluster = Cluster::start(1).await.unwrap();
    cluster.add_pod(0, &PodTemplate::new("shop", "cart").service_account("cart")).await.unwrap();
    let mut plane = ControlPlane::start(&cluster).await.unwrap();
    let root_before = std::fs::read(plane.root_file()).unwrap();
    plane.restart(cluster.client()).await.unwrap();
    assert_eq!(std::fs::read(plane.root_file()).unwrap(), root_before);

    let node0 = cluster.topology().nodes()[0].clone();
    let token = plane.proxy_token(&cluster, &node0).await.unwrap();
    let cart = id("cart").to_string();
    let chain = sign_from(&node0, &plane, &token, &id("cart"), csr(&[&cart], false)).unwrap();
    assert_eq!(
        chain.last().unwrap().as_ref(),
        CertificateDer::from_pem_slice(&root_before).unwrap().as_ref()
    );
}

/// Two control planes share the CA's Secret: an operator's rotation request is acted on once,
/// by whichever checks first, and the other adopts the new state and says it changed, so it
/// serves and publishes the same trust bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_act_once_on_a_rotation_request_and_both_follow_it() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};
    use weft_control::ca::{Authority, Lifetimes};

    let cluster = Cluster::start(1).await.unwrap();
    cluster.kubelet().ensure_namespace(control::NAMESPACE, &[]).await.unwrap();
    let lifetimes = Lifetimes::with_max_leaf(Duration::from_secs(3600));
    let load = || Authority::load_or_create(cluster.client(), control::NAMESPACE, "weft-ca", lifetimes);
    let (first, second) = (load().await.unwrap(), load().await.unwrap());
    assert_eq!(first.bundle_pem(), second.bundle_pem(), "both read the Secret the first created");
    assert_eq!(first.maintain().await.unwrap(), None, "nothing is due on a new CA");

    let request = serde_json::json!({ "metadata": { "annotations": { weft_api::ca::ROTATE_ROOT: "1" } } });
    kube::Api::<Secret>::namespaced(cluster.client(), control::NAMESPACE)
        .patch("weft-ca", &PatchParams::default(), &Patch::Merge(request))
        .await
        .unwrap();
    let started = first.maintain().await.unwrap();
    assert!(started.is_some_and(|change| change.contains("rotation requested")), "{started:?}");
    assert_eq!(first.bundle_pem().matches("BEGIN CERTIFICATE").count(), 2, "the new root joined");
    assert_eq!(second.maintain().await.unwrap(), Some("another control plane changed the CA"));
    assert_eq!(second.bundle_pem(), first.bundle_pem());
    assert_eq!(first.maintain().await.unwrap(), None, "the same request again");
    assert_eq!(second.maintain().await.unwrap(), None, "the same request again");
}
