//! The rapid-reset defence of an HTTP session, as Envoy (Istio's waypoint) has it: a request the
//! client cancels within a second of sending it — an HTTP/2 RST_STREAM drops hyper's service
//! future, or ends the body the request is waiting for — is *premature*. Once a window of
//! [`WINDOW`] holds more than [`MAX_PREMATURE`] of them and they are over half of the session's
//! requests in it, the session is closed. h2 itself counts only streams reset before hyper
//! accepted them; a client that waits until each request is under way — routed, sent upstream —
//! before cancelling it would otherwise make the waypoint and the app work for nothing without
//! end. A busy client whose deadlines expire now and then, or whose requests ran long before it
//! gave up on them, is never cut off: most of its requests are answered; nor is one that gives
//! up on requests the waypoint holds back on purpose (an injected delay).
use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// A request cancelled sooner than this after it began is premature.
pub const PREMATURE: Duration = Duration::from_secs(1);
/// Premature cancellations a session may have per window, whatever its other requests.
pub const MAX_PREMATURE: u32 = 200;
pub const WINDOW: Duration = Duration::from_secs(10);

/// One session's requests in the current window.
#[derive(Debug)]
pub struct Cancelled {
    window: Mutex<Window>,
    exceeded: Notify,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Requests that ended (answered or cancelled).
    ended: u32,
    premature: u32,
}

impl Default for Cancelled {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window { start: Instant::now(), ended: 0, premature: 0 }),
            exceeded: Notify::new(),
        }
    }
}

impl Cancelled {
    /// A guard for one request, begun now: counted as cancelled if dropped before
    /// [`Pending::answered`].
    #[must_use]
    pub fn pending(self: &Arc<Self>) -> Pending {
        Pending { session: Some(self.clone()), started: Instant::now(), held: AtomicBool::new(false) }
    }

    /// Resolves once the session has cancelled too many requests too soon.
    pub async fn exceeded(&self) {
        self.exceeded.notified().await;
    }

    fn count(&self, premature: bool) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(window.start) > WINDOW {
            *window = Window { start: now, ended: 0, premature: 0 };
        }
        window.ended += 1;
        window.premature += u32::from(premature);
        if window.premature > MAX_PREMATURE && window.premature * 2 > window.ended {
            // Stored if the session is not waiting yet: it sees it when it next does.
            self.exceeded.notify_one();
        }
    }
}

/// A request not yet answered.
#[derive(Debug)]
pub struct Pending {
    session: Option<Arc<Cancelled>>,
    started: Instant,
    /// The waypoint holds it back on purpose now (an injected delay): a client giving up on it
    /// meanwhile is no abuse.
    held: AtomicBool,
}

impl Pending {
    /// Marks the request as held back by the waypoint itself, or no longer.
    pub fn held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    pub fn answered(mut self) {
        if let Some(session) = self.session.take() {
            session.count(false);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let premature = self.started.elapsed() < PREMATURE && !self.held.load(Ordering::Relaxed);
            tracing::debug!(premature, "a request was cancelled before its answer");
            session.count(premature);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exceeded(cancelled: &Cancelled) -> bool {
        tokio::time::timeout(Duration::from_millis(1), cancelled.exceeded()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_is_cut_off_only_when_most_of_its_requests_are_cancelled_at_once() {
        // Answered requests never count against it, nor does a budget's worth of cancellations.
        let cancelled = Arc::new(Cancelled::default());
        for _ in 0..2 * MAX_PREMATURE {
            cancelled.pending().answered();
        }
        for _ in 0..MAX_PREMATURE {
            drop(cancelled.pending());
        }
        assert!(!exceeded(&cancelled).await, "{MAX_PREMATURE} premature cancellations are within the budget");
        // Beyond it, but most requests still answered (deadlines expiring in a busy moment).
        for _ in 0..MAX_PREMATURE {
            drop(cancelled.pending());
        }
        assert!(!exceeded(&cancelled).await, "half the requests cancelled is not yet an attack");
        drop(cancelled.pending());
        assert!(exceeded(&cancelled).await, "more cancelled than answered, beyond the budget: cut off");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_given_up_after_a_second_is_no_premature_cancellation_and_windows_start_afresh() {
        let cancelled = Arc::new(Cancelled::default());
        let slow: Vec<Pending> = (0..2 * MAX_PREMATURE).map(|_| cancelled.pending()).collect();
        tokio::time::advance(PREMATURE).await;
        drop(slow);
        assert!(!exceeded(&cancelled).await, "requests that ran a second before their client gave up");
        // The next window counts from nothing: a budget's worth again, then one more.
        tokio::time::advance(WINDOW).await;
        for _ in 0..MAX_PREMATURE {
            drop(cancelled.pending());
        }
        assert!(!exceeded(&cancelled).await);
        drop(cancelled.pending());
        assert!(exceeded(&cancelled).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_the_waypoint_holds_back_may_be_given_up_at_once() {
        let cancelled = Arc::new(Cancelled::default());
        for _ in 0..2 * MAX_PREMATURE {
            let delayed = cancelled.pending();
            delayed.held(true);
            drop(delayed);
        }
        assert!(!exceeded(&cancelled).await, "clients whose deadlines an injected delay outlasts");
        // Once the delay is over, a cancellation is judged as any other.
        for _ in 0..=2 * MAX_PREMATURE {
            let released = cancelled.pending();
            released.held(true);
            released.held(false);
            drop(released);
        }
        assert!(exceeded(&cancelled).await);
    }
}
