//! AuthorizationPolicies with `targetRefs` to `weft.security.HttpAuthorization` resources: what a
//! waypoint enforces for the Services (group `""`, kind Service) or waypoints (kind Gateway of
//! `gateway.networking.k8s.io`) they name, in the policy's namespace, as Istio's waypoint does.
//! Every HTTP field of Istio's policy is the waypoint's to check — request principals and
//! `request.auth.*` on the JWT a RequestAuthentication verified — but remote IP blocks (they
//! need a trusted client address, not done yet) and `when` keys outside [`KEYS`]: an ALLOW rule holding one is dropped (it allows nothing), a DENY
//! rule ignores it (it denies more), as for node proxies; each such choice is a note.
use weft_api::http_authorization as api;

use super::{AuthorizationPolicy, Rule};
use crate::index::{Naming, hostname};

/// The `when` keys a waypoint checks; `request.headers[<name>]` and
/// `request.auth.claims[<name>]…` besides.
pub const KEYS: [&str; 7] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];

/// The resource for `policy` and notes on it, or `None` when it names no target of the mesh's
/// waypoints (no `targetRefs`, or only kinds waypoints do not serve, which are noted).
pub fn convert(
    policy: &AuthorizationPolicy,
    naming: &Naming,
) -> Option<(api::HttpAuthorization, Vec<String>)> {
    let spec = &policy.spec;
    let refs: Vec<&serde_json::Value> = spec.target_ref.iter().chain(&spec.target_refs).collect();
    if refs.is_empty() {
        return None;
    }
    let name = policy.metadata.name.clone().unwrap_or_default();
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let (services, gateways) = targets(&refs, &namespace, naming, &mut notes);
    if services.is_empty() && gateways.is_empty() {
        return None;
    }
    let deny = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => false,
        "DENY" => true,
        other => {
            notes.push(format!("action {other} is not enforced by waypoints: not served"));
            return None;
        }
    };
    let rules = spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(index, rule)| {
            let (converted, unenforceable) = self::rule(rule);
            if unenforceable.is_empty() {
                return Some(converted);
            }
            let what = unenforceable.join("; ");
            if deny {
                notes.push(format!(
                    "rule {index} ignores what the waypoint cannot check, so it denies more: {what}"
                ));
                Some(converted)
            } else {
                notes.push(format!("rule {index} dropped, so it allows nothing: {what}"));
                None
            }
        })
        .collect();
    let dry_run = super::is_dry_run(policy);
    notes.push("for the waypoints of its targets to enforce".into());
    Some((api::HttpAuthorization { name, namespace, services, gateways, deny, rules, dry_run }, notes))
}

/// The Service keys and waypoints (`namespace/name`) that `refs` (a policy's `targetRefs`, in
/// `namespace`) name; any other kind is noted and left out.
pub fn targets(
    refs: &[&serde_json::Value],
    namespace: &str,
    naming: &Naming,
    notes: &mut Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let (mut services, mut gateways) = (Vec::new(), Vec::new());
    for target in refs {
        let field = |key: &str| target.get(key).and_then(serde_json::Value::as_str).unwrap_or_default();
        let (group, kind, target_name) = (field("group"), field("kind"), field("name"));
        match (group, kind) {
            ("", "Service") => {
                services.push(format!("{namespace}/{}", hostname(naming, target_name, namespace)))
            }
            ("gateway.networking.k8s.io", "Gateway") => gateways.push(format!("{namespace}/{target_name}")),
            _ => notes
                .push(format!("targetRef {group}/{kind} {target_name} is no Service or waypoint: ignored")),
        }
    }
    (services, gateways)
}

/// Whether `name` is a header name as HTTP allows it (RFC 9110 token), as waypoints parse it.
pub fn is_header_name(name: &str) -> bool {
    (1..1 << 16).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// One rule, without what a waypoint cannot check, and what that was.
fn rule(rule: &Rule) -> (api::HttpRule, Vec<String>) {
    let mut unenforceable = Vec::new();
    let from = rule
        .from
        .iter()
        .map(|from| {
            let source = &from.source;
            for field in source.remote_fields_set() {
                unenforceable.push(format!("from.source.{field} is not checked by waypoints yet"));
            }
            api::HttpSource {
                principals: source.principals.clone(),
                not_principals: source.not_principals.clone(),
                namespaces: source.namespaces.clone(),
                not_namespaces: source.not_namespaces.clone(),
                ip_blocks: checked("from.source.ipBlocks", &source.ip_blocks, is_cidr, &mut unenforceable),
                not_ip_blocks: checked(
                    "from.source.notIpBlocks",
                    &source.not_ip_blocks,
                    is_cidr,
                    &mut unenforceable,
                ),
                request_principals: source.request_principals.clone(),
                not_request_principals: source.not_request_principals.clone(),
            }
        })
        .collect();
    let to = rule
        .to
        .iter()
        .map(|to| {
            let operation = &to.operation;
            api::HttpOperation {
                hosts: operation.hosts.clone(),
                not_hosts: operation.not_hosts.clone(),
                ports: checked("to.operation.ports", &operation.ports, is_port, &mut unenforceable),
                not_ports: checked(
                    "to.operation.notPorts",
                    &operation.not_ports,
                    is_port,
                    &mut unenforceable,
                ),
                methods: operation.methods.clone(),
                not_methods: operation.not_methods.clone(),
                paths: operation.paths.clone(),
                not_paths: operation.not_paths.clone(),
            }
        })
        .collect();
    let when = rule
        .when
        .iter()
        .filter(|condition| {
            let header =
                condition.key.strip_prefix("request.headers[").and_then(|rest| rest.strip_suffix(']'));
            let known = KEYS.contains(&condition.key.as_str())
                || header.is_some_and(is_header_name)
                || weft_api::claims::claim_path(&condition.key).is_some();
            if !known {
                unenforceable.push(format!("condition {} is not checked by waypoints yet", condition.key));
            }
            known
        })
        .collect::<Vec<_>>()
        .into_iter()
        // A condition left without values constrains nothing: it goes (widening a DENY; an
        // ALLOW holding it is dropped for the note anyway).
        .filter_map(|condition| {
            let valid: fn(&str) -> bool = match condition.key.as_str() {
                "source.ip" => is_cidr,
                "destination.port" => is_port,
                _ => |_| true,
            };
            let field = format!("when {}", condition.key);
            let values = checked(&field, &condition.values, valid, &mut unenforceable);
            let not_values = checked(&field, &condition.not_values, valid, &mut unenforceable);
            (!values.is_empty() || !not_values.is_empty()).then(|| api::HttpCondition {
                key: condition.key.clone(),
                values,
                not_values,
            })
        })
        .collect();
    (api::HttpRule { from, to, when }, unenforceable)
}

/// `values` if every one is `valid`; else none, noted (the rule is widened or dropped, never
/// narrowed to the values that happened to be valid), so the waypoint never gets a value it
/// would refuse.
fn checked(
    field: &str,
    values: &[String],
    valid: fn(&str) -> bool,
    unenforceable: &mut Vec<String>,
) -> Vec<String> {
    match values.iter().find(|value| !valid(value)) {
        None => values.to_vec(),
        Some(bad) => {
            unenforceable.push(format!("{field}: {bad:?} is not valid"));
            Vec::new()
        }
    }
}

fn is_cidr(value: &str) -> bool {
    super::cidr(value).is_ok()
}

fn is_port(value: &str) -> bool {
    value.parse::<u16>().is_ok()
}
