//! The test app (`weft-testpod`) run as a pod's process: an echo server and a one-shot client.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{process::Process, topology::Pod};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// The `weft-testpod` binary, built alongside the tests and the demo (`target/<profile>/`).
pub fn testpod_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Integration tests run from target/<profile>/deps, binaries from target/<profile>.
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("weft-testpod"))
        .find(|candidate| candidate.exists())
        .with_context(|| {
            format!("weft-testpod not found near {}: build the weft-tests package", exe.display())
        })
}

/// Starts an echo server on `port` in `pod` and returns once it listens.
pub fn echo_server(pod: &Pod, port: u16) -> anyhow::Result<Process> {
    let mut command = Command::new(testpod_binary()?);
    command.args(["echo", "--port", &port.to_string()]).stdin(Stdio::null()).stdout(Stdio::piped());
    let mut server = pod.spawn(command)?;
    server
        .wait_for_line("ready", READY_TIMEOUT)
        .with_context(|| format!("echo server in pod {}", pod.name))?;
    Ok(server)
}

/// Sends `message` from `pod` to `to` and returns the echoed reply; fails if the client does.
pub fn send(pod: &Pod, to: SocketAddr, message: &str) -> anyhow::Result<String> {
    let mut command = Command::new(testpod_binary()?);
    command
        .args(["send", "--to", &to.to_string(), "--message", message])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let (ok, reply) = pod.spawn(command)?.finish(SEND_TIMEOUT)?;
    if !ok {
        bail!("client in pod {} sending to {to} failed (got {reply:?})", pod.name);
    }
    Ok(reply)
}
