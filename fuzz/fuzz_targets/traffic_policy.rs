//! The control plane's traffic policy converters (`networking.weft.dev`), on whatever a user
//! can write into the custom resources (JSON, as the API server hands it over; the same bytes
//! read as each kind): every policy converts, or says why not, and what the control plane
//! serves waypoints they accept — a `ServiceRoutes` a waypoint refuses would take every route
//! of that Service with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::route::{Policies, ServiceRoutes};
use weft_control::index::traffic::{
    CircuitBreakerPolicy, FaultInjectionPolicy, LoadBalancerPolicy, RateLimitPolicy, circuit_breaker, fault,
    load_balancer, rate_limit,
};

/// Panics unless a waypoint takes `policies` as a Service's.
fn served(policies: Policies) {
    let resource = ServiceRoutes {
        service: "shop/echo.shop.svc.cluster.local".into(),
        policies: Some(policies),
        ..Default::default()
    };
    if let Err(error) = (weft_waypoint::table::ROUTES.convert)(&resource.encode_to_vec()) {
        panic!("a waypoint refuses what the control plane serves it: {error}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = serde_json::from_slice::<FaultInjectionPolicy>(data)
        && let Ok(fault) = fault("shop/fuzzed", &policy.spec)
    {
        served(Policies { fault: Some(fault), ..Default::default() });
    }
    if let Ok(policy) = serde_json::from_slice::<RateLimitPolicy>(data)
        && let Ok(limit) = rate_limit("shop/fuzzed", &policy.spec)
    {
        served(Policies { rate_limit: Some(limit), ..Default::default() });
    }
    if let Ok(policy) = serde_json::from_slice::<CircuitBreakerPolicy>(data)
        && let Ok(breaker) = circuit_breaker("shop/fuzzed", &policy.spec)
    {
        served(Policies { circuit_breaker: Some(breaker), ..Default::default() });
    }
    if let Ok(policy) = serde_json::from_slice::<LoadBalancerPolicy>(data)
        && let Ok(balancer) = load_balancer("shop/fuzzed", &policy.spec)
    {
        served(Policies { load_balancer: Some(balancer), ..Default::default() });
    }
});
