//! Weft's test harness: a Kubernetes cluster on one machine, made of real parts. A real etcd and
//! kube-apiserver ([`apiserver`]); nodes and pods as network namespaces with veths, bridges and
//! routes, each pod with a cgroup v2 directory and a process in it ([`topology`]); the harness
//! playing kubelet for them ([`kubelet`], [`cluster`]); and a raw-socket monitor that counts a
//! canary string crossing the fabric between nodes ([`wire`]). Everything it creates is removed
//! when its owner drops, also after a panic ([`cleanup`]).
//!
//! Privileged: it needs root, and the API server built by `cargo xtask setup`. Without them it
//! fails loudly; it never skips.

pub mod apiserver;
pub mod apps;
pub mod bench;
pub mod bpffs;
pub mod cleanup;
pub mod cluster;
pub mod collector;
pub mod control;
pub mod h2_frames;
pub mod hang;
pub mod images;
pub mod invariants;
pub mod istio_ztunnel;
pub mod istiod;
pub mod kubelet;
pub mod mesh;
pub mod netns;
pub mod nodes;
pub mod ports;
pub mod process;
pub mod shop;
pub mod soak;
pub mod topology;
pub mod waypoint;
pub mod wire;
pub mod xds;

use std::sync::atomic::{AtomicU32, Ordering};

/// Panics with a clear message unless the test runs as root: privileged tests must fail, never
/// pass silently, where they cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, cgroups, eBPF); run it through `cargo xtask test` as root"
    );
}

/// A name unique to this process and call: `weft-<pid>-<n>`. Stale ones from dead processes are
/// recognisable by their pid (see [`cleanup::sweep_stale`]).
pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{}{}-{}", cleanup::PREFIX, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A canary string unique to this run, for apps to put in every payload so that the wire
/// monitor can tell whether plaintext crossed the fabric.
pub fn canary() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("weft-canary-{}-{nanos:09}", std::process::id())
}

/// Polls `probe` until it returns `Some`, or fails after `timeout`. The harness's only way to
/// wait: no sleeps as synchronisation, every loop bounded.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Retries `holds` until it is true, 10 ms between tries, or fails after `timeout`:
/// [`eventually`] for blocking checks.
pub fn until(
    what: &str,
    timeout: std::time::Duration,
    mut holds: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !holds() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        // A pause between tries, so that a cheap check does not take a core from what it
        // waits for.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}
