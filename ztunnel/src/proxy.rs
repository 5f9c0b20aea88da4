//! The per-pod proxy: three listeners inside each enrolled pod's network namespace — outbound
//! capture (15001), inbound plaintext capture (15006) and HBONE (15008) — and what each does
//! with a connection. Every socket the proxy opens carries the proxy mark, so capture leaves it
//! alone, and is created inside the pod's namespace.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinSet,
};
use weft_ebpf_common::{PROXY_MARK, port};

use weft_proxy::{
    identity::{Identity, manager::Manager},
    state::State,
};

use crate::inpod::netns::Netns;

mod deliver;
mod inbound;
pub mod live;
mod outbound;

pub use weft_proxy::hbone::pool::{Peer, Pool, Settings as PoolSettings, Tunnel};

/// What plaintext from outside the mesh may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboundPlaintext {
    /// Allowed (PERMISSIVE).
    #[default]
    Allow,
    /// Refused (STRICT).
    Deny,
}

/// Shared by every pod's proxy on the node.
#[derive(Debug)]
pub struct Context {
    pub trust_domain: String,
    pub state: Arc<State>,
    pub identities: Arc<Manager>,
    pub pool: Pool,
    pub plaintext: InboundPlaintext,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set once the agent's first snapshot has been applied.
    pub ready: std::sync::atomic::AtomicBool,
    /// Turns true when the proxy drains: listeners close, open connections run to their end.
    pub drain: tokio::sync::watch::Sender<bool>,
    /// How many in-pod listeners are open (so a drain knows when they all closed).
    pub listeners: tokio::sync::watch::Sender<usize>,
    /// The connections open now (outbound, as the source's proxy sees them).
    pub live: live::Live,
    /// Per service: where round robin over its endpoints stands.
    pub round_robin: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The pods being served, for the admin endpoint.
    pub pods: std::sync::RwLock<Vec<(Pod, Vec<IpAddr>)>>,
    /// Connections one pod may have through the proxy at once ([`Admission`]).
    pub max_connections_per_pod: usize,
}

/// A pod's share of the proxy: at most so many connections at once across its listeners.
#[derive(Debug, Clone)]
pub struct Admission(Arc<tokio::sync::Semaphore>);

impl Admission {
    fn new(connections: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(connections)))
    }

    /// A place for one more connection, held until it is dropped; none when the pod has its
    /// share already (counted and logged: the connection is closed).
    fn admit(
        &self,
        context: &Context,
        reporter: crate::metrics::Reporter,
        pod: &Pod,
        peer: SocketAddr,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.0.clone().try_acquire_owned().ok();
        if permit.is_none() {
            context.metrics.failed(reporter, "pod_connection_limit");
            tracing::debug!(pod = %pod.uid, %peer, limit = context.max_connections_per_pod, "connection over the pod's limit closed");
        }
        permit
    }
}

/// How long a connection waits for the first complete configuration before it is closed.
const CONFIG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Services whose round-robin positions are kept before they are all reset (services come and
/// go; the positions only spread load).
const ROUND_ROBIN_SERVICES: usize = 4096;

impl Context {
    /// Drops the connection metrics of workloads neither the configuration nor this node's
    /// pods know any more.
    pub fn forget_gone_workloads(&self) {
        let mut names = self.state.metrics_names();
        for (pod, _) in self.pods.read().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
            names.insert((pod.namespace.clone(), pod.name.clone()));
        }
        let gone = self
            .metrics
            .retain_workloads(|namespace, name| names.contains(&(namespace.to_owned(), name.to_owned())));
        if gone > 0 {
            tracing::debug!(series = gone, "dropped the metrics of workloads that are gone");
        }
    }

    /// Decides an inbound connection to `pod` once the configuration is complete (a DENY
    /// policy may still be on its way before) and holds the pod's workload; `None` if the
    /// configuration did not arrive in time. Both waits share [`CONFIG_WAIT`].
    pub async fn authorize(
        &self,
        pod: &Pod,
        connection: &weft_proxy::authz::Connection<'_>,
    ) -> Option<weft_proxy::authz::Verdict> {
        let patience = self.synced_within_config_wait().await?;
        Some(self.state.authorize_known(pod.local(), connection, patience).await)
    }

    /// Waits until the configuration is complete, within [`CONFIG_WAIT`]; what is left of it
    /// then, for waiting on a particular resource, or `None` if it did not complete in time.
    pub async fn synced_within_config_wait(&self) -> Option<std::time::Duration> {
        let started = tokio::time::Instant::now();
        tokio::time::timeout(CONFIG_WAIT, self.state.synced()).await.ok()?;
        Some(CONFIG_WAIT.saturating_sub(started.elapsed()))
    }

    /// Resolves, with the verdict, once a configuration change no longer allows a connection
    /// that was allowed: open connections follow policy, not just new ones. Every open
    /// connection's task holds this wait for as long as it lives, so it keeps only how to
    /// describe the connection (`connection`), never the description or a verdict; and it is
    /// an async block, as an async fn's future would keep its arguments twice.
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
    pub fn revoked<'a>(
        &self,
        pod: &Pod,
        connection: impl Fn() -> weft_proxy::authz::Connection<'a>,
    ) -> impl Future<Output = weft_proxy::authz::Verdict> {
        async move {
            loop {
                // Checked once waiting, so a change just before is not missed.
                let next = self.state.next_change();
                // Each verdict lives in a block of its own that ends before any wait: a local
                // kept to the end of the loop's body, though dropped, would be kept through the
                // waits, and the wait below is every open connection's for as long as it lives.
                let incomplete = {
                    let verdict = self.state.authorize(pod.local(), &connection());
                    if !verdict.incomplete() && !verdict.allowed() {
                        return verdict;
                    }
                    verdict.incomplete()
                };
                // Addresses and policies arrive apart: a workload may name a policy a moment
                // before it comes. Only what stays missing cuts an open connection. Boxed, as is
                // rare: inline its timer would size the wait below.
                if incomplete {
                    let connection = &connection;
                    let verdict = Box::pin(async move {
                        self.state.authorize_known(pod.local(), &connection(), CONFIG_WAIT).await
                    })
                    .await;
                    if !verdict.allowed() {
                        return verdict;
                    }
                }
                next.await;
            }
        }
    }

    /// The next round-robin position for service `key`.
    pub fn next_endpoint(&self, key: &str) -> usize {
        let mut positions = self.round_robin.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if positions.len() >= ROUND_ROBIN_SERVICES && !positions.contains_key(key) {
            positions.clear();
        }
        let position = positions.entry(key.to_owned()).or_insert(0);
        let next = *position;
        *position = position.wrapping_add(1);
        next
    }

    /// Metric labels for a connection from `source` (a pod here, or a workload by address) to
    /// `destination`.
    /// The name metrics give the local `pod` at `address`: its workload's, once the
    /// configuration names it, else the pod's own.
    pub fn metrics_name(&self, pod: &Pod, address: IpAddr) -> String {
        match self.state.workload_by_ip(address) {
            Some(workload) if workload.is(pod.local()) => workload.metrics_name().to_owned(),
            _ => pod.name.clone(),
        }
    }

    pub fn labels(
        &self,
        reporter: crate::metrics::Reporter,
        source: Option<(&str, &str, &Identity)>,
        destination: Option<(&str, &str, &Identity)>,
        mutual_tls: bool,
    ) -> crate::metrics::ConnectionLabels {
        let part = |end: Option<(&str, &str, &Identity)>| match end {
            Some((name, namespace, identity)) => {
                (name.to_owned(), namespace.to_owned(), identity.to_string())
            }
            None => {
                let unknown = crate::metrics::UNKNOWN;
                (unknown.to_owned(), unknown.to_owned(), unknown.to_owned())
            }
        };
        let (source_workload, source_workload_namespace, source_principal) = part(source);
        let (destination_workload, destination_workload_namespace, destination_principal) = part(destination);
        crate::metrics::ConnectionLabels {
            reporter,
            source_workload,
            source_workload_namespace,
            source_principal,
            destination_workload,
            destination_workload_namespace,
            destination_principal,
            connection_security_policy: if mutual_tls { crate::metrics::MUTUAL_TLS } else { "none" }
                .to_owned(),
        }
    }
}

/// A pod as the agent announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

impl Pod {
    /// How the configuration's workloads are matched to it.
    pub fn local(&self) -> weft_proxy::state::LocalPod<'_> {
        weft_proxy::state::LocalPod {
            name: &self.name,
            namespace: &self.namespace,
            service_account: &self.service_account,
        }
    }

    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// Errors starting a pod's proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding port {port} in pod {pod}")]
    Bind {
        pod: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("reading pod {pod}'s network namespace")]
    Netns {
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate for pod {pod}")]
    Certificate {
        pod: String,
        #[source]
        source: weft_proxy::identity::ca::Error,
    },
    #[error("TLS for pod {pod}")]
    Tls {
        pod: String,
        #[source]
        source: weft_proxy::tls::Error,
    },
}

/// A running pod proxy; dropping it closes its listeners and its connections.
#[derive(Debug)]
pub struct PodProxy {
    pub pod: Pod,
    pub addresses: Vec<IpAddr>,
    /// The pod's network namespace (its inode tells a re-announced pod from a new one).
    pub netns_inode: u64,
    tasks: JoinSet<()>,
}

impl PodProxy {
    /// Binds the pod's listeners, registers the inbound one with the datapath, and starts
    /// serving. Returns once the listeners are bound: the agent may switch capture on.
    pub async fn start(context: Arc<Context>, pod: Pod, netns: Arc<Netns>) -> Result<Self, Error> {
        let addresses = netns.addresses().map_err(|source| Error::Netns { pod: pod.uid.clone(), source })?;
        let netns_inode = netns.inode().map_err(|source| Error::Netns { pod: pod.uid.clone(), source })?;
        let bind = |port| {
            listen_in(&netns, port).map_err(|source| Error::Bind { pod: pod.uid.clone(), port, source })
        };
        let (outbound, inbound, hbone) =
            (bind(port::OUTBOUND)?, bind(port::INBOUND)?, bind(weft_proxy::hbone::PORT)?);
        // A certificate now (so a pod whose identity the CA refuses fails here, visibly); the
        // HBONE listener asks again per connection and so follows renewals.
        let identity = pod.identity(&context.trust_domain);
        let cert = context
            .identities
            .fetch(&identity)
            .await
            .map_err(|source| Error::Certificate { pod: pod.uid.clone(), source })?;
        weft_proxy::tls::server_config(&cert)
            .map_err(|source| Error::Tls { pod: pod.uid.clone(), source })?;
        let deliverer = Arc::new(
            deliver::Deliverer::new(netns.clone())
                .map_err(|source| Error::Netns { pod: pod.uid.clone(), source })?,
        );

        let mut tasks = JoinSet::new();
        let pod_ref = Arc::new(pod.clone());
        // Counted now, before any task runs: a drain that starts meanwhile waits for these too.
        let listening = || Listening::new(&context);
        let admission = Admission::new(context.max_connections_per_pod);
        tasks.spawn(outbound::serve(
            outbound,
            listening(),
            context.clone(),
            pod_ref.clone(),
            admission.clone(),
            netns.clone(),
        ));
        tasks.spawn(inbound::serve_plaintext(
            inbound,
            listening(),
            context.clone(),
            pod_ref.clone(),
            admission.clone(),
            deliverer.clone(),
        ));
        let original_source = deliverer.original_source();
        tasks.spawn(inbound::serve_hbone(
            hbone,
            listening(),
            context.clone(),
            pod_ref.clone(),
            admission,
            addresses.clone(),
            deliverer,
        ));
        tracing::info!(pod = %pod.uid, name = %pod.name, namespace = %pod.namespace, ?addresses, original_source, "pod proxy started");
        Ok(Self { pod, addresses, netns_inode, tasks })
    }

    /// Resolves when every listener has closed and every connection ended (after a drain).
    pub async fn finished(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Counts an open listener in [`Context::listeners`] for as long as it lives.
#[derive(Debug)]
struct Listening(tokio::sync::watch::Sender<usize>);

impl Listening {
    fn new(context: &Context) -> Self {
        context.listeners.send_modify(|open| *open += 1);
        Self(context.listeners.clone())
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// A listener's end when draining: stop accepting at once (a new proxy's listener on the same
/// port takes the new connections), let the open ones run to their end.
async fn finish(listener: TcpListener, listening: Listening, mut connections: JoinSet<()>) {
    drop(listener);
    drop(listening);
    while connections.join_next().await.is_some() {}
}

/// A dual-stack, marked listener on `[::]:port` inside the pod; `SO_REUSEPORT` so a new proxy
/// can bind beside this one during an upgrade.
fn listen_in(netns: &Netns, port: u16) -> std::io::Result<TcpListener> {
    let socket = netns.run(|| marked_socket(socket2::Domain::IPV6))??;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// How long a TCP connect may take before the next endpoint is tried (the kernel's own SYN
/// retries would take minutes against a black hole).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

// An inbound CONNECT is answered within its configuration wait and its connect to the app:
// sooner than a client proxy gives up on the answer, so a refusal reaches it with its reason.
const _: () = assert!(
    CONFIG_WAIT.as_secs() + CONNECT_TIMEOUT.as_secs() < weft_proxy::hbone::client::RESPONSE_TIMEOUT.as_secs()
);

/// How the pool dials for a pod: from inside its netns, with a marked socket; its connections
/// are keyed by the pod's address.
struct NetnsDial<'a> {
    netns: &'a Netns,
    source: IpAddr,
}

impl weft_proxy::hbone::pool::Dial for NetnsDial<'_> {
    fn source(&self) -> IpAddr {
        self.source
    }

    fn dial(&self, peer: SocketAddr) -> impl Future<Output = std::io::Result<TcpStream>> + Send {
        connect_in(self.netns, peer)
    }
}

/// Connects to `to` from inside the pod, with a marked socket.
async fn connect_in(netns: &Netns, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = netns.run(|| marked_socket(socket2::Domain::for_address(to)))??;
    connect_socket(socket, to).await
}

/// Connects `socket` (non-blocking) to `to`, within [`CONNECT_TIMEOUT`].
async fn connect_socket(socket: socket2::Socket, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {to}")))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn marked_socket(domain: socket2::Domain) -> std::io::Result<socket2::Socket> {
    proxy_socket(domain, PROXY_MARK)
}

/// TCP keepalive on every socket of the proxy (a listener's passes to the connections it
/// accepts): after 3 idle minutes a probe every 30 s, and the connection dropped after 9 go
/// unanswered. A peer that vanished without FIN or RST (a node gone, a half-open connection)
/// no longer holds a relay and its descriptors forever; idle connections whose peer is alive
/// (database pools) stay. Istio's ztunnel keeps its connections alive the same way.
fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(180))
        .with_interval(std::time::Duration::from_secs(30))
        .with_retries(9)
}

/// A non-blocking TCP socket of the proxy carrying `mark`, with [`keepalive`]. Must be made
/// inside the namespace it is for.
fn proxy_socket(domain: socket2::Domain, mark: u32) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)?;
    socket.set_mark(mark)?;
    socket.set_tcp_keepalive(&keepalive())?;
    Ok(socket)
}

/// `SO_ORIGINAL_DST` of an accepted connection, answered by the datapath.
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in6>()).expect("invariant: fits");
    // SAFETY: addr and len are live and sized as passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IPV6,
            SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr).to_canonical();
    Ok(SocketAddr::new(ip, u16::from_be(addr.sin6_port)))
}

/// Whether `port` is one of the proxy's own in-pod ports: delivering there would connect the
/// proxy to itself (a loop any client could start).
fn is_proxy_port(port: u16) -> bool {
    [port::OUTBOUND, port::INBOUND, weft_proxy::hbone::PORT].contains(&port)
}

/// `addr` with an IPv4-mapped address shown as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    #[test]
    fn connections_a_proxy_listener_accepts_probe_a_silent_peer() {
        let listener = super::proxy_socket(socket2::Domain::IPV4, super::PROXY_MARK).unwrap();
        listener.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
        listener.listen(1).unwrap();
        let address = listener.local_addr().unwrap().as_socket().unwrap();
        let _client = std::net::TcpStream::connect(address).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.keepalive().unwrap());
        let wanted = (std::time::Duration::from_secs(180), std::time::Duration::from_secs(30), 9);
        let got = (
            accepted.tcp_keepalive_time().unwrap(),
            accepted.tcp_keepalive_interval().unwrap(),
            accepted.tcp_keepalive_retries().unwrap(),
        );
        assert_eq!(got, wanted);
    }

    /// An open connection's task is most of what it costs while idle (DESIGN.md: at most 2 KiB
    /// per idle proxied connection, both nodes). Each took 1024 bytes while their async fns
    /// kept their arguments twice and their locals kept what had moved out of them; the HBONE
    /// stream's took 768 while it kept its setup's parts and the connection's source address.
    #[test]
    fn an_open_connections_task_takes_under_a_kib_on_either_node() {
        fn returned<A, B, C, D, E, G, F>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
            size_of::<F>()
        }
        let outbound = weft_proxy::census::task_bytes(returned(super::outbound::proxy));
        assert!(outbound <= 640, "an outbound connection's task takes {outbound} bytes");
        let plaintext = weft_proxy::census::task_bytes(returned(super::inbound::plaintext));
        assert!(plaintext <= 640, "an inbound plaintext connection's task takes {plaintext} bytes");
        let stream = weft_proxy::hbone::server::stream_task_bytes::<super::inbound::Delivery>();
        assert!(stream <= 640, "an inbound HBONE stream's task takes {stream} bytes");
    }
}
