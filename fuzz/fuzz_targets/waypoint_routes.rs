//! A Service's routes as a waypoint receives them (`weft.route.ServiceRoutes`, compiled from
//! HTTPRoutes, GRPCRoutes and TCPRoutes): compiled or refused whole, and once compiled every
//! request finds its rule or none. Input: the resource's protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::route::ServiceRoutes;
use weft_waypoint::route::Routes;

/// Requests every compiled resource is asked about.
const REQUESTS: [(&str, &str); 4] =
    [("GET", "/"), ("POST", "/api/items?id=7&debug"), ("GET", "/v2/check"), ("DELETE", "/a/b/../c")];

fuzz_target!(|data: &[u8]| {
    let Ok(resource) = ServiceRoutes::decode(data) else { return };
    let Ok(routes) = Routes::try_from(&resource) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-canary", http::HeaderValue::from_static("yes"));
    for port in [80, 8080, 9090] {
        for (method, target) in REQUESTS {
            let (method, uri) = (method.parse().expect("a method"), target.parse().expect("a target"));
            let _ = routes.select(port, &method, &uri, &headers);
        }
        let _ = (routes.select_tcp(port), routes.declared_http(port));
    }
});
