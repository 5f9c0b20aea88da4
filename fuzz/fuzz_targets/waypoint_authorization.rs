//! L7 authorization policies as a waypoint receives them (`weft.security.HttpAuthorization`)
//! and a client's request: the policy is compiled or refused whole, and the request then gets
//! a verdict, without a JWT and with one (so `request.auth.*` is matched on real claims).
//! Input: [`weft_fuzz::request_and_resource`].
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use weft_proxy::identity::Identity;
use weft_waypoint::{
    authz,
    jwt::{Claims, Jwks, Token, testing},
    table::POLICIES,
};

/// A verified token's claims: a list, a nested object, a number beside the usual ones.
static CLAIMS: LazyLock<Claims> = LazyLock::new(|| {
    let signer = testing::Signer::ed25519("fuzz");
    let claims = serde_json::json!({ "iss": "issuer", "sub": "alice", "aud": ["shop", "web"], "azp": "web",
                                     "groups": ["admin", "dev"], "org": { "team": "payments" }, "level": 3 });
    let jwks = Jwks::parse(&testing::jwks(&[&signer])).expect("the target's own key set");
    Token::parse(&signer.token(&claims))
        .and_then(|token| token.verify(&jwks, &[], std::time::SystemTime::now()))
        .expect("the target's own token")
});

fuzz_target!(|data: &[u8]| {
    let Some((request, resource)) = weft_fuzz::request_and_resource(data) else { return };
    let Ok(policy) = (POLICIES.convert)(resource) else { return };
    let source = Identity::new("cluster.local", "shop", "client");
    let host = request
        .uri
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| request.headers.get(http::header::HOST).and_then(|host| host.to_str().ok()));
    for port in [80, 8080] {
        let facts = authz::Request {
            source: Some(&source),
            source_ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            method: &request.method,
            path: request.uri.path(),
            host,
            port,
            headers: &request.headers,
            auth: None,
            opaque: false,
        };
        let _ = authz::decide([&policy], &facts);
        let _ = authz::decide([&policy], &authz::Request { auth: Some(&CLAIMS), ..facts });
        let _ = authz::decide([&policy], &authz::Request { opaque: true, ..facts });
    }
});
