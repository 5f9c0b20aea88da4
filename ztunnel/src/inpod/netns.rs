//! A pod's network namespace, held open by fd, and the one way the proxy uses it: create a
//! socket inside it. The calling thread enters the pod's namespace, creates the socket, and
//! returns to the proxy's own namespace at once; the socket stays in the pod's.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
};

/// A pod's network namespace.
#[derive(Debug)]
pub struct Netns {
    pod: OwnedFd,
    home: Arc<OwnedFd>,
}

impl Netns {
    /// `pod`: the fd the agent handed over; `home`: the proxy's own namespace
    /// ([`home_netns`]).
    pub fn new(pod: OwnedFd, home: Arc<OwnedFd>) -> Self {
        Self { pod, home }
    }

    /// The namespace's inode number: two fds with the same inode are the same namespace.
    pub fn inode(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::File::from(self.pod.try_clone()?).metadata()?.ino())
    }

    /// Runs `work` (which must not block or await) with this thread inside the pod's namespace.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> io::Result<T> {
        setns(&self.pod)?;
        let result = work();
        if let Err(error) = setns(&self.home) {
            // A worker thread stuck in a pod's namespace would open later sockets there.
            eprintln!("fatal: cannot return to the proxy's network namespace: {error}");
            std::process::abort();
        }
        Ok(result)
    }

    /// The pod's addresses (every non-loopback address in its namespace).
    pub fn addresses(&self) -> io::Result<Vec<std::net::IpAddr>> {
        self.run(local_addresses)?
    }
}

/// The calling thread's network namespace, to come back to.
pub fn home_netns() -> io::Result<Arc<OwnedFd>> {
    Ok(Arc::new(std::fs::File::open("/proc/thread-self/ns/net")?.into()))
}

fn setns(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn local_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut entry = head;
    while !entry.is_null() {
        // SAFETY: entries of the list getifaddrs returned, read before freeing it.
        unsafe {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr.cast::<libc::sockaddr_in>());
                        addresses.push(std::net::IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr.cast::<libc::sockaddr_in6>());
                        addresses.push(std::net::IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    addresses.retain(|ip| {
        let link_local_v6 = matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        !ip.is_loopback() && !link_local_v6
    });
    Ok(addresses)
}
