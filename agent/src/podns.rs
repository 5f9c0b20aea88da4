//! Finding a pod's network namespace on the node without a CNI plugin, the way the node lays it
//! out: the kubelet puts each pod's processes in a cgroup whose path contains `pod<uid>` (with
//! dashes, or underscores under the systemd driver); any such process's `/proc/<pid>/ns/net`
//! is the pod's namespace. Work inside one ([`run_in`]) happens on a short-lived thread, so the
//! agent's own threads never change namespace; [`established_elsewhere`] counts the connections
//! a pod opened before capture, which stay outside the mesh until they close.
use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    path::Path,
};

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
/// before capture, which stay outside the mesh for their lifetime. HBONE connections (port
/// 15008 at either end) are the node proxy's own, made inside the pod: a pod enrolled again
/// (an agent restart) holds its pooled tunnels, which are the mesh, not outside it. Each as (local, remote), so
/// the log says which they are.
pub fn established_elsewhere(netns: &File) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
    run_in(netns, || {
        let mut found = Vec::new();
        for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            found.extend(std::fs::read_to_string(table)?.lines().filter_map(established_with_peer));
        }
        Ok(found)
    })
}

/// `ESTABLISHED` in `/proc/net/tcp{,6}`.
const ESTABLISHED: &str = "01";

/// The two ends, (local, remote), of a `/proc/net/tcp{,6}` line that is an established
/// connection to another host.
fn established_with_peer(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let mut fields = line.split_whitespace().skip(1);
    let (local, remote, state) = (fields.next()?, fields.next()?, fields.next()?);
    let end = |field: &str| {
        let (hex, port) = field.split_once(':')?;
        Some(SocketAddr::new(parse_address(hex)?, u16::from_str_radix(port, 16).ok()?))
    };
    let (local, remote) = (end(local)?, end(remote)?);
    let elsewhere = local.ip() != remote.ip() && !remote.ip().to_canonical().is_loopback();
    let tunnel =
        local.port() == weft_ebpf_common::port::HBONE || remote.port() == weft_ebpf_common::port::HBONE;
    (state == ESTABLISHED && elsewhere && !tunnel).then_some((local, remote))
}

/// An address as the kernel prints it there: 32-bit words in hex, each in host byte order.
fn parse_address(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<[u8; 4]>> = hex
        .as_bytes()
        .chunks(8)
        .map(|word| u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok().map(u32::to_ne_bytes))
        .collect();
    match words?.as_slice() {
        [one] => Some(Ipv4Addr::from(*one).into()),
        [a, b, c, d] => {
            let octets: Vec<u8> = [a, b, c, d].into_iter().flatten().copied().collect();
            Some(Ipv6Addr::from(<[u8; 16]>::try_from(octets).ok()?).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_established_connections_with_other_hosts_only() {
        // Listening; to itself over loopback; established with 10.244.1.10; and with ::1.
        let listening =
            "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 1";
        let loopback =
            "   1: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0 0 2";
        let remote = "   2: 0A00F40A:1F90 0A01F40A:9C40 01 00000000:00000000 00:00000000 00000000     0 0 3";
        let own_address =
            "   3: 0A00F40A:1F90 0A00F40A:9C41 01 00000000:00000000 00:00000000 00000000     0 0 4";
        let v6_loopback =
            "   4: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A000 01 0";
        let v6_remote =
            "   5: 0000000000000000FFFF00000A00F40A:1F90 0000000000000000FFFF00000A01F40A:A001 01 0";
        // The node proxy's HBONE tunnels from inside the pod, and to its HBONE listener.
        let tunnel_out =
            "   6: 0A00F40A:A5A2 0A01F40A:3AA0 01 00000000:00000000 00:00000000 00000000     0 0 5";
        let tunnel_in =
            "   7: 0A00F40A:3AA0 0A01F40A:A5A2 01 00000000:00000000 00:00000000 00000000     0 0 6";
        let counted: Vec<bool> =
            [listening, loopback, remote, own_address, v6_loopback, v6_remote, tunnel_out, tunnel_in]
                .iter()
                .map(|line| established_with_peer(line).is_some())
                .collect();
        assert_eq!(counted, [false, false, true, false, false, true, false, false]);
        assert_eq!(
            established_with_peer(remote),
            Some(("10.244.0.10:8080".parse().unwrap(), "10.244.1.10:40000".parse().unwrap()))
        );
        assert_eq!(parse_address("0A01F40A"), Some("10.244.1.10".parse().unwrap()));
        assert_eq!(
            parse_address("0000000000000000FFFF00000A01F40A"),
            Some("::ffff:10.244.1.10".parse().unwrap())
        );
        assert_eq!(parse_address("xyz"), None);
    }
}
