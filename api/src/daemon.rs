//! What every Weft daemon (agent, control plane, node proxy, waypoint) does the same way at
//! start and stop: log to stderr filtered by `RUST_LOG` (default `info`), in batches, and stop on
//! SIGTERM (the kubelet's) or Ctrl-C.
use std::{
    io::Write,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

/// How long a log line may wait to be written.
const LOG_FLUSH: Duration = Duration::from_millis(50);

/// Lines waiting beyond this many bytes are written at once.
const LOG_BATCH: usize = 64 * 1024;

/// The lines not yet written to stderr.
static WAITING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Events of a target ending so are access-log lines, written in batches.
pub const ACCESS_LOG: &str = "::access";

/// Installs the log subscriber: stderr, colours only on a terminal, `RUST_LOG` or `info`.
///
/// Access-log lines (a target ending in [`ACCESS_LOG`]) are written in batches, at most
/// [`LOG_FLUSH`] after they were logged, not with a write(2) each: a proxy logs one per request,
/// and each write, which wakes whatever reads the daemon's stderr, cost more than formatting
/// the line (about 5 % of a waypoint's CPU per request). Any other line is written at once,
/// with the access-log lines before it, as is everything at a panic and when the returned guard
/// goes at the daemon's end; so lines keep their order, and only access-log lines of the last
/// moment are lost when the process is killed.
#[must_use = "the guard writes the last lines when it goes"]
pub fn init_logging() -> Logging {
    tracing_subscriber::fmt()
        .with_writer(Batches)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let panicked = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush(&mut waiting());
        panicked(info);
    }));
    std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(|| {
            loop {
                std::thread::sleep(LOG_FLUSH);
                flush(&mut waiting());
            }
        })
        .expect("invariant: a thread can be started at a daemon's start");
    Logging
}

/// Writes the lines still waiting when it goes.
#[derive(Debug)]
pub struct Logging;

impl Drop for Logging {
    fn drop(&mut self) {
        flush(&mut waiting());
    }
}

/// Makes each line's writer.
struct Batches;

impl tracing_subscriber::fmt::MakeWriter<'_> for Batches {
    type Writer = Batch;

    fn make_writer(&self) -> Batch {
        Batch { urgent: true }
    }

    fn make_writer_for(&self, metadata: &tracing::Metadata<'_>) -> Batch {
        Batch { urgent: !metadata.target().ends_with(ACCESS_LOG) }
    }
}

/// One log line's writer: it joins the lines waiting, and writes them all out unless it is an
/// access-log line and they are few.
struct Batch {
    urgent: bool,
}

impl Write for Batch {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut waiting = waiting();
        waiting.extend_from_slice(line);
        if self.urgent || waiting.len() >= LOG_BATCH {
            flush(&mut waiting);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn waiting() -> MutexGuard<'static, Vec<u8>> {
    WAITING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `waiting` out under its lock, so that lines keep their order; a line that cannot be
/// written is lost, as an unbuffered one would be.
fn flush(waiting: &mut Vec<u8>) {
    if !waiting.is_empty() {
        let _ = std::io::stderr().lock().write_all(waiting);
        waiting.clear();
        // A burst's buffer is not kept for good.
        waiting.shrink_to(LOG_BATCH);
    }
}

/// Resolves at the first SIGTERM or Ctrl-C. The SIGTERM handler is installed now, inside the
/// runtime, so a signal that comes before the future is polled is not lost.
pub fn termination() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
}
