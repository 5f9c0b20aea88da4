//! `weft-mesh-bench`: what the mesh costs a connection, side by side in one run on the
//! two-node topology (development CA, static enrollment; no API server needed). Three client →
//! server pairs, interleaved A B C A B C …: `direct` (neither pod in the mesh), `passthrough`
//! (the client enrolled, the server not: eBPF capture and ztunnel relaying plaintext), `hbone`
//! (both enrolled: mTLS + HBONE between the nodes' ztunnels — the mesh path). Prints medians
//! and min–max of 1 KB request/response latency and of connection rate (each a new TCP
//! connection, through an existing tunnel for `hbone`), the ratios to `direct`, and ztunnel's
//! memory. Figures, not a test. `cargo xtask bench` builds in release and runs it.
use std::net::SocketAddr;

use clap::Parser;
use weft_tests::{
    apps,
    bench::{field, median, rss_kib, summary, testpod},
    mesh::{Member, Mesh},
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
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut topology = Topology::new(2)?;
    let meshed_client = topology.add_pod(0, "meshed-client", "uid-meshed-client")?;
    let plain_client = topology.add_pod(0, "plain-client", "uid-plain-client")?;
    let meshed_server = topology.add_pod(1, "meshed-server", "uid-meshed-server")?;
    let plain_server = topology.add_pod(1, "plain-server", "uid-plain-server")?;
    let _echoes =
        [apps::echo_server(&meshed_server, ECHO_PORT)?, apps::echo_server(&plain_server, ECHO_PORT)?];
    let members =
        [Member::new(&meshed_client, "bench", "client"), Member::new(&meshed_server, "bench", "server")];
    let mut mesh = Mesh::start(&topology, &members)?;
    let idle_kib = rss_kib(mesh.ztunnel(0).pid())?;

    let to = |pod: &weft_tests::topology::Pod| SocketAddr::new(pod.ipv4.into(), ECHO_PORT);
    let modes = [
        ("direct", &plain_client, to(&plain_server)),
        ("passthrough", &meshed_client, to(&plain_server)),
        ("hbone", &meshed_client, to(&meshed_server)),
    ];
    let mut results: Vec<Vec<[f64; 3]>> = vec![Vec::new(); modes.len()];
    for _ in 0..args.repeats {
        for ((_, client, target), samples) in modes.iter().zip(results.iter_mut()) {
            let latency = testpod(client, &["latency", "--count", &args.round_trips.to_string()], *target)?;
            let rate = testpod(client, &["connrate", "--count", &args.connections.to_string()], *target)?;
            samples.push([
                field(&latency, "p50_us")?,
                field(&latency, "p99_us")?,
                field(&rate, "conns_per_sec")?,
            ]);
        }
    }
    let loaded_kib = rss_kib(mesh.ztunnel(0).pid())?;

    println!("mesh cost, {} interleaved repeats (median [min–max]); ratio = median / direct's", args.repeats);
    println!(
        "{:<12} {:>24} {:>24} {:>24} {:>18}",
        "mode", "1KB rr p50 µs", "1KB rr p99 µs", "connections/s", "p50 / conns ratio"
    );
    let direct: Vec<f64> = (0..3).map(|i| median(results[0].iter().map(|s| s[i]).collect())).collect();
    let mut json = Vec::new();
    for ((mode, ..), samples) in modes.iter().zip(&results) {
        let column = |i: usize| samples.iter().map(|s| s[i]).collect::<Vec<f64>>();
        let cells: Vec<String> = (0..3).map(|i| summary(column(i))).collect();
        let ratios = format!("{:.2} / {:.2}", median(column(0)) / direct[0], median(column(2)) / direct[2]);
        println!("{mode:<12} {:>24} {:>24} {:>24} {:>18}", cells[0], cells[1], cells[2], ratios);
        json.push(serde_json::json!({
            "mode": mode,
            "rr_p50_us": column(0),
            "rr_p99_us": column(1),
            "connections_per_sec": column(2),
        }));
    }
    println!("ztunnel (node0) RSS: {idle_kib} KiB idle, {loaded_kib} KiB after the runs");
    if let Some(path) = &args.json {
        let report = serde_json::json!({ "modes": json, "ztunnel_rss_kib": { "idle": idle_kib, "after": loaded_kib } });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
