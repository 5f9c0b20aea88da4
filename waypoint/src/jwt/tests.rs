use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::testing::{Signer, jwks};
use super::*;

const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn claims() -> Value {
    json!({ "iss": "https://issuer.example", "sub": "alice", "aud": ["shop", "other"], "azp": "web",
            "exp": NOW + 600, "groups": ["admin", "dev"], "org": { "team": "payments" }, "level": 3 })
}

fn verify(signer: &Signer, set: &str, claims: &Value, audiences: &[&str]) -> Result<Claims, Error> {
    let audiences: Vec<String> = audiences.iter().map(|aud| (*aud).to_owned()).collect();
    Token::parse(&signer.token(claims))?.verify(&Jwks::parse(set).unwrap(), &audiences, now())
}

#[test]
fn a_token_signed_by_a_key_of_the_set_gives_its_claims_whatever_the_algorithm() {
    for signer in [Signer::rs256("r"), Signer::es256("e"), Signer::es512("p"), Signer::ed25519("d")] {
        let claims = verify(&signer, &jwks(&[&signer]), &claims(), &["shop"]).unwrap();
        assert_eq!(claims.principal, "https://issuer.example/alice");
        assert_eq!(claims.audiences, ["shop", "other"]);
        assert_eq!(claims.presenter.as_deref(), Some("web"));
        assert_eq!(claims.strings(&["groups"]), ["admin", "dev"]);
        assert_eq!(claims.strings(&["org", "team"]), ["payments"]);
        assert!(claims.strings(&["level"]).is_empty() && claims.strings(&["nothing"]).is_empty());
        assert_eq!(claims.header_value(&["level"]).as_deref(), Some("3"));
        assert_eq!(claims.header_value(&["groups"]), None);
    }
}

#[test]
fn a_token_is_refused_when_expired_early_from_another_key_for_other_audiences_or_tampered() {
    let signer = Signer::es256("k1");
    let set = jwks(&[&signer]);
    let mut expired = claims();
    expired["exp"] = json!(NOW - 61);
    assert_eq!(verify(&signer, &set, &expired, &[]), Err(Error::Expired));
    // Within the clock skew: still good.
    expired["exp"] = json!(NOW - 59);
    assert!(verify(&signer, &set, &expired, &[]).is_ok());
    let mut early = claims();
    early["nbf"] = json!(NOW + 61);
    assert_eq!(verify(&signer, &set, &early, &[]), Err(Error::NotYetValid));
    assert_eq!(verify(&signer, &set, &claims(), &["billing"]), Err(Error::AudienceNotAllowed));
    // Envoy's audience comparison: no scheme, no trailing slash.
    let mut url = claims();
    url["aud"] = json!("https://shop.example/");
    assert!(verify(&signer, &set, &url, &["shop.example"]).is_ok());
    // Another key with the same kid: the signature does not verify.
    let impostor = Signer::es256("k1");
    assert_eq!(verify(&impostor, &set, &claims(), &[]), Err(Error::VerificationFailed));
    // A kid the set does not have, or a key of another type: no key to try.
    assert_eq!(verify(&Signer::es256("k2"), &set, &claims(), &[]), Err(Error::NoMatchingKey));
    assert_eq!(verify(&Signer::ed25519("k1"), &set, &claims(), &[]), Err(Error::NoMatchingKey));
    // The payload changed after signing.
    let token = signer.token(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = BASE64URL.encode(json!({ "iss": "https://issuer.example", "sub": "root" }).to_string());
    parts[1] = &forged;
    let forged = Token::parse(&parts.join(".")).unwrap();
    assert_eq!(
        forged.verify(&Jwks::parse(&set).unwrap(), &[], now()).unwrap_err(),
        Error::VerificationFailed
    );
}

#[test]
fn a_rotated_set_verifies_the_new_keys_tokens_and_still_the_old_ones_while_it_holds_them() {
    let (old, new) = (Signer::rs256("2025"), Signer::rs256("2026"));
    let both = jwks(&[&old, &new]);
    assert!(verify(&old, &both, &claims(), &[]).is_ok());
    assert!(verify(&new, &both, &claims(), &[]).is_ok());
    assert_eq!(verify(&old, &jwks(&[&new]), &claims(), &[]), Err(Error::NoMatchingKey));
}

#[test]
fn malformed_tokens_and_unsupported_algorithms_are_refused_with_envoys_words() {
    let none = format!(
        "{}.{}.",
        BASE64URL.encode(r#"{"alg":"none"}"#),
        BASE64URL.encode(r#"{"iss":"i","sub":"s"}"#)
    );
    let hmac = format!("{}.{}.c2ln", BASE64URL.encode(r#"{"alg":"HS256"}"#), BASE64URL.encode("{}"));
    let cases = [
        ("", Error::BadFormat),
        ("a.b", Error::BadFormat),
        ("a.b.c.d", Error::BadFormat),
        ("!!.e30.", Error::BadHeader),
        (&format!("{}.e30.", BASE64URL.encode("[1]")), Error::BadHeader),
        (&none, Error::UnsupportedAlgorithm),
        (&hmac, Error::UnsupportedAlgorithm),
        (&format!("{}.!!.", BASE64URL.encode(r#"{"alg":"ES256"}"#)), Error::BadPayload),
        (&format!("{}.e30.!!", BASE64URL.encode(r#"{"alg":"ES256"}"#)), Error::BadSignature),
    ];
    for (raw, error) in cases {
        assert_eq!(Token::parse(raw).unwrap_err(), error, "{raw:?}");
    }
    assert_eq!(Error::Expired.to_string(), "Jwt is expired");
    let signer = Signer::ed25519("k");
    let mut claims = claims();
    claims["exp"] = json!("tomorrow");
    assert_eq!(verify(&signer, &jwks(&[&signer]), &claims, &[]), Err(Error::BadClaim("exp")));
    // As far in the future as a Duration reaches: still good.
    claims["exp"] = json!(18_446_744_073_709_549_568.0_f64);
    assert!(verify(&signer, &jwks(&[&signer]), &claims, &[]).is_ok());
}

#[test]
fn a_key_set_keeps_its_signing_keys_passes_over_others_and_refuses_malformed_ones() {
    let signer = Signer::es256("k");
    let mut set: Value = serde_json::from_str(&jwks(&[&signer])).unwrap();
    set["keys"].as_array_mut().unwrap().extend([
        json!({ "kty": "oct", "k": "c2VjcmV0" }),
        json!({ "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB" }),
        json!({ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }),
    ]);
    assert_eq!(Jwks::parse(&set.to_string()).unwrap().keys.len(), 1);
    // A malformed key beside a good one is passed over too, as Envoy does.
    set["keys"].as_array_mut().unwrap().push(json!({ "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA" }));
    assert_eq!(Jwks::parse(&set.to_string()).unwrap().keys.len(), 1);
    assert!(matches!(Jwks::parse("nope"), Err(JwksError::NotJwks(_))));
    assert!(matches!(Jwks::parse(r#"{"keys": 3}"#), Err(JwksError::NotJwks(_))));
    assert_eq!(Jwks::parse(r#"{"keys": []}"#), Err(JwksError::NoUsableKey));
    assert!(matches!(
        Jwks::parse(r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#),
        Err(JwksError::BadKey { index: 0, .. })
    ));
    assert!(matches!(Jwks::parse(r#"{"keys": [{"kty": "RSA", "n": "@@"}]}"#), Err(JwksError::BadKey { .. })));
}
