//! `cargo xtask setup`: brings a fresh machine of this kind (Debian 12, root, rustup's stable
//! Rust) to what Weft's build and tests need, skipping whatever is already there. Slow artefacts
//! (bpf-linker, kube-apiserver, the Go build cache) live in the cache directory, outside the work
//! tree, so a second run takes seconds.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};

use crate::cmd;

/// Debian packages: the BPF-capable rustc and LLVM 22 for bpf-linker (TESTING.md §1), Go and the
/// source tools for kube-apiserver, etcd (TESTING.md §2), and the network tools of the harness.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "golang-go",
    "dpkg-dev",
    "etcd-server",
    "golang-github-modern-go-reflect2-dev",
    "golang-github-json-iterator-go-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    "iproute2",
    "iputils-ping",
    // The benchmark's bulk-throughput client and server.
    "iperf3",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Paths of the tools setup provides, for the commands that run after it.
#[derive(Debug)]
pub struct Tools {
    pub kube_apiserver: PathBuf,
}

/// Runs every setup step, each skipped when already done.
pub fn run(root: &Path) -> anyhow::Result<Tools> {
    crate::require_root()?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    step("Debian packages", debian_packages)?;
    step("bpf-linker", || bpf_linker(&cache))?;
    step("cargo-nextest", nextest)?;
    let kube_apiserver = cache.join("kubernetes/bin/kube-apiserver");
    step("kube-apiserver", || build_kube_apiserver(root, &cache, &kube_apiserver))?;
    step("bpffs and cgroup v2", mounts)?;
    Ok(Tools { kube_apiserver })
}

/// `$WEFT_CACHE`, or `~/.cache/weft`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_CACHE") {
        return PathBuf::from(dir);
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/weft")
}

fn step(name: &str, work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let started = Instant::now();
    work().with_context(|| format!("setup step '{name}'"))?;
    eprintln!("setup: {name} ready ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let status = Command::new("dpkg-query").args(["-W", "-f=${Status}", package]).output();
            !status.is_ok_and(|out| out.stdout.starts_with(b"install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["-q", "update"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// bpf-linker built against Debian's LLVM 22, which matches Debian's rustc for the BPF target.
fn bpf_linker(cache: &Path) -> anyhow::Result<()> {
    let root = cache.join("bpf-linker");
    if root.join("bin/bpf-linker").exists() {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} (about 2 minutes)");
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--root"])
            .arg(&root)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// The test runner; machines of this kind ship it, so this only installs it where one does not.
fn nextest() -> anyhow::Result<()> {
    if cmd::succeeds(Command::new("cargo").args(["nextest", "--version"])) {
        return Ok(());
    }
    cmd::run(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))
}

fn build_kube_apiserver(root: &Path, cache: &Path, binary: &Path) -> anyhow::Result<()> {
    if binary.exists() {
        return Ok(());
    }
    eprintln!("setup: building kube-apiserver from Debian's kubernetes source (5-10 minutes cold)");
    cmd::run(
        Command::new("bash")
            .arg(root.join("xtask/src/setup/kube_apiserver.sh"))
            .arg(cache.join("kubernetes")),
    )
}

/// bpffs for pinning, and the cgroup v2 hierarchy the datapath attaches to.
fn mounts() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = |fstype: &str, at: &str| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(at) && fields.next() == Some(fstype)
        })
    };
    if !mounted("bpf", "/sys/fs/bpf") {
        std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
        cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    if !mounted("cgroup2", "/sys/fs/cgroup/unified") && !mounted("cgroup2", "/sys/fs/cgroup") {
        bail!("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup");
    }
    if !cmd::succeeds(Command::new("ip").args(["netns", "list"])) {
        bail!("`ip netns` does not work here; network namespaces are needed");
    }
    Ok(())
}
