//! What a proxy holds open right now — the tasks alive on its runtimes and the HBONE streams
//! it has in hand — as gauges on its metrics endpoint, so a leak shows: after a fault, a test
//! waits for both to come back to where they were (as operators watch them in production).
//! Counted per process: a proxy has one census.
use std::sync::{
    Mutex,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use tokio::runtime::Handle;

/// The runtimes whose tasks are counted, by their registration: a node proxy has one, a
/// waypoint one per worker and its main one.
static RUNTIMES: Mutex<Vec<(u64, Handle)>> = Mutex::new(Vec::new());

/// The next registration's number.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// HBONE streams whose handles are held, either end.
static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Counts `runtime`'s tasks for as long as the registration returned lives (a handle kept
/// past its runtime would keep the runtime's driver, and its descriptors, open).
#[must_use = "the runtime is counted while this lives"]
pub fn count_runtime(runtime: Handle) -> RuntimeCounted {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    runtimes().push((id, runtime));
    RuntimeCounted(id)
}

fn runtimes() -> std::sync::MutexGuard<'static, Vec<(u64, Handle)>> {
    RUNTIMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A runtime's registration: its tasks are counted until this drops.
#[derive(Debug)]
pub struct RuntimeCounted(u64);

impl Drop for RuntimeCounted {
    fn drop(&mut self) {
        runtimes().retain(|(id, _)| *id != self.0);
    }
}

/// Tasks alive on the counted runtimes.
pub fn tasks_alive() -> usize {
    runtimes().iter().map(|(_, runtime)| runtime.metrics().num_alive_tasks()).sum()
}

/// The bytes tokio allocates for a task whose future takes `future` bytes: its header,
/// scheduler handle, id and trailer (96), the future's stage tag (8), rounded up to the 128
/// bytes it aligns tasks to on x86-64. An open connection's task is most of what it costs idle.
pub const fn task_bytes(future: usize) -> usize {
    (future + 8 + 96).next_multiple_of(128)
}

/// HBONE streams held now.
pub fn streams_open() -> usize {
    STREAMS.load(Ordering::Relaxed)
}

/// One HBONE stream held: counted while this lives.
#[derive(Debug)]
pub struct StreamHeld(());

impl StreamHeld {
    pub(crate) fn new() -> Self {
        STREAMS.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for StreamHeld {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Adds the gauges to a proxy's metrics `exposition` (OpenMetrics text), before its `# EOF`.
pub fn add_to(exposition: &mut String) {
    let end = exposition.rfind("# EOF").unwrap_or(exposition.len());
    exposition.insert_str(end, &gauges());
}

/// The gauges in Prometheus' text format.
fn gauges() -> String {
    format!(
        "# HELP weft_tasks_alive Tasks alive on the proxy's runtimes.\n\
         # TYPE weft_tasks_alive gauge\n\
         weft_tasks_alive {}\n\
         # HELP weft_hbone_streams_open HBONE streams the proxy holds, either end.\n\
         # TYPE weft_hbone_streams_open gauge\n\
         weft_hbone_streams_open {}\n",
        tasks_alive(),
        streams_open()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact counts of process-wide gauges: it relies on nextest's process per test (the relay's
    /// tests open streams too).
    #[tokio::test]
    async fn counts_a_runtimes_tasks_and_the_streams_held() {
        let _counted = count_runtime(Handle::current());
        let before = (tasks_alive(), streams_open());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(stopped);
        let held = StreamHeld::new();
        assert_eq!((tasks_alive(), streams_open()), (before.0 + 1, before.1 + 1));
        let mut exposition = "# EOF\n".to_owned();
        add_to(&mut exposition);
        let gauge = format!("weft_hbone_streams_open {}\n# EOF\n", before.1 + 1);
        assert!(exposition.ends_with(&gauge), "{exposition}");
        drop(held);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert_eq!((tasks_alive(), streams_open()), before);
    }
}
