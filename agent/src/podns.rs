//! Finding a pod's network namespace on the node without a CNI plugin, the way the node lays it
//! out: the kubelet puts each pod's processes in a cgroup whose path contains `pod<uid>` (with
//! dashes, or underscores under the systemd driver); such a process's `/proc/<pid>/ns/net`, if
//! it is not the node's own, is the pod's namespace ([`open`]; [`namespaces`] maps every pod to
//! its processes' namespaces at once, so a recreated sandbox shows). Work inside one
//! ([`run_in`]) happens on a short-lived thread, so the agent's own threads never change
//! namespace; [`established_elsewhere`] counts the connections a pod opened before capture,
//! which stay outside the mesh until they close.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    net::SocketAddr,
    ops::ControlFlow,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use weft_ebpf_common::{PROXY_MARK, PROXY_MARK_MASK};

use crate::sockets::Socket;

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
    let mut found = None;
    scan(proc_root, |pid, pods, _| {
        if pods.iter().any(|pod| pod == uid) {
            found = Some(proc_root.join(pid).join("ns/net"));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    let path = found
        .ok_or_else(|| Error::NotFound { uid: uid.to_owned(), proc_root: proc_root.display().to_string() })?;
    File::open(&path).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// A network namespace's identity: the device and inode of its `ns/net` file.
pub type Identity = (u64, u64);

/// The identity of the namespace `netns` refers to.
pub fn identity(netns: &File) -> io::Result<Identity> {
    Ok(identity_of(&netns.metadata()?))
}

/// The identity of the namespace whose `ns/net` file has `meta`.
fn identity_of(meta: &std::fs::Metadata) -> Identity {
    (meta.dev(), meta.ino())
}

/// Every pod with a process on the node, by uid: the namespaces its processes are in (one,
/// unless a container made its own), in one pass through `proc_root`.
pub fn namespaces(proc_root: &Path) -> Result<HashMap<String, HashSet<Identity>>, Error> {
    let mut pods: HashMap<String, HashSet<Identity>> = HashMap::new();
    scan(proc_root, |_, uids, netns| {
        for uid in uids {
            pods.entry(uid).or_default().insert(netns);
        }
        ControlFlow::Continue(())
    })?;
    Ok(pods)
}

/// Calls `each` with the pid, the pod uids its cgroup path names and the network namespace of
/// every process of a pod, until it breaks. A process in a pod's cgroup but in the node's
/// namespace (this agent's, which runs on the host network) is not the pod's yet, or never
/// will be: a runtime's process between joining the cgroup and entering the sandbox (`runc
/// init`), or a monitor kept in the pod's cgroup (CRI-O's `conmon`). A process that exits
/// meanwhile is skipped.
fn scan(
    proc_root: &Path,
    mut each: impl FnMut(&str, Vec<String>, Identity) -> ControlFlow<()>,
) -> Result<(), Error> {
    let node = std::fs::metadata("/proc/self/ns/net").ok().map(|meta| identity_of(&meta));
    let entries = std::fs::read_dir(proc_root)
        .map_err(|source| Error::Io { path: proc_root.display().to_string(), source })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|name| name.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(cgroups) = std::fs::read_to_string(proc_root.join(pid).join("cgroup")) else {
            continue;
        };
        let uids = pod_uids(&cgroups);
        if uids.is_empty() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(proc_root.join(pid).join("ns/net")) else {
            continue;
        };
        let netns = identity_of(&meta);
        if Some(netns) != node && each(pid, uids, netns).is_break() {
            break;
        }
    }
    Ok(())
}

/// The pod uids a process's `/proc/<pid>/cgroup` names: a path part `pod<uid>` (the cgroupfs
/// driver), or `…-pod<uid with underscores>.slice` (the systemd driver).
fn pod_uids(cgroups: &str) -> Vec<String> {
    let mut uids = Vec::new();
    for part in cgroups.lines().flat_map(|line| line.split('/')) {
        let uid = match part.strip_suffix(".slice") {
            Some(slice) => slice.rsplit_once("-pod").map(|(_, uid)| uid.replace('_', "-")),
            None => part.strip_prefix("pod").map(str::to_owned),
        };
        if let Some(uid) = uid.filter(|uid| !uid.is_empty() && !uids.contains(uid)) {
            uids.push(uid);
        }
    }
    uids
}

/// Runs `work` on a fresh thread inside the network namespace `netns`, and returns its result.
pub fn run_in<T: Send + 'static>(
    netns: &File,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    in_namespace(netns, libc::CLONE_NEWNET, work)
}

/// Runs `work` on a fresh thread inside `namespace` (of type `kind`, a `CLONE_NEW*` flag), so
/// no thread of the agent's own changes namespace, and returns its result.
pub fn in_namespace<T: Send + 'static>(
    namespace: &File,
    kind: libc::c_int,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let namespace = namespace.try_clone()?;
    std::thread::spawn(move || {
        // SAFETY: setns only changes this short-lived thread's namespace of that kind.
        if unsafe { libc::setns(namespace.as_raw_fd(), kind) } != 0 {
            return Err(io::Error::last_os_error());
        }
        work()
    })
    .join()
    .map_err(|_| io::Error::other("a thread inside another namespace panicked"))?
}

/// TCP connections established in the network namespace `netns` with a peer other than the pod
/// itself (loopback or its own address): at enrollment, those the pod opened or accepted
/// before capture, which stay outside the mesh for their lifetime. The node proxy's own are
/// not: a pod enrolled again (an agent restart) holds the proxy's pooled HBONE tunnels and
/// its deliveries into the pod from the client's address, all marked as the proxy's; the
/// app's end of a delivery has the mark too (`tcp_fwmark_accept`), or, where the app's socket
/// sets a mark of its own, is one of the proxy's reversed. (A captured connection's ends are
/// the app's and the proxy's listener's, both at the pod's own address.) Each as (local,
/// remote), so the log says which they are.
pub fn established_elsewhere(netns: &File) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
    let sockets = run_in(netns, crate::sockets::established)?;
    Ok(outside_the_mesh(&sockets))
}

/// Of `sockets`, the ends of connections with another host that are neither the node proxy's
/// nor an end of one of the proxy's.
fn outside_the_mesh(sockets: &[Socket]) -> Vec<(SocketAddr, SocketAddr)> {
    let proxys = |socket: &Socket| socket.mark & PROXY_MARK_MASK == PROXY_MARK;
    // Canonical: the proxy's IPv4 socket and an app's on `[::]` name one end apart.
    let end = |address: SocketAddr| (address.ip().to_canonical(), address.port());
    let proxy_ends: HashSet<_> = sockets
        .iter()
        .filter(|socket| proxys(socket))
        .map(|socket| (end(socket.remote), end(socket.local)))
        .collect();
    sockets
        .iter()
        .filter(|socket| {
            let (local, remote) = (socket.local.ip().to_canonical(), socket.remote.ip().to_canonical());
            let elsewhere = local != remote && !remote.is_loopback();
            elsewhere && !proxys(socket) && !proxy_ends.contains(&(end(socket.local), end(socket.remote)))
        })
        .map(|socket| (socket.local, socket.remote))
        .collect()
}

#[cfg(test)]
mod tests {
    use weft_ebpf_common::DELIVERY_MARK;

    use super::*;

    #[test]
    fn pod_uids_are_read_from_either_cgroup_drivers_paths() {
        let uid = "0a1b2c3d-0000-4000-8000-0123456789ab";
        let cgroupfs = format!("0::/kubepods/besteffort/pod{uid}/c0ffee\n");
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-c0ffee.scope\n",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uids(&cgroupfs), [uid]);
        assert_eq!(pod_uids(&systemd), [uid]);
        assert!(pod_uids("0::/system.slice/containerd.service\n").is_empty());
        assert!(pod_uids("0::/kubepods.slice/kubepods-besteffort.slice\n").is_empty());
    }

    #[test]
    fn counts_the_pods_own_connections_with_other_hosts_only() {
        let socket = |local: &str, remote: &str, mark: u32| Socket {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            mark,
        };
        let sockets = [
            // The pod's own: to itself over loopback, to its own address, to other hosts.
            socket("127.0.0.1:53998", "127.0.0.1:8080", 0),
            socket("10.244.0.10:8080", "10.244.0.10:40001", 0),
            socket("10.244.0.10:8080", "10.244.1.10:40000", 0),
            socket("[::ffff:10.244.0.10]:8080", "[::ffff:10.244.1.10]:40002", 0),
            socket("[::1]:8080", "[::1]:40960", 0),
            // The proxy's HBONE tunnels from inside the pod and to its HBONE listener.
            socket("10.244.0.10:42402", "10.244.1.10:15008", PROXY_MARK),
            socket("10.244.0.10:15008", "10.244.1.10:42402", PROXY_MARK),
            // A delivery into the pod from the client's address: the proxy's end, and the app's,
            // marked (tcp_fwmark_accept) or not (an app's socket with a mark of its own), on an
            // IPv4 socket or on `[::]`.
            socket("10.244.1.11:41000", "10.244.0.10:8080", DELIVERY_MARK),
            socket("10.244.0.10:8080", "10.244.1.11:41000", DELIVERY_MARK),
            socket("10.244.1.12:41001", "10.244.0.10:8080", DELIVERY_MARK),
            socket("10.244.0.10:8080", "10.244.1.12:41001", 0x7),
            socket("10.244.1.13:41002", "10.244.0.10:8080", DELIVERY_MARK),
            socket("[::ffff:10.244.0.10]:8080", "[::ffff:10.244.1.13]:41002", 0x7),
            // A captured connection: the app's end, to the proxy's listener at the pod's own
            // address, and the proxy's, accepted on `[::]`.
            socket("10.244.0.10:43000", "10.244.0.10:15001", 0),
            socket("[::ffff:10.244.0.10]:15001", "[::ffff:10.244.0.10]:43000", PROXY_MARK),
            // Another mark is not the proxy's.
            socket("10.244.0.10:44000", "10.244.2.10:9000", 0x1000),
        ];
        let expected: Vec<(SocketAddr, SocketAddr)> = [
            ("10.244.0.10:8080", "10.244.1.10:40000"),
            ("[::ffff:10.244.0.10]:8080", "[::ffff:10.244.1.10]:40002"),
            ("10.244.0.10:44000", "10.244.2.10:9000"),
        ]
        .iter()
        .map(|(local, remote)| (local.parse().unwrap(), remote.parse().unwrap()))
        .collect();
        assert_eq!(outside_the_mesh(&sockets), expected);
    }
}
