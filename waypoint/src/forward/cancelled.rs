//! The rapid-reset defence of an HTTP session: requests the client cancels before their answer
//! (an HTTP/2 RST_STREAM drops hyper's service future, or ends the body the request is waiting
//! for) are counted against the node proxy's budget ([`ResetBudget`]), and once it is spent the
//! session is closed. h2 itself counts only
//! streams reset before hyper accepted them; a client that waits until each request is under
//! way — routed, sent upstream — before cancelling it would make the waypoint and the app work
//! for nothing without end.
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use weft_proxy::hbone::server::ResetBudget;

/// One session's cancelled requests.
#[derive(Debug, Default)]
pub struct Cancelled {
    budget: Mutex<ResetBudget>,
    exceeded: Notify,
}

impl Cancelled {
    /// A guard for one request: counted as cancelled if dropped before [`Pending::answered`].
    #[must_use]
    pub fn pending(self: &Arc<Self>) -> Pending {
        Pending { session: Some(self.clone()) }
    }

    /// Resolves once the session's budget is spent.
    pub async fn exceeded(&self) {
        self.exceeded.notified().await;
    }

    fn count(&self) {
        let spent = !self.budget.lock().unwrap_or_else(std::sync::PoisonError::into_inner).spend();
        if spent {
            // Stored if the session is not waiting yet: it sees it when it next does.
            self.exceeded.notify_one();
        }
    }
}

/// A request not yet answered.
#[derive(Debug)]
pub struct Pending {
    session: Option<Arc<Cancelled>>,
}

impl Pending {
    pub fn answered(mut self) {
        self.session = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            tracing::debug!("a request was cancelled before its answer");
            session.count();
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_proxy::hbone::server::MAX_RESETS;

    use super::*;

    #[tokio::test]
    async fn only_requests_dropped_unanswered_spend_the_budget_and_spending_it_is_seen() {
        let cancelled = Arc::new(Cancelled::default());
        for _ in 0..2 * MAX_RESETS {
            cancelled.pending().answered();
        }
        for _ in 0..MAX_RESETS {
            drop(cancelled.pending());
        }
        let exceeded = tokio::time::timeout(std::time::Duration::from_millis(1), cancelled.exceeded());
        assert!(exceeded.await.is_err(), "{MAX_RESETS} cancellations are within the budget");
        drop(cancelled.pending());
        let exceeded = tokio::time::timeout(std::time::Duration::from_millis(1), cancelled.exceeded());
        assert!(exceeded.await.is_ok(), "one more spends it");
    }
}
