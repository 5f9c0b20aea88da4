//! The mesh end to end on the namespace topology: real capture, real agents handing pods to
//! real ztunnels over ZDS, mTLS + HBONE between nodes. No plaintext may cross the fabric.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use weft_tests::{
    apps::{self, Sent},
    canary,
    cluster::Cluster,
    control::ControlPlane,
    kubelet::PodTemplate,
    mesh::{Ca, Enrollment, Member, Mesh},
    topology::Topology,
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn enrolled_pods_talk_across_nodes_over_hbone_and_no_plaintext_crosses_the_fabric() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let neighbour = topology.add_pod(0, "neighbour", "uid-neighbour").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let _echo_local = apps::echo_server(&neighbour, ECHO_PORT).unwrap();
    let members = [
        Member::new(&client, "shop", "cart"),
        Member::new(&server, "shop", "payments"),
        Member::new(&neighbour, "shop", "catalog"),
    ];
    let mut mesh = Mesh::start(&topology, &members).unwrap();
    let canary = canary();
    let monitor = WireMonitor::start(topology.fabric(), &canary).unwrap();

    for ip in [IpAddr::V4(server.ipv4), IpAddr::V6(server.ipv6)] {
        let to = SocketAddr::new(ip, ECHO_PORT);
        let message = format!("secret {canary}");
        assert_eq!(apps::send(&client, to, &message).unwrap(), message, "to {to}");
    }
    let same_node = SocketAddr::new(neighbour.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&client, same_node, &canary).unwrap(), canary);

    monitor.settle(WAIT).unwrap();
    assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric");
    assert!(monitor.syns_to(weft_proxy::hbone::PORT) >= 1, "no HBONE connection crossed the fabric");
    assert_eq!(monitor.syns_to(ECHO_PORT), 0, "a direct connection to the app crossed the fabric");
    // The client's ztunnel tunnelled as the client, to the server's identity.
    let line = mesh
        .ztunnel(0)
        .wait_for(|line| line.contains("outbound via HBONE closed") && line.contains("payments"), WAIT)
        .unwrap();
    assert!(line.contains(&members[0].identity()), "{line}");
    mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE closed"), WAIT).unwrap();

    // Both ends count the connections, labelled with both identities; both proxies are ready.
    let (cart, payments) = (members[0].identity(), members[1].identity());
    for (node, reporter) in [(0, "source"), (1, "destination")] {
        let metrics = apps::http_get(&topology.nodes()[node].netns, 15020, "/metrics").unwrap();
        let opened = metrics
            .lines()
            .find(|line| {
                line.starts_with("weft_tcp_connections_opened_total{")
                    && line.contains(&format!("reporter=\"{reporter}\""))
                    && line.contains(&format!("source_principal=\"{cart}\""))
                    && line.contains(&format!("destination_principal=\"{payments}\""))
                    && line.contains("connection_security_policy=\"mutual_tls\"")
            })
            .unwrap_or_else(|| panic!("no {reporter} series on node{node}:\n{metrics}"));
        let count: f64 = opened.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 2.0, "{opened}");
        let handshakes =
            format!("weft_tls_handshake_seconds_count{{reporter=\"{reporter}\",resumed=\"false\"}}");
        assert!(metrics.contains(&handshakes), "no {handshakes} on node{node}:\n{metrics}");
        let own = if node == 0 { &cart } else { &payments };
        let expiry = format!("weft_certificate_expiration_timestamp_seconds{{identity=\"{own}\"}}");
        assert!(metrics.contains(&expiry), "no {expiry} on node{node}:\n{metrics}");
        assert!(
            apps::http_get(&topology.nodes()[node].netns, 15021, "/healthz/ready")
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
    }
    let dump = apps::http_get(&topology.nodes()[0].netns, 15000, "/config_dump").unwrap();
    // The dump stays on the node-local admin port.
    let elsewhere = apps::http_get(&topology.nodes()[0].netns, 15020, "/config_dump").unwrap();
    assert!(elsewhere.starts_with("HTTP/1.1 404"), "{elsewhere}");
    assert!(dump.contains(&cart) && dump.contains("\"name\":\"client\""), "{dump}");

    // A pod outside the mesh aiming at the server's own proxy port is refused, not looped.
    let outsider = topology.add_pod(0, "outsider", "uid-outsider").unwrap();
    let proxy_port = SocketAddr::new(server.ipv4.into(), weft_ebpf_common::port::INBOUND);
    let sent = apps::try_send(&outsider, proxy_port, "loop?");
    assert!(!matches!(sent, Ok(apps::Sent::Reply { .. })), "{sent:?}");
    mesh.ztunnel(1).wait_for(|line| line.contains("the proxy's own port"), WAIT).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_control_plane_secure_cross_node_traffic() {
    let mut cluster = Cluster::start(2).await.unwrap();
    // Enrolled by label, as the control plane tells the proxies (the agents enroll statically).
    cluster.kubelet().ensure_namespace("shop", &[("weft.dev/dataplane-mode", "ambient")]).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let server =
        cluster.add_pod(1, &PodTemplate::new("shop", "server").service_account("payments")).await.unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    // The agents enroll statically: their report that they captured the pods is made here.
    for name in ["client", "server"] {
        cluster.kubelet().report_captured("shop", name).await.unwrap();
    }
    let mut plane = ControlPlane::start(&cluster).await.unwrap();
    let mut tokens = Vec::new();
    for node in cluster.topology().nodes() {
        tokens.push(plane.proxy_token(&cluster, node).await.unwrap());
    }
    let members = [Member::new(&client, "shop", "cart"), Member::new(&server, "shop", "payments")];
    let ca = Ca::Control { plane: &plane, tokens };
    let _mesh = tokio::task::block_in_place(|| {
        Mesh::start_with(cluster.topology(), &members, &ca, &Enrollment::Static)
    })
    .unwrap();
    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();

    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let reply = tokio::task::block_in_place(|| apps::send(&client, to, &canary)).unwrap();
    assert_eq!(reply, canary);
    monitor.settle(WAIT).unwrap();
    assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric");
    for identity in [members[0].identity(), members[1].identity()] {
        plane
            .process()
            .wait_for(|line| line.contains("certificate signed") && line.contains(&identity), WAIT)
            .unwrap();
    }
}

/// A destination proxy that does not know the pod a CONNECT is for waits for its configuration
/// (10 s), then refuses, failing closed; the client's proxy must wait longer than that for the
/// answer, so that both log the reason. When both waited 10 s, the client gave up just as the
/// refusal was due and logged only that its CONNECT went unanswered.
#[test]
fn a_destination_without_the_pods_workload_refuses_it_and_the_client_proxy_hears_why() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let members = [
        Member::new(&client, "shop", "cart"),
        Member::new(&server, "shop", "payments").configured_as("server-before"),
    ];
    let mut mesh = Mesh::start(&topology, &members).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    // The client gives up on a reply before the refusal comes: only that it got none counts.
    let sent = apps::try_send(&client, to, "hello");
    assert!(!matches!(&sent, Ok(Sent::Reply { reply, .. }) if reply == "hello"), "reached the app: {sent:?}");
    // Well within the client's patience (20 s) from the CONNECT's start.
    let patience = Duration::from_secs(25);
    let denied =
        |line: &str| line.contains("inbound HBONE denied") && line.contains("not in the configuration");
    mesh.ztunnel(1).wait_for(denied, patience).unwrap();
    let refused =
        |line: &str| line.contains("outbound connection failed") && line.contains("refused with 503");
    mesh.ztunnel(0).wait_for(refused, patience).unwrap();
}

#[test]
fn an_enrolled_pod_opens_more_connections_within_a_minute_than_it_has_ephemeral_ports() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let mut echo = apps::echo_server_reporting_peers(&server, ECHO_PORT).unwrap();
    let members = [Member::new(&client, "shop", "cart"), Member::new(&server, "shop", "payments")];
    let _mesh = Mesh::start(&topology, &members).unwrap();
    // Two ports for the client's connects, each taken again 1 ms after its connection closed
    // (the kernel's default is 1 s): held for TIME_WAIT's 60 s instead, the third fails.
    client.netns.sysctl("ipv4/ip_local_port_range", "40000 40001").unwrap();
    client.netns.sysctl("ipv4/tcp_tw_reuse_delay", "1").unwrap();

    for (from, to) in
        [(IpAddr::V4(client.ipv4), IpAddr::V4(server.ipv4)), (client.ipv6.into(), server.ipv6.into())]
    {
        let to = SocketAddr::new(to, ECHO_PORT);
        for n in 0..6 {
            // The app closes first, so each of its connections ends in TIME_WAIT in its pod.
            let message = format!("round {n}");
            assert_eq!(apps::send(&client, to, &message).unwrap(), message, "{to}");
            // Its local address stays its pod's: the server's app sees it as the client.
            let seen = echo.wait_for(|line| line.starts_with("peer="), WAIT).unwrap();
            let peer: SocketAddr = seen.trim_start_matches("peer=").parse().unwrap();
            assert_eq!(peer.ip(), from, "{to}, round {n}");
        }
    }
}

#[test]
fn an_app_socket_bound_to_its_pods_interface_is_captured_and_connects_in_both_families() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let members = [Member::new(&client, "shop", "cart"), Member::new(&server, "shop", "payments")];
    let mut mesh = Mesh::start(&topology, &members).unwrap();

    // Bound to eth0 (as `ping -I` or a Go dialer's Control may do), a socket cannot reach the
    // proxy's listener on loopback: capture must send it to the pod's own address.
    for to in [IpAddr::V4(server.ipv4), IpAddr::V6(server.ipv6)] {
        let to = SocketAddr::new(to, ECHO_PORT);
        let sent = apps::try_send_with(&client, to, "bound", &["--bind-device", "eth0"]).unwrap();
        assert_eq!(sent, Sent::Reply { peer: to, reply: "bound".to_owned() }, "{to}");
        mesh.ztunnel(0).wait_for(|line| line.contains("outbound via HBONE closed"), WAIT).unwrap();
    }
}

/// SIGTERM drains a node proxy: its listeners close at once (a new connection through it fails),
/// an established connection keeps flowing until it ends, and then the proxy exits — on the
/// destination side (HBONE, GOAWAY) and on the source side (outbound capture).
#[test]
fn a_terminated_proxy_accepts_nothing_new_and_lets_open_connections_finish() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    // Another identity: its tunnel is a new TCP connection, never a stream on the client's.
    let other = topology.add_pod(0, "other", "uid-other").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let members = [
        Member::new(&client, "shop", "cart"),
        Member::new(&other, "shop", "other"),
        Member::new(&server, "shop", "payments"),
    ];
    let mut mesh = Mesh::start(&topology, &members).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let refused = |message: &str| {
        let sent = apps::try_send(&other, to, message);
        !matches!(&sent, Ok(apps::Sent::Reply { reply, .. }) if reply == message)
    };

    // The connections the pools may keep, afterwards, on the node not restarted: a lane's
    // for each of the two identities.
    let pooled = 2 * weft_tests::invariants::pool_lanes();
    // Every message carries the canary: none may cross the fabric in plaintext, a new
    // connection refused while a proxy drains included.
    let canary = canary();
    let monitor = WireMonitor::start(topology.fabric(), &canary).unwrap();
    let said = |what: &str| format!("{what} {canary}");
    for node in [1, 0] {
        // The other node's proxy, which sees its peer go and a new one come, is left as it was.
        assert_eq!(apps::send(&client, to, &said("first")).unwrap(), said("first"));
        let peer = mesh.ztunnel_baseline(1 - node, WAIT).unwrap();
        let mut chat = apps::Chat::open(&client, to).unwrap();
        assert_eq!(chat.say(&said("before")).unwrap(), said("before"));
        mesh.ztunnel(node).terminate().unwrap();
        mesh.ztunnel(node).wait_for(|line| line.contains("draining"), WAIT).unwrap();
        assert!(refused(&said("new")), "node{node}'s draining proxy took a new connection");
        let during = chat.say(&said("during")).unwrap();
        assert_eq!(during, said("during"), "node{node}'s drain cut an open connection");
        drop(chat);
        mesh.ztunnel(node).wait_for(|line| line.contains("drained: every connection ended"), WAIT).unwrap();
        // A new proxy takes over (as in a rolling upgrade) and serves new connections.
        mesh.start_ztunnel(node).unwrap();
        mesh.ztunnel(node).wait_for(|line| line.contains("pod proxy started"), WAIT).unwrap();
        assert_eq!(apps::send(&client, to, &said("after")).unwrap(), said("after"));
        peer.returned(pooled, WAIT).unwrap();
    }
    monitor.settle(WAIT).unwrap();
    assert!(monitor.frames() > 0, "the monitor saw no traffic");
    assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric while a proxy drained");
}
