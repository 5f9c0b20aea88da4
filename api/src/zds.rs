//! ZDS, the pod handoff (DESIGN.md §4a): the agent listens on a unix `SOCK_SEQPACKET` socket,
//! ztunnel connects and says hello, then the agent sends one request per packet — an add
//! carries the pod's netns fd as `SCM_RIGHTS` — and waits for ztunnel's ack before the next.
//! This module is the message types (generated from `proto/zds.proto`) and the packet channel.
use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use prost::Message;
use tokio::io::{Interest, unix::AsyncFd};

include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));

/// Istio's default socket path; Weft's default too.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// Largest message accepted (they are a few hundred bytes).
const MAX_PACKET: usize = 64 * 1024;

/// Errors on the handoff channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("handoff socket")]
    Io(#[from] io::Error),
    #[error("undecodable handoff message")]
    Decode(#[from] prost::DecodeError),
    #[error("the peer closed the handoff connection")]
    Closed,
    #[error("unexpected handoff message: {0}")]
    Unexpected(&'static str),
}

/// A connected `SOCK_SEQPACKET` unix socket: whole messages, with an optional fd each.
#[derive(Debug)]
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// The user id of the process at the other end, as it was when it connected.
    pub fn peer_uid(&self) -> io::Result<u32> {
        // SAFETY: ucred is plain data; all-zero is valid.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(size_of::<libc::ucred>()).expect("invariant: fits");
        // SAFETY: cred and len are live and sized as passed.
        check(unsafe {
            libc::getsockopt(
                self.fd.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        })?;
        Ok(cred.uid)
    }
}

impl std::os::fd::AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// The agent's listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket syscall; ownership taken at once.
    let fd = unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Registers an owned socket with the runtime.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and keeps its fd number for as long as the AsyncFd owns it.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl Listener {
    /// Listens at `path`, replacing a stale socket file left by an earlier agent.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let fd = seqpacket_socket()?;
        let (addr, len) = unix_addr(path)?;
        // SAFETY: addr is a valid sockaddr_un of length len.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        // Only the socket's owner (the agent's user, root on a node) may connect: whoever holds a
        // connection receives pods' network namespaces and has its own cgroup exempted from
        // capture. Set before anyone can connect: listening starts after.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        // SAFETY: plain syscall on an owned fd.
        check(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
        Ok(Self { fd: register(fd)? })
    }

    /// The next connection from a ztunnel.
    pub async fn accept(&self) -> io::Result<Channel> {
        loop {
            let mut guard = self.fd.readable().await?;
            let accepted = guard.try_io(|fd| {
                // SAFETY: accept4 on an owned listening fd; the result is owned below.
                let conn = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if conn < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: conn is fresh and owned by nothing else.
                Ok(unsafe { OwnedFd::from_raw_fd(conn) })
            });
            if let Ok(result) = accepted {
                return Ok(Channel { fd: register(result?)? });
            }
        }
    }
}

impl Channel {
    /// Connects to the agent's socket at `path`.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket_socket()?;
        let (addr, len) = unix_addr(path)?;
        // SAFETY: addr is a valid sockaddr_un of length len. Unix connects complete at once
        // (or fail with EAGAIN when the backlog is full).
        check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        Ok(Self { fd: register(fd)? })
    }

    /// Sends one packet, with `fd` attached as SCM_RIGHTS when given.
    pub async fn send_packet(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|socket| sendmsg(socket.as_raw_fd(), bytes, fd.map(|fd| fd.as_raw_fd()))) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet and the fd attached to it, if any. `None` when the peer closed.
    pub async fn recv_packet(&self) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let mut guard = self.fd.ready(Interest::READABLE).await?;
            match guard.try_io(|socket| recvmsg(socket.as_raw_fd(), &mut buf)) {
                Ok(Ok((0, None))) => return Ok(None),
                Ok(Ok((len, fd))) => {
                    buf.truncate(len);
                    return Ok(Some((buf, fd)));
                }
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends a protobuf message (and an fd).
    pub async fn send<M: Message>(&self, message: &M, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        Ok(self.send_packet(&message.encode_to_vec(), fd).await?)
    }

    /// Receives a protobuf message and its fd; `Error::Closed` at the end.
    pub async fn recv<M: Message + Default>(&self) -> Result<(M, Option<OwnedFd>), Error> {
        let (bytes, fd) = self.recv_packet().await?.ok_or(Error::Closed)?;
        Ok((M::decode(bytes.as_slice())?, fd))
    }
}

fn sendmsg(socket: RawFd, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    let mut control = [0u64; 4]; // aligned room for one cmsg with one fd
    if let Some(fd) = fd {
        // SAFETY: the control buffer is large and aligned enough for one SCM_RIGHTS fd; the
        // CMSG macros stay inside it.
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        }
    }
    // SAFETY: msg points to live buffers of the lengths given.
    let sent = unsafe { libc::sendmsg(socket, &raw const msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recvmsg(socket: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    let mut control = [MaybeUninit::<u64>::uninit(); 8];
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg points to live buffers of the lengths given.
    let len = unsafe { libc::recvmsg(socket, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = None;
    // SAFETY: walking the control messages the kernel wrote, with the CMSG macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i).read_unaligned();
                    let fd = OwnedFd::from_raw_fd(fd);
                    // Only one fd is expected; extra ones are closed by dropping them.
                    if received.is_none() {
                        received = Some(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "handoff message larger than 64 KiB"));
    }
    Ok((len as usize, received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_and_fds_cross_the_socket() {
        let dir = std::env::temp_dir().join(format!("weft-zds-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zds.sock");
        let listener = Listener::bind(&path).unwrap();
        let client = Channel::connect(&path).await.unwrap();
        let server = listener.accept().await.unwrap();

        client.send(&ZdsHello { version: Version::V1 as i32 }, None).await.unwrap();
        let (hello, fd) = server.recv::<ZdsHello>().await.unwrap();
        assert_eq!(hello.version, Version::V1 as i32);
        assert!(fd.is_none());

        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        let add = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: "uid-1".into(),
                workload_info: Some(WorkloadInfo {
                    name: "web".into(),
                    namespace: "shop".into(),
                    service_account: "web".into(),
                }),
            })),
        };
        server.send(&add, Some(std::os::fd::AsFd::as_fd(&file))).await.unwrap();
        let (got, fd) = client.recv::<WorkloadRequest>().await.unwrap();
        assert_eq!(got, add);
        let fd = fd.expect("the netns fd");
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let theirs = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(ours.ino(), theirs.ino(), "the received fd refers to the same namespace");

        drop(server);
        assert!(matches!(client.recv::<WorkloadRequest>().await, Err(Error::Closed)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
