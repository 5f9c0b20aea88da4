//! The soak's arithmetic, apart from the cluster so that it can be tested: which failed requests
//! a fault explains, and how fast a process's memory and descriptors grow.
use std::time::Duration;

/// When a fault ran, in milliseconds since the Unix epoch (the clock the traffic's failure
/// lines use), and whether it may fail requests: only a proxy restart does (the harness runs a
/// node's proxies in the node's own namespace, where a new one cannot start beside the old one
/// as it does under the DaemonSet's surge, so new connections are refused while it drains).
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: String,
    pub start_ms: u128,
    pub end_ms: u128,
    pub may_fail_requests: bool,
}

/// How long the steady traffic gives each step of a request: connecting, then the reply.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long before a window a request may have started and still be cut by it (the longest a
/// request takes: both steps' timeouts), and how long after it ends connections may still be
/// refused (a new proxy takes each pod's listeners one by one).
pub const BEFORE: Duration = Duration::from_secs(2 * STEP_TIMEOUT.as_secs());
pub const AFTER: Duration = Duration::from_secs(2);

/// The fault that explains a request failure that started at `at_ms`, if any.
pub fn explained_by(windows: &[Window], at_ms: u128) -> Option<&Window> {
    windows.iter().find(|window| {
        window.may_fail_requests
            && at_ms + BEFORE.as_millis() >= window.start_ms
            && at_ms <= window.end_ms + AFTER.as_millis()
    })
}

/// Where `at_ms` falls among the faults, for a failure no fault explains: during one, or how
/// long after the last one that began before it.
pub fn placed(windows: &[Window], at_ms: u128) -> String {
    match windows.iter().rev().find(|window| window.start_ms <= at_ms) {
        Some(window) if at_ms <= window.end_ms => format!("during {}", window.fault),
        Some(window) => format!("{} ms after {} ended", at_ms - window.end_ms, window.fault),
        None => "before the first fault".to_owned(),
    }
}

/// Now, in milliseconds since the Unix epoch: the clock of fault windows and of the steady
/// traffic's failure lines alike.
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis())
}

/// One sample of a process: seconds since the soak began, resident KiB, open descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_seconds: f64,
    pub rss_kib: f64,
    pub descriptors: f64,
}

/// Growth per minute of a process's memory and descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Slopes {
    pub rss_kib: f64,
    pub descriptors: f64,
}

/// The least-squares slopes of a process's memory and descriptors after `warm_up` from its
/// first sample (caches, pools and allocator arenas fill first), fitted to each whole minute's
/// lowest value: what it holds between faults, not a pod or a connection it held for a moment.
/// `None` when fewer than three whole minutes remain.
pub fn slopes(samples: &[Sample], warm_up: Duration) -> Option<Slopes> {
    let first = samples.first()?.at_seconds + warm_up.as_secs_f64();
    // Whole minutes only: a last minute of a few samples has a higher lowest value.
    let whole = ((samples.last()?.at_seconds - first) / 60.0).floor();
    let mut minutes: Vec<Sample> = Vec::new();
    let counted = |sample: &&Sample| sample.at_seconds >= first && sample.at_seconds < first + whole * 60.0;
    for sample in samples.iter().filter(counted) {
        let minute = ((sample.at_seconds - first) / 60.0).floor();
        match minutes.last_mut() {
            Some(low) if low.at_seconds == minute => {
                low.rss_kib = low.rss_kib.min(sample.rss_kib);
                low.descriptors = low.descriptors.min(sample.descriptors);
            }
            _ => minutes.push(Sample { at_seconds: minute, ..*sample }),
        }
    }
    if minutes.len() < 3 {
        return None;
    }
    // Per minute, as the points are a minute apart.
    let slope = |value: fn(&Sample) -> f64| {
        let n = minutes.len() as f64;
        let mean_t = minutes.iter().map(|s| s.at_seconds).sum::<f64>() / n;
        let mean_v = minutes.iter().map(value).sum::<f64>() / n;
        let covariance: f64 = minutes.iter().map(|s| (s.at_seconds - mean_t) * (value(s) - mean_v)).sum();
        let variance: f64 = minutes.iter().map(|s| (s.at_seconds - mean_t).powi(2)).sum();
        covariance / variance
    };
    Some(Slopes { rss_kib: slope(|s| s.rss_kib), descriptors: slope(|s| s.descriptors) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Sample, Window, explained_by, slopes};

    #[test]
    fn only_a_fault_that_may_fail_requests_explains_a_failure_near_it() {
        let windows = [
            Window {
                fault: "policy push".into(),
                start_ms: 10_000,
                end_ms: 12_000,
                may_fail_requests: false,
            },
            Window {
                fault: "proxy restart".into(),
                start_ms: 30_000,
                end_ms: 33_000,
                may_fail_requests: true,
            },
        ];
        assert!(explained_by(&windows, 11_000).is_none(), "a policy push explains nothing");
        // A request may take 10 s (5 to connect, 5 for the reply) and time out into it.
        assert_eq!(explained_by(&windows, 20_000).unwrap().fault, "proxy restart", "timed out into it");
        assert!(explained_by(&windows, 34_500).is_some(), "refused while listeners come back");
        assert!(explained_by(&windows, 19_000).is_none());
        assert!(explained_by(&windows, 35_500).is_none());
        assert_eq!(super::placed(&windows, 11_000), "during policy push");
        assert_eq!(super::placed(&windows, 14_000), "2000 ms after policy push ended");
        assert_eq!(super::placed(&windows, 9_000), "before the first fault");
    }

    #[test]
    fn slopes_are_per_minute_after_the_warm_up_and_ignore_what_is_held_for_a_moment() {
        // 1 MiB in the first minute (warm-up), then 60 KiB and 2 descriptors a minute; every
        // sample at :30 also holds a passing pod (4 descriptors, 500 KiB).
        let samples: Vec<Sample> = (0..=20)
            .map(|half| {
                let minute = f64::from(half) / 2.0;
                let passing = if half % 2 == 1 { 1.0 } else { 0.0 };
                let rss = if half == 0 { 0.0 } else { 1024.0 + 60.0 * minute + 500.0 * passing };
                Sample {
                    at_seconds: minute * 60.0,
                    rss_kib: rss,
                    descriptors: 20.0 + 2.0 * minute + 4.0 * passing,
                }
            })
            .collect();
        let growth = slopes(&samples, Duration::from_secs(60)).unwrap();
        assert!((growth.rss_kib - 60.0).abs() < 1e-6, "{growth:?}");
        assert!((growth.descriptors - 2.0).abs() < 1e-6, "{growth:?}");
        assert!(
            slopes(&samples[..6], Duration::from_secs(60)).is_none(),
            "under three minutes after the warm-up"
        );
    }
}
