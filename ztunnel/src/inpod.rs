//! Pods handed over by the agent through ZDS (DESIGN.md §4a): connect to the agent's socket, say
//! hello, then for each message add, keep or remove a pod's proxy and ack it. The agent waits
//! for each ack before switching capture on, so an ack means the pod's listeners are bound.
//! After "snapshot sent", pods not announced since this connection began are dropped. When the
//! agent goes away the pods keep running and the connection is retried.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use weft_api::zds::{self, Channel, WorkloadRequest, WorkloadResponse, workload_request::Payload};

use crate::proxy::{Context, Pod, PodProxy};

pub mod netns;

/// The pods this proxy serves.
#[derive(Debug)]
pub struct Pods {
    context: Arc<Context>,
    home: Arc<std::os::fd::OwnedFd>,
    running: HashMap<String, PodProxy>,
}

impl Pods {
    pub fn new(context: Arc<Context>) -> std::io::Result<Self> {
        Ok(Self { context, home: netns::home_netns()?, running: HashMap::new() })
    }

    /// Uids of the pods being served.
    pub fn uids(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    async fn add(&mut self, pod: Pod, netns_fd: std::os::fd::OwnedFd) -> Result<(), String> {
        let netns = Arc::new(netns::Netns::new(netns_fd, self.home.clone()));
        // The same pod announced again (a restarted agent's snapshot): keep serving it, and its
        // established connections, untouched.
        if let Some(running) = self.running.get(&pod.uid)
            && running.pod == pod
            && netns.inode().is_ok_and(|inode| inode == running.netns_inode)
        {
            return Ok(());
        }
        // Otherwise re-adding replaces: the old listeners close first so the new ones own the
        // ports. The tunnels pooled for the old proxy were opened in its namespace, which may
        // be gone with its interface (a recreated sandbox's, announced by a restarted agent):
        // the new one's connections must not ride them.
        if let Some(old) = self.running.remove(&pod.uid) {
            self.context.pool.forget_source(&old.addresses);
        }
        let proxy = PodProxy::start(self.context.clone(), pod.clone(), netns).await.map_err(|error| {
            let message = format!("{error:#}");
            tracing::warn!(pod = %pod.uid, error = %message, "pod proxy failed to start");
            message
        })?;
        self.running.insert(pod.uid, proxy);
        self.publish();
        Ok(())
    }

    async fn remove(&mut self, uid: &str) {
        if let Some(proxy) = self.running.remove(uid) {
            self.context.pool.forget_source(&proxy.addresses);
            tracing::info!(pod = %uid, "pod proxy stopped");
            self.publish();
            // Certificates only for identities that still have a pod here.
            let trust_domain = self.context.trust_domain.clone();
            let remaining: Vec<_> =
                self.running.values().map(|proxy| proxy.pod.identity(&trust_domain)).collect();
            self.context.identities.retain(|identity| remaining.contains(identity)).await;
        }
    }

    /// Resolves once every pod's listeners are closed and connections ended (after a drain).
    pub async fn finished(&mut self) {
        for proxy in self.running.values_mut() {
            proxy.finished().await;
        }
    }

    /// Shows the current pods to the admin endpoint.
    fn publish(&self) {
        let pods = self.running.values().map(|proxy| (proxy.pod.clone(), proxy.addresses.clone())).collect();
        *self.context.pods.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = pods;
    }
}

/// Serves the handoff socket at `path` until `shutdown` resolves, reconnecting when the agent
/// restarts. Pods already held keep being served meanwhile. An agent that closes the connection
/// before sending anything has turned this proxy away (a newer one serves the node during an
/// upgrade): it is asked again ever less often, and this proxy keeps serving its pods (sharing
/// their ports with the newer one) until it is stopped and drains.
pub async fn run(path: PathBuf, pods: &mut Pods, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut heard = false;
        let session = async {
            let channel = Channel::connect(&path).await.map_err(zds::Error::Io)?;
            tracing::info!(path = %path.display(), "connected to the agent");
            serve(&channel, pods, &mut heard).await
        };
        tokio::select! {
            () = &mut shutdown => return,
            ended = session => match ended {
                Err(zds::Error::Closed) if heard => {
                    tracing::info!("agent closed the handoff connection; reconnecting");
                    backoff = Duration::from_millis(50);
                }
                Err(zds::Error::Closed) => {
                    tracing::info!("agent turned this proxy away (a newer one serves the node?); asking again later");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::debug!(%error, "handoff connection failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Ok(()) => {}
            },
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}

/// One handoff session; `heard` is set once the agent sent a request.
async fn serve(channel: &Channel, pods: &mut Pods, heard: &mut bool) -> Result<(), zds::Error> {
    channel.send(&zds::ZdsHello { version: zds::Version::V1 as i32 }, None).await?;
    let mut announced: HashSet<String> = HashSet::new();
    loop {
        let (request, fd) = channel.recv::<WorkloadRequest>().await?;
        *heard = true;
        let result = match request.payload {
            Some(Payload::Add(add)) => match fd {
                Some(fd) => {
                    let info = add.workload_info.unwrap_or_default();
                    announced.insert(add.uid.clone());
                    let pod = Pod {
                        uid: add.uid,
                        name: info.name,
                        namespace: info.namespace,
                        service_account: info.service_account,
                    };
                    pods.add(pod, fd).await
                }
                None => Err("add without a netns fd".to_owned()),
            },
            Some(Payload::Keep(keep)) => {
                announced.insert(keep.uid);
                Ok(())
            }
            Some(Payload::Del(del)) => {
                announced.remove(&del.uid);
                pods.remove(&del.uid).await;
                Ok(())
            }
            Some(Payload::SnapshotSent(_)) => {
                for uid in pods.uids().into_iter().filter(|uid| !announced.contains(uid)) {
                    pods.remove(&uid).await;
                }
                pods.context.ready.store(true, std::sync::atomic::Ordering::Release);
                Ok(())
            }
            None => Err("empty request".to_owned()),
        };
        let ack = zds::Ack { error: result.err().unwrap_or_default() };
        channel
            .send(
                &WorkloadResponse { payload: Some(weft_api::zds::workload_response::Payload::Ack(ack)) },
                None,
            )
            .await?;
    }
}
