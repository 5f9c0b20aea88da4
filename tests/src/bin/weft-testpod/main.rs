//! `weft-testpod`: the small app that test pods run. `echo` serves TCP and echoes every byte
//! back; `send` connects, sends a message, half-closes, and prints what came back; `probe`
//! repeats that at a fixed rate and reports counts; `standin` plays the node proxy (see
//! `standin.rs`). The harness starts it inside a pod's netns and cgroup, so the datapath treats
//! it as a pod's process.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod standin;

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
    },
    /// Send `message` to `to`, half-close, print the reply; exit 1 unless the reply equals it.
    Send {
        #[arg(long)]
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
    /// `count` round trips of `size` bytes over one connection; prints latency percentiles.
    Latency {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// `count` connections one after another, each exchanging one byte; prints connections/s.
    Connrate {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
    },
    /// Connect to `to` and keep the connection: send each stdin line, print its echo.
    Chat {
        #[arg(long)]
        to: SocketAddr,
    },
    /// Play the node proxy in this pod: transparent listeners on 15001 and 15006, relaying in
    /// plaintext to each connection's original destination.
    Standin {
        #[arg(long)]
        bpffs_root: PathBuf,
        /// The pod's addresses, for inbound listener registration.
        #[arg(long = "pod-ip", required = true)]
        pod_ips: Vec<IpAddr>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Echo { port } => echo(port),
        Mode::Send { to, message, timeout_ms, print_peer, mark } => {
            let timeout = Duration::from_millis(timeout_ms);
            let stream = match connect(to, timeout, mark) {
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
        Mode::Chat { to } => chat(to),
        Mode::Latency { to, count, size } => latency(to, count, size),
        Mode::Connrate { to, count } => connrate(to, count),
        Mode::Standin { bpffs_root, pod_ips } => standin::run(&bpffs_root, &pod_ips),
    }
}

fn echo(port: u16) -> anyhow::Result<()> {
    // Dual-stack: [::] also accepts IPv4 (as mapped addresses) on Linux by default.
    let listener =
        TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).with_context(|| format!("binding port {port}"))?;
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let Ok(mut reader) = stream.try_clone() else { return };
            let _ = std::io::copy(&mut reader, &mut stream);
            let _ = stream.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

/// Connects to `to`, with `mark` as the socket's SO_MARK if given.
fn connect(to: SocketAddr, timeout: Duration, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
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

fn connrate(to: SocketAddr, count: u32) -> anyhow::Result<()> {
    let start = Instant::now();
    for _ in 0..count {
        let mut stream = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
        stream.write_all(b"x")?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
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
