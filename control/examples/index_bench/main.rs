//! Measures the control plane at scale. First its index in-process, for 1k / 10k / 50k pods:
//! snapshot build time, one pod's change (the index updated by it, and the snapshot published),
//! the time to encode a full push to one proxy, and memory. Then, over
//! real gRPC streams, `--proxies` proxies (another process, this binary run as `proxies`)
//! subscribed to a cluster of `--pods` pods: how long they all take to sync, the control
//! plane's memory while they are connected, and how long a pod's change takes to reach every
//! one of them (from the change to each proxy's receipt, the index's update included).
//! `cargo run --release -p weft-control --example index_bench`. Prints; never fails.
mod cluster;
mod connected;
mod proxies;

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use weft_control::index::{Changed, Index, Objects, Snapshot, build, watch::publish_next};

const REPEATS: usize = 5;

/// The control plane's allocator (`weft-control`'s main), so its figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    /// Proxies connected for the second part (0: none).
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Pods of the cluster they are connected to.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Pod changes timed, one after another.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Skip the in-process table.
    #[arg(long)]
    connected_only: bool,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand)]
enum Role {
    /// (Internal) the proxies' side: opens the streams and reports every response on stdout.
    Proxies { address: String, count: usize },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Role::Proxies { address, count }) = args.role {
        return proxies::run(&address, count);
    }
    if !args.connected_only {
        index_table();
    }
    if args.proxies > 0 {
        connected::run(args.pods, args.proxies, args.changes)?;
    }
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Build, one full push and memory for 1k, 10k and 50k pods, in-process.
fn index_table() {
    let naming = cluster::naming();
    println!(
        "{:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>13}",
        "pods", "services", "build ms", "change ms", "encode ms", "push ms", "push MiB", "snapshot MiB"
    );
    for pods in [1_000, 10_000, 50_000] {
        let (namespaces, pod_objects, services, slices) = cluster::objects(pods);
        let mut builds = Vec::new();
        let mut encodes = Vec::new();
        let mut pushes = Vec::new();
        let mut push_bytes = 0;
        let mut snapshot_kib = 0;
        for _ in 0..REPEATS {
            let before = cluster::rss_kib();
            let start = Instant::now();
            let snapshot = build(
                &naming,
                &Objects::default()
                    .namespaces(&namespaces)
                    .pods(&pod_objects)
                    .services(&services)
                    .slices(&slices),
            );
            builds.push(start.elapsed());
            snapshot_kib = cluster::rss_kib().saturating_sub(before).max(snapshot_kib);
            // A full push: the first stream's encodes every resource (once per snapshot);
            // every later one's copies those encodings.
            let start = Instant::now();
            for (name, resource) in &snapshot.addresses {
                resource.wire(name);
            }
            encodes.push(start.elapsed());
            let start = Instant::now();
            let mut push = Vec::new();
            for (name, resource) in &snapshot.addresses {
                push.extend_from_slice(&resource.wire(name));
            }
            push_bytes = push.len();
            pushes.push(start.elapsed());
        }
        let changes = pod_changes(&naming, &namespaces, &pod_objects, &services, &slices);
        println!(
            "{pods:>7} {:>9} {:>10.1} {:>10.2} {:>10.1} {:>10.1} {:>10.2} {:>13.1}",
            pods / cluster::PODS_PER_SERVICE,
            median(builds).as_secs_f64() * 1e3,
            median(changes).as_secs_f64() * 1e3,
            median(encodes).as_secs_f64() * 1e3,
            median(pushes).as_secs_f64() * 1e3,
            push_bytes as f64 / (1 << 20) as f64,
            snapshot_kib as f64 / 1024.0,
        );
    }
    println!(
        "(median of {REPEATS}; build = all workloads and services from the objects; change = one pod's service account changed: the index updated by it and the snapshot published; encode = every address resource encoded, once per snapshot; push = a full push copied from those encodings, per stream; snapshot MiB = RSS growth while one is held)"
    );
}

/// One pod's change, `REPEATS` times: the index updated by that pod alone, and the snapshot
/// published (compared with the one before it, its unchanged resources shared).
fn pod_changes(
    naming: &weft_control::index::Naming,
    namespaces: &[k8s_openapi::api::core::v1::Namespace],
    pods: &[k8s_openapi::api::core::v1::Pod],
    services: &[k8s_openapi::api::core::v1::Service],
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
) -> Vec<Duration> {
    let objects = Objects::default().namespaces(namespaces).services(services).slices(slices);
    let mut index = Index::new(naming.clone());
    let (publish, _) = watch::channel(std::sync::Arc::new(Snapshot::default()));
    publish_next(&publish, index.update(&objects.clone().pods(pods), None));
    let mut current = pods.to_vec();
    (1..=REPEATS)
        .map(|change| {
            let at = change * 997 % pods.len();
            current[at].spec.as_mut().expect("spec").service_account_name = Some(format!("changed-{change}"));
            let pod = &current[at];
            let (namespace, name) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref());
            let changed = Changed {
                pods: vec![(namespace.unwrap_or_default(), name.unwrap_or_default(), Some(pod))],
                ..Default::default()
            };
            let start = Instant::now();
            publish_next(&publish, index.update(&objects.clone().pods(&current), Some(&changed)));
            start.elapsed()
        })
        .collect()
}
