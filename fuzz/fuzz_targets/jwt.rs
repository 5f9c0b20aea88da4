//! JWT handling, on whatever a client or a policy's author can write; the first byte picks the
//! input: (0) a token as a client sends it, to a waypoint whose issuer's key the fuzzer cannot
//! know — nothing may verify; (1) claims a trusted issuer signs, so that the claims reach
//! verification and authorization whatever their shape; (2) a key set; (3) a
//! RequestAuthentication as the API server hands it over — what the control plane serves,
//! waypoints accept (a resource refused would take every other update with it).
#![no_main]

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Uri, header};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::http_authorization as api;
use weft_control::index::{
    Naming,
    authentication::{KeySets, RequestAuthentication, convert},
};
use weft_waypoint::{
    authn::{self, Policy},
    jwt::{Jwks, testing::Signer},
};

/// The issuer's key, new for every run: no seed or mutation can hold a signature of it.
static ISSUER: LazyLock<(Signer, Policy)> = LazyLock::new(|| {
    let signer = Signer::ed25519("fuzz");
    let rule = api::JwtRule {
        issuer: "fuzz".into(),
        jwks: weft_waypoint::jwt::testing::jwks(&[&signer]),
        output_claim_to_headers: vec![api::ClaimToHeader {
            header: "x-groups".into(),
            claim: "org.groups".into(),
        }],
        ..Default::default()
    };
    let policy = api::RequestAuthentication { name: "fuzz".into(), rules: vec![rule], ..Default::default() };
    (signer, Policy::try_from(policy).expect("the fuzz target's own policy"))
});

fn authenticate(token: &str, uri: &Uri) -> Result<Option<weft_waypoint::jwt::Claims>, authn::Rejected> {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, value);
    }
    authn::authenticate([&ISSUER.1], &mut headers, uri, std::time::SystemTime::now())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match mode % 4 {
        0 => {
            let uri = Uri::try_from(format!("/?access_token={text}")).unwrap_or_default();
            if let Ok(Some(claims)) = authenticate(text, &uri) {
                panic!("a token verified without its issuer's key: {claims:?}");
            }
        }
        1 => {
            let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) else { return };
            let token = ISSUER.0.token(&claims);
            if let Ok(Some(claims)) = authenticate(&token, &Uri::default()) {
                let _ = (
                    claims.strings(&["groups"]),
                    claims.strings(&["org", "groups"]),
                    claims.header_value(&["sub"]),
                );
            }
        }
        2 => {
            let _ = Jwks::parse(text);
        }
        _ => {
            let Ok(policy) = serde_json::from_str::<RequestAuthentication>(text) else { return };
            let naming = Naming {
                trust_domain: "cluster.local".into(),
                cluster_domain: "cluster.local".into(),
                root_namespace: "weft-system".into(),
                labels: Default::default(),
            };
            if let (Some(resource), _) = convert(&policy, &naming, &KeySets::default()) {
                let bytes = resource.encode_to_vec();
                if let Err(error) = (weft_waypoint::table::AUTHENTICATIONS.convert)(&bytes) {
                    panic!("a waypoint refuses what the control plane serves it: {error}");
                }
            }
        }
    }
});
