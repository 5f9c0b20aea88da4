//! L7 authorization policies as a waypoint receives them (`weft.security.HttpAuthorization`)
//! and a client's request: the policy is compiled or refused whole, and the request then gets
//! a verdict. Input: [`weft_fuzz::request_and_resource`].
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::identity::Identity;
use weft_waypoint::{authz, table::POLICIES};

fuzz_target!(|data: &[u8]| {
    let Some((request, resource)) = weft_fuzz::request_and_resource(data) else { return };
    let Ok(policy) = (POLICIES.convert)(resource) else { return };
    let source = Identity::new("cluster.local", "shop", "client");
    let host = request
        .uri
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| request.headers.get(http::header::HOST).and_then(|host| host.to_str().ok()));
    for port in [80, 8080] {
        let facts = authz::Request {
            source: Some(&source),
            source_ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            method: &request.method,
            path: request.uri.path(),
            host,
            port,
            headers: &request.headers,
            opaque: false,
        };
        let _ = authz::decide([&policy], &facts);
        let _ = authz::decide([&policy], &authz::Request { opaque: true, ..facts });
    }
});
