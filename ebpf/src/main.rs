//! Weft's eBPF programs. Thin entry points with a `try_` twin; they never panic, and on an
//! internal error leave the socket as the kernel would have. Map and program names come from
//! `weft-ebpf-common`, whose only user-space reader and writer is the agent's datapath module.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::SockAddrContext,
};
use weft_ebpf_common::Counter;

#[map(name = "WEFT_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Verdict that lets the `connect()` proceed.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(_ctx: SockAddrContext) -> i32 {
    count(Counter::Connect4Seen);
    ALLOW
}

fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the kernel for this CPU's slot; per-CPU, so no race.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
