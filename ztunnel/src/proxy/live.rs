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

use crate::{metrics::ConnectionLabels, proxy::Pod};

/// One open connection. It holds no text of its own: its pod and its metric labels (which
/// name its ends' identities, the destination's only through the mesh) are shared with the
/// proxy's other connections, so each open connection costs a few words here, not its names
/// again.
#[derive(Debug)]
pub struct Connection {
    pub pod: Arc<Pod>,
    pub labels: Arc<ConnectionLabels>,
    pub target: SocketAddr,
    /// Seconds since the Unix epoch.
    pub since: u64,
    /// From the pod's app to the destination (sent) and back (received), so far.
    pub counts: Counts,
}

impl Connection {
    /// The source's identity.
    pub fn source(&self) -> &str {
        &self.labels.source_principal
    }

    /// The destination's identity, or `-` outside the mesh (no mutual TLS, so no identity).
    pub fn destination(&self) -> &str {
        match self.labels.connection_security_policy == crate::metrics::MUTUAL_TLS {
            true => &self.labels.destination_principal,
            false => "-",
        }
    }
}

/// What `/config_dump` says of a connection.
impl Serialize for Connection {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Dumped<'a> {
            /// `namespace/name` of the pod it belongs to.
            pod: String,
            source: &'a str,
            destination: &'a str,
            target: SocketAddr,
            since: u64,
            #[serde(flatten)]
            counts: &'a Counts,
        }
        Dumped {
            pod: format!("{}/{}", self.pod.namespace, self.pod.name),
            source: self.source(),
            destination: self.destination(),
            target: self.target,
            since: self.since,
            counts: &self.counts,
        }
        .serialize(serializer)
    }
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

    /// Adds a connection of `pod` to `target`, between the ends its `labels` name.
    pub fn register(
        &self,
        pod: Arc<Pod>,
        labels: Arc<ConnectionLabels>,
        target: SocketAddr,
    ) -> Registration<'_> {
        let since =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
        let connection = Arc::new(Connection { pod, labels, target, since, counts: Counts::default() });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Reporter;

    fn labels(destination: &str, mutual_tls: bool) -> Arc<ConnectionLabels> {
        Arc::new(ConnectionLabels {
            reporter: Reporter::Source,
            source_workload: "client".into(),
            source_workload_namespace: "shop".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
            destination_workload: "db".into(),
            destination_workload_namespace: "shop".into(),
            destination_principal: destination.into(),
            connection_security_policy: if mutual_tls { "mutual_tls" } else { "none" }.into(),
        })
    }

    #[test]
    fn a_dump_names_the_pod_both_ends_and_a_dash_outside_the_mesh() {
        let live = Live::default();
        let pod = Arc::new(Pod {
            uid: "u1".into(),
            name: "client-0".into(),
            namespace: "shop".into(),
            service_account: "client".into(),
        });
        let target: SocketAddr = "10.0.0.2:5432".parse().unwrap();
        let tunnelled =
            live.register(pod.clone(), labels("spiffe://cluster.local/ns/shop/sa/db", true), target);
        tunnelled.connection.counts.sent.store(3, Ordering::Relaxed);
        let _direct = live.register(pod, labels(crate::metrics::UNKNOWN, false), target);
        let dumped =
            serde_json::to_value(live.dump().iter().map(|open| &**open).collect::<Vec<_>>()).unwrap();
        let since = dumped[0]["since"].clone();
        assert!(since.as_u64().is_some_and(|since| since > 0), "{dumped}");
        assert_eq!(
            dumped[0],
            serde_json::json!({
                "pod": "shop/client-0",
                "source": "spiffe://cluster.local/ns/shop/sa/client",
                "destination": "spiffe://cluster.local/ns/shop/sa/db",
                "target": "10.0.0.2:5432",
                "since": since,
                "sent": 3,
                "received": 0,
            })
        );
        assert_eq!(dumped[1]["destination"], "-", "{dumped}");
        drop(tunnelled);
        assert_eq!(live.dump().len(), 1, "a dropped registration leaves");
    }
}
