//! Names and `#[repr(C)]` types that Weft's eBPF programs (`weft-ebpf`) and the agent's datapath
//! share. `no_std` so the kernel side can use it; the `user` feature adds `aya::Pod` impls for the
//! agent. Nothing here does I/O.
#![no_std]

/// Program names, as the kernel object exports them.
pub mod program {
    /// `cgroup/connect4`: sees every IPv4 `connect()` from sockets in the attached cgroup.
    pub const CONNECT4: &str = "weft_connect4";
}

/// Map names, as the kernel object exports them.
pub mod map {
    /// Per-CPU array of `u64` counters indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "WEFT_COUNTERS";
}

/// Slots of the per-CPU counter array. The agent sums them across CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `connect()` calls the connect4 program saw.
    Connect4Seen = 0,
}

impl Counter {
    /// Number of slots; the size of the counters map.
    pub const COUNT: u32 = 1;
}
