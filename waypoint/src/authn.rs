//! Request authentication: the JWT rules of the RequestAuthentications that target a request's
//! Service or the waypoint, applied as Istio's waypoint (Envoy's `jwt_authn`) applies them.
//!
//! - A token is looked for where any applying rule says (its headers with their prefixes, query
//!   parameters, cookies; by default `Authorization: Bearer` and `?access_token=`).
//! - No token: the request goes on unauthenticated; an AuthorizationPolicy asking for request
//!   principals refuses it (403), as in Istio.
//! - Every token found must verify — with the keys of the rule whose `issuer` is its `iss` and
//!   that looks where it was found — or the request is refused with 401 (Envoy's message);
//!   the first token's claims then stand for the request ([`jwt::Claims`]).
//! - A verified token is taken off the request (unless `forwardOriginalToken`) when it came in a
//!   header; claims copied into headers replace whatever the client sent in them — a client
//!   never sets those headers itself, token or not (Envoy leaves them be without a token).
//!
//! Pure apart from the clock the caller passes.
use std::{sync::Arc, time::SystemTime};

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
}

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
                Ok(Rule {
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
            let refused =
                |policy: Option<&Policy>, error| Rejected { policy: policy.map(Policy::key), error };
            let token = Token::parse(&raw).map_err(|error| refused(None, error))?;
            let (policy, rule) = rules
                .iter()
                .find(|(_, rule)| {
                    Some(rule.issuer.as_str()) == token.issuer() && rule.locations.contains(location)
                })
                .ok_or_else(|| refused(None, jwt::Error::UnknownIssuer))?;
            let jwks = rule.jwks.as_ref().map_err(|_| refused(Some(policy), jwt::Error::NoKeys))?;
            let claims =
                token.verify(jwks, &rule.audiences, now).map_err(|error| refused(Some(policy), error))?;
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

/// The tokens at `location`, as written there.
fn tokens(location: &Location, headers: &HeaderMap, uri: &Uri) -> Vec<String> {
    match location {
        Location::Header(name, prefix) => headers
            .get_all(name)
            .iter()
            .filter_map(|value| {
                let value = value.to_str().ok()?;
                let (head, rest) = (value.get(..prefix.len())?, value.get(prefix.len()..)?);
                head.eq_ignore_ascii_case(prefix).then(|| rest.trim().to_owned())
            })
            .filter(|token| !token.is_empty())
            .collect(),
        Location::Param(name) => uri
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .filter_map(|pair| pair.split_once('='))
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.to_owned())
            .filter(|token| !token.is_empty())
            .collect(),
        Location::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.to_owned())
            .filter(|token| !token.is_empty())
            .collect(),
    }
}
