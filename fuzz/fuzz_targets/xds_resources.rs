//! xDS resources as a control plane (or anyone who reaches a proxy's xDS stream as one) sends
//! them, decoded, converted and applied one response after another to one proxy's state: a
//! response is applied or refused whole, and a refused one changes nothing. Input: responses,
//! each a tag byte (bit 0: `istio.security.Authorization`, else `istio.workload.Address`; bits
//! 1–2: which of four resource names; bit 7: the name's removal), a 2-byte little-endian
//! length, and the resource's protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::{
    discovery::{DeltaDiscoveryResponse, Resource},
    security::AUTHORIZATION_TYPE,
    workload::ADDRESS_TYPE,
};
use weft_proxy::{state::State, xds};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fuzz_target!(|data: &[u8]| {
    let state = State::default();
    let mut rest = data;
    while let Some((&tag, after)) = rest.split_first() {
        let Some((length, after)) = after.split_first_chunk::<2>() else { return };
        let (value, after) = after.split_at(usize::from(u16::from_le_bytes(*length)).min(after.len()));
        rest = after;
        let type_url = if tag & 1 == 1 { AUTHORIZATION_TYPE } else { ADDRESS_TYPE };
        let name = NAMES[usize::from(tag >> 1) % NAMES.len()];
        let mut response = DeltaDiscoveryResponse { type_url: type_url.into(), ..Default::default() };
        if tag & 0x80 != 0 {
            response.removed_resources.push(name.into());
        } else {
            response.resources.push(Resource {
                name: name.into(),
                version: format!("{}", data.len() - rest.len()),
                resource: Some(prost_types::Any { type_url: type_url.into(), value: value.to_vec() }),
                ..Default::default()
            });
        }
        if type_url == AUTHORIZATION_TYPE {
            if let Ok(update) = xds::policies(&response) {
                state.apply_policies(update);
            }
        } else if let Ok(update) = xds::update(&response) {
            let before = state.versions();
            if state.apply(update).is_err() {
                assert_eq!(state.versions(), before, "a refused update changes nothing");
            }
        }
    }
});
