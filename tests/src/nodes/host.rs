//! What a real node needs of this machine: its own mount namespace, its cgroups in the v1
//! hierarchies, and the removal of both.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The host paths of a node that its pods may mount and that must not be shared with the other
/// nodes on this machine: the handoff socket's directory (Weft's DaemonSets), and libcni's state.
pub(super) const NODE_OWN_DIRS: [(&str, &str); 2] =
    [("/var/run/weft", "run-weft"), ("/var/lib/cni", "cni-state")];

/// Makes the node's own mount namespace, pinned at `dir/mnt`, as a kind node has in its
/// container: [`NODE_OWN_DIRS`] are bound to directories of this node, and `/sys/fs/bpf` is a
/// bpffs of its own, so every hostPath a pod mounts is this node's. Whatever the kubelet and
/// containerd mount (volumes, root filesystems, netns pins) stays inside it, and goes with it.
pub(super) fn mount_namespace(dir: &Path) -> anyhow::Result<PathBuf> {
    let pin = dir.join("mnt");
    std::fs::File::create(&pin).with_context(|| format!("creating {}", pin.display()))?;
    // Copies of other namespaces' pins (other tests' netns, other nodes' mount namespaces)
    // would keep those alive as long as this one: dropped first.
    let mut script =
        format!("set -e\ngrep ' - nsfs ' /proc/self/mountinfo | cut -d' ' -f5 | {{\n{DROP_PINS}\n}}\n");
    for (inside, own) in NODE_OWN_DIRS {
        let own = dir.join(own);
        std::fs::create_dir_all(&own)?;
        // The mount point, on the host; empty there.
        std::fs::create_dir_all(inside).with_context(|| format!("creating {inside}"))?;
        script.push_str(&format!("mount --bind {} {inside}\n", own.display()));
    }
    script.push_str("mount -t bpf bpf /sys/fs/bpf\n");
    // Shared inside, as on a systemd host (a volume with HostToContainer propagation needs
    // it); a slave of the host's mounts first, so nothing made inside reaches the host.
    script.push_str("mount --make-rshared /\n");
    let out = Command::new("unshare")
        .arg(format!("--mount={}", pin.display()))
        .args(["--propagation", "slave", "sh", "-c", &script])
        .output()
        .context("running unshare")?;
    if !out.status.success() {
        bail!("making the mount namespace of {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(pin)
}

/// Unmounts each namespace pin named on its standard input. A pin gone meanwhile is no error:
/// its owner (another test) removed it on the host, and the namespace this runs in, the host's
/// slave, lost it too; one that stays mounted is.
const DROP_PINS: &str = r#"while read -r pin; do
  if ! error=$(umount -l "$pin" 2>&1) && awk -v p="$pin" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    echo "unmounting $pin: $error" >&2; exit 1
  fi
done"#;

/// Every cgroup v1 hierarchy's mount point.
pub fn v1_hierarchies() -> Vec<PathBuf> {
    use weft_agent::cgroups;
    cgroups::mount_points(&cgroups::mountinfo(), "cgroup")
}

/// Makes `path` (and its parents) in every v1 hierarchy; cpuset's need their CPUs and memory
/// nodes copied from the parent before anything can join them.
pub(super) fn make_v1_cgroup(hierarchies: &[PathBuf], path: &str) -> anyhow::Result<()> {
    for hierarchy in hierarchies {
        let mut dir = hierarchy.clone();
        for part in path.trim_start_matches('/').split('/') {
            let parent = dir.clone();
            dir.push(part);
            if dir.exists() {
                continue;
            }
            std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                    std::fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("writing {}", dir.join(file).display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Removes a cluster's directory `dir`, with the nodes' mount namespaces pinned in it.
pub fn remove_cluster_dir(dir: &Path) -> anyhow::Result<()> {
    unmount_below(dir)?;
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(()),
    }
}

/// Unmounts every mount at or below `dir`, deepest first (lazily: a mount still busy goes once
/// free).
pub(super) fn unmount_below(dir: &Path) -> anyhow::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    for point in points {
        let c_path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
            let error = std::io::Error::last_os_error();
            // Already gone with its parent.
            if error.raw_os_error() != Some(libc::EINVAL) && error.raw_os_error() != Some(libc::ENOENT) {
                return Err(error).with_context(|| format!("unmounting {}", point.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::DROP_PINS;

    /// Runs `script` in a private mount namespace of its own, and says what it printed if it failed.
    fn in_own_mount_namespace(script: &str) -> Result<(), String> {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .output()
            .expect("running unshare");
        match out.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    #[test]
    fn a_pin_removed_before_it_is_dropped_is_no_error_and_a_mounted_one_is_dropped() {
        // Another test removing its netns between the listing and the unmount (as CI saw).
        in_own_mount_namespace(&format!("echo /run/netns/weft-removed-meanwhile | {{\n{DROP_PINS}\n}}"))
            .unwrap();
        let pin = tempfile::NamedTempFile::new().unwrap();
        let pin = pin.path().display();
        in_own_mount_namespace(&format!(
            "set -e\nmount --bind /proc/self/ns/net {pin}\necho {pin} | {{\n{DROP_PINS}\n}}\n\
             ! awk '$5 == \"{pin}\"' /proc/self/mountinfo | grep -q ."
        ))
        .unwrap();
    }
}
