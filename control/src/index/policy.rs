//! `AuthorizationPolicy` (`security.weft.dev/v1`) to `istio.security.Authorization` resources.
//! The spec is Istio's `security.istio.io` AuthorizationPolicy field for field, so a policy
//! moves over by changing its apiVersion (our own group, so Weft installs beside Istio's CRDs).
//!
//! Node proxies check L4 facts only: the peer's identity and namespace, source and destination
//! addresses, the destination port. What they cannot check (HTTP fields, conditions on request
//! attributes, values that do not parse) never makes a policy allow more: an ALLOW rule holding
//! any is dropped (it allows nothing), a DENY rule ignores those fields (it denies more) — as
//! Istio's ztunnel does. Each such choice becomes a note that `weftctl policies` shows.
use std::{collections::BTreeMap, net::IpAddr};

use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use weft_api::security as api;

/// The custom resource.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
}

resource!(AuthorizationPolicy, "security.weft.dev", "v1", "AuthorizationPolicy", "authorizationpolicies");

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Spec {
    pub selector: Option<Selector>,
    /// Istio's: a Service or Gateway, whose policy a waypoint or gateway enforces.
    pub target_ref: Option<serde_json::Value>,
    pub target_refs: Vec<serde_json::Value>,
    /// ALLOW (default), DENY, AUDIT or CUSTOM.
    pub action: Option<String>,
    pub rules: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Rule {
    pub from: Vec<From>,
    pub to: Vec<To>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct From {
    pub source: Source,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct To {
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// What became of one policy: the resource served (if any), whom it selects, and notes.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub authorization: Option<api::Authorization>,
    /// Labels a pod of the policy's namespace must carry; `None`: no selector.
    pub selector: Option<BTreeMap<String, String>>,
    pub notes: Vec<String>,
}

/// Converts `policy`; a policy in `root_namespace` without a selector applies mesh-wide.
pub fn convert(policy: &AuthorizationPolicy, root_namespace: &str) -> Converted {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let spec = &policy.spec;
    let selector = spec
        .selector
        .as_ref()
        .map(|selector| selector.match_labels.clone())
        .filter(|labels| !labels.is_empty());
    let mut notes = Vec::new();
    let not_served = |note: String| Converted { authorization: None, selector: None, notes: vec![note] };
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        // Its waypoint's to enforce (`http::convert`), never a node proxy's.
        return Converted { authorization: None, selector: None, notes: Vec::new() };
    }
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => api::Action::Allow,
        "DENY" => api::Action::Deny,
        other => return not_served(format!("action {other} is not enforced by node proxies")),
    };
    let scope = match (&selector, namespace == root_namespace) {
        (Some(_), _) => api::Scope::WorkloadSelector,
        (None, true) => api::Scope::Global,
        (None, false) => api::Scope::Namespace,
    };
    let groups = spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(index, rule)| {
            let (group, unenforceable) = group(rule);
            if unenforceable.is_empty() {
                return Some(group);
            }
            let what = unenforceable.join("; ");
            match action {
                api::Action::Allow => {
                    notes.push(format!("rule {index} dropped, so it allows nothing: {what}"));
                    None
                }
                api::Action::Deny => {
                    notes.push(format!(
                        "rule {index} ignores what node proxies cannot check, so it denies more: {what}"
                    ));
                    Some(group)
                }
            }
        })
        .collect();
    // Istio's annotation: evaluated and logged by the proxies, never enforced.
    let dry_run = is_dry_run(policy);
    if dry_run {
        notes.push(format!("dry run ({DRY_RUN}): proxies log what it would decide and enforce nothing"));
    }
    let authorization =
        api::Authorization { name, namespace, scope: scope.into(), action: action.into(), groups, dry_run };
    Converted { authorization: Some(authorization), selector, notes }
}

/// The annotation marking a policy dry-run, Istio's own.
pub const DRY_RUN: &str = "istio.io/dry-run";

/// One rule as a group (`from` AND `to` AND each condition), without the fields a node proxy
/// cannot check, and what those were. A `from`, `to` or condition of which nothing is left (or
/// nothing was set) constrains nothing: it becomes a rule without matches, which matches
/// everything, since proxies (Istio's too) match nothing with a match that sets nothing.
fn group(rule: &Rule) -> (api::Group, Vec<String>) {
    let mut unenforceable = Vec::new();
    let mut rules = Vec::new();
    if !rule.from.is_empty() {
        let matches = rule.from.iter().map(|from| source(&from.source, &mut unenforceable)).collect();
        rules.push(api::Rules { matches });
    }
    if !rule.to.is_empty() {
        let matches = rule.to.iter().map(|to| operation(&to.operation, &mut unenforceable)).collect();
        rules.push(api::Rules { matches });
    }
    for condition in &rule.when {
        rules.push(api::Rules { matches: vec![self::condition(condition, &mut unenforceable)] });
    }
    for clause in &mut rules {
        if clause.matches.iter().any(|one| *one == api::Match::default()) {
            clause.matches.clear();
        }
    }
    (api::Group { rules }, unenforceable)
}

fn source(source: &Source, unenforceable: &mut Vec<String>) -> api::Match {
    let mut one = api::Match {
        principals: source.principals.iter().map(|value| string_match(value)).collect(),
        not_principals: source.not_principals.iter().map(|value| string_match(value)).collect(),
        namespaces: source.namespaces.iter().map(|value| string_match(value)).collect(),
        not_namespaces: source.not_namespaces.iter().map(|value| string_match(value)).collect(),
        ..Default::default()
    };
    one.source_ips = cidrs("ipBlocks", &source.ip_blocks, unenforceable);
    one.not_source_ips = cidrs("notIpBlocks", &source.not_ip_blocks, unenforceable);
    for field in source.request_fields_set() {
        unenforceable.push(format!("from.source.{field} needs HTTP"));
    }
    one
}

impl Source {
    /// The fields set that only a request can answer (a JWT's principal, the client's
    /// address before proxies): node proxies check none of them.
    pub fn request_fields_set(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
        ]
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(field, _)| field)
        .chain(self.remote_fields_set())
    }

    /// The fields set about the client's address before proxies: no proxy of Weft's checks
    /// them yet.
    pub fn remote_fields_set(&self) -> impl Iterator<Item = &'static str> + '_ {
        [("remoteIpBlocks", &self.remote_ip_blocks), ("notRemoteIpBlocks", &self.not_remote_ip_blocks)]
            .into_iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(field, _)| field)
    }
}

/// Whether `policy` carries Istio's dry-run annotation: evaluated and logged, never enforced.
pub fn is_dry_run(policy: &AuthorizationPolicy) -> bool {
    policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(DRY_RUN))
        .is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

fn operation(operation: &Operation, unenforceable: &mut Vec<String>) -> api::Match {
    let one = api::Match {
        destination_ports: ports("ports", &operation.ports, unenforceable),
        not_destination_ports: ports("notPorts", &operation.not_ports, unenforceable),
        ..Default::default()
    };
    for (field, values) in [
        ("hosts", &operation.hosts),
        ("notHosts", &operation.not_hosts),
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ] {
        if !values.is_empty() {
            unenforceable.push(format!("to.operation.{field} needs HTTP"));
        }
    }
    one
}

fn condition(condition: &Condition, unenforceable: &mut Vec<String>) -> api::Match {
    let (values, not_values) = (&condition.values, &condition.not_values);
    let strings = |list: &[String]| list.iter().map(|value| string_match(value)).collect();
    let field = format!("when {}", condition.key);
    match condition.key.as_str() {
        "source.ip" => api::Match {
            source_ips: cidrs(&field, values, unenforceable),
            not_source_ips: cidrs(&field, not_values, unenforceable),
            ..Default::default()
        },
        "destination.ip" => api::Match {
            destination_ips: cidrs(&field, values, unenforceable),
            not_destination_ips: cidrs(&field, not_values, unenforceable),
            ..Default::default()
        },
        "destination.port" => api::Match {
            destination_ports: ports(&field, values, unenforceable),
            not_destination_ports: ports(&field, not_values, unenforceable),
            ..Default::default()
        },
        "source.namespace" => api::Match {
            namespaces: strings(values),
            not_namespaces: strings(not_values),
            ..Default::default()
        },
        "source.principal" => api::Match {
            principals: strings(values),
            not_principals: strings(not_values),
            ..Default::default()
        },
        other => {
            unenforceable.push(format!("condition {other} is not an L4 attribute"));
            api::Match::default()
        }
    }
}

/// Istio's string forms: `*` (any), `prefix*`, `*suffix`, exact. Principals may carry
/// `spiffe://`; node proxies compare without it.
fn string_match(value: &str) -> api::StringMatch {
    use api::string_match::MatchType;
    let value = value.strip_prefix("spiffe://").unwrap_or(value);
    let match_type = if value == "*" {
        MatchType::Presence(())
    } else if let Some(prefix) = value.strip_suffix('*') {
        MatchType::Prefix(prefix.to_owned())
    } else if let Some(suffix) = value.strip_prefix('*') {
        MatchType::Suffix(suffix.to_owned())
    } else {
        MatchType::Exact(value.to_owned())
    };
    api::StringMatch { match_type: Some(match_type) }
}

/// Addresses or CIDRs; if one does not parse, the whole field is left out (so the rule is
/// widened or dropped, never narrowed to the values that happened to parse).
fn cidrs(field: &str, values: &[String], unenforceable: &mut Vec<String>) -> Vec<api::Address> {
    let parsed: Result<Vec<_>, String> = values.iter().map(|value| cidr(value)).collect();
    parsed.unwrap_or_else(|error| {
        unenforceable.push(format!("{field}: {error}"));
        Vec::new()
    })
}

fn cidr(value: &str) -> Result<api::Address, String> {
    let (address, length) = match value.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (value, None),
    };
    let address: IpAddr = address.parse().map_err(|_| format!("{value:?} is not an address or CIDR"))?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    let length = match length {
        None => bits,
        Some(length) => length
            .parse()
            .ok()
            .filter(|length| *length <= bits)
            .ok_or_else(|| format!("{value:?} has a bad prefix length"))?,
    };
    let address = match address {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    Ok(api::Address { address, length })
}

/// Port numbers, all or nothing (as [`cidrs`]).
fn ports(field: &str, values: &[String], unenforceable: &mut Vec<String>) -> Vec<u32> {
    let parsed: Result<Vec<u32>, String> = values
        .iter()
        .map(|value| value.parse::<u16>().map(u32::from).map_err(|_| format!("{value:?} is not a port")))
        .collect();
    parsed.unwrap_or_else(|error| {
        unenforceable.push(format!("{field}: {error}"));
        Vec::new()
    })
}

pub mod http;

#[cfg(test)]
mod tests;
