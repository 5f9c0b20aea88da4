//! The connections a proxy carries now, for `/config_dump` and `weftctl connections`: which pod,
//! who to whom, where, since when, and the bytes so far — counted as they pass, with one
//! relaxed atomic add per read or write.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;

use weft_proxy::relay::Counts;

/// One open connection.
#[derive(Debug, Serialize)]
pub struct Connection {
    /// `namespace/name` of the pod it belongs to.
    pub pod: String,
    pub source: String,
    /// The destination's identity, or `-` outside the mesh.
    pub destination: String,
    pub target: SocketAddr,
    /// Seconds since the Unix epoch.
    pub since: u64,
    /// From the pod's app to the destination (sent) and back (received), so far.
    #[serde(flatten)]
    pub counts: Counts,
}

/// The open connections of a node's proxy.
#[derive(Debug, Default)]
pub struct Live {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

/// A connection's place in [`Live`]; dropping it removes the connection.
#[derive(Debug)]
pub struct Registration<'a> {
    live: &'a Live,
    id: u64,
    pub connection: Arc<Connection>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.live.open().remove(&self.id);
    }
}

impl Live {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a connection of `pod` from `source` to `destination` at `target`.
    pub fn register(
        &self,
        pod: String,
        source: String,
        destination: String,
        target: SocketAddr,
    ) -> Registration<'_> {
        let since =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let connection =
            Arc::new(Connection { pod, source, destination, target, since, counts: Counts::default() });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open().insert(id, connection.clone());
        Registration { live: self, id, connection }
    }

    /// Every open connection, oldest first.
    pub fn dump(&self) -> Vec<Arc<Connection>> {
        let mut open: Vec<(u64, Arc<Connection>)> =
            self.open().iter().map(|(id, connection)| (*id, connection.clone())).collect();
        open.sort_by_key(|(id, _)| *id);
        open.into_iter().map(|(_, connection)| connection).collect()
    }
}
