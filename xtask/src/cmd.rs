//! Running external commands with their command line echoed and failures explained.
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `command`, echoing it first; fails if it exits non-zero.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(command));
    let status = command.status().with_context(|| format!("starting {}", describe(command)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(command));
    }
    Ok(())
}

/// Runs `command`, echoing it first, and returns what it printed; fails if it exits non-zero.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    eprintln!("+ {}", describe(command));
    let out = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !out.status.success() {
        bail!("{} failed ({})", describe(command), out.status);
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("{} printed something not UTF-8", describe(command)))
}

/// Whether `command` exits zero, without echoing it or its output (for probes).
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}
