//! Authorization tables: which requests each field of a policy admits, how DENY, ALLOW and
//! dry-run policies combine into a verdict, and which resources are refused.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};
use weft_api::http_authorization as api;
use weft_proxy::identity::Identity;

use super::{Decision, Error, Policy, Request, Verdict, decide};
use crate::jwt::{Claims, Jwks, Token, testing::Signer};

/// An owned request, so each table row can change one thing about the default.
#[derive(Debug, Clone)]
struct Fixture {
    source: Option<Identity>,
    source_ip: IpAddr,
    method: Method,
    path: &'static str,
    host: Option<&'static str>,
    port: u16,
    headers: HeaderMap,
    auth: Option<Claims>,
    opaque: bool,
}

impl Fixture {
    fn request(&self) -> Request<'_> {
        Request {
            source: self.source.as_ref(),
            source_ip: self.source_ip,
            method: &self.method,
            path: self.path,
            host: self.host,
            port: self.port,
            headers: &self.headers,
            auth: self.auth.as_ref(),
            opaque: self.opaque,
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self
    }
}

/// `spiffe://cluster.local/ns/frontend/sa/web` at 10.1.2.3 sends `GET /api/v1/items` to
/// `reviews.shop.svc.cluster.local:8080` with `x-user: alice`.
fn fixture() -> Fixture {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("alice"));
    Fixture {
        source: Some(Identity::new("cluster.local", "frontend", "web")),
        source_ip: "10.1.2.3".parse().expect("test address"),
        method: Method::GET,
        path: "/api/v1/items",
        host: Some("reviews.shop.svc.cluster.local"),
        port: 8080,
        headers,
        auth: None,
        opaque: false,
    }
}

fn anonymous() -> Fixture {
    fixture().with(|f| f.source = None)
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn from(source: api::HttpSource) -> api::HttpRule {
    api::HttpRule { from: vec![source], ..Default::default() }
}

fn to(operation: api::HttpOperation) -> api::HttpRule {
    api::HttpRule { to: vec![operation], ..Default::default() }
}

fn condition(key: &str, values: &[&str], not_values: &[&str]) -> api::HttpCondition {
    api::HttpCondition { key: key.to_owned(), values: strings(values), not_values: strings(not_values) }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> api::HttpRule {
    api::HttpRule { when: vec![condition(key, values, not_values)], ..Default::default() }
}

fn policy(name: &str, deny: bool, rules: Vec<api::HttpRule>) -> api::HttpAuthorization {
    api::HttpAuthorization {
        name: name.to_owned(),
        namespace: "shop".to_owned(),
        services: strings(&["shop/reviews.shop.svc.cluster.local"]),
        gateways: strings(&["shop/waypoint"]),
        deny,
        rules,
        dry_run: false,
    }
}

fn allow(name: &str, rules: Vec<api::HttpRule>) -> Policy {
    Policy::try_from(policy(name, false, rules)).expect("valid policy")
}

fn deny(name: &str, rules: Vec<api::HttpRule>) -> Policy {
    Policy::try_from(policy(name, true, rules)).expect("valid policy")
}

fn dry_run(policy: Policy) -> Policy {
    Policy { dry_run: true, ..policy }
}

/// A rule that matches the default fixture, and one that does not.
fn matching() -> api::HttpRule {
    to(api::HttpOperation { methods: strings(&["GET"]), ..Default::default() })
}

fn not_matching() -> api::HttpRule {
    to(api::HttpOperation { methods: strings(&["DELETE"]), ..Default::default() })
}

/// Whether an ALLOW policy with `rule` as its only rule admits `request`.
fn admits(rule: api::HttpRule, request: &Fixture) -> bool {
    let policy = allow("p", vec![rule]);
    decide([&policy], &request.request()).verdict.allowed()
}

fn source(edit: impl FnOnce(&mut api::HttpSource)) -> api::HttpRule {
    let mut source = api::HttpSource::default();
    edit(&mut source);
    from(source)
}

fn operation(edit: impl FnOnce(&mut api::HttpOperation)) -> api::HttpRule {
    let mut operation = api::HttpOperation::default();
    edit(&mut operation);
    to(operation)
}

#[test]
fn source_fields() {
    let v6 = fixture().with(|f| f.source_ip = "fd00::1".parse().expect("test address"));
    let cases = [
        (
            "principal exact",
            source(|s| s.principals = strings(&["cluster.local/ns/frontend/sa/web"])),
            fixture(),
            true,
        ),
        (
            "principal other",
            source(|s| s.principals = strings(&["cluster.local/ns/frontend/sa/db"])),
            fixture(),
            false,
        ),
        (
            "principal written with spiffe://",
            source(|s| s.principals = strings(&["spiffe://cluster.local/ns/frontend/sa/web"])),
            fixture(),
            false,
        ),
        (
            "principal any of",
            source(|s| s.principals = strings(&["x/ns/y/sa/z", "*/sa/web"])),
            fixture(),
            true,
        ),
        (
            "principal prefix",
            source(|s| s.principals = strings(&["cluster.local/ns/frontend/*"])),
            fixture(),
            true,
        ),
        (
            "principal prefix other",
            source(|s| s.principals = strings(&["cluster.local/ns/back*"])),
            fixture(),
            false,
        ),
        ("principal suffix", source(|s| s.principals = strings(&["*/sa/web"])), fixture(), true),
        ("principal *", source(|s| s.principals = strings(&["*"])), fixture(), true),
        ("principal * without identity", source(|s| s.principals = strings(&["*"])), anonymous(), false),
        ("not_principal same", source(|s| s.not_principals = strings(&["*/sa/web"])), fixture(), false),
        ("not_principal other", source(|s| s.not_principals = strings(&["*/sa/db"])), fixture(), true),
        (
            "not_principal * without identity",
            source(|s| s.not_principals = strings(&["*"])),
            anonymous(),
            true,
        ),
        ("namespace exact", source(|s| s.namespaces = strings(&["frontend"])), fixture(), true),
        ("namespace other", source(|s| s.namespaces = strings(&["backend"])), fixture(), false),
        ("namespace prefix", source(|s| s.namespaces = strings(&["front*"])), fixture(), true),
        ("namespace suffix", source(|s| s.namespaces = strings(&["*end"])), fixture(), true),
        ("namespace case-sensitive", source(|s| s.namespaces = strings(&["Frontend"])), fixture(), false),
        ("namespace without identity", source(|s| s.namespaces = strings(&["*"])), anonymous(), false),
        ("not_namespace same", source(|s| s.not_namespaces = strings(&["frontend"])), fixture(), false),
        ("not_namespace other", source(|s| s.not_namespaces = strings(&["backend"])), fixture(), true),
        (
            "not_namespace without identity",
            source(|s| s.not_namespaces = strings(&["frontend"])),
            anonymous(),
            true,
        ),
        ("ip_block CIDR", source(|s| s.ip_blocks = strings(&["10.0.0.0/8"])), fixture(), true),
        ("ip_block address", source(|s| s.ip_blocks = strings(&["10.1.2.3"])), fixture(), true),
        ("ip_block other address", source(|s| s.ip_blocks = strings(&["10.1.2.4"])), fixture(), false),
        ("ip_block other CIDR", source(|s| s.ip_blocks = strings(&["192.168.0.0/16"])), fixture(), false),
        (
            "ip_block IPv4-mapped",
            source(|s| s.ip_blocks = strings(&["::ffff:10.0.0.0/104"])),
            fixture(),
            true,
        ),
        ("ip_block IPv6 CIDR", source(|s| s.ip_blocks = strings(&["fd00::/8"])), v6.clone(), true),
        ("ip_block IPv6 address", source(|s| s.ip_blocks = strings(&["fd00::1"])), v6.clone(), true),
        ("ip_block IPv6 for IPv4 peer", source(|s| s.ip_blocks = strings(&["fd00::/8"])), fixture(), false),
        ("ip_block IPv4 for IPv6 peer", source(|s| s.ip_blocks = strings(&["0.0.0.0/0"])), v6, false),
        ("not_ip_block containing", source(|s| s.not_ip_blocks = strings(&["10.0.0.0/8"])), fixture(), false),
        ("not_ip_block other", source(|s| s.not_ip_blocks = strings(&["192.168.0.0/16"])), fixture(), true),
        (
            "ip_block and not_ip_block",
            source(|s| {
                s.ip_blocks = strings(&["10.0.0.0/8"]);
                s.not_ip_blocks = strings(&["10.1.0.0/16"]);
            }),
            fixture(),
            false,
        ),
    ];
    check(cases);
}

#[test]
fn operation_fields() {
    let upper_host = fixture().with(|f| f.host = Some("Reviews.Shop.svc.cluster.local"));
    let no_host = fixture().with(|f| f.host = None);
    let put = fixture().with(|f| f.method = Method::PUT);
    let cases = [
        (
            "host exact",
            operation(|o| o.hosts = strings(&["reviews.shop.svc.cluster.local"])),
            fixture(),
            true,
        ),
        (
            "host other",
            operation(|o| o.hosts = strings(&["ratings.shop.svc.cluster.local"])),
            fixture(),
            false,
        ),
        ("host pattern in capitals", operation(|o| o.hosts = strings(&["REVIEWS.shop*"])), fixture(), true),
        (
            "host in capitals",
            operation(|o| o.hosts = strings(&["*.shop.svc.cluster.local"])),
            upper_host,
            true,
        ),
        ("host suffix", operation(|o| o.hosts = strings(&["*.svc.cluster.local"])), fixture(), true),
        ("host prefix other", operation(|o| o.hosts = strings(&["ratings*"])), fixture(), false),
        ("host * without host", operation(|o| o.hosts = strings(&["*"])), no_host.clone(), false),
        ("not_host same", operation(|o| o.not_hosts = strings(&["reviews*"])), fixture(), false),
        ("not_host other", operation(|o| o.not_hosts = strings(&["ratings*"])), fixture(), true),
        ("not_host without host", operation(|o| o.not_hosts = strings(&["reviews*"])), no_host, true),
        ("port same", operation(|o| o.ports = strings(&["8080"])), fixture(), true),
        ("port any of", operation(|o| o.ports = strings(&["80", "8080"])), fixture(), true),
        ("port other", operation(|o| o.ports = strings(&["9090"])), fixture(), false),
        ("not_port same", operation(|o| o.not_ports = strings(&["8080"])), fixture(), false),
        ("not_port other", operation(|o| o.not_ports = strings(&["9090"])), fixture(), true),
        ("method same", operation(|o| o.methods = strings(&["GET"])), fixture(), true),
        ("method other", operation(|o| o.methods = strings(&["POST"])), fixture(), false),
        ("method case-sensitive", operation(|o| o.methods = strings(&["get"])), fixture(), false),
        ("method prefix", operation(|o| o.methods = strings(&["P*"])), put.clone(), true),
        ("method prefix other", operation(|o| o.methods = strings(&["P*"])), fixture(), false),
        ("method *", operation(|o| o.methods = strings(&["*"])), put, true),
        ("not_method same", operation(|o| o.not_methods = strings(&["GET"])), fixture(), false),
        ("not_method other", operation(|o| o.not_methods = strings(&["POST", "PUT"])), fixture(), true),
        ("path exact", operation(|o| o.paths = strings(&["/api/v1/items"])), fixture(), true),
        ("path exact other", operation(|o| o.paths = strings(&["/api/v1"])), fixture(), false),
        ("path prefix", operation(|o| o.paths = strings(&["/api/*"])), fixture(), true),
        ("path prefix other", operation(|o| o.paths = strings(&["/admin*"])), fixture(), false),
        ("path suffix", operation(|o| o.paths = strings(&["*/items"])), fixture(), true),
        ("path suffix other", operation(|o| o.paths = strings(&["*/users"])), fixture(), false),
        ("path case-sensitive", operation(|o| o.paths = strings(&["/API/*"])), fixture(), false),
        ("path *", operation(|o| o.paths = strings(&["*"])), fixture(), true),
        (
            "path longer than value",
            operation(|o| o.paths = strings(&["/api/v1/items/more*"])),
            fixture(),
            false,
        ),
        ("not_path same", operation(|o| o.not_paths = strings(&["/api/*"])), fixture(), false),
        ("not_path other", operation(|o| o.not_paths = strings(&["/admin*"])), fixture(), true),
    ];
    check(cases);
}

#[test]
fn conditions() {
    let no_header = fixture().with(|f| f.headers.clear());
    let repeated = fixture().with(|f| {
        f.headers.append("x-user", HeaderValue::from_static("bob"));
    });
    let cases = [
        ("header exact", when("request.headers[x-user]", &["alice"], &[]), fixture(), true),
        ("header other", when("request.headers[x-user]", &["bob"], &[]), fixture(), false),
        ("header name in capitals", when("request.headers[X-User]", &["alice"], &[]), fixture(), true),
        ("header value case-sensitive", when("request.headers[x-user]", &["Alice"], &[]), fixture(), false),
        ("header prefix", when("request.headers[x-user]", &["ali*"], &[]), fixture(), true),
        ("header suffix", when("request.headers[x-user]", &["*ice"], &[]), fixture(), true),
        ("header *", when("request.headers[x-user]", &["*"], &[]), fixture(), true),
        ("header * when absent", when("request.headers[x-user]", &["*"], &[]), no_header.clone(), false),
        ("header not_value same", when("request.headers[x-user]", &[], &["alice"]), fixture(), false),
        ("header not_value other", when("request.headers[x-user]", &[], &["bob"]), fixture(), true),
        ("header not_value when absent", when("request.headers[x-user]", &[], &["bob"]), no_header, true),
        (
            "header repeated, joined",
            when("request.headers[x-user]", &["alice,bob"], &[]),
            repeated.clone(),
            true,
        ),
        ("header repeated, one", when("request.headers[x-user]", &["bob"], &[]), repeated, false),
        (
            "header values and not_values",
            when("request.headers[x-user]", &["*"], &["alice"]),
            fixture(),
            false,
        ),
        ("source.ip in CIDR", when("source.ip", &["10.0.0.0/8"], &[]), fixture(), true),
        ("source.ip outside", when("source.ip", &["192.168.0.0/16", "10.9.9.9"], &[]), fixture(), false),
        ("source.ip not_values", when("source.ip", &[], &["10.1.2.0/24"]), fixture(), false),
        ("source.ip not_values other", when("source.ip", &[], &["10.1.3.0/24"]), fixture(), true),
        ("source.namespace", when("source.namespace", &["frontend"], &[]), fixture(), true),
        ("source.namespace other", when("source.namespace", &["back*"], &[]), fixture(), false),
        ("source.namespace not_values", when("source.namespace", &[], &["frontend"]), fixture(), false),
        ("source.namespace anonymous", when("source.namespace", &["*"], &[]), anonymous(), false),
        (
            "source.principal",
            when("source.principal", &["cluster.local/ns/frontend/sa/web"], &[]),
            fixture(),
            true,
        ),
        ("source.principal other", when("source.principal", &["*/sa/db"], &[]), fixture(), false),
        ("source.principal not_values", when("source.principal", &[], &["*/sa/web"]), fixture(), false),
        ("source.principal anonymous", when("source.principal", &[], &["*"]), anonymous(), true),
        ("destination.port", when("destination.port", &["8080"], &[]), fixture(), true),
        ("destination.port other", when("destination.port", &["80"], &[]), fixture(), false),
        ("destination.port not_values", when("destination.port", &[], &["8080"]), fixture(), false),
    ];
    check(cases);
}

#[test]
fn combinations() {
    let get_api =
        api::HttpOperation { methods: strings(&["GET"]), paths: strings(&["/api/*"]), ..Default::default() };
    let get_admin = api::HttpOperation { paths: strings(&["/admin*"]), ..get_api.clone() };
    let post = api::HttpOperation { methods: strings(&["POST"]), ..Default::default() };
    let frontend = api::HttpSource { namespaces: strings(&["frontend"]), ..Default::default() };
    let backend = api::HttpSource { namespaces: strings(&["backend"]), ..Default::default() };
    let cases = [
        ("fields of an entry ANDed, all match", to(get_api.clone()), fixture(), true),
        ("fields of an entry ANDed, one fails", to(get_admin.clone()), fixture(), false),
        (
            "entries ORed",
            api::HttpRule { to: vec![post.clone(), get_api.clone()], ..Default::default() },
            fixture(),
            true,
        ),
        (
            "entries ORed, none matches",
            api::HttpRule { to: vec![post.clone(), get_admin], ..Default::default() },
            fixture(),
            false,
        ),
        (
            "from and to ANDed, to fails",
            api::HttpRule { from: vec![frontend.clone()], to: vec![post], ..Default::default() },
            fixture(),
            false,
        ),
        (
            "from and to ANDed, from fails",
            api::HttpRule { from: vec![backend], to: vec![get_api.clone()], ..Default::default() },
            fixture(),
            false,
        ),
        (
            "from, to and when all match",
            api::HttpRule {
                from: vec![frontend.clone()],
                to: vec![get_api],
                when: vec![condition("request.headers[x-user]", &["alice"], &[])],
            },
            fixture(),
            true,
        ),
        (
            "when conditions ANDed",
            api::HttpRule {
                when: vec![
                    condition("request.headers[x-user]", &["alice"], &[]),
                    condition("destination.port", &["80"], &[]),
                ],
                ..Default::default()
            },
            fixture(),
            false,
        ),
        (
            "when fails although from matches",
            api::HttpRule {
                from: vec![frontend],
                when: vec![condition("source.ip", &["192.168.0.0/16"], &[])],
                ..Default::default()
            },
            fixture(),
            false,
        ),
        ("an empty source matches everything", from(api::HttpSource::default()), anonymous(), true),
        ("an empty operation matches everything", to(api::HttpOperation::default()), fixture(), true),
        ("an empty rule matches everything", api::HttpRule::default(), anonymous(), true),
    ];
    check(cases);
}

fn check<const N: usize>(cases: [(&str, api::HttpRule, Fixture, bool); N]) {
    let failures: Vec<_> = cases
        .into_iter()
        .filter(|(_, rule, request, expected)| admits(rule.clone(), request) != *expected)
        .map(|(name, _, _, expected)| format!("{name}: expected match = {expected}"))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn no_policies_allow_by_default() {
    let decision = decide([], &fixture().request());
    assert_eq!(decision, Decision { verdict: Verdict::AllowedByDefault, dry_run_matches: vec![] });
    assert!(decision.verdict.allowed());
}

#[test]
fn deny_beats_allow_in_either_order() {
    let allowing = allow("allow", vec![matching()]);
    let denying = deny("deny", vec![matching()]);
    let denied = Verdict::Denied { policy: "shop/deny".into() };
    assert_eq!(decide([&allowing, &denying], &fixture().request()).verdict, denied);
    assert_eq!(decide([&denying, &allowing], &fixture().request()).verdict, denied);
    assert!(!denied.allowed());
}

#[test]
fn an_unmatched_deny_leaves_the_decision_to_allow_policies() {
    let denying = deny("deny", vec![not_matching()]);
    let allowing = allow("allow", vec![matching()]);
    let request = fixture();
    assert_eq!(decide([&denying], &request.request()).verdict, Verdict::AllowedByDefault);
    let verdict = decide([&denying, &allowing], &request.request()).verdict;
    assert_eq!(verdict, Verdict::Allowed { policy: "shop/allow".into() });
    assert!(verdict.allowed());
}

#[test]
fn one_of_the_allow_policies_must_match() {
    let first = allow("first", vec![not_matching()]);
    let second = allow("second", vec![not_matching()]);
    let third = allow("third", vec![not_matching(), matching()]);
    let request = fixture();
    let verdict = decide([&first, &second], &request.request()).verdict;
    assert_eq!(verdict, Verdict::NotAllowed { policies: vec!["shop/first".into(), "shop/second".into()] });
    assert!(!verdict.allowed());
    let verdict = decide([&first, &third, &second], &request.request()).verdict;
    assert_eq!(verdict, Verdict::Allowed { policy: "shop/third".into() });
}

#[test]
fn a_policy_without_rules_matches_nothing() {
    let request = fixture();
    let allowing = allow("allow", vec![]);
    assert_eq!(
        decide([&allowing], &request.request()).verdict,
        Verdict::NotAllowed { policies: vec!["shop/allow".into()] }
    );
    let denying = deny("deny", vec![]);
    assert_eq!(decide([&denying], &request.request()).verdict, Verdict::AllowedByDefault);
}

#[test]
fn one_empty_rule_matches_everything() {
    let request = anonymous();
    let allowing = allow("allow", vec![api::HttpRule::default()]);
    assert_eq!(
        decide([&allowing], &request.request()).verdict,
        Verdict::Allowed { policy: "shop/allow".into() }
    );
    let denying = deny("deny", vec![api::HttpRule::default()]);
    assert_eq!(
        decide([&denying], &request.request()).verdict,
        Verdict::Denied { policy: "shop/deny".into() }
    );
}

#[test]
fn dry_run_policies_are_reported_but_never_decide() {
    let request = fixture();
    let denying = dry_run(deny("deny", vec![matching()]));
    let missed_deny = dry_run(deny("missed-deny", vec![not_matching()]));
    let allowing = dry_run(allow("allow", vec![matching()]));
    let refusing = dry_run(allow("refusing", vec![not_matching()]));

    // Neither the matching dry-run DENY nor the unmatched dry-run ALLOW refuses the request.
    let decision = decide([&denying, &missed_deny, &allowing, &refusing], &request.request());
    assert_eq!(
        decision,
        Decision {
            verdict: Verdict::AllowedByDefault,
            dry_run_matches: vec!["shop/deny".into(), "shop/allow".into()],
        }
    );

    // A dry-run ALLOW that matches does not rescue a request enforced ALLOWs refuse.
    let enforced = allow("enforced", vec![not_matching()]);
    let decision = decide([&allowing, &enforced], &request.request());
    assert_eq!(decision.verdict, Verdict::NotAllowed { policies: vec!["shop/enforced".into()] });
    assert_eq!(decision.dry_run_matches, vec!["shop/allow".to_owned()]);
}

#[test]
fn applies_to_its_services_and_gateways() {
    let policy = allow("p", vec![]);
    assert_eq!(policy.key(), "shop/p");
    assert!(policy.applies_to(Some("shop/reviews.shop.svc.cluster.local"), "other/waypoint"));
    assert!(policy.applies_to(None, "shop/waypoint"));
    assert!(policy.applies_to(Some("shop/ratings.shop.svc.cluster.local"), "shop/waypoint"));
    assert!(!policy.applies_to(Some("shop/ratings.shop.svc.cluster.local"), "other/waypoint"));
    assert!(!policy.applies_to(None, "other/waypoint"));
    // Keys are namespaced: the same hostname in another namespace is another Service.
    assert!(!policy.applies_to(Some("other/reviews.shop.svc.cluster.local"), "other/waypoint"));
}

#[test]
fn invalid_values_are_rejected_naming_the_policy() {
    let ip_block = |value: &str| source(|s| s.not_ip_blocks = strings(&[value]));
    let cases = [
        (ip_block("10.0.0.0/33"), "10.0.0.0/33"),
        (ip_block("10.0.0/8"), "10.0.0/8"),
        (ip_block("not-an-address"), "not-an-address"),
        (ip_block("10.0.0.0/"), "10.0.0.0/"),
        (ip_block("fd00::/129"), "fd00::/129"),
        (when("source.ip", &["10.0.0.0/8", "10.0.0.0/x"], &[]), "10.0.0.0/x"),
        (operation(|o| o.ports = strings(&["http"])), "http"),
        (operation(|o| o.not_ports = strings(&["70000"])), "70000"),
        (when("destination.port", &[], &["-1"]), "-1"),
        (when("request.auth.claims[]", &["x"], &[]), "request.auth.claims[]"),
        (when("connection.sni", &["x"], &[]), "connection.sni"),
        (when("request.headers[x-user", &["x"], &[]), "request.headers[x-user"),
        (when("request.headers[bad name]", &["x"], &[]), "request.headers[bad name]"),
    ];
    for (rule, value) in cases {
        let error = Policy::try_from(policy("broken", false, vec![matching(), rule]))
            .expect_err(&format!("{value:?} should be rejected"));
        let message = error.to_string();
        assert!(message.contains("shop/broken") && message.contains(value), "{value:?}: {message}");
    }
}

#[test]
fn errors_say_what_is_wrong() {
    let reject = |rule| Policy::try_from(policy("p", false, vec![rule])).expect_err("rejected");
    let address = reject(when("source.ip", &["10.0.0.256"], &[]));
    assert!(
        matches!(address, Error::InvalidAddress { ref field, .. } if field == "source.ip"),
        "{address:?}"
    );
    let length = reject(source(|s| s.ip_blocks = strings(&["10.0.0.0/40"])));
    assert!(
        matches!(length, Error::InvalidPrefixLength { ref field, .. } if field == "ip_blocks"),
        "{length:?}"
    );
    let port = reject(operation(|o| o.ports = strings(&["65536"])));
    assert!(matches!(port, Error::InvalidPort { ref field, .. } if field == "ports"), "{port:?}");
    let key = reject(when("destination.ip", &["10.0.0.1"], &[]));
    assert!(matches!(key, Error::UnknownKey { ref key, .. } if key == "destination.ip"), "{key:?}");
    let header = reject(when("request.headers[]", &["x"], &[]));
    assert!(matches!(header, Error::InvalidHeaderName { .. }), "{header:?}");
}

#[test]
fn verdicts_read_well_in_logs() {
    let cases = [
        (Verdict::AllowedByDefault, "allowed: no ALLOW policy applies"),
        (Verdict::Allowed { policy: "shop/a".into() }, "allowed by ALLOW policy shop/a"),
        (Verdict::Denied { policy: "shop/d".into() }, "denied by DENY policy shop/d"),
        (
            Verdict::NotAllowed { policies: vec!["shop/a".into(), "shop/b".into()] },
            "denied: no ALLOW policy matches (applying: shop/a, shop/b)",
        ),
    ];
    for (verdict, text) in cases {
        assert_eq!(verdict.to_string(), text);
    }
}

#[test]
fn a_connection_relayed_at_l4_is_refused_by_http_only_constraints_in_allow_and_caught_by_deny() {
    let opaque = fixture().with(|f| f.opaque = true);
    let by_path = || to(api::HttpOperation { paths: strings(&["/api/*"]), ..Default::default() });
    let by_port_and_method = || {
        to(api::HttpOperation { ports: strings(&["8080"]), methods: strings(&["GET"]), ..Default::default() })
    };
    let by_header = || when("request.headers[x-user]", &["alice"], &[]);
    let from_web = || source(|source| source.principals = strings(&["cluster.local/ns/frontend/sa/web"]));
    for rule in [by_path(), by_port_and_method(), by_header()] {
        // The same rule admits the HTTP request …
        assert!(decide([&allow("allow", vec![rule.clone()])], &fixture().request()).verdict.allowed());
        // … but never a connection with no HTTP to look at …
        let verdict = decide([&allow("allow", vec![rule.clone()])], &opaque.request()).verdict;
        assert_eq!(verdict, Verdict::NotAllowed { policies: vec!["shop/allow".into()] }, "{rule:?}");
        // … which a DENY on HTTP fields refuses whole.
        let verdict = decide([&deny("deny", vec![rule.clone()])], &opaque.request()).verdict;
        assert_eq!(verdict, Verdict::Denied { policy: "shop/deny".into() }, "{rule:?}");
    }
    // An ALLOW rule with an HTTP field anywhere admits no connection, even through an entry
    // without one.
    let either = to(api::HttpOperation { paths: strings(&["/api/*"]), ..Default::default() });
    let mut either = either;
    either.to.push(api::HttpOperation { ports: strings(&["8080"]), ..Default::default() });
    assert!(decide([&allow("allow", vec![either.clone()])], &fixture().request()).verdict.allowed());
    assert!(!decide([&allow("allow", vec![either])], &opaque.request()).verdict.allowed());
    // What an L4 connection has still decides: its peer, its port.
    assert!(decide([&allow("allow", vec![from_web()])], &opaque.request()).verdict.allowed());
    let other_port = to(api::HttpOperation {
        ports: strings(&["9090"]),
        methods: strings(&["GET"]),
        ..Default::default()
    });
    assert!(
        decide([&deny("deny", vec![other_port])], &opaque.request()).verdict.allowed(),
        "a DENY for another port"
    );
}

/// The fixture with a verified token of `claims`.
fn authenticated(claims: serde_json::Value) -> Fixture {
    let signer = Signer::es256("k");
    let jwks = Jwks::parse(&crate::jwt::testing::jwks(&[&signer])).expect("key set");
    let claims = Token::parse(&signer.token(&claims))
        .and_then(|token| token.verify(&jwks, &[], std::time::SystemTime::now()))
        .expect("verified");
    fixture().with(|f| f.auth = Some(claims))
}

#[test]
fn request_principals_and_auth_keys_match_the_verified_token_and_nothing_without_one() {
    let alice = authenticated(serde_json::json!({
        "iss": "https://issuer.example", "sub": "alice", "aud": ["shop"], "azp": "web",
        "groups": ["admin", "dev"], "org": { "team": "payments" },
    }));
    let principals = |values: &[&str], not: &[&str]| {
        from(api::HttpSource {
            request_principals: strings(values),
            not_request_principals: strings(not),
            ..Default::default()
        })
    };
    assert!(admits(principals(&["*"], &[]), &alice));
    assert!(!admits(principals(&["*"], &[]), &fixture()), "no token: no request principal");
    assert!(admits(principals(&["https://issuer.example/alice"], &[]), &alice));
    assert!(!admits(principals(&["https://issuer.example/bob"], &[]), &alice));
    assert!(admits(principals(&[], &["*"]), &fixture()), "notRequestPrincipals: * admits the anonymous");
    assert!(!admits(principals(&[], &["*"]), &alice));
    // Istio splits a value at its last `/`: issuer and subject each match on their own.
    let guest =
        authenticated(serde_json::json!({ "iss": "https://issuer.example/tenants/guest", "sub": "mallory" }));
    assert!(!admits(principals(&["https://issuer.example/*"], &[]), &guest), "another issuer");
    let spiffe =
        authenticated(serde_json::json!({ "iss": "https://issuer.example", "sub": "ns/shop/sa/web" }));
    assert!(!admits(principals(&["https://issuer.example/ns/shop/sa/web"], &[]), &spiffe));
    assert!(admits(principals(&["https://issuer.example/ns*"], &[]), &spiffe));
    assert!(
        admits(principals(&["*/alice"], &[]), &alice) && admits(principals(&["*example/alice"], &[]), &alice)
    );
    // `*` needs both an issuer and a subject.
    let subless = authenticated(serde_json::json!({ "iss": "https://issuer.example" }));
    assert!(!admits(principals(&["*"], &[]), &subless));
    assert!(admits(principals(&[], &["*"]), &subless));
    let rows = [
        ("request.auth.principal", &["https://issuer.example/*"][..], true),
        ("request.auth.audiences", &["shop"][..], true),
        ("request.auth.audiences", &["billing"][..], false),
        ("request.auth.presenter", &["web"][..], true),
        ("request.auth.claims[groups]", &["admin"][..], true),
        ("request.auth.claims[groups]", &["ops"][..], false),
        ("request.auth.claims[org][team]", &["pay*"][..], true),
        ("request.auth.claims[org]", &["*"][..], false),
        ("request.auth.claims[missing]", &["*"][..], false),
    ];
    for (key, values, admitted) in rows {
        assert_eq!(admits(when(key, values, &[]), &alice), admitted, "{key} {values:?}");
        assert!(!admits(when(key, values, &[]), &fixture()), "{key}: nothing without a token");
    }
    // No token on a relayed connection either: an ALLOW on a claim admits none.
    assert!(!admits(
        when("request.auth.claims[groups]", &["admin"], &[]),
        &alice.clone().with(|f| f.opaque = true)
    ));
    for bad in
        ["request.auth.claims", "request.auth.claims[]", "request.auth.claims[a", "request.auth.claims[a]b"]
    {
        let policy = policy("bad", false, vec![when(bad, &["x"], &[])]);
        assert!(matches!(Policy::try_from(policy), Err(Error::UnknownKey { .. })), "{bad}");
    }
}
