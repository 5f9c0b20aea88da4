//! The eBPF datapath: loads the kernel object built from `ebpf/`, attaches and pins its
//! programs, and keeps enrollment in its maps. The only user-space writer of `WEFT_ENROLLED`
//! and `WEFT_CONFIG`.
//!
//! Everything lives under a bpffs root (default `/sys/fs/bpf/weft`): `maps/<MAP>` and
//! `links/<program>` (plus `links/sk_lookup-<netns cookie>` per enrolled pod). Links are pinned,
//! so capture keeps working while no agent runs; a restarted agent adopts them (it attaches only
//! what is missing) and runs its own programs on every pinned link. A datapath pinned by an
//! agent of another ABI version is carried over ([`migrate`]). Only unenrolling a pod, retiring a
//! program and [`uninstall`] detach, each before its call returns ([`link::detach`]).
use std::{
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{Program, ProgramError},
};
use weft_ebpf_common::{ABI_VERSION, ConfigSlot, Counter, Enrolled, map, pin, program};

mod link;
mod migrate;

use link::AttachType;

/// The kernel object, built by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf"));

/// Name prefix of each enrolled pod's pinned sk_lookup link (the netns cookie follows).
const SK_LOOKUP_LINK: &str = "sk_lookup-";

/// Programs attached once per node to the pods' cgroup, with their attach types.
const CGROUP_PROGRAMS: [(&str, AttachType); 8] = [
    (program::CONNECT4, AttachType::CgroupInet4Connect),
    (program::CONNECT6, AttachType::CgroupInet6Connect),
    (program::GETPEERNAME4, AttachType::CgroupInet4Getpeername),
    (program::GETPEERNAME6, AttachType::CgroupInet6Getpeername),
    (program::SOCKOPS, AttachType::CgroupSockOps),
    (program::BIND4, AttachType::CgroupInet4Bind),
    (program::BIND6, AttachType::CgroupInet6Bind),
    (program::GETSOCKOPT, AttachType::CgroupGetsockopt),
];

/// Where the datapath attaches and pins.
#[derive(Debug, Clone)]
pub struct Config {
    /// cgroup v2 directory holding the node's pods (and the proxy): the programs see every
    /// socket of every process below it.
    pub cgroup: PathBuf,
    /// cgroup v2 directory holding the node's own processes, the kubelet among them (the
    /// hierarchy's root covers them all): connections they open from [`Config::node_netns`] to
    /// an enrolled pod reach the app without the proxy, so probes work whatever the policy and
    /// while the proxy restarts, as in Istio ambient.
    pub node_cgroup: PathBuf,
    /// The node's own network namespace (the agent's, on a node).
    pub node_netns: PathBuf,
    /// bpffs directory for this node's pins.
    pub bpffs_root: PathBuf,
    /// Capacity of the enrollment map, used only when the map is created.
    pub max_enrolled: u32,
}

impl Config {
    /// Pods under `cgroup`, and the node's own processes there too, in this process's network
    /// namespace (set [`Config::node_cgroup`] and [`Config::node_netns`] on a node).
    pub fn new(cgroup: impl Into<PathBuf>) -> Self {
        let cgroup = cgroup.into();
        Self {
            node_cgroup: cgroup.clone(),
            node_netns: PathBuf::from("/proc/self/ns/net"),
            cgroup,
            bpffs_root: PathBuf::from(pin::DEFAULT_ROOT),
            max_enrolled: weft_ebpf_common::MAX_ENROLLED,
        }
    }

    /// The same, pinning under `bpffs_root`.
    pub fn with_root(mut self, bpffs_root: impl Into<PathBuf>) -> Self {
        self.bpffs_root = bpffs_root.into();
        self
    }
}

/// A pod's addresses, for capture: outbound connects go to the proxy on these, and connects to
/// them stay inside the pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodAddrs {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl PodAddrs {
    /// The addresses as the enrollment map stores them.
    pub fn to_map_value(&self) -> Enrolled {
        Enrolled::new(self.ipv4, self.ipv6)
    }
}

/// Errors from installing, enrolling or reading the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    #[error("Linux {release} is too old: Weft's capture needs {}.{} or newer", MIN_KERNEL.0, MIN_KERNEL.1)]
    Kernel { release: String },
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching {name} to {target}")]
    Attach {
        name: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the datapath pinned at {root} (ABI version {pinned}) holds {map} in a layout this agent \
         (ABI version {ABI_VERSION}) cannot carry over; it is left running. Uninstall it first \
         (weft-agent uninstall), which returns the node's pods to plain networking until this \
         agent enrolls them again"
    )]
    Incompatible { root: String, pinned: u32, map: String },
    #[error("reading the pinned map {name}")]
    Pinned {
        name: String,
        #[source]
        source: MapError,
    },
    #[error("reading the eBPF object's map definitions: {0}")]
    Parse(String),
    #[error("enrollment map is full ({capacity} pods): pod not enrolled")]
    Full { capacity: usize },
    #[error("starting the eBPF debug log")]
    Log(#[source] aya_log::Error),
    #[error("finding the netns cookie")]
    NetnsCookie(#[source] io::Error),
}

/// What the rest of the agent needs from capture, so reconciliation can be tested without a
/// kernel. [`Datapath`] is the real implementation.
pub trait Capture {
    /// Names the addresses of the pod with network namespace `netns` before the proxy takes
    /// it, so the proxy's inbound listener there is registered for them as it listens
    /// (capture is not on yet); returns the pod's key (the netns cookie).
    fn hand_over(&mut self, netns: &File, addrs: PodAddrs) -> Result<u64, Error>;
    /// Enrolls the pod with network namespace `netns` (handed over too, if it was not);
    /// returns its key.
    fn enroll(&mut self, netns: &File, addrs: PodAddrs) -> Result<u64, Error>;
    /// Un-enrolls the pod with key `cookie` and forgets its handover; idempotent.
    fn unenroll(&mut self, cookie: u64) -> Result<(), Error>;
    /// Every pod the datapath knows, enrolled or only handed over: key and addresses.
    fn pods(&self) -> Result<Vec<(u64, Enrolled)>, Error>;
    /// The programs' counters.
    fn counters(&self) -> Vec<(Counter, u64)>;
    /// Exempts the marked sockets of processes in `cgroup` (the connected proxy's), and only
    /// those.
    fn trust_proxy_cgroup(&mut self, cgroup: &Path) -> Result<(), Error>;
}

impl Capture for Datapath {
    fn hand_over(&mut self, netns: &File, addrs: PodAddrs) -> Result<u64, Error> {
        Datapath::hand_over(self, netns, addrs)
    }

    fn enroll(&mut self, netns: &File, addrs: PodAddrs) -> Result<u64, Error> {
        Datapath::enroll(self, netns, addrs)
    }

    fn unenroll(&mut self, cookie: u64) -> Result<(), Error> {
        Datapath::unenroll(self, cookie)
    }

    fn pods(&self) -> Result<Vec<(u64, Enrolled)>, Error> {
        Datapath::pods(self)
    }

    fn trust_proxy_cgroup(&mut self, cgroup: &Path) -> Result<(), Error> {
        Datapath::trust_proxy_cgroup(self, cgroup)
    }

    fn counters(&self) -> Vec<(Counter, u64)> {
        Counter::ALL.iter().filter_map(|counter| Some((*counter, self.counter(*counter).ok()?))).collect()
    }
}

/// The loaded datapath of one node.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    root: PathBuf,
    /// The proxy cgroups this agent trusted, by id: those whose directory is gone are dropped.
    trusted: std::collections::HashMap<u64, PathBuf>,
}

impl Datapath {
    /// Loads the object, reusing pinned maps (carrying them over from another ABI version,
    /// see [`migrate`]), attaches every cgroup program whose link is not pinned yet and runs
    /// this agent's programs on the pinned ones.
    pub fn install(config: &Config) -> Result<Self, Error> {
        let root = config.bpffs_root.clone();
        let plan = migrate::Plan::new(&root, OBJECT)?;
        for dir in [pin::MAPS, pin::LINKS] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
        }
        plan.set_aside(&root)?;
        let loaded = EbpfLoader::new()
            .map_pin_path(root.join(pin::MAPS))
            .set_max_entries(map::ENROLLED, config.max_enrolled)
            .set_max_entries(map::POD_ADDRS, config.max_enrolled)
            .load(OBJECT);
        let ebpf = match loaded {
            Ok(ebpf) => ebpf,
            Err(error) => {
                plan.put_back(&root);
                return Err(Error::Load(error));
            }
        };
        let mut datapath = Self { ebpf, root, trusted: std::collections::HashMap::new() };
        plan.restore_config(&mut datapath.config_map()?)?;
        datapath.set_config(ConfigSlot::AbiVersion, ABI_VERSION)?;
        // Debug records cost a perf event each; an earlier agent may have left them on.
        datapath.set_config(ConfigSlot::DebugLog, 0)?;
        let programs = CGROUP_PROGRAMS.iter().map(|(name, _)| *name);
        for name in programs.chain([program::SK_LOOKUP, program::NODE_SOCKOPS]) {
            datapath.load_program(name)?;
        }
        // Named before any link runs the new programs: a rebuilt map starts empty.
        let node_netns =
            File::open(&config.node_netns).map_err(|source| io_error(&config.node_netns, source))?;
        let cookie = netns_cookie(&node_netns).map_err(Error::NetnsCookie)?;
        let name = map::NODE;
        let mut node: Array<_, u64> = Array::try_from(datapath.ebpf.map_mut(name).ok_or(missing_map(name))?)
            .map_err(|source| Error::Map { name, source })?;
        node.set(0, cookie, 0).map_err(|source| Error::Map { name, source })?;
        let node_programs = [(program::NODE_SOCKOPS, AttachType::CgroupSockOps, &config.node_cgroup)];
        let pod_programs = CGROUP_PROGRAMS.map(|(name, attach_type)| (name, attach_type, &config.cgroup));
        for (name, attach_type, target) in pod_programs.into_iter().chain(node_programs) {
            let pin_path = datapath.link_path(name);
            let cgroup = File::open(target).map_err(|source| io_error(target, source))?;
            if pin_path.exists() {
                let cgroup_id = cgroup.metadata().map_err(|source| io_error(target, source))?.ino();
                let attached_to = link::cgroup_id(&pin_path).map_err(|source| io_error(&pin_path, source))?;
                if attached_to == cgroup_id {
                    // An earlier agent's link: it runs this agent's program from now on, with
                    // no moment between the two.
                    link::update(&pin_path, datapath.program_fd(name)?).map_err(|source| Error::Attach {
                        name,
                        target: target.display().to_string(),
                        source,
                    })?;
                    continue;
                }
                // Attached to another cgroup (the setting changed since) or to none (its cgroup
                // was removed, and the kernel detached it): updated, it would capture nothing
                // here. This agent's own link replaces it.
                tracing::warn!(
                    link = name,
                    attached_to,
                    target = %target.display(),
                    "replacing a pinned link that is not attached to the configured cgroup"
                );
                link::detach(&pin_path).map_err(|source| io_error(&pin_path, source))?;
            }
            let link = link::create(datapath.program_fd(name)?, &cgroup, attach_type)
                .map_err(|source| Error::Attach { name, target: target.display().to_string(), source })?;
            link::pin(&link, &pin_path).map_err(|source| io_error(&pin_path, source))?;
        }
        datapath.update_pod_links()?;
        plan.finish(&datapath.root)?;
        Ok(datapath)
    }

    /// Names the addresses of the pod whose network namespace is `netns` (`WEFT_POD_ADDRS`):
    /// from now on a trusted proxy's listen on the inbound port there registers that socket
    /// for them. Capture is not switched on. Returns the netns cookie, the pod's key in the
    /// datapath. Idempotent.
    pub fn hand_over(&mut self, netns: &File, addrs: PodAddrs) -> Result<u64, Error> {
        let cookie = netns_cookie(netns).map_err(Error::NetnsCookie)?;
        Self::insert_pod(self.pod_map_mut(map::POD_ADDRS)?, map::POD_ADDRS, cookie, addrs.to_map_value())?;
        Ok(cookie)
    }

    /// Enrolls the pod whose network namespace is `netns`: its outbound connects go to the
    /// proxy, and inbound capture is attached to its netns. Returns the netns cookie, the
    /// pod's key in the datapath. Idempotent.
    pub fn enroll(&mut self, netns: &File, addrs: PodAddrs) -> Result<u64, Error> {
        let cookie = self.hand_over(netns, addrs)?;
        let was_enrolled = self.enrolled_map()?.get(&cookie, 0).is_ok();
        Self::insert_pod(self.enrolled_map()?, map::ENROLLED, cookie, addrs.to_map_value())?;
        let pin_path = self.sk_lookup_path(cookie);
        if !pin_path.exists() {
            let attached = link::create(self.program_fd(program::SK_LOOKUP)?, netns, AttachType::SkLookup)
                .map_err(|source| Error::Attach {
                    name: program::SK_LOOKUP,
                    target: format!("netns {cookie}"),
                    source,
                })
                .and_then(|link| link::pin(&link, &pin_path).map_err(|source| io_error(&pin_path, source)));
            if let Err(error) = attached {
                // Undo only what this call did; an earlier enrollment stays.
                if !was_enrolled && let Ok(mut enrolled) = self.enrolled_map() {
                    let _ = enrolled.remove(&cookie);
                }
                return Err(error);
            }
        }
        Ok(cookie)
    }

    /// Un-enrolls the pod with netns cookie `cookie`: new connections are no longer captured;
    /// established ones are untouched. Idempotent.
    pub fn unenroll(&mut self, cookie: u64) -> Result<(), Error> {
        let pin_path = self.sk_lookup_path(cookie);
        link::detach(&pin_path).map_err(|source| io_error(&pin_path, source))?;
        for name in [map::ENROLLED, map::POD_ADDRS] {
            match self.pod_map_mut(name)?.remove(&cookie) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(call)) if call.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(Error::Map { name, source }),
            }
        }
        Ok(())
    }

    /// Writes `cookie → value` into the pod map `name`; a full map says how many it holds.
    fn insert_pod(
        mut pods: HashMap<&mut MapData, u64, Enrolled>,
        name: &'static str,
        cookie: u64,
        value: Enrolled,
    ) -> Result<(), Error> {
        match pods.insert(cookie, value, 0) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(ref call)) if call.io_error.raw_os_error() == Some(libc::E2BIG) => {
                // Full: the entries there are the capacity.
                Err(Error::Full { capacity: pods.keys().count() })
            }
            Err(source) => Err(Error::Map { name, source }),
        }
    }

    /// Every pod the datapath knows, enrolled or only handed over: netns cookie and addresses.
    pub fn pods(&self) -> Result<Vec<(u64, Enrolled)>, Error> {
        let mut pods = self.enrolled()?;
        for (cookie, addrs) in self
            .pod_map(map::POD_ADDRS)?
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map { name: map::POD_ADDRS, source })?
        {
            if !pods.iter().any(|(known, _)| *known == cookie) {
                pods.push((cookie, addrs));
            }
        }
        Ok(pods)
    }

    /// Every enrolled pod: netns cookie and addresses.
    pub fn enrolled(&self) -> Result<Vec<(u64, Enrolled)>, Error> {
        let map_error = |source| Error::Map { name: map::ENROLLED, source };
        self.pod_map(map::ENROLLED)?.iter().collect::<Result<_, _>>().map_err(map_error)
    }

    /// Names `cgroup` (a cgroup v2 directory) as the node proxy's: from now on only sockets that
    /// carry the proxy mark *and* belong to a process in such a cgroup escape capture. Before
    /// the first call the mark alone is trusted (any pod with CAP_NET_RAW could set it).
    /// Proxies that are gone lose the trust here: cgroups this agent trusted whose directory no
    /// longer exists, and, when the map is full, any an earlier agent left.
    pub fn trust_proxy_cgroup(&mut self, cgroup: &Path) -> Result<(), Error> {
        // A cgroup v2 id is its directory's inode number.
        let id = std::fs::metadata(cgroup).map_err(|source| io_error(cgroup, source))?.ino();
        let name = map::PROXY_CGROUPS;
        let map_error = |source| Error::Map { name, source };
        let gone: Vec<u64> =
            self.trusted.iter().filter(|(_, dir)| !dir.exists()).map(|(id, _)| *id).collect();
        for id in &gone {
            self.trusted.remove(id);
        }
        self.trusted.insert(id, cgroup.to_owned());
        let mut cgroups: HashMap<_, u64, u8> =
            HashMap::try_from(self.ebpf.map_mut(name).ok_or(missing_map(name))?).map_err(map_error)?;
        for id in gone {
            let _ = cgroups.remove(&id);
        }
        if let Err(error) = cgroups.insert(id, 1, 0) {
            let MapError::SyscallError(ref call) = error else { return Err(map_error(error)) };
            if call.io_error.raw_os_error() != Some(libc::E2BIG) {
                return Err(map_error(error));
            }
            let inherited: Vec<u64> =
                cgroups.keys().filter_map(Result::ok).filter(|id| !self.trusted.contains_key(id)).collect();
            for id in inherited {
                let _ = cgroups.remove(&id);
            }
            cgroups.insert(id, 1, 0).map_err(map_error)?;
        }
        tracing::info!(cgroup = %cgroup.display(), id, "trusting the node proxy's cgroup");
        self.set_config(ConfigSlot::ProxyCgroupRequired, 1)
    }

    /// Switches on the programs' debug records and forwards them to this process's `log`
    /// output (aya-log). Must run inside a Tokio runtime. Records come from the programs the
    /// pinned cgroup links run, which may have been loaded by an earlier agent.
    pub fn start_debug_log(&mut self) -> Result<aya_log::EbpfLogger, Error> {
        let pin_path = self.link_path(program::CONNECT4);
        let id = link::program_id(&pin_path).map_err(|source| io_error(&pin_path, source))?;
        let logger = aya_log::EbpfLogger::init_from_id(id).map_err(Error::Log)?;
        self.set_config(ConfigSlot::DebugLog, 1)?;
        Ok(logger)
    }

    /// One counter, summed across CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, Error> {
        let name = map::COUNTERS;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(name).ok_or(missing_map(name))?)
                .map_err(|source| Error::Map { name, source })?;
        let per_cpu = counters.get(&(counter as u32), 0).map_err(|source| Error::Map { name, source })?;
        Ok(per_cpu.iter().sum())
    }

    fn set_config(&mut self, slot: ConfigSlot, value: u32) -> Result<(), Error> {
        let name = map::CONFIG;
        self.config_map()?.set(slot as u32, value, 0).map_err(|source| Error::Map { name, source })
    }

    fn config_map(&mut self) -> Result<Array<&mut MapData, u32>, Error> {
        let name = map::CONFIG;
        Array::try_from(self.ebpf.map_mut(name).ok_or(missing_map(name))?)
            .map_err(|source| Error::Map { name, source })
    }

    fn enrolled_map(&mut self) -> Result<HashMap<&mut MapData, u64, Enrolled>, Error> {
        self.pod_map_mut(map::ENROLLED)
    }

    /// A map of pods by netns cookie: [`map::ENROLLED`] or [`map::POD_ADDRS`].
    fn pod_map(&self, name: &'static str) -> Result<HashMap<&MapData, u64, Enrolled>, Error> {
        HashMap::try_from(self.ebpf.map(name).ok_or(missing_map(name))?)
            .map_err(|source| Error::Map { name, source })
    }

    fn pod_map_mut(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, u64, Enrolled>, Error> {
        HashMap::try_from(self.ebpf.map_mut(name).ok_or(missing_map(name))?)
            .map_err(|source| Error::Map { name, source })
    }

    fn load_program(&mut self, name: &'static str) -> Result<(), Error> {
        let program = self.ebpf.program_mut(name).ok_or(Error::MissingProgram { name })?;
        let loaded = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::CgroupSockopt(p) => p.load(),
            Program::SkLookup(p) => p.load(),
            _ => return Err(Error::MissingProgram { name }),
        };
        loaded.map_err(|source| Error::Program { name, source })
    }

    fn program_fd(&self, name: &'static str) -> Result<impl AsFd + '_, Error> {
        let program = self.ebpf.program(name).ok_or(Error::MissingProgram { name })?;
        program.fd().map_err(|source| Error::Program { name, source })
    }

    fn link_path(&self, name: &str) -> PathBuf {
        self.root.join(pin::LINKS).join(name)
    }

    /// Every pinned link by name, with the id of the program it runs.
    pub fn link_programs(&self) -> Result<Vec<(String, u32)>, Error> {
        let mut programs = Vec::new();
        for (name, path) in self.pinned_links()? {
            let id = link::program_id(&path).map_err(|source| io_error(&path, source))?;
            programs.push((name, id));
        }
        programs.sort();
        Ok(programs)
    }

    /// Points every enrolled pod's pinned inbound-capture link at this agent's program, and
    /// detaches links of programs this agent does not have (an agent of another ABI version
    /// pinned them: they would keep running its programs on its maps). A pod whose network
    /// namespace was destroyed while no agent ran is unenrolled: the kernel detached its link
    /// then, and refuses to update it (`ENOLINK`).
    fn update_pod_links(&mut self) -> Result<(), Error> {
        for (name, path) in self.pinned_links()? {
            if let Some(cookie) = name.strip_prefix(SK_LOOKUP_LINK) {
                let updated = link::update(&path, self.program_fd(program::SK_LOOKUP)?);
                match updated {
                    Ok(()) => {}
                    Err(error) if error.raw_os_error() == Some(libc::ENOLINK) => {
                        let cookie = cookie.parse().map_err(|_| Error::Attach {
                            name: program::SK_LOOKUP,
                            target: name.clone(),
                            source: io::Error::other("the pin's name holds no netns cookie"),
                        })?;
                        tracing::info!(cookie, "unenrolling a pod whose network namespace is gone");
                        self.unenroll(cookie)?;
                    }
                    Err(source) => {
                        return Err(Error::Attach { name: program::SK_LOOKUP, target: name, source });
                    }
                }
            } else if self.ebpf.program(&name).is_none() {
                tracing::info!(link = %name, "detaching a link of a program this agent does not have");
                link::detach(&path).map_err(|source| io_error(&path, source))?;
            }
        }
        Ok(())
    }

    /// Every pinned link: its file name and path.
    fn pinned_links(&self) -> Result<Vec<(String, PathBuf)>, Error> {
        let links = self.root.join(pin::LINKS);
        let entries = std::fs::read_dir(&links).map_err(|source| io_error(&links, source))?;
        Ok(entries
            .flatten()
            .map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.path()))
            .collect())
    }

    fn sk_lookup_path(&self, cookie: u64) -> PathBuf {
        self.link_path(&format!("{SK_LOOKUP_LINK}{cookie}"))
    }
}

/// The oldest kernel the programs load on: `bpf_get_netns_cookie` in sock_ops came in 5.15
/// (`SO_NETNS_COOKIE`, which enrollment uses, in 5.14).
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// Refuses a kernel older than [`MIN_KERNEL`], given its release (`/proc/sys/kernel/osrelease`),
/// with the message a user needs instead of a verifier error later.
pub fn check_kernel(release: &str) -> Result<(), Error> {
    let mut numbers = release.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().ok());
    let found = (numbers.next().flatten(), numbers.next().flatten());
    match found {
        (Some(major), Some(minor)) if (major, minor) >= MIN_KERNEL => Ok(()),
        _ => Err(Error::Kernel { release: release.trim().to_owned() }),
    }
}

/// Detaches and removes everything pinned under `bpffs_root`: capture has stopped for every
/// pod when this returns. A link that cannot be detached is still unpinned, with everything
/// else (the kernel then detaches it once nothing holds it); its error is returned at the end.
pub fn uninstall(bpffs_root: &Path) -> Result<(), Error> {
    let links = bpffs_root.join(pin::LINKS);
    let mut failed = None;
    match std::fs::read_dir(&links) {
        Ok(entries) => {
            for path in entries.flatten().map(|entry| entry.path()) {
                if let Err(source) = link::detach(&path) {
                    tracing::warn!(path = %path.display(), error = %source, "could not detach");
                    failed.get_or_insert(io_error(&path, source));
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => failed = Some(io_error(&links, source)),
    }
    match std::fs::remove_dir_all(bpffs_root) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error(bpffs_root, source)),
    }
    failed.map_or(Ok(()), Err)
}

/// The cookie of the network namespace `netns` refers to (`SO_NETNS_COOKIE` of a socket made
/// inside it).
pub fn netns_cookie(netns: &File) -> io::Result<u64> {
    crate::podns::run_in(netns, || {
        // SAFETY: plain socket syscall; ownership taken at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut cookie = 0u64;
        let mut len = libc::socklen_t::try_from(size_of::<u64>()).expect("invariant: 8 fits");
        // SAFETY: cookie and len are live and sized as passed.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    })
}

fn missing_map(name: &'static str) -> Error {
    Error::Map { name, source: MapError::InvalidName { name: name.to_owned() } }
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_older_than_the_minimum_are_refused_with_their_release() {
        assert!(check_kernel("6.18.44-fc-v1098\n").is_ok());
        assert!(check_kernel("5.15.0-91-generic").is_ok());
        let old = check_kernel("5.10.209").unwrap_err();
        assert!(old.to_string().contains("5.10.209") && old.to_string().contains("5.15"), "{old}");
        assert!(check_kernel("garbage").is_err());
    }
}
