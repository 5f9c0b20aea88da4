//! Finding a pod's network namespace on the node without a CNI plugin, the way the node lays it
//! out: the kubelet puts each pod's processes in a cgroup whose path contains `pod<uid>` (with
//! dashes, or underscores under the systemd driver); any such process's `/proc/<pid>/ns/net`
//! is the pod's namespace.
use std::{fs::File, io, path::Path};

/// Errors finding a pod's namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no process of pod {uid} found under {proc_root} (is the agent in the host PID namespace?)")]
    NotFound { uid: String, proc_root: String },
    #[error("reading {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Opens the network namespace of the pod with `uid`, looking through `proc_root` (`/proc`).
pub fn open(proc_root: &Path, uid: &str) -> Result<File, Error> {
    let dashed = format!("pod{uid}");
    let underscored = format!("pod{}", uid.replace('-', "_"));
    let entries = std::fs::read_dir(proc_root)
        .map_err(|source| Error::Io { path: proc_root.display().to_string(), source })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|name| name.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(cgroups) = std::fs::read_to_string(proc_root.join(pid).join("cgroup")) else {
            continue; // the process exited meanwhile
        };
        let systemd_slice = format!("-{underscored}.slice");
        let in_pod = cgroups
            .lines()
            .any(|line| line.split('/').any(|part| part == dashed || part.ends_with(&systemd_slice)));
        if in_pod {
            let path = proc_root.join(pid).join("ns/net");
            return File::open(&path)
                .map_err(|source| Error::Io { path: path.display().to_string(), source });
        }
    }
    Err(Error::NotFound { uid: uid.to_owned(), proc_root: proc_root.display().to_string() })
}
