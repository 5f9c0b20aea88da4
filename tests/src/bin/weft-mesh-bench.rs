//! `weft-mesh-bench`: what the mesh costs, side by side in one run on the namespace topology
//! (development CA, static enrollment; no API server needed). Three client → server pairs,
//! interleaved A B C A B C …: `direct` (neither pod in the mesh), `passthrough` (the client
//! enrolled, the server not: eBPF capture and ztunnel relaying plaintext), `hbone` (both
//! enrolled: mTLS + HBONE between two nodes' ztunnels — the mesh path). Each repeat measures
//! bulk throughput over 1, 2 and 8 connections (iperf3) with the proxies' CPU per GB, 1 KB
//! request/response latency at a fixed rate (open loop) with the proxies' CPU and memory, and
//! new connections per second, one client at a time and `--clients` at once — through an
//! existing tunnel, and (a third node whose ztunnel shares no HBONE connection) with a fresh
//! mTLS handshake each. Then the proxies' memory per
//! idle connection with 1k and 10k held. Prints a table with ratios to `direct` and writes
//! JSON. Figures, not a test. `cargo xtask bench` builds in release and runs it.
//!
//! With `--istio-ztunnel`, a fourth mode `istio` runs the `hbone` pair's part on three more
//! nodes whose node proxy is Istio's ztunnel ([`weft_tests::istio_ztunnel`]), interleaved with
//! the others, and a second table divides `hbone`'s figures by `istio`'s.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use weft_tests::{
    apps,
    bench::{
        Bulk, Resident, RssPeak, cpu_seconds, field, iperf3, iperf3_server, machine,
        report::{Figure, Report},
        resident_kib, rss_kib, testpod,
    },
    istio_ztunnel::{self, Pool},
    mesh::{Member, Mesh},
    topology::{Pod, Topology},
};

const ECHO_PORT: u16 = 8080;
/// Every mode, in the order the table shows them.
const MODES: [&str; 4] = ["direct", "passthrough", "hbone", "istio"];

#[derive(Debug, Parser)]
struct Args {
    /// Interleaved repeats of each mode.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Seconds of each bulk transfer.
    #[arg(long, default_value_t = 5)]
    bulk_seconds: u32,
    /// Requests per second of the latency run.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of each latency run.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// Connections per connection-rate run.
    #[arg(long, default_value_t = 2000)]
    connections: u32,
    /// Clients opening connections at once in the concurrent connection-rate runs.
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Istio's ztunnel, built from its source with `--features testing`: also measure it, as
    /// the node proxy of three more nodes.
    #[arg(long)]
    istio_ztunnel: Option<PathBuf>,
    /// Only these modes (comma-separated, of direct, passthrough, hbone and istio), e.g. to
    /// compare two builds of one proxy against a mode that stays the same. Ratios go to the
    /// first of them in that order.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Skip the idle-connection figures.
    #[arg(long)]
    no_idle: bool,
}

const BULK: [(u32, Figure, Figure); 3] = [
    (
        1,
        Figure { key: "bulk_1_gbit_s", label: "bulk, 1 connection, Gbit/s", ratio: true },
        Figure { key: "bulk_1_proxy_cpu_s_per_gb", label: "  proxy CPU-s per GB", ratio: false },
    ),
    (
        2,
        Figure { key: "bulk_2_gbit_s", label: "bulk, 2 connections, Gbit/s", ratio: true },
        Figure { key: "bulk_2_proxy_cpu_s_per_gb", label: "  proxy CPU-s per GB", ratio: false },
    ),
    (
        8,
        Figure { key: "bulk_8_gbit_s", label: "bulk, 8 connections, Gbit/s", ratio: true },
        Figure { key: "bulk_8_proxy_cpu_s_per_gb", label: "  proxy CPU-s per GB", ratio: false },
    ),
];
const LATENCY: [(&str, Figure); 4] = [
    ("p50_us", Figure { key: "rr_p50_us", label: "1 KB rr at fixed rate, p50 µs", ratio: true }),
    ("p90_us", Figure { key: "rr_p90_us", label: "  p90 µs", ratio: true }),
    ("p99_us", Figure { key: "rr_p99_us", label: "  p99 µs", ratio: true }),
    ("p999_us", Figure { key: "rr_p999_us", label: "  p99.9 µs", ratio: true }),
];
const VCPU: Figure =
    Figure { key: "proxy_vcpu_per_1000_rps", label: "  proxy vCPU per 1000 rps", ratio: false };
/// Per node, the proxy's peak resident memory over the run's second half: all of it, then its
/// anonymous part (heap and stacks; the rest is the binary's pages, shared with the page cache).
const RSS_AT_RATE: [[Figure; 2]; 2] = [
    [
        Figure { key: "rss_at_rate_kib_client_node", label: "  client node proxy RSS, KiB", ratio: false },
        Figure { key: "anon_at_rate_kib_client_node", label: "    of which anonymous, KiB", ratio: false },
    ],
    [
        Figure { key: "rss_at_rate_kib_server_node", label: "  server node proxy RSS, KiB", ratio: false },
        Figure { key: "anon_at_rate_kib_server_node", label: "    of which anonymous, KiB", ratio: false },
    ],
];
const CONNECTIONS: Figure =
    Figure { key: "connections_per_s", label: "new connections/s (pooled tunnel)", ratio: true };
const FRESH: Figure =
    Figure { key: "fresh_mtls_connections_per_s", label: "new connections/s, fresh mTLS each", ratio: true };
const CONCURRENT: Figure = Figure {
    key: "concurrent_connections_per_s",
    label: "  the same, concurrent clients (pooled)",
    ratio: true,
};
const FRESH_CONCURRENT: Figure = Figure {
    key: "concurrent_fresh_mtls_connections_per_s",
    label: "  the same, concurrent clients (fresh mTLS)",
    ratio: true,
};
const IDLE: [(usize, [Figure; 2]); 2] = [
    (
        1000,
        [
            Figure {
                key: "idle_1k_kib_per_conn_client_node",
                label: "1k idle conns, KiB/conn, client node",
                ratio: false,
            },
            Figure { key: "idle_1k_kib_per_conn_server_node", label: "  server node", ratio: false },
        ],
    ),
    (
        10_000,
        [
            Figure {
                key: "idle_10k_kib_per_conn_client_node",
                label: "10k idle conns, KiB/conn, client node",
                ratio: false,
            },
            Figure { key: "idle_10k_kib_per_conn_server_node", label: "  server node", ratio: false },
        ],
    ),
];

/// A client → server pair measured as one mode.
struct Mode<'a> {
    name: &'static str,
    client: &'a Pod,
    server: &'a Pod,
    /// The proxies on the pair's nodes.
    proxies: &'a Proxies<'a>,
    /// A client on a node whose proxy makes a new HBONE connection (a full mTLS handshake) for
    /// every connection, for modes where that means something.
    fresh_client: Option<&'a Pod>,
    /// Whether a proxy carries it (memory figures mean nothing without one).
    proxied: bool,
    /// Descriptors the busiest proxy holds per connection (HBONE multiplexes the node-to-node
    /// side; plaintext passthrough has a socket on each side).
    descriptors_per_connection: u64,
}

/// The proxies on the client's and the server's node.
struct Proxies<'a> {
    cgroups: [&'a std::path::Path; 2],
    pids: [u32; 2],
}

impl Proxies<'_> {
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Ok(cpu_seconds(self.cgroups[0])? + cpu_seconds(self.cgroups[1])?)
    }

    fn rss_kib(&self) -> anyhow::Result<[u64; 2]> {
        Ok([rss_kib(self.pids[0])?, rss_kib(self.pids[1])?])
    }

    fn resident_kib(&self) -> anyhow::Result<[Resident; 2]> {
        Ok([resident_kib(self.pids[0])?, resident_kib(self.pids[1])?])
    }

    /// Each proxy's RSS once what it freed has gone back: the lowest over two of its trim
    /// periods (`weft_proxy::allocator`), so a trim between two readings cannot count memory
    /// that earlier work freed as given back by what is measured.
    fn settled_rss_kib(&self) -> anyhow::Result<[u64; 2]> {
        let until = std::time::Instant::now() + 2 * weft_proxy::allocator::TRIM_PERIOD;
        let mut lowest = self.rss_kib()?;
        while std::time::Instant::now() < until {
            // Sampling period, not synchronisation.
            std::thread::sleep(Duration::from_millis(50));
            let now = self.rss_kib()?;
            lowest = [lowest[0].min(now[0]), lowest[1].min(now[1])];
        }
        Ok(lowest)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Children inherit it: the idle-connection runs hold up to 10k connections.
    let open_files = weft_ztunnel::rlimit::raise_open_files().context("raising the open-file limit")?;
    let wanted = |mode: &str| args.modes.is_empty() || args.modes.iter().any(|name| name == mode);
    if let Some(unknown) = args.modes.iter().find(|name| !MODES.contains(&name.as_str())) {
        anyhow::bail!("no mode {unknown:?}: the modes are {}", MODES.join(", "));
    }
    anyhow::ensure!(
        !(args.modes.iter().any(|name| name == "istio") && args.istio_ztunnel.is_none()),
        "the mode istio needs --istio-ztunnel"
    );
    // Made absolute: it runs in a working directory of its own.
    let istio = match &args.istio_ztunnel {
        Some(binary) if wanted("istio") => Some(
            std::fs::canonicalize(binary)
                .with_context(|| format!("Istio's ztunnel at {}", binary.display()))?,
        ),
        _ => None,
    };
    let istio = istio.as_deref();
    let mut topology = Topology::new(if istio.is_some() { 6 } else { 3 })?;
    let meshed_client = topology.add_pod(0, "meshed-client", "uid-meshed-client")?;
    let plain_client = topology.add_pod(0, "plain-client", "uid-plain-client")?;
    let meshed_server = topology.add_pod(1, "meshed-server", "uid-meshed-server")?;
    let plain_server = topology.add_pod(1, "plain-server", "uid-plain-server")?;
    let fresh_client = topology.add_pod(2, "fresh-client", "uid-fresh-client")?;
    // Istio's pair and fresh client, on nodes 3 to 5 as Weft's are on 0 to 2.
    let istio_pods = match istio {
        Some(_) => Some([
            topology.add_pod(3, "istio-client", "uid-istio-client")?,
            topology.add_pod(4, "istio-server", "uid-istio-server")?,
            topology.add_pod(5, "istio-fresh-client", "uid-istio-fresh-client")?,
        ]),
        None => None,
    };
    let mut servers = Vec::new();
    let istio_server = istio_pods.as_ref().map(|[_, server, _]| server);
    for server in [&meshed_server, &plain_server].into_iter().chain(istio_server) {
        servers.push(apps::echo_server(server, ECHO_PORT)?);
        servers.push(iperf3_server(server)?);
    }
    let mut members = vec![
        Member::new(&meshed_client, "bench", "client"),
        Member::new(&meshed_server, "bench", "server"),
        Member::new(&fresh_client, "bench", "client"),
    ];
    if let Some([client, server, fresh]) = &istio_pods {
        members.extend([
            Member::new(client, "bench", "client"),
            Member::new(server, "bench", "server"),
            Member::new(fresh, "bench", "client"),
        ]);
    }
    let mut mesh = Mesh::start(&topology, &members)?;
    // Node 2's proxy gives each connection its own HBONE connection and releases it when the
    // stream ends: every new connection from there pays a full TCP + TLS + HTTP/2 handshake.
    mesh.restart_ztunnel_with(2, &["--pool-max-streams", "1", "--pool-idle-seconds", "0"], 1)?;
    let istio_dir = tempfile::Builder::new().prefix("weft-bench-istio-").tempdir()?;
    if let (Some(binary), Some([client, server, _])) = (istio, &istio_pods) {
        start_istio(&mut mesh, &topology, &members, binary, istio_dir.path())?;
        check_istio(&mut mesh, &topology, client, server)?;
    }
    let nodes = topology.nodes();
    let weft_proxies = Proxies {
        cgroups: [&nodes[0].proxy_cgroup, &nodes[1].proxy_cgroup],
        pids: [mesh.ztunnel(0).pid(), mesh.ztunnel(1).pid()],
    };
    let istio_proxies = istio_pods.as_ref().map(|_| Proxies {
        cgroups: [&nodes[3].proxy_cgroup, &nodes[4].proxy_cgroup],
        pids: [mesh.ztunnel(3).pid(), mesh.ztunnel(4).pid()],
    });
    let idle = weft_proxies.resident_kib()?;
    let istio_idle = istio_proxies.as_ref().map(Proxies::resident_kib).transpose()?;

    let mut modes = vec![
        Mode {
            name: "direct",
            client: &plain_client,
            server: &plain_server,
            proxies: &weft_proxies,
            fresh_client: None,
            proxied: false,
            descriptors_per_connection: 0,
        },
        Mode {
            name: "passthrough",
            client: &meshed_client,
            server: &plain_server,
            proxies: &weft_proxies,
            fresh_client: None,
            proxied: true,
            descriptors_per_connection: 2,
        },
        Mode {
            name: "hbone",
            client: &meshed_client,
            server: &meshed_server,
            proxies: &weft_proxies,
            fresh_client: Some(&fresh_client),
            proxied: true,
            descriptors_per_connection: 1,
        },
    ];
    if let (Some([client, server, fresh]), Some(proxies)) = (&istio_pods, &istio_proxies) {
        modes.push(Mode {
            name: "istio",
            client,
            server,
            proxies,
            fresh_client: Some(fresh),
            proxied: true,
            descriptors_per_connection: 1,
        });
    }
    let figures: Vec<Figure> = BULK
        .iter()
        .flat_map(|(_, rate, cpu)| [*rate, *cpu])
        .chain(LATENCY.map(|(_, figure)| figure))
        .chain([VCPU])
        .chain(RSS_AT_RATE.into_iter().flatten())
        .chain([CONNECTIONS, FRESH, CONCURRENT, FRESH_CONCURRENT])
        .chain(IDLE.iter().flat_map(|(_, figures)| *figures))
        .collect();
    modes.retain(|mode| wanted(mode.name));
    let names: Vec<&'static str> = modes.iter().map(|mode| mode.name).collect();
    anyhow::ensure!(!names.is_empty(), "no mode to measure");
    let mut report = Report::new(&names, &figures);
    for repeat in 1..=args.repeats {
        eprintln!("repeat {repeat} of {}", args.repeats);
        for mode in &modes {
            bulk(&mut report, mode, args.bulk_seconds)?;
            latency(&mut report, mode, &args)?;
            let to = SocketAddr::new(mode.server.ipv4.into(), ECHO_PORT);
            let (count, clients) = (args.connections.to_string(), args.clients.to_string());
            let pooled = [(mode.client, CONNECTIONS, "1"), (mode.client, CONCURRENT, clients.as_str())];
            let fresh = mode
                .fresh_client
                .map(|fresh| [(fresh, FRESH, "1"), (fresh, FRESH_CONCURRENT, clients.as_str())]);
            for (client, figure, clients) in pooled.into_iter().chain(fresh.into_iter().flatten()) {
                let rate = testpod(client, &["connrate", "--count", &count, "--clients", clients], to)?;
                report.record(mode.name, figure, field(&rate, "conns_per_sec")?);
            }
        }
    }
    let mut skipped = Vec::new();
    for mode in modes.iter().filter(|mode| mode.proxied && !args.no_idle) {
        skipped.extend(idle_connections(&mut report, mode, open_files)?);
    }

    println!(
        "the mesh against no mesh, {} interleaved repeats: median [min–max] ×ratio to {}",
        args.repeats, names[0]
    );
    print!("{}", report.table());
    println!("{}", idle_line("proxy", &idle));
    if let Some(istio_idle) = &istio_idle {
        println!("{}", idle_line("Istio's proxy", istio_idle));
    }
    if names.contains(&"hbone") && names.contains(&"istio") {
        println!("Weft's node proxy against Istio's: hbone's median ÷ istio's (below 1: less of it)");
        print!("{}", report.ratios("hbone", "istio"));
    }
    for note in &skipped {
        println!("skipped: {note}");
    }
    println!("{}", machine());
    if let Some(path) = &args.json {
        let mut json = report.json();
        json["proxy_rss_idle_kib"] =
            serde_json::json!({ "client_node": idle[0].total, "server_node": idle[1].total });
        json["proxy_anon_idle_kib"] =
            serde_json::json!({ "client_node": idle[0].anonymous, "server_node": idle[1].anonymous });
        if let Some(istio_idle) = &istio_idle {
            json["istio_proxy_rss_idle_kib"] =
                serde_json::json!({ "client_node": istio_idle[0].total, "server_node": istio_idle[1].total });
            json["istio_proxy_anon_idle_kib"] = serde_json::json!({
                "client_node": istio_idle[0].anonymous,
                "server_node": istio_idle[1].anonymous
            });
        }
        json["machine"] = serde_json::json!(machine());
        json["settings"] = serde_json::json!(format!("{args:?}"));
        json["skipped"] = serde_json::json!(skipped);
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}

/// `<who> RSS idle: …` of the client's and the server's node.
fn idle_line(who: &str, idle: &[Resident; 2]) -> String {
    format!(
        "{who} RSS idle: client node {} KiB ({} anonymous), server node {} KiB ({} anonymous)",
        idle[0].total, idle[0].anonymous, idle[1].total, idle[1].anonymous
    )
}

/// Replaces the ztunnels of nodes 3 to 5 with Istio's `binary` (node 5's making a new HBONE
/// connection for every connection, as node 2's does), taking `members` from a workloads file
/// in `dir`.
fn start_istio(
    mesh: &mut Mesh,
    topology: &Topology,
    members: &[Member],
    binary: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let workloads = dir.join("workloads.yaml");
    istio_ztunnel::write_workloads(&workloads, topology, members)?;
    for (node, pool) in [(3, Pool::Shared), (4, Pool::Shared), (5, Pool::FreshEach)] {
        mesh.replace_ztunnel(node, |node, socket| {
            istio_ztunnel::start(binary, node, socket, &workloads, dir, pool)
        })?;
    }
    Ok(())
}

/// Checks that a connection from `client` to `server` works through Istio's ztunnels, over
/// HBONE (the server node's counts it inbound); says what they logged when not.
fn check_istio(mesh: &mut Mesh, topology: &Topology, client: &Pod, server: &Pod) -> anyhow::Result<()> {
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let sent = apps::send(client, to, "through Istio's ztunnel").map(drop);
    let tunnelled = sent.and_then(|()| istio_ztunnel::inbound_connections(&topology.nodes()[server.node]));
    if matches!(tunnelled, Ok(count) if count >= 1.0) {
        return Ok(());
    }
    let mut logged = Vec::new();
    for node in [client.node, server.node] {
        logged.extend(mesh.ztunnel(node).lines()?.so_far());
    }
    anyhow::bail!(
        "a first connection through Istio's ztunnel: {tunnelled:?} inbound on the server's node; they logged:\n{}",
        logged.concat()
    )
}

/// Bulk throughput over 1, 2 and 8 connections, and the proxies' CPU per GB moved.
fn bulk(report: &mut Report, mode: &Mode, seconds: u32) -> anyhow::Result<()> {
    let proxies = mode.proxies;
    for (streams, rate, cpu) in BULK {
        let before = proxies.cpu_seconds()?;
        let Bulk { gbit_per_sec, bytes } =
            iperf3(mode.client, IpAddr::V4(mode.server.ipv4), streams, seconds)?;
        let used = proxies.cpu_seconds()? - before;
        report.record(mode.name, rate, gbit_per_sec);
        report.record(mode.name, cpu, used / (bytes / 1e9));
    }
    Ok(())
}

/// 1 KB request/response at a fixed rate: percentiles, the proxies' CPU per 1000 requests/s
/// and their peak memory over the run's second half.
fn latency(report: &mut Report, mode: &Mode, args: &Args) -> anyhow::Result<()> {
    let proxies = mode.proxies;
    let to = SocketAddr::new(mode.server.ipv4.into(), ECHO_PORT);
    let (rate, seconds) = (args.rate.to_string(), args.latency_seconds.to_string());
    let before = proxies.cpu_seconds()?;
    // The second half: the proxies hold what this load needs by then, and have given back what
    // the bulk runs before it freed (within their trim period).
    let peak = RssPeak::after(Duration::from_secs_f64(args.latency_seconds / 2.0), proxies.pids.to_vec());
    let out = testpod(mode.client, &["openloop", "--rate", &rate, "--seconds", &seconds], to)?;
    let (peaks, used) = (peak.finish(), proxies.cpu_seconds()? - before);
    for (key, figure) in LATENCY {
        report.record(mode.name, figure, field(&out, key)?);
    }
    report.record(mode.name, VCPU, used / args.latency_seconds / (f64::from(args.rate) / 1000.0));
    if mode.proxied {
        for ([total, anonymous], peak) in RSS_AT_RATE.into_iter().zip(peaks) {
            report.record(mode.name, total, peak.total as f64);
            report.record(mode.name, anonymous, peak.anonymous as f64);
        }
    }
    Ok(())
}

/// The proxies' memory per connection with 1k and 10k idle connections held through them;
/// returns what the open-file limit did not allow.
fn idle_connections(report: &mut Report, mode: &Mode, open_files: u64) -> anyhow::Result<Vec<String>> {
    let proxies = mode.proxies;
    let to = SocketAddr::new(mode.server.ipv4.into(), ECHO_PORT);
    let mut skipped = Vec::new();
    for (count, figures) in IDLE {
        let needed = count as u64 * mode.descriptors_per_connection + 1000;
        if needed > open_files {
            skipped.push(format!(
                "{count} idle connections in {}: the proxy would need {needed} open files, the limit here is {open_files}",
                mode.name
            ));
            continue;
        }
        let before = proxies.settled_rss_kib()?;
        let mut holder = apps::hold(mode.client, to, count, Duration::from_secs(120))
            .with_context(|| format!("idle connections ({})", mode.name))?;
        let stdin = holder.take_stdin()?;
        let held = proxies.settled_rss_kib()?;
        for ((figure, held), before) in figures.into_iter().zip(held).zip(before) {
            report.record(mode.name, figure, held.saturating_sub(before) as f64 / count as f64);
        }
        // Closing stdin lets the holder go.
        drop(stdin);
        let (ok, out) = holder.finish(Duration::from_secs(60))?;
        anyhow::ensure!(ok, "holding {count} connections: {out}");
    }
    Ok(skipped)
}
