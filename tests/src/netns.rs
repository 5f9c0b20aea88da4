//! Named network namespaces (`ip netns`), with ways to run code, commands and sockets inside one.
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

/// A network namespace created with `ip netns add`; removed by its owner's cleanup guard (it has
/// no Drop of its own so that topology code decides the order of teardown).
#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let netns = Self { name: name.to_owned() };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Deletes the namespace called `name`.
    pub fn delete_named(name: &str) -> anyhow::Result<()> {
        ip(&["netns", "delete", name])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Opens the namespace file (for `setns`, or to hand to a process).
    pub fn open(&self) -> anyhow::Result<File> {
        File::open(self.path()).with_context(|| format!("opening netns {}", self.name))
    }

    /// Runs `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets a `net.*` sysctl inside this namespace (`key` as a /proc/sys path below `net/`, e.g.
    /// `ipv4/ip_forward`). New namespaces copy some values from the host, which may differ.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/net/{key}");
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value).with_context(|| format!("writing {path}")))?
    }

    /// Runs `work` on a fresh thread that has joined this namespace, and returns its result.
    /// Sockets it creates stay in this namespace after the thread ends.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let file = self.open()?;
        let name = self.name.clone();
        std::thread::spawn(move || -> anyhow::Result<T> {
            enter(&file).with_context(|| format!("entering netns {name}"))?;
            Ok(work())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
    }
}

/// Moves the calling thread into the network namespace `file` refers to.
pub fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
