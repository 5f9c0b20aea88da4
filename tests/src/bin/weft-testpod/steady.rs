//! `steady`: the soak's traffic. One request a period, each on a new connection (so every one
//! crosses the capture, the node proxies' pools and, while they change, the certificates and
//! policies the soak churns), until standard input closes. Each request carries the soak's
//! canary and must come back whole. Every failure is printed the moment it happens with its
//! wall-clock start, so the soak can tell a failure its faults explain from one they do not.
use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use weft_tests::soak::trend::{STEP_TIMEOUT, unix_ms};

/// Sends `message`-prefixed requests to `to`, one every `interval`, until stdin closes; prints
/// `failed at_ms=<unix ms> from=<local address, or -> error=<why>` for each failure and `requests=N ok=N failed=N` at the end.
pub fn run(to: SocketAddr, message: &str, interval: Duration) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.store(true, Ordering::Relaxed);
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    let (mut ok, mut failed, mut sequence) = (0u64, 0u64, 0u64);
    let mut due = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let started = unix_ms();
        let request = format!("{message} {sequence}");
        let (from, replied) = attempt(to, &request);
        let error = match replied {
            Ok(reply) if reply == request => None,
            Ok(reply) => Some(format!("the reply had {} bytes, not the {} sent", reply.len(), request.len())),
            Err(error) => Some(format!("{error:#}")),
        };
        match error {
            None => ok += 1,
            Some(error) => {
                failed += 1;
                let from = from.map_or("-".to_owned(), |from| from.to_string());
                println!("failed at_ms={started} from={from} error={}", error.replace('\n', " "));
                std::io::stdout().flush()?;
            }
        }
        sequence += 1;
        // Pacing, not synchronisation: one request a period; after a slow one, the next at once.
        due += interval;
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => due = Instant::now(),
        }
    }
    println!("requests={sequence} ok={ok} failed={failed}");
    Ok(())
}

/// One request on a new connection to `to`: the address it came from (which the node proxy's
/// lines about it name, once connected) and the reply.
fn attempt(to: SocketAddr, request: &str) -> (Option<SocketAddr>, anyhow::Result<String>) {
    let stream = match TcpStream::connect_timeout(&to, STEP_TIMEOUT) {
        Ok(stream) => stream,
        Err(error) => return (None, Err(anyhow::Error::new(error).context(format!("connecting to {to}")))),
    };
    let from = stream.local_addr().ok();
    (from, super::exchange(stream, request, STEP_TIMEOUT).map(|(_, reply)| reply))
}
