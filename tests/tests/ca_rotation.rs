//! A root rotation an operator asks for (`weftctl rotate-root`), carried out by the control
//! plane through a running mesh with real TLS: short leaf lifetimes and a small step margin make
//! the three steps (a new root trusted, then signing, then the old one gone) take about a minute
//! of wall time, while a long-lived connection and fresh mTLS handshakes keep flowing.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use weft_tests::{apps, shop::Shop};

/// Leaves live this long; proxies renew them at half of it.
const LEAF_SECONDS: u64 = 20;

/// The roots of the trust bundle the control plane publishes now.
async fn published_roots(client: &kube::Client) -> Vec<String> {
    let config_map =
        Api::<ConfigMap>::namespaced(client.clone(), "weft-system").get("weft-ca-root-cert").await.unwrap();
    let bundle = config_map.data.unwrap().remove("root-cert.pem").unwrap();
    bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|pem| !pem.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_root_rotation_completes_in_a_running_mesh_with_traffic_throughout() {
    let leaf = LEAF_SECONDS.to_string();
    let flags =
        ["--max-cert-ttl-seconds", &leaf, "--ca-check-seconds", "1", "--ca-rotation-margin-seconds", "2"];
    let mut shop = Shop::start_with(&flags).await.unwrap();
    let client = shop.cluster.client();
    tokio::task::block_in_place(|| {
        // Every new connection from the client's node pays a fresh mTLS handshake.
        shop.mesh
            .restart_ztunnel_with(0, &["--pool-max-streams", "1", "--pool-idle-seconds", "0"], 1)
            .unwrap();
        shop.mesh.wait_until_tunnelled(Duration::from_secs(30)).unwrap();
    });
    // What both node proxies hold before the rotation, to come back to after it.
    let baselines: Vec<_> = tokio::task::block_in_place(|| {
        assert_eq!(apps::send(&shop.client, shop.to, "first").unwrap(), "first");
        (0..2).map(|node| shop.mesh.ztunnel_baseline(node, Duration::from_secs(10)).unwrap()).collect()
    });
    let first = published_roots(&client).await;
    assert_eq!(first.len(), 1);
    let mut chat = tokio::task::block_in_place(|| apps::Chat::open(&shop.client, shop.to)).unwrap();

    let flags = shop.mesh.weftctl_flags(&shop.cluster, &shop.plane).unwrap();
    let asked = std::process::Command::new(apps::binary("weftctl").unwrap())
        .args(&flags)
        .arg("rotate-root")
        .output()
        .unwrap();
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));

    // Traffic throughout: until the old root has left and every proxy had time to renew past it.
    let (mut saw_overlap, mut done_at, mut sent) = (false, None::<Instant>, 0);
    let deadline = Instant::now() + Duration::from_secs(180);
    while done_at.is_none_or(|done| done.elapsed() < Duration::from_secs(LEAF_SECONDS)) {
        assert!(Instant::now() < deadline, "the rotation did not finish (overlap seen: {saw_overlap})");
        let roots = published_roots(&client).await;
        saw_overlap |= roots.len() == 2 && roots.contains(&first[0]);
        if done_at.is_none() && saw_overlap && roots.len() == 1 && roots[0] != first[0] {
            done_at = Some(Instant::now());
        }
        let message = format!("during the rotation {sent} {}", shop.canary);
        tokio::task::block_in_place(|| {
            assert_eq!(
                apps::send(&shop.client, shop.to, &message).unwrap(),
                message,
                "a fresh handshake failed"
            );
            assert_eq!(chat.say(&message).unwrap(), message, "the long-lived connection broke");
        });
        sent += 1;
        // Pacing, not synchronisation: a request every quarter second.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sent > 100, "{sent} requests");
    shop.monitor.settle(Duration::from_secs(5)).unwrap();
    assert_eq!(shop.monitor.canary_frames(), 0, "plaintext crossed during the rotation");
    // The certificates and roots replaced, and the hundreds of handshakes, left nothing behind
    // but a busier pool's lanes.
    drop(chat);
    let lanes = weft_tests::invariants::pool_lanes();
    for baseline in baselines {
        tokio::task::block_in_place(|| baseline.returned(lanes, Duration::from_secs(10))).unwrap();
    }
}
