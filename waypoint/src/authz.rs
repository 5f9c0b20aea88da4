//! L7 authorization: whether the waypoint lets one HTTP request (or one connection it relays at
//! L4) through, decided from the
//! AuthorizationPolicies that apply to its Service or to the waypoint, with Istio's semantics so
//! policies mean what Istio users expect. Pure: no I/O; the caller picks the policies that apply
//! ([`Policy::applies_to`]) and enforces and logs the [`Decision`].
//!
//! - Any DENY policy that matches denies; else, with no ALLOW policy, the request is allowed;
//!   else one ALLOW policy must match. Dry-run policies are evaluated, reported, never enforced.
//! - A policy matches when one of its rules does (no rules: it matches nothing; one empty rule:
//!   everything). A rule matches when one of its `from` entries does (or it has none), one of its
//!   `to` entries does (or it has none) and every `when` condition does. An entry matches when
//!   every field it sets does (an entry that sets nothing matches everything); a field when one
//!   of its values does and none of its `not_` values does.
//! - Values are `*` (anything), `prefix*`, `*suffix` or exact; case-sensitive except hosts.
//! - Request principals (`<iss>/<sub>`) and the `request.auth.*` keys are the request's
//!   verified JWT's ([`crate::authn`]); a claim holding a list matches when one item does.
//!   What the request lacks (a peer identity, a Host, a header) matches no value and every
//!   `not_` value, so `DENY not_principals: ["*"]` refuses a peer without an identity.
//! - A connection relayed at L4 (not HTTP) has no method, path, host or headers: as Istio
//!   applies policies to TCP, an ALLOW rule constraining one of them admits no such connection
//!   and a DENY rule's constraints on them are left out (it refuses on what remains), so
//!   leaving HTTP never gets around a policy.

use std::convert::Infallible;
use std::fmt;
use std::net::{AddrParseError, IpAddr};
use std::num::ParseIntError;

use http::Method;
use http::header::{HeaderMap, HeaderName, InvalidHeaderName};
use weft_api::http_authorization as api;
use weft_proxy::authz::Cidr;
use weft_proxy::identity::Identity;

use crate::jwt::Claims;

#[cfg(test)]
mod tests;

/// Why an `HttpAuthorization` resource cannot be enforced. Each names the policy
/// (`namespace/name`) and the offending value, so the control plane's bug is easy to find.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy {policy}: {field}: invalid address {value:?}")]
    InvalidAddress {
        policy: String,
        field: String,
        value: String,
        #[source]
        source: AddrParseError,
    },
    #[error("policy {policy}: {field}: invalid prefix length in {value:?}")]
    InvalidPrefixLength { policy: String, field: String, value: String },
    #[error("policy {policy}: {field}: invalid port {value:?}")]
    InvalidPort {
        policy: String,
        field: String,
        value: String,
        #[source]
        source: ParseIntError,
    },
    #[error("policy {policy}: unknown condition key {key:?}")]
    UnknownKey { policy: String, key: String },
    #[error("policy {policy}: invalid header name in condition key {key:?}")]
    InvalidHeaderName {
        policy: String,
        key: String,
        #[source]
        source: InvalidHeaderName,
    },
}

/// One AuthorizationPolicy the waypoint enforces, its values parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    /// Service keys (`<namespace>/<hostname>`) it applies to.
    pub services: Vec<String>,
    /// Waypoints (`<namespace>/<gateway name>`) it applies to: every request they handle.
    pub gateways: Vec<String>,
    /// DENY; ALLOW otherwise.
    pub deny: bool,
    /// Evaluated and reported, never enforced (Istio's `istio.io/dry-run`).
    pub dry_run: bool,
    // Private so that every `Policy` went through `try_from`'s validation.
    rules: Vec<Rule>,
}

impl Policy {
    /// `namespace/name`, as logs and verdicts name the policy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy governs a request to `service` (a Service key; `None` when the
    /// request reached no known Service) through the waypoint `gateway` (`namespace/name`).
    pub fn applies_to(&self, service: Option<&str>, gateway: &str) -> bool {
        targets(&self.services, &self.gateways, service, gateway)
    }

    fn matches(&self, request: &Request<'_>) -> bool {
        self.rules.iter().any(|rule| rule.matches(request, self.deny))
    }
}

/// Whether a policy attached to `services` (keys) and `gateways` (`namespace/name`) governs
/// a request to `service` (`None`: no known Service) through the waypoint `gateway`.
pub fn targets(services: &[String], gateways: &[String], service: Option<&str>, gateway: &str) -> bool {
    service.is_some_and(|service| services.iter().any(|s| s == service))
        || gateways.iter().any(|g| g == gateway)
}

impl TryFrom<api::HttpAuthorization> for Policy {
    type Error = Error;

    fn try_from(policy: api::HttpAuthorization) -> Result<Self, Error> {
        let key = format!("{}/{}", policy.namespace, policy.name);
        let rules = policy.rules.into_iter().map(|rule| Rule::parse(&key, rule)).collect::<Result<_, _>>()?;
        Ok(Self {
            name: policy.name,
            namespace: policy.namespace,
            services: policy.services,
            gateways: policy.gateways,
            deny: policy.deny,
            dry_run: policy.dry_run,
            rules,
        })
    }
}

/// What the waypoint knows of one request when it authorizes it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer identity the waypoint verified; `None` matches no principal or namespace.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub method: &'a Method,
    /// The path without its query.
    pub path: &'a str,
    /// Host (or `:authority`) without its port.
    pub host: Option<&'a str>,
    /// The destination Service's port.
    pub port: u16,
    pub headers: &'a HeaderMap,
    /// The request's verified JWT, if it had one.
    pub auth: Option<&'a Claims>,
    /// A connection relayed at L4, not an HTTP request: `method`, `path`, `host` and
    /// `headers` mean nothing.
    pub opaque: bool,
}

impl<'a> Request<'a> {
    /// A connection relayed at L4: a peer, its address and the port; no HTTP fields.
    pub fn connection(source: Option<&'a Identity>, source_ip: IpAddr, port: u16) -> Self {
        static CONNECT: Method = Method::CONNECT;
        static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);
        Request {
            source,
            source_ip,
            method: &CONNECT,
            path: "",
            host: None,
            port,
            headers: &NO_HEADERS,
            auth: None,
            opaque: true,
        }
    }
}

/// The outcome for one request, with the policy that decided it, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No ALLOW policy applies and no DENY policy matched.
    AllowedByDefault,
    /// This ALLOW policy matched (the first one in the caller's order) and no DENY did.
    Allowed { policy: String },
    /// This DENY policy matched (the first one in the caller's order).
    Denied { policy: String },
    /// ALLOW policies apply (these) and none matched.
    NotAllowed { policies: Vec<String> },
}

impl Verdict {
    /// Whether the request may go on.
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::AllowedByDefault | Verdict::Allowed { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::AllowedByDefault => write!(f, "allowed: no ALLOW policy applies"),
            Verdict::Allowed { policy } => write!(f, "allowed by ALLOW policy {policy}"),
            Verdict::Denied { policy } => write!(f, "denied by DENY policy {policy}"),
            Verdict::NotAllowed { policies } => {
                write!(f, "denied: no ALLOW policy matches (applying: {})", policies.join(", "))
            }
        }
    }
}

/// The verdict, and what the dry-run policies would have had to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The dry-run policies (`namespace/name`) that matched the request, ALLOW or DENY.
    pub dry_run_matches: Vec<String>,
}

/// Decides one request under `policies`, which must be those that apply to it
/// ([`Policy::applies_to`]).
pub fn decide<'p>(policies: impl IntoIterator<Item = &'p Policy>, request: &Request<'_>) -> Decision {
    let mut denied = None;
    let mut allowed = None;
    let mut applying = Vec::new();
    let mut dry_run_matches = Vec::new();
    for policy in policies {
        if policy.dry_run {
            if policy.matches(request) {
                dry_run_matches.push(policy.key());
            }
        } else if policy.deny {
            if denied.is_none() && policy.matches(request) {
                denied = Some(policy);
            }
        } else {
            applying.push(policy);
            // Once a DENY matched, ALLOWs cannot change the verdict: skip their rules.
            if allowed.is_none() && denied.is_none() && policy.matches(request) {
                allowed = Some(policy);
            }
        }
    }
    let verdict = match (denied, allowed) {
        (Some(policy), _) => Verdict::Denied { policy: policy.key() },
        (None, Some(policy)) => Verdict::Allowed { policy: policy.key() },
        (None, None) if applying.is_empty() => Verdict::AllowedByDefault,
        (None, None) => Verdict::NotAllowed { policies: applying.iter().map(|p| p.key()).collect() },
    };
    Decision { verdict, dry_run_matches }
}

/// `from`, `to` and `when`, ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// ORed; none: any source.
    from: Vec<Entry>,
    /// ORed; none: any operation.
    to: Vec<Entry>,
    when: Entry,
}

/// Constraints, ANDed: a `from` or `to` entry, or a rule's `when` conditions. `source`,
/// `operation` and `when` fields constrain the same attributes, so one type serves all three.
type Entry = Vec<Constraint>;

impl Rule {
    fn parse(policy: &str, rule: api::HttpRule) -> Result<Self, Error> {
        let from =
            rule.from.into_iter().map(|source| parse_source(policy, source)).collect::<Result<_, _>>()?;
        let to = rule
            .to
            .into_iter()
            .map(|operation| parse_operation(policy, operation))
            .collect::<Result<_, _>>()?;
        let when = rule
            .when
            .into_iter()
            .map(|condition| parse_condition(policy, condition))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        Ok(Self { from, to, when })
    }

    /// Whether the rule matches, in a DENY policy when `deny`. For an L4 connection, an ALLOW
    /// rule with any HTTP-only constraint matches nothing, and a DENY rule's are left out, as
    /// Istio builds its TCP filter.
    fn matches(&self, request: &Request<'_>, deny: bool) -> bool {
        if request.opaque && !deny {
            let mut constraints = self.from.iter().chain(&self.to).flatten().chain(&self.when);
            if constraints.any(Constraint::is_http_only) {
                return false;
            }
        }
        let holds = |constraint: &Constraint| {
            (request.opaque && constraint.is_http_only()) || constraint.matches(request)
        };
        let entry = |entry: &Entry| entry.iter().all(holds);
        (self.from.is_empty() || self.from.iter().any(entry))
            && (self.to.is_empty() || self.to.iter().any(entry))
            && entry(&self.when)
    }
}

fn parse_source(policy: &str, source: api::HttpSource) -> Result<Entry, Error> {
    let ip_blocks = At { policy, field: "ip_blocks" };
    Ok([
        Values::globs(source.principals, source.not_principals, false).map(Constraint::Principal),
        Values::globs(source.namespaces, source.not_namespaces, false).map(Constraint::Namespace),
        Values::parse(source.ip_blocks, source.not_ip_blocks, |v| ip_blocks.cidr(v))?
            .map(Constraint::SourceIp),
        Values::request_principals(source.request_principals, source.not_request_principals)
            .map(Constraint::RequestPrincipal),
    ]
    .into_iter()
    .flatten()
    .collect())
}

fn parse_operation(policy: &str, operation: api::HttpOperation) -> Result<Entry, Error> {
    let ports = At { policy, field: "ports" };
    Ok([
        Values::globs(operation.hosts, operation.not_hosts, true).map(Constraint::Host),
        Values::parse(operation.ports, operation.not_ports, |v| ports.port(v))?.map(Constraint::Port),
        Values::globs(operation.methods, operation.not_methods, false).map(Constraint::Method),
        Values::globs(operation.paths, operation.not_paths, false).map(Constraint::Path),
    ]
    .into_iter()
    .flatten()
    .collect())
}

/// A `when` condition as the constraint on the attribute its key names. A condition with no
/// values at all constrains nothing, as an empty field of an entry does.
fn parse_condition(policy: &str, condition: api::HttpCondition) -> Result<Option<Constraint>, Error> {
    let api::HttpCondition { key, values, not_values } = condition;
    let at = At { policy, field: &key };
    let constraint = match key.as_str() {
        "source.ip" => Values::parse(values, not_values, |v| at.cidr(v))?.map(Constraint::SourceIp),
        "source.namespace" => Values::globs(values, not_values, false).map(Constraint::Namespace),
        "source.principal" => Values::globs(values, not_values, false).map(Constraint::Principal),
        "destination.port" => Values::parse(values, not_values, |v| at.port(v))?.map(Constraint::Port),
        "request.auth.principal" => {
            Values::request_principals(values, not_values).map(Constraint::RequestPrincipal)
        }
        "request.auth.audiences" => Values::globs(values, not_values, false).map(Constraint::Audience),
        "request.auth.presenter" => Values::globs(values, not_values, false).map(Constraint::Presenter),
        _ if key.starts_with("request.auth.claims[") => {
            let Some(path) = weft_api::claims::claim_path(&key) else {
                return Err(Error::UnknownKey { policy: policy.to_owned(), key });
            };
            let path = path.into_iter().map(str::to_owned).collect();
            Values::globs(values, not_values, false).map(|values| Constraint::Claim(path, values))
        }
        _ => {
            let Some(name) = key.strip_prefix("request.headers[").and_then(|rest| rest.strip_suffix(']'))
            else {
                return Err(Error::UnknownKey { policy: policy.to_owned(), key });
            };
            // `from_bytes` lowercases, as `HeaderMap` keys are: header names match in any case.
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|source| {
                Error::InvalidHeaderName { policy: policy.to_owned(), key: key.clone(), source }
            })?;
            Values::globs(values, not_values, false).map(|values| Constraint::Header(name, values))
        }
    };
    Ok(constraint)
}

/// Where a value sits, to name it in an error.
struct At<'a> {
    policy: &'a str,
    field: &'a str,
}

impl At<'_> {
    /// `address` or `address/length`, IPv4 or IPv6.
    fn cidr(&self, value: &str) -> Result<Cidr, Error> {
        let (address, length) = match value.split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (value, None),
        };
        let address: IpAddr = address.parse().map_err(|source| Error::InvalidAddress {
            policy: self.policy.to_owned(),
            field: self.field.to_owned(),
            value: value.to_owned(),
            source,
        })?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let length = match length {
            None => Some(bits),
            Some(length) => length.parse::<u8>().ok().filter(|length| *length <= bits),
        };
        // `Cidr` reads an IPv4-mapped range as the IPv4 range it maps, and a wider one as IPv6.
        length.and_then(|length| Cidr::new(address, length)).ok_or_else(|| Error::InvalidPrefixLength {
            policy: self.policy.to_owned(),
            field: self.field.to_owned(),
            value: value.to_owned(),
        })
    }

    fn port(&self, value: &str) -> Result<u16, Error> {
        value.parse().map_err(|source| Error::InvalidPort {
            policy: self.policy.to_owned(),
            field: self.field.to_owned(),
            value: value.to_owned(),
            source,
        })
    }
}

/// One attribute of the request and the values it must (not) have.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Constraint {
    /// Against `<trust domain>/ns/<namespace>/sa/<account>`: Istio writes principals without
    /// `spiffe://`.
    Principal(Values<Glob>),
    Namespace(Values<Glob>),
    SourceIp(Values<Cidr>),
    Host(Values<Glob>),
    Port(Values<u16>),
    Method(Values<Glob>),
    Path(Values<Glob>),
    Header(HeaderName, Values<Glob>),
    /// Against the JWT's `<iss>/<sub>`.
    RequestPrincipal(Values<RequestPrincipal>),
    Audience(Values<Glob>),
    Presenter(Values<Glob>),
    /// A claim, by its path through nested objects.
    Claim(Vec<String>, Values<Glob>),
}

impl Constraint {
    /// Whether it constrains what only an HTTP request has.
    fn is_http_only(&self) -> bool {
        matches!(
            self,
            Constraint::Host(_)
                | Constraint::Method(_)
                | Constraint::Path(_)
                | Constraint::Header(..)
                | Constraint::RequestPrincipal(_)
                | Constraint::Audience(_)
                | Constraint::Presenter(_)
                | Constraint::Claim(..)
        )
    }

    fn matches(&self, request: &Request<'_>) -> bool {
        match self {
            Constraint::Principal(values) => {
                let principal = request
                    .source
                    .map(|id| format!("{}/ns/{}/sa/{}", id.trust_domain, id.namespace, id.service_account));
                values.matches(|glob| principal.as_deref().is_some_and(|p| glob.matches(p.as_bytes())))
            }
            Constraint::Namespace(values) => {
                values.matches(|glob| request.source.is_some_and(|id| glob.matches(id.namespace.as_bytes())))
            }
            Constraint::SourceIp(values) => values.matches(|cidr| cidr.contains(request.source_ip)),
            Constraint::Host(values) => {
                values.matches(|glob| request.host.is_some_and(|host| glob.matches(host.as_bytes())))
            }
            Constraint::Port(values) => values.matches(|port| *port == request.port),
            Constraint::Method(values) => {
                values.matches(|glob| glob.matches(request.method.as_str().as_bytes()))
            }
            Constraint::Path(values) => values.matches(|glob| glob.matches(request.path.as_bytes())),
            Constraint::Header(name, values) => {
                // Repeated headers match as one value joined with ',', as Envoy matches them
                // for Istio; bytes, because a header value need not be UTF-8.
                let mut all = request.headers.get_all(name).iter();
                let value = all.next().map(|first| {
                    all.fold(first.as_bytes().to_vec(), |mut joined, next| {
                        joined.push(b',');
                        joined.extend_from_slice(next.as_bytes());
                        joined
                    })
                });
                values.matches(|glob| value.as_deref().is_some_and(|value| glob.matches(value)))
            }
            Constraint::RequestPrincipal(values) => {
                values.matches(|pattern| request.auth.is_some_and(|auth| pattern.matches(auth)))
            }
            Constraint::Audience(values) => values.matches(|glob| {
                request.auth.is_some_and(|auth| auth.audiences.iter().any(|aud| glob.matches(aud.as_bytes())))
            }),
            Constraint::Presenter(values) => values.matches(|glob| {
                request
                    .auth
                    .and_then(|auth| auth.presenter.as_deref())
                    .is_some_and(|azp| glob.matches(azp.as_bytes()))
            }),
            Constraint::Claim(path, values) => values.matches(|glob| {
                request
                    .auth
                    .is_some_and(|auth| auth.strings(path).iter().any(|item| glob.matches(item.as_bytes())))
            }),
        }
    }
}

/// A field and its `not_` twin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Values<T> {
    /// ORed; empty: no constraint.
    any: Vec<T>,
    /// None may match.
    not: Vec<T>,
}

impl<T> Values<T> {
    /// `None` when both are empty, so an entry holds only the constraints it sets.
    fn parse<E>(
        any: Vec<String>,
        not: Vec<String>,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<Self>, E> {
        if any.is_empty() && not.is_empty() {
            return Ok(None);
        }
        let parse_all = |values: Vec<String>| values.iter().map(|v| parse(v)).collect::<Result<Vec<_>, _>>();
        Ok(Some(Self { any: parse_all(any)?, not: parse_all(not)? }))
    }

    /// `matches` says whether the request's attribute matches one value.
    fn matches(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.any.is_empty() || self.any.iter().any(&matches)) && !self.not.iter().any(&matches)
    }
}

impl Values<Glob> {
    fn globs(any: Vec<String>, not: Vec<String>, ignore_case: bool) -> Option<Self> {
        let Ok(values) = Values::parse(any, not, |value| Ok::<_, Infallible>(Glob::new(value, ignore_case)));
        values
    }
}

impl Values<RequestPrincipal> {
    fn request_principals(any: Vec<String>, not: Vec<String>) -> Option<Self> {
        let Ok(values) = Values::parse(any, not, |value| Ok::<_, Infallible>(RequestPrincipal::new(value)));
        values
    }
}

/// A request principal value as Istio matches it: split at its last `/` into the issuer's part
/// and the subject's, so `https://idp.example/*` takes every subject of that issuer and no other
/// issuer, and a `/` inside a subject stays the subject's. `*`: any token with both an issuer
/// and a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RequestPrincipal {
    Any,
    Parts {
        issuer: Part,
        subject: Part,
    },
    /// A value without `/`: matched against `<iss>/<sub>` whole.
    Whole(Glob),
}

/// One side of a request principal: there (not empty), or a value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Present,
    Value(Glob),
}

impl RequestPrincipal {
    /// Istio's reading: `*iss/sub` a suffix of the issuer and exactly the subject, `iss/sub*`
    /// exactly the issuer and a prefix of the subject, `*/sub` and `iss/*` any issuer or
    /// subject that is there, otherwise both exact.
    fn new(value: &str) -> Self {
        if value == "*" {
            return Self::Any;
        }
        let Some((issuer, subject)) = value.rsplit_once('/') else {
            return Self::Whole(Glob::new(value, false));
        };
        let exact = |text: &str| {
            Part::Value(Glob { kind: GlobKind::Exact, text: text.to_owned(), ignore_case: false })
        };
        let (issuer, subject) = if let Some(suffix) = issuer.strip_prefix('*') {
            let issuer = if suffix.is_empty() {
                Part::Present
            } else {
                Part::Value(Glob { kind: GlobKind::Suffix, text: suffix.to_owned(), ignore_case: false })
            };
            (issuer, exact(subject))
        } else if let Some(prefix) = subject.strip_suffix('*') {
            let subject = if prefix.is_empty() {
                Part::Present
            } else {
                Part::Value(Glob { kind: GlobKind::Prefix, text: prefix.to_owned(), ignore_case: false })
            };
            (exact(issuer), subject)
        } else {
            (exact(issuer), exact(subject))
        };
        Self::Parts { issuer, subject }
    }

    fn matches(&self, claims: &Claims) -> bool {
        let part = |part: &Part, value: &str| match part {
            Part::Present => !value.is_empty(),
            Part::Value(glob) => glob.matches(value.as_bytes()),
        };
        match self {
            Self::Any => !claims.issuer.is_empty() && !claims.subject.is_empty(),
            Self::Parts { issuer, subject } => part(issuer, &claims.issuer) && part(subject, &claims.subject),
            Self::Whole(glob) => glob.matches(claims.principal.as_bytes()),
        }
    }
}

/// Istio's string value: `*`, `prefix*`, `*suffix` or exact.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    kind: GlobKind,
    text: String,
    ignore_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobKind {
    Any,
    Prefix,
    Suffix,
    Exact,
}

impl Glob {
    // Istio's order: `*abc*` is the suffix `abc*`, matched literally.
    fn new(value: &str, ignore_case: bool) -> Self {
        let (kind, text) = if value == "*" {
            (GlobKind::Any, "")
        } else if let Some(suffix) = value.strip_prefix('*') {
            (GlobKind::Suffix, suffix)
        } else if let Some(prefix) = value.strip_suffix('*') {
            (GlobKind::Prefix, prefix)
        } else {
            (GlobKind::Exact, value)
        };
        Self { kind, text: text.to_owned(), ignore_case }
    }

    fn matches(&self, value: &[u8]) -> bool {
        let text = self.text.as_bytes();
        let part = match self.kind {
            GlobKind::Any => return true,
            GlobKind::Exact => Some(value),
            GlobKind::Prefix => value.get(..text.len()),
            GlobKind::Suffix => value.len().checked_sub(text.len()).map(|start| &value[start..]),
        };
        part.is_some_and(|part| {
            part.len() == text.len()
                && if self.ignore_case { part.eq_ignore_ascii_case(text) } else { part == text }
        })
    }
}
