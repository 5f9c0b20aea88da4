//! What must hold however a test ends, faults and all, checked for every test: no process the
//! harness reads (the control plane, agents, node proxies, waypoints, test pods) panicked or
//! wrote private key material to its log — every line they print is inspected as it is read
//! — and a process's descriptors and memory come back to where they were once a fault is over.
use std::{sync::Mutex, time::Duration};

use anyhow::{Context, bail};

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
    /// last.
    pub fn returned_to(&self, pid: u32, slack: Footprint, timeout: Duration) -> anyhow::Result<()> {
        let mut last = *self;
        let returned = crate::until("the process's footprint back to its baseline", timeout, || {
            last = Self::of(pid).unwrap_or(last);
            last.descriptors <= self.descriptors + slack.descriptors
                && last.rss_kib <= self.rss_kib + slack.rss_kib
        });
        returned.with_context(|| {
            format!(
                "process {pid} holds {} descriptors and {} KiB, {} and {} KiB before the fault",
                last.descriptors, last.rss_kib, self.descriptors, self.rss_kib
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{inspect, logs_clean};

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
