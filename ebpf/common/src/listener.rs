//! For the node proxy (the only writer of [`crate::map::LISTENERS`]): registers its inbound
//! listener socket in a pod's netns, so the pod's `sk_lookup` program steers inbound TCP to it.
//! The kernel drops the entry by itself when the socket closes; a new listener (a restarted or
//! upgraded proxy) replaces it.
extern crate std;

use std::{net::IpAddr, os::fd::AsRawFd, path::Path};

use aya::maps::{Map, MapData, MapError, SockHash};

use crate::{Endpoint, map, pin};

/// Registers `listener` as the inbound socket for each of `pod_ips`, in the datapath pinned
/// under `bpffs_root`.
pub fn register(bpffs_root: &Path, pod_ips: &[IpAddr], listener: &impl AsRawFd) -> Result<(), MapError> {
    let data = MapData::from_pin(bpffs_root.join(pin::MAPS).join(map::LISTENERS))?;
    let mut listeners: SockHash<MapData, Endpoint> = SockHash::try_from(Map::SockHash(data))?;
    for ip in pod_ips {
        listeners.insert(Endpoint::from_ip(*ip, 0), listener.as_raw_fd(), 0)?;
    }
    Ok(())
}
