use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use weft_api::route as api;

use super::{Breaker, Detection, Outliers, Seen};

fn detection(consecutive_5xx: u32, consecutive_gateway: u32, max_ejection_percent: u32) -> Detection {
    Breaker::compile(&api::CircuitBreaker {
        policy: "shop/breaker".into(),
        max_requests: 0,
        consecutive_5xx_errors: consecutive_5xx,
        consecutive_gateway_errors: consecutive_gateway,
        base_ejection_ms: 30_000,
        max_ejection_percent,
        ..Default::default()
    })
    .unwrap()
    .detection
    .unwrap()
}

fn endpoints(count: u8) -> Vec<SocketAddr> {
    (1..=count).map(|last| SocketAddr::from(([10, 0, 0, last], 8080))).collect()
}

const SERVER_ERROR: Seen = Seen::ServerError { gateway: false };

#[test]
fn an_endpoint_failing_in_a_row_is_ejected_for_longer_each_time_and_forgiven_after_staying_well() {
    let (outliers, detection, all, start) =
        (Outliers::default(), detection(3, 0, 100), endpoints(2), Instant::now());
    let bad = all[0];
    assert_eq!(outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, start), None);
    assert_eq!(outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, start), None);
    assert_eq!(
        outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, start),
        Some(Duration::from_secs(30))
    );
    assert_eq!(outliers.ejected("shop/echo", &all, start), [bad]);
    assert_eq!(outliers.ejected("shop/other", &all, start), [], "judged per backend");
    // Out: what it still answers (requests under way) counts for nothing.
    assert_eq!(outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, start), None);
    let back = start + Duration::from_secs(30);
    assert_eq!(outliers.ejected("shop/echo", &all, back), [], "returned once its time is up");
    for _ in 0..2 {
        outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, back);
    }
    assert_eq!(
        outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, back),
        Some(Duration::from_secs(60))
    );
    // Well for as long as its ejection lasts: one ejection forgiven, the next lasts 60 s again.
    let well = back + Duration::from_secs(120);
    assert_eq!(outliers.record(&detection, "shop/echo", bad, Seen::Success, &all, well), None);
    let eject = |at| {
        for _ in 0..2 {
            outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, at);
        }
        outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, at)
    };
    assert_eq!(eject(well), Some(Duration::from_secs(60)));
    // Forgiven twice, 60 s then 30 s of being well after it returned: back to the base time.
    let returned = well + Duration::from_secs(60);
    let once = returned + Duration::from_secs(60);
    outliers.record(&detection, "shop/echo", bad, Seen::Success, &all, once);
    outliers.record(&detection, "shop/echo", bad, Seen::Success, &all, once + Duration::from_secs(30));
    assert_eq!(eject(once + Duration::from_secs(30)), Some(Duration::from_secs(30)));
}

#[test]
fn a_success_breaks_the_run_and_gateway_errors_are_counted_apart() {
    let (outliers, detection, all, now) =
        (Outliers::default(), detection(0, 2, 100), endpoints(2), Instant::now());
    let bad = all[0];
    outliers.record(&detection, "shop/echo", bad, Seen::GatewayError, &all, now);
    outliers.record(&detection, "shop/echo", bad, SERVER_ERROR, &all, now);
    assert_eq!(
        outliers.record(&detection, "shop/echo", bad, Seen::GatewayError, &all, now),
        None,
        "a 500 is no gateway error"
    );
    outliers.record(&detection, "shop/echo", bad, Seen::Success, &all, now);
    assert_eq!(
        outliers.record(&detection, "shop/echo", bad, Seen::ServerError { gateway: true }, &all, now),
        None
    );
    assert!(outliers.record(&detection, "shop/echo", bad, Seen::GatewayError, &all, now).is_some());
}

#[test]
fn no_more_than_the_maximum_share_is_ejected_but_one_always_may_be_and_all_out_means_all_in() {
    let (outliers, quarter, all, now) =
        (Outliers::default(), detection(1, 0, 25), endpoints(4), Instant::now());
    assert!(
        outliers.record(&quarter, "shop/echo", all[0], SERVER_ERROR, &all, now).is_some(),
        "one of four: 25 %"
    );
    assert_eq!(
        outliers.record(&quarter, "shop/echo", all[1], SERVER_ERROR, &all, now),
        None,
        "two would be 50 %"
    );
    let one = [all[2]];
    let (small, lone) = (detection(1, 0, 10), Outliers::default());
    assert!(lone.record(&small, "shop/echo", one[0], SERVER_ERROR, &one, now).is_some(), "one always may be");
    assert_eq!(lone.ejected("shop/echo", &one, now), [], "none left: every endpoint gets requests");
    assert!(
        Breaker::compile(&api::CircuitBreaker { max_ejection_percent: 101, ..Default::default() }).is_err()
    );
}
