use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use super::*;
use crate::jwt::testing::{Signer, jwks};

const NOW: u64 = 1_800_000_000;

fn rule(issuer: &str, signer: &Signer) -> api::JwtRule {
    api::JwtRule { issuer: issuer.into(), jwks: jwks(&[signer]), ..Default::default() }
}

fn policy(rules: Vec<api::JwtRule>) -> Policy {
    Policy::try_from(api::RequestAuthentication {
        name: "jwt".into(),
        namespace: "shop".into(),
        services: vec!["shop/echo.shop.svc.cluster.local".into()],
        rules,
        ..Default::default()
    })
    .unwrap()
}

fn token(signer: &Signer, issuer: &str) -> String {
    signer.token(&json!({ "iss": issuer, "sub": "alice", "exp": NOW + 60, "team": "payments" }))
}

fn run(policy: &Policy, headers: &mut HeaderMap, uri: &str) -> Result<Option<Claims>, Rejected> {
    let uri: Uri = uri.parse().unwrap();
    authenticate([policy], headers, &uri, UNIX_EPOCH + Duration::from_secs(NOW))
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    headers
}

#[test]
fn a_good_token_authenticates_and_leaves_the_request_a_missing_one_goes_on_anonymous() {
    let signer = Signer::es256("k");
    let policy = policy(vec![rule("issuer-a", &signer)]);
    let mut headers = bearer(&token(&signer, "issuer-a"));
    let claims = run(&policy, &mut headers, "/").unwrap().unwrap();
    assert_eq!(claims.principal, "issuer-a/alice");
    assert!(headers.get(header::AUTHORIZATION).is_none(), "the token is not forwarded by default");
    // The default query parameter, and the prefix in any case.
    assert!(
        run(&policy, &mut HeaderMap::new(), &format!("/?x=1&access_token={}", token(&signer, "issuer-a")))
            .unwrap()
            .is_some()
    );
    let mut lower = HeaderMap::new();
    lower.insert(header::AUTHORIZATION, format!("bearer {}", token(&signer, "issuer-a")).parse().unwrap());
    assert!(run(&policy, &mut lower, "/").unwrap().is_some());
    assert_eq!(run(&policy, &mut HeaderMap::new(), "/"), Ok(None));
    // Another scheme is no token of ours: it passes untouched.
    let mut basic = HeaderMap::new();
    basic.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(run(&policy, &mut basic, "/"), Ok(None));
    assert!(basic.get(header::AUTHORIZATION).is_some());
}

#[test]
fn a_token_the_app_would_read_is_never_overlooked() {
    let signer = Signer::es256("k");
    let forged = token(&Signer::es256("k"), "issuer-a");
    let policy = policy(vec![api::JwtRule {
        from_cookies: vec!["jwt".into()],
        from_params: vec!["access_token".into()],
        ..rule("issuer-a", &signer)
    }]);
    // A cookie header with a byte that is not text still has its token read.
    let mut cookies = HeaderMap::new();
    let raw = [format!("jwt={forged}; x=").as_bytes(), &[0xff]].concat();
    cookies.insert(header::COOKIE, HeaderValue::from_bytes(&raw).unwrap());
    assert_eq!(run(&policy, &mut cookies, "/").unwrap_err().error, jwt::Error::VerificationFailed);
    // A parameter's name percent-encoded is the same parameter to the app.
    let encoded = format!("/?%61ccess%5Ftoken={forged}");
    assert_eq!(
        run(&policy, &mut HeaderMap::new(), &encoded).unwrap_err().error,
        jwt::Error::VerificationFailed
    );
    assert!(
        run(&policy, &mut HeaderMap::new(), &format!("/?access%5ftoken={}", token(&signer, "issuer-a")))
            .unwrap()
            .is_some()
    );
}

#[test]
fn of_two_rules_for_one_issuer_either_may_verify_the_token() {
    let (gateway_key, service_key) = (Signer::es256("g"), Signer::ed25519("s"));
    let on_gateway = policy(vec![rule("issuer-a", &gateway_key)]);
    let on_service = policy(vec![rule("issuer-a", &service_key)]);
    let uri: Uri = "/".parse().unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    for signer in [&gateway_key, &service_key] {
        let mut headers = bearer(&token(signer, "issuer-a"));
        let claims = authenticate([&on_gateway, &on_service], &mut headers, &uri, now);
        assert!(claims.unwrap().is_some(), "in either order");
        let mut headers = bearer(&token(signer, "issuer-a"));
        assert!(authenticate([&on_service, &on_gateway], &mut headers, &uri, now).unwrap().is_some());
    }
    let mut headers = bearer(&token(&Signer::es256("g"), "issuer-a"));
    let refused = authenticate([&on_gateway, &on_service], &mut headers, &uri, now).unwrap_err();
    assert_eq!(refused.error, jwt::Error::VerificationFailed, "the first rule's reason");
}

#[test]
fn scope_is_read_as_its_words() {
    let signer = Signer::ed25519("k");
    let policy = policy(vec![api::JwtRule {
        space_delimited_claims: vec!["roles".into()],
        ..rule("issuer-a", &signer)
    }]);
    let claims =
        json!({ "iss": "issuer-a", "sub": "alice", "scope": "read write", "roles": "a b", "other": "x y" });
    let claims = run(&policy, &mut bearer(&signer.token(&claims)), "/").unwrap().unwrap();
    assert_eq!(claims.strings(&["scope"]), ["read", "write"]);
    assert_eq!(claims.strings(&["roles"]), ["a", "b"]);
    assert_eq!(claims.strings(&["other"]), ["x y"]);
}

#[test]
fn a_bad_token_an_unknown_issuer_or_a_rule_without_keys_is_refused() {
    let (signer, other) = (Signer::es256("k"), Signer::es256("k"));
    let policy = policy(vec![
        rule("issuer-a", &signer),
        api::JwtRule { issuer: "issuer-b".into(), jwks: String::new(), ..Default::default() },
    ]);
    let error = |headers: &mut HeaderMap| run(&policy, headers, "/").unwrap_err().error;
    assert_eq!(error(&mut bearer(&token(&other, "issuer-a"))), jwt::Error::VerificationFailed);
    assert_eq!(error(&mut bearer(&token(&signer, "issuer-c"))), jwt::Error::UnknownIssuer);
    assert_eq!(error(&mut bearer(&token(&signer, "issuer-b"))), jwt::Error::NoKeys);
    assert_eq!(error(&mut bearer("garbage")), jwt::Error::BadFormat);
    assert_eq!(policy.unusable_keys().map(|(issuer, _)| issuer).collect::<Vec<_>>(), ["issuer-b"]);
    // A good token beside a bad one is still refused: every token must verify.
    let mut both = bearer(&token(&signer, "issuer-a"));
    both.append(header::AUTHORIZATION, format!("Bearer {}", token(&other, "issuer-a")).parse().unwrap());
    assert_eq!(error(&mut both), jwt::Error::VerificationFailed);
}

#[test]
fn a_rule_reads_its_own_locations_keeps_the_token_when_told_and_owns_its_claim_headers() {
    let signer = Signer::ed25519("k");
    let custom = api::JwtRule {
        from_headers: vec![api::JwtHeader { name: "x-jwt".into(), prefix: String::new() }],
        forward_original_token: true,
        output_claim_to_headers: vec![api::ClaimToHeader { header: "x-team".into(), claim: "team".into() }],
        output_payload_to_header: "x-jwt-payload".into(),
        ..rule("issuer-a", &signer)
    };
    let policy = policy(vec![custom]);
    let mut headers = HeaderMap::new();
    headers.insert("x-jwt", token(&signer, "issuer-a").parse().unwrap());
    headers.insert("x-team", "spoofed".parse().unwrap());
    assert!(run(&policy, &mut headers, "/").unwrap().is_some());
    assert!(headers.get("x-jwt").is_some(), "forwarded as asked");
    assert_eq!(headers["x-team"], "payments");
    assert!(headers.get("x-jwt-payload").is_some());
    // Its token in the default place is not looked for: no token here, and no spoofed claim.
    let mut elsewhere = bearer(&token(&signer, "issuer-a"));
    elsewhere.insert("x-team", "spoofed".parse().unwrap());
    assert_eq!(run(&policy, &mut elsewhere, "/"), Ok(None));
    assert!(elsewhere.get("x-team").is_none());
    let bad = api::RequestAuthentication {
        rules: vec![api::JwtRule {
            from_headers: vec![api::JwtHeader { name: "bad header".into(), prefix: String::new() }],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(Policy::try_from(bad).is_err());
}

#[test]
fn a_token_verified_once_is_taken_again_until_it_expires_and_never_by_a_policy_with_other_keys() {
    let signer = Signer::es256("k");
    let policy = policy(vec![rule("issuer-a", &signer)]);
    let token = signer.token(&json!({ "iss": "issuer-a", "sub": "alice", "exp": NOW + 10 }));
    let at = |seconds: u64| UNIX_EPOCH + Duration::from_secs(seconds);
    let uri: Uri = "/".parse().unwrap();
    for _ in 0..2 {
        assert!(authenticate([&policy], &mut bearer(&token), &uri, at(NOW)).unwrap().is_some());
    }
    // Kept, but past its expiry (and the skew): refused all the same.
    let late = authenticate([&policy], &mut bearer(&token), &uri, at(NOW + 71)).unwrap_err();
    assert_eq!(late.error, jwt::Error::Expired);
    // The issuer's keys rotated: a new policy, and the kept token counts for nothing.
    let rotated = self::policy(vec![rule("issuer-a", &Signer::es256("k"))]);
    let refused = authenticate([&rotated], &mut bearer(&token), &uri, at(NOW)).unwrap_err();
    assert_eq!(refused.error, jwt::Error::VerificationFailed);
}
