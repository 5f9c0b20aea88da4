//! Istio's evaluation order and match semantics, case by case.
use super::*;

fn identity(namespace: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", namespace, sa)
}

fn connection<'a>(source: Option<&'a Identity>, source_ip: &str, destination: &str) -> Connection<'a> {
    Connection { source, source_ip: source_ip.parse().unwrap(), destination: destination.parse().unwrap() }
}

fn policy(name: &str, action: Action, groups: Vec<Vec<Rule>>) -> Policy {
    Policy {
        name: name.into(),
        namespace: "shop".into(),
        scope: Scope::Namespace,
        action,
        groups,
        dry_run: false,
    }
}

fn principal(exact: &str) -> Match {
    Match { principals: vec![StringMatch::Exact(exact.into())], ..Match::default() }
}

#[test]
fn deny_wins_then_one_allow_must_match_and_without_allows_everything_passes() {
    let web = identity("shop", "web");
    let other = identity("shop", "other");
    let from_web = connection(Some(&web), "10.0.0.1", "10.0.1.1:8080");
    let from_other = connection(Some(&other), "10.0.0.2", "10.0.1.1:8080");

    assert_eq!(decide([], &from_web), Verdict::AllowedByDefault);

    let allow_web =
        policy("allow-web", Action::Allow, vec![vec![vec![principal("cluster.local/ns/shop/sa/web")]]]);
    assert_eq!(decide([&allow_web], &from_web), Verdict::Allowed { policy: "shop/allow-web".into() });
    let refused = decide([&allow_web], &from_other);
    assert_eq!(refused, Verdict::NotAllowed { policies: vec!["shop/allow-web".into()] });
    assert!(!refused.allowed());
    assert!(refused.to_string().contains("shop/allow-web"), "{refused}");

    let port_8080 = Match { destination_ports: vec![8080], ..Match::default() };
    let deny_8080 = policy("deny-8080", Action::Deny, vec![vec![vec![port_8080]]]);
    assert_eq!(
        decide([&allow_web, &deny_8080], &from_web),
        Verdict::Denied { policy: "shop/deny-8080".into() }
    );
    // A DENY that does not match leaves the decision to the ALLOWs.
    let to_9090 = connection(Some(&web), "10.0.0.1", "10.0.1.1:9090");
    assert!(decide([&deny_8080, &allow_web], &to_9090).allowed());
}

#[test]
fn an_allow_without_rules_allows_nothing_and_an_empty_rule_allows_everything() {
    let web = identity("shop", "web");
    let any = connection(Some(&web), "10.0.0.1", "10.0.1.1:80");
    assert!(!decide([&policy("nothing", Action::Allow, vec![])], &any).allowed());
    assert!(decide([&policy("all", Action::Allow, vec![vec![]])], &any).allowed());
    assert!(!decide([&policy("deny-all", Action::Deny, vec![vec![]])], &any).allowed());
}

#[test]
fn groups_are_ored_rules_anded_matches_ored_and_fields_anded() {
    let web = identity("shop", "web");
    let from_shop = Match { namespaces: vec![StringMatch::Exact("shop".into())], ..Match::default() };
    let to_80 = Match { destination_ports: vec![80], ..Match::default() };
    let to_443 = Match { destination_ports: vec![443], ..Match::default() };
    // from shop AND to (80 OR 443)
    let allow = policy("p", Action::Allow, vec![vec![vec![from_shop.clone()], vec![to_80.clone(), to_443]]]);
    assert!(allow.matches(&connection(Some(&web), "10.0.0.1", "10.0.1.1:443")));
    assert!(!allow.matches(&connection(Some(&web), "10.0.0.1", "10.0.1.1:8080")));
    let outsider = identity("other", "web");
    assert!(!allow.matches(&connection(Some(&outsider), "10.0.0.1", "10.0.1.1:80")));
    // Two fields in one match: both must hold.
    let both = Match { destination_ports: vec![80], ..from_shop };
    let anded = policy("q", Action::Allow, vec![vec![vec![both]]]);
    assert!(anded.matches(&connection(Some(&web), "10.0.0.1", "10.0.1.1:80")));
    assert!(!anded.matches(&connection(Some(&outsider), "10.0.0.1", "10.0.1.1:80")));
    // Second group rescues what the first refuses.
    let either = policy(
        "r",
        Action::Allow,
        vec![vec![vec![to_80]], vec![vec![principal("cluster.local/ns/other/sa/web")]]],
    );
    assert!(either.matches(&connection(Some(&outsider), "10.0.0.1", "10.0.1.1:8080")));
}

#[test]
fn plaintext_matches_no_principal_and_every_not_principal() {
    let plaintext = connection(None, "10.0.9.9", "10.0.1.1:80");
    let any_principal = Match { principals: vec![StringMatch::Presence], ..Match::default() };
    assert!(!policy("p", Action::Allow, vec![vec![vec![any_principal]]]).matches(&plaintext));
    // Istio's way to require mTLS: DENY notPrincipals ["*"].
    let not_any = Match { not_principals: vec![StringMatch::Presence], ..Match::default() };
    let require_mtls = policy("strict", Action::Deny, vec![vec![vec![not_any]]]);
    assert!(require_mtls.matches(&plaintext));
    let web = identity("shop", "web");
    assert!(!require_mtls.matches(&connection(Some(&web), "10.0.9.9", "10.0.1.1:80")));
    let not_shop = Match { not_namespaces: vec![StringMatch::Exact("shop".into())], ..Match::default() };
    assert!(policy("n", Action::Deny, vec![vec![vec![not_shop]]]).matches(&plaintext));
}

#[test]
fn string_matches_and_not_fields() {
    assert!(StringMatch::Prefix("cluster.local/ns/shop/".into()).matches("cluster.local/ns/shop/sa/web"));
    assert!(StringMatch::Suffix("/sa/web".into()).matches("cluster.local/ns/shop/sa/web"));
    assert!(!StringMatch::Exact("web".into()).matches("webs"));
    let web = identity("shop", "web");
    let not_web = Match { not_principals: vec![StringMatch::Suffix("/sa/web".into())], ..Match::default() };
    assert!(!policy("p", Action::Deny, vec![vec![vec![not_web]]]).matches(&connection(
        Some(&web),
        "10.0.0.1",
        "10.0.1.1:80"
    )));
    let not_port = Match { not_destination_ports: vec![80], ..Match::default() };
    let not_80 = policy("q", Action::Allow, vec![vec![vec![not_port]]]);
    assert!(!not_80.matches(&connection(Some(&web), "10.0.0.1", "10.0.1.1:80")));
    assert!(not_80.matches(&connection(Some(&web), "10.0.0.1", "10.0.1.1:81")));
}

#[test]
fn address_ranges_of_both_families_and_mapped_addresses() {
    let v4 = Cidr::new("10.244.0.0".parse().unwrap(), 16).unwrap();
    assert!(v4.contains("10.244.3.4".parse().unwrap()));
    assert!(v4.contains("::ffff:10.244.3.4".parse().unwrap()));
    assert!(!v4.contains("10.245.0.1".parse().unwrap()));
    assert!(!v4.contains("fd00::1".parse().unwrap()));
    let v6 = Cidr::new("fd00:10:244::".parse().unwrap(), 48).unwrap();
    assert!(v6.contains("fd00:10:244:1::5".parse().unwrap()));
    assert!(!v6.contains("fd00:10:245::5".parse().unwrap()));
    assert!(Cidr::new("::".parse().unwrap(), 0).unwrap().contains("fd00::1".parse().unwrap()));
    assert!(Cidr::new("0.0.0.0".parse().unwrap(), 0).unwrap().contains("1.2.3.4".parse().unwrap()));
    assert!(Cidr::new("10.0.0.1".parse().unwrap(), 33).is_none());
    let host = Cidr::new("10.0.0.1".parse().unwrap(), 32).unwrap();
    let from_host = Match { source_ips: vec![host], ..Match::default() };
    let only_host = policy("h", Action::Allow, vec![vec![vec![from_host]]]);
    assert!(only_host.matches(&connection(None, "10.0.0.1", "10.0.1.1:80")));
    assert!(!only_host.matches(&connection(None, "10.0.0.2", "10.0.1.1:80")));
}

/// As Istio's ztunnel decides policies istiod produces: a match that sets no field matches
/// nothing (only a rule without matches matches everything).
#[test]
fn a_match_with_every_field_empty_matches_nothing() {
    let web = identity("shop", "web");
    let any = connection(Some(&web), "10.0.0.1", "10.0.1.1:80");
    let empty = vec![vec![vec![Match::default()]]];
    assert!(decide([&policy("deny-empty", Action::Deny, empty.clone())], &any).allowed());
    assert!(!decide([&policy("allow-empty", Action::Allow, empty)], &any).allowed());
}

#[test]
fn service_accounts_match_namespace_and_account_exactly_and_never_plaintext() {
    let web = identity("shop", "web");
    let elsewhere = identity("other", "web");
    let account = |namespace: &str, name: &str| ServiceAccount {
        namespace: namespace.into(),
        service_account: name.into(),
    };
    let only_web = Match { service_accounts: vec![account("shop", "web")], ..Match::default() };
    let allow = policy("allow-web", Action::Allow, vec![vec![vec![only_web]]]);
    assert!(decide([&allow], &connection(Some(&web), "10.0.0.1", "10.0.1.1:80")).allowed());
    assert!(!decide([&allow], &connection(Some(&elsewhere), "10.0.0.1", "10.0.1.1:80")).allowed());
    assert!(!decide([&allow], &connection(None, "10.0.0.1", "10.0.1.1:80")).allowed());
    let not_web = Match { not_service_accounts: vec![account("shop", "web")], ..Match::default() };
    let deny = policy("deny-others", Action::Deny, vec![vec![vec![not_web]]]);
    assert!(decide([&deny], &connection(Some(&web), "10.0.0.1", "10.0.1.1:80")).allowed());
    assert!(!decide([&deny], &connection(Some(&elsewhere), "10.0.0.1", "10.0.1.1:80")).allowed());
    assert!(!decide([&deny], &connection(None, "10.0.0.1", "10.0.1.1:80")).allowed(), "plaintext is not web");
}

#[test]
fn a_dry_run_policy_never_enforces() {
    let web = identity("shop", "web");
    let any = connection(Some(&web), "10.0.0.1", "10.0.1.1:80");
    let deny_all = Policy { dry_run: true, ..policy("deny-all", Action::Deny, vec![vec![]]) };
    assert_eq!(decide([&deny_all], &any), Verdict::AllowedByDefault);
    // A dry-run ALLOW does not make the workload allow-only either.
    let allow_none = Policy { dry_run: true, ..policy("allow-none", Action::Allow, vec![]) };
    assert_eq!(decide([&allow_none], &any), Verdict::AllowedByDefault);
}

#[test]
fn an_ipv4_mapped_range_is_the_ipv4_range_it_maps_and_a_wider_ipv6_range_holds_ipv4_peers() {
    let ip = |text: &str| text.parse::<IpAddr>().unwrap();
    let mapped = Cidr::new(ip("::ffff:10.0.0.0"), 104).unwrap();
    assert!(mapped.contains(ip("10.1.2.3")) && mapped.contains(ip("::ffff:10.9.9.9")));
    assert!(!mapped.contains(ip("11.0.0.1")));
    let everything = Cidr::new(ip("::"), 0).unwrap();
    assert!(everything.contains(ip("10.1.2.3")) && everything.contains(ip("fd00::1")));
    assert!(Cidr::new(ip("::ffff:10.0.0.0"), 129).is_none());
}
