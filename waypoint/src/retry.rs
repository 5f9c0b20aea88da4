//! Retries: which failed attempts at a backend are tried again, how long to wait first, and the
//! budget that keeps retries from multiplying the load on a backend that is already failing.
//! A route that says nothing gets Istio's default: 2 retries of a failed connection or a 503
//! (Envoy's `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`).
//! Only a request whose body was kept whole is retried ([`crate::forward`]).
//! The budget is Envoy's, which Istio's waypoint runs with: the retries in flight to one backend
//! Service may be at most 20 % of its requests in flight, and never fewer than 3 are refused.
//! Pure but for the budget's counters: the caller supplies randomness and does the waiting.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::StatusCode;
use weft_api::route as api;

#[cfg(test)]
mod tests;

/// Retries per request when a route names none: Istio's default.
const DEFAULT_ATTEMPTS: u32 = 2;
/// Envoy's base backoff.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Envoy caps the backoff at ten times the base.
const MAX_BACKOFF_FACTOR: u32 = 10;
/// Retries in flight a backend may always have, whatever its load (Envoy's
/// `min_retry_concurrency`).
const MIN_RETRY_CONCURRENCY: usize = 3;
/// Retries in flight as a share of requests in flight, in percent (Envoy's `budget_percent`).
const BUDGET_PERCENT: usize = 20;

/// When a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Retries after the first attempt.
    attempts: u32,
    /// Responses that count as failures.
    codes: Vec<StatusCode>,
    /// The least wait before the first retry.
    backoff: Duration,
}

impl Default for Policy {
    /// Istio's: two retries of a connection failure or a 503.
    fn default() -> Self {
        Self {
            attempts: DEFAULT_ATTEMPTS,
            codes: vec![StatusCode::SERVICE_UNAVAILABLE],
            backoff: DEFAULT_BACKOFF,
        }
    }
}

/// What an attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered with this status.
    Answered(StatusCode),
    /// No connection to the endpoint: nothing of the request was sent.
    ConnectFailed,
    /// The attempt's time ran out.
    TimedOut,
}

impl Policy {
    /// A route's `retry`; `None` gets the default. A code that is no status (the control plane
    /// sends only 400–599) is left out.
    pub fn compile(retry: Option<&api::Retry>) -> Self {
        let Some(retry) = retry else { return Self::default() };
        let codes: Vec<StatusCode> = retry
            .codes
            .iter()
            .filter_map(|code| StatusCode::from_u16(u16::try_from(*code).ok()?).ok())
            .collect();
        Self {
            attempts: retry.attempts,
            codes: if codes.is_empty() { Self::default().codes } else { codes },
            backoff: match retry.backoff_ms {
                0 => DEFAULT_BACKOFF,
                ms => Duration::from_millis(ms.into()),
            },
        }
    }

    /// Whether an attempt that came to `outcome`, after `retries` retries, is tried again.
    /// A failed connection always may be; a timed-out attempt counts as a 504; a connection
    /// lost after the request went out is not (the endpoint may have acted on it).
    pub fn retries(&self, outcome: Outcome, retries: u32) -> bool {
        retries < self.attempts
            && match outcome {
                Outcome::Answered(status) => self.codes.contains(&status),
                Outcome::ConnectFailed => true,
                Outcome::TimedOut => self.codes.contains(&StatusCode::GATEWAY_TIMEOUT),
            }
    }

    /// How long to wait before retry `retry` (1 for the first), from `random(bound)`, which must
    /// return a value in `[0, bound]`: Envoy's full jitter, up to the backoff doubled at each
    /// retry and never more than ten times it.
    pub fn backoff(&self, retry: u32, random: impl FnOnce(u64) -> u64) -> Duration {
        let base = u64::try_from(self.backoff.as_micros()).unwrap_or(u64::MAX);
        let doubled = base.saturating_mul(1u64.checked_shl(retry.saturating_sub(1)).unwrap_or(u64::MAX));
        let bound = doubled.min(base.saturating_mul(MAX_BACKOFF_FACTOR.into()));
        Duration::from_micros(random(bound).min(bound))
    }
}

/// One backend Service's requests and retries in flight.
#[derive(Debug, Default)]
pub struct Budget {
    requests: AtomicUsize,
    retries: AtomicUsize,
}

/// A request or retry counted in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    budget: Arc<Budget>,
    retry: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let counter = if self.retry { &self.budget.retries } else { &self.budget.requests };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Budget {
    /// Counts a request in flight.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        InFlight { budget: self.clone(), retry: false }
    }

    /// Counts a request in flight if fewer than `max` are (a circuit breaker's cap).
    pub fn request_within(self: &Arc<Self>, max: usize) -> Option<InFlight> {
        self.requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |requests| {
                (requests < max).then_some(requests + 1)
            })
            .ok()?;
        Some(InFlight { budget: self.clone(), retry: false })
    }

    /// Counts a retry in flight, if the budget has room for it.
    pub fn retry(self: &Arc<Self>) -> Option<InFlight> {
        let requests = self.requests.load(Ordering::Acquire);
        let allowed = (requests * BUDGET_PERCENT / 100).max(MIN_RETRY_CONCURRENCY);
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |retries| {
                (retries < allowed).then_some(retries + 1)
            })
            .ok()?;
        Some(InFlight { budget: self.clone(), retry: true })
    }
}

/// The budgets of every backend Service the waypoint has sent to.
#[derive(Debug, Default)]
pub struct Budgets(Mutex<HashMap<String, Arc<Budget>>>);

impl Budgets {
    /// Service `key`'s budget.
    pub fn of(&self, key: &str) -> Arc<Budget> {
        let mut budgets = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(budget) = budgets.get(key) {
            return budget.clone();
        }
        // A Service's budget lives as long as the waypoint: one entry per backend Service of the mesh.
        budgets.entry(key.to_owned()).or_default().clone()
    }
}
