//! `cargo xtask fuzz`: builds the fuzz targets of `fuzz/` (cargo fuzz, libFuzzer, with debug
//! assertions and without a sanitizer, which stable Rust allows) and runs each for a time
//! budget from its committed seeds (`fuzz/seeds/<target>`), growing a corpus of its own in
//! `fuzz/target/corpus/<target>`. What libFuzzer prints goes to `fuzz/target/logs/<target>.log`
//! (one line per target is shown, so a CI log stays readable). A crash fails the run, with the
//! end of that log shown; cargo fuzz leaves its input in `fuzz/artifacts/<target>/` and says how
//! to reproduce it: fix the cause and make that input a regression test.
use std::{collections::BTreeSet, path::Path, process::Command};

use anyhow::{Context, bail};

use crate::cmd;

/// Seconds each target runs within `cargo xtask test`: long enough to walk every seed's
/// neighbourhood, short enough for the whole suite's time limit.
pub const TEST_SECONDS: u64 = 15;

/// Builds every fuzz target with `cargo_fuzz`, then runs `targets` (all when empty) for
/// `seconds` each.
pub fn run(root: &Path, cargo_fuzz: &Path, seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    same_versions_as_the_workspace(root)?;
    let manifest = root.join("fuzz/Cargo.toml");
    // Built from the committed lock only: what is fuzzed is what ships.
    cmd::run(Command::new("cargo").args(["fetch", "--locked", "--manifest-path"]).arg(&manifest))?;
    let fuzz = |args: &[&str]| {
        let mut command = Command::new(cargo_fuzz);
        command.current_dir(root).arg("fuzz").args(args);
        command
    };
    // `none`: sanitizers need a nightly compiler; safe Rust's failures are panics, which
    // debug assertions (`-a`, overflow checks too) make of arithmetic mistakes.
    const BUILD: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];
    cmd::run(fuzz(&["build"]).args(BUILD))?;
    let listed = cmd::output(&mut fuzz(&["list"]))?;
    let all: Vec<&str> = listed.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let chosen: Vec<&str> =
        if targets.is_empty() { all.clone() } else { targets.iter().map(String::as_str).collect() };
    for target in &chosen {
        if !all.contains(target) {
            bail!("no fuzz target {target}; there are: {}", all.join(", "));
        }
        if !root.join("fuzz/seeds").join(target).is_dir() {
            bail!("fuzz target {target} has no seeds in fuzz/seeds/{target}");
        }
    }
    let logs = root.join("fuzz/target/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut crashed = Vec::new();
    for target in chosen {
        let corpus = root.join("fuzz/target/corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let log_path = logs.join(format!("{target}.log"));
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut run = fuzz(&["run"]);
        run.args(BUILD).arg(target).arg(&corpus).arg(root.join("fuzz/seeds").join(target)).arg("--");
        run.arg(format!("-max_total_time={seconds}"))
            // An input these parsers take ten seconds over is a hang.
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1");
        run.stdout(log.try_clone().context("sharing the fuzz log")?).stderr(log);
        let outcome = cmd::run(&mut run);
        let printed = std::fs::read_to_string(&log_path).unwrap_or_default();
        match outcome {
            Ok(()) => eprintln!("fuzz: {target}: {}", final_stats(&printed)),
            Err(error) => {
                let lines: Vec<&str> = printed.lines().collect();
                eprintln!("{}", lines[lines.len().saturating_sub(CRASH_LINES)..].join("\n"));
                eprintln!(
                    "fuzz: {target}: {error:#}; its input is in fuzz/artifacts/{target}/, all it printed in {}",
                    log_path.display()
                );
                crashed.push(target);
            }
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets that failed: {}", crashed.join(", "));
    }
    Ok(())
}

/// How much of a failed target's log is shown: its panic, backtrace and reproduction command.
const CRASH_LINES: usize = 60;

/// libFuzzer's closing figures in one line: `3665891 runs, 2531 new units, peak RSS 82 MB`.
fn final_stats(printed: &str) -> String {
    let stat = |name: &str| {
        printed
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim_start().strip_prefix(':'))
            .map(str::trim)
    };
    match (stat("stat::number_of_executed_units"), stat("stat::new_units_added"), stat("stat::peak_rss_mb")) {
        (Some(runs), Some(new), Some(rss)) => format!("{runs} runs, {new} new units, peak RSS {rss} MB"),
        _ => "ran, but printed no final figures".to_owned(),
    }
}

/// Fails unless every crate that `fuzz/Cargo.lock` shares with the workspace's `Cargo.lock`
/// is locked at a version the workspace has.
fn same_versions_as_the_workspace(root: &Path) -> anyhow::Result<()> {
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path))
            .with_context(|| format!("reading {path}"))
            .map(|text| locked(&text))
    };
    let (workspace, fuzz) = (read("Cargo.lock")?, read("fuzz/Cargo.lock")?);
    let names: BTreeSet<&str> = workspace.iter().map(|(name, _)| name.as_str()).collect();
    let drifted: Vec<String> = fuzz
        .iter()
        .filter(|package| names.contains(package.0.as_str()) && !workspace.contains(package))
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    if !drifted.is_empty() {
        bail!(
            "fuzz/Cargo.lock locks {} at versions Cargo.lock does not: copy Cargo.lock over it and build the fuzz targets again",
            drifted.join(", ")
        );
    }
    Ok(())
}

/// The `(name, version)` of every package in a `Cargo.lock`.
fn locked(lock: &str) -> BTreeSet<(String, String)> {
    let value = |line: &str, key: &str| {
        line.strip_prefix(key)?.strip_prefix(" = \"")?.strip_suffix('"').map(str::to_owned)
    };
    let lines: Vec<&str> = lock.lines().collect();
    lines.windows(2).filter_map(|pair| Some((value(pair[0], "name")?, value(pair[1], "version")?))).collect()
}

#[cfg(test)]
mod tests {
    use super::{final_stats, locked};

    #[test]
    fn libfuzzers_closing_figures_fit_one_line() {
        let printed = "Done 3665891 runs in 16 second(s)\nstat::number_of_executed_units: 3665891\nstat::average_exec_per_sec:     229118\nstat::new_units_added:          2531\nstat::slowest_unit_time_sec:    0\nstat::peak_rss_mb:              82\n";
        assert_eq!(final_stats(printed), "3665891 runs, 2531 new units, peak RSS 82 MB");
        assert_eq!(final_stats("INFO: Seed: 1\n"), "ran, but printed no final figures");
    }

    #[test]
    fn a_lock_names_each_package_with_its_version() {
        let lock = "version = 4\n\n[[package]]\nname = \"h2\"\nversion = \"0.4.20\"\nsource = \"x\"\n\n[[package]]\nname = \"weft-fuzz\"\nversion = \"0.1.0\"\n";
        let packages: Vec<(String, String)> = locked(lock).into_iter().collect();
        assert_eq!(
            packages,
            [("h2".to_owned(), "0.4.20".to_owned()), ("weft-fuzz".to_owned(), "0.1.0".to_owned())]
        );
    }
}
