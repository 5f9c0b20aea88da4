//! The control plane's AuthorizationPolicy compilers, on whatever a user can write into the
//! custom resource (JSON, as the API server hands it over): every policy converts, to a
//! resource or to notes saying why not, and what the control plane serves its proxies accept —
//! a resource a proxy refuses would make it refuse the whole xDS response, every other
//! policy's update with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::{
    discovery::{DeltaDiscoveryResponse, Resource},
    security::AUTHORIZATION_TYPE,
};
use weft_control::index::{
    Naming,
    policy::{AuthorizationPolicy, convert, http},
};

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = serde_json::from_slice::<AuthorizationPolicy>(data) else { return };
    if let Some(authorization) = convert(&policy, "weft-system").authorization {
        let response = DeltaDiscoveryResponse {
            type_url: AUTHORIZATION_TYPE.into(),
            resources: vec![Resource {
                name: "policy".into(),
                resource: Some(prost_types::Any {
                    type_url: AUTHORIZATION_TYPE.into(),
                    value: authorization.encode_to_vec(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        if let Err(error) = weft_proxy::xds::policies(&response) {
            panic!("a node proxy refuses what the control plane serves it: {error}");
        }
    }
    let naming = Naming {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        root_namespace: "weft-system".into(),
        labels: Default::default(),
    };
    if let Some((resource, _notes)) = http::convert(&policy, &naming)
        && let Err(error) = (weft_waypoint::table::POLICIES.convert)(&resource.encode_to_vec())
    {
        panic!("a waypoint refuses what the control plane serves it: {error}");
    }
});
