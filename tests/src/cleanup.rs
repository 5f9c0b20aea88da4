//! Undo lists: every resource the harness creates registers how to remove it, and the owner's
//! [`Guard`] runs those steps in reverse order when it drops, including while a test panics.
//! [`sweep_stale`] removes what earlier runs that were killed outright left behind.
use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Prefix of every name the harness gives to a namespace or cgroup.
pub const PREFIX: &str = "weft-";

type Step = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

/// Runs its registered steps, newest first, on drop. A failed step is reported on stderr and
/// the rest still run: cleanup must not stop half-way.
#[derive(Default)]
pub struct Guard {
    steps: Vec<(String, Step)>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.steps.iter().map(|(what, _)| what)).finish()
    }
}

impl Guard {
    /// Registers `step`, described by `what` in failure reports.
    pub fn defer(
        &mut self,
        what: impl Into<String>,
        step: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
    ) {
        self.steps.push((what.into(), Box::new(step)));
    }

    /// Runs every step now (newest first) and reports the failures.
    pub fn run(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            if let Err(error) = step() {
                eprintln!("cleanup: {what}: {error:#}");
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.run();
    }
}

/// Removes network namespaces, cgroup directories (v2 and v1), bpffs pin directories and real
/// nodes' directories named `weft-<pid>-…` whose process no longer exists. Best effort: what it
/// cannot remove it reports.
pub fn sweep_stale(cgroup_root: &Path) {
    let stale = |name: &str| {
        let Some(rest) = name.strip_prefix(PREFIX) else { return false };
        let Some(pid) = rest.split('-').next().and_then(|pid| pid.parse::<u32>().ok()) else {
            return false;
        };
        !Path::new(&format!("/proc/{pid}")).exists()
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name)
                && let Err(error) = crate::netns::NetNs::delete_named(&name)
            {
                eprintln!("cleanup: stale netns {name}: {error:#}");
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(crate::topology::BPFFS) {
        for entry in entries.flatten() {
            if stale(&entry.file_name().to_string_lossy())
                && let Err(error) = std::fs::remove_dir_all(entry.path())
            {
                eprintln!("cleanup: stale pins {}: {error:#}", entry.path().display());
            }
        }
    }
    // Cgroups (v2, and real nodes' in the v1 hierarchies), their processes killed first.
    let hierarchies = crate::nodes::v1_hierarchies();
    for dir in std::iter::once(cgroup_root).chain(hierarchies.iter().map(PathBuf::as_path)) {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            if stale(&entry.file_name().to_string_lossy())
                && let Err(error) = crate::process::remove_cgroup_tree(&entry.path())
            {
                eprintln!("cleanup: stale cgroup {}: {error:#}", entry.path().display());
            }
        }
    }
    // Real nodes' directories, once their processes are gone: mounts, CNI results.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            if stale(&entry.file_name().to_string_lossy())
                && let Err(error) = crate::nodes::remove_cluster_dir(&entry.path())
            {
                eprintln!("cleanup: stale cluster directory {}: {error:#}", entry.path().display());
            }
        }
    }
}
