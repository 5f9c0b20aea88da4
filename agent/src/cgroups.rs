//! Where a node keeps its cgroups, found rather than configured: the cgroup v2 hierarchy (from
//! `/proc/self/mountinfo`: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid
//! ones), the kubelet's pods cgroup inside it (`kubepods.slice` with the systemd driver,
//! `kubepods` with cgroupfs, kind's `kubelet.slice/kubelet-kubepods.slice`), and the root that
//! holds the node's own processes.
use std::path::{Path, PathBuf};

/// Where the kubelet puts pods, in the order they are tried.
const PODS_CGROUPS: [&str; 4] =
    ["kubepods.slice", "kubepods", "kubelet.slice/kubelet-kubepods.slice", "kubelet/kubepods"];

/// The cgroup2 mount points in `mountinfo`, the shortest (the host's own) first.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut mounts = mount_points(mountinfo, "cgroup2");
    mounts.sort_by_key(|point| point.as_os_str().len());
    mounts
}

/// The mount points of every filesystem of type `fstype` in `mountinfo` (`cgroup` for the v1
/// hierarchies).
pub fn mount_points(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // `… mount-point options - fstype …`: the fifth field, and the first after `-`.
            let (before, after) = line.split_once(" - ")?;
            let point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == fstype).then(|| PathBuf::from(point))
        })
        .collect()
}

/// This process's mounts.
pub fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// The mount point of the cgroup2 hierarchy holding `cgroup` (the longest that contains it).
pub fn root_of(mounts: &[PathBuf], cgroup: &Path) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|point| cgroup.starts_with(point))
        .max_by_key(|point| point.as_os_str().len())
        .cloned()
}

/// The kubelet's pods cgroup. First the one this process is in (the agent runs in a pod): in
/// `own`, its `/proc/self/cgroup`, the v2 path up to the known layout's last directory, which
/// also finds a kubelet with a `cgroupRoot` of its own (`/<root>/kubepods`). A process in a
/// cgroup namespace of its own sees only `/` there; then the first of the known layouts at the
/// root of a cgroup2 hierarchy.
pub fn find_pods(mounts: &[PathBuf], own: &str) -> Option<PathBuf> {
    if let Some(own_path) = own.lines().find_map(|line| line.strip_prefix("0::")) {
        // From the root down: the outermost pods cgroup, not a QoS class inside it.
        let mut ancestors: Vec<&Path> = Path::new(own_path.trim()).ancestors().collect();
        ancestors.reverse();
        for dir in ancestors {
            if PODS_CGROUPS.iter().any(|layout| dir.ends_with(layout)) {
                let relative = dir.strip_prefix("/").unwrap_or(dir);
                if let Some(found) = mounts.iter().map(|root| root.join(relative)).find(|dir| dir.is_dir()) {
                    return Some(found);
                }
            }
        }
    }
    mounts.iter().flat_map(|root| PODS_CGROUPS.iter().map(move |dir| root.join(dir))).find(|dir| dir.is_dir())
}

/// This process's cgroup memberships (`/proc/self/cgroup`).
pub fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default()
}

/// Why no pods cgroup was found, for the error a user reads.
pub fn not_found(mounts: &[PathBuf]) -> String {
    let mounts: Vec<String> = mounts.iter().map(|mount| mount.display().to_string()).collect();
    format!(
        "no kubelet pods cgroup found (looked for {} under the cgroup2 mounts [{}]); pass --cgroup",
        PODS_CGROUPS.join(", "),
        mounts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                          30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro";
    const UNIFIED: &str = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw";

    #[test]
    fn finds_the_hierarchy_on_hybrid_and_unified_hosts_and_the_root_of_a_cgroup() {
        let hybrid = cgroup2_mounts(HYBRID);
        assert_eq!(hybrid, [PathBuf::from("/sys/fs/cgroup/unified")]);
        let pods = Path::new("/sys/fs/cgroup/unified/kubepods");
        assert_eq!(root_of(&hybrid, pods), Some("/sys/fs/cgroup/unified".into()));
        let unified = cgroup2_mounts(UNIFIED);
        assert_eq!(
            root_of(&unified, Path::new("/sys/fs/cgroup/kubepods.slice")),
            Some("/sys/fs/cgroup".into())
        );
        assert_eq!(root_of(&unified, Path::new("/elsewhere")), None);
    }

    #[test]
    fn finds_the_pods_cgroup_of_each_kubelet_layout_in_order() {
        let root = tempfile::tempdir().unwrap();
        let mounts = [root.path().to_path_buf()];
        // In a cgroup namespace of its own, a process sees only `/`.
        let private = "0::/\n";
        assert_eq!(find_pods(&mounts, private), None);
        assert!(not_found(&mounts).contains("kubepods.slice"));
        for layout in ["kubelet.slice/kubelet-kubepods.slice", "kubepods", "kubepods.slice"] {
            std::fs::create_dir_all(root.path().join(layout)).unwrap();
            assert_eq!(find_pods(&mounts, private), Some(root.path().join(layout)), "{layout}");
        }
    }

    #[test]
    fn finds_the_pods_cgroup_holding_this_process_under_a_kubelet_cgroup_root() {
        let root = tempfile::tempdir().unwrap();
        let mounts = [root.path().to_path_buf()];
        // Another kubelet's pods at the hierarchy's root must not be taken for this one's.
        std::fs::create_dir_all(root.path().join("kubepods")).unwrap();
        let pods = root.path().join("nodes/node-a/kubepods");
        std::fs::create_dir_all(pods.join("besteffort/pod1234/c0ffee")).unwrap();
        let own = "9:pids:/\n0::/nodes/node-a/kubepods/besteffort/pod1234/c0ffee\n";
        assert_eq!(find_pods(&mounts, own), Some(pods));
        let systemd = root.path().join("kubepods.slice");
        std::fs::create_dir_all(systemd.join("kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"))
            .unwrap();
        let own = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-1.scope\n";
        assert_eq!(find_pods(&mounts, own), Some(systemd));
    }
}
