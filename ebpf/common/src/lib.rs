//! Names and `#[repr(C)]` types that Weft's eBPF programs (`weft-ebpf`) and user space share:
//! program and map names, ports, the proxy's socket mark, and the map key and value layouts.
//! `no_std` so the kernel side can use it; the `user` feature adds `aya::Pod` impls. Byte order
//! is stated on every field.
#![no_std]

/// Version of the maps' layout and the programs' contract, recorded in the pinned datapath. An
/// agent of another version carries the pinned maps over map by map (the agent's
/// `datapath::migrate`): bump it with every change of a map's layout; a new meaning in an old
/// layout needs its own rule there.
pub const ABI_VERSION: u32 = 5;

/// `SO_MARK` the node proxy sets on every socket it opens, so capture leaves them alone.
/// Istio's ztunnel uses the same mark (0x539), so it runs on Weft's capture unmodified.
pub const PROXY_MARK: u32 = 0x539;
/// The bits of a mark that say "the proxy's" (as Istio matches `0x539/0xfff`): the proxy may
/// set other bits above them, as on [`DELIVERY_MARK`].
pub const PROXY_MARK_MASK: u32 = 0xfff;
/// `SO_MARK` of the proxy's sockets that deliver to the app in the pod from the client's own
/// address (`IP_TRANSPARENT`): the app's replies inherit it (`tcp_fwmark_accept`) and the pod's
/// routing rule for it ([`delivery`]) keeps them on loopback, back to the proxy, instead of
/// sending them out of the pod to the client's address.
pub const DELIVERY_MARK: u32 = PROXY_MARK | 0x1000;

/// The return path of the proxy's deliveries inside each enrolled pod: a rule sends packets
/// marked [`DELIVERY_MARK`] to a table whose only route makes every address local.
pub mod delivery {
    /// The routing table holding `local default dev lo`.
    pub const TABLE: u32 = 0x539;
    /// The rule's priority: after `local` (0), before `main` (32766).
    pub const RULE_PRIORITY: u32 = 32764;
}

/// Ports of the node proxy inside each enrolled pod's network namespace.
pub mod port {
    /// Outbound capture: enrolled pods' `connect()`s land here.
    pub const OUTBOUND: u16 = 15001;
    /// Inbound capture: TCP to the pod on any port but [`HBONE`] lands here.
    pub const INBOUND: u16 = 15006;
    /// HBONE (mTLS + HTTP/2 CONNECT) from other proxies; never captured.
    pub const HBONE: u16 = 15008;
}

/// Program names, as the kernel object exports them.
pub mod program {
    pub const CONNECT4: &str = "weft_connect4";
    pub const CONNECT6: &str = "weft_connect6";
    pub const GETPEERNAME4: &str = "weft_getpeername4";
    pub const GETPEERNAME6: &str = "weft_getpeername6";
    pub const SOCKOPS: &str = "weft_sockops";
    pub const BIND4: &str = "weft_bind4";
    pub const BIND6: &str = "weft_bind6";
    pub const GETSOCKOPT: &str = "weft_getsockopt";
    pub const SK_LOOKUP: &str = "weft_sk_lookup";
    /// On the node's own cgroup: records the connections the node itself opens.
    pub const NODE_SOCKOPS: &str = "weft_node_sockops";
}

/// Map names, as the kernel object exports them (the `#[map]` attributes must match).
pub mod map {
    /// netns cookie (`u64`) → [`crate::Enrolled`]. Written only by the agent.
    pub const ENROLLED: &str = "WEFT_ENROLLED";
    /// socket cookie (`u64`) → [`crate::OrigDst`] of a redirected connect. LRU, kernel-written.
    pub const ORIG_BY_COOKIE: &str = "WEFT_ORIG_BY_COOKIE";
    /// [`crate::Endpoint`] of the client side → [`crate::OrigDst`]. LRU, kernel-written.
    pub const ORIG_BY_PEER: &str = "WEFT_ORIG_BY_PEER";
    /// [`crate::Endpoint`] (pod IP, port 0) → the proxy's inbound listener socket in that pod.
    /// Kernel-written: a socket the proxy bound to [`crate::port::INBOUND`] ([`PROXY_BINDS`])
    /// registers itself when it listens in a pod of [`POD_ADDRS`], so any proxy (Istio's too)
    /// needs no part in it.
    pub const LISTENERS: &str = "WEFT_LISTENERS";
    /// netns cookie (`u64`) → [`crate::Enrolled`]: the pods handed to the proxy, from before
    /// the handoff (so the proxy's listen finds its pod) until the pod leaves the mesh.
    /// Written only by the agent.
    pub const POD_ADDRS: &str = "WEFT_POD_ADDRS";
    /// socket cookie (`u64`) → `u8`: sockets the proxy bound to the inbound port, until they
    /// listen. LRU, kernel-written.
    pub const PROXY_BINDS: &str = "WEFT_PROXY_BINDS";
    /// Per-CPU array of `u64` counters indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "WEFT_COUNTERS";
    /// Array of `u32` indexed by [`crate::ConfigSlot`]. Written only by the agent.
    pub const CONFIG: &str = "WEFT_CONFIG";
    /// cgroup id (`u64`) → `u8`: the node proxy's cgroups. Written only by the agent.
    pub const PROXY_CGROUPS: &str = "WEFT_PROXY_CGROUPS";
    /// One `u64`: the netns cookie of the node's own network namespace (0: none named yet).
    /// Written only by the agent.
    pub const NODE: &str = "WEFT_NODE";
    /// [`crate::Connection`] → [`crate::Opener`] as `u8`: TCP connections inbound capture lets
    /// straight through to the app, each once: those the node itself opened (the kubelet's
    /// probes among them) and the proxy's deliveries from the client's address. LRU,
    /// kernel-written.
    pub const DIRECT: &str = "WEFT_DIRECT";
}

/// Layout under the bpffs root (default `/sys/fs/bpf/weft`): `maps/<MAP>` and `links/<link>`.
pub mod pin {
    pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/weft";
    pub const MAPS: &str = "maps";
    pub const LINKS: &str = "links";
}

/// Default capacity of [`map::ENROLLED`]: pods per node.
pub const MAX_ENROLLED: u32 = 1024;
/// Capacity of the original-destination maps: concurrent redirected connections per node.
pub const MAX_CONNECTIONS: u32 = 65536;

/// `AF_INET` and `AF_INET6`, for [`Endpoint::family`] and [`OrigDst::family`].
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// An enrolled pod, keyed by its netns cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enrolled {
    /// The pod's IPv4 address, network byte order as a `u32`'s bytes; 0 when it has none.
    pub ipv4: u32,
    /// The pod's IPv6 address, network byte order; all zero when it has none.
    pub ipv6: [u32; 4],
}

impl Enrolled {
    /// A pod's addresses as the programs read them. An unspecified address (`0.0.0.0`, `::`)
    /// is the programs' "none", so it is stored as none.
    pub fn new(ipv4: Option<core::net::Ipv4Addr>, ipv6: Option<core::net::Ipv6Addr>) -> Self {
        Self {
            ipv4: ipv4.map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
            ipv6: ipv6.map_or([0; 4], |ip| Endpoint::from_ip(core::net::IpAddr::V6(ip), 0).ip),
        }
    }

    /// The addresses the programs see in this value.
    pub fn addresses(&self) -> (Option<core::net::Ipv4Addr>, Option<core::net::Ipv6Addr>) {
        let ipv4 = (self.ipv4 != 0).then(|| core::net::Ipv4Addr::from(self.ipv4.to_ne_bytes()));
        let ipv6 = (self.ipv6 != [0; 4]).then(|| {
            core::net::Ipv6Addr::from(core::array::from_fn::<u8, 16, _>(|i| {
                self.ipv6[i / 4].to_ne_bytes()[i % 4]
            }))
        });
        (ipv4, ipv6)
    }
}

/// An address and port, IPv4 written IPv4-mapped (`::ffff:a.b.c.d`) so one connection has one
/// key whichever socket family observes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Network byte order.
    pub ip: [u32; 4],
    /// Host byte order; 0 where the key is an address alone.
    pub port: u32,
}

/// A TCP connection as both ends see it, addresses as in [`Endpoint`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Connection {
    pub client: Endpoint,
    pub server: Endpoint,
}

/// Who opened a connection in [`map::DIRECT`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// A process of the node (the kubelet probing).
    Node = 1,
    /// The node proxy delivering to the app with the client's address.
    Proxy = 2,
}

/// The destination an application asked for before capture rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv4 addresses IPv4-mapped, like [`Endpoint::ip`]; network byte order.
    pub ip: [u32; 4],
    /// Host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`]: the family the application used.
    pub family: u16,
}

impl Endpoint {
    /// `ip` (network byte order) as an IPv4-mapped IPv6 address.
    pub const fn mapped_v4(ip: u32) -> [u32; 4] {
        [0, 0, 0xffff_u32.to_be(), ip]
    }

    /// The key form of `ip` and `port` (host byte order).
    pub fn from_ip(ip: core::net::IpAddr, port: u32) -> Self {
        let ip = match ip {
            core::net::IpAddr::V4(v4) => Self::mapped_v4(u32::from_ne_bytes(v4.octets())),
            core::net::IpAddr::V6(v6) => {
                let o = v6.octets();
                core::array::from_fn(|i| {
                    u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                })
            }
        };
        Self { ip, port }
    }

    /// Whether `ip` is IPv4-mapped, returning the IPv4 part.
    pub const fn as_v4(ip: &[u32; 4]) -> Option<u32> {
        if ip[0] == 0 && ip[1] == 0 && ip[2] == 0xffff_u32.to_be() { Some(ip[3]) } else { None }
    }
}

/// Slots of the per-CPU counter array. The agent sums them across CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Outbound connects of enrolled pods redirected to the proxy.
    Redirected = 0,
    /// Connects from enrolled pods left alone: loopback or the pod's own address.
    ExemptLocal = 1,
    /// Connects from the proxy's own sockets (marked, and from its cgroup), left alone.
    ExemptProxy = 2,
    /// Connects refused because the original destination could not be recorded (fail closed).
    RefusedNoState = 3,
    /// Inbound connections steered to the proxy's listener.
    InboundSteered = 4,
    /// Inbound connections refused: no proxy listener registered for the pod (fail closed).
    InboundRefused = 5,
    /// `SO_ORIGINAL_DST` answers given to the proxy.
    OrigDstAnswered = 6,
    /// Inbound connections the node itself opened (probes), let through to the app.
    InboundFromNode = 7,
    /// The proxy's deliveries from the client's address, let through to the app.
    InboundFromProxy = 8,
    /// Inbound listeners of the proxy registered for a pod's addresses as it listened.
    ListenerRegistered = 9,
    /// Listens on the inbound port in a handed-over pod that were not the proxy's, ignored.
    ListenerIgnored = 10,
    /// The proxy's listens that could not be registered (the listener map full).
    ListenerFailed = 11,
}

impl Counter {
    /// Number of slots; the size of the counters map.
    pub const COUNT: u32 = 12;
    /// Every counter, for readers that report them all.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Redirected,
        Counter::ExemptLocal,
        Counter::ExemptProxy,
        Counter::RefusedNoState,
        Counter::InboundSteered,
        Counter::InboundRefused,
        Counter::OrigDstAnswered,
        Counter::InboundFromNode,
        Counter::InboundFromProxy,
        Counter::ListenerRegistered,
        Counter::ListenerIgnored,
        Counter::ListenerFailed,
    ];
}

/// Slots of the config array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSlot {
    /// The [`ABI_VERSION`] of whoever installed the pinned datapath.
    AbiVersion = 0,
    /// Non-zero: programs emit aya-log debug records. Off by default.
    DebugLog = 1,
    /// Non-zero: a socket is the proxy's only if it carries [`PROXY_MARK`] *and* its process is
    /// in one of [`map::PROXY_CGROUPS`] (any pod with CAP_NET_RAW can set a mark).
    ProxyCgroupRequired = 2,
}

impl ConfigSlot {
    pub const COUNT: u32 = 3;
}

/// Capacity of [`map::PROXY_CGROUPS`].
pub const MAX_PROXY_CGROUPS: u32 = 8;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data of integers, valid for every bit pattern, no padding.
    unsafe impl aya::Pod for super::Enrolled {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Connection {}
}
