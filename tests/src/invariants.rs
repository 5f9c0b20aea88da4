//! What must hold however a test ends, faults and all, checked for every test: no process the
//! harness reads (the control plane, agents, node proxies, waypoints, test pods, every container
//! of real nodes) panicked or wrote private key material to its log — every line they print is
//! inspected as it is read — and a process's descriptors and memory, and a proxy's tasks and HBONE streams, come back to
//! where they were once a fault is over.
use std::{sync::Mutex, time::Duration};

use anyhow::{Context, bail};

use crate::netns::NetNs;

/// What a line must never say: a Rust panic, or a PEM private key (`BEGIN PRIVATE KEY`,
/// `BEGIN EC PRIVATE KEY`, …).
const FORBIDDEN: [(&str, &str); 2] =
    [(" panicked at ", "a panic"), ("PRIVATE KEY-----", "private key material")];

/// The lines that broke [`FORBIDDEN`], with the process that printed them (one test a process,
/// as nextest runs them).
static FINDINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Notes `line` of process `what` if it says what no log may.
pub(crate) fn inspect(what: &str, line: &str) {
    for (pattern, meaning) in FORBIDDEN {
        if line.contains(pattern) {
            let mut findings = FINDINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            findings.push(format!("{meaning} in the log of {what}: {}", line.trim_end()));
        }
    }
}

/// Fails, listing them, if any line read so far broke [`FORBIDDEN`].
pub fn logs_clean() -> anyhow::Result<()> {
    let findings = FINDINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !findings.is_empty() {
        bail!("{}", findings.join("\n"));
    }
    Ok(())
}

/// The lines found so far that broke [`FORBIDDEN`], taken: a caller that reports them itself
/// (the soak, in its report) takes them before its topology drops and would panic with them.
pub fn take_findings() -> Vec<String> {
    std::mem::take(&mut *FINDINGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// A process's open descriptors and resident memory at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub descriptors: usize,
    pub rss_kib: u64,
}

impl Footprint {
    /// Process `pid`'s, from `/proc`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
        Ok(Self { descriptors, rss_kib })
    }

    /// Waits, at most `timeout`, until process `pid` is back to this baseline but for `slack`
    /// (connections a pool may keep open, memory an allocator keeps); fails with what it held
    /// last, or because it is gone (a process that died has not come back to anything).
    pub fn returned_to(&self, pid: u32, slack: Footprint, timeout: Duration) -> anyhow::Result<()> {
        let mut last = None;
        let returned = crate::until("the process's footprint back to its baseline", timeout, || {
            last = Self::of(pid).ok();
            last.is_some_and(|now| {
                now.descriptors <= self.descriptors + slack.descriptors
                    && now.rss_kib <= self.rss_kib + slack.rss_kib
            })
        });
        returned.with_context(|| match last {
            Some(last) => format!(
                "process {pid} holds {} descriptors and {} KiB, {} and {} KiB before the fault",
                last.descriptors, last.rss_kib, self.descriptors, self.rss_kib
            ),
            None => format!("process {pid} is gone"),
        })
    }
}

/// What a proxy holds open by its own count: its metrics' `weft_tasks_alive` and
/// `weft_hbone_streams_open` (`weft_proxy::census`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub tasks: usize,
    pub streams: usize,
}

impl Census {
    /// Read from a proxy's metrics exposition.
    pub fn from_metrics(metrics: &str) -> anyhow::Result<Self> {
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .with_context(|| format!("no {name} in the metrics"))
        };
        Ok(Self { tasks: gauge("weft_tasks_alive")?, streams: gauge("weft_hbone_streams_open")? })
    }

    /// What `scrape` reads once no HBONE stream is held, waiting at most `timeout`: a baseline
    /// without what earlier requests still had open.
    pub fn settled(scrape: impl Fn() -> anyhow::Result<String>, timeout: Duration) -> anyhow::Result<Self> {
        let mut last = None;
        crate::until("the proxy's streams all let go", timeout, || {
            last = scrape().and_then(|metrics| Self::from_metrics(&metrics)).ok();
            last.is_some_and(|census| census.streams == 0)
        })
        .with_context(|| format!("the proxy holds {last:?}"))?;
        last.context("no census read")
    }

    /// Waits, at most `timeout`, until the census `scrape` reads is back to this baseline but
    /// for `slack` (the tasks of connections a pool keeps); fails with what it read last.
    pub fn returned_to(
        &self,
        scrape: impl Fn() -> anyhow::Result<String>,
        slack: Census,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut last = None;
        let returned = crate::until("the proxy's census back to its baseline", timeout, || {
            last = scrape().and_then(|metrics| Self::from_metrics(&metrics)).ok().or(last);
            last.is_some_and(|now| {
                now.tasks <= self.tasks + slack.tasks && now.streams <= self.streams + slack.streams
            })
        });
        returned.with_context(|| format!("the proxy holds {last:?}, {self:?} before the fault"))
    }
}

/// Memory an allocator may keep after a load, not given back to the system.
const ALLOCATOR_SLACK_KIB: u64 = 16 * 1024;

/// What a proxy (a node proxy or a waypoint, its admin port 15020 in `netns`) holds once
/// nothing is in flight — its process's footprint and its census —, to come back to after a
/// fault. A restarted proxy is another process: its baseline is taken anew.
#[derive(Debug)]
pub struct ProxyBaseline {
    pid: u32,
    netns: NetNs,
    footprint: Footprint,
    census: Census,
}

impl ProxyBaseline {
    /// Proxy `pid`'s, once no HBONE stream is held (at most `timeout`).
    pub fn take(pid: u32, netns: &NetNs, timeout: Duration) -> anyhow::Result<Self> {
        let census = Census::settled(|| metrics(netns), timeout)?;
        Ok(Self { pid, netns: netns.clone(), footprint: Footprint::of(pid)?, census })
    }

    /// Waits, at most `timeout`, until the proxy is back to this baseline but for `pooled`
    /// connections that pools keep open for minutes after a load (a descriptor and a task
    /// each) and what the allocator keeps; fails with what it holds.
    pub fn returned(&self, pooled: usize, timeout: Duration) -> anyhow::Result<()> {
        let slack = Footprint { descriptors: pooled, rss_kib: ALLOCATOR_SLACK_KIB };
        self.footprint.returned_to(self.pid, slack, timeout)?;
        self.census.returned_to(|| metrics(&self.netns), Census { tasks: pooled, streams: 0 }, timeout)
    }
}

/// The connections a proxy's pool keeps to one peer for one identity under load, for a while
/// after it: one per worker thread (`--pool-lanes`' default), which is one per core.
pub fn pool_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// A proxy's metrics, from its admin port in `netns`.
fn metrics(netns: &NetNs) -> anyhow::Result<String> {
    crate::apps::http_get(netns, 15020, "/metrics")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Census, Footprint, inspect, logs_clean};

    #[test]
    fn a_process_gone_has_not_returned_to_its_footprint() {
        let own = Footprint::of(std::process::id()).unwrap();
        let slack = Footprint { descriptors: 1000, rss_kib: 1 << 30 };
        own.returned_to(std::process::id(), slack, Duration::from_secs(5)).unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let error = own.returned_to(gone.id(), slack, Duration::from_millis(100)).unwrap_err();
        assert!(format!("{error:#}").contains("is gone"), "{error:#}");
    }

    #[test]
    fn a_census_is_read_from_the_metrics() {
        let metrics = "# TYPE weft_tasks_alive gauge\nweft_tasks_alive 12\nweft_tasks_alive_x 1\nweft_hbone_streams_open 3\n# EOF\n";
        assert_eq!(Census::from_metrics(metrics).unwrap(), Census { tasks: 12, streams: 3 });
        assert!(Census::from_metrics("weft_tasks_alive 1\n").is_err(), "a gauge missing is an error");
    }

    #[test]
    fn a_panic_or_a_private_key_in_any_log_is_found() {
        inspect("ztunnel", "2026-12-03T10:00:00Z INFO inbound HBONE accepted\n");
        assert!(logs_clean().is_ok());
        inspect("ztunnel", "thread 'tokio-rt-worker' panicked at proxy/src/relay.rs:10:5:\n");
        inspect("control", "-----BEGIN PRIVATE KEY-----\n");
        let findings = logs_clean().unwrap_err().to_string();
        assert!(findings.contains("a panic in the log of ztunnel"), "{findings}");
        assert!(findings.contains("private key material in the log of control"), "{findings}");
    }
}
