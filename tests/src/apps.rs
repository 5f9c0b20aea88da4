//! Programs run as a pod's (or a node's) processes: the test app `weft-testpod` (echo server,
//! clients, the stand-in proxy) and the agent.
use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    process::{ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    process::Process,
    topology::{Node, Pod},
};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// A workspace binary (`weft-testpod`, `weft-agent`, …) built next to the running test or demo
/// (`target/<profile>/`; tests run from its `deps/`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.exists())
        .with_context(|| {
            format!("{name} not found near {}: run `cargo build --workspace --bins`", exe.display())
        })
}

fn testpod(args: &[&str]) -> anyhow::Result<Command> {
    let mut command = Command::new(binary("weft-testpod")?);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
    Ok(command)
}

/// Starts an echo server on `port` in `pod` and returns once it listens.
pub fn echo_server(pod: &Pod, port: u16) -> anyhow::Result<Process> {
    start_echo(pod, port, &[])
}

/// `count` connections from `pod` to `to`, each echoed once and then held open until the
/// returned process is stopped (or its stdin closed); returns once all are held.
pub fn hold(pod: &Pod, to: SocketAddr, count: usize, timeout: Duration) -> anyhow::Result<Process> {
    let mut command = testpod(&["hold", "--count", &count.to_string(), "--to", &to.to_string()])?;
    command.stdin(Stdio::piped());
    let mut holder = pod.spawn(command)?;
    holder
        .wait_for(|line| line.starts_with("held="), timeout)
        .with_context(|| format!("holding {count} connections from {} to {to}", pod.name))?;
    Ok(holder)
}

/// Steady traffic from `pod` to `to` (`weft-testpod steady`): a round trip of `message` on a
/// new connection every `interval`, each failure printed as it happens, until the returned
/// process's stdin closes; returns once it runs.
pub fn steady(pod: &Pod, to: SocketAddr, message: &str, interval: Duration) -> anyhow::Result<Process> {
    let interval = interval.as_millis().to_string();
    let mut command =
        testpod(&["steady", "--to", &to.to_string(), "--message", message, "--interval-ms", &interval])?;
    command.stdin(Stdio::piped());
    let mut steady = pod.spawn(command)?;
    steady
        .wait_for_line("ready", READY_TIMEOUT)
        .with_context(|| format!("steady traffic from {}", pod.name))?;
    Ok(steady)
}

/// [`echo_server`] that prints `peer=<address>` for each connection, as the app sees its client.
pub fn echo_server_reporting_peers(pod: &Pod, port: u16) -> anyhow::Result<Process> {
    start_echo(pod, port, &["--report-peers"])
}

fn start_echo(pod: &Pod, port: u16, flags: &[&str]) -> anyhow::Result<Process> {
    let mut command = testpod(&["echo", "--port", &port.to_string()])?;
    command.args(flags);
    let mut server = pod.spawn(command)?;
    server
        .wait_for_line("ready", READY_TIMEOUT)
        .with_context(|| format!("echo server in pod {}", pod.name))?;
    Ok(server)
}

/// Starts `weft-testpod http-echo` on `port` in `pod`, answering as `name`; returns once it
/// listens.
pub fn http_echo(pod: &Pod, port: u16, name: &str) -> anyhow::Result<Process> {
    let mut server = pod.spawn(testpod(&["http-echo", "--port", &port.to_string(), "--name", name])?)?;
    server
        .wait_for_line("ready", READY_TIMEOUT)
        .with_context(|| format!("HTTP echo server in pod {}", pod.name))?;
    Ok(server)
}

/// Starts `weft-testpod grpc-echo` in `pod` on `port`, answering as `name`.
pub fn grpc_echo(pod: &Pod, port: u16, name: &str) -> anyhow::Result<Process> {
    let mut server = pod.spawn(testpod(&["grpc-echo", "--port", &port.to_string(), "--name", name])?)?;
    server
        .wait_for_line("ready", READY_TIMEOUT)
        .with_context(|| format!("gRPC echo server in pod {}", pod.name))?;
    Ok(server)
}

/// `count` unary gRPC calls with `text` from `pod` to `to` over one connection: `weft-testpod
/// grpc-call`'s tally (`<count> ok server=<name>` or `<count> code=<code>` per distinct answer).
pub fn grpc_calls(pod: &Pod, to: SocketAddr, text: &str, count: usize) -> anyhow::Result<String> {
    grpc_call(pod, to, &["--text", text, "--count", &count.to_string()])
}

/// One bidirectional gRPC stream of `count` messages from `pod` to `to`, each sent once the
/// one before was answered: `chat: <count> answered in order by <servers>`.
pub fn grpc_chat(pod: &Pod, to: SocketAddr, count: usize) -> anyhow::Result<String> {
    grpc_call(pod, to, &["--chat", "--count", &count.to_string()])
}

/// `weft-testpod grpc-call --to <to> <flags>` in `pod`: its output, or an error if it failed.
fn grpc_call(pod: &Pod, to: SocketAddr, flags: &[&str]) -> anyhow::Result<String> {
    let command = testpod(&[&["grpc-call", "--to", &to.to_string()], flags].concat())?;
    let (ok, out) = pod.spawn(command)?.finish(Duration::from_secs(60))?;
    anyhow::ensure!(ok, "grpc-call {flags:?} from {} to {to} failed: {out}", pod.name);
    Ok(out)
}

/// `count` GETs of `path` from `pod` to `to` over one connection, with `headers`
/// (`name:value`): `weft-testpod http-get`'s tally of the answers (`<count> status=<status>
/// <first body line>` per distinct answer), the first answer's body (`body: ` lines) and the
/// time from the first request to the last answer (`took_us=<µs>`).
pub fn http_requests(
    pod: &Pod,
    to: SocketAddr,
    path: &str,
    headers: &[&str],
    count: usize,
) -> anyhow::Result<String> {
    let (ok, out) = http_requests_started(pod, to, path, headers, count)?.finish(Duration::from_secs(120))?;
    anyhow::ensure!(ok, "http-get from {} to {to}{path} failed: {out}", pod.name);
    Ok(out)
}

/// Sends `request` from `pod` to `to` byte for byte (`\r`, `\n` written as escapes) and
/// returns the whole answer.
pub fn http_raw(pod: &Pod, to: SocketAddr, request: &str) -> anyhow::Result<String> {
    let command = testpod(&["http-raw", "--to", &to.to_string(), "--request", request])?;
    let (ok, out) = pod.spawn(command)?.finish(SEND_TIMEOUT)?;
    anyhow::ensure!(ok, "http-raw from {} to {to} failed: {out}", pod.name);
    Ok(out)
}

/// Abuses HTTP/2 at `to` as `kind` says (`rapid-reset` or `continuation`); returns what the
/// client saw: `sent=<bytes> streams=<n>`, then `cut-off by <how>` or `never-cut-off`.
pub fn h2_abuse(pod: &Pod, to: SocketAddr, kind: &str) -> anyhow::Result<String> {
    let command = testpod(&["h2-abuse", "--to", &to.to_string(), "--kind", kind])?;
    // Its budget, the writes it may wait for, and the 10 s it gives the server to cut it off.
    let (ok, out) = pod.spawn(command)?.finish(Duration::from_secs(60))?;
    anyhow::ensure!(ok, "h2-abuse from {} to {to} failed: {out}", pod.name);
    Ok(out)
}

/// [`http_requests`], started: the process's output is the same once it finishes.
pub fn http_requests_started(
    pod: &Pod,
    to: SocketAddr,
    path: &str,
    headers: &[&str],
    count: usize,
) -> anyhow::Result<Process> {
    let mut command =
        testpod(&["http-get", "--to", &to.to_string(), "--path", path, "--count", &count.to_string()])?;
    for header in headers {
        command.args(["--header", header]);
    }
    pod.spawn(command)
}

/// What a one-shot client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Connected; the peer `getpeername()` reported, and the echoed reply.
    Reply { peer: SocketAddr, reply: String },
    /// `connect()` failed with this errno.
    ConnectError(i32),
}

/// Whether a message from `pod` to `to` comes back.
pub fn reaches(pod: &Pod, to: SocketAddr) -> bool {
    matches!(try_send(pod, to, "ping"), Ok(Sent::Reply { reply, .. }) if reply == "ping")
}

/// Sends `message` from `pod` to `to` and reports what happened.
pub fn try_send(pod: &Pod, to: SocketAddr, message: &str) -> anyhow::Result<Sent> {
    try_send_with(pod, to, message, &[])
}

/// [`try_send`] with extra `weft-testpod send` flags (e.g. `--mark 1337`).
pub fn try_send_with(pod: &Pod, to: SocketAddr, message: &str, flags: &[&str]) -> anyhow::Result<Sent> {
    let mut command = testpod(&["send", "--print-peer", "--to", &to.to_string(), "--message", message])?;
    command.args(flags);
    sent(pod.spawn(command)?, &pod.name, to)
}

/// What a `weft-testpod send` in `process` (run by `who`) saw.
fn sent(process: Process, who: &str, to: SocketAddr) -> anyhow::Result<Sent> {
    let (ok, out) = process.finish(SEND_TIMEOUT)?;
    if let Some(errno) = out.trim().strip_prefix("connect-error=") {
        return Ok(Sent::ConnectError(errno.parse()?));
    }
    let Some((peer_line, reply)) = out.split_once('\n') else {
        bail!("client {who} sending to {to}: unexpected output {out:?}");
    };
    let peer = peer_line.strip_prefix("peer=").context("no peer line")?.parse()?;
    if !ok {
        bail!("client {who} sending to {to} failed after connecting (got {reply:?})");
    }
    Ok(Sent::Reply { peer, reply: reply.to_owned() })
}

/// Sends `message` to `to` from `node` itself, as the kubelet probes a pod, and reports what
/// happened.
pub fn try_send_from_node(node: &Node, to: SocketAddr, message: &str) -> anyhow::Result<Sent> {
    let command = testpod(&["send", "--print-peer", "--to", &to.to_string(), "--message", message])?;
    sent(node.spawn(command)?, &node.name, to)
}

/// Sends `message` from `pod` to `to` and returns the echoed reply; fails unless it was echoed.
pub fn send(pod: &Pod, to: SocketAddr, message: &str) -> anyhow::Result<String> {
    match try_send(pod, to, message)? {
        Sent::Reply { reply, .. } if reply == message => Ok(reply),
        other => bail!("client in pod {} sending to {to}: {other:?}", pod.name),
    }
}

/// GETs `path` over HTTPS from `pod` at `to`, verified as `server_name` against `ca`, and returns
/// the body; fails unless the status is 200.
pub fn https_get(
    pod: &Pod,
    to: SocketAddr,
    server_name: &str,
    ca: &std::path::Path,
    path: &str,
) -> anyhow::Result<String> {
    let mut command =
        testpod(&["https-get", "--to", &to.to_string(), "--server-name", server_name, "--path", path])?;
    command.arg("--ca").arg(ca);
    let (ok, out) = pod.spawn(command)?.finish(SEND_TIMEOUT)?;
    anyhow::ensure!(ok, "HTTPS GET {path} from pod {} to {to} failed: {out}", pod.name);
    Ok(out)
}

/// Runs `weftctl` with `flags` (e.g. [`crate::mesh::Mesh::weftctl_flags`]) then `args`:
/// whether it succeeded, and its standard output. A panic in it is an error.
pub fn weftctl(flags: &[String], args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(binary("weftctl")?).args(flags).args(args).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(!stderr.contains("panicked"), "weftctl panicked: {stderr}");
    Ok((output.status.success(), String::from_utf8(output.stdout)?))
}

/// A long-lived connection from a pod: each [`Chat::say`] sends a line and returns its echo.
#[derive(Debug)]
pub struct Chat {
    process: Process,
    stdin: ChildStdin,
}

impl Chat {
    /// Connects from `pod` to `to` and keeps the connection open.
    pub fn open(pod: &Pod, to: SocketAddr) -> anyhow::Result<Self> {
        let mut command = testpod(&["chat", "--to", &to.to_string()])?;
        command.stdin(Stdio::piped());
        Self::connected(pod.spawn(command)?).with_context(|| format!("chat from pod {} to {to}", pod.name))
    }

    /// Opens one keep-alive HTTP/1.1 connection from `pod` to `to` and keeps it open: each
    /// [`Chat::say`] is a path to GET on it, answered `status=<status> <first body line>`.
    pub fn http(pod: &Pod, to: SocketAddr) -> anyhow::Result<Self> {
        let mut command = testpod(&["http-session", "--to", &to.to_string()])?;
        command.stdin(Stdio::piped());
        Self::connected(pod.spawn(command)?)
            .with_context(|| format!("HTTP session from pod {} to {to}", pod.name))
    }

    /// Runs `command`, a `weft-testpod chat` wherever it runs (e.g. `kubectl exec -i` into a
    /// real pod), once it says it connected.
    pub fn run(mut command: Command) -> anyhow::Result<Self> {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        Self::connected(Process::start(command)?)
    }

    fn connected(mut process: Process) -> anyhow::Result<Self> {
        let stdin = process.take_stdin()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let first = process.lines()?.next_before(deadline)?.unwrap_or_default();
        if !first.starts_with("connected ") {
            bail!("did not connect: {first:?}");
        }
        Ok(Self { process, stdin })
    }

    /// Sends `line` over the connection and returns what came back.
    pub fn say(&mut self, line: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        let deadline = Instant::now() + SEND_TIMEOUT;
        let echo = self.process.lines()?.next_before(deadline)?.context("chat ended")?;
        Ok(echo.trim_end().to_owned())
    }
}

/// The stand-in proxy running in a pod, and the connections it has reported so far.
#[derive(Debug)]
pub struct Standin {
    process: Process,
    seen: Vec<Accepted>,
}

impl Standin {
    /// Starts the stand-in in `pod` (its netns, the node's proxy cgroup) and returns once it
    /// listens. Like any proxy it writes nothing of the datapath's: the pod's enrollment must
    /// come first, so that its listen registers it.
    pub fn start(node: &Node, pod: &Pod) -> anyhow::Result<Self> {
        Self::start_in(pod, &node.proxy_cgroup)
    }

    /// An impostor: the same proxy started as an app of `pod`, in the pod's own cgroup. It
    /// marks its sockets and joins the proxy's listeners' `SO_REUSEPORT` groups, as an app
    /// running as the proxy's user could.
    pub fn impostor(pod: &Pod) -> anyhow::Result<Self> {
        Self::start_in(pod, &pod.cgroup)
    }

    fn start_in(pod: &Pod, cgroup: &std::path::Path) -> anyhow::Result<Self> {
        let command = testpod(&["standin"])?;
        let mut process = Process::spawn(command, &pod.netns, Some(cgroup))?;
        process
            .wait_for_line("ready", READY_TIMEOUT)
            .with_context(|| format!("stand-in proxy in pod {}", pod.name))?;
        Ok(Self { process, seen: Vec::new() })
    }

    /// Waits until at least `count` connections have been reported (bounded by `timeout`) and
    /// returns all reported so far. Reports arrive in the order the stand-in accepted them.
    pub fn accepted(&mut self, count: usize, timeout: Duration) -> anyhow::Result<&[Accepted]> {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < count {
            let line = self
                .process
                .lines()?
                .next_before(deadline)
                .with_context(|| format!("stand-in reported {} of {count} connections", self.seen.len()))?
                .context("stand-in exited")?;
            self.seen.extend(Accepted::parse(&line));
        }
        Ok(&self.seen)
    }

    /// Waits for an output line satisfying `wanted` (reports included) and returns it.
    pub fn wait_for_line(
        &mut self,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.process.wait_for(wanted, timeout)
    }

    /// Stops the stand-in (its listeners close, and with them its datapath registration).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.process.kill()
    }
}

/// A stand-in's report of one accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub listener: u16,
    pub peer: SocketAddr,
    pub orig: SocketAddr,
}

impl Accepted {
    /// Parses `accepted listener=P peer=A orig=A`; other lines are `None`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields = line.trim().strip_prefix("accepted ")?.split(' ');
        let mut value = |key: &str| fields.next()?.strip_prefix(key)?.strip_prefix('=');
        Some(Self {
            listener: value("listener")?.parse().ok()?,
            peer: value("peer")?.parse().ok()?,
            orig: value("orig")?.parse().ok()?,
        })
    }
}

/// `weft-agent <subcommand>` (`run`, or `static` without Kubernetes) for `node`: its bpffs
/// root, pod cgroup, and its own processes' cgroup and network namespace. No proxy cgroup, as
/// in the shipped manifests: a ztunnel is trusted by the cgroup the agent learns from its
/// handoff connection.
pub fn agent_command(node: &Node, subcommand: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(binary("weft-agent")?);
    command
        .arg("--bpffs-root")
        .arg(&node.bpffs_root)
        .arg(subcommand)
        .arg("--cgroup")
        .arg(&node.cgroup)
        .arg("--node-cgroup")
        .arg(&node.system_cgroup)
        .arg("--node-netns")
        .arg(node.netns.path());
    Ok(command)
}

/// Starts an agent command in the harness's own namespace — the agent needs no node network,
/// only the API server on the harness's loopback (netns, cgroups and sockets are paths) — with
/// its log (stderr) and stdout through one pipe, readable with [`Process::wait_for`].
pub fn start_agent(mut command: Command) -> anyhow::Result<Process> {
    let output = crate::process::merged_output(&mut command)?;
    // `start` consumes the command, closing our copies of the pipe's write end.
    let mut agent = Process::start(command)?;
    agent.read_lines_from(output);
    Ok(agent)
}

/// Starts `weft-agent static` for `node`, enrolling `pods` directly in capture (no ztunnel: the
/// stand-in proxy, named by its cgroup), and returns once it says it is ready; `ebpf_debug`
/// turns on the programs' debug records.
pub fn agent(node: &Node, pods: &[&Pod], ebpf_debug: bool) -> anyhow::Result<Process> {
    let mut command = agent_command(node, "static")?;
    command.arg("--proxy-cgroup").arg(&node.proxy_cgroup);
    command.env("RUST_LOG", if ebpf_debug { "debug" } else { "info" });
    if ebpf_debug {
        command.arg("--ebpf-debug");
    }
    for pod in pods {
        let ips: Vec<String> = pod.addresses().iter().map(ToString::to_string).collect();
        command.arg("--enroll").arg(format!("{}={}", pod.netns.path().display(), ips.join(",")));
    }
    let mut agent = start_agent(command)?;
    agent.wait_for_line("ready", READY_TIMEOUT).with_context(|| format!("agent on {}", node.name))?;
    Ok(agent)
}

/// A plain HTTP GET to the node-local endpoint `127.0.0.1:port` inside `netns`: the whole
/// response, head included.
pub fn http_get(netns: &crate::netns::NetNs, port: u16, path: &str) -> anyhow::Result<String> {
    let path = path.to_owned();
    netns.run(move || http_get_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), &path))?
}

/// The JSON body of an HTTP response as [`http_get`] returns it; `Null` if it has none.
pub fn json_body(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_default()
}

/// A plain HTTP GET of `path` at `addr` from the calling thread's namespace.
pub fn http_get_at(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
