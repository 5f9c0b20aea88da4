//! What an enrolled pod's app sees of its clients, who may pass capture, and how much of the
//! node proxy one pod may take: on the namespace topology with real capture, agents and
//! ztunnels configured as the manifests ship them.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use weft_tests::{
    apps::{self, Sent},
    canary,
    mesh::{Member, Mesh},
    topology::Topology,
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
/// Another port an echo server listens on.
const SECOND_ECHO_PORT: u16 = 8082;
/// A port no app in the test listens on.
const CLOSED_PORT: u16 = 8081;
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn the_app_sees_each_client_by_its_own_address_and_no_reply_leaves_the_pod() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let neighbour = topology.add_pod(1, "neighbour", "uid-neighbour").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let outsider = topology.add_pod(0, "outsider", "uid-outsider").unwrap();
    let mut echo = apps::echo_server_reporting_peers(&server, ECHO_PORT).unwrap();
    let members = [
        Member::new(&client, "shop", "cart"),
        Member::new(&neighbour, "shop", "catalog"),
        Member::new(&server, "shop", "payments"),
    ];
    let _mesh = Mesh::start(&topology, &members).unwrap();
    let canary = canary();
    let monitor = WireMonitor::start(topology.fabric(), &canary).unwrap();

    // Meshed clients, across nodes and on the server's node, both families: HBONE in, and the
    // app's peer is the client pod.
    let meshed = [
        (&client, IpAddr::V4(client.ipv4), IpAddr::V4(server.ipv4)),
        (&client, IpAddr::V6(client.ipv6), IpAddr::V6(server.ipv6)),
        (&neighbour, IpAddr::V4(neighbour.ipv4), IpAddr::V4(server.ipv4)),
    ];
    for (pod, from, to) in meshed {
        let to = SocketAddr::new(to, ECHO_PORT);
        assert_eq!(apps::send(pod, to, &canary).unwrap(), canary, "{} to {to}", pod.name);
        let seen = echo.wait_for(|line| line.starts_with("peer="), WAIT).unwrap();
        let peer: SocketAddr = seen.trim_start_matches("peer=").parse().unwrap();
        assert_eq!(peer.ip(), from, "{} to {to}", pod.name);
    }
    // A client outside the mesh, in plaintext (PERMISSIVE): its own address too.
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&outsider, to, "plain").unwrap(), "plain");
    let seen = echo.wait_for(|line| line.starts_with("peer="), WAIT).unwrap();
    let peer: SocketAddr = seen.trim_start_matches("peer=").parse().unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(outsider.ipv4));

    monitor.settle(WAIT).unwrap();
    assert_eq!(monitor.canary_frames(), 0, "plaintext crossed the fabric");
    assert_eq!(
        monitor.syns_to(ECHO_PORT),
        1,
        "only the outsider's own connection may reach the app's port on the fabric"
    );
}

#[test]
fn one_clients_deliveries_to_a_pods_ports_share_the_pods_ephemeral_ports() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let ports = [ECHO_PORT, SECOND_ECHO_PORT];
    let mut echoes = ports.map(|port| apps::echo_server_reporting_peers(&server, port).unwrap());
    let members = [Member::new(&client, "shop", "cart"), Member::new(&server, "shop", "payments")];
    let _mesh = Mesh::start(&topology, &members).unwrap();
    // Two ports for every connect and bind in the server's pod: deliveries that each took a
    // port of their own at bind could hold two connections from the client's address at once.
    server.netns.sysctl("ipv4/ip_local_port_range", "40000 40001").unwrap();

    let _held =
        ports.map(|port| apps::hold(&client, SocketAddr::new(server.ipv4.into(), port), 2, WAIT).unwrap());
    // From the client's own address (a delivery from the pod's address would not show it).
    for echo in &mut echoes {
        for _ in 0..2 {
            let seen = echo.wait_for(|line| line.starts_with("peer="), WAIT).unwrap();
            let peer: SocketAddr = seen.trim_start_matches("peer=").parse().unwrap();
            assert_eq!(peer.ip(), IpAddr::V4(client.ipv4));
        }
    }
}

#[test]
fn a_client_opens_more_connections_to_a_pod_port_within_a_minute_than_the_pod_has_ephemeral_ports() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let mut echo = apps::echo_server_reporting_peers(&server, ECHO_PORT).unwrap();
    let members = [Member::new(&client, "shop", "cart"), Member::new(&server, "shop", "payments")];
    let _mesh = Mesh::start(&topology, &members).unwrap();
    // Two ports in the server's pod, each taken again 1 ms after its delivery closed (the
    // kernel's default is 1 s): held for TIME_WAIT's 60 s instead, the third connection fails.
    server.netns.sysctl("ipv4/ip_local_port_range", "40000 40001").unwrap();
    server.netns.sysctl("ipv4/tcp_tw_reuse_delay", "1").unwrap();

    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    for n in 0..6 {
        // The client closes first, so each delivery ends in TIME_WAIT in the server's pod.
        assert_eq!(apps::send(&client, to, &format!("round {n}")).unwrap(), format!("round {n}"));
        let seen = echo.wait_for(|line| line.starts_with("peer="), WAIT).unwrap();
        let peer: SocketAddr = seen.trim_start_matches("peer=").parse().unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(client.ipv4), "round {n}");
    }
}

#[test]
fn a_delivery_to_a_port_the_app_does_not_listen_on_is_refused_at_once_in_both_families() {
    let mut topology = Topology::new(2).unwrap();
    let outsider = topology.add_pod(0, "outsider", "uid-outsider").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let members = [Member::new(&server, "shop", "payments")];
    let mut mesh = Mesh::start(&topology, &members).unwrap();

    // The app's kernel answers the proxy's SYN, sent from the client's address, with a reset:
    // it must come back to the proxy (not go to the client's address), or the proxy waits out
    // its connect timeout.
    for to in [IpAddr::V4(server.ipv4), IpAddr::V6(server.ipv6)] {
        let to = SocketAddr::new(to, CLOSED_PORT);
        // The client's connection is closed either way; only the proxy knows why.
        let _closed = apps::try_send(&outsider, to, "anyone?");
        let line = mesh.ztunnel(1).wait_for(|line| line.contains("plaintext inbound failed"), WAIT).unwrap();
        assert!(line.contains("refused") && !line.contains("timed out"), "{to}: {line}");
    }
}

#[test]
fn a_pod_forging_the_proxy_mark_is_still_captured_with_the_shipped_settings() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let members = [Member::new(&client, "shop", "cart"), Member::new(&server, "shop", "payments")];
    let mut mesh = Mesh::start(&topology, &members).unwrap();
    let canary = canary();
    let monitor = WireMonitor::start(topology.fabric(), &canary).unwrap();

    // The agent runs without --proxy-cgroup, as the manifests ship it: it trusts the cgroup of
    // the ztunnel that connected to its handoff socket, and no one else's marked sockets.
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let mark = weft_ebpf_common::PROXY_MARK.to_string();
    let sent = apps::try_send_with(&client, to, &canary, &["--mark", &mark]).unwrap();
    assert_eq!(sent, Sent::Reply { peer: to, reply: canary.clone() });
    mesh.ztunnel(0).wait_for(|line| line.contains("outbound via HBONE closed"), WAIT).unwrap();

    monitor.settle(WAIT).unwrap();
    assert_eq!(monitor.canary_frames(), 0, "the forged socket escaped capture: plaintext crossed the fabric");
    assert_eq!(monitor.syns_to(ECHO_PORT), 0, "the forged socket connected straight to the app");
}

#[test]
fn a_pod_over_its_connection_limit_has_new_connections_closed_and_its_neighbour_is_unaffected() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let neighbour = topology.add_pod(0, "neighbour", "uid-neighbour").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let members = [
        Member::new(&client, "shop", "cart"),
        Member::new(&neighbour, "shop", "catalog"),
        Member::new(&server, "shop", "payments"),
    ];
    let mut mesh = Mesh::start(&topology, &members).unwrap();
    mesh.restart_ztunnel_with(0, &["--max-connections-per-pod", "2"], 2).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    // What the client's node proxy holds once both pods' tunnels to the server's node are open
    // (the pool keys them by source pod).
    assert_eq!(apps::send(&client, to, "first").unwrap(), "first");
    assert_eq!(apps::send(&neighbour, to, "first").unwrap(), "first");
    let baseline = mesh.ztunnel_baseline(0, WAIT).unwrap();

    let held = apps::hold(&client, to, 2, WAIT).unwrap();
    // Accepted by the kernel, closed by the proxy: no echo.
    let third = apps::try_send(&client, to, "third");
    assert!(
        !matches!(third, Ok(Sent::Reply { ref reply, .. }) if reply == "third"),
        "over the limit: {third:?}"
    );
    assert_eq!(apps::send(&neighbour, to, "neighbour").unwrap(), "neighbour", "another pod's share");
    drop(held);
    // Closing the held connections frees their places as the proxy sees them close.
    weft_tests::until(
        "a place freed",
        WAIT,
        || matches!(apps::try_send(&client, to, "again"), Ok(Sent::Reply { reply, .. }) if reply == "again"),
    )
    .unwrap();
    // The refused connection and the closed ones left nothing behind, but for the connections
    // a busier pool may have opened to the server's node (at most a lane's).
    let lanes = weft_tests::invariants::pool_lanes();
    baseline.returned(lanes, WAIT).unwrap();
}
