//! A Service's routes as a waypoint receives them (`weft.route.ServiceRoutes`, compiled from
//! HTTPRoutes, GRPCRoutes and TCPRoutes) and a client's request to that Service, on each port
//! the routes name and from each namespace whose consumer routes it holds (and from none): the
//! resource is compiled or refused whole, and a request then finds its rule or none and is
//! redirected, rewritten and given its headers (the rule's, then its backend's) as the waypoint
//! would.
//! Input: [`weft_fuzz::request_and_resource`].
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_waypoint::{route::Selected, table::ROUTES};

fuzz_target!(|data: &[u8]| {
    let Some((request, resource)) = weft_fuzz::request_and_resource(data) else { return };
    let Ok(routes) = (ROUTES.convert)(resource) else { return };
    let Ok(message) = <weft_api::route::ServiceRoutes as prost::Message>::decode(resource) else { return };
    let all_routes = message.routes.iter().chain(&message.tcp_routes).chain(&message.consumer_routes);
    let ports = all_routes.flat_map(|route| route.ports.clone());
    let ports: Vec<u32> =
        ports.chain(message.declared_ports.iter().map(|declared| declared.port)).chain([80]).collect();
    let mut clients: Vec<&str> =
        message.consumer_routes.iter().map(|route| route.consumer_namespace.as_str()).collect();
    clients.push("");
    for port in ports.into_iter().filter_map(|port| u16::try_from(port).ok()) {
        let _ = routes.declared_http(port);
        for client in &clients {
            let _ = (routes.routes_http(port, client), routes.reading(port, client));
            let Some(Selected { rule, matched_prefix, .. }) =
                routes.select(port, client, &request.method, &request.uri, &request.headers)
            else {
                continue;
            };
            let host = request.headers.get(http::header::HOST).and_then(|host| host.to_str().ok());
            if let Some(redirect) = rule.redirect() {
                let _ = redirect.location(&request.uri, host.unwrap_or("echo.shop"), port, matched_prefix);
                continue;
            }
            let (mut uri, mut headers) = (request.uri.clone(), request.headers.clone());
            rule.request_headers().apply(&mut headers);
            if let Some(rewrite) = rule.rewrite() {
                rewrite.apply(&mut uri, &mut headers, matched_prefix);
            }
            if let Some(backend) = rule.pick_backend_randomly() {
                backend.request_headers.apply(&mut headers);
                backend.response_headers.apply(&mut headers);
            }
            rule.response_headers().apply(&mut headers);
        }
    }
});
