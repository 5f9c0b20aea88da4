//! L4 authorization, decided by the destination's proxy for every inbound connection (HBONE or
//! plaintext), with Istio's semantics so policies mean what Istio users expect:
//!
//! - the policies of a workload are the mesh-wide ones ([`Scope::Global`]), its namespace's
//!   ([`Scope::Namespace`]) and those naming it ([`Scope::WorkloadSelector`]);
//! - any DENY policy that matches denies; else, with no ALLOW policy, the connection is allowed;
//!   else one ALLOW policy must match.
//!
//! A policy matches when one of its groups does; a group when all its rules do (a rule without
//! matches counts as matched); a rule when one of its matches does; a match when it sets some
//! field and every field it sets does (a field matches when one of its values does; a `not_`
//! field when none does) — a match that sets nothing matches nothing, as in Istio's ztunnel. A
//! plaintext peer has no identity: it matches no `principals`/`namespaces`/`service_accounts`
//! value and every `not_` one (so `DENY notPrincipals: ["*"]` refuses plaintext, as with Envoy's
//! RBAC in Istio). A dry-run policy is never enforced.
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::identity::Identity;

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    /// Every workload of the mesh.
    Global,
    /// The workloads of the policy's namespace.
    Namespace,
    /// The workloads whose `authorization_policies` name it.
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
}

/// One authorization policy, as the control plane sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// ORed. None: the policy matches nothing (an ALLOW without rules allows nothing).
    pub groups: Vec<Vec<Rule>>,
    /// Never enforced: what it would decide is only logged.
    pub dry_run: bool,
}

/// ORed matches (one rule of a group: Istio's `from`, `to` or a `when` condition).
pub type Rule = Vec<Match>;

/// Constraints on a connection, ANDed; an empty field does not constrain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    /// Against `<trust domain>/ns/<namespace>/sa/<service account>`.
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    pub service_accounts: Vec<ServiceAccount>,
    pub not_service_accounts: Vec<ServiceAccount>,
}

/// A peer's namespace and service account, both exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAccount {
    pub namespace: String,
    pub service_account: String,
}

impl ServiceAccount {
    fn matches(&self, identity: &Identity) -> bool {
        identity.namespace == self.namespace && identity.service_account == self.service_account
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any value at all (Istio's `"*"`).
    Presence,
}

impl StringMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Suffix(suffix) => value.ends_with(suffix.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub address: IpAddr,
    pub length: u8,
}

impl Cidr {
    /// A range, if `length` fits the address family.
    /// An IPv4-mapped range (`::ffff:a.b.c.d/n`, n ≥ 96) is the IPv4 range it maps, so it
    /// matches IPv4 peers as they are seen; a wider IPv6 range stays IPv6 and holds them too.
    pub fn new(address: IpAddr, length: u8) -> Option<Self> {
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if length > bits {
            return None;
        }
        let address_v4 = match address {
            IpAddr::V6(v6) if length >= 96 => v6.to_ipv4_mapped(),
            _ => None,
        };
        Some(match address_v4 {
            Some(v4) => Self { address: IpAddr::V4(v4), length: length - 96 },
            None => Self { address, length },
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let (network, ip, bits) = match (self.address, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                (u128::from(network.to_bits()), u128::from(ip.to_bits()), 32)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => (network.to_bits(), ip.to_bits(), 128),
            // An IPv6 range wider than the mapped block: the peer as its mapped address.
            (IpAddr::V6(network), IpAddr::V4(ip)) => (network.to_bits(), ip.to_ipv6_mapped().to_bits(), 128),
            (IpAddr::V4(_), IpAddr::V6(_)) => return false,
        };
        let host_bits = bits - u32::from(self.length);
        host_bits >= 128 || network >> host_bits == ip >> host_bits
    }
}

/// What the destination's proxy knows of one inbound connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The peer's certified identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    /// The destination pod's address and port.
    pub destination: SocketAddr,
}

/// The outcome for one connection, with the policy that decided it, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No ALLOW policy applies and no DENY policy matched.
    AllowedByDefault,
    Allowed {
        policy: String,
    },
    Denied {
        policy: String,
    },
    /// ALLOW policies apply and none matched.
    NotAllowed {
        policies: Vec<String>,
    },
    /// The destination pod's workload is not in the configuration (not yet, or its address now
    /// belongs to another pod): the policies selecting it are unknown, so nothing is allowed.
    UnknownWorkload,
    /// The workload names a policy the configuration does not hold (yet): it could be a DENY.
    UnknownPolicy {
        policy: String,
    },
    /// The workload is behind a waypoint, and the connection does not come from one of its
    /// pods: it went around the waypoint (or the waypoint has no pods this proxy knows).
    BypassedWaypoint {
        waypoint: String,
    },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::AllowedByDefault | Verdict::Allowed { .. })
    }

    /// Refused because the configuration lacks what the decision needs; a later one may allow.
    pub fn incomplete(&self) -> bool {
        matches!(self, Verdict::UnknownWorkload | Verdict::UnknownPolicy { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::AllowedByDefault => write!(f, "allowed: no ALLOW policy applies"),
            Verdict::Allowed { policy } => write!(f, "allowed by {policy}"),
            Verdict::Denied { policy } => write!(f, "denied by DENY policy {policy}"),
            Verdict::NotAllowed { policies } => {
                write!(f, "denied: no ALLOW policy matches (applying: {})", policies.join(", "))
            }
            Verdict::UnknownWorkload => write!(f, "denied: the destination pod is not in the configuration"),
            Verdict::UnknownPolicy { policy } => {
                write!(
                    f,
                    "denied: policy {policy} selects the destination pod but is not in the configuration"
                )
            }
            Verdict::BypassedWaypoint { waypoint } => {
                write!(
                    f,
                    "denied: the destination is behind waypoint {waypoint}, and this did not come from it"
                )
            }
        }
    }
}

impl Policy {
    /// `namespace/name`, the xDS resource name.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn matches(&self, connection: &Connection) -> bool {
        self.matches_facts(&Facts::of(connection))
    }

    fn matches_facts(&self, facts: &Facts) -> bool {
        self.groups.iter().any(|group| {
            group.iter().all(|rule| rule.is_empty() || rule.iter().any(|one| one.matches(facts)))
        })
    }
}

/// A connection whose peer principal is spelt out once, when a match first needs it.
struct Facts<'a> {
    connection: &'a Connection<'a>,
    /// `<trust domain>/ns/<namespace>/sa/<service account>`.
    principal: std::cell::OnceCell<Option<String>>,
}

impl<'a> Facts<'a> {
    fn of(connection: &'a Connection<'a>) -> Self {
        Self { connection, principal: std::cell::OnceCell::new() }
    }

    fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| {
                let id = self.connection.source?;
                Some(format!("{}/ns/{}/sa/{}", id.trust_domain, id.namespace, id.service_account))
            })
            .as_deref()
    }
}

/// Istio's order: DENY first, then ALLOW if any applies. Dry-run policies take no part.
pub fn decide<'a>(policies: impl IntoIterator<Item = &'a Policy>, connection: &Connection) -> Verdict {
    let facts = Facts::of(connection);
    let mut allows = Vec::new();
    for policy in policies {
        if policy.dry_run {
            if policy.matches_facts(&facts) {
                tracing::info!(policy = %policy.key(), action = ?policy.action, source = ?connection.source.map(ToString::to_string),
                    destination = %connection.destination, "dry-run policy matched (not enforced)");
            }
            continue;
        }
        match policy.action {
            Action::Deny if policy.matches_facts(&facts) => return Verdict::Denied { policy: policy.key() },
            Action::Deny => {}
            Action::Allow => allows.push(policy),
        }
    }
    if allows.is_empty() {
        return Verdict::AllowedByDefault;
    }
    match allows.iter().find(|policy| policy.matches_facts(&facts)) {
        Some(policy) => Verdict::Allowed { policy: policy.key() },
        None => Verdict::NotAllowed { policies: allows.iter().map(|policy| policy.key()).collect() },
    }
}

impl Match {
    fn matches(&self, facts: &Facts) -> bool {
        if *self == Match::default() {
            return false;
        }
        let connection = facts.connection;
        let namespace = connection.source.map(|id| id.namespace.as_str());
        let destination = connection.destination;
        let source = connection.source;
        strings(&self.namespaces, &self.not_namespaces, namespace)
            && values(&self.service_accounts, &self.not_service_accounts, |account| {
                source.is_some_and(|identity| account.matches(identity))
            })
            && strings(&self.principals, &self.not_principals, facts.principal())
            && values(&self.source_ips, &self.not_source_ips, |cidr| cidr.contains(connection.source_ip))
            && values(&self.destination_ips, &self.not_destination_ips, |cidr| {
                cidr.contains(destination.ip())
            })
            && values(&self.destination_ports, &self.not_destination_ports, |port| {
                *port == destination.port()
            })
    }
}

/// One of `positive` (when set) matches a present value, and none of `negative` does.
fn strings(positive: &[StringMatch], negative: &[StringMatch], value: Option<&str>) -> bool {
    let any = |list: &[StringMatch]| value.is_some_and(|value| list.iter().any(|one| one.matches(value)));
    (positive.is_empty() || any(positive)) && !any(negative)
}

fn values<T>(positive: &[T], negative: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&matches)) && !negative.iter().any(&matches)
}

#[cfg(test)]
mod tests;
