//! Circuit breaking for a backend Service (a CircuitBreakerPolicy on it, as Istio's
//! DestinationRule `connectionPool` and `outlierDetection` do): a cap on its requests in flight
//! from this replica — past it a request is answered 503 at once, as Envoy's circuit breakers
//! answer (`x-envoy-overloaded`) — and outlier detection on its endpoints: one that answers
//! `consecutive_5xx` 5xx in a row, or `consecutive_gateway` gateway errors (502, 503, 504, a
//! failed connection, a timeout, a reset), is ejected — sent nothing — for the base ejection
//! time times the number of its ejections (at most 300 s), while no more than the maximum
//! share of the Service's endpoints is out (one always may be). A returned endpoint that stays
//! well for the base time times its ejections is forgiven one, and so on. Were every endpoint
//! out, requests go to all of them (Envoy's panic routing). Judged per backend Service.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use weft_api::route as api;

use crate::retry::Outcome;

/// The longest an ejection lasts.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Endpoints tracked at most; past it, those neither ejected nor failing are forgotten.
const MAX_TRACKED: usize = 10_000;

/// Why a policy cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("circuit breaker {0}: a maximum ejection share above 100 %")]
    Share(String),
}

/// A CircuitBreakerPolicy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    /// `namespace/name`.
    pub policy: String,
    /// Requests in flight at most; `None`: no cap.
    pub max_requests: Option<usize>,
    /// Connections at most, and requests waiting for one ([`crate::connections`]); `None`: no
    /// cap.
    pub connections: Option<crate::connections::Limits>,
    pub detection: Option<Detection>,
}

/// When an endpoint is ejected, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// 0: not counted.
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    base_ejection: Duration,
    max_ejection_percent: u32,
}

impl Breaker {
    pub fn compile(breaker: &api::CircuitBreaker) -> Result<Self, Error> {
        if breaker.max_ejection_percent > 100 {
            return Err(Error::Share(breaker.policy.clone()));
        }
        let detects = breaker.consecutive_5xx_errors > 0 || breaker.consecutive_gateway_errors > 0;
        Ok(Self {
            policy: breaker.policy.clone(),
            max_requests: (breaker.max_requests > 0).then_some(breaker.max_requests as usize),
            connections: (breaker.max_connections > 0).then(|| crate::connections::Limits {
                max_connections: breaker.max_connections as usize,
                max_pending: breaker.max_pending_requests.map(|max| max as usize),
            }),
            detection: detects.then(|| Detection {
                consecutive_5xx: breaker.consecutive_5xx_errors,
                consecutive_gateway: breaker.consecutive_gateway_errors,
                base_ejection: Duration::from_millis(breaker.base_ejection_ms.into()),
                max_ejection_percent: breaker.max_ejection_percent,
            }),
        })
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(max) = self.max_requests {
            parts.push(format!("at most {max} requests in flight (503 past it)"));
        }
        if let Some(limits) = &self.connections {
            let waiting = match limits.max_pending {
                Some(max) => format!("at most {max} requests waiting for one (503 past it)"),
                None => "requests waiting for one".to_owned(),
            };
            parts.push(format!("at most {} connections, {waiting}", limits.max_connections));
        }
        if let Some(detection) = &self.detection {
            parts.push(format!(
                "an endpoint ejected after {} 5xx or {} gateway errors in a row for {:?} a time, at most {} % of them",
                detection.consecutive_5xx, detection.consecutive_gateway, detection.base_ejection, detection.max_ejection_percent
            ));
        }
        format!("circuit breaker {}: {}", self.policy, parts.join("; "))
    }
}

/// What an attempt at an endpoint came to, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A 5xx; `gateway` for 502, 503, 504.
    ServerError { gateway: bool },
    /// No answer: a failed connection, a timeout, a reset.
    GatewayError,
    /// Anything else: the endpoint is well.
    Success,
}

impl Seen {
    /// How an attempt's outcome counts.
    pub fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Answered(status) if status.is_server_error() => {
                Seen::ServerError { gateway: matches!(status.as_u16(), 502..=504) }
            }
            Outcome::Answered(_) => Seen::Success,
            Outcome::ConnectFailed | Outcome::TimedOut => Seen::GatewayError,
        }
    }
}

/// The endpoints' health, per backend Service and endpoint address: an endpoint behind two
/// Services is judged by each apart, as Envoy judges it per cluster.
#[derive(Debug, Default)]
pub struct Outliers {
    backends: Mutex<HashMap<String, HashMap<SocketAddr, Health>>>,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Times ejected, less those forgiven.
    ejections: u32,
    /// When its last ejection ends (ended), or when it was last forgiven one.
    well_since: Option<Instant>,
    ejected_until: Option<Instant>,
}

impl Health {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

impl Outliers {
    /// Of `backend`'s `endpoints`, those ejected at `now` (usually none); none when every one
    /// is (panic routing: then all of them get requests).
    pub fn ejected(&self, backend: &str, endpoints: &[SocketAddr], now: Instant) -> Vec<SocketAddr> {
        let backends = self.backends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(health) = backends.get(backend) else { return Vec::new() };
        let ejected: Vec<SocketAddr> = endpoints
            .iter()
            .copied()
            .filter(|endpoint| health.get(endpoint).is_some_and(|health| health.ejected(now)))
            .collect();
        if ejected.len() == endpoints.len() { Vec::new() } else { ejected }
    }

    /// Counts what an attempt at `endpoint`, one of `backend`'s `endpoints`, came to; answers
    /// how long it is ejected for, if this ejected it. An ejected endpoint's answers (requests
    /// under way when it went, or panic routing) are not counted: it starts afresh when back.
    pub fn record(
        &self,
        detection: &Detection,
        backend: &str,
        endpoint: SocketAddr,
        seen: Seen,
        endpoints: &[SocketAddr],
        now: Instant,
    ) -> Option<Duration> {
        let mut backends = self.backends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tracked: usize = backends.values().map(HashMap::len).sum();
        let all = backends.entry(backend.to_owned()).or_default();
        if tracked >= MAX_TRACKED && !all.contains_key(&endpoint) {
            all.retain(|_, health| {
                health.ejected(now)
                    || health.ejections > 0
                    || health.consecutive_5xx + health.consecutive_gateway > 0
            });
            return None;
        }
        let out =
            endpoints.iter().filter(|other| all.get(other).is_some_and(|health| health.ejected(now))).count();
        let health = all.entry(endpoint).or_default();
        if health.ejected(now) {
            return None;
        }
        match seen {
            Seen::Success => {
                health.consecutive_5xx = 0;
                health.consecutive_gateway = 0;
                // Well for as long as its ejection would now last: one ejection forgiven, and
                // the clock starts again for the next.
                let forgiving = detection.base_ejection.saturating_mul(health.ejections);
                if health.ejections > 0
                    && health
                        .well_since
                        .is_some_and(|since| now.saturating_duration_since(since) >= forgiving)
                {
                    health.ejections -= 1;
                    health.well_since = Some(now);
                }
                return None;
            }
            Seen::ServerError { gateway } => {
                health.consecutive_5xx += 1;
                health.consecutive_gateway = if gateway { health.consecutive_gateway + 1 } else { 0 };
            }
            Seen::GatewayError => {
                health.consecutive_5xx += 1;
                health.consecutive_gateway += 1;
            }
        }
        let reached = |count: u32, threshold: u32| threshold > 0 && count >= threshold;
        let failing = reached(health.consecutive_5xx, detection.consecutive_5xx)
            || reached(health.consecutive_gateway, detection.consecutive_gateway);
        // The share out stays within the maximum, but one may always be (Envoy's
        // `always_eject_one_host`; Istio leaves it off, so that a Service of fewer than ten
        // endpoints never ejects one at its default 10 %).
        let allowed =
            out == 0 || (out + 1) * 100 <= detection.max_ejection_percent as usize * endpoints.len();
        if !failing || !allowed {
            return None;
        }
        health.ejections += 1;
        let lasts = detection.base_ejection.saturating_mul(health.ejections).min(MAX_EJECTION);
        health.ejected_until = Some(now + lasts);
        health.well_since = Some(now + lasts);
        health.consecutive_5xx = 0;
        health.consecutive_gateway = 0;
        Some(lasts)
    }
}

#[cfg(test)]
mod tests;
