//! The traffic policies a request gets before it goes on (`networking.weft.dev`, which the
//! control plane resolves per route and Service): a fault — a delay, an abort answered by the
//! waypoint itself (an HTTP status, or a gRPC error) — and a local rate limit — a token bucket
//! per policy target, or per target and client identity, in this replica; and, on a backend
//! Service's own resource, its circuit breaker ([`crate::breaker`]) and load balancer
//! ([`crate::balance`]). Pure but for the buckets' clock, which the caller supplies.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use http::StatusCode;
use weft_api::route as api;

/// Shares are parts of a million: a request is in one when a draw below this falls in it.
pub const MILLION: u32 = 1_000_000;

/// Buckets kept at most; past it, full ones (idle long enough to have refilled) are dropped,
/// then a client's, else any.
const MAX_BUCKETS: usize = 10_000;

/// Why a policy cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fault {0}: abort status {1} is no HTTP status from 200 to 599")]
    AbortStatus(String, u32),
    #[error("fault {0}: a share above one million parts per million")]
    Share(String),
    #[error("rate limit {0}: requests, interval and burst must all be positive")]
    Limit(String),
    #[error(transparent)]
    Breaker(#[from] crate::breaker::Error),
    #[error(transparent)]
    Balancer(#[from] crate::balance::InvalidHashHeader),
}

/// The policies a request gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies {
    pub fault: Option<Fault>,
    pub rate_limit: Option<RateLimit>,
    /// The Service's as a backend ([`crate::breaker`]).
    pub circuit_breaker: Option<crate::breaker::Breaker>,
    /// The Service's as a backend ([`crate::balance`]).
    pub load_balancer: Option<crate::balance::Balancer>,
}

impl Policies {
    /// What they do, for people (`weftctl check`): `None` when nothing.
    pub fn describe(&self) -> Option<String> {
        let parts: Vec<String> = [
            self.rate_limit.as_ref().map(RateLimit::describe),
            self.fault.as_ref().map(Fault::describe),
            self.circuit_breaker.as_ref().map(crate::breaker::Breaker::describe),
            self.load_balancer.as_ref().map(crate::balance::Balancer::describe),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn compile(policies: Option<&api::Policies>) -> Result<Self, Error> {
        let Some(policies) = policies else { return Ok(Self::default()) };
        Ok(Self {
            fault: policies.fault.as_ref().map(Fault::compile).transpose()?,
            rate_limit: policies.rate_limit.as_ref().map(RateLimit::compile).transpose()?,
            circuit_breaker: policies
                .circuit_breaker
                .as_ref()
                .map(crate::breaker::Breaker::compile)
                .transpose()?,
            load_balancer: policies
                .load_balancer
                .as_ref()
                .map(crate::balance::Balancer::compile)
                .transpose()?,
        })
    }
}

/// A FaultInjectionPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `namespace/name`.
    pub policy: String,
    delay: Duration,
    delay_share: u32,
    abort: Abort,
    abort_share: u32,
}

/// What an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// A gRPC status code, answered as gRPC does (HTTP 200, `grpc-status`).
    Grpc(u32),
}

impl Abort {
    /// The answer for a request that is not gRPC: a gRPC code as the HTTP status it maps to
    /// (gRPC's own table, as gateways translate it).
    pub fn as_http(self) -> Self {
        let Abort::Grpc(code) = self else { return self };
        let status = match code {
            0 => StatusCode::OK,
            1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            3 | 9 | 11 => StatusCode::BAD_REQUEST,
            4 => StatusCode::GATEWAY_TIMEOUT,
            5 => StatusCode::NOT_FOUND,
            6 | 10 => StatusCode::CONFLICT,
            7 => StatusCode::FORBIDDEN,
            8 => StatusCode::TOO_MANY_REQUESTS,
            12 => StatusCode::NOT_IMPLEMENTED,
            14 => StatusCode::SERVICE_UNAVAILABLE,
            16 => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Abort::Http(status)
    }
}

impl Fault {
    fn compile(fault: &api::Fault) -> Result<Self, Error> {
        let policy = fault.policy.clone();
        if fault.delay_per_million > MILLION || fault.abort_per_million > MILLION {
            return Err(Error::Share(policy));
        }
        let abort = match fault.abort_grpc_status {
            Some(code) => Abort::Grpc(code),
            None if fault.abort_per_million == 0 => Abort::Http(StatusCode::OK),
            None => match StatusCode::from_u16(u16::try_from(fault.abort_http_status).unwrap_or(0)) {
                Ok(status) if (200..600).contains(&status.as_u16()) => Abort::Http(status),
                _ => return Err(Error::AbortStatus(policy, fault.abort_http_status)),
            },
        };
        Ok(Self {
            delay: Duration::from_millis(fault.delay_ms.into()),
            delay_share: fault.delay_per_million,
            abort,
            abort_share: fault.abort_per_million,
            policy,
        })
    }

    fn describe(&self) -> String {
        let share = |parts: u32| f64::from(parts) / 10_000.0;
        let mut done = Vec::new();
        if self.delay_share > 0 {
            done.push(format!("{} % delayed {}ms", share(self.delay_share), self.delay.as_millis()));
        }
        if self.abort_share > 0 {
            done.push(match self.abort {
                Abort::Http(status) => format!("{} % answered {}", share(self.abort_share), status.as_u16()),
                Abort::Grpc(code) => format!("{} % answered grpc-status {code}", share(self.abort_share)),
            });
        }
        format!("fault {}: {}", self.policy, done.join(", "))
    }

    /// How long to hold the request back, if `draw` (uniform below a million) falls in the
    /// delayed share.
    pub fn delay(&self, draw: u32) -> Option<Duration> {
        (draw < self.delay_share && !self.delay.is_zero()).then_some(self.delay)
    }

    /// The answer instead of the request, if `draw` falls in the aborted share.
    pub fn abort(&self, draw: u32) -> Option<Abort> {
        (draw < self.abort_share).then_some(self.abort)
    }
}

/// A RateLimitPolicy's bucket, as one target gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// `namespace/name`.
    pub policy: String,
    bucket: String,
    requests: u32,
    interval: Duration,
    burst: u32,
    per_source: bool,
}

impl RateLimit {
    fn compile(limit: &api::RateLimit) -> Result<Self, Error> {
        if limit.requests == 0 || limit.interval_ms == 0 || limit.burst == 0 {
            return Err(Error::Limit(limit.policy.clone()));
        }
        Ok(Self {
            policy: limit.policy.clone(),
            bucket: limit.bucket.clone(),
            requests: limit.requests,
            interval: Duration::from_millis(limit.interval_ms.into()),
            burst: limit.burst,
            per_source: limit.per_source,
        })
    }

    fn describe(&self) -> String {
        format!(
            "rate limit {}: {} per {:?}, {} at once{} (429 past it)",
            self.policy,
            self.requests,
            self.interval,
            self.burst,
            if self.per_source { ", per client identity" } else { "" }
        )
    }

    /// Tokens added per second.
    fn rate(&self) -> f64 {
        f64::from(self.requests) / self.interval.as_secs_f64()
    }
}

/// The buckets of this replica, by bucket name and, for a policy per source, the client's
/// identity.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// The limit it was made for: a changed policy starts a full bucket of its own.
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Its tokens at `now`.
    fn refilled(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * self.limit.rate()).min(f64::from(self.limit.burst))
    }
}

impl Limiter {
    /// Takes a token for a request from `source` (its identity, asked only for a limit per
    /// source) under `limit` at `now`; none left: how long until one is.
    pub fn take(
        &self,
        limit: &RateLimit,
        source: impl FnOnce() -> String,
        now: Instant,
    ) -> Result<(), Duration> {
        let key = (limit.bucket.clone(), if limit.per_source { source() } else { String::new() });
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| bucket.refilled(now) < f64::from(bucket.limit.burst));
            // Still full: a client's bucket goes, never a target's own (which would let a
            // whole burst through again).
            let evicted = buckets.keys().find(|(_, source)| !source.is_empty()).cloned();
            if buckets.len() >= MAX_BUCKETS
                && let Some(evicted) = evicted.or_else(|| buckets.keys().next().cloned())
            {
                buckets.remove(&evicted);
            }
        }
        let bucket = buckets
            .entry(key)
            .and_modify(|bucket| {
                if bucket.limit != *limit {
                    *bucket = Bucket { limit: limit.clone(), tokens: f64::from(limit.burst), at: now };
                }
            })
            .or_insert_with(|| Bucket { limit: limit.clone(), tokens: f64::from(limit.burst), at: now });
        let tokens = bucket.refilled(now);
        // `now` was read before the lock: a caller that took it later may have been first.
        bucket.at = bucket.at.max(now);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / limit.rate()))
        }
    }
}

#[cfg(test)]
mod tests;
