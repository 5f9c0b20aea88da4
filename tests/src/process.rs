//! Processes placed the way a kubelet places a pod's: inside the pod's network namespace and its
//! cgroup v2 directory, so cgroup-attached eBPF sees them as it would in a cluster. Also the
//! cgroup directories themselves.
use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Read},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::netns::NetNs;

/// A child process that is killed (and reaped) when this value drops.
#[derive(Debug)]
pub struct Process {
    child: Child,
    what: String,
    lines: Option<Lines>,
}

/// The lines a child prints on stdout, read by a background thread as they come.
#[derive(Debug)]
pub struct Lines {
    rx: Receiver<String>,
}

impl Lines {
    /// Reads `stdout` of process `what`, every line inspected ([`crate::invariants`]) whether or
    /// not a test reads it, to its end.
    /// With `WEFT_TEST_LOGS` set to a directory, every line is also appended to a file there
    /// named after the program and its namespace (`weft-ztunnel.<netns>.log`), so a long run's
    /// logs can be read afterwards (the soak sets it).
    fn read(stdout: impl Read + Send + 'static, what: &str) -> Self {
        let (tx, rx) = mpsc::channel();
        let what = what.to_owned();
        let mut kept = log_file(&what);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        crate::invariants::inspect(&what, &line);
                        if let Some(file) = &mut kept {
                            let _ = std::io::Write::write_all(file, line.as_bytes());
                        }
                        // A test that stopped reading still has every line inspected.
                        let _ = tx.send(line);
                    }
                }
            }
        });
        Self { rx }
    }

    /// The next line (with its newline, if it had one) before `deadline`; `None` at the end of
    /// the output.
    pub fn next_before(&self, deadline: Instant) -> anyhow::Result<Option<String>> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => bail!("no output line within the deadline"),
        }
    }

    /// The lines read so far and not yet taken, without waiting for more.
    pub fn so_far(&self) -> Vec<String> {
        self.rx.try_iter().collect()
    }

    /// Every line up to the end of the output (the process must be ending), at most until
    /// `deadline`.
    pub fn rest(&self, deadline: Instant) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        while let Some(line) = self.next_before(deadline)? {
            lines.push(line);
        }
        Ok(lines)
    }
}

impl Process {
    /// Starts `command` in the harness's own namespaces (for host-side servers like etcd).
    pub fn start(mut command: Command) -> anyhow::Result<Self> {
        let what = format!("{:?}", command.get_program());
        let child = command.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self { child, what, lines: None })
    }

    /// Starts `command` inside `netns` and, when given, the cgroup directory `cgroup`; the
    /// process is in both before it executes its first instruction of `command`.
    pub fn spawn(command: Command, netns: &NetNs, cgroup: Option<&Path>) -> anyhow::Result<Self> {
        Self::spawn_in(command, netns, cgroup, None)
    }

    /// [`Process::spawn`], also in the mount namespace pinned at `mount_ns` when given (a real
    /// node's own, [`crate::nodes`]).
    pub fn spawn_in(
        mut command: Command,
        netns: &NetNs,
        cgroup: Option<&Path>,
        mount_ns: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let what = format!("{:?} in {}", command.get_program(), netns.name());
        let netns_file = netns.open()?;
        let mount_ns = mount_ns
            .map(|pin| std::fs::File::open(pin).with_context(|| format!("opening {}", pin.display())))
            .transpose()?;
        let mount_ns_fd = mount_ns.as_ref().map(AsRawFd::as_raw_fd);
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
        // SAFETY: the closure runs between fork and exec and only makes raw syscalls on fds
        // opened before the fork (no allocation, no locks).
        unsafe {
            command.pre_exec(move || {
                // The namespace first: in a pod's cgroup, a process is in the pod's namespace
                // from the start, so the agent never takes the test runner's for the pod's.
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = procs_fd {
                    // Writing "0" moves the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = mount_ns_fd
                    && libc::setns(fd, libc::CLONE_NEWNS) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self { child, what, lines: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `command` in the harness's own namespaces with `listener` passed as fd 3 and
    /// `LISTEN_FDS=1` (socket activation), e.g. a socket bound inside another namespace.
    pub fn start_with_listener(
        mut command: Command,
        listener: &std::net::TcpListener,
    ) -> anyhow::Result<Self> {
        let fd = listener.as_raw_fd();
        command.env("LISTEN_FDS", "1");
        // SAFETY: between fork and exec, only dup2 (which clears CLOEXEC on the copy).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::start(command)
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Takes the child's stdin (it must have been started with `Stdio::piped()`).
    pub fn take_stdin(&mut self) -> anyhow::Result<ChildStdin> {
        self.child.stdin.take().with_context(|| format!("{}: stdin not piped", self.what))
    }

    /// The `addr=` of the first log line containing `marker` (a daemon naming the port it got).
    pub fn logged_address(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let line = self.wait_for(|line| line.contains(marker), timeout)?;
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .with_context(|| format!("no addr= in {line:?}"))?;
        Ok(addr.parse()?)
    }

    /// Asks the process to stop (SIGTERM), as a kubelet does before the grace period ends.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) with a pid this value owns (not yet reaped) and a plain signal.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("SIGTERM to {}", self.what));
        }
        Ok(())
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The process's stdout lines (it must have been started with `Stdio::piped()`).
    pub fn lines(&mut self) -> anyhow::Result<&Lines> {
        if self.lines.is_none() {
            let stdout =
                self.child.stdout.take().with_context(|| format!("{}: stdout not piped", self.what))?;
            self.lines = Some(Lines::read(stdout, &self.what));
        }
        Ok(self.lines.as_ref().expect("invariant: set above"))
    }

    /// Reads the output from `reader` instead of the child's stdout (for a pipe that carries
    /// both its stdout and stderr).
    pub fn read_lines_from(&mut self, reader: impl Read + Send + 'static) {
        self.lines = Some(Lines::read(reader, &self.what));
    }

    /// Reads output lines until one equals `line` (how servers say they are ready), at most
    /// `timeout`; lines before it are skipped. Fails if the output ends first.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(|got| got == line, timeout).map(drop).with_context(|| format!("waiting for {line:?}"))
    }

    /// Reads output lines until one satisfies `wanted` and returns it (without its newline), at
    /// most `timeout`. Fails if the output ends first.
    pub fn wait_for(&mut self, wanted: impl Fn(&str) -> bool, timeout: Duration) -> anyhow::Result<String> {
        /// How many of the lines passed over an error shows.
        const SHOWN: usize = 12;
        let deadline = Instant::now() + timeout;
        let what = self.what.clone();
        let mut passed = std::collections::VecDeque::with_capacity(SHOWN);
        loop {
            let next = self.lines()?.next_before(deadline);
            let last = || passed.iter().map(String::as_str).collect::<Vec<_>>().join("\n  ");
            match next.with_context(|| format!("{what}: no wanted line; last lines:\n  {}", last()))? {
                Some(got) if wanted(got.trim_end()) => return Ok(got.trim_end().to_owned()),
                // Backtrace frames (indented) would push the error itself out.
                Some(got) if got.starts_with(char::is_whitespace) => {}
                Some(got) => {
                    if passed.len() == SHOWN {
                        passed.pop_front();
                    }
                    passed.push_back(got.trim_end().to_owned());
                }
                None => bail!("{what}: output ended without the wanted line; last lines:\n  {}", last()),
            }
        }
    }

    /// Waits for the process to exit, at most `timeout`, and returns the rest of its stdout
    /// and whether it exited zero. Killed (and reported as an error) when it overruns.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<(bool, String)> {
        let deadline = Instant::now() + timeout;
        let what = self.what.clone();
        let mut text = String::new();
        if self.child.stdout.is_some() || self.lines.is_some() {
            let lines = self.lines()?;
            while let Some(line) =
                lines.next_before(deadline).with_context(|| format!("{what}: still running"))?
            {
                text.push_str(&line);
            }
        }
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("{what} still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok((status.success(), text))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its daemons said that it had not read yet.
        if std::thread::panicking()
            && let Some(lines) = &self.lines
        {
            let unread = lines.rest(Instant::now() + Duration::from_secs(1)).unwrap_or_default();
            let skipped = unread.len().saturating_sub(UNREAD_SHOWN);
            for line in &unread[skipped..] {
                eprint!("[{}] {line}", self.what);
            }
        }
    }
}

/// The file in `WEFT_TEST_LOGS` that keeps the lines of process `what` (`"<path>" in <netns>`),
/// opened for appending (a restarted process continues its predecessor's file); `None` when the
/// variable is unset or the file cannot be opened.
fn log_file(what: &str) -> Option<std::fs::File> {
    let dir = PathBuf::from(std::env::var_os("WEFT_TEST_LOGS")?);
    let (program, place) = what.split_once(" in ").unwrap_or((what, "host"));
    let program = Path::new(program.trim_matches('"')).file_name()?.to_string_lossy().into_owned();
    std::fs::create_dir_all(&dir).ok()?;
    OpenOptions::new().create(true).append(true).open(dir.join(format!("{program}.{place}.log"))).ok()
}

/// Unread output lines a failing test prints per process (the last ones).
const UNREAD_SHOWN: usize = 80;

/// Points `command`'s stdout and stderr at one pipe and returns its read end, for
/// [`Process::read_lines_from`]: a daemon's log and its `ready` line in order.
pub fn merged_output(command: &mut Command) -> anyhow::Result<std::io::PipeReader> {
    let (reader, writer) = std::io::pipe()?;
    command.stdin(std::process::Stdio::null()).stdout(writer.try_clone()?).stderr(writer);
    Ok(reader)
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
    use weft_agent::cgroups;
    cgroups::cgroup2_mounts(&cgroups::mountinfo())
        .into_iter()
        .next()
        .context("no cgroup v2 hierarchy is mounted (needed for pod cgroups)")
}
