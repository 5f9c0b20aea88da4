//! The HBONE CONNECT request a node proxy or a waypoint accepts from a peer: the method, the
//! `:authority` (an address, or a Service's hostname and port) and the `Forwarded`,
//! `traceparent` and `Via` headers. Input: `METHOD AUTHORITY`, then a `name: value` line a header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, headers)) = weft_fuzz::head(data) else { return };
    let (method, authority) = first.split_once(' ').unwrap_or((first, ""));
    let (Ok(method), Ok(uri)) = (http::Method::from_bytes(method.as_bytes()), http::Uri::try_from(authority))
    else {
        return;
    };
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = weft_fuzz::header_map(&headers);
    // Accepted or refused with a reason; never a panic.
    let _ = weft_proxy::hbone::server::check_connect(&request);
});
