//! Container images assembled on this machine, for real nodes (no registry is reachable): each
//! is one layer holding the given binaries (debug info stripped) and the shared libraries they
//! load, written as an OCI image archive that `ctr images import` takes. Archives are cached in
//! the build's target directory, keyed by their inputs, so a rebuilt binary makes a new one.
use std::{
    collections::BTreeSet,
    hash::{DefaultHasher, Hash, Hasher},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};
use serde_json::json;

/// Where binaries go inside an image.
pub const BIN_DIR: &str = "/usr/local/bin";

/// An image archive and the reference it is imported under.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: String,
    pub archive: PathBuf,
}

/// The sandbox image every real node's containerd uses.
pub fn pause() -> anyhow::Result<Image> {
    workspace("weft.local/pause:1", "weft-pause")
}

/// The test apps (`weft-testpod`: echo servers, clients, probes); give the subcommand as args.
pub fn testpod() -> anyhow::Result<Image> {
    workspace("weft.local/testpod:1", "weft-testpod")
}

/// Weft's own images, as its Dockerfiles make them (the binary on `PATH`, nothing else), under
/// the names [`weft_overlay`](crate::nodes::RealCluster::install_weft) gives the manifests.
pub fn weft() -> anyhow::Result<Vec<Image>> {
    ["agent", "ztunnel", "control", "waypoint"]
        .into_iter()
        .map(|component| {
            workspace(&format!("{WEFT_REGISTRY}/{component}:{WEFT_TAG}"), &format!("weft-{component}"))
        })
        .collect()
}

/// Where Weft's local images are named, and their tag.
pub const WEFT_REGISTRY: &str = "weft.local";
pub const WEFT_TAG: &str = "dev";

/// The cluster DNS, from the CoreDNS `cargo xtask setup` builds.
pub fn coredns() -> anyhow::Result<Image> {
    assemble("weft.local/coredns:1", &[crate::apiserver::kube_bin()?.join("coredns")], &[], &["coredns"])
}

/// The Gateway API mesh conformance suite's echo app under `reference` (the name its manifests
/// give it): Istio's echo server and client, built by `cargo xtask setup`, as `server` and
/// `client` in [`BIN_DIR`] (the suite runs `client` in the pods), and the serving certificate
/// its `--crt`/`--key` name, as Istio's image holds them.
pub fn echo_advanced(reference: &str) -> anyhow::Result<Image> {
    let bin = crate::apiserver::kube_bin()?;
    let files = [
        (bin.join("istio-echo-server"), "/usr/local/bin/server"),
        (bin.join("istio-echo-client"), "/usr/local/bin/client"),
        (bin.join("istio-echo-cert.crt"), "/cert.crt"),
        (bin.join("istio-echo-cert.key"), "/cert.key"),
    ];
    assemble(reference, &[], &files, &["server"])
}

/// An image `reference` holding the workspace binary `binary`, started as that binary.
fn workspace(reference: &str, binary: &str) -> anyhow::Result<Image> {
    assemble(reference, &[crate::apps::binary(binary)?], &[], &[binary])
}

/// An image `reference` holding `binaries` in [`BIN_DIR`] and `files` (each copied to the
/// absolute path given), started as `entrypoint` (its first word a name in [`BIN_DIR`]).
pub fn assemble(
    reference: &str,
    binaries: &[PathBuf],
    files: &[(PathBuf, &str)],
    entrypoint: &[&str],
) -> anyhow::Result<Image> {
    let binaries: Vec<PathBuf> =
        binaries.iter().map(|binary| binary.canonicalize()).collect::<std::io::Result<_>>()?;
    let files: Vec<(PathBuf, &str)> = files
        .iter()
        .map(|(file, inside)| Ok((file.canonicalize()?, *inside)))
        .collect::<std::io::Result<_>>()?;
    let mut key = DefaultHasher::new();
    (reference, entrypoint, &files).hash(&mut key);
    for binary in binaries.iter().chain(files.iter().map(|(file, _)| file)) {
        let meta = std::fs::metadata(binary).with_context(|| format!("reading {}", binary.display()))?;
        (binary, meta.len(), meta.mtime(), meta.mtime_nsec()).hash(&mut key);
    }
    // Beside the workspace's binaries: the build's target directory.
    let target = crate::apps::binary("weft-pause")?;
    let dir = target.parent().context("a binary has a directory")?.join("weft-images");
    std::fs::create_dir_all(&dir)?;
    let name: String = reference.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let archive = dir.join(format!("{name}-{:016x}.tar", key.finish()));
    if !archive.exists() {
        // Built aside and renamed: a parallel test never sees half an archive.
        let work = tempfile::Builder::new().prefix("weft-image-").tempdir_in(&dir)?;
        build(work.path(), reference, &binaries, &files, entrypoint)?;
        std::fs::rename(work.path().join("image.tar"), &archive)?;
        // Archives of earlier builds of this image go: only the newest binaries are tested.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!("{name}-")) && entry.path() != archive {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(Image { reference: reference.to_owned(), archive })
}

fn build(
    work: &Path,
    reference: &str,
    binaries: &[PathBuf],
    files: &[(PathBuf, &str)],
    entrypoint: &[&str],
) -> anyhow::Result<()> {
    let rootfs = work.join("rootfs");
    let bin = rootfs.join(BIN_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::create_dir_all(rootfs.join("etc"))?;
    let mut libraries = BTreeSet::new();
    for binary in binaries {
        let name = binary.file_name().context("a binary has a name")?;
        run(Command::new("strip").arg("--strip-debug").arg("-o").arg(bin.join(name)).arg(binary))?;
        libraries.extend(shared_libraries(binary)?);
    }
    for (file, inside) in files {
        let inside = rootfs.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(inside.parent().context("a file has a directory")?)?;
        std::fs::copy(file, &inside).with_context(|| format!("copying {}", file.display()))?;
    }
    for library in libraries {
        let inside = rootfs.join(library.strip_prefix("/")?);
        std::fs::create_dir_all(inside.parent().context("a library has a directory")?)?;
        // Copies what a symlink points at, under the name the loader asks for.
        std::fs::copy(&library, &inside).with_context(|| format!("copying {}", library.display()))?;
    }

    let blobs = work.join("layout/blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let layer = blob(&blobs, &layer)?;
    let entrypoint: Vec<String> = entrypoint
        .iter()
        .enumerate()
        .map(|(n, word)| if n == 0 { format!("{BIN_DIR}/{word}") } else { (*word).to_owned() })
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": [format!("PATH={BIN_DIR}:/usr/bin:/bin")], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    });
    let config = blob_of(&blobs, &work.join("config.json"), &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest, "size": layer.size}],
    });
    let manifest = blob_of(&blobs, &work.join("manifest.json"), &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": {"io.containerd.image.name": reference},
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    let layout = work.join("layout");
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&layout)
        .arg("-cf")
        .arg(work.join("image.tar"))
        .args(["oci-layout", "index.json", "blobs"]))
}

/// A content-addressed blob: its digest (`sha256:…`) and size.
struct Blob {
    digest: String,
    size: u64,
}

/// Moves `file` into `blobs` under its digest.
fn blob(blobs: &Path, file: &Path) -> anyhow::Result<Blob> {
    let out = Command::new("sha256sum").arg(file).output().context("running sha256sum")?;
    ensure!(out.status.success(), "sha256sum {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    let hex = String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned();
    let size = std::fs::metadata(file)?.len();
    std::fs::rename(file, blobs.join(&hex))?;
    Ok(Blob { digest: format!("sha256:{hex}"), size })
}

fn blob_of(blobs: &Path, file: &Path, value: &serde_json::Value) -> anyhow::Result<Blob> {
    std::fs::write(file, serde_json::to_vec(value)?)?;
    blob(blobs, file)
}

/// The absolute paths of the shared libraries `binary` loads, its loader included (`ldd`).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    // A static binary (Go's, with cgo off) loads nothing.
    if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    ensure!(out.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command.output().with_context(|| format!("running {:?}", command.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", command, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
