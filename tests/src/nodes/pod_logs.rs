//! The containers' logs on real nodes, read as the kubelet writes them, so that what Weft's pods
//! print is inspected ([`crate::invariants`]) as every harness process's lines are. A deleted
//! pod's logs go with it (the kubelet's garbage collection, within a minute), so they are read
//! while the cluster runs — a pod a rolling update replaces is read to its last line — and
//! once more when it is taken down.
use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// How often the logs are read: well within the kubelet's minute before it removes a deleted
/// pod's.
const EVERY: Duration = Duration::from_millis(250);

/// Reads, until finished, every container log below `<cluster>/<node>/pod-logs`.
pub(super) struct PodLogs {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PodLogs {
    /// Starts reading the logs of the nodes in cluster directory `dir`.
    pub(super) fn watch(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = Reader { root: dir.to_owned(), read: HashMap::new() };
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                reader.pass(false);
                std::thread::park_timeout(EVERY);
            }
            reader.pass(true);
        });
        Self { stop, thread: Some(thread) }
    }

    /// Reads what is left, to the last byte, and stops.
    pub(super) fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        self.finish();
    }
}

/// How far each log file has been read.
struct Reader {
    root: PathBuf,
    read: HashMap<PathBuf, u64>,
}

impl Reader {
    /// Inspects every line written since the last pass; `last`: an unfinished last line too.
    fn pass(&mut self, last: bool) {
        // <node>/pod-logs/<namespace>_<pod>_<uid>/<container>/<restarts>.log
        for node in entries(&self.root) {
            for pod in entries(&node.join("pod-logs")) {
                for container in entries(&pod) {
                    for log in
                        entries(&container).filter(|file| file.extension().is_some_and(|ext| ext == "log"))
                    {
                        let what = format!(
                            "pod {}, container {}",
                            pod.file_name().unwrap_or_default().to_string_lossy(),
                            container.file_name().unwrap_or_default().to_string_lossy()
                        );
                        self.read_new(&log, &what, last);
                    }
                }
            }
        }
    }

    /// Inspects the lines of `log` after what was read of it (from its start if it is shorter:
    /// rotated).
    fn read_new(&mut self, log: &Path, what: &str, last: bool) {
        let Ok(mut file) = std::fs::File::open(log) else { return };
        let length = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        let offset = self.read.entry(log.to_owned()).or_insert(0);
        if length < *offset {
            *offset = 0;
        }
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(*offset)).is_err() || file.read_to_end(&mut new).is_err() {
            return;
        }
        let complete = match last {
            true => new.len(),
            false => new.iter().rposition(|byte| *byte == b'\n').map_or(0, |end| end + 1),
        };
        for line in String::from_utf8_lossy(&new[..complete]).lines() {
            crate::invariants::inspect(what, line);
        }
        *offset += complete as u64;
    }
}

/// The entries of directory `dir`, none if it cannot be read (not made yet, or removed).
fn entries(dir: &Path) -> impl Iterator<Item = PathBuf> + use<> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|entry| entry.path())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::PodLogs;

    #[test]
    fn a_panic_in_a_containers_log_is_found_though_its_line_was_written_in_two_parts() {
        let cluster = tempfile::tempdir().unwrap();
        let container = cluster.path().join("node0/pod-logs/weft-system_ztunnel-x_1234/ztunnel");
        std::fs::create_dir_all(&container).unwrap();
        let mut log = std::fs::File::create(container.join("0.log")).unwrap();
        log.write_all(
            b"2026-12-06T00:00:00Z stderr F starting\n2026-12-06T00:00:01Z stderr F thread 'main' pan",
        )
        .unwrap();
        let mut logs = PodLogs::watch(cluster.path());
        log.write_all(b"icked at ztunnel/src/main.rs:1:1:\n").unwrap();
        logs.finish();
        // Only this pod's: the findings are the process's, whatever else a test runner ran in it.
        let findings: Vec<String> = crate::invariants::take_findings()
            .into_iter()
            .filter(|finding| finding.contains("ztunnel-x_1234"))
            .collect();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0]
                .starts_with("a panic in the log of pod weft-system_ztunnel-x_1234, container ztunnel:"),
            "{findings:?}"
        );
    }
}
