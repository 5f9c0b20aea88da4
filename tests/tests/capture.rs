//! eBPF capture, for real: the agent's datapath loaded into this kernel and attached to a
//! harness node's cgroup, real pods (netns + cgroup + process), and a stand-in proxy that
//! relays each captured connection to its original destination.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]
use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use weft_agent::datapath::{self, Config, Datapath, PodAddrs};
use weft_ebpf_common::{ABI_VERSION, ConfigSlot, Counter, map, pin, port};
use weft_tests::{
    apps::{self, Chat, Sent, Standin},
    bpffs, process,
    topology::{Node, Pod, Topology},
    wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(10);

fn install(topology: &Topology, node: usize, max_enrolled: u32) -> Datapath {
    let node = &topology.nodes()[node];
    let mut datapath = Datapath::install(&config(node, max_enrolled)).unwrap();
    datapath.trust_proxy_cgroup(&node.proxy_cgroup).unwrap();
    datapath
}

/// The agent's datapath settings for `node`, as its DaemonSet sets them.
fn config(node: &Node, max_enrolled: u32) -> Config {
    Config {
        cgroup: node.cgroup.clone(),
        node_cgroup: node.system_cgroup.clone(),
        node_netns: node.netns.path(),
        bpffs_root: node.bpffs_root.clone(),
        max_enrolled,
    }
}

fn enroll(datapath: &mut Datapath, pod: &Pod) -> Result<u64, datapath::Error> {
    let netns = File::open(pod.netns.path()).unwrap();
    datapath.enroll(&netns, PodAddrs { ipv4: Some(pod.ipv4), ipv6: Some(pod.ipv6) })
}

fn addrs(pod: &Pod, port: u16) -> [SocketAddr; 2] {
    [SocketAddr::new(pod.ipv4.into(), port), SocketAddr::new(IpAddr::V6(pod.ipv6), port)]
}

#[test]
fn enrolled_client_reaches_remote_server_through_the_proxy_and_sees_the_original_peer() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &client).unwrap();
    let mut standin = Standin::start(&topology.nodes()[0], &client).unwrap();

    for (n, to) in addrs(&server, ECHO_PORT).into_iter().enumerate() {
        let sent = apps::try_send(&client, to, "via the proxy").unwrap();
        assert_eq!(
            sent,
            Sent::Reply { peer: to, reply: "via the proxy".into() },
            "getpeername must show {to}"
        );
        let seen = standin.accepted(n + 1, WAIT).unwrap()[n].clone();
        assert_eq!(seen.listener, port::OUTBOUND);
        assert_eq!(seen.orig, to);
        assert_eq!(
            seen.peer.ip(),
            if to.ip().is_ipv4() { IpAddr::V4(client.ipv4) } else { client.ipv6.into() }
        );
    }
    assert_eq!(datapath.counter(Counter::Redirected).unwrap(), 2);
    assert!(datapath.counter(Counter::OrigDstAnswered).unwrap() >= 2);
}

#[test]
fn pods_not_enrolled_and_local_destinations_are_not_captured() {
    let mut topology = Topology::new(1).unwrap();
    let enrolled = topology.add_pod(0, "enrolled", "uid-enrolled").unwrap();
    let bystander = topology.add_pod(0, "bystander", "uid-bystander").unwrap();
    let server = topology.add_pod(0, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let _own_echo = apps::echo_server(&enrolled, 9090).unwrap();
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &enrolled).unwrap();
    let mut standin = Standin::start(&topology.nodes()[0], &enrolled).unwrap();

    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    apps::send(&bystander, to, "not enrolled").unwrap();
    // The enrolled pod talking to itself, by loopback and by its own address, stays inside.
    apps::send(&enrolled, "127.0.0.1:9090".parse().unwrap(), "loopback").unwrap();
    apps::send(&enrolled, SocketAddr::new(enrolled.ipv4.into(), 9090), "own address").unwrap();
    // A captured connection after them: once it is reported, any earlier one would be too.
    apps::send(&enrolled, to, "marker").unwrap();

    let seen = standin.accepted(1, WAIT).unwrap();
    assert_eq!(seen.len(), 1, "only the marker may be captured: {seen:?}");
    assert_eq!(seen[0].orig, to);
    assert_eq!(datapath.counter(Counter::ExemptLocal).unwrap(), 2);
}

#[test]
fn inbound_connections_on_any_port_arrive_at_the_inbound_listener_with_their_port() {
    let mut topology = Topology::new(2).unwrap();
    let server = topology.add_pod(0, "server", "uid-server").unwrap();
    let client = topology.add_pod(1, "client", "uid-client").unwrap();
    let ports = [8080, 8443, 9999];
    let _echoes: Vec<_> = ports.iter().map(|port| apps::echo_server(&server, *port).unwrap()).collect();
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &server).unwrap();
    let mut standin = Standin::start(&topology.nodes()[0], &server).unwrap();

    let targets: Vec<SocketAddr> = ports.iter().flat_map(|port| addrs(&server, *port)).collect();
    for (n, to) in targets.iter().enumerate() {
        apps::send(&client, *to, "inbound").unwrap();
        let seen = standin.accepted(n + 1, WAIT).unwrap()[n].clone();
        assert_eq!(seen.listener, port::INBOUND);
        assert_eq!(seen.orig, *to, "the original destination, port included");
    }
    assert_eq!(datapath.counter(Counter::InboundSteered).unwrap(), targets.len() as u64);
}

#[test]
fn only_the_proxys_own_listen_registers_it_and_an_app_joining_its_port_gets_nothing() {
    let mut topology = Topology::new(2).unwrap();
    let server = topology.add_pod(0, "server", "uid-server").unwrap();
    let client = topology.add_pod(1, "client", "uid-client").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &server).unwrap();
    let mut proxy = Standin::start(&topology.nodes()[0], &server).unwrap();
    // After the proxy, marked like it and in its listeners' SO_REUSEPORT groups.
    let impostor = Standin::impostor(&server).unwrap();
    assert_eq!(datapath.counter(Counter::ListenerRegistered).unwrap(), 1, "the proxy's listen registered it");
    assert_eq!(datapath.counter(Counter::ListenerIgnored).unwrap(), 1, "the app's listen was ignored");

    // Were the impostor registered, or picked from the group, it would take some of these and
    // the proxy would fall short.
    let targets: Vec<SocketAddr> = (0..4).flat_map(|_| addrs(&server, ECHO_PORT)).collect();
    for (n, to) in targets.iter().enumerate() {
        apps::send(&client, *to, "inbound").unwrap();
        assert_eq!(proxy.accepted(n + 1, WAIT).unwrap()[n].orig, *to);
    }
    impostor.stop().unwrap();
}

#[test]
fn without_a_proxy_enrolled_traffic_is_refused_and_never_leaves_the_node() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let local = topology.add_pod(1, "local", "uid-local").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let monitor = WireMonitor::start(topology.fabric(), &weft_tests::canary()).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);

    // Before enrollment the connection crosses the fabric: the monitor can see its SYN.
    apps::send(&client, to, "plaintext").unwrap();
    monitor.settle(WAIT).unwrap();
    let syns_before = monitor.syns_to(ECHO_PORT);
    assert!(syns_before >= 1);

    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &client).unwrap();
    for to in addrs(&server, ECHO_PORT) {
        assert_eq!(apps::try_send(&client, to, "no proxy").unwrap(), Sent::ConnectError(libc::ECONNREFUSED));
    }
    monitor.settle(WAIT).unwrap();
    assert_eq!(monitor.syns_to(ECHO_PORT), syns_before, "a SYN to the original destination left the node");

    // Inbound to an enrolled pod with no proxy listener is refused too.
    let mut server_node = install(&topology, 1, 16);
    enroll(&mut server_node, &server).unwrap();
    assert_eq!(apps::try_send(&local, to, "no proxy").unwrap(), Sent::ConnectError(libc::ECONNREFUSED));
    assert_eq!(server_node.counter(Counter::InboundRefused).unwrap(), 1);
}

#[test]
fn unenroll_and_reenroll_switch_new_connections_and_spare_established_ones() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut datapath = install(&topology, 0, 16);
    let cookie = enroll(&mut datapath, &client).unwrap();
    let mut standin = Standin::start(&topology.nodes()[0], &client).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);

    let mut chat = Chat::open(&client, to).unwrap();
    assert_eq!(chat.say("one").unwrap(), "one");
    assert_eq!(standin.accepted(1, WAIT).unwrap().len(), 1);

    datapath.unenroll(cookie).unwrap();
    apps::send(&client, to, "direct").unwrap();
    assert_eq!(chat.say("two").unwrap(), "two", "the established connection must survive un-enrollment");

    enroll(&mut datapath, &client).unwrap();
    apps::send(&client, to, "captured again").unwrap();
    let seen = standin.accepted(2, WAIT).unwrap();
    assert_eq!(seen.len(), 2, "the send while un-enrolled must not have been captured: {seen:?}");
    assert_eq!(chat.say("three").unwrap(), "three");
}

#[test]
fn an_unenrolled_pods_inbound_connections_stop_being_steered_at_once() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut datapath = install(&topology, 1, 16);
    let cookie = enroll(&mut datapath, &server).unwrap();
    let _standin = Standin::start(&topology.nodes()[1], &server).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&client, to, "steered").unwrap(), "steered");
    assert_eq!(datapath.counter(Counter::InboundSteered).unwrap(), 1);

    // Held open, the pod's inbound link outlives its pin: unenrolling must detach it.
    let _held = bpffs::hold_pinned(&topology.nodes()[1].bpffs_root.join(pin::LINKS)).unwrap();
    datapath.unenroll(cookie).unwrap();
    assert_eq!(apps::send(&client, to, "direct").unwrap(), "direct");
    assert_eq!(datapath.counter(Counter::InboundSteered).unwrap(), 1, "steered after unenrolling");
}

#[test]
fn an_agent_restarted_after_an_enrolled_pods_namespace_was_destroyed_starts_and_forgets_that_pod() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let gone = topology.add_pod(1, "gone", "uid-gone").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut datapath = install(&topology, 1, 16);
    let gone_cookie = enroll(&mut datapath, &gone).unwrap();
    let server_cookie = enroll(&mut datapath, &server).unwrap();
    drop(datapath);

    // No agent runs while a pod is deleted and its namespace destroyed: the kernel detaches
    // that pod's pinned inbound link (asynchronously), and the pin stays.
    topology.remove_pod("uid-gone").unwrap();
    let node = topology.nodes()[1].clone();
    let gone_link = node.bpffs_root.join(pin::LINKS).join(format!("sk_lookup-{gone_cookie}"));
    weft_tests::until("the kernel to detach the destroyed namespace's link", WAIT, || {
        bpffs::link_netns_ino(&gone_link).unwrap() == 0
    })
    .unwrap();

    let datapath = install(&topology, 1, 16);
    assert!(!gone_link.exists(), "the destroyed namespace's link is still pinned");
    let pods: Vec<u64> = datapath.pods().unwrap().into_iter().map(|(cookie, _)| cookie).collect();
    assert_eq!(pods, [server_cookie], "the datapath still holds the pod that is gone");
    let _standin = Standin::start(&node, &server).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&client, to, "steered").unwrap(), "steered");
    assert_eq!(datapath.counter(Counter::InboundSteered).unwrap(), 1, "the other pod is no longer captured");
}

#[test]
fn an_agent_whose_cgroup_setting_was_corrected_captures_the_pods_of_the_new_one() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let node = topology.nodes()[0].clone();
    // First installed on a cgroup the node's pods are not under (a wrong pods cgroup setting),
    // with its links pinned.
    let wrong_dir = node.system_cgroup.with_file_name(format!("{}-wrong", node.name));
    let wrong = Config { cgroup: process::create_cgroup(&wrong_dir).unwrap(), ..config(&node, 16) };
    drop(Datapath::install(&wrong).unwrap());

    // The corrected agent's links are on the pods' cgroup, not updated in place on the other.
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &client).unwrap();
    let mut standin = Standin::start(&node, &client).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&client, to, "captured").unwrap(), "captured");
    assert_eq!(standin.accepted(1, WAIT).unwrap()[0].orig, to, "the pod's connection was not captured");
}

#[test]
fn a_handed_over_pod_is_known_until_it_leaves_but_only_enrollment_captures_it() {
    let mut topology = Topology::new(1).unwrap();
    let pod = topology.add_pod(0, "pod", "uid-pod").unwrap();
    let mut datapath = install(&topology, 0, 16);
    let netns = File::open(pod.netns.path()).unwrap();
    let cookie = datapath.hand_over(&netns, PodAddrs { ipv4: Some(pod.ipv4), ipv6: Some(pod.ipv6) }).unwrap();
    assert_eq!(datapath.pods().unwrap().len(), 1);
    assert!(datapath.enrolled().unwrap().is_empty(), "handed over, not captured");
    datapath.unenroll(cookie).unwrap();
    assert!(datapath.pods().unwrap().is_empty(), "leaving forgets the handover");
}

#[test]
fn a_full_enrollment_map_refuses_one_more_pod_and_leaves_the_others_captured() {
    let mut topology = Topology::new(1).unwrap();
    let pods: Vec<Pod> =
        (0..3).map(|n| topology.add_pod(0, &format!("pod{n}"), &format!("uid-{n}")).unwrap()).collect();
    let server = topology.add_pod(0, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut datapath = install(&topology, 0, 2);
    enroll(&mut datapath, &pods[0]).unwrap();
    enroll(&mut datapath, &pods[1]).unwrap();

    let error = enroll(&mut datapath, &pods[2]).unwrap_err();
    assert!(matches!(error, datapath::Error::Full { capacity: 2 }), "{error}");
    assert!(error.to_string().contains("full"), "{error}");

    let mut standin = Standin::start(&topology.nodes()[0], &pods[0]).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    apps::send(&pods[0], to, "still captured").unwrap();
    assert_eq!(standin.accepted(1, WAIT).unwrap()[0].orig, to);
    apps::send(&pods[2], to, "never enrolled").unwrap();
    assert_eq!(datapath.enrolled().unwrap().len(), 2);
}

#[test]
fn killing_and_restarting_the_agent_lets_no_probe_bypass_the_proxy() {
    const PROBES: usize = 2000;
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let node = topology.nodes()[0].clone();
    let mut agent = apps::agent(&node, &[&client], false).unwrap();
    let mut standin = Standin::start(&node, &client).unwrap();

    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT).to_string();
    let mut probe = std::process::Command::new(apps::binary("weft-testpod").unwrap());
    probe
        .args(["probe", "--to", &to, "--count", &PROBES.to_string(), "--interval-us", "1000"])
        .stdout(std::process::Stdio::piped());
    let probe = client.spawn(probe).unwrap();
    standin.accepted(100, WAIT).unwrap();
    agent.kill().unwrap();
    standin.accepted(200, WAIT).unwrap();
    let _agent = apps::agent(&node, &[&client], false).unwrap();

    let (ok, out) = probe.finish(Duration::from_secs(60)).unwrap();
    assert!(ok, "probes failed: {out}");
    assert_eq!(out.trim(), format!("probes={PROBES} ok={PROBES} failed=0"));
    assert_eq!(standin.accepted(PROBES, WAIT).unwrap().len(), PROBES, "every probe went through the proxy");
    let links: Vec<_> = std::fs::read_dir(node.bpffs_root.join(pin::LINKS)).unwrap().collect();
    assert_eq!(
        links.len(),
        10,
        "eight links on the pods' cgroup, one on the node's, one sk_lookup, none twice"
    );
}

/// Replaces the map pinned at `maps/<name>` with an empty one of another layout, as an agent of
/// another ABI version would have pinned it. The running programs keep the original.
fn pin_other_layout(
    node: &Node,
    name: &str,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) {
    let path = node.bpffs_root.join("maps").join(name);
    std::fs::remove_file(&path).unwrap();
    bpffs::pin_new_map(&path, map_type, key_size, value_size, max_entries).unwrap();
}

fn pinned_config(node: &Node) -> aya::maps::Array<aya::maps::MapData, u32> {
    let path = node.bpffs_root.join("maps").join(map::CONFIG);
    aya::maps::Array::try_from(aya::maps::Map::Array(aya::maps::MapData::from_pin(path).unwrap())).unwrap()
}

#[test]
fn a_datapath_pinned_by_another_abi_is_carried_over_with_its_pods_listeners_and_settings() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echoes =
        [apps::echo_server(&server, ECHO_PORT).unwrap(), apps::echo_server(&client, ECHO_PORT).unwrap()];
    let node = topology.nodes()[0].clone();
    let mut old = install(&topology, 0, 16);
    enroll(&mut old, &client).unwrap();
    let mut standin = Standin::start(&node, &client).unwrap();
    let before = old.link_programs().unwrap();

    // What an agent of the next ABI left: one setting more (the proxy-cgroup check on), one
    // counter fewer, and a map this build does not define.
    pin_other_layout(&node, map::CONFIG, bpffs::ARRAY, 4, 4, ConfigSlot::COUNT + 1);
    for (slot, value) in [
        (ConfigSlot::AbiVersion as u32, ABI_VERSION + 1),
        (ConfigSlot::ProxyCgroupRequired as u32, 1),
        (3, 42),
    ] {
        pinned_config(&node).set(slot, value, 0).unwrap();
    }
    pin_other_layout(&node, map::COUNTERS, bpffs::PERCPU_ARRAY, 4, 8, Counter::COUNT - 1);
    let dropped = node.bpffs_root.join("maps").join("WEFT_FROM_NODE");
    bpffs::pin_new_map(&dropped, bpffs::HASH, 36, 1, 64).unwrap();
    // And a link of a program this build does not have, which would refuse every IPv4
    // connect; held open, so only detaching it (not removing its pin) takes it off.
    let retired = node.bpffs_root.join(pin::LINKS).join("weft_retired_program");
    let _retired_link = bpffs::pin_refusing_connect4(&node.cgroup, &retired).unwrap();

    let config = Config {
        cgroup: node.cgroup.clone(),
        node_cgroup: node.system_cgroup.clone(),
        node_netns: node.netns.path(),
        bpffs_root: node.bpffs_root.clone(),
        max_enrolled: 16,
    };
    let new = Datapath::install(&config).unwrap();
    let settings: Vec<u32> = pinned_config(&node).iter().map(Result::unwrap).collect();
    assert_eq!(settings, [ABI_VERSION, 0, 1], "the proxy-cgroup check carried over");
    assert!(!dropped.exists(), "the map only the old programs used is unpinned");
    assert!(!retired.exists(), "the link of a program this agent lacks is detached");
    let aside: Vec<_> = std::fs::read_dir(node.bpffs_root.join("maps"))
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("aside-"))
        .collect();
    assert!(aside.is_empty(), "pins set aside for the load are gone: {aside:?}");
    assert_eq!(new.enrolled().unwrap().len(), 1, "the enrolled pod carried over");
    for ((name, old), (_, new)) in before.iter().zip(&new.link_programs().unwrap()) {
        assert_ne!(old, new, "{name} still runs the old program");
    }
    drop(old);

    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&client, to, "outbound").unwrap(), "outbound");
    assert_eq!(standin.accepted(1, WAIT).unwrap()[0].orig, to, "captured by the new programs");
    let inbound = SocketAddr::new(client.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&server, inbound, "inbound").unwrap(), "inbound");
    assert_eq!(standin.accepted(2, WAIT).unwrap()[1].orig, inbound, "the proxy's listener carried over");
    assert_eq!(new.counter(Counter::Redirected).unwrap(), 1, "counted in the rebuilt counters");
    assert_eq!(new.counter(Counter::InboundSteered).unwrap(), 1);
}

#[test]
fn a_datapath_whose_enrollment_cannot_be_carried_over_is_refused_and_left_running() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let node = topology.nodes()[0].clone();
    let mut old = install(&topology, 0, 16);
    enroll(&mut old, &client).unwrap();
    pin_other_layout(&node, map::ENROLLED, bpffs::HASH, 8, 4, 16);
    let before = old.link_programs().unwrap();

    let error = Datapath::install(&Config::new(&node.cgroup).with_root(&node.bpffs_root)).unwrap_err();
    assert!(matches!(&error, datapath::Error::Incompatible { map, .. } if map == map::ENROLLED), "{error}");
    assert!(error.to_string().contains("uninstall"), "{error}");
    assert_eq!(old.link_programs().unwrap(), before, "a refused install changes nothing");
    drop(old);

    // Still pinned and capturing: with no proxy, refused.
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::try_send(&client, to, "x").unwrap(), Sent::ConnectError(libc::ECONNREFUSED));
    // Links someone still holds open stay attached when only their pins go: uninstall detaches.
    let _held = bpffs::hold_pinned(&node.bpffs_root.join(pin::LINKS)).unwrap();
    datapath::uninstall(&node.bpffs_root).unwrap();
    assert!(!node.bpffs_root.exists());
    apps::send(&client, to, "uninstalled: direct").unwrap();
}

#[test]
fn uninstall_detaches_every_link_and_removes_everything_past_a_pin_it_cannot_detach() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let node = topology.nodes()[0].clone();
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &client).unwrap();
    drop(datapath);
    let links = node.bpffs_root.join(pin::LINKS);
    let _held = bpffs::hold_pinned(&links).unwrap();
    // Pinned last, listed first (bpffs lists a directory newest first): the links come after
    // the failure.
    bpffs::pin_new_map(&links.join("a_map_not_a_link"), bpffs::HASH, 4, 4, 1).unwrap();

    let error = datapath::uninstall(&node.bpffs_root).unwrap_err();
    assert!(error.to_string().contains("a_map_not_a_link"), "{error}");
    assert!(!node.bpffs_root.exists(), "everything else is unpinned too");
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&client, to, "direct").unwrap(), "direct", "every link detached");
}

#[test]
fn debug_records_from_the_programs_reach_the_agent_log_only_when_asked_for() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let node = topology.nodes()[0].clone();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);

    let mut quiet = apps::agent(&node, &[&client], false).unwrap();
    assert_eq!(apps::try_send(&client, to, "x").unwrap(), Sent::ConnectError(libc::ECONNREFUSED));
    quiet.kill().unwrap();
    let rest = quiet.lines().unwrap().rest(std::time::Instant::now() + WAIT).unwrap();
    assert!(!rest.iter().any(|line| line.contains("redirected connect")), "{rest:?}");

    let mut verbose = apps::agent(&node, &[&client], true).unwrap();
    assert_eq!(apps::try_send(&client, to, "x").unwrap(), Sent::ConnectError(libc::ECONNREFUSED));
    let line = verbose.wait_for(|line| line.contains("redirected connect"), WAIT).unwrap();
    assert!(line.contains(&format!("to port {ECHO_PORT}")), "{line}");
}

#[test]
fn a_pod_that_forges_the_proxy_mark_is_still_captured() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &client).unwrap();
    let mut standin = Standin::start(&topology.nodes()[0], &client).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);

    let mark = weft_ebpf_common::PROXY_MARK.to_string();
    let sent = apps::try_send_with(&client, to, "forged", &["--mark", &mark]).unwrap();
    assert_eq!(sent, Sent::Reply { peer: to, reply: "forged".into() });
    assert_eq!(
        standin.accepted(1, WAIT).unwrap()[0].orig,
        to,
        "a marked socket outside the proxy cgroup escaped"
    );
    assert_eq!(datapath.counter(Counter::ExemptProxy).unwrap(), 1, "only the stand-in's relay is exempt");
}

#[test]
fn a_connection_straight_to_the_outbound_port_gets_no_original_destination() {
    let mut topology = Topology::new(1).unwrap();
    let pod = topology.add_pod(0, "pod", "uid-pod").unwrap();
    let mut datapath = install(&topology, 0, 16);
    enroll(&mut datapath, &pod).unwrap();
    let mut standin = Standin::start(&topology.nodes()[0], &pod).unwrap();

    // Exempt as local, so nothing recorded: the proxy must not be told to dial itself.
    let own_outbound = SocketAddr::new(pod.ipv4.into(), port::OUTBOUND);
    let sent = apps::try_send(&pod, own_outbound, "loop?");
    assert!(!matches!(sent, Ok(Sent::Reply { .. })), "the proxy relayed somewhere: {sent:?}");
    let line = standin.wait_for_line(|line| line.contains("listener=15001"), WAIT).unwrap();
    assert!(line.starts_with("no-orig-dst"), "{line}");
}

#[test]
fn a_new_agent_runs_its_own_programs_on_every_pinned_link_in_place() {
    let mut topology = Topology::new(2).unwrap();
    let client = topology.add_pod(0, "client", "uid-client").unwrap();
    let server = topology.add_pod(1, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let mut first = install(&topology, 0, 16);
    enroll(&mut first, &client).unwrap();
    let mut standin = Standin::start(&topology.nodes()[0], &client).unwrap();
    let before = first.link_programs().unwrap();
    assert!(before.iter().any(|(name, _)| name.starts_with("sk_lookup-")), "{before:?}");

    // The upgraded agent loads its own programs while the old ones still run.
    let second = install(&topology, 0, 16);
    let after = second.link_programs().unwrap();
    let names = |links: &[(String, u32)]| links.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "the same links, not new ones");
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "{name} still runs the old program");
    }
    drop(first);

    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    assert_eq!(apps::send(&client, to, "after the upgrade").unwrap(), "after the upgrade");
    assert_eq!(standin.accepted(1, WAIT).unwrap()[0].orig, to, "captured by the new programs");
}
