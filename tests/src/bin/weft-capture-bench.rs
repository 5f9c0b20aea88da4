//! `weft-capture-bench`: what eBPF capture costs a connection, measured side by side in one run.
//! Two nodes, a client pod and an echo server pod; mode A without capture, mode B with the
//! client enrolled and the stand-in proxy (a plain forwarding listener) relaying. Interleaved
//! A B A B …; prints medians and min–max of 1 KB request/response latency and of sequential
//! connection rate. Figures, not a test. Build in release:
//! `cargo build --release -p weft-tests --bins && target/release/weft-capture-bench`.
use std::{fs::File, net::SocketAddr};

use anyhow::Context;
use clap::Parser;
use weft_agent::datapath::{Config, Datapath, PodAddrs};
use weft_tests::{
    apps::{self, Standin},
    bench::{field, summary, testpod as run},
    topology::Topology,
};

const ECHO_PORT: u16 = 8080;

#[derive(Debug, Parser)]
struct Args {
    /// Interleaved repeats of each mode.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
    /// Connections per connection-rate run.
    #[arg(long, default_value_t = 2000)]
    connections: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut topology = Topology::new(2)?;
    let client = topology.add_pod(0, "client", "uid-client")?;
    let server = topology.add_pod(1, "server", "uid-server")?;
    let _echo = apps::echo_server(&server, ECHO_PORT)?;
    let node = topology.nodes()[0].clone();
    let mut datapath =
        Datapath::install(&Config::new(&node.cgroup).with_root(&node.bpffs_root)).context("installing")?;
    let netns = File::open(client.netns.path())?;
    let addrs = PodAddrs { ipv4: Some(client.ipv4), ipv6: Some(client.ipv6) };
    // Named before the stand-in listens, as the agent does before a handoff.
    datapath.hand_over(&netns, addrs).context("handing the client over")?;
    let _standin = Standin::start(&node, &client)?;
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);

    let modes = ["direct", "captured"];
    let mut results: Vec<Vec<[f64; 3]>> = vec![Vec::new(); modes.len()];
    for _ in 0..args.repeats {
        for (mode, samples) in results.iter_mut().enumerate() {
            let cookie = (mode == 1).then(|| datapath.enroll(&netns, addrs)).transpose()?;
            let latency = run(&client, &["latency", "--count", &args.round_trips.to_string()], to)?;
            let rate = run(&client, &["connrate", "--count", &args.connections.to_string()], to)?;
            samples.push([
                field(&latency, "p50_us")?,
                field(&latency, "p99_us")?,
                field(&rate, "conns_per_sec")?,
            ]);
            if let Some(cookie) = cookie {
                datapath.unenroll(cookie)?;
            }
        }
    }
    println!("capture cost, {} interleaved repeats (median [min–max])", args.repeats);
    println!("{:<10} {:>26} {:>26} {:>26}", "mode", "1KB rr p50 µs", "1KB rr p99 µs", "connections/s");
    for (mode, samples) in modes.iter().zip(&results) {
        let cells: Vec<String> = (0..3).map(|i| summary(samples.iter().map(|s| s[i]).collect())).collect();
        println!("{mode:<10} {:>26} {:>26} {:>26}", cells[0], cells[1], cells[2]);
    }
    Ok(())
}
