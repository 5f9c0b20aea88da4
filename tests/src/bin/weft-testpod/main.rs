//! `weft-testpod`: the small app that test pods run. `echo` serves TCP and echoes every byte
//! back; `send` connects, sends a message, half-closes, and prints what came back; `probe`
//! repeats that at a fixed rate and reports counts; `https-get` is an HTTPS client (`https.rs`);
//! `http-echo` and `http-get` speak HTTP/1.1 for the waypoint's tests (`http.rs`), `h2-abuse`
//! misbehaves in HTTP/2 (`h2abuse.rs`), `grpc-echo`
//! and `grpc-call` gRPC (`grpc.rs`);
//! `latency`, `openloop`, `connrate` and `hold` are the benchmark's clients; `standin` plays the
//! node proxy (see `standin.rs`). The harness starts it inside a pod's netns and cgroup, so the
//! datapath treats it as a pod's process.
use std::{
    io::{Read, Write},
    net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod grpc;
mod h2abuse;
mod http;
mod https;
mod standin;
mod steady;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Echo server on every address (IPv4 and IPv6) of the pod; prints `ready` once listening.
    Echo {
        #[arg(long)]
        port: u16,
        /// Print `peer=<address>` for each connection, as `getpeername()` reports it.
        #[arg(long)]
        report_peers: bool,
    },
    /// Send `message` to `to`, half-close, print the reply; exit 1 unless the reply equals it.
    Send {
        /// `ip:port`, or `name:port` resolved as the pod resolves names (cluster DNS).
        #[arg(long, value_parser = resolve)]
        to: SocketAddr,
        #[arg(long)]
        message: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// First print `peer=<address>` as `getpeername()` reports it.
        #[arg(long)]
        print_peer: bool,
        /// Set this SO_MARK on the socket before connecting (to impersonate the proxy).
        #[arg(long)]
        mark: Option<u32>,
        /// Bind the socket to this interface (SO_BINDTODEVICE) before connecting.
        #[arg(long)]
        bind_device: Option<String>,
    },
    /// `count` request/response round trips to `to`, one every `interval_us`; prints
    /// `probes=N ok=N failed=N` and exits 1 if any failed.
    Probe {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
    },
    /// A round trip of `message` and a sequence number on a new connection every `interval_ms`
    /// until stdin closes; prints each failure as it happens, with its start, and the counts.
    Steady {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        message: String,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
    /// `count` round trips of `size` bytes over one connection; prints latency percentiles.
    Latency {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Requests of `size` bytes at a fixed `rate` for `seconds` over one connection, each timed
    /// from when it was due (open loop: a slow reply never delays later requests, so queueing
    /// shows in the figures); prints `requests=N p50_us= p90_us= p99_us= p999_us=`.
    Openloop {
        #[arg(long)]
        to: SocketAddr,
        #[command(flatten)]
        load: Load,
    },
    /// POSTs of `size` bytes to `path` at a fixed `rate` for `seconds`, pipelined on one
    /// HTTP/1.1 connection, timed as `openloop` times them; prints the same figures.
    HttpOpenloop {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "/bytes/1024")]
        path: String,
        /// A request header, `name:value`; repeated for more.
        #[arg(long = "header")]
        headers: Vec<String>,
        #[command(flatten)]
        load: Load,
    },
    /// Opens `count` connections, one round trip on each, prints `held=N`, and keeps them open
    /// until stdin closes.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// `count` connections, each exchanging one byte, by `clients` threads each opening its
    /// share one after another; prints connections/s.
    Connrate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 1)]
        clients: u32,
    },
    /// GET `path` over HTTPS from `to`, verified as `server_name` against `ca`; print the body,
    /// exit 1 unless the status is 200.
    HttpsGet {
        #[arg(long, value_parser = resolve)]
        to: SocketAddr,
        #[arg(long)]
        server_name: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        path: String,
    },
    /// HTTP/1.1 server on `port` answering who it is (`name`) and what it saw; prints `ready`.
    HttpEcho {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// `count` HTTP/1.1 GETs of `path` at `to` over one connection, with `header`s
    /// (`name:value`); prints a tally of the answers and the first answer's body.
    HttpGet {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        path: String,
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// An HTTP/2 client at `to` that abuses the protocol as `kind` says (`h2abuse.rs`); prints
    /// whether the server cut it off.
    H2Abuse {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum)]
        kind: h2abuse::Kind,
    },
    /// One keep-alive HTTP/1.1 connection to `to`, a GET for each path read from stdin
    /// (`http.rs`).
    HttpSession {
        #[arg(long)]
        to: SocketAddr,
    },
    /// Send `request` to `to` as written (`\r` and `\n` as escapes), print the answer.
    HttpRaw {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        request: String,
    },
    /// gRPC server of `weft.test.Echo` on `port`, answering as `name`; prints `ready`.
    GrpcEcho {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// `count` unary gRPC calls with `text` to `to`, or with `--chat` one bidirectional stream of
    /// `count` messages; prints what answered.
    GrpcCall {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "hello")]
        text: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long)]
        chat: bool,
    },
    /// Connect to `to` and keep the connection: send each stdin line, print its echo.
    Chat {
        /// `ip:port` or `name:port`.
        #[arg(long)]
        to: String,
    },
    /// Play the node proxy in this pod: transparent listeners on 15001 and 15006, relaying in
    /// plaintext to each connection's original destination.
    Standin,
}

fn main() -> anyhow::Result<()> {
    // The benchmark's pods hold thousands of connections.
    weft_ztunnel::rlimit::raise_open_files().context("raising the open file limit")?;
    match Args::parse().mode {
        Mode::Echo { port, report_peers } => echo(port, report_peers),
        Mode::Send { to, message, timeout_ms, print_peer, mark, bind_device } => {
            let timeout = Duration::from_millis(timeout_ms);
            let stream = match connect(to, timeout, mark, bind_device.as_deref()) {
                Ok(stream) => stream,
                Err(error) => {
                    // For the harness: which errno, not just that it failed.
                    println!("connect-error={}", error.raw_os_error().unwrap_or(0));
                    bail!("connecting to {to}: {error}");
                }
            };
            let (peer, reply) = exchange(stream, &message, timeout)?;
            if print_peer {
                println!("peer={peer}");
            }
            print!("{reply}");
            if reply != message {
                bail!("reply differs from the message ({} bytes back, {} sent)", reply.len(), message.len());
            }
            Ok(())
        }
        Mode::Probe { to, count, interval_us } => probe(to, count, Duration::from_micros(interval_us)),
        Mode::Steady { to, message, interval_ms } => {
            steady::run(to, &message, Duration::from_millis(interval_ms))
        }
        Mode::Chat { to } => chat(resolve(&to)?),
        Mode::HttpsGet { to, server_name, ca, path } => https::get(to, &server_name, &ca, &path),
        Mode::Latency { to, count, size } => latency(to, count, size),
        Mode::Connrate { to, count, clients } => connrate(to, count, clients),
        Mode::Openloop { to, load } => openloop(to, &load),
        Mode::Hold { to, count } => hold(to, count),
        Mode::Standin => standin::run(),
        Mode::HttpEcho { port, name } => http::echo(port, &name),
        Mode::HttpGet { to, path, header, count } => http::get(to, &path, &header, count),
        Mode::HttpRaw { to, request } => http::raw(to, &request),
        Mode::HttpSession { to } => http::session(to),
        Mode::H2Abuse { to, kind } => h2abuse::run(to, kind),
        Mode::HttpOpenloop { to, path, headers, load } => http::openloop(to, &path, &headers, &load),
        Mode::GrpcEcho { port, name } => grpc::echo(port, &name),
        Mode::GrpcCall { to, text, count, chat } => {
            if chat {
                grpc::chat(to, count)
            } else {
                grpc::unary(to, &text, count)
            }
        }
    }
}

fn echo(port: u16, report_peers: bool) -> anyhow::Result<()> {
    // Dual-stack: [::] also accepts IPv4 (as mapped addresses) on Linux by default.
    let listener =
        TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).with_context(|| format!("binding port {port}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if report_peers && let Ok(peer) = stream.peer_addr() {
            println!("peer={}", SocketAddr::new(peer.ip().to_canonical(), peer.port()));
            std::io::stdout().flush()?;
        }
        // Small stacks: the benchmark holds ten thousand connections, a thread each.
        let _ = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            // Both directions through shared references: one descriptor per connection.
            let (mut reader, mut writer) = (&stream, &stream);
            let _ = std::io::copy(&mut reader, &mut writer);
            let _ = stream.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

/// Connects to `to`, with `mark` as the socket's SO_MARK and bound to `device`, if given.
fn connect(
    to: SocketAddr,
    timeout: Duration,
    mark: Option<u32>,
    device: Option<&str>,
) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    if let Some(device) = device {
        socket.bind_device(Some(device.as_bytes()))?;
    }
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

/// Connects, sends `message`, half-closes and reads the whole reply.
fn round_trip(to: SocketAddr, message: &str, timeout: Duration) -> anyhow::Result<(SocketAddr, String)> {
    let stream = TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))?;
    exchange(stream, message, timeout)
}

/// Sends `message`, half-closes and reads the whole reply. Returns the peer as `getpeername()`
/// reports it, and the reply.
fn exchange(mut stream: TcpStream, message: &str, timeout: Duration) -> anyhow::Result<(SocketAddr, String)> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(message.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).context("reading the reply")?;
    Ok((peer, reply))
}

fn latency(to: SocketAddr, count: usize, size: usize) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    let (request, mut reply) = (vec![0x5a; size], vec![0; size]);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut reply)?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6;
    println!("p50_us={:.1} p99_us={:.1}", at(0.50), at(0.99));
    Ok(())
}

/// An open-loop load: `rate` requests a second of `size` bytes, for `seconds`.
#[derive(Debug, clap::Args)]
struct Load {
    #[arg(long)]
    rate: u32,
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

/// When the requests of an open-loop run are due: `count` of them, `rate` a second, from 10 ms
/// after it was made.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    count: u32,
    start: Instant,
    period: Duration,
}

impl Schedule {
    fn new(load: &Load) -> Self {
        Self {
            count: (f64::from(load.rate) * load.seconds) as u32,
            start: Instant::now() + Duration::from_millis(10),
            period: Duration::from_secs(1) / load.rate.max(1),
        }
    }

    fn due(&self, n: u32) -> Instant {
        self.start + self.period * n
    }

    /// Calls `send(n)` for each request when it is due.
    fn pace(&self, mut send: impl FnMut(u32) -> std::io::Result<()>) -> std::io::Result<()> {
        // Wake on time (the default slack of 50 µs would add to every figure).
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and touches no memory.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
        for n in 0..self.count {
            // Pacing, not synchronisation: each request leaves when it is due.
            if let Some(wait) = self.due(n).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send(n)?;
        }
        Ok(())
    }
}

/// `p50_us= p90_us= p99_us= p999_us=` of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> anyhow::Result<String> {
    anyhow::ensure!(!samples.is_empty(), "no requests: rate × seconds < 1");
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6;
    Ok(format!(
        "p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1}",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999)
    ))
}

fn openloop(to: SocketAddr, load: &Load) -> anyhow::Result<()> {
    let stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = stream.try_clone()?;
    let (schedule, size) = (Schedule::new(load), load.size);
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, request) = (stream, vec![0x5a; size]);
        schedule.pace(|_| stream.write_all(&request))
    });
    let mut reply = vec![0; size];
    let mut samples = Vec::with_capacity(schedule.count as usize);
    for n in 0..schedule.count {
        reader.read_exact(&mut reply).with_context(|| format!("reading reply {n} of {}", schedule.count))?;
        samples.push(Instant::now().saturating_duration_since(schedule.due(n)));
    }
    writer.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    println!("requests={} {}", schedule.count, percentiles(samples)?);
    Ok(())
}

fn hold(to: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(count);
    for n in 0..count {
        let mut stream = TcpStream::connect(to).with_context(|| format!("connection {n} to {to}"))?;
        stream.write_all(b"x")?;
        stream.read_exact(&mut [0u8; 1]).with_context(|| format!("echo on connection {n}"))?;
        held.push(stream);
    }
    println!("held={}", held.len());
    std::io::stdout().flush()?;
    // Until the harness closes stdin.
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

fn connrate(to: SocketAddr, count: u32, clients: u32) -> anyhow::Result<()> {
    let clients = clients.clamp(1, count.max(1));
    let one_after_another = move |share: u32| -> anyhow::Result<()> {
        for _ in 0..share {
            let mut stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
            stream.write_all(b"x")?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte)?;
        }
        Ok(())
    };
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|n| {
            let share = count / clients + u32::from(n < count % clients);
            std::thread::spawn(move || one_after_another(share))
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    println!("conns_per_sec={:.0}", f64::from(count) / start.elapsed().as_secs_f64());
    Ok(())
}

fn chat(to: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    println!("connected peer={}", stream.peer_addr()?);
    for line in std::io::stdin().lines() {
        let line = line?;
        stream.write_all(line.as_bytes())?;
        let mut echo = vec![0; line.len()];
        stream.read_exact(&mut echo).context("reading the echo")?;
        println!("{}", String::from_utf8_lossy(&echo));
    }
    Ok(())
}

fn probe(to: SocketAddr, count: u32, interval: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    for n in 0..count {
        let message = format!("probe {n}");
        match round_trip(to, &message, Duration::from_secs(2)) {
            Ok((_, reply)) if reply == message => ok += 1,
            Ok(_) | Err(_) => failed += 1,
        }
        // Pacing, not synchronisation: hold the fixed rate.
        if let Some(wait) = (start + interval * (n + 1)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    println!("probes={count} ok={ok} failed={failed}");
    if failed > 0 {
        bail!("{failed} of {count} probes failed");
    }
    Ok(())
}

/// `text` as an address: `ip:port` as it is, else `name:port` through the system resolver (in a
/// real pod: the cluster's DNS, with the pod's search domains).
fn resolve(text: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()?.next().with_context(|| format!("{text} resolves to no address"))
}
