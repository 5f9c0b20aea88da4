//! JSON Web Tokens (RFC 7519) in compact form, verified with a key of a JSON Web Key Set
//! (RFC 7517) as Envoy's `jwt_authn` does for Istio: RS256/384/512, PS256/384/512, ES256,
//! ES384, ES512 and EdDSA (Ed25519) — never `none` nor an HMAC — the key picked by `kid` and `alg`,
//! `exp` and `nbf` checked with Envoy's 60 s of clock skew, `aud` against the rule's audiences.
//! Errors carry Envoy's messages, which clients of Istio's waypoint already know. Pure: the
//! caller says what time it is.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use base64::Engine;
use serde_json::{Map, Value};

#[cfg(test)]
mod tests;

/// How far `exp` and `nbf` may be off (Envoy's default).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// base64url, with or without padding, as JWTs and JWKs are written.
const BASE64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Why a token is refused, in Envoy's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded or an invalid JSON")]
    BadHeader,
    #[error("Jwt payload is an invalid Base64url encoded or an invalid JSON")]
    BadPayload,
    #[error("Jwt signature is an invalid Base64url encoded")]
    BadSignature,
    #[error("Jwt header [alg] is not supported")]
    UnsupportedAlgorithm,
    #[error("Jwt payload [{0}] field is not valid")]
    BadClaim(&'static str),
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwks doesn't have any valid public key")]
    NoKeys,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwt verification fails")]
    VerificationFailed,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
}

/// Why a key set cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JSON Web Key Set (an object with a \"keys\" array): {0}")]
    NotJwks(String),
    #[error("key {index}: {what}")]
    BadKey { index: usize, what: String },
    #[error("no key of a supported type (RSA; EC on P-256, P-384 or P-521; OKP on Ed25519) for signing")]
    NoUsableKey,
}

/// The signing algorithms verified, by their `alg` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    EdDsa,
}

impl Algorithm {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    /// Whether `signature` over `message` is `key`'s, when `key` is of this algorithm's kind.
    fn verify(self, key: &Material, message: &[u8], signature: &[u8]) -> Option<bool> {
        let rsa = |parameters: &'static sig::RsaParameters| match key {
            Material::Rsa { n, e } => Some(
                sig::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
                    .verify(parameters, message, signature)
                    .is_ok(),
            ),
            _ => None,
        };
        let unparsed = |algorithm: &'static dyn sig::VerificationAlgorithm, bytes: &[u8]| {
            Some(UnparsedPublicKey::new(algorithm, bytes).verify(message, signature).is_ok())
        };
        match (self, key) {
            (Self::Rs256, _) => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
            (Self::Rs384, _) => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
            (Self::Rs512, _) => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
            (Self::Ps256, _) => rsa(&sig::RSA_PSS_2048_8192_SHA256),
            (Self::Ps384, _) => rsa(&sig::RSA_PSS_2048_8192_SHA384),
            (Self::Ps512, _) => rsa(&sig::RSA_PSS_2048_8192_SHA512),
            (Self::Es256, Material::P256(point)) => unparsed(&sig::ECDSA_P256_SHA256_FIXED, point),
            (Self::Es384, Material::P384(point)) => unparsed(&sig::ECDSA_P384_SHA384_FIXED, point),
            (Self::Es512, Material::P521(point)) => unparsed(&sig::ECDSA_P521_SHA512_FIXED, point),
            (Self::EdDsa, Material::Ed25519(key)) => unparsed(&sig::ED25519, key),
            _ => None,
        }
    }
}

/// A public key's material.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed points: `04 ‖ x ‖ y`.
    P256(Vec<u8>),
    P384(Vec<u8>),
    P521(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    material: Material,
}

/// A JSON Web Key Set's signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl Jwks {
    /// Parses a key set; keys for encryption (`"use": "enc"`), of types not verified here
    /// (`oct`, other curves) or malformed are passed over, as Envoy does; a set left with no
    /// key is an error (the first malformed key's, if there was one).
    pub fn parse(text: &str) -> Result<Self, JwksError> {
        let set: Value = serde_json::from_str(text).map_err(|error| JwksError::NotJwks(error.to_string()))?;
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwksError::NotJwks("no \"keys\" array".into()))?;
        let (mut usable, mut malformed) = (Vec::new(), None);
        for (index, key) in keys.iter().enumerate() {
            match Self::key(index, key) {
                Ok(Some(key)) => usable.push(key),
                Ok(None) => {}
                Err(error) => {
                    malformed.get_or_insert(error);
                }
            }
        }
        if usable.is_empty() {
            return Err(malformed.unwrap_or(JwksError::NoUsableKey));
        }
        Ok(Self { keys: usable })
    }

    /// The set's key `index`: `None` when it is not one to verify signatures with here.
    fn key(index: usize, key: &Value) -> Result<Option<Key>, JwksError> {
        let bad = |what: &str| JwksError::BadKey { index, what: what.to_owned() };
        let text = |name: &str| key.get(name).and_then(Value::as_str);
        let bytes = |name: &'static str| {
            let value = text(name).ok_or_else(|| bad(&format!("no \"{name}\"")))?;
            BASE64URL.decode(value).map_err(|_| bad(&format!("\"{name}\" is not base64url")))
        };
        if text("use").is_some_and(|usage| usage != "sig") {
            return Ok(None);
        }
        let material = match (text("kty"), text("crv")) {
            (Some("RSA"), _) => Material::Rsa { n: bytes("n")?, e: bytes("e")? },
            (Some("EC"), Some(curve @ ("P-256" | "P-384" | "P-521"))) => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                let (size, material): (usize, fn(Vec<u8>) -> Material) = match curve {
                    "P-256" => (32, Material::P256),
                    "P-384" => (48, Material::P384),
                    _ => (66, Material::P521),
                };
                if x.len() != size || y.len() != size {
                    return Err(bad(&format!("{curve} coordinates must be {size} bytes")));
                }
                material([&[4u8][..], &x, &y].concat())
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err(bad("Ed25519 keys are 32 bytes"));
                }
                Material::Ed25519(x)
            }
            (None, _) => return Err(bad("no \"kty\"")),
            _ => return Ok(None),
        };
        Ok(Some(Key { kid: text("kid").map(str::to_owned), alg: text("alg").map(str::to_owned), material }))
    }
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct Token {
    algorithm: Algorithm,
    kid: Option<String>,
    /// `header.payload`, what was signed.
    signed: String,
    signature: Vec<u8>,
    payload: Map<String, Value>,
    /// The payload as it came (base64url), for `outputPayloadToHeader`.
    encoded_payload: String,
}

impl Token {
    /// Splits and decodes `raw`; nothing is trusted yet.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let mut parts = raw.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::BadFormat);
        };
        let object = |part: &str, error: Error| {
            let bytes = BASE64URL.decode(part).map_err(|_| error.clone())?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(object)) => Ok(object),
                _ => Err(error),
            }
        };
        let head = object(header, Error::BadHeader)?;
        let algorithm = head
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Algorithm::from_name)
            .ok_or(Error::UnsupportedAlgorithm)?;
        let kid = match head.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(Error::BadHeader),
        };
        Ok(Self {
            algorithm,
            kid,
            signed: raw[..header.len() + 1 + payload.len()].to_owned(),
            signature: BASE64URL.decode(signature).map_err(|_| Error::BadSignature)?,
            payload: object(payload, Error::BadPayload)?,
            encoded_payload: payload.to_owned(),
        })
    }

    /// Its `iss`, unverified: which rule's keys to check it with.
    pub fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(Value::as_str)
    }

    /// Checks the signature with `jwks`, then the times at `now`, then the audience against
    /// `audiences` (none: any), and gives the claims it vouches for.
    pub fn verify(&self, jwks: &Jwks, audiences: &[String], now: SystemTime) -> Result<Claims, Error> {
        let mut candidates = jwks
            .keys
            .iter()
            .filter(|key| self.kid.is_none() || key.kid.is_none() || key.kid == self.kid)
            .filter(|key| {
                key.alg.as_deref().is_none_or(|alg| Algorithm::from_name(alg) == Some(self.algorithm))
            })
            .filter_map(|key| self.algorithm.verify(&key.material, self.signed.as_bytes(), &self.signature))
            .peekable();
        if candidates.peek().is_none() {
            return Err(Error::NoMatchingKey);
        }
        if !candidates.any(|verified| verified) {
            return Err(Error::VerificationFailed);
        }
        let mut claims = Claims::new(self.payload.clone(), self.encoded_payload.clone())?;
        (claims.expires, claims.not_before) = (self.time("exp")?, self.time("nbf")?);
        claims.current(now)?;
        if !audiences.is_empty()
            && !claims.audiences.iter().any(|aud| audiences.iter().any(|allowed| same_audience(aud, allowed)))
        {
            return Err(Error::AudienceNotAllowed);
        }
        Ok(claims)
    }

    /// A NumericDate claim (seconds since the epoch, maybe fractional).
    fn time(&self, name: &'static str) -> Result<Option<Duration>, Error> {
        match self.payload.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .and_then(|seconds| Duration::try_from_secs_f64(seconds.max(0.0)).ok())
                .map(Some)
                .ok_or(Error::BadClaim(name)),
        }
    }
}

/// Envoy's comparison: the scheme and a trailing slash do not count.
fn same_audience(a: &str, b: &str) -> bool {
    let bare = |value: &'_ str| {
        let value = value.strip_prefix("https://").or_else(|| value.strip_prefix("http://")).unwrap_or(value);
        value.strip_suffix('/').unwrap_or(value).to_owned()
    };
    bare(a) == bare(b)
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// `iss` and `sub` (empty when not there): Istio's request principal is `<iss>/<sub>`.
    pub issuer: String,
    pub subject: String,
    /// `<iss>/<sub>`, for logs.
    pub principal: String,
    /// `aud`, a string or a list of them.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    payload: Map<String, Value>,
    encoded_payload: String,
    /// `exp` and `nbf`, since the epoch.
    expires: Option<Duration>,
    not_before: Option<Duration>,
}

impl Claims {
    /// Whether the token is valid at `now` (`exp` and `nbf`, with [`CLOCK_SKEW`]): checked at
    /// every use, so claims kept from an earlier verification expire with their token.
    pub fn current(&self, now: SystemTime) -> Result<(), Error> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.expires.is_some_and(|expiry| now > expiry.saturating_add(CLOCK_SKEW)) {
            return Err(Error::Expired);
        }
        if self.not_before.is_some_and(|not_before| now.saturating_add(CLOCK_SKEW) < not_before) {
            return Err(Error::NotYetValid);
        }
        Ok(())
    }

    fn new(payload: Map<String, Value>, encoded_payload: String) -> Result<Self, Error> {
        let text = |name: &'static str| match payload.get(name) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.clone())),
            Some(_) => Err(Error::BadClaim(name)),
        };
        let (issuer, subject, presenter) = (text("iss")?, text("sub")?, text("azp")?);
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(auds)) => auds
                .iter()
                .map(|aud| aud.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or(Error::BadClaim("aud"))?,
            Some(_) => return Err(Error::BadClaim("aud")),
        };
        let (issuer, subject) = (issuer.unwrap_or_default(), subject.unwrap_or_default());
        let principal = format!("{issuer}/{subject}");
        Ok(Self {
            issuer,
            subject,
            principal,
            audiences,
            presenter,
            payload,
            encoded_payload,
            expires: None,
            not_before: None,
        })
    }

    /// Reads the string claims `names` as lists of their space-separated words, as Istio has
    /// Envoy read `scope` and `permission` (OAuth scopes): `request.auth.claims[scope]` then
    /// matches one scope of `"read write"`.
    pub fn split_space_delimited<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if let Some(Value::String(text)) = self.payload.get(name) {
                let words =
                    text.split_ascii_whitespace().map(|word| Value::String(word.to_owned())).collect();
                self.payload.insert(name.to_owned(), Value::Array(words));
            }
        }
    }

    /// The strings a claim holds, found by `path` through nested objects: a string, or each
    /// string of a list; nothing for other values or a claim not there.
    pub fn strings<'a>(&'a self, path: &[impl AsRef<str>]) -> Vec<&'a str> {
        let Some(value) = self.claim(path) else { return Vec::new() };
        match value {
            Value::String(text) => vec![text.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// A claim as a header value carries it: a string as it is, a number or boolean written
    /// out; nothing for objects, lists or a claim not there (as Envoy copies claims).
    pub fn header_value(&self, path: &[impl AsRef<str>]) -> Option<String> {
        match self.claim(path)? {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            _ => None,
        }
    }

    /// The payload as it came, base64url.
    pub fn encoded_payload(&self) -> &str {
        &self.encoded_payload
    }

    fn claim(&self, path: &[impl AsRef<str>]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        rest.iter().try_fold(self.payload.get(first.as_ref())?, |value, name| value.get(name.as_ref()))
    }
}

/// Keys that sign tokens, and their key sets, for tests (the waypoint's and the e2e tests').
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use aws_lc_rs::{
        rand::SystemRandom,
        rsa::KeySize,
        signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair},
    };
    use base64::Engine;
    use serde_json::{Value, json};

    use super::BASE64URL;

    /// A new signing key of one kind, named by its `kid`.
    #[derive(Debug)]
    pub struct Signer {
        kid: String,
        key: Kind,
    }

    #[derive(Debug)]
    enum Kind {
        Rs256(RsaKeyPair),
        Es256(EcdsaKeyPair),
        Es512(EcdsaKeyPair),
        EdDsa(Ed25519KeyPair),
    }

    #[allow(clippy::unwrap_used)]
    impl Signer {
        pub fn rs256(kid: &str) -> Self {
            Self { kid: kid.into(), key: Kind::Rs256(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()) }
        }

        pub fn es256(kid: &str) -> Self {
            let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            Self { kid: kid.into(), key: Kind::Es256(key) }
        }

        pub fn es512(kid: &str) -> Self {
            let key = EcdsaKeyPair::generate(&signature::ECDSA_P521_SHA512_FIXED_SIGNING).unwrap();
            Self { kid: kid.into(), key: Kind::Es512(key) }
        }

        pub fn ed25519(kid: &str) -> Self {
            Self { kid: kid.into(), key: Kind::EdDsa(Ed25519KeyPair::generate().unwrap()) }
        }

        /// Its public key as a JWK.
        pub fn jwk(&self) -> Value {
            let b64 = |bytes: &[u8]| BASE64URL.encode(bytes);
            match &self.key {
                Kind::Rs256(key) => {
                    let public = key.public_key();
                    json!({ "kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
                            "n": b64(public.modulus().big_endian_without_leading_zero()),
                            "e": b64(public.exponent().big_endian_without_leading_zero()) })
                }
                Kind::Es256(key) | Kind::Es512(key) => {
                    let point = key.public_key().as_ref();
                    let (curve, size) =
                        if matches!(self.key, Kind::Es256(_)) { ("P-256", 32) } else { ("P-521", 66) };
                    json!({ "kty": "EC", "crv": curve, "kid": self.kid,
                            "x": b64(&point[1..=size]), "y": b64(&point[size + 1..]) })
                }
                Kind::EdDsa(key) => {
                    json!({ "kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64(key.public_key().as_ref()) })
                }
            }
        }

        /// A token of `claims`, signed.
        pub fn token(&self, claims: &Value) -> String {
            let alg = match self.key {
                Kind::Rs256(_) => "RS256",
                Kind::Es256(_) => "ES256",
                Kind::Es512(_) => "ES512",
                Kind::EdDsa(_) => "EdDSA",
            };
            let header = json!({ "alg": alg, "kid": self.kid, "typ": "JWT" });
            let signed =
                format!("{}.{}", BASE64URL.encode(header.to_string()), BASE64URL.encode(claims.to_string()));
            let rng = SystemRandom::new();
            let signature = match &self.key {
                Kind::Rs256(key) => {
                    let mut signature = vec![0; key.public_modulus_len()];
                    key.sign(&signature::RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut signature).unwrap();
                    signature
                }
                Kind::Es256(key) | Kind::Es512(key) => {
                    key.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec()
                }
                Kind::EdDsa(key) => key.sign(signed.as_bytes()).as_ref().to_vec(),
            };
            format!("{signed}.{}", BASE64URL.encode(signature))
        }
    }

    /// The key set of `signers`, as text.
    pub fn jwks(signers: &[&Signer]) -> String {
        json!({ "keys": signers.iter().map(|signer| signer.jwk()).collect::<Vec<_>>() }).to_string()
    }
}
