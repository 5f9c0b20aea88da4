//! xDS resources as a control plane (or anyone who reaches a proxy's xDS stream as one) sends
//! them, decoded, converted and applied to a proxy's state. Input: one byte that chooses the
//! type (even: `istio.workload.Address`, odd: `istio.security.Authorization`), then the
//! resource's protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::{
    discovery::{DeltaDiscoveryResponse, Resource},
    security::AUTHORIZATION_TYPE,
    workload::ADDRESS_TYPE,
};
use weft_proxy::{state::State, xds};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, value)) = data.split_first() else { return };
    let type_url = if kind % 2 == 0 { ADDRESS_TYPE } else { AUTHORIZATION_TYPE };
    let resource = Resource {
        name: "fuzzed".into(),
        version: "1".into(),
        resource: Some(prost_types::Any { type_url: type_url.into(), value: value.to_vec() }),
        ..Default::default()
    };
    let response = DeltaDiscoveryResponse {
        type_url: type_url.into(),
        resources: vec![resource],
        ..Default::default()
    };
    let state = State::default();
    if type_url == ADDRESS_TYPE {
        if let Ok(update) = xds::update(&response) {
            // Refused as a whole or applied; never a panic.
            let _ = state.apply(update);
        }
    } else if let Ok(update) = xds::policies(&response) {
        state.apply_policies(update);
    }
});
