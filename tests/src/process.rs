//! Processes placed the way a kubelet places a pod's: inside the pod's network namespace and its
//! cgroup v2 directory, so cgroup-attached eBPF sees them as it would in a cluster. Also the
//! cgroup directories themselves.
use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns::NetNs;

/// A child process that is killed (and reaped) when this value drops.
#[derive(Debug)]
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    /// Starts `command` in the harness's own namespaces (for host-side servers like etcd).
    pub fn start(mut command: Command) -> anyhow::Result<Self> {
        let what = format!("{:?}", command.get_program());
        let child = command.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self { child, what })
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts `command` inside `netns` and, when given, the cgroup directory `cgroup`; the
    /// process is in both before it executes its first instruction of `command`.
    pub fn spawn(mut command: Command, netns: &NetNs, cgroup: Option<&Path>) -> anyhow::Result<Self> {
        let what = format!("{:?} in {}", command.get_program(), netns.name());
        let netns_file = netns.open()?;
        let procs = cgroup
            .map(|dir| {
                OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .with_context(|| format!("opening {}/cgroup.procs", dir.display()))
            })
            .transpose()?;
        let netns_fd = netns_file.as_raw_fd();
        let procs_fd = procs.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: the closure runs between fork and exec and only makes two raw syscalls on fds
        // opened before the fork (no allocation, no locks).
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = procs_fd {
                    // Writing "0" moves the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self { child, what })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's stdout (it must have been `Stdio::piped()`).
    pub fn stdout(&mut self) -> anyhow::Result<ChildStdout> {
        self.child.stdout.take().with_context(|| format!("{}: stdout not piped or already taken", self.what))
    }

    /// Waits for the process to exit, at most `timeout`, and returns its whole stdout and
    /// whether it exited zero. Killed (and reported as an error) when it overruns.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<(bool, String)> {
        let mut stdout = self.child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(out) = stdout.as_mut() {
                let _ = std::io::Read::read_to_string(out, &mut text);
            }
            text
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let text = reader.join().map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
        Ok((status.success(), text))
    }

    /// Reads stdout lines until one equals `line`, at most `timeout`: how servers say they are
    /// ready. Fails if the process exits or says something else first.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        let stdout = self.stdout()?;
        let expected = line.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let result = BufReader::new(stdout).read_line(&mut first).map(|_| first);
            let _ = tx.send(result);
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(got)) if got.trim_end() == expected => Ok(()),
            Ok(Ok(got)) => bail!("{}: expected {expected:?}, got {got:?}", self.what),
            Ok(Err(error)) => Err(error).with_context(|| format!("{}: reading stdout", self.what)),
            Err(_) => bail!("{}: no {expected:?} within {timeout:?}", self.what),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a cgroup directory (and its parents).
pub fn create_cgroup(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// Kills every process left in the cgroup tree at `dir` and removes its directories, deepest
/// first. Waits (bounded) for killed processes to leave, since a cgroup with members cannot go.
pub fn remove_cgroup_tree(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    let procs = dir.join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let members = std::fs::read_to_string(&procs).unwrap_or_default();
        if members.trim().is_empty() {
            break;
        }
        for pid in members.lines().filter_map(|pid| pid.trim().parse::<i32>().ok()) {
            // SAFETY: kill has no memory preconditions; the pid was read from this cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if Instant::now() >= deadline {
            bail!("processes still in {} after SIGKILL: {}", dir.display(), members.trim());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing cgroup {}", dir.display()))
}

/// The cgroup v2 hierarchy's mount point: `/sys/fs/cgroup/unified` on hybrid hosts, or
/// `/sys/fs/cgroup`.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let at = fields.next()?;
            (fields.next()? == "cgroup2").then(|| PathBuf::from(at))
        })
        .next()
        .context("no cgroup v2 hierarchy is mounted (needed for pod cgroups)")
}
