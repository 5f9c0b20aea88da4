use std::{sync::Arc, time::Duration};

use http::StatusCode;
use weft_api::route as api;

use super::{Budget, Outcome, Policy};

#[test]
fn a_route_without_retry_gets_istios_default_two_retries_of_a_503_or_a_failed_connection() {
    let policy = Policy::compile(None);
    let unavailable = Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE);
    assert!(policy.retries(unavailable, 0) && policy.retries(unavailable, 1));
    assert!(!policy.retries(unavailable, 2), "two retries, three attempts in all");
    assert!(policy.retries(Outcome::ConnectFailed, 1));
    assert!(!policy.retries(Outcome::Answered(StatusCode::INTERNAL_SERVER_ERROR), 0));
    assert!(!policy.retries(Outcome::Answered(StatusCode::OK), 0));
    assert!(!policy.retries(Outcome::TimedOut, 0), "a timeout is a 504, not retried by default");
}

#[test]
fn a_routes_retry_sets_attempts_codes_and_backoff() {
    let policy =
        Policy::compile(Some(&api::Retry { attempts: 1, codes: vec![502, 504, 70_000], backoff_ms: 100 }));
    assert!(policy.retries(Outcome::Answered(StatusCode::BAD_GATEWAY), 0));
    assert!(policy.retries(Outcome::TimedOut, 0), "504 named: a timed-out attempt is retried");
    assert!(!policy.retries(Outcome::Answered(StatusCode::BAD_GATEWAY), 1), "one retry");
    assert!(!policy.retries(Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE), 0), "503 not named");
    let never = Policy::compile(Some(&api::Retry { attempts: 0, codes: vec![], backoff_ms: 0 }));
    assert!(!never.retries(Outcome::ConnectFailed, 0), "attempts 0: no retries at all");
    assert!(!never.retries(Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE), 0));
}

#[test]
fn backoff_is_random_below_the_base_doubled_per_retry_and_capped_at_ten_times_it() {
    let policy = Policy::compile(Some(&api::Retry { attempts: 9, codes: vec![], backoff_ms: 100 }));
    let top = |retry| policy.backoff(retry, |bound| bound);
    assert_eq!(top(1), Duration::from_millis(100));
    assert_eq!(top(2), Duration::from_millis(200));
    assert_eq!(top(4), Duration::from_millis(800));
    assert_eq!(top(5), Duration::from_secs(1), "capped at ten times the base");
    assert_eq!(top(200), Duration::from_secs(1), "no overflow however many retries");
    assert_eq!(policy.backoff(3, |_| 0), Duration::ZERO);
    assert_eq!(
        policy.backoff(1, |_| u64::MAX),
        Duration::from_millis(100),
        "a stray generator stays in range"
    );
    assert_eq!(Policy::default().backoff(1, |bound| bound), Duration::from_millis(25), "Envoy's base");
}

#[test]
fn the_budget_allows_three_retries_in_flight_or_a_fifth_of_the_requests_whichever_is_more() {
    let budget = Arc::new(Budget::default());
    let requests: Vec<_> = (0..10).map(|_| budget.request()).collect();
    let retries: Vec<_> = (0..3).map(|_| budget.retry().expect("three always")).collect();
    assert!(budget.retry().is_none(), "10 requests: 20 % is 2, the floor 3");
    drop(retries);
    let more: Vec<_> = (0..20).map(|_| budget.request()).collect();
    let retries: Vec<_> = (0..6).map(|_| budget.retry().expect("30 requests: six")).collect();
    assert!(budget.retry().is_none());
    drop(retries.into_iter().next());
    assert!(budget.retry().is_some(), "a finished retry frees its place");
    drop((requests, more));
}
