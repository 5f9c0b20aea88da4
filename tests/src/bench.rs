//! What the benchmark binaries share: running a `weft-testpod` client in a pod, reading its
//! `key=value` figures, and summarising interleaved repeats (median [min–max]).
use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::Context;

use crate::{apps, topology::Pod};

/// Runs `weft-testpod ARGS --to TO` in `pod` and returns its output.
pub fn testpod(pod: &Pod, args: &[&str], to: SocketAddr) -> anyhow::Result<String> {
    let mut command = Command::new(apps::binary("weft-testpod")?);
    command.args(args).args(["--to", &to.to_string()]).stdout(std::process::Stdio::piped());
    let (ok, out) = pod.spawn(command)?.finish(Duration::from_secs(120))?;
    anyhow::ensure!(ok, "{args:?} failed: {out}");
    Ok(out)
}

/// The number after `key=` in `out`.
pub fn field(out: &str, key: &str) -> anyhow::Result<f64> {
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key} in {out:?}"))?
        .parse()
        .context("bad number")
}

/// `median [min–max]` of `values`, one decimal.
pub fn summary(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    format!("{:.1} [{:.1}–{:.1}]", values[values.len() / 2], values[0], values[values.len() - 1])
}

/// The median of `values`.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A process's resident memory in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
