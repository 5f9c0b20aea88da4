//! `cargo xtask`: the project's commands. `setup` installs what a fresh machine lacks (idempotent,
//! and run first by every other command); `test` runs every test; `demo` runs Weft's main job on
//! the embedded default topology; `bench` measures the mesh against no mesh (or, `--waypoint`,
//! a waypoint against the mesh path alone), in release; `fuzz` runs the fuzz targets; `soak`
//! runs the mesh under steady traffic and a stream of faults. Slow
//! artefacts are cached outside the work tree (see `cache`).
use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod cmd;
mod fuzz;
mod setup;

#[derive(Debug, Parser)]
#[command(about = "Weft's developer commands")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install toolchains, bpf-linker, etcd and Kubernetes; mount bpffs. Idempotent.
    Setup,
    /// Set up, then run every test: formatting, clippy, cargo deny, unit, component and
    /// privileged (needs root), and a short fuzz run.
    Test {
        /// Test name filters, passed to `cargo nextest run`.
        #[arg(trailing_var_arg = true)]
        filters: Vec<String>,
    },
    /// Set up, then bring up the local mesh topology and report it.
    Demo {
        /// Keep the topology running until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Real nodes (kubelet, containerd, kube-proxy, CoreDNS) with Weft installed by its
        /// manifests, instead of the embedded cluster.
        #[arg(long)]
        real: bool,
    },
    /// Set up, build in release, and measure capture and the mesh path against direct TCP
    /// (or, with `--waypoint`, a waypoint on the mesh path against the mesh path alone).
    Bench {
        /// A short run (under three minutes) instead of the full one (about ten).
        #[arg(long)]
        quick: bool,
        /// Measure what a waypoint adds instead.
        #[arg(long)]
        waypoint: bool,
        /// Istio's ztunnel, built from its source with `--features testing`: also measure it
        /// as the node proxy, beside Weft's (not with `--waypoint`).
        #[arg(long, conflicts_with = "waypoint")]
        istio_ztunnel: Option<PathBuf>,
    },
    /// Build the fuzz targets of `fuzz/` and run each (or those named) for a while.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// Targets to run (`fuzz/Cargo.toml`); all when none is named.
        targets: Vec<String>,
    },
    /// Set up, then run the mesh under steady traffic while pods churn, labels flip, policies
    /// change, certificates rotate and components restart; report failures and growth.
    Soak {
        /// How long the soak runs.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let root = workspace_root();
    let done = match args.command {
        Task::Setup => setup::run(&root).map(drop),
        Task::Test { filters } => test(&root, &filters),
        Task::Demo { keep, real } => demo(&root, keep, real),
        Task::Bench { quick, waypoint, istio_ztunnel } => {
            bench(&root, quick, waypoint, istio_ztunnel.as_deref())
        }
        Task::Fuzz { seconds, targets } => {
            setup::cargo_fuzz().and_then(|cargo_fuzz| fuzz::run(&root, &cargo_fuzz, seconds, &targets))
        }
        Task::Soak { minutes } => soak(&root, minutes),
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The step that failed and its causes, in one line; no backtrace.
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn test(root: &std::path::Path, filters: &[String]) -> anyhow::Result<()> {
    let tools = setup::run(root)?;
    let cargo_in_root = |args: &[&str]| {
        let mut command = Command::new(cargo());
        command.current_dir(root).args(args);
        command
    };
    cmd::run(&mut cargo_in_root(&["fmt", "--all", "--check"]))?;
    cmd::run(&mut cargo_in_root(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))?;
    cmd::run(&mut cargo_in_root(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Licences, bans and sources by `deny.toml` (advisories need a database this machine
    // cannot fetch).
    let mut deny = Command::new(&tools.cargo_deny);
    deny.current_dir(root).args(["check", "--hide-inclusion-graph", "licenses", "bans", "sources"]);
    cmd::run(&mut deny)?;
    // Every fuzz target for a short while, whatever comes after: first, so the tests' summary
    // (failures last) ends the log.
    let fuzzed = if filters.is_empty() {
        fuzz::run(root, &tools.cargo_fuzz, fuzz::TEST_SECONDS, &[])
    } else {
        eprintln!("xtask: tests filtered, so no fuzz run (cargo xtask fuzz runs them)");
        Ok(())
    };
    // The privileged tests start the workspace's binaries (agent, test pods) as processes.
    cmd::run(&mut cargo_in_root(&["build", "--workspace", "--bins"]))?;
    // nextest: one process per test, so a test's namespaces and eBPF links die with it, and a
    // closing summary that names every failure (`.config/nextest.toml`).
    // Every component's log is kept too, for what a failure prints of them (the soak's).
    let logs = fresh_dir(&root.join("target/test-logs"))?;
    let mut test = cargo_in_root(&["nextest", "run", "--workspace", "--no-fail-fast"]);
    test.args(filters).env("WEFT_KUBE_BIN", &tools.kube_bin).env("WEFT_TEST_LOGS", &logs);
    let tested = cmd::run(&mut test);
    match (tested, fuzzed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(tests), Ok(())) => Err(tests),
        (Ok(()), Err(fuzzing)) => Err(fuzzing),
        (Err(tests), Err(fuzzing)) => bail!("{tests:#}; {fuzzing:#}"),
    }
}

fn soak(root: &std::path::Path, minutes: f64) -> anyhow::Result<()> {
    let tools = setup::run(root)?;
    // Every binary: the soak starts the daemons, weftctl and `weft-testpod` as processes.
    cmd::run(Command::new(cargo()).current_dir(root).args(["build", "--workspace", "--bins"]))?;
    // Every component's log, to read after the run.
    let logs = fresh_dir(&root.join("target/soak/logs"))?;
    let mut soak = Command::new(cargo());
    soak.current_dir(root)
        .args(["run", "--quiet", "--package", "weft-tests", "--bin", "weft-soak", "--"])
        .args(["--minutes", &minutes.to_string()])
        .env("WEFT_KUBE_BIN", &tools.kube_bin)
        .env("WEFT_TEST_LOGS", &logs);
    let soaked = cmd::run(&mut soak);
    eprintln!("xtask: the components' logs are in {}", logs.display());
    soaked
}

/// `dir`, emptied of an earlier run's files.
fn fresh_dir(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(dir.to_owned())
}

fn demo(root: &std::path::Path, keep: bool, real: bool) -> anyhow::Result<()> {
    let tools = setup::run(root)?;
    // Every binary: the demo starts the daemons, weftctl and `weft-testpod` as processes.
    cmd::run(Command::new(cargo()).current_dir(root).args(["build", "--workspace", "--bins"]))?;
    let mut demo = Command::new(cargo());
    demo.current_dir(root)
        .args(["run", "--quiet", "--package", "weft-tests", "--bin", "weft-demo", "--"])
        .env("WEFT_KUBE_BIN", &tools.kube_bin);
    if keep {
        demo.arg("--keep");
    }
    if real {
        demo.arg("--real");
    }
    cmd::run(&mut demo)
}

fn bench(
    root: &std::path::Path,
    quick: bool,
    waypoint: bool,
    istio_ztunnel: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    setup::run(root)?;
    cmd::run(Command::new(cargo()).current_dir(root).args(["build", "--release", "--workspace", "--bins"]))?;
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let (binary, quick_args, json): (_, &[&str], _) = if waypoint {
        ("weft-waypoint-bench", &["--repeats", "3", "--seconds", "3"], "waypoint.json")
    } else {
        (
            "weft-mesh-bench",
            &["--repeats", "3", "--bulk-seconds", "2", "--latency-seconds", "2", "--connections", "300"],
            "mesh.json",
        )
    };
    let mut command = Command::new(root.join("target/release").join(binary));
    if quick {
        command.args(quick_args);
    }
    command.arg("--json").arg(out.join(json));
    if let Some(binary) = istio_ztunnel {
        command.arg("--istio-ztunnel").arg(binary);
    }
    cmd::run(&mut command)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().expect("invariant: xtask lives one level below the root").to_path_buf()
}

/// Fails with a clear message unless running as root (installs, netns, eBPF all need it).
fn require_root() -> anyhow::Result<()> {
    let uid = Command::new("id").arg("-u").output().context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("Weft's setup, tests and demo need root (packages, network namespaces, eBPF)");
    }
    Ok(())
}
