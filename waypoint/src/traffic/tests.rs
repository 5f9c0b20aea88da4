use std::time::{Duration, Instant};

use http::StatusCode;
use weft_api::route as api;

use super::{Abort, Fault, Limiter, MAX_BUCKETS, Policies, RateLimit};

fn limit(requests: u32, interval_ms: u32, burst: u32, per_source: bool) -> RateLimit {
    RateLimit::compile(&api::RateLimit {
        policy: "shop/limit".into(),
        bucket: "shop/limit Service shop/echo".into(),
        requests,
        interval_ms,
        burst,
        per_source,
    })
    .unwrap()
}

#[test]
fn a_bucket_lets_its_burst_through_then_its_rate_and_says_when_the_next_token_comes() {
    let (limiter, limit, start) = (Limiter::default(), limit(10, 1000, 5, false), Instant::now());
    for _ in 0..5 {
        assert_eq!(limiter.take(&limit, || "a".to_owned(), start), Ok(()));
    }
    let wait = limiter.take(&limit, || "a".to_owned(), start).unwrap_err();
    assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "one token comes every 100 ms: {wait:?}");
    // Refused requests take nothing: a token is there 100 ms later, and only one.
    assert_eq!(limiter.take(&limit, || "a".to_owned(), start + Duration::from_millis(100)), Ok(()));
    assert!(limiter.take(&limit, || "a".to_owned(), start + Duration::from_millis(100)).is_err());
    // Idle for a minute: the burst again, no more.
    let later = start + Duration::from_secs(60);
    let passed = (0..20).filter(|_| limiter.take(&limit, || "a".to_owned(), later).is_ok()).count();
    assert_eq!(passed, 5);
    // Over a second (and a bit, clear of rounding) at the bucket's rate: ten requests, whoever
    // sends them.
    let passed = (1..=105)
        .filter(|tenth| {
            limiter
                .take(
                    &limit,
                    || format!("client-{tenth}").to_string(),
                    later + Duration::from_millis(10 * tenth),
                )
                .is_ok()
        })
        .count();
    assert_eq!(passed, 10);
}

#[test]
fn a_per_source_limit_gives_each_identity_a_bucket_and_a_changed_policy_a_full_one() {
    let (limiter, per_source, start) = (Limiter::default(), limit(1, 60_000, 1, true), Instant::now());
    assert!(limiter.take(&per_source, || "spiffe://cluster.local/ns/a/sa/x".to_owned(), start).is_ok());
    assert!(limiter.take(&per_source, || "spiffe://cluster.local/ns/a/sa/x".to_owned(), start).is_err());
    assert!(limiter.take(&per_source, || "spiffe://cluster.local/ns/a/sa/y".to_owned(), start).is_ok());
    let raised = limit(1, 60_000, 3, true);
    let passed = (0..5)
        .filter(|_| limiter.take(&raised, || "spiffe://cluster.local/ns/a/sa/x".to_owned(), start).is_ok())
        .count();
    assert_eq!(passed, 3, "the new burst, from a full bucket");
}

#[test]
fn the_buckets_kept_are_bounded() {
    let (limiter, per_source, start) = (Limiter::default(), limit(1, 60_000, 1, true), Instant::now());
    for source in 0..MAX_BUCKETS + 100 {
        limiter.take(&per_source, || source.to_string().to_string(), start).unwrap();
    }
    assert!(limiter.buckets.lock().unwrap().len() <= MAX_BUCKETS);
}

#[test]
fn a_fault_delays_and_aborts_its_shares_and_a_bad_one_is_refused() {
    let fault = |delay_ms, delay_per_million, abort_http_status, abort_grpc_status, abort_per_million| {
        Fault::compile(&api::Fault {
            policy: "shop/chaos".into(),
            delay_ms,
            delay_per_million,
            abort_http_status,
            abort_grpc_status,
            abort_per_million,
        })
    };
    let half = fault(200, 500_000, 503, None, 250_000).unwrap();
    assert_eq!(half.delay(499_999), Some(Duration::from_millis(200)));
    assert_eq!(half.delay(500_000), None);
    assert_eq!(half.abort(249_999), Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE)));
    assert_eq!(half.abort(250_000), None);
    assert_eq!(fault(0, 0, 0, Some(14), 1_000_000).unwrap().abort(999_999), Some(Abort::Grpc(14)));
    assert_eq!(
        Abort::Grpc(14).as_http(),
        Abort::Http(StatusCode::SERVICE_UNAVAILABLE),
        "for a client not speaking gRPC"
    );
    assert_eq!(Abort::Grpc(8).as_http(), Abort::Http(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(fault(0, 0, 0, None, 0).unwrap().abort(0), None, "no abort share, no abort");
    assert!(fault(0, 0, 99, None, 1).is_err());
    assert!(fault(0, 0, 700, None, 1).is_err());
    assert!(fault(10, 1_000_001, 0, None, 0).is_err());
    let empty = Policies::compile(None).unwrap();
    assert_eq!(empty, Policies::default());
}
