//! What the benchmark binaries share: the clients they run in pods (`weft-testpod`, iperf3),
//! what they read off the proxies (CPU from the cgroup, resident memory), and summaries of
//! interleaved repeats (median [min–max]).
use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;

use crate::{apps, process::Process, topology::Pod};

pub mod report;

/// The port the benchmark's iperf3 servers listen on.
pub const IPERF_PORT: u16 = 5201;

/// Runs `weft-testpod ARGS --to TO` in `pod` and returns its output.
pub fn testpod(pod: &Pod, args: &[&str], to: SocketAddr) -> anyhow::Result<String> {
    let mut command = Command::new(apps::binary("weft-testpod")?);
    command.args(args).args(["--to", &to.to_string()]).stdout(Stdio::piped());
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
    Ok(resident_kib(pid)?.total)
}

/// A process's resident memory, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// All of it (`VmRSS`).
    pub total: u64,
    /// Its anonymous pages (`RssAnon`: heap and stacks), the memory that is the process's own.
    /// The rest is its binary's and libraries' pages, which it shares with the page cache.
    pub anonymous: u64,
}

/// A process's resident memory, from `/proc/<pid>/status`.
pub fn resident_kib(pid: u32) -> anyhow::Result<Resident> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    };
    Ok(Resident { total: kib("VmRSS:")?, anonymous: kib("RssAnon:")? })
}

/// CPU time used by the processes of cgroup `dir`, in seconds (`cpu.stat`'s `usage_usec`:
/// every thread, to the microsecond).
pub fn cpu_seconds(dir: &Path) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat"))
        .with_context(|| format!("reading {}/cpu.stat", dir.display()))?;
    let usec: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
        .context("no usage_usec in cpu.stat")?;
    Ok(usec as f64 / 1e6)
}

/// CPU time used by process `pid` (every thread), in seconds, to the kernel's clock tick.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command may hold spaces and parentheses: the fields that follow its last ')' are
    // state (3), …, utime (14) and stime (15).
    let fields: Vec<&str> = stat.rsplit_once(')').context("no ')' in stat")?.1.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields.get(index - 3).context("a short stat")?.parse::<u64>()? as f64)
    };
    // SAFETY: sysconf reads a constant and touches no memory.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / per_second)
}

/// The machine the figures come from.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("machine: {cpus} CPUs ({cpu}), kernel {}", kernel.trim())
}

/// The highest resident memory of some processes while it runs, sampled every 50 ms.
#[derive(Debug)]
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<Vec<Resident>>,
}

impl RssPeak {
    pub fn start(pids: Vec<u32>) -> Self {
        Self::after(Duration::ZERO, pids)
    }

    /// Samples only from `delay` on (at least once): the memory a load holds once it runs,
    /// not what the work before it left for the allocator to give back.
    pub fn after(delay: Duration, pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let sampler = std::thread::spawn(move || {
            // The start of the measured window, not synchronisation.
            std::thread::sleep(delay);
            let mut peaks = vec![Resident::default(); pids.len()];
            loop {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    let now = resident_kib(*pid).unwrap_or_default();
                    peak.total = peak.total.max(now.total);
                    peak.anonymous = peak.anonymous.max(now.anonymous);
                }
                if stopping.load(Ordering::Acquire) {
                    return peaks;
                }
                // Sampling period, not synchronisation.
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { stop, sampler }
    }

    /// Each process's peaks (of all and of its anonymous memory, each on its own), in the order
    /// given.
    pub fn finish(self) -> Vec<Resident> {
        self.stop.store(true, Ordering::Release);
        self.sampler.join().unwrap_or_default()
    }
}

/// Starts an iperf3 server in `pod` and returns once it listens.
pub fn iperf3_server(pod: &Pod) -> anyhow::Result<Process> {
    let mut command = Command::new("iperf3");
    // --forceflush: the readiness line reaches the pipe at once.
    command.args(["--server", "--port", &IPERF_PORT.to_string(), "--forceflush"]).stdout(Stdio::piped());
    let mut server = pod.spawn(command).context("starting iperf3 (cargo xtask setup installs it)")?;
    server
        .wait_for(|line| line.contains("Server listening"), Duration::from_secs(10))
        .with_context(|| format!("iperf3 server in pod {}", pod.name))?;
    Ok(server)
}

/// What one bulk transfer moved.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub gbit_per_sec: f64,
    pub bytes: f64,
}

/// Sends from `pod` to the iperf3 server at `ip` over `streams` connections for `seconds`.
pub fn iperf3(pod: &Pod, ip: std::net::IpAddr, streams: u32, seconds: u32) -> anyhow::Result<Bulk> {
    let mut command = Command::new("iperf3");
    command
        .args(["--client", &ip.to_string(), "--port", &IPERF_PORT.to_string(), "--json"])
        .args(["--parallel", &streams.to_string(), "--time", &seconds.to_string()])
        .stdout(Stdio::piped());
    let (ok, out) = pod.spawn(command)?.finish(Duration::from_secs(u64::from(seconds) + 30))?;
    anyhow::ensure!(ok, "iperf3 to {ip} failed: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).context("iperf3's JSON")?;
    let received = &report["end"]["sum_received"];
    let number = |key: &str| received[key].as_f64().with_context(|| format!("no end.sum_received.{key}"));
    Ok(Bulk { gbit_per_sec: number("bits_per_second")? / 1e9, bytes: number("bytes")? })
}
