//! The node agent's reconcile loop: watch this node's pods and every namespace's labels, keep
//! the set of enrolled pods equal to the set that should be, and keep the connected ztunnel in
//! step. Enrolling is fail-safe — hand the pod to ztunnel, wait for its ack (its listeners are
//! bound), then switch capture on; leaving is the reverse. A ztunnel that (re)connects gets the
//! whole snapshot. After a restart the pinned capture is adopted, and enrollments of pods that
//! vanished meanwhile are removed once a snapshot has been delivered. A pod whose sandbox was
//! recreated (a new network namespace under the same uid) is enrolled again in the new one.
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    runtime::{reflector, watcher},
};
use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    datapath::{Capture, PodAddrs},
    enrollment, handoff, handover, podns, return_path,
    status::{Stage, State, Status},
};

/// How often failed enrollments (netns not found yet, ztunnel refused) are retried.
const RETRY: Duration = Duration::from_secs(1);
/// How often the agent looks for recreated sandboxes without a pod event to prompt it.
const SANDBOX_CHECK: Duration = Duration::from_secs(10);

/// Where this agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    /// `/proc` of the host PID namespace.
    pub proc_root: PathBuf,
    pub zds_socket: PathBuf,
    /// Where `/metrics` and `/healthz/ready` are served (cluster-reachable).
    pub monitoring: std::net::SocketAddr,
    /// Where all three and `/config_dump` are served (node-local: the dump is inventory).
    pub admin: std::net::SocketAddr,
    /// The agent's own pod, to tell Weft's removal from an update at shutdown; without it
    /// capture always stays.
    pub own_pod: Option<crate::removal::OwnPod>,
    /// Whose label enrolls pods and whose annotation marks them captured.
    pub labels: weft_api::enrollment::Labels,
}

/// How the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Restarted or updated: capture stays pinned for the next agent.
    Kept,
    /// Weft is being removed: every pod left the mesh; the datapath is to be uninstalled.
    Removed,
}

/// A pod that should be enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    name: String,
    namespace: String,
    service_account: String,
    addrs: PodAddrs,
}

/// A pod that is enrolled: handed to ztunnel and captured.
#[derive(Debug)]
struct Enrolled {
    wanted: Wanted,
    netns: File,
    cookie: u64,
}

/// Runs until `shutdown` resolves. Prints `ready` once the first snapshot reached ztunnel.
pub async fn run<C: Capture>(
    client: kube::Client,
    config: Config,
    capture: &mut C,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Stopped> {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let mut watchers = JoinSet::new();
    let pods = weft_api::watch::reflect(
        &mut watchers,
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node)),
        changed_tx.clone(),
    );
    let namespaces = weft_api::watch::reflect(
        &mut watchers,
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        changed_tx,
    );
    pods.wait_until_ready().await?;
    namespaces.wait_until_ready().await?;

    let status = std::sync::Arc::new(Status::new(config.node.clone(), Some(client.clone()), config.labels));
    let (monitoring, admin, serving) =
        weft_api::admin::bind_monitoring_and_admin(config.monitoring, config.admin, status.clone()).await?;
    tracing::info!(addr = %monitoring, "serving metrics and readiness");
    tracing::info!(addr = %admin, "serving config_dump, metrics and readiness");
    let _serving = AbortOnDrop(tokio::spawn(serving));
    let mut incoming = handoff::Server::bind(&config.zds_socket, &config.proc_root)?.incoming();
    let mut agent = Agent { config, capture, enrolled: HashMap::new(), session: None, ready: false, status };
    let mut retry = tokio::time::interval(RETRY);
    // A recreated sandbox comes with a change of the pod's status (its containers restart),
    // which may reach the agent before the new sandbox's processes do: the slow tick catches
    // those.
    let mut sandbox_check = tokio::time::interval(SANDBOX_CHECK);
    let mut check_sandboxes = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = changed.recv() => check_sandboxes = true,
            _ = retry.tick() => {}
            _ = sandbox_check.tick() => check_sandboxes = true,
            // Always listening: during an upgrade the new ztunnel connects while the old one
            // still serves; the newer takes the pods over (its inbound listeners replace the old
            // one's in capture; the other ports are shared by both until the old one stops and
            // drains), and the older, once dropped, is turned away when it reconnects.
            accepted = incoming.recv() => match accepted.ok_or_else(|| anyhow::anyhow!("the handoff listener stopped"))? {
                Ok(session) if agent.session.as_ref().is_some_and(|current| !session.newer_than(current)) => {
                    tracing::info!("an older ztunnel connected while a newer one serves the node; refused");
                }
                Ok(session) => match agent.capture.trust_proxy_cgroup(session.proxy_cgroup()) {
                    Ok(()) => {
                        if agent.session.is_some() {
                            tracing::info!("a newer ztunnel connected; it takes the node's pods over");
                        }
                        tracing::info!("ztunnel connected; sending the snapshot");
                        agent.session = Some(session);
                        let now_wanted = wanted(&pods, &namespaces, agent.config.labels);
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = agent.send_snapshot(&now_wanted) => {}
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot exempt the connected ztunnel from capture; refusing it"),
                },
                Err(error) => tracing::warn!(%error, "handoff connection failed"),
            },
            () = closed(agent.session.as_ref()), if agent.session.is_some() => {
                tracing::info!("ztunnel disconnected; capture stays on (fail closed) until it returns");
                agent.session = None;
            }
            Some(ended) = watchers.join_next() => anyhow::bail!("a Kubernetes watch ended: {ended:?}"),
        }
        let wanted = wanted(&pods, &namespaces, agent.config.labels);
        let look_for_new_sandboxes = std::mem::take(&mut check_sandboxes);
        // Shutdown never waits for ztunnel (each request is bounded anyway).
        tokio::select! {
            () = &mut shutdown => break,
            () = async {
                if look_for_new_sandboxes {
                    agent.leave_replaced_sandboxes().await;
                }
                agent.reconcile(&wanted).await;
            } => {}
        }
        if agent.session.as_ref().is_some_and(handoff::Session::broken) {
            // Closing it makes ztunnel reconnect and take the whole snapshot again.
            tracing::warn!("ztunnel stopped answering the handoff; dropping the connection");
            agent.session = None;
        }
        agent.report_capture(&pods);
        agent.status.set_datapath_counters(&agent.capture.counters());
    }
    let Some(own_pod) = agent.config.own_pod.clone() else { return Ok(Stopped::Kept) };
    match crate::removal::weft_removed(&client, &own_pod, &namespaces).await {
        Ok(true) => {
            tracing::info!("Weft is being removed: every pod leaves the mesh");
            agent.release_all();
            Ok(Stopped::Removed)
        }
        Ok(false) => Ok(Stopped::Kept),
        Err(error) => {
            tracing::warn!(%error, "cannot tell whether Weft is being removed; capture stays");
            Ok(Stopped::Kept)
        }
    }
}

/// Undoes in a leaving pod's network namespace what enrollment set there for the proxy.
fn restore_pod(uid: &str, netns: &std::fs::File, proc_root: &std::path::Path) {
    if let Err(error) = handover::remove(netns, proc_root) {
        tracing::warn!(pod = %uid, %error, "resetting request migration failed");
    }
    if let Err(error) = return_path::remove(netns, proc_root) {
        tracing::warn!(pod = %uid, %error, "removing the return path failed");
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn closed(session: Option<&handoff::Session>) {
    match session {
        Some(session) => session.closed().await,
        None => std::future::pending().await,
    }
}

/// The pods of this node that should be enrolled now, by uid.
fn wanted(
    pods: &reflector::Store<Pod>,
    namespaces: &reflector::Store<Namespace>,
    labels: weft_api::enrollment::Labels,
) -> BTreeMap<String, Wanted> {
    let namespaces: HashMap<String, std::sync::Arc<Namespace>> =
        namespaces.state().into_iter().filter_map(|ns| Some((ns.metadata.name.clone()?, ns))).collect();
    pods.state()
        .iter()
        .filter_map(|pod| {
            let namespace = pod.metadata.namespace.clone()?;
            if !enrollment::wanted(pod, namespaces.get(&namespace).map(|ns| ns.as_ref()), labels) {
                return None;
            }
            let mut addrs = PodAddrs::default();
            let status = pod.status.as_ref()?;
            for ip in status.pod_ips.iter().flatten().filter_map(|ip| ip.ip.parse::<IpAddr>().ok()) {
                match ip {
                    IpAddr::V4(v4) => addrs.ipv4 = Some(v4),
                    IpAddr::V6(v6) => addrs.ipv6 = Some(v6),
                }
            }
            let wanted = Wanted {
                name: pod.metadata.name.clone()?,
                namespace,
                service_account: pod
                    .spec
                    .as_ref()?
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                addrs,
            };
            Some((pod.metadata.uid.clone()?, wanted))
        })
        .collect()
}

struct Agent<'a, C> {
    config: Config,
    capture: &'a mut C,
    enrolled: HashMap<String, Enrolled>,
    session: Option<handoff::Session>,
    ready: bool,
    status: std::sync::Arc<Status>,
}

impl<C: Capture> Agent<'_, C> {
    /// Brings the enrolled set to `wanted`: removals first, then additions (only with a
    /// ztunnel connected, since capture without a proxy refuses traffic).
    async fn reconcile(&mut self, wanted: &BTreeMap<String, Wanted>) {
        let gone: Vec<String> = self
            .enrolled
            .iter()
            .filter(|(uid, enrolled)| wanted.get(*uid) != Some(&enrolled.wanted))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.leave(&uid).await;
        }
        // Pending pods no longer wanted are no longer reported.
        for uid in self.status.uids() {
            if !wanted.contains_key(&uid) && !self.enrolled.contains_key(&uid) {
                self.status.remove(&uid);
            }
        }
        if self.session.is_none() {
            // Once ztunnel has been here and gone: capture stays on for enrolled pods (their
            // traffic is refused, fail closed) and nothing new joins — say so, not "enrolled".
            // (Before its first connection there is nothing to report yet.)
            if self.ready {
                let away =
                    || State::Pending { stage: Stage::Handoff, error: "ztunnel is not connected".into() };
                for (uid, pod) in wanted {
                    self.status.set(uid, &pod.name, &pod.namespace, away());
                }
            }
            return;
        }
        for (uid, pod) in wanted {
            if !self.enrolled.contains_key(uid) {
                self.join(uid, pod).await;
            }
        }
        // A pod handed over whose handoff or enrollment failed, then deleted, left its
        // addresses behind: swept here, not only when ztunnel reconnects, before they fill the
        // map. (Only once ready: until the first snapshot `wanted` may still be incomplete.)
        if self.ready {
            self.sweep_stale(wanted);
        }
    }

    async fn join(&mut self, uid: &str, wanted: &Wanted) {
        let Some(session) = &self.session else { return };
        let pending = |stage, error: String| State::Pending { stage, error };
        let netns = match podns::open(&self.config.proc_root, uid) {
            Ok(netns) => netns,
            Err(error) => {
                tracing::warn!(pod = %uid, name = %wanted.name, %error, "cannot enroll yet; will retry");
                self.status.set(
                    uid,
                    &wanted.name,
                    &wanted.namespace,
                    pending(Stage::Netns, error.to_string()),
                );
                return;
            }
        };
        // Before the handoff: the proxy reads, when it takes the pod, whether the path is there.
        if let Err(error) = return_path::install(&netns, wanted.addrs, &self.config.proc_root) {
            tracing::warn!(pod = %uid, %error, "no return path: the app will see the pod's own address as its clients'");
        }
        if let Err(error) = handover::install(&netns, &self.config.proc_root) {
            tracing::warn!(pod = %uid, %error, "no request migration: a proxy upgrade may reset connections being accepted");
        }
        if let Err(error) = self.capture.hand_over(&netns, wanted.addrs) {
            tracing::warn!(pod = %uid, %error, "cannot hand the pod over yet; will retry");
            self.status.set(uid, &wanted.name, &wanted.namespace, pending(Stage::Capture, error.to_string()));
            return;
        }
        let pod = handoff::Pod {
            uid: uid.to_owned(),
            name: wanted.name.clone(),
            namespace: wanted.namespace.clone(),
            service_account: wanted.service_account.clone(),
            netns,
        };
        if let Err(error) = session.add(&pod).await {
            tracing::warn!(pod = %uid, %error, "ztunnel did not take the pod; will retry");
            self.status.set(uid, &wanted.name, &wanted.namespace, pending(Stage::Handoff, error.to_string()));
            return;
        }
        match self.capture.enroll(&pod.netns, wanted.addrs) {
            Ok(cookie) => {
                tracing::info!(pod = %uid, name = %wanted.name, namespace = %wanted.namespace, cookie, "enrolled");
                let preexisting = match podns::established_elsewhere(&pod.netns) {
                    Ok(found) => {
                        if !found.is_empty() {
                            tracing::warn!(pod = %uid, name = %wanted.name, count = found.len(), connections = ?found, "connections opened before enrollment stay outside the mesh until they close");
                        }
                        found.len()
                    }
                    Err(error) => {
                        tracing::warn!(pod = %uid, %error, "could not count the pod's open connections");
                        0
                    }
                };
                self.status.enrolled(uid, &wanted.name, &wanted.namespace, preexisting);
                self.status.captured(uid, &wanted.name, &wanted.namespace, true);
                self.enrolled
                    .insert(uid.to_owned(), Enrolled { wanted: wanted.clone(), netns: pod.netns, cookie });
            }
            Err(error) => {
                tracing::warn!(pod = %uid, %error, "capture refused the pod; handing it back");
                let _ = session.delete(uid).await;
                self.status.set(
                    uid,
                    &wanted.name,
                    &wanted.namespace,
                    pending(Stage::Capture, error.to_string()),
                );
            }
        }
    }

    async fn leave(&mut self, uid: &str) {
        let Some(enrolled) = self.enrolled.remove(uid) else { return };
        // Peers stop tunnelling to it first: its HBONE listener goes with the handoff delete.
        self.status.captured(uid, &enrolled.wanted.name, &enrolled.wanted.namespace, false);
        if let Err(error) = self.capture.unenroll(enrolled.cookie) {
            tracing::warn!(pod = %uid, %error, "un-enrolling failed");
        }
        if let Some(session) = &self.session
            && let Err(error) = session.delete(uid).await
        {
            tracing::warn!(pod = %uid, %error, "ztunnel did not drop the pod");
        }
        restore_pod(uid, &enrolled.netns, &self.config.proc_root);
        tracing::info!(pod = %uid, name = %enrolled.wanted.name, "left the mesh");
        self.status.remove(uid);
    }

    /// Takes out of the mesh every pod whose sandbox was recreated: the same uid, its processes
    /// in another network namespace than the enrolled one (the kubelet replaced a dead sandbox;
    /// with static addressing even the IPs stay). Reconcile then enrolls the new namespace as
    /// it would a new pod's; until then that namespace is not captured, like any pod's before
    /// enrollment. A pod with no process at all (between two sandboxes) is left as it is, and
    /// so is one with a process still in the enrolled namespace (a container that made a
    /// namespace of its own).
    async fn leave_replaced_sandboxes(&mut self) {
        if self.enrolled.is_empty() {
            return;
        }
        let running = match podns::namespaces(&self.config.proc_root) {
            Ok(running) => running,
            Err(error) => {
                tracing::warn!(%error, "cannot look for recreated pod sandboxes");
                return;
            }
        };
        let replaced: Vec<(String, String)> = self
            .enrolled
            .iter()
            .filter(|(uid, enrolled)| {
                let Some(now) = running.get(uid.as_str()) else { return false };
                podns::identity(&enrolled.netns).is_ok_and(|identity| !now.contains(&identity))
            })
            .map(|(uid, enrolled)| (uid.clone(), enrolled.wanted.name.clone()))
            .collect();
        for (uid, name) in replaced {
            tracing::info!(pod = %uid, %name, "the pod's sandbox was recreated; enrolling its new network namespace");
            self.leave(&uid).await;
        }
    }

    /// Returns every enrolled pod to plain networking (Weft is being removed): capture and the
    /// return path go; ztunnel is going too.
    fn release_all(&mut self) {
        for (uid, enrolled) in self.enrolled.drain() {
            if let Err(error) = self.capture.unenroll(enrolled.cookie) {
                tracing::warn!(pod = %uid, %error, "un-enrolling failed");
            }
            restore_pod(&uid, &enrolled.netns, &self.config.proc_root);
            tracing::info!(pod = %uid, name = %enrolled.wanted.name, "back to plain networking");
        }
    }

    /// Makes every pod's capture annotation say what is true: set on the pods enrolled here,
    /// absent elsewhere. Patches go out asynchronously and may fail or land out of order; this
    /// runs after every reconcile (and the 1 s tick), so a wrong annotation does not last.
    fn report_capture(&self, pods: &reflector::Store<Pod>) {
        // Until the first snapshot this agent does not know yet what is captured.
        if !self.ready {
            return;
        }
        for pod in pods.state() {
            let (Some(uid), Some(name), Some(namespace)) =
                (&pod.metadata.uid, &pod.metadata.name, &pod.metadata.namespace)
            else {
                continue;
            };
            let enrolled = self.enrolled.contains_key(uid);
            if enrollment::annotated(&pod, self.config.labels) != enrolled {
                self.status.captured(uid, name, namespace, enrolled);
            }
        }
    }

    /// Hands a (re)connected ztunnel every enrolled pod, then joins the wanted ones not yet
    /// enrolled (so a just-restarted agent announces every pod, and ztunnel drops none that is
    /// still wanted), then the snapshot marker; then drops pinned enrollments nobody accounts
    /// for (pods deleted while no agent ran).
    async fn send_snapshot(&mut self, wanted: &BTreeMap<String, Wanted>) {
        let Some(session) = &self.session else { return };
        let mut refused = Vec::new();
        for (uid, enrolled) in &self.enrolled {
            let netns = match enrolled.netns.try_clone() {
                Ok(netns) => netns,
                Err(error) => {
                    tracing::warn!(pod = %uid, %error, "cannot resend the pod");
                    continue;
                }
            };
            let pod = handoff::Pod {
                uid: uid.clone(),
                name: enrolled.wanted.name.clone(),
                namespace: enrolled.wanted.namespace.clone(),
                service_account: enrolled.wanted.service_account.clone(),
                netns,
            };
            if let Err(error) = session.add(&pod).await {
                // Capture stays on (fail closed); forgetting the pod makes reconcile join it
                // again, retrying the handoff.
                tracing::warn!(pod = %uid, %error, "ztunnel did not take the pod back; will retry");
                refused.push(uid.clone());
            } else {
                self.status.set(uid, &enrolled.wanted.name, &enrolled.wanted.namespace, State::Enrolled);
            }
        }
        for uid in refused {
            self.enrolled.remove(&uid);
        }
        self.reconcile(wanted).await;
        let Some(session) = &self.session else { return };
        if let Err(error) = session.snapshot_sent().await {
            tracing::warn!(%error, "snapshot not acknowledged");
            return;
        }
        self.sweep_stale(wanted);
        if !self.ready {
            println!("ready");
            self.ready = true;
            self.status.set_ready();
        }
    }

    /// Removes pinned enrollments and handovers nobody accounts for: not an enrolled pod's, and
    /// without the addresses of a wanted pod not enrolled yet (whose join is pending: it has no
    /// known cookie, and its capture is never dropped). So a wanted pod enrolled under another
    /// cookie, whose sandbox was recreated while no agent ran, loses its old namespace's.
    fn sweep_stale(&mut self, wanted: &BTreeMap<String, Wanted>) {
        let known: Vec<u64> = self.enrolled.values().map(|enrolled| enrolled.cookie).collect();
        let joining: Vec<weft_ebpf_common::Enrolled> = wanted
            .iter()
            .filter(|(uid, _)| !self.enrolled.contains_key(*uid))
            .map(|(_, pod)| pod.addrs.to_map_value())
            .collect();
        match self.capture.pods() {
            Ok(pinned) => {
                let stale = pinned
                    .into_iter()
                    .filter(|(cookie, addresses)| !known.contains(cookie) && !joining.contains(addresses));
                for (cookie, addresses) in stale {
                    let (ipv4, ipv6) = addresses.addresses();
                    tracing::info!(
                        cookie,
                        ?ipv4,
                        ?ipv6,
                        "removing the pinned enrollment or handover of a pod that is gone"
                    );
                    if let Err(error) = self.capture.unenroll(cookie) {
                        tracing::warn!(cookie, %error, "removing a stale enrollment failed");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "listing pinned enrollments failed"),
        }
    }
}
