//! The Gateway API's mesh conformance suite (`sigs.k8s.io/gateway-api/conformance`, profiles
//! MESH-HTTP and MESH-GRPC, built by `cargo xtask setup`), unmodified, against Weft on real
//! nodes, installed by its manifests: the suite deploys its echo apps (Istio's echo app, its
//! echo-advanced image assembled here), attaches its routes to their Services, and sends its
//! requests from inside the pods (`kubectl exec` of the echo client). Its two namespaces are
//! made beforehand as an ambient user makes them — enrolled, and served by a waypoint of their
//! own (`weft.dev/use-waypoint`), as Istio runs the suite in ambient mode; the suite adds its
//! own labels and objects to them. The report goes to `target/conformance/report.yaml`.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]
use std::{path::PathBuf, process::Command, time::Duration};

use weft_tests::{images, nodes::RealCluster, nodes::workloads};

const WAIT: Duration = Duration::from_secs(120);
/// The suite's namespaces (its `MeshNamespace` and `MeshConsumerNamespace`).
const NAMESPACES: [&str; 2] = ["gateway-conformance-mesh", "gateway-conformance-mesh-consumer"];
/// The suite's namespaces are enrolled and use their own waypoint.
const NAMESPACE_LABELS: [&str; 2] = ["weft.dev/dataplane-mode=ambient", "weft.dev/use-waypoint=waypoint"];
/// What Weft claims beyond the profiles' core; every other extended feature is reported as
/// unsupported (README says why).
const SUPPORTED_FEATURES: &[&str] = &[
    "Mesh",
    "HTTPRoute",
    "GRPCRoute",
    "MeshClusterIPMatching",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule",
    "MeshHTTPRouteBackendRequestHeaderModification",
    "MeshConsumerRoute",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteParentRefPort",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
];

/// The image the suite's mesh manifests run (read from them, as setup linked them).
fn echo_image_reference() -> String {
    let manifests = weft_tests::apiserver::kube_bin().unwrap().join("gateway-api-conformance-mesh.yaml");
    let text = std::fs::read_to_string(&manifests).unwrap();
    text.lines().find_map(|line| line.trim().strip_prefix("image: ")).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_api_mesh_conformance_suite_passes_on_real_nodes() {
    let mut images = images::weft().unwrap();
    images.push(images::echo_advanced(&echo_image_reference()).unwrap());
    let cluster = RealCluster::start(2, &images).await.unwrap();
    weft_tests::control::install_gateway_api_crds(cluster.client()).await.unwrap();
    cluster.install_weft().await.unwrap();
    let client = cluster.client();
    let labels: serde_json::Map<String, serde_json::Value> = NAMESPACE_LABELS
        .iter()
        .map(|label| label.split_once('=').unwrap())
        .map(|(key, value)| (key.to_owned(), value.into()))
        .collect();
    let labels = serde_json::Value::Object(labels);
    for namespace in NAMESPACES {
        workloads::create_namespace(&client, namespace, labels.clone()).await.unwrap();
        weft_tests::waypoint::create_gateway(client.clone(), namespace, "waypoint").await.unwrap();
        let waypoint = "gateway.networking.k8s.io/gateway-name=waypoint";
        cluster.wait_for_ready(namespace, waypoint, 1, WAIT).await.unwrap();
    }

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../conformance");
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.yaml");
    let _ = std::fs::remove_file(&report);
    let suite = weft_tests::apiserver::kube_bin().unwrap().join("gateway-api-conformance.test");
    let mut command = Command::new(suite);
    command
        .env("KUBECONFIG", cluster.api().kubeconfig())
        .args(["-test.run", "TestConformance", "-test.v", "-test.timeout", "40m"])
        .arg("--conformance-profiles=MESH-HTTP,MESH-GRPC")
        // The suite applies its namespaces whole: without these it would take them out of the
        // mesh.
        .arg(format!("--namespace-labels={}", NAMESPACE_LABELS.join(",")))
        .arg(format!("--supported-features={}", SUPPORTED_FEATURES.join(",")))
        .arg(format!("--report-output={}", report.display()))
        .args(["--organization=weft", "--project=weft", "--url=https://weft.dev"])
        .arg(format!("--version={}", env!("CARGO_PKG_VERSION")))
        .arg("--contact=weft maintainers");
    // Written as it runs, to be followed while it does.
    let log = dir.join("suite.log");
    let file = std::fs::File::create(&log).unwrap();
    command.stdout(file.try_clone().unwrap()).stderr(file);
    let status = tokio::task::block_in_place(|| command.status()).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let failed: Vec<&str> = text.lines().filter(|line| line.trim_start().starts_with("--- FAIL")).collect();
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    assert!(
        status.success(),
        "the conformance suite failed ({} failures; whole log in {}):\n{}\n…\n{}",
        failed.len(),
        log.display(),
        failed.join("\n"),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(report.exists(), "the suite wrote no report");
}
