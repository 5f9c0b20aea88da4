//! Istio-style policies as users write them, and what node proxies receive.
use api::string_match::MatchType;

use super::*;

fn policy(namespace: &str, spec: serde_json::Value) -> AuthorizationPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "security.weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": "p", "namespace": namespace },
        "spec": spec,
    }))
    .unwrap()
}

fn exact(value: &str) -> api::StringMatch {
    api::StringMatch { match_type: Some(MatchType::Exact(value.into())) }
}

#[test]
fn an_l4_allow_converts_field_for_field() {
    let converted = convert(
        &policy(
            "shop",
            serde_json::json!({
                "selector": { "matchLabels": { "app": "cart" } },
                "rules": [{
                    "from": [
                        { "source": { "principals": ["spiffe://cluster.local/ns/shop/sa/web", "cluster.local/ns/ops/*"] } },
                        { "source": { "namespaces": ["*"], "notIpBlocks": ["10.0.0.0/8", "fd00::1"] } },
                    ],
                    "to": [{ "operation": { "ports": ["8080"], "notPorts": ["9090"] } }],
                    "when": [{ "key": "source.namespace", "notValues": ["*-test"] }],
                }],
            }),
        ),
        "weft-system",
    );
    assert!(converted.notes.is_empty(), "{:?}", converted.notes);
    assert_eq!(converted.selector, Some([("app".to_owned(), "cart".to_owned())].into()));
    let authorization = converted.authorization.unwrap();
    assert_eq!(
        (authorization.scope(), authorization.action()),
        (api::Scope::WorkloadSelector, api::Action::Allow)
    );
    let [group] = authorization.groups.as_slice() else { panic!("{:?}", authorization.groups) };
    let [from, to, when] = group.rules.as_slice() else { panic!("{:?}", group.rules) };
    assert_eq!(
        from.matches[0].principals,
        [
            exact("cluster.local/ns/shop/sa/web"),
            api::StringMatch { match_type: Some(MatchType::Prefix("cluster.local/ns/ops/".into())) },
        ]
    );
    assert_eq!(from.matches[1].namespaces, [api::StringMatch { match_type: Some(MatchType::Presence(())) }]);
    assert_eq!(
        from.matches[1].not_source_ips,
        [
            api::Address { address: vec![10, 0, 0, 0], length: 8 },
            api::Address {
                address: "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec(),
                length: 128
            },
        ]
    );
    assert_eq!(
        (to.matches[0].destination_ports.as_slice(), to.matches[0].not_destination_ports.as_slice()),
        (&[8080][..], &[9090][..])
    );
    assert_eq!(
        when.matches[0].not_namespaces,
        [api::StringMatch { match_type: Some(MatchType::Suffix("-test".into())) }]
    );
}

#[test]
fn scope_follows_the_selector_and_the_root_namespace_and_no_rules_stays_no_rules() {
    let mesh_wide = convert(&policy("weft-system", serde_json::json!({ "action": "DENY" })), "weft-system");
    let authorization = mesh_wide.authorization.unwrap();
    assert_eq!((authorization.scope(), authorization.action()), (api::Scope::Global, api::Action::Deny));
    // `spec: {}` is Istio's allow-nothing: an ALLOW without groups.
    let nothing = convert(&policy("shop", serde_json::json!({})), "weft-system").authorization.unwrap();
    assert_eq!(
        (nothing.scope(), nothing.action(), nothing.groups.len()),
        (api::Scope::Namespace, api::Action::Allow, 0)
    );
    // `rules: [{}]` allows everything: one group without rules.
    let everything =
        convert(&policy("shop", serde_json::json!({ "rules": [{}] })), "weft-system").authorization.unwrap();
    assert_eq!(everything.groups, [api::Group { rules: vec![] }]);
    let empty_selector = convert(&policy("shop", serde_json::json!({ "selector": {} })), "weft-system");
    assert_eq!(empty_selector.authorization.unwrap().scope(), api::Scope::Namespace);
}

#[test]
fn what_node_proxies_cannot_check_never_makes_a_policy_allow_more() {
    let rules = serde_json::json!([
        { "to": [{ "operation": { "methods": ["GET"], "ports": ["80"] } }] },
        { "from": [{ "source": { "ipBlocks": ["10.0.0.0/8", "not-an-address"] } }] },
        { "from": [{ "source": { "namespaces": ["shop"] } }] },
    ]);
    let allow = convert(&policy("shop", serde_json::json!({ "rules": rules })), "weft-system");
    // Only the rule that could be checked whole survives.
    let authorization = allow.authorization.unwrap();
    assert_eq!(authorization.groups.len(), 1);
    assert_eq!(authorization.groups[0].rules[0].matches[0].namespaces, [exact("shop")]);
    assert_eq!(allow.notes.len(), 2, "{:?}", allow.notes);
    assert!(
        allow.notes[0].contains("rule 0 dropped") && allow.notes[0].contains("methods needs HTTP"),
        "{:?}",
        allow.notes
    );
    assert!(
        allow.notes[1].contains("rule 1 dropped") && allow.notes[1].contains("not-an-address"),
        "{:?}",
        allow.notes
    );

    let deny =
        convert(&policy("shop", serde_json::json!({ "action": "DENY", "rules": rules })), "weft-system");
    let authorization = deny.authorization.unwrap();
    assert_eq!(authorization.groups.len(), 3);
    // The method is ignored, the port kept: every connection to port 80 is denied.
    assert_eq!(authorization.groups[0].rules[0].matches[0].destination_ports, [80]);
    // One bad address drops the whole field (never a narrower list): every source is denied,
    // by a rule without matches (a match that sets nothing would match nothing).
    assert!(authorization.groups[1].rules[0].matches.is_empty(), "{:?}", authorization.groups[1]);
    assert!(deny.notes.iter().all(|note| note.contains("denies more")), "{:?}", deny.notes);
    let when = convert(
        &policy(
            "shop",
            serde_json::json!({ "action": "DENY", "rules": [{ "when": [{ "key": "request.headers[x]", "values": ["1"] }] }] }),
        ),
        "weft-system",
    );
    assert!(when.notes[0].contains("request.headers[x] is not an L4 attribute"), "{:?}", when.notes);
    let [group] = when.authorization.as_ref().unwrap().groups.clone().try_into().unwrap();
    assert!(group.rules.iter().all(|rule| rule.matches.is_empty()), "denies every connection: {group:?}");
}

#[test]
fn istios_dry_run_annotation_makes_a_policy_that_is_never_enforced() {
    let mut dry = policy("shop", serde_json::json!({ "action": "DENY", "rules": [{}] }));
    dry.metadata.annotations = Some([(DRY_RUN.to_owned(), "true".to_owned())].into());
    let converted = convert(&dry, "weft-system");
    assert!(converted.authorization.unwrap().dry_run);
    assert!(converted.notes.iter().any(|note| note.contains("dry run")), "{:?}", converted.notes);
    let enforced =
        convert(&policy("shop", serde_json::json!({ "action": "DENY", "rules": [{}] })), "weft-system");
    assert!(!enforced.authorization.unwrap().dry_run);
}

#[test]
fn actions_and_targets_only_a_waypoint_could_enforce_are_not_served_and_say_so() {
    for spec in [
        serde_json::json!({ "action": "CUSTOM", "provider": { "name": "ext" } }),
        serde_json::json!({ "action": "AUDIT" }),
    ] {
        let converted = convert(&policy("shop", spec.clone()), "weft-system");
        assert!(converted.authorization.is_none(), "{spec}");
        assert_eq!(converted.notes.len(), 1, "{spec}");
    }
}

fn naming() -> crate::index::Naming {
    crate::index::Naming {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        root_namespace: "weft-system".into(),
        labels: weft_api::enrollment::Labels::Weft,
    }
}

#[test]
fn a_policy_targeting_services_or_a_waypoint_is_the_waypoints_with_its_http_fields() {
    let spec = serde_json::json!({
        "targetRefs": [
            { "kind": "Service", "group": "", "name": "cart" },
            { "kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint" },
            { "kind": "ServiceEntry", "group": "networking.istio.io", "name": "elsewhere" },
        ],
        "action": "DENY",
        "rules": [
            { "to": [{ "operation": { "methods": ["POST"], "paths": ["/admin*"], "ports": ["80"] } }],
              "when": [{ "key": "request.headers[x-debug]", "values": ["1"] },
                       { "key": "request.headers[bad name]", "values": ["1"] },
                       { "key": "request.headers[]", "values": ["1"] },
                       { "key": "request.auth.claims[iss]", "values": ["me"] },
                       { "key": "request.auth.claims[]", "values": ["me"] },
                       { "key": "connection.sni", "values": ["me"] }] },
            { "from": [{ "source": { "ipBlocks": ["10.0.0.0/33"], "principals": ["cluster.local/ns/shop/sa/web"],
                                     "requestPrincipals": ["issuer/alice"] } }] },
        ],
    });
    let policy = policy("shop", spec);
    assert!(convert(&policy, "weft-system").authorization.is_none(), "never a node proxy's");
    let (http, notes) = http::convert(&policy, &naming()).unwrap();
    assert_eq!(http.services, ["shop/cart.shop.svc.cluster.local"]);
    assert_eq!(http.gateways, ["shop/waypoint"]);
    assert!(http.deny && !http.dry_run);
    assert_eq!(http.rules.len(), 2, "a DENY keeps its rules, widened");
    assert_eq!(
        (http.rules[0].to[0].methods.as_slice(), http.rules[0].to[0].ports.as_slice()),
        (&["POST".to_owned()][..], &["80".to_owned()][..])
    );
    let keys: Vec<&str> = http.rules[0].when.iter().map(|condition| condition.key.as_str()).collect();
    assert_eq!(keys, ["request.headers[x-debug]", "request.auth.claims[iss]"], "unknown keys go");
    assert!(http.rules[1].from[0].ip_blocks.is_empty() && http.rules[1].from[0].principals.len() == 1);
    assert_eq!(http.rules[1].from[0].request_principals, ["issuer/alice"], "the waypoint checks JWTs");
    let notes = notes.join("\n");
    assert!(
        notes.contains("ServiceEntry")
            && notes.contains("request.auth.claims[]")
            && notes.contains("connection.sni")
            && notes.contains("10.0.0.0/33"),
        "{notes}"
    );
    assert!(
        notes.contains("request.headers[bad name]") && notes.contains("request.headers[]"),
        "invalid header names never reach a waypoint: {notes}"
    );

    // The same rules in an ALLOW: a rule holding what cannot be checked allows nothing.
    let mut allow = policy.clone();
    allow.spec.action = Some("ALLOW".into());
    let (http, _) = http::convert(&allow, &naming()).unwrap();
    assert!(!http.deny && http.rules.is_empty(), "{:?}", http.rules);
    assert!(
        http::convert(&self::policy("shop", serde_json::json!({ "action": "DENY" })), &naming()).is_none()
    );
}
