//! The mesh end to end, as users lean on it: enrolled pods and pods outside the mesh still talk
//! both ways (PERMISSIVE); a control-plane restart leaves established traffic alone and new
//! connections keep working; a deleted pod's IP reused by a pod with another service account
//! is never reached under the old identity.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use weft_tests::{
    apps, canary, cluster::Cluster, control::ControlPlane, kubelet::PodTemplate, mesh::Mesh,
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);
const LABEL: &str = "weft.dev/dataplane-mode";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_both_ways_control_restart_and_ip_reuse() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[(LABEL, "ambient")]).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let server =
        cluster.add_pod(1, &PodTemplate::new("shop", "server").service_account("payments")).await.unwrap();
    let outsider = cluster
        .add_pod(0, &PodTemplate::new("shop", "outsider").service_account("outsider").label(LABEL, "none"))
        .await
        .unwrap();
    let mut echo = Some(apps::echo_server(&server, ECHO_PORT).unwrap());
    let _outsider_echo = apps::echo_server(&outsider, ECHO_PORT).unwrap();
    let mut plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let to_server = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let to_outsider = SocketAddr::new(outsider.ipv4.into(), ECHO_PORT);

    // What the client says to the server carries the canary: none of it may cross the fabric
    // in plaintext, the control plane's restart included (the outsider's traffic is plaintext
    // by design and carries none).
    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();
    let said = |what: &str| format!("{what} {canary}");
    let (mut chat, baselines) = tokio::task::block_in_place(|| {
        // The namespace was labelled before the mesh started: ready means both are enrolled.
        // PERMISSIVE: enrolled → outside the mesh (plaintext passthrough), and back (15006).
        assert_eq!(apps::send(&client, to_outsider, "to the outsider").unwrap(), "to the outsider");
        mesh.ztunnel(0).wait_for(|line| line.contains("outbound passthrough closed"), WAIT).unwrap();
        assert_eq!(apps::send(&outsider, to_server, "from the outsider").unwrap(), "from the outsider");
        // What both node proxies hold once the client's tunnel is open, to come back to.
        assert_eq!(apps::send(&client, to_server, &said("tunnel")).unwrap(), said("tunnel"));
        let baselines: Vec<_> = (0..2).map(|node| mesh.ztunnel_baseline(node, WAIT).unwrap()).collect();
        let mut chat = apps::Chat::open(&client, to_server).unwrap();
        assert_eq!(chat.say(&said("before the restart")).unwrap(), said("before the restart"));
        (chat, baselines)
    });

    // The control plane restarts: the open connection is untouched; new ones still work.
    plane.restart(cluster.client()).await.unwrap();
    tokio::task::block_in_place(|| {
        assert_eq!(chat.say(&said("during and after")).unwrap(), said("during and after"));
        let new = said("new after restart");
        assert_eq!(apps::send(&client, to_server, &new).unwrap(), new);
    });
    drop(chat);
    // The three connections to the server (the first, the chat and the new one) are logged by
    // both proxies: read past them, so what follows is only what happens after the IP changes
    // hands.
    tokio::task::block_in_place(|| {
        for _ in 0..3 {
            mesh.ztunnel(0)
                .wait_for(
                    |line| line.contains("outbound via HBONE closed") && line.contains("sa/payments"),
                    WAIT,
                )
                .unwrap();
            mesh.ztunnel(1)
                .wait_for(|line| line.contains("inbound HBONE closed") && line.contains("sa/payments"), WAIT)
                .unwrap();
        }
        // The proxies' new control-plane streams replaced the old ones: nothing is left of
        // those, or of the connections, but a busier pool's lanes.
        let lanes = weft_tests::invariants::pool_lanes();
        for baseline in &baselines {
            baseline.returned(lanes, WAIT).unwrap();
        }
        monitor.settle(WAIT).unwrap();
        assert!(monitor.frames() > 0, "the monitor saw no traffic");
        assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric");
    });

    // The server goes; a pod with another service account takes its IP on the same node.
    drop(echo.take());
    cluster.remove_pod("shop", &server).await.unwrap();
    let newcomer =
        cluster.add_pod(1, &PodTemplate::new("shop", "newcomer").service_account("newcomer")).await.unwrap();
    assert_eq!(newcomer.ipv4, server.ipv4, "the harness reuses the freed address");
    let _newcomer_echo = apps::echo_server(&newcomer, ECHO_PORT).unwrap();
    tokio::task::block_in_place(|| {
        mesh.agent(1)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=newcomer"), WAIT)
            .unwrap();
        mesh.wait_until_tunnelled(WAIT).unwrap();
        // Until the client's proxy learns of the change, an attempt expecting the old identity
        // fails the TLS check; once it knows, it connects to the newcomer as the newcomer.
        let deadline = Instant::now() + WAIT;
        while !matches!(apps::try_send(&client, to_server, "who are you"), Ok(apps::Sent::Reply { ref reply, .. }) if reply == "who are you")
        {
            assert!(Instant::now() < deadline, "the newcomer was never reachable");
        }
        let delivered = mesh
            .ztunnel(0)
            .wait_for(
                |line| line.contains("outbound via HBONE closed") && line.contains(&server.ipv4.to_string()),
                WAIT,
            )
            .unwrap();
        assert!(delivered.contains("dst=spiffe://cluster.local/ns/shop/sa/newcomer"), "{delivered}");
        let inbound = mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE closed"), WAIT).unwrap();
        assert!(
            !inbound.contains("sa/payments"),
            "a request reached the new pod under the old identity: {inbound}"
        );
    });
}
