//! The request target and `Host` a waypoint reads before it routes and authorizes: refused
//! with a 400, or made canonical — and canonical is a fixed point, so a policy and a route
//! see the path the app will. Input: the target, then a `name: value` line a header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_waypoint::normalize;

fuzz_target!(|data: &[u8]| {
    let Some((target, headers)) = weft_fuzz::head(data) else { return };
    let Ok(mut uri) = http::Uri::try_from(target) else { return };
    let headers = weft_fuzz::header_map(&headers);
    if normalize::target(&mut uri, &headers).is_ok() {
        let mut again = uri.clone();
        normalize::target(&mut again, &headers).expect("a canonical target is accepted");
        assert_eq!(again, uri, "a canonical target stays as it is");
    }
});
