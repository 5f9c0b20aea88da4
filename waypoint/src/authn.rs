//! Request authentication: the JWT rules of the RequestAuthentications that target a request's
//! Service or the waypoint, applied as Istio's waypoint (Envoy's `jwt_authn`) applies them.
//!
//! - A token is looked for where any applying rule says (its headers with their prefixes, query
//!   parameters, cookies; by default `Authorization: Bearer` and `?access_token=`).
//! - No token: the request goes on unauthenticated; an AuthorizationPolicy asking for request
//!   principals refuses it (403), as in Istio.
//! - Every token found must verify — with the keys of a rule whose `issuer` is its `iss` and
//!   that looks where it was found (of several such rules, one is enough, as Istio ORs them) —
//!   or the request is refused with 401 (Envoy's message); the first token's claims then
//!   stand for the request ([`jwt::Claims`]), `scope` and `permission` read as lists of words.
//! - Locations are read as the app will read them: header values as bytes (a token that is
//!   not text is refused, not overlooked), query parameters percent-decoded.
//! - A verified token is taken off the request (unless `forwardOriginalToken`) when it came in a
//!   header; claims copied into headers replace whatever the client sent in them — a client
//!   never sets those headers itself, token or not (Envoy leaves them be without a token).
//!
//! Pure apart from the clock the caller passes.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use weft_api::http_authorization as api;

use crate::jwt::{self, Claims, Jwks, Token};

#[cfg(test)]
mod tests;

/// Why a RequestAuthentication cannot be applied: a header it names is not a header name.
#[derive(Debug, thiserror::Error)]
#[error("request authentication {policy}: {header:?} is not a header name")]
pub struct Error {
    policy: String,
    header: String,
}

/// One RequestAuthentication, its key sets parsed once.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    /// Service keys (`<namespace>/<hostname>`) it applies to.
    pub services: Vec<String>,
    /// Waypoints (`<namespace>/<gateway name>`) it applies to: every request they handle.
    pub gateways: Vec<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    issuer: String,
    audiences: Vec<String>,
    /// Why there are no keys, when there are none: its tokens are all refused.
    jwks: Result<Arc<Jwks>, String>,
    locations: Vec<Location>,
    forward: bool,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    payload_header: Option<HeaderName>,
    /// String claims read as lists of words: `scope`, `permission` and the rule's own.
    space_delimited: Vec<String>,
    /// Tokens this rule verified, and their claims: a client sends its token with every
    /// request, and a signature need not be checked again (Envoy keeps 100 too). Times are
    /// checked at every use; a new key set comes in a new policy, with an empty cache.
    verified: Arc<Mutex<HashMap<String, Claims>>>,
}

/// How many verified tokens a rule keeps (Envoy's default); when full, it starts afresh.
const VERIFIED_KEPT: usize = 100;

/// Where a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A header whose value starts with the prefix (ASCII case aside) and then the token.
    Header(HeaderName, String),
    Param(String),
    Cookie(String),
}

impl Policy {
    /// `namespace/name`, as logs name the policy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether it governs a request to `service` (a Service key) through the waypoint
    /// `gateway` (`namespace/name`).
    pub fn applies_to(&self, service: Option<&str>, gateway: &str) -> bool {
        crate::authz::targets(&self.services, &self.gateways, service, gateway)
    }

    /// Why some of its rules refuse every token (their key sets did not resolve or parse).
    pub fn unusable_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().filter_map(|rule| Some((rule.issuer.as_str(), rule.jwks.as_ref().err()?.as_str())))
    }
}

impl TryFrom<api::RequestAuthentication> for Policy {
    type Error = Error;

    fn try_from(policy: api::RequestAuthentication) -> Result<Self, Error> {
        let key = format!("{}/{}", policy.namespace, policy.name);
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error { policy: key.clone(), header: name.to_owned() })
        };
        let rules = policy
            .rules
            .into_iter()
            .map(|rule| {
                let mut locations = rule
                    .from_headers
                    .iter()
                    .map(|from| Ok(Location::Header(header(&from.name)?, from.prefix.clone())))
                    .collect::<Result<Vec<_>, Error>>()?;
                locations.extend(rule.from_params.iter().cloned().map(Location::Param));
                locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
                if locations.is_empty() {
                    locations = vec![
                        Location::Header(header::AUTHORIZATION, "Bearer ".into()),
                        Location::Param("access_token".into()),
                    ];
                }
                let claim_headers = rule
                    .output_claim_to_headers
                    .iter()
                    .map(|output| {
                        Ok((header(&output.header)?, output.claim.split('.').map(str::to_owned).collect()))
                    })
                    .collect::<Result<_, Error>>()?;
                let payload_header = match rule.output_payload_to_header.as_str() {
                    "" => None,
                    name => Some(header(name)?),
                };
                let jwks = if rule.jwks.is_empty() {
                    Err("the control plane resolved no key set".to_owned())
                } else {
                    Jwks::parse(&rule.jwks).map(Arc::new).map_err(|error| error.to_string())
                };
                let space_delimited = ["scope", "permission"]
                    .into_iter()
                    .map(str::to_owned)
                    .chain(rule.space_delimited_claims)
                    .collect();
                Ok(Rule {
                    verified: Arc::default(),
                    space_delimited,
                    issuer: rule.issuer,
                    audiences: rule.audiences,
                    jwks,
                    locations,
                    forward: rule.forward_original_token,
                    claim_headers,
                    payload_header,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            name: policy.name,
            namespace: policy.namespace,
            services: policy.services,
            gateways: policy.gateways,
            rules,
        })
    }
}

/// A request refused for its token: 401, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The policy whose rule refused it; `None` when no rule takes its issuer there.
    pub policy: Option<String>,
    pub error: jwt::Error,
}

/// Authenticates a request under `policies` (those that apply to it): its verified claims,
/// `None` without a token, or why it is refused. Takes verified tokens off `headers` and
/// writes the claims the rules copy into headers.
pub fn authenticate<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    headers: &mut HeaderMap,
    uri: &Uri,
    now: SystemTime,
) -> Result<Option<Claims>, Rejected> {
    let rules: Vec<(&Policy, &Rule)> =
        policies.into_iter().flat_map(|policy| policy.rules.iter().map(move |rule| (policy, rule))).collect();
    if rules.is_empty() {
        return Ok(None);
    }
    for (_, rule) in &rules {
        for (name, _) in &rule.claim_headers {
            headers.remove(name);
        }
        if let Some(name) = &rule.payload_header {
            headers.remove(name);
        }
    }
    let mut locations: Vec<&Location> = Vec::new();
    for location in rules.iter().flat_map(|(_, rule)| &rule.locations) {
        if !locations.contains(&location) {
            locations.push(location);
        }
    }
    let mut verified: Vec<(&Rule, &Location, Claims)> = Vec::new();
    for location in locations {
        for raw in tokens(location, headers, uri) {
            let (rule, claims) = verify(&rules, &raw, location, now)?;
            verified.push((rule, location, claims));
        }
    }
    for (rule, location, claims) in &verified {
        if let (false, Location::Header(name, _)) = (rule.forward, location) {
            headers.remove(name);
        }
        for (name, path) in &rule.claim_headers {
            if let Some(value) = claims.header_value(path).and_then(|value| HeaderValue::try_from(value).ok())
            {
                headers.insert(name.clone(), value);
            }
        }
        if let Some(name) = &rule.payload_header
            && let Ok(value) = HeaderValue::try_from(claims.encoded_payload())
        {
            headers.insert(name.clone(), value);
        }
    }
    Ok(verified.into_iter().next().map(|(_, _, claims)| claims))
}

/// Verifies token `raw`, found at `location`, with the rules that take its issuer there: the
/// first that verified it already (and it is still current) or verifies it now, else the first
/// one's refusal.
fn verify<'r>(
    rules: &[(&Policy, &'r Rule)],
    raw: &str,
    location: &Location,
    now: SystemTime,
) -> Result<(&'r Rule, Claims), Rejected> {
    let kept =
        |rule: &Rule| rule.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(raw).cloned();
    for (_, rule) in rules.iter().filter(|(_, rule)| rule.locations.contains(location)) {
        if let Some(claims) = kept(rule).filter(|claims| claims.current(now).is_ok()) {
            return Ok((rule, claims));
        }
    }
    let token = Token::parse(raw).map_err(|error| Rejected { policy: None, error })?;
    let mut refused = None;
    let taking = rules.iter().filter(|(_, rule)| {
        Some(rule.issuer.as_str()) == token.issuer() && rule.locations.contains(location)
    });
    for (policy, rule) in taking {
        let verified = match &rule.jwks {
            Ok(jwks) => token.verify(jwks, &rule.audiences, now),
            Err(_) => Err(jwt::Error::NoKeys),
        };
        match verified {
            Ok(mut claims) => {
                claims.split_space_delimited(rule.space_delimited.iter().map(String::as_str));
                let mut verified = rule.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if verified.len() >= VERIFIED_KEPT {
                    verified.clear();
                }
                verified.insert(raw.to_owned(), claims.clone());
                return Ok((rule, claims));
            }
            Err(error) => {
                refused.get_or_insert(Rejected { policy: Some(policy.key()), error });
            }
        }
    }
    Err(refused.unwrap_or(Rejected { policy: None, error: jwt::Error::UnknownIssuer }))
}

/// The tokens at `location`, as the app would read them there. Bytes that are not text are
/// kept (replaced), so such a token is refused rather than overlooked.
fn tokens(location: &Location, headers: &HeaderMap, uri: &Uri) -> Vec<String> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    let found: Vec<String> = match location {
        Location::Header(name, prefix) => headers
            .get_all(name)
            .iter()
            .filter_map(|value| {
                let (head, rest) = value.as_bytes().split_at_checked(prefix.len())?;
                head.eq_ignore_ascii_case(prefix.as_bytes()).then(|| text(rest))
            })
            .collect(),
        Location::Param(name) => uri
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (percent_decoded(key) == name.as_bytes()).then(|| text(&percent_decoded(value)))
            })
            .collect(),
        Location::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b';'))
            .filter_map(|pair| {
                let at = pair.iter().position(|byte| *byte == b'=')?;
                (pair[..at].trim_ascii() == name.as_bytes()).then(|| text(&pair[at + 1..]))
            })
            .collect(),
    };
    found.into_iter().filter(|token| !token.is_empty()).collect()
}

/// A query component with its `%XX` escapes (and form encoding's `+`) decoded, as frameworks
/// decode parameters; a `%` without two hex digits stays as it is.
fn percent_decoded(component: &str) -> Vec<u8> {
    let bytes = component.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let hex = |offset: usize| bytes.get(at + offset).and_then(|digit| (*digit as char).to_digit(16));
        let (value, width) = match (byte, hex(1), hex(2)) {
            (b'%', Some(high), Some(low)) => ((high * 16 + low) as u8, 3),
            (b'+', ..) => (b' ', 1),
            (byte, ..) => (byte, 1),
        };
        decoded.push(value);
        at += width;
    }
    decoded
}
