//! Giving the allocator's freed memory back to the kernel. glibc's malloc returns memory on its
//! own only from the top of a heap; what a burst frees below a chunk still in use stays resident
//! for the proxy's life. After the benchmark's bulk transfers the server node's proxy held 8 MiB
//! of heap with 0.7 MiB in use. `malloc_trim` releases the free pages wherever they are, so the
//! proxies call it periodically from a thread of their own, off the workers (it holds each
//! arena's lock while it walks that arena's free chunks, so a worker allocating meanwhile
//! waits). Memory freed since is given back within a period.
use std::time::Duration;

/// How often the proxies give freed memory back.
pub const TRIM_PERIOD: Duration = Duration::from_secs(1);

/// Starts a thread that gives the allocator's free pages back to the kernel every `period`.
pub fn return_freed_memory(period: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("trim".into()).spawn(move || {
        loop {
            // A period, not synchronisation.
            std::thread::sleep(period);
            trim();
        }
    })?;
    Ok(())
}

/// Gives every free page of every arena back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    // SAFETY: malloc_trim only takes the allocator's own locks; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory their own way.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn anonymous_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find_map(|line| line.strip_prefix("RssAnon:")).unwrap();
        line.trim().trim_end_matches("kB").trim().parse().unwrap()
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trimming_gives_back_memory_freed_between_allocations_in_use() {
        // 16 MiB in 4 KiB chunks, below the mmap threshold, so they come from a heap; every 64th
        // is kept, so what is freed lies below chunks in use wherever the heap's top is, and
        // glibc's own trimming (of the top only) cannot release it.
        let mut burst: Vec<Box<[u8]>> = (0..4096).map(|i| vec![i as u8; 4096].into_boxed_slice()).collect();
        let before_free = anonymous_kib();
        let mut index = 0;
        burst.retain(|_| {
            index += 1;
            index % 64 == 0
        });
        let kept = std::hint::black_box(burst);
        let freed = anonymous_kib();
        assert!(
            before_free.saturating_sub(freed) < 4096,
            "glibc released the freed chunks itself ({before_free} → {freed} KiB): the test no longer shows anything"
        );
        trim();
        let trimmed = anonymous_kib();
        assert!(
            freed.saturating_sub(trimmed) >= 12 * 1024,
            "trim gave back too little: {freed} → {trimmed} KiB of 15.75 MiB freed"
        );
        drop(kept);
    }
}
