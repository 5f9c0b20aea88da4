//! `cargo xtask setup`: brings a fresh machine of this kind (Debian 12, root, rustup's stable
//! Rust, the machine's Go) to what Weft's build and tests need, skipping whatever is already there.
//! Slow artefacts (bpf-linker, Kubernetes and etcd with Go's module and build caches) live in the
//! cache directory, outside the work tree, so a second run takes seconds.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail};

use crate::cmd;

/// Debian packages: the BPF-capable rustc and LLVM 22 for bpf-linker (TESTING.md §1), protoc, and
/// the network tools of the harness.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    // The control plane's allocator (jemalloc) is built from its C source.
    "make",
    "iproute2",
    "iputils-ping",
    // The benchmark's bulk-throughput client and server.
    "iperf3",
    // The harness's real nodes: container runtime, CNI plugins (bridge, host-local, loopback in
    // /usr/lib/cni), and iptables for kube-proxy.
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const CARGO_DENY_VERSION: &str = "0.20.2";

/// The Kubernetes release every test runs against (README's "Tested with"); k8s-openapi's
/// feature in Cargo.toml names the same minor.
pub const KUBERNETES_VERSION: &str = "1.37.2";
/// The etcd release Kubernetes 1.37 is validated with.
pub const ETCD_VERSION: &str = "3.6.16";
/// The cluster DNS of the harness's real nodes.
pub const COREDNS_VERSION: &str = "1.15.0";
/// Istio's control plane (istiod) and CRDs for the interoperability test: the istio.io/istio
/// module at this version (Istio 1.31 in development, its main branch of 2026-08-27: Istio tags
/// releases without Go's `v`, so the module proxy serves only commits). README's "Tested with".
pub const ISTIO_MODULE_VERSION: &str = "v0.0.0-20260827124520-eed52ebb66ad";
/// The Gateway API release whose experimental-channel CRDs the waypoint's tests install (the
/// `sigs.k8s.io/gateway-api` module; README's "Tested with"): a superset of the standard
/// channel, with HTTPRoute's `retry` and TCPRoute, which the standard channel lacks.
pub const GATEWAY_API_VERSION: &str = "v1.6.3";
/// The OpenTelemetry Collector release the tracing test's collector is built of (its core's
/// and contrib's modules share the number; README's "Tested with").
pub const OTEL_COLLECTOR_VERSION: &str = "v0.161.0";
/// The oldest Go that builds them all (their go.mod files ask for 1.26.0).
const GO_MINIMUM: (u32, u32) = (1, 26);

/// Paths of the tools setup provides, for the commands that run after it.
#[derive(Debug)]
pub struct Tools {
    /// A directory holding etcd, the Kubernetes commands, istiod (`pilot-discovery`), Istio's
    /// CRDs (`istio-crds.yaml`), an OpenTelemetry Collector (`otelcol`) and the Gateway API's experimental-channel CRDs (`gateway-api-crds.yaml`) of
    /// the tested releases (links into the cache); the harness reads it from `WEFT_KUBE_BIN`.
    pub kube_bin: PathBuf,
    /// `cargo-fuzz`, at [`CARGO_FUZZ_VERSION`].
    pub cargo_fuzz: PathBuf,
    /// `cargo-deny`, at [`CARGO_DENY_VERSION`].
    pub cargo_deny: PathBuf,
}

/// Runs every setup step, each skipped when already done.
pub fn run(root: &Path) -> anyhow::Result<Tools> {
    crate::require_root()?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    step("Debian packages", debian_packages)?;
    step("bpf-linker", || bpf_linker(&cache))?;
    step("cargo-nextest", nextest)?;
    let cargo_fuzz = cargo_fuzz()?;
    let cargo_deny = cargo_tool("cargo-deny", CARGO_DENY_VERSION)?;
    let kube_bin = cache.join("kubernetes/bin");
    step("Kubernetes, etcd and CoreDNS", || kubernetes(root, &cache.join("kubernetes"), &kube_bin))?;
    step("istiod and Istio's CRDs", || istio(root, &cache.join("kubernetes"), &kube_bin))?;
    step("Gateway API CRDs", || gateway_api(&cache.join("kubernetes"), &kube_bin))?;
    step("OpenTelemetry Collector", || otel_collector(root, &cache.join("kubernetes"), &kube_bin))?;
    step("Gateway API conformance suite", || conformance_suite(root, &cache.join("kubernetes"), &kube_bin))?;
    step("bpffs and cgroup v2", mounts)?;
    Ok(Tools { kube_bin, cargo_fuzz, cargo_deny })
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

/// The fuzz targets' driver, `cargo-fuzz` at [`CARGO_FUZZ_VERSION`]; the setup step
/// `cargo xtask fuzz` needs alone.
pub fn cargo_fuzz() -> anyhow::Result<PathBuf> {
    cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// The binary of crate `name` at `version`, built into the cache (a minute or a few) unless
/// already there.
fn cargo_tool(name: &str, version: &str) -> anyhow::Result<PathBuf> {
    let root = cache_dir().join(format!("{name}-{version}"));
    let binary = root.join("bin").join(name);
    step(name, || {
        if binary.exists() {
            return Ok(());
        }
        cmd::run(
            Command::new("cargo")
                .args(["install", name, "--locked", "--version", version, "--root"])
                .arg(&root),
        )
    })?;
    Ok(binary)
}

/// The Kubernetes commands `kubernetes.sh` builds (its `kube_commands`): the control plane, and
/// what the harness's real nodes run.
const KUBE_COMMANDS: [&str; 6] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"];

/// etcd, [`KUBE_COMMANDS`] and CoreDNS at the tested releases, built from the Go module proxy by
/// `kubernetes.sh` when missing; `bin` is then pointed at them.
fn kubernetes(root: &Path, dir: &Path, bin: &Path) -> anyhow::Result<()> {
    let kube = dir.join(format!("kubernetes-v{KUBERNETES_VERSION}/bin"));
    let etcd = dir.join(format!("etcd-v{ETCD_VERSION}/bin"));
    let coredns = dir.join(format!("coredns-v{COREDNS_VERSION}/bin/coredns"));
    let binaries: Vec<PathBuf> =
        KUBE_COMMANDS.iter().map(|command| kube.join(command)).chain([etcd.join("etcd"), coredns]).collect();
    if !binaries.iter().all(|binary| binary.exists()) {
        eprintln!(
            "setup: building Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION} and CoreDNS {COREDNS_VERSION} \
             (about 10 minutes cold)"
        );
        cmd::run(
            Command::new("bash")
                .arg(root.join("xtask/src/setup/kubernetes.sh"))
                .arg(dir)
                .args([KUBERNETES_VERSION, ETCD_VERSION, COREDNS_VERSION])
                .env("PATH", go_path()?),
        )?;
    }
    let links = binaries.into_iter().map(|binary| {
        let name = binary.file_name().expect("invariant: every binary path has a file name").to_owned();
        (name, binary)
    });
    link_into(bin, links)
}

/// `pilot-discovery`, Istio's CRDs and its echo app (server, client and serving certificate:
/// the conformance suite's echo-advanced image) at [`ISTIO_MODULE_VERSION`], built and copied
/// from the Go module proxy by `istio.sh` (sharing Kubernetes' Go caches in `dir`) when
/// missing; `bin` then links them as `pilot-discovery`, `istio-crds.yaml` and `istio-echo-*`.
fn istio(root: &Path, dir: &Path, bin: &Path) -> anyhow::Result<()> {
    let built = dir.join(format!("istio-{ISTIO_MODULE_VERSION}"));
    let (binary, crds) = (built.join("bin/pilot-discovery"), built.join("crd-all.gen.yaml"));
    let echo = [
        ("istio-echo-server", built.join("bin/echo-server")),
        ("istio-echo-client", built.join("bin/echo-client")),
        ("istio-echo-cert.crt", built.join("echo-certs/cert.crt")),
        ("istio-echo-cert.key", built.join("echo-certs/cert.key")),
    ];
    if !binary.exists() || !crds.exists() || echo.iter().any(|(_, file)| !file.exists()) {
        eprintln!("setup: building istiod (istio.io/istio {ISTIO_MODULE_VERSION}; a few minutes cold)");
        go_script(root, "istio.sh", dir, ISTIO_MODULE_VERSION)?;
    }
    let echo = echo.into_iter().map(|(name, file)| (name.into(), file));
    link_into(
        bin,
        [("pilot-discovery".into(), binary), ("istio-crds.yaml".into(), crds)].into_iter().chain(echo),
    )
}

/// The Gateway API conformance suite at [`GATEWAY_API_VERSION`], built from the Go module proxy
/// by `conformance.sh` (sharing Kubernetes' Go caches in `dir`) when missing, linked as
/// `bin/gateway-api-conformance.test`, with its mesh manifests beside it.
fn conformance_suite(root: &Path, dir: &Path, bin: &Path) -> anyhow::Result<()> {
    let built = dir.join(format!("gateway-api-conformance-{GATEWAY_API_VERSION}"));
    let (binary, manifests) = (built.join("bin/conformance.test"), built.join("mesh-manifests.yaml"));
    if !binary.exists() || !manifests.exists() {
        eprintln!("setup: building the Gateway API conformance suite {GATEWAY_API_VERSION}");
        go_script(root, "conformance.sh", dir, GATEWAY_API_VERSION)?;
    }
    link_into(
        bin,
        [
            ("gateway-api-conformance.test".into(), binary),
            ("gateway-api-conformance-mesh.yaml".into(), manifests),
        ],
    )
}

/// Runs `xtask/src/setup/<script> <dir> <version>` with the machine's Go first on its path.
fn go_script(root: &Path, script: &str, dir: &Path, version: &str) -> anyhow::Result<()> {
    cmd::run(
        Command::new("bash")
            .arg(root.join("xtask/src/setup").join(script))
            .arg(dir)
            .arg(version)
            .env("PATH", go_path()?),
    )
}

/// An OpenTelemetry Collector (OTLP receiver, file exporter) at [`OTEL_COLLECTOR_VERSION`],
/// built from the Go module proxy by `otelcol.sh` (sharing Kubernetes' Go caches in `dir`) when
/// missing, linked as `bin/otelcol`.
fn otel_collector(root: &Path, dir: &Path, bin: &Path) -> anyhow::Result<()> {
    let binary = dir.join(format!("otelcol-{OTEL_COLLECTOR_VERSION}/bin/otelcol"));
    if !binary.exists() {
        eprintln!(
            "setup: building the OpenTelemetry Collector {OTEL_COLLECTOR_VERSION} (a minute or two cold)"
        );
        go_script(root, "otelcol.sh", dir, OTEL_COLLECTOR_VERSION)?;
    }
    link_into(bin, [("otelcol".into(), binary)])
}

/// The Gateway API's experimental-channel CRDs at [`GATEWAY_API_VERSION`], from the
/// `sigs.k8s.io/gateway-api` module (downloaded into Kubernetes' module cache in `dir`), joined
/// into one file in the order of the release's kustomization and linked as
/// `bin/gateway-api-crds.yaml`. Its ValidatingAdmissionPolicy (which refuses experimental CRDs
/// over standard ones, and old releases) is left out: the file holds CustomResourceDefinitions
/// alone.
fn gateway_api(dir: &Path, bin: &Path) -> anyhow::Result<()> {
    let joined = dir.join(format!("gateway-api-{GATEWAY_API_VERSION}-experimental-crds.yaml"));
    if !joined.exists() {
        let out = cmd::output(
            Command::new(go()?)
                .args(["mod", "download", "-json"])
                .arg(format!("sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}"))
                .current_dir(dir)
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "-mod=mod")
                .env("GOMODCACHE", dir.join("go/mod")),
        )?;
        // Its JSON names the unpacked module as `"Dir": "<path>",` on a line of its own.
        let source = out
            .lines()
            .find_map(|line| line.trim().strip_prefix("\"Dir\": \"")?.strip_suffix("\","))
            .with_context(|| format!("go mod download named no directory: {out}"))?;
        let crds = Path::new(source).join("config/crd/experimental");
        let kustomization = std::fs::read_to_string(crds.join("kustomization.yaml"))
            .with_context(|| format!("reading {}/kustomization.yaml", crds.display()))?;
        let mut text = String::new();
        for file in kustomization.lines().filter_map(|line| line.trim().strip_prefix("- ")) {
            let content = std::fs::read_to_string(crds.join(file))
                .with_context(|| format!("reading {}/{file}", crds.display()))?;
            if content.contains("\nkind: CustomResourceDefinition") {
                text.push_str("---\n");
                text.push_str(&content);
            }
        }
        anyhow::ensure!(
            text.contains("name: httproutes.gateway.networking.k8s.io"),
            "no HTTPRoute CRD in {}",
            crds.display()
        );
        let partial = joined.with_extension("tmp");
        std::fs::write(&partial, text).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &joined).with_context(|| format!("writing {}", joined.display()))?;
    }
    link_into(bin, [("gateway-api-crds.yaml".into(), joined)])
}

/// `PATH` with the Go to build with first.
fn go_path() -> anyhow::Result<std::ffi::OsString> {
    let go = go()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::join_paths(
        go.parent().into_iter().map(Path::to_path_buf).chain(std::env::split_paths(&path)),
    )?)
}

/// Links each `(name, target)` as `bin/name`.
fn link_into(
    bin: &Path,
    links: impl IntoIterator<Item = (std::ffi::OsString, PathBuf)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(bin).with_context(|| format!("creating {}", bin.display()))?;
    for (name, target) in links {
        let link = bin.join(name);
        // A link left by another release is replaced, so `bin` always holds the tested ones.
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    }
    Ok(())
}

/// The Go to build with: the first of `go` on `PATH` and the machine's `/usr/local/go` that is at
/// least [`GO_MINIMUM`] (an old Debian `golang-go` may come first on `PATH`).
fn go() -> anyhow::Result<PathBuf> {
    let mut seen = Vec::new();
    for candidate in ["go", "/usr/local/go/bin/go"] {
        let Ok(out) = Command::new(candidate).arg("env").arg("GOROOT").arg("GOVERSION").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let (Some(goroot), Some(version)) = (lines.next(), lines.next()) else { continue };
        seen.push(format!("{version} at {goroot}"));
        let mut numbers = version.trim_start_matches("go").split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        let found = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        if found >= GO_MINIMUM {
            return Ok(Path::new(goroot).join("bin/go"));
        }
    }
    bail!(
        "Kubernetes {KUBERNETES_VERSION} needs Go >= {}.{} (the machine's Go lives in /usr/local/go); found: {}",
        GO_MINIMUM.0,
        GO_MINIMUM.1,
        if seen.is_empty() { "none".to_owned() } else { seen.join(", ") }
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
