//! Which cgroup the node proxy runs in, learned from the peer of its pod-handoff connection, so
//! that capture exempts the proxy's marked sockets and nobody else's (any container with
//! CAP_NET_RAW can set a mark; only the proxy can connect to the handoff socket, which is
//! mounted into its pod alone). The proxy's pod cgroup changes on every restart, so it is
//! learned on every connection, in four steps:
//!
//! 1. the peer's socket inode, from the kernel's unix socket diagnostics (`sock_diag`, asked in
//!    the network namespace of the accepted socket, which is the proxy's);
//! 2. the process holding that socket, from `<proc root>/*/fd` (the host's /proc: the agent may
//!    be in a PID namespace of its own, where `SO_PEERCRED` would say 0);
//! 3. that process's cgroup v2 path, from `<proc root>/<pid>/cgroup`, read again in the host's
//!    cgroup namespace when it lies outside the agent's own (a container's);
//! 4. that path under the cgroup v2 mount.
//!
//! The process's start time comes along: during an upgrade two proxies run on the node, and the
//! newer one takes over ([`crate::handoff`]).
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use crate::{
    cgroups,
    netlink::{Netlink, SOCK_DIAG_BY_FAMILY, find_u32},
};

/// The process at the other end of a handoff connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its cgroup v2 directory.
    pub cgroup: PathBuf,
    /// When it started, in clock ticks since boot (`/proc/<pid>/stat`'s 22nd field): orders
    /// two proxies of one node.
    pub started: u64,
}

/// The process at the other end of the unix socket `socket`.
pub fn of_peer(socket: BorrowedFd<'_>, proc_root: &Path) -> io::Result<Peer> {
    let inode = peer_inode(socket)?;
    let pid = holder(proc_root, inode)?;
    let started = start_time(&std::fs::read_to_string(proc_root.join(&pid).join("stat"))?)
        .ok_or_else(|| io::Error::other(format!("process {pid}: no start time in its stat")))?;
    let cgroup_file = proc_root.join(&pid).join("cgroup");
    let mut text = std::fs::read_to_string(&cgroup_file)?;
    // Paths in a cgroup file are relative to the reader's cgroup namespace; one outside it (a
    // container's: the proxy is in another pod) starts with `/..`. Read it again from the
    // host's namespace, where it is whole.
    if unified_path(&text).is_some_and(|path| path.starts_with("/..")) {
        let host = File::open(proc_root.join("1/ns/cgroup"))?;
        text = crate::podns::in_namespace(&host, libc::CLONE_NEWCGROUP, move || {
            std::fs::read_to_string(cgroup_file)
        })?;
    }
    let relative = unified_path(&text)
        .ok_or_else(|| io::Error::other(format!("process {pid} has no cgroup v2 path ({text:?})")))?;
    let mounts = cgroups::cgroup2_mounts(&cgroups::mountinfo());
    let cgroup = mounts
        .iter()
        .map(|mount| mount.join(relative.trim_start_matches('/')))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| {
            io::Error::other(format!("cgroup {relative} of process {pid} is under no cgroup2 mount"))
        })?;
    Ok(Peer { cgroup, started })
}

/// The start time in a `/proc/<pid>/stat` line: the 22nd field, counted after the command
/// name, which is in parentheses and may hold spaces and parentheses itself.
fn start_time(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // Fields 3 (state) onwards; the 22nd is the 20th of these.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The path in a `/proc/<pid>/cgroup` file's cgroup v2 line (`0::/path`).
fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// `unix_diag.h`'s numbers.
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
/// `unix_diag_msg` length, before its attributes.
const UNIX_DIAG_MSG: usize = 16;

/// `SIOCGSKNS`: a socket's network namespace, as an fd.
const SIOCGSKNS: libc::c_ulong = 0x894c;

/// The inode of the socket connected to `socket`.
fn peer_inode(socket: BorrowedFd<'_>) -> io::Result<u32> {
    use std::os::{fd::FromRawFd, unix::fs::MetadataExt};
    let own = File::from(socket.try_clone_to_owned()?).metadata()?.ino();
    let own = u32::try_from(own).map_err(io::Error::other)?;
    // unix_diag_req: family, protocol, pad, states, inode, show, cookie (none).
    let mut request = vec![libc::AF_UNIX as u8, 0, 0, 0];
    for word in [u32::MAX, own, UDIAG_SHOW_PEER, u32::MAX, u32::MAX] {
        request.extend_from_slice(&word.to_ne_bytes());
    }
    // An accepted unix socket belongs to the connecting side's network namespace (the proxy's),
    // and the diagnostics answer only for sockets of the asker's.
    // SAFETY: an ioctl that returns a new fd, owned below.
    let netns = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS) };
    if netns < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let netns = unsafe { File::from_raw_fd(netns) };
    let reply = crate::podns::run_in(&netns, move || {
        Netlink::open(libc::NETLINK_SOCK_DIAG)?.request(SOCK_DIAG_BY_FAMILY, 0, &request)
    })?;
    if let Some(errno) = reply.errno() {
        return Err(io::Error::from_raw_os_error(errno));
    }
    reply
        .payload
        .get(UNIX_DIAG_MSG..)
        .and_then(|attributes| find_u32(attributes, UNIX_DIAG_PEER))
        .filter(|peer| *peer != 0)
        .ok_or_else(|| io::Error::other(format!("socket {own} has no peer")))
}

/// The pid (under `proc_root`) of a process holding the socket with `inode`.
fn holder(proc_root: &Path, inode: u32) -> io::Result<String> {
    let wanted = PathBuf::from(format!("socket:[{inode}]"));
    for entry in std::fs::read_dir(proc_root)?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|name| name.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        // Processes that exit meanwhile, or that the agent may not look into, are skipped.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link == wanted)) {
            return Ok(pid.to_owned());
        }
    }
    Err(io::Error::other(format!("no process under {} holds socket {inode}", proc_root.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_unified_line_of_hybrid_and_unified_cgroup_files() {
        let hybrid =
            "9:name=systemd:/\n4:memory:/x\n0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-2.scope\n";
        assert_eq!(unified_path(hybrid), Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-2.scope"));
        assert_eq!(unified_path("0::/\n"), Some("/"));
        assert_eq!(unified_path("4:memory:/x\n"), None);
    }

    #[test]
    fn finds_the_process_at_the_other_end_of_a_socket_pair() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let inode = peer_inode(std::os::fd::AsFd::as_fd(&ours)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let theirs_inode =
            File::from(std::os::fd::OwnedFd::from(theirs.try_clone().unwrap())).metadata().unwrap().ino();
        assert_eq!(u64::from(inode), theirs_inode);
        assert_eq!(holder(Path::new("/proc"), inode).unwrap(), std::process::id().to_string());
        let peer = of_peer(std::os::fd::AsFd::as_fd(&ours), Path::new("/proc")).unwrap();
        let own = unified_path(&std::fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap().to_owned();
        assert!(peer.cgroup.ends_with(own.trim_start_matches('/')), "{} for {own}", peer.cgroup.display());
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(Some(peer.started), start_time(&stat));
    }

    #[test]
    fn reads_the_start_time_past_a_command_name_with_spaces_and_parentheses() {
        let fields: Vec<String> = (3..=22).map(|n| n.to_string()).collect();
        let stat = format!("42 (a (b) c) {} 23 24\n", fields.join(" "));
        assert_eq!(start_time(&stat), Some(22));
        assert_eq!(start_time("42 (short) S 1"), None);
    }
}
