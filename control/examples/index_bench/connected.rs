//! The control plane's side with proxies connected: its xDS server on a loopback port, the
//! snapshot published as the Kubernetes watch publishes it (`publish_next`), and the proxies
//! in a child process. Measures their first sync, this process's memory while they are
//! connected, and each pod change's way to every proxy: one pod's service account changes (a
//! new identity: its workload resource changes), the index is updated by that pod and the
//! snapshot published, and the change is timed to each proxy's receipt.
//!
//! The streams are plaintext HTTP/2 and carry no tokens (the control plane checks one once per
//! stream): what is measured is what a connected proxy costs, not TLS.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use weft_control::{
    index::{Changed, Index, Objects, Snapshot, watch::publish_next},
    metrics::Metrics,
    xds,
};

use crate::cluster;

/// How long the proxies may take to sync, or to receive one change, before the run gives up.
const PATIENCE: Duration = Duration::from_secs(300);

/// The bench's proxies carry no tokens: every stream is let in, named `bench`.
#[derive(Clone)]
struct Anyone;

impl xds::Authenticate for Anyone {
    async fn authenticate(&self, _: &tonic::metadata::MetadataMap) -> Result<String, tonic::Status> {
        Ok("bench".into())
    }
}

/// What the proxies reported: for each proxy, the latest version it received and when (µs
/// since the epoch) it first received each version.
#[derive(Default)]
struct Reports {
    latest: HashMap<usize, u64>,
    received: HashMap<(usize, u64), u128>,
}

pub fn run(pods: usize, proxies: usize, changes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let _entered = runtime.enter();
    let naming = cluster::naming();
    let (namespaces, mut pod_objects, services, slices) = cluster::objects(pods);
    let objects = Objects::default().namespaces(&namespaces).services(&services).slices(&slices);
    let mut index = Index::new(naming);
    let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    publish_next(&publish, index.update(&objects.clone().pods(&pod_objects), None));
    let baseline = cluster::rss_kib();

    let (_stopping_tx, stopping) = watch::channel(false);
    let server = xds::Server::new(snapshots, Anyone, Arc::new(Metrics::default()), stopping);
    // The control plane's own listener, backlog and all: the proxies connect at once.
    let loopback = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    let listener = runtime.block_on(async { weft_control::serving::listen(loopback) })?;
    let address = listener.local_addr()?;
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let reports = Arc::new((Mutex::new(Reports::default()), Condvar::new()));
    let mut child = Command::new(std::env::current_exe()?)
        .args(["proxies", &address.to_string(), &proxies.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let reader = {
        let reports = reports.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let fields: Vec<u128> = line.split(' ').filter_map(|field| field.parse().ok()).collect();
                let [proxy, version, micros] = fields[..] else { continue };
                let (proxy, version) = (proxy as usize, version as u64);
                let (lock, wake) = &*reports;
                let mut reports = lock.lock().expect("reports");
                reports.received.entry((proxy, version)).or_insert(micros);
                let latest = reports.latest.entry(proxy).or_default();
                *latest = (*latest).max(version);
                wake.notify_all();
            }
        })
    };
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            loop {
                peak.fetch_max(cluster::rss_kib(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    drop(sampling);

    let all_at = |version: u64| -> anyhow::Result<()> {
        let (lock, wake) = &*reports;
        let reports = lock.lock().expect("reports");
        let (reports, timeout) = wake
            .wait_timeout_while(reports, PATIENCE, |reports| {
                reports.latest.values().filter(|latest| **latest >= version).count() < proxies
            })
            .expect("reports");
        anyhow::ensure!(
            !timeout.timed_out(),
            "{} of {proxies} proxies received version {version} within {PATIENCE:?}",
            reports.latest.values().filter(|latest| **latest >= version).count()
        );
        Ok(())
    };

    let start = Instant::now();
    all_at(1)?;
    let synced = start.elapsed();
    let sync_peak = peak.swap(0, std::sync::atomic::Ordering::Relaxed);
    let connected = cluster::rss_kib();

    let mut latencies = Vec::new();
    let mut updates = Vec::new();
    for change in 1..=changes {
        let at = change * 997 % pods;
        let pod = &mut pod_objects[at];
        pod.spec.as_mut().expect("spec").service_account_name = Some(format!("changed-{change}"));
        let changed_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let start = Instant::now();
        let pod = &pod_objects[at];
        let (namespace, name) = (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref());
        let changed = Changed {
            pods: vec![(namespace.unwrap_or_default(), name.unwrap_or_default(), Some(pod))],
            ..Default::default()
        };
        publish_next(&publish, index.update(&objects.clone().pods(&pod_objects), Some(&changed)));
        updates.push(start.elapsed());
        let version = publish.borrow().version;
        all_at(version)?;
        let (lock, _) = &*reports;
        let reports = lock.lock().expect("reports");
        latencies.extend((0..proxies).map(|proxy| {
            let received = reports.received.get(&(proxy, version)).copied().unwrap_or(u128::MAX);
            Duration::from_micros(received.saturating_sub(changed_at) as u64)
        }));
    }
    let change_peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    child.kill()?;
    let _ = child.wait();
    let _ = reader.join();

    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "{proxies} proxies connected to a cluster of {pods} pods ({} services):",
        pods / cluster::PODS_PER_SERVICE
    );
    println!("  all synced in {:.1} s", synced.as_secs_f64());
    println!(
        "  control plane RSS, MiB: {:.0} before they connect, {:.0} peak while they sync, {:.0} once synced, {:.0} peak during changes",
        mib(baseline),
        mib(sync_peak),
        mib(connected),
        mib(change_peak)
    );
    if !latencies.is_empty() {
        println!(
            "  a pod change to every proxy ({changes} changes × {proxies} proxies), ms: p50 {:.1}, p99 {:.1}, max {:.1} (update and publish median {:.1})",
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3,
            crate::median(updates).as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
