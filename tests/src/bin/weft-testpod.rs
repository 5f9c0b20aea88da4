//! `weft-testpod`: the small app that test pods run. `echo` serves TCP and echoes every byte
//! back; `send` connects, sends a message, half-closes, and prints what came back. The harness
//! starts it inside a pod's netns and cgroup, so the datapath treats it as a pod's process.
use std::{
    io::{Read, Write},
    net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

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
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Echo { port } => echo(port),
        Mode::Send { to, message, timeout_ms } => send(to, &message, Duration::from_millis(timeout_ms)),
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
            let mut reader = match stream.try_clone() {
                Ok(reader) => reader,
                Err(_) => return,
            };
            let _ = std::io::copy(&mut reader, &mut stream);
            let _ = stream.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

fn send(to: SocketAddr, message: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut stream =
        TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(message.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).context("reading the reply")?;
    print!("{reply}");
    if reply != message {
        bail!("reply differs from the message ({} bytes back, {} sent)", reply.len(), message.len());
    }
    Ok(())
}
