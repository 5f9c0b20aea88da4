//! What every Weft daemon (agent, control plane, node proxy, waypoint) does the same way at
//! start and stop: log to stderr filtered by `RUST_LOG` (default `info`), and stop on SIGTERM
//! (the kubelet's) or Ctrl-C.

/// Installs the log subscriber: stderr, colours only on a terminal, `RUST_LOG` or `info`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
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
