//! The control plane's AuthorizationPolicy compiler, on whatever a user can write into the
//! custom resource (JSON, as the API server hands it over): every policy converts, to a
//! resource or to notes saying why not, and a resource it serves encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_control::index::policy::{AuthorizationPolicy, convert};

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = serde_json::from_slice::<AuthorizationPolicy>(data) else { return };
    let converted = convert(&policy, "weft-system");
    if let Some(authorization) = converted.authorization {
        let _ = authorization.encode_to_vec();
    }
});
