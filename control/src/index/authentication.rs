//! `RequestAuthentication` (`security.weft.dev/v1`, Istio's fields) to
//! `weft.security.RequestAuthentication` resources: the JWT rules a waypoint applies to the
//! Services and waypoints a policy's `targetRefs` name. Every key set is resolved here —
//! `jwks` inline, or `jwksFrom` a ConfigMap or Secret of the policy's namespace labelled
//! [`JWKS_LABEL`] — so waypoints fetch nothing, and a changed ConfigMap or Secret reaches them
//! with the next snapshot (key rotation). What cannot be resolved leaves the rule without keys:
//! its tokens are refused (fail closed, as Istio does when a fetch fails), and a note says why.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use weft_api::http_authorization as api;

use super::{
    Naming,
    policy::{
        Selector,
        http::{is_header_name, targets},
    },
};

/// ConfigMaps and Secrets holding key sets carry this label (any value): the control plane
/// watches only those, not every Secret of the cluster.
pub const JWKS_LABEL: &str = "security.weft.dev/jwks";

/// The custom resource.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RequestAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
}

resource!(
    RequestAuthentication,
    "security.weft.dev",
    "v1",
    "RequestAuthentication",
    "requestauthentications"
);

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Spec {
    pub selector: Option<Selector>,
    pub target_ref: Option<serde_json::Value>,
    pub target_refs: Vec<serde_json::Value>,
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    /// Weft's own: the key set from a ConfigMap or Secret.
    pub jwks_from: Option<JwksFrom>,
    pub from_headers: Vec<FromHeader>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: bool,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JwksFrom {
    pub config_map_key_ref: Option<KeyRef>,
    pub secret_key_ref: Option<KeyRef>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct FromHeader {
    pub name: String,
    pub prefix: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// The labelled ConfigMaps' and Secrets' entries, by (namespace, name): where `jwksFrom` looks.
#[derive(Debug, Default)]
pub struct KeySets<'a> {
    config_maps: BTreeMap<(&'a str, &'a str), &'a ConfigMap>,
    secrets: BTreeMap<(&'a str, &'a str), &'a Secret>,
}

impl<'a> KeySets<'a> {
    pub fn new(config_maps: &[&'a ConfigMap], secrets: &[&'a Secret]) -> Self {
        fn key(meta: &ObjectMeta) -> Option<(&str, &str)> {
            Some((meta.namespace.as_deref()?, meta.name.as_deref()?))
        }
        Self {
            config_maps: config_maps.iter().filter_map(|map| Some((key(&map.metadata)?, *map))).collect(),
            secrets: secrets.iter().filter_map(|secret| Some((key(&secret.metadata)?, *secret))).collect(),
        }
    }

    /// The key set `from` names in `namespace`, or why there is none.
    fn resolve(&self, namespace: &str, from: &JwksFrom) -> Result<String, String> {
        match (&from.config_map_key_ref, &from.secret_key_ref) {
            (Some(reference), None) => {
                let map = self.config_maps.get(&(namespace, reference.name.as_str())).ok_or_else(|| {
                    format!("ConfigMap {namespace}/{} labelled {JWKS_LABEL} not found", reference.name)
                })?;
                let data = map.data.as_ref().and_then(|data| data.get(&reference.key));
                data.cloned().ok_or_else(|| {
                    format!("ConfigMap {namespace}/{} has no key {}", reference.name, reference.key)
                })
            }
            (None, Some(reference)) => {
                let secret = self.secrets.get(&(namespace, reference.name.as_str())).ok_or_else(|| {
                    format!("Secret {namespace}/{} labelled {JWKS_LABEL} not found", reference.name)
                })?;
                let data = secret.data.as_ref().and_then(|data| data.get(&reference.key));
                let bytes = data.ok_or_else(|| {
                    format!("Secret {namespace}/{} has no key {}", reference.name, reference.key)
                })?;
                String::from_utf8(bytes.0.clone()).map_err(|_| {
                    format!("Secret {namespace}/{} key {} is not text", reference.name, reference.key)
                })
            }
            _ => Err("jwksFrom takes one of configMapKeyRef and secretKeyRef".into()),
        }
    }
}

/// The resource for `policy` (none when it targets nothing a waypoint serves) and notes on it.
pub fn convert(
    policy: &RequestAuthentication,
    naming: &Naming,
    key_sets: &KeySets<'_>,
) -> (Option<api::RequestAuthentication>, Vec<String>) {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let spec = &policy.spec;
    let mut notes = Vec::new();
    let refs: Vec<&serde_json::Value> = spec.target_ref.iter().chain(&spec.target_refs).collect();
    if refs.is_empty() {
        let why = if spec.selector.is_some() {
            "a selector picks sidecars, which Weft has none of"
        } else {
            "no targetRefs"
        };
        notes.push(format!(
            "{why}: give targetRefs (Services behind a waypoint, or a waypoint's Gateway); not served"
        ));
        return (None, notes);
    }
    let (services, gateways) = targets(&refs, &namespace, naming, &mut notes);
    if services.is_empty() && gateways.is_empty() {
        return (None, notes);
    }
    let rules = spec
        .jwt_rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            let mut refuse = |why: String| notes.push(format!("jwtRules[{index}] ({}): {why}", rule.issuer));
            if rule.issuer.is_empty() {
                refuse("no issuer: dropped, so tokens go unchecked by it".into());
                return None;
            }
            let jwks = match (&rule.jwks, &rule.jwks_from, &rule.jwks_uri) {
                (Some(jwks), None, _) => Ok(jwks.clone()),
                (None, Some(from), _) => key_sets.resolve(&namespace, from),
                (Some(_), Some(_), _) => Err("both jwks and jwksFrom: give one".into()),
                (None, None, Some(_)) => Err("jwksUri: Weft fetches no keys; give jwks or jwksFrom".into()),
                (None, None, None) => Err("no jwks nor jwksFrom".into()),
            };
            let mut jwks = jwks.and_then(|text| public_keys(&text)).unwrap_or_else(|why| {
                refuse(format!("{why}: every token of this issuer is refused"));
                String::new()
            });
            // A header that is none is left out, and the rule refuses every token: it stays, so
            // the waypoint still looks where it did and still owns the claim headers it writes.
            let mut header = |name: &str| {
                let valid = is_header_name(name);
                if !valid && !jwks.is_empty() {
                    refuse(format!("{name:?} is not a header name: every token of this issuer is refused"));
                    jwks.clear();
                }
                valid
            };
            let from_headers = rule
                .from_headers
                .iter()
                .filter(|from| header(&from.name))
                .map(|from| api::JwtHeader { name: from.name.clone(), prefix: from.prefix.clone() })
                .collect();
            let output_claim_to_headers = rule
                .output_claim_to_headers
                .iter()
                .filter(|output| header(&output.header))
                .map(|output| api::ClaimToHeader {
                    header: output.header.clone(),
                    claim: output.claim.clone(),
                })
                .collect();
            let output_payload_to_header =
                rule.output_payload_to_header.clone().filter(|name| header(name)).unwrap_or_default();
            Some(api::JwtRule {
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                jwks,
                from_headers,
                from_params: rule.from_params.clone(),
                from_cookies: rule.from_cookies.clone(),
                forward_original_token: rule.forward_original_token,
                output_claim_to_headers,
                output_payload_to_header,
                space_delimited_claims: rule.space_delimited_claims.clone(),
            })
        })
        .collect();
    (Some(api::RequestAuthentication { name, namespace, services, gateways, rules }), notes)
}

/// The public members of `text`'s keys, re-encoded: the key set waypoints get (a Secret may
/// hold private members too, which must not travel over xDS). Refused unless it is a JSON
/// object with a `keys` array of objects, one at least, each with a `kty`; the waypoint checks
/// each key's material and says what it cannot use.
fn public_keys(text: &str) -> Result<String, String> {
    const PUBLIC: [&str; 9] = ["kty", "kid", "alg", "use", "n", "e", "crv", "x", "y"];
    let set: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("jwks is not JSON: {error}"))?;
    let keys = set["keys"].as_array().ok_or("jwks has no \"keys\" array")?;
    if keys.is_empty() || keys.iter().any(|key| !key["kty"].is_string()) {
        return Err("jwks: every key needs a \"kty\", and there must be one".into());
    }
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|key| {
            let public = PUBLIC.iter().filter_map(|name| Some(((*name).to_owned(), key.get(*name)?.clone())));
            serde_json::Value::Object(public.collect())
        })
        .collect();
    Ok(serde_json::json!({ "keys": keys }).to_string())
}

#[cfg(test)]
mod tests;
