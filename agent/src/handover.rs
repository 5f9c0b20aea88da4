//! Two node proxies in one pod during an upgrade: the new proxy's listeners bind beside the old
//! one's (`SO_REUSEPORT`), and when the old one closes its listeners to drain, connections still
//! waiting in their queues would be reset. `net.ipv4.tcp_migrate_req` (both families) hands them
//! to the listener that remains in the group instead. Set in each enrolled pod, through the
//! host's /proc as [`crate::return_path`]'s switches are; reset when the pod leaves.
use std::{fs::File, io, path::Path};

use crate::podns;

const MIGRATE: &str = "sys/net/ipv4/tcp_migrate_req";

/// Turns migration on in the pod whose namespace is `netns`; `proc_root` is a writable /proc.
pub fn install(netns: &File, proc_root: &Path) -> io::Result<()> {
    set(netns, proc_root, "1")
}

/// Turns it off again (the kernel's default).
pub fn remove(netns: &File, proc_root: &Path) -> io::Result<()> {
    set(netns, proc_root, "0")
}

fn set(netns: &File, proc_root: &Path, value: &'static str) -> io::Result<()> {
    let switch = proc_root.join(MIGRATE);
    podns::run_in(netns, move || std::fs::write(switch, value))
}
