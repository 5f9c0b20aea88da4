//! `cargo xtask fuzz`: builds the fuzz targets of `fuzz/` (cargo fuzz, libFuzzer, with debug
//! assertions and without a sanitizer, which stable Rust allows) and runs each for a time
//! budget from its committed seeds (`fuzz/seeds/<target>`), growing a corpus of its own in
//! `fuzz/target/corpus/<target>`. A crash fails the run and leaves its input in
//! `fuzz/target/artifacts/<target>/`: fix the cause and make that input a regression test.
use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::{cmd, setup::Tools};

/// Seconds each target runs within `cargo xtask test`: long enough to walk every seed's
/// neighbourhood, short enough for the whole suite's time limit.
pub const TEST_SECONDS: u64 = 15;

/// Builds every fuzz target, then runs `targets` (all when empty) for `seconds` each.
pub fn run(root: &Path, tools: &Tools, seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    let fuzz = |args: &[&str]| {
        let mut command = Command::new(&tools.cargo_fuzz);
        command.current_dir(root).arg("fuzz").args(args);
        command
    };
    // `none`: sanitizers need a nightly compiler; safe Rust's failures are panics, which
    // debug assertions (`-a`, overflow checks too) make of arithmetic mistakes.
    const BUILD: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];
    cmd::run(fuzz(&["build"]).args(BUILD))?;
    let listed = cmd::output(&mut fuzz(&["list"]))?;
    let all: Vec<&str> = listed.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let chosen: Vec<&str> = if targets.is_empty() {
        all.clone()
    } else {
        for target in targets {
            if !all.contains(&target.as_str()) {
                bail!("no fuzz target {target}; there are: {}", all.join(", "));
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let mut crashed = Vec::new();
    for target in chosen {
        let seeds = root.join("fuzz/seeds").join(target);
        if !seeds.is_dir() {
            bail!("fuzz target {target} has no seeds in {}", seeds.display());
        }
        let work = root.join("fuzz/target");
        let (corpus, artifacts) = (work.join("corpus").join(target), work.join("artifacts").join(target));
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut run = fuzz(&["run"]);
        run.args(BUILD).arg(target).arg(&corpus).arg(&seeds).arg("--");
        run.arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // A slow input is a finding too: no input of these parsers should take a second.
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1");
        if let Err(error) = cmd::run(&mut run) {
            eprintln!("fuzz: {target}: {error:#}; its input is in {}", artifacts.display());
            crashed.push(target);
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets that failed: {}", crashed.join(", "));
    }
    Ok(())
}
