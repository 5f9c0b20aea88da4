//! Giving the allocator's freed memory back to the kernel. glibc's malloc returns memory on its
//! own only from the top of a heap; what a burst frees below a chunk still in use stays resident
//! for the proxy's life. After the benchmark's bulk transfers the server node's proxy held 8 MiB
//! of heap with 0.7 MiB in use. `malloc_trim` releases the free pages wherever they are, so the
//! proxies call it periodically from a thread of their own, off the workers (it holds each
//! arena's lock while it walks that arena's free chunks, so a worker allocating meanwhile
//! waits). Memory freed since is given back within a period.
//!
//! With that thread, glibc's own giving back is only a cost: by default a free that leaves more
//! than 128 KiB at a heap's top shrinks the heap, and an allocation of 128 KiB or more is a
//! mapping of its own, so a proxy moving bytes faulted fresh pages in all the time (55 000 a
//! second in a one-connection HBONE transfer). So the proxies raise both thresholds and leave
//! the giving back to the thread. That needs a single heap: `malloc_trim` gives back the top
//! of the main heap only, not of the heaps glibc makes for other threads, whose tops would then
//! stay as large as their busiest moment. The workers share the main heap's lock: every
//! allocation their own small caches (a few chunks of each size under 1 KiB) cannot serve takes
//! it, a relay's 256 KiB chunks among them, and it waits while the trim walks the heap. On these
//! 2 cores no contention shows in the profiles.
use std::time::Duration;

/// How often the proxies give freed memory back.
pub const TRIM_PERIOD: Duration = Duration::from_secs(1);

/// A heap's top up to this size stays between trims, and allocations below it come from the
/// heap, not a mapping of their own (32 MiB is the most glibc takes for the latter).
const KEPT_UNTIL_TRIMMED: i32 = 32 * 1024 * 1024;

/// Has the allocator keep one heap and leave giving memory back to a thread that gives the
/// free pages back to the kernel every [`TRIM_PERIOD`]. Call it first in `main`, before any
/// other thread is started: glibc gives each thread that allocated before a heap of its own,
/// which later threads may be handed too.
pub fn set_up() -> std::io::Result<()> {
    one_heap_returned_by_trim()?;
    std::thread::Builder::new().name("trim".into()).spawn(|| {
        loop {
            // A period, not synchronisation.
            std::thread::sleep(TRIM_PERIOD);
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

/// One heap for the threads started from now on, and trim and mapping thresholds raised to
/// [`KEPT_UNTIL_TRIMMED`] (setting them also ends their adjusting themselves).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_heap_returned_by_trim() -> std::io::Result<()> {
    let settings = [
        (libc::M_ARENA_MAX, 1, "M_ARENA_MAX"),
        (libc::M_TRIM_THRESHOLD, KEPT_UNTIL_TRIMMED, "M_TRIM_THRESHOLD"),
        (libc::M_MMAP_THRESHOLD, KEPT_UNTIL_TRIMMED, "M_MMAP_THRESHOLD"),
    ];
    for (parameter, value, name) in settings {
        // SAFETY: mallopt only sets the allocator's parameters; it has no preconditions.
        if unsafe { libc::mallopt(parameter, value) } != 1 {
            return Err(std::io::Error::other(format!("glibc refused mallopt({name}, {value})")));
        }
    }
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_heap_returned_by_trim() -> std::io::Result<()> {
    Ok(())
}

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

    /// Set in the process [`a_workers_freed_memory_stays_until_trimmed`] starts to probe.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const PROBE: &str = "WEFT_ALLOCATOR_PROBE";

    /// What the probe prints once it measured.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const PROBED: &str = "probed: a worker's freed block stayed until trimmed";

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_workers_freed_memory_stays_until_trimmed() {
        if std::env::var_os(PROBE).is_some() {
            return probe();
        }
        // A process of its own, where the settings come before every thread but the one the
        // test runs on and the harness's (in the proxies they come before every thread). The
        // test's thread has a heap of its own, so the worker it starts is handed a heap in
        // use: glibc tries the main heap first, which no other thread is holding then.
        let probed = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "allocator::tests::a_workers_freed_memory_stays_until_trimmed"])
            .args(["--test-threads", "1", "--nocapture"])
            .env(PROBE, "1")
            .output()
            .unwrap();
        let output = String::from_utf8_lossy(&probed.stdout) + String::from_utf8_lossy(&probed.stderr);
        assert!(probed.status.success(), "the probe failed: {output}");
        assert!(output.contains(PROBED), "the probe did not run (renamed?): {output}");
    }

    /// What a worker started after the settings sees: 8 MiB in one piece (glibc's defaults
    /// would map it on its own and unmap it when freed) stays once freed, and goes back with
    /// the trim (it would not from a heap of the worker's own).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn probe() {
        one_heap_returned_by_trim().unwrap();
        std::thread::spawn(|| {
            let before = anonymous_kib();
            drop(std::hint::black_box(vec![1u8; 8 * 1024 * 1024]));
            let freed = anonymous_kib();
            assert!(
                freed.saturating_sub(before) >= 6 * 1024,
                "the allocator gave a freed block back itself ({before} → {freed} KiB): large transfers fault pages in anew"
            );
            trim();
            let trimmed = anonymous_kib();
            assert!(
                freed.saturating_sub(trimmed) >= 6 * 1024,
                "trim did not give the block back ({freed} → {trimmed} KiB): the worker has a heap of its own"
            );
            println!("{PROBED}");
        })
        .join()
        .unwrap();
    }
}
