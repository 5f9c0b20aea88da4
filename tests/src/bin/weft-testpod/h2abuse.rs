//! `h2-abuse`: an HTTP/2 client (cleartext, prior knowledge) that misbehaves as attackers do, to
//! show that the server it reaches cuts it off: `rapid-reset` opens streams and cancels each at
//! once (CVE-2023-44487); `paced-reset` does the same 10 ms later, once the server has
//! taken each request in (and is waiting for the body it announced); `continuation` sends one header block that never ends (the 2024
//! CONTINUATION flood). Prints `sent=<bytes> streams=<n>`, then `cut-off by <how>` once the
//! server said GOAWAY or closed the connection, or `never-cut-off` if it had not 10 s after the
//! client spent its budget (or could write no more).
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::Duration,
};

use anyhow::Context;
use weft_tests::h2_frames as raw;

/// Streams a rapid-reset client opens and cancels at most.
const RESET_STREAMS: u32 = 5000;
/// Streams a paced-reset client opens and cancels at most, and how long it waits in between.
const PACED_STREAMS: u32 = 400;
const PACE: Duration = Duration::from_millis(10);
/// Bytes of never-ending header block a CONTINUATION flood sends at most.
const FLOOD_BYTES: usize = 64 << 20;
/// How long the server may take to cut the client off once it stopped.
const VERDICT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    RapidReset,
    PacedReset,
    Continuation,
}

pub fn run(to: SocketAddr, kind: Kind) -> anyhow::Result<()> {
    let mut writer = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connecting to {to}"))?;
    writer.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = writer.try_clone()?;
    let (cut_off, verdict) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = cut_off.send(watch(&mut reader));
    });
    writer.write_all(raw::PREFACE)?;
    writer.write_all(&raw::frame(raw::SETTINGS, 0, 0, &[]))?;
    let authority = to.to_string();
    let (mut sent, mut streams) = (0usize, 0u32);
    loop {
        let bytes = match kind {
            Kind::RapidReset if streams < RESET_STREAMS => {
                let id = 2 * streams + 1;
                let headers = raw::get(&authority, "/abuse");
                [raw::frame(raw::HEADERS, raw::END_HEADERS | raw::END_STREAM, id, &headers), raw::cancel(id)]
                    .concat()
            }
            Kind::PacedReset if streams < PACED_STREAMS => {
                let id = 2 * streams + 1;
                let headers = [raw::get(&authority, "/abuse"), raw::literal("content-length", "16")].concat();
                if writer.write_all(&raw::frame(raw::HEADERS, raw::END_HEADERS, id, &headers)).is_err() {
                    break;
                }
                std::thread::sleep(PACE);
                raw::cancel(id)
            }
            Kind::Continuation if sent == 0 => {
                raw::frame(raw::HEADERS, 0, 1, &raw::get(&authority, "/abuse"))
            }
            // New header names, under the default 16 KiB frame limit: a frame too large
            // would be refused for that, and prove nothing.
            Kind::Continuation if sent < FLOOD_BYTES => {
                let block: Vec<u8> =
                    (0..60).flat_map(|i| raw::literal(&format!("x-{sent}-{i}"), &"v".repeat(240))).collect();
                raw::frame(raw::CONTINUATION, 0, 1, &block)
            }
            _ => break,
        };
        if writer.write_all(&bytes).is_err() {
            break;
        }
        sent += bytes.len();
        streams += u32::from(matches!(kind, Kind::RapidReset | Kind::PacedReset));
    }
    println!("sent={sent} streams={streams}");
    match verdict.recv_timeout(VERDICT_WAIT) {
        Ok(how) => println!("cut-off by {how}"),
        Err(_) => println!("never-cut-off"),
    }
    Ok(())
}

/// Reads the server's frames until it says GOAWAY or the connection ends; says which.
fn watch(reader: &mut TcpStream) -> String {
    let mut head = [0u8; 9];
    loop {
        if let Err(error) = reader.read_exact(&mut head) {
            return match error.kind() {
                ErrorKind::UnexpectedEof => "close".into(),
                _ => format!("error ({error})"),
            };
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if let Err(error) = reader.read_exact(&mut payload) {
            return format!("a frame cut short ({error})");
        }
        if head[3] == raw::GOAWAY {
            let code =
                payload.get(4..8).map_or(0, |code| u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
            return format!("goaway code={code:#x}");
        }
    }
}
