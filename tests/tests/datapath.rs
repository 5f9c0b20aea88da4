//! The eBPF build path end to end: the object the agent embeds loads into this kernel, attaches to
//! a pod's cgroup, and its counters move when that pod's processes connect, and only then.
use std::net::SocketAddr;

use weft_agent::datapath::Datapath;
use weft_ebpf_common::Counter;
use weft_tests::{apps, topology::Topology};

#[test]
fn connect4_program_counts_connects_from_the_attached_pod_cgroup_only() {
    weft_tests::require_root();
    let mut topology = Topology::new(1).unwrap();
    let watched = topology.add_pod(0, "watched", "uid-watched").unwrap();
    let other = topology.add_pod(0, "other", "uid-other").unwrap();
    let server = topology.add_pod(0, "server", "uid-server").unwrap();
    let _echo = apps::echo_server(&server, 9000).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), 9000);

    let mut datapath = Datapath::load().unwrap();
    datapath.attach_connect4(&watched.cgroup).unwrap();
    assert_eq!(datapath.counter(Counter::Connect4Seen).unwrap(), 0);

    apps::send(&other, to, "not watched").unwrap();
    assert_eq!(datapath.counter(Counter::Connect4Seen).unwrap(), 0);

    for _ in 0..3 {
        apps::send(&watched, to, "watched").unwrap();
    }
    // The program runs synchronously inside connect(), so the count is final once sends return.
    assert_eq!(datapath.counter(Counter::Connect4Seen).unwrap(), 3);
}
