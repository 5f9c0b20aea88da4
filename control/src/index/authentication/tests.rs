use k8s_openapi::ByteString;
use serde_json::json;

use super::*;

fn naming() -> Naming {
    Naming {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        root_namespace: "weft-system".into(),
        labels: Default::default(),
    }
}

fn policy(spec: serde_json::Value) -> RequestAuthentication {
    serde_json::from_value(json!({ "metadata": { "name": "jwt", "namespace": "shop" }, "spec": spec }))
        .unwrap()
}

const JWKS: &str =
    r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

fn config_map(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(
        json!({ "metadata": { "name": name, "namespace": "shop" }, "data": { "jwks.json": data } }),
    )
    .unwrap()
}

#[test]
fn rules_get_their_key_sets_inline_or_from_a_config_map_or_secret_of_the_namespace() {
    let map = config_map("keys", JWKS);
    let mut secret = Secret::default();
    secret.metadata.name = Some("keys".into());
    secret.metadata.namespace = Some("shop".into());
    secret.data = Some([("jwks.json".to_owned(), ByteString(JWKS.as_bytes().to_vec()))].into());
    let elsewhere = ConfigMap {
        metadata: ObjectMeta { namespace: Some("other".into()), ..map.metadata.clone() },
        ..map.clone()
    };
    let key_sets = KeySets::new(&[&map, &elsewhere], &[&secret]);
    let spec = json!({
        "targetRefs": [{ "group": "", "kind": "Service", "name": "echo" },
                       { "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint" }],
        "jwtRules": [
            { "issuer": "inline", "jwks": JWKS, "audiences": ["shop"] },
            { "issuer": "map", "jwksFrom": { "configMapKeyRef": { "name": "keys", "key": "jwks.json" } } },
            { "issuer": "secret", "jwksFrom": { "secretKeyRef": { "name": "keys", "key": "jwks.json" } },
              "fromHeaders": [{ "name": "x-jwt" }], "outputClaimToHeaders": [{ "header": "x-sub", "claim": "sub" }] },
        ],
    });
    let (resource, notes) = convert(&policy(spec), &naming(), &key_sets);
    let resource = resource.unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(resource.services, ["shop/echo.shop.svc.cluster.local"]);
    assert_eq!(resource.gateways, ["shop/waypoint"]);
    let jwks: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    let same = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap() == jwks;
    assert!(resource.rules.iter().all(|rule| same(&rule.jwks)), "{:?}", resource.rules);
    assert_eq!(resource.rules[0].audiences, ["shop"]);
    assert_eq!(resource.rules[2].from_headers[0].name, "x-jwt");
    assert_eq!(resource.rules[2].output_claim_to_headers[0].claim, "sub");
}

#[test]
fn only_the_public_members_of_a_key_set_are_served() {
    let private = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","kid":"k"}]}"#;
    let spec = json!({ "targetRefs": [{ "group": "", "kind": "Service", "name": "echo" }],
                       "jwtRules": [{ "issuer": "i", "jwks": private }] });
    let (resource, notes) = convert(&policy(spec), &naming(), &KeySets::default());
    let served = &resource.unwrap().rules[0].jwks;
    assert!(notes.is_empty(), "{notes:?}");
    assert!(served.contains("\"kid\":\"k\"") && served.contains("\"x\":"), "{served}");
    assert!(!served.contains("\"d\""), "the private key travelled: {served}");
}

#[test]
fn what_cannot_be_resolved_leaves_its_rule_without_keys_and_a_note_saying_why() {
    let broken = config_map("broken", "not json");
    let key_sets = KeySets::new(&[&broken], &[]);
    let target = json!([{ "group": "", "kind": "Service", "name": "echo" }]);
    let spec = json!({
        "targetRefs": target,
        "jwtRules": [
            { "issuer": "uri", "jwksUri": "https://issuer.example/keys" },
            { "issuer": "missing", "jwksFrom": { "configMapKeyRef": { "name": "absent", "key": "k" } } },
            { "issuer": "broken", "jwksFrom": { "configMapKeyRef": { "name": "broken", "key": "jwks.json" } } },
            { "issuer": "empty", "jwks": "{\"keys\": []}" },
            { "issuer": "bad-header", "jwks": JWKS, "fromHeaders": [{ "name": "bad header" }, { "name": "x-jwt" }],
              "outputClaimToHeaders": [{ "header": "x-team", "claim": "team" }] },
        ],
    });
    let (resource, notes) = convert(&policy(spec), &naming(), &key_sets);
    let resource = resource.unwrap();
    let issuers: Vec<&str> = resource.rules.iter().map(|rule| rule.issuer.as_str()).collect();
    assert_eq!(issuers, ["uri", "missing", "broken", "empty", "bad-header"]);
    assert!(resource.rules.iter().all(|rule| rule.jwks.is_empty()), "each refuses its tokens");
    // The bad header's rule still looks where it can and still owns the header it writes, so
    // a client cannot set that header itself.
    let bad_header = &resource.rules[4];
    assert_eq!(bad_header.from_headers.len(), 1);
    assert_eq!(bad_header.output_claim_to_headers[0].header, "x-team");
    let notes = notes.join("\n");
    for expected in [
        "Weft fetches no keys",
        "ConfigMap shop/absent labelled",
        "jwks is not JSON",
        "there must be one",
        "\"bad header\"",
    ] {
        assert!(notes.contains(expected), "{expected}: {notes}");
    }
    let (none, notes) =
        convert(&policy(json!({ "selector": { "matchLabels": { "app": "echo" } } })), &naming(), &key_sets);
    assert!(none.is_none() && notes[0].contains("sidecars"), "{notes:?}");
}
