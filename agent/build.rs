//! Builds the kernel programs in `../ebpf` so the agent can embed the object. They need Debian's
//! rustc (it ships `core` for bpfel-unknown-none) and bpf-linker, both installed by
//! `cargo xtask setup`; this script only finds them and says clearly when they are missing.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Debian's rustc: the only toolchain here with a precompiled `core` for the BPF target.
const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo::rerun-if-changed={}", ebpf_dir.join("src").display());
    println!("cargo::rerun-if-changed={}", ebpf_dir.join("common/src").display());
    println!("cargo::rerun-if-changed={}", ebpf_dir.join("Cargo.toml").display());
    println!("cargo::rerun-if-env-changed=WEFT_BPF_LINKER_DIR");

    if !Path::new(BPF_RUSTC).exists() {
        bail!("{BPF_RUSTC} is missing: run `cargo xtask setup` (it installs Debian's rustc-web)");
    }
    let linker_dir = bpf_linker_dir()?;
    let path = format!("{}:{}", linker_dir.display(), env::var("PATH").unwrap_or_default());
    // A target dir of its own next to the main one, so the nested cargo never waits on the outer
    // cargo's lock and its artefacts survive `OUT_DIR` changes.
    let target_dir = manifest_dir.join("../target/bpf");
    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&ebpf_dir)
        .args(["build", "--release", "--target", BPF_TARGET, "--target-dir"])
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC", BPF_RUSTC)
        // aya-ebpf uses one unstable feature; Debian's stable rustc allows it with this.
        .env("RUSTC_BOOTSTRAP", "1");
    for (key, _) in env::vars() {
        let inherited_build_setting =
            key.starts_with("CARGO_") && !matches!(key.as_str(), "CARGO_HOME" | "CARGO_NET_OFFLINE");
        if inherited_build_setting
            || matches!(key.as_str(), "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTFLAGS")
        {
            cargo.env_remove(key);
        }
    }
    let status = cargo.status().context("running cargo for the eBPF crate")?;
    if !status.success() {
        bail!("building the eBPF programs failed ({status})");
    }
    let object = target_dir.join(BPF_TARGET).join("release/weft-ebpf");
    std::fs::copy(&object, out_dir.join("weft-ebpf"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

/// Where `bpf-linker` lives: `WEFT_BPF_LINKER_DIR`, the setup cache, or `PATH`.
fn bpf_linker_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = env::var("WEFT_BPF_LINKER_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cache = env::var("WEFT_CACHE").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/weft")
    });
    let cached = cache.join("bpf-linker/bin");
    if cached.join("bpf-linker").exists() {
        return Ok(cached);
    }
    let on_path = env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .find(|dir| dir.join("bpf-linker").exists());
    on_path.context("bpf-linker not found: run `cargo xtask setup` (it builds bpf-linker against LLVM 22)")
}
