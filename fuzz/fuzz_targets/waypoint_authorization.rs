//! L7 authorization policies as a waypoint receives them (`weft.security.HttpAuthorization`):
//! compiled or refused whole, and once compiled every request gets a verdict. Input: the
//! resource's protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::http_authorization::HttpAuthorization;
use weft_proxy::identity::Identity;
use weft_waypoint::authz::{self, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(resource) = HttpAuthorization::decode(data) else { return };
    let Ok(policy) = Policy::try_from(resource) else { return };
    let source = Identity::new("cluster.local", "shop", "client");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", http::HeaderValue::from_static("alice"));
    for (method, path) in [(http::Method::GET, "/"), (http::Method::POST, "/admin/users")] {
        let request = authz::Request {
            source: Some(&source),
            source_ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            method: &method,
            path,
            host: Some("echo.shop.svc.cluster.local"),
            port: 80,
            headers: &headers,
            opaque: false,
        };
        let _ = authz::decide([&policy], &request);
    }
});
