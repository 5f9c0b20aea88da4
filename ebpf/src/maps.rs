//! The maps, declared once (names must match `weft_ebpf_common::map`), and the counter helper.
//! Maps that outlive an agent restart are pinned by name.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
};
use weft_ebpf_common::{
    ConfigSlot, Connection, Counter, Endpoint, Enrolled, MAX_CONNECTIONS, MAX_ENROLLED, MAX_PROXY_CGROUPS,
    OrigDst,
};

#[map(name = "WEFT_ENROLLED")]
pub static ENROLLED: HashMap<u64, Enrolled> = HashMap::pinned(MAX_ENROLLED, 0);

#[map(name = "WEFT_ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "WEFT_ORIG_BY_PEER")]
pub static ORIG_BY_PEER: LruHashMap<Endpoint, OrigDst> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

// `static mut` because `SockHash::redirect_sk_lookup` takes `&mut self`; the kernel, not this
// program, owns the map's state, so no Rust-visible mutation happens through it.
#[map(name = "WEFT_LISTENERS")]
pub static mut LISTENERS: SockHash<Endpoint> = SockHash::pinned(MAX_ENROLLED * 2, 0);

#[map(name = "WEFT_PROXY_BINDS")]
pub static PROXY_BINDS: LruHashMap<u64, u8> = LruHashMap::pinned(MAX_ENROLLED * 4, 0);

#[map(name = "WEFT_POD_ADDRS")]
pub static POD_ADDRS: HashMap<u64, Enrolled> = HashMap::pinned(MAX_ENROLLED, 0);

#[map(name = "WEFT_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[map(name = "WEFT_CONFIG")]
pub static CONFIG: Array<u32> = Array::pinned(ConfigSlot::COUNT, 0);

#[map(name = "WEFT_PROXY_CGROUPS")]
pub static PROXY_CGROUPS: HashMap<u64, u8> = HashMap::pinned(MAX_PROXY_CGROUPS, 0);

#[map(name = "WEFT_NODE")]
pub static NODE: Array<u64> = Array::pinned(1, 0);

#[map(name = "WEFT_DIRECT")]
pub static DIRECT: LruHashMap<Connection, u8> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// Whether the agent asked for debug records (aya-log); off by default, one array read when off.
pub fn debug_enabled() -> bool {
    CONFIG.get(ConfigSlot::DebugLog as u32).is_some_and(|on| *on != 0)
}

/// Whether the current socket operation comes from the node proxy: the socket carries the proxy
/// mark and, once the agent has named the proxy's cgroups, the calling process is in one.
pub fn from_proxy(mark: u32) -> bool {
    if mark & weft_ebpf_common::PROXY_MARK_MASK != weft_ebpf_common::PROXY_MARK {
        return false;
    }
    let required = CONFIG.get(ConfigSlot::ProxyCgroupRequired as u32).is_some_and(|on| *on != 0);
    if !required {
        return true;
    }
    let cgroup = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    // SAFETY: a read-only lookup whose result is only tested for presence.
    unsafe { PROXY_CGROUPS.get(&cgroup) }.is_some()
}

/// Adds one to `counter` on this CPU.
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the kernel's pointer to this CPU's slot; per-CPU, so nothing races with us.
        unsafe { *slot += 1 };
    }
}
