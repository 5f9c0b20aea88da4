//! The agent's side of ZDS, the pod handoff (DESIGN.md §4a): listen on the handoff socket, and
//! for each connected ztunnel send adds (with the pod's netns fd), keeps, deletes and the
//! snapshot marker, one at a time, each confirmed by ztunnel's ack before the next. Each
//! connection also says which cgroup the proxy runs in ([`crate::proxy_cgroup`]).
use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use weft_api::zds::{
    self, AddWorkload, Channel, DelWorkload, Listener, SnapshotSent, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, workload_request::Payload, workload_response,
};

/// A pod to hand over.
#[derive(Debug)]
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub netns: File,
}

/// Errors on the handoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Channel(#[from] zds::Error),
    #[error("ztunnel refused pod {uid}: {reason}")]
    Refused { uid: String, reason: String },
    #[error("ztunnel spoke handoff version {0}, not V1")]
    Version(i32),
    #[error("cannot tell which cgroup the process on the handoff socket runs in")]
    Peer(#[source] std::io::Error),
    #[error("ztunnel did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("the handoff connection is out of step after an earlier failure; it must be dropped")]
    Broken,
    #[error("a process of user {0} connected to the handoff socket; only the agent's own user may")]
    Stranger(u32),
}

/// How long ztunnel may take to answer one request: binding a pod's listeners and fetching its
/// certificate (the CA's own timeout is 10 s). A ztunnel that takes longer is treated as hung.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The listening handoff socket.
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    proc_root: PathBuf,
}

impl Server {
    /// Listens at `path`; `proc_root` is the host's /proc, where the connecting proxy is found.
    pub fn bind(path: &Path, proc_root: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self { listener: Listener::bind(path)?, proc_root: proc_root.to_owned() })
    }

    /// Sessions as they arrive, accepted by a task of their own: a caller that `select!`s on the
    /// receiver (which is cancel-safe) never drops a connection half-way through its hello.
    pub fn incoming(self) -> tokio::sync::mpsc::Receiver<Result<Session, Error>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let accepted = self.accept().await;
                if sender.send(accepted).await.is_err() {
                    return;
                }
            }
        });
        receiver
    }

    /// Waits for a ztunnel to connect and say hello, and finds its cgroup.
    pub async fn accept(&self) -> Result<Session, Error> {
        let channel = self.listener.accept().await.map_err(zds::Error::Io)?;
        // The socket file admits only its owner; this holds even if its mode was changed.
        let uid = channel.peer_uid().map_err(zds::Error::Io)?;
        // SAFETY: geteuid cannot fail.
        if uid != unsafe { libc::geteuid() } {
            return Err(Error::Stranger(uid));
        }
        let (hello, _) = tokio::time::timeout(REQUEST_TIMEOUT, channel.recv::<zds::ZdsHello>())
            .await
            .map_err(|_| Error::Timeout)??;
        if hello.version != zds::Version::V1 as i32 {
            return Err(Error::Version(hello.version));
        }
        let peer = crate::proxy_cgroup::of_peer(channel.as_fd(), &self.proc_root).map_err(Error::Peer)?;
        Ok(Session { channel, peer, broken: std::sync::atomic::AtomicBool::new(false) })
    }
}

/// One connected ztunnel.
#[derive(Debug)]
pub struct Session {
    channel: Channel,
    peer: crate::proxy_cgroup::Peer,
    /// Set when a request timed out or the channel failed: the conversation is out of step
    /// (a late answer would be taken for the next request's), so the session must be dropped.
    broken: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Whether a request timed out or failed on the channel: drop the session (ztunnel
    /// reconnects and gets the whole snapshot).
    pub fn broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cgroup v2 directory the connected proxy runs in.
    pub fn proxy_cgroup(&self) -> &Path {
        &self.peer.cgroup
    }

    /// Whether this session's proxy started after `other`'s: during an upgrade (the DaemonSet
    /// surges: the new proxy starts while the old one still runs) the newer one takes the
    /// node's pods over, and an older one that reconnects is turned away.
    pub fn newer_than(&self, other: &Session) -> bool {
        self.peer.started >= other.peer.started
    }

    /// Hands `pod` over and returns once ztunnel has bound its listeners.
    pub async fn add(&self, pod: &Pod) -> Result<(), Error> {
        let info = WorkloadInfo {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
        };
        let add = AddWorkload { uid: pod.uid.clone(), workload_info: Some(info) };
        self.request(&pod.uid, Payload::Add(add), Some(pod.netns.as_fd())).await
    }

    /// Tells ztunnel to stop serving the pod `uid`.
    pub async fn delete(&self, uid: &str) -> Result<(), Error> {
        self.request(uid, Payload::Del(DelWorkload { uid: uid.to_owned() }), None).await
    }

    /// Ends the snapshot: ztunnel drops pods not announced on this session.
    pub async fn snapshot_sent(&self) -> Result<(), Error> {
        self.request("snapshot", Payload::SnapshotSent(SnapshotSent {}), None).await
    }

    /// Resolves when ztunnel disconnects.
    pub async fn closed(&self) {
        while let Ok(Some(_)) = self.channel.recv_packet().await {}
    }

    async fn request(
        &self,
        uid: &str,
        payload: Payload,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(), Error> {
        if self.broken() {
            return Err(Error::Broken);
        }
        let exchange = async {
            self.channel.send(&WorkloadRequest { payload: Some(payload) }, fd).await?;
            self.channel.recv::<WorkloadResponse>().await
        };
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((response, _))) => response,
            Ok(Err(error)) => {
                self.broken.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(error.into());
            }
            Err(_) => {
                self.broken.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(Error::Timeout);
            }
        };
        match response.payload {
            Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(()),
            Some(workload_response::Payload::Ack(ack)) => {
                Err(Error::Refused { uid: uid.to_owned(), reason: ack.error })
            }
            None => Err(Error::Refused { uid: uid.to_owned(), reason: "empty response".into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects to `path` from a thread whose effective user is `uid` (the raw syscall changes
    /// only the calling thread's credentials), and leaves the connection open.
    fn connect_as(uid: u32, path: std::path::PathBuf) -> std::io::Result<std::os::unix::net::UnixStream> {
        std::thread::spawn(move || {
            // SAFETY: changes only this short-lived thread's effective uid (-1: unchanged).
            if unsafe { libc::syscall(libc::SYS_setresuid, -1, uid, -1) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: fresh fd, owned from here on.
            let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (slot, byte) in addr.sun_path.iter_mut().zip(path.as_os_str().as_encoded_bytes()) {
                *slot = *byte as libc::c_char;
            }
            let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_un>()).unwrap();
            // SAFETY: addr is a valid sockaddr_un of length len.
            if unsafe {
                libc::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), (&raw const addr).cast(), len)
            } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(std::os::unix::net::UnixStream::from(socket))
        })
        .join()
        .unwrap()
    }

    #[tokio::test]
    async fn only_the_agents_own_user_may_connect_to_the_handoff_socket() {
        let dir = tempfile::tempdir().unwrap();
        // Anyone may reach the directory: the socket's own mode is what is tested.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = dir.path().join("zds.sock");
        let server = Server::bind(&path, Path::new("/proc")).unwrap();
        let nobody = 65534;
        let refused = connect_as(nobody, path.clone()).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied, "{refused}");
        // Should the file's mode be widened, the peer's credentials still decide.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        let mut stranger = connect_as(nobody, path.clone()).unwrap();
        // A proper hello (ZdsHello, version V1, encoded): only the credentials are wrong.
        std::io::Write::write_all(&mut stranger, &[0x08, 0x01]).unwrap();
        assert!(matches!(server.accept().await, Err(Error::Stranger(65534))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ztunnel_that_never_answers_times_out_and_breaks_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zds.sock");
        let server = Server::bind(&path, Path::new("/proc")).unwrap();
        // A ztunnel that says hello and then never acknowledges anything.
        let hung = tokio::spawn(async move {
            let channel = Channel::connect(&path).await.unwrap();
            channel.send(&zds::ZdsHello { version: zds::Version::V1 as i32 }, None).await.unwrap();
            std::future::pending::<()>().await;
            drop(channel);
        });
        let session = server.accept().await.unwrap();
        assert!(!session.broken());
        assert!(matches!(session.delete("uid-1").await, Err(Error::Timeout)));
        assert!(session.broken());
        assert!(matches!(session.snapshot_sent().await, Err(Error::Broken)), "no request after a timeout");
        hung.abort();
    }
}
