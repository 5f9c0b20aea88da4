//! SPIFFE identities as they arrive in a peer certificate's URI SAN or a policy: one that
//! parses is printed back exactly as it was written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::identity::Identity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(identity) = text.parse::<Identity>() {
        assert_eq!(identity.to_string(), text, "an identity prints as it was written");
    }
});
