//! The Gateway API's `RequestRedirect` and `URLRewrite` filters: where a redirect sends the
//! client, and what a rewrite changes of a request before it goes on. Pure: the caller hands in
//! the request's parts and the path prefix its route matched.

use http::{HeaderMap, HeaderValue, StatusCode, Uri, header, uri::PathAndQuery};
use weft_api::route as api;
use weft_api::route::path_modifier::Kind;

#[cfg(test)]
mod tests;

/// Why a redirect or rewrite cannot be applied (the control plane sends none of these).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("scheme {0:?} is neither http nor https")]
    Scheme(String),
    #[error("status {0} is no redirect")]
    Status(u32),
    #[error("hostname {0:?} is no host")]
    Hostname(String),
    #[error("path {0:?} is no absolute path")]
    Path(String),
    #[error("port {0} is out of range")]
    Port(u32),
    #[error("unknown path modifier kind {0}")]
    Kind(i32),
}

/// A path's replacement: the whole of it, or the prefix the route matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    /// Stored without its trailing '/', as route prefixes are.
    Prefix(String),
}

/// Answers the request with a redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `None`: the request's (`http`: a waypoint receives plaintext HTTP inside its tunnel).
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifier>,
    port: Option<u16>,
    status: StatusCode,
}

/// Changes the request's host or path before it goes on.
#[derive(Debug, Clone)]
pub struct Rewrite {
    hostname: Option<HeaderValue>,
    path: Option<PathModifier>,
}

impl PathModifier {
    fn compile(modifier: &api::PathModifier) -> Result<Self, Error> {
        let value = &modifier.value;
        let valid = value.starts_with('/')
            && value.parse::<PathAndQuery>().is_ok_and(|parsed| parsed.query().is_none());
        if !valid || value.contains('#') {
            return Err(Error::Path(value.clone()));
        }
        match Kind::try_from(modifier.kind).map_err(|_| Error::Kind(modifier.kind))? {
            Kind::Full => Ok(Self::Full(value.clone())),
            Kind::Prefix => Ok(Self::Prefix(value.trim_end_matches('/').to_owned())),
        }
    }

    /// `path` with the replacement made; `matched` is the prefix the route matched (stored
    /// without its trailing '/'; empty for `/`, or when the route matched no prefix). By whole
    /// segments: `/old` replaced by `/new` turns `/old/page` into `/new/page`, and replaced by
    /// `/` turns it into `/page`.
    pub fn apply(&self, path: &str, matched: &str) -> String {
        match self {
            Self::Full(value) => value.clone(),
            Self::Prefix(value) => {
                let rest = path.strip_prefix(matched).unwrap_or(path);
                let replaced = format!("{value}{rest}");
                if replaced.is_empty() { "/".to_owned() } else { replaced }
            }
        }
    }
}

fn optional_path(path: Option<&api::PathModifier>) -> Result<Option<PathModifier>, Error> {
    path.map(PathModifier::compile).transpose()
}

/// A host name or address as `Host` may carry it, or nothing.
fn optional_host(hostname: &str) -> Result<Option<String>, Error> {
    if hostname.is_empty() {
        return Ok(None);
    }
    match hostname.parse::<http::uri::Authority>() {
        Ok(authority) if authority.port().is_none() => Ok(Some(hostname.to_owned())),
        _ => Err(Error::Hostname(hostname.to_owned())),
    }
}

impl Redirect {
    pub fn compile(redirect: &api::Redirect) -> Result<Self, Error> {
        let scheme = match redirect.scheme.as_str() {
            "" => None,
            "http" | "https" => Some(redirect.scheme.clone()),
            other => return Err(Error::Scheme(other.to_owned())),
        };
        let status = match redirect.status_code {
            0 => StatusCode::FOUND,
            code @ (301 | 302 | 303 | 307 | 308) => {
                StatusCode::from_u16(code as u16).map_err(|_| Error::Status(code))?
            }
            code => return Err(Error::Status(code)),
        };
        let port = match redirect.port {
            0 => None,
            port => Some(u16::try_from(port).map_err(|_| Error::Port(port))?),
        };
        Ok(Self {
            scheme,
            hostname: optional_host(&redirect.hostname)?,
            path: optional_path(redirect.path.as_ref())?,
            port,
            status,
        })
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Location` for a request with `uri` to `host` (its `Host`, port and all) that came
    /// to Service port `port`, its route having matched `matched`. The port is the redirect's,
    /// else the scheme's well-known one when the redirect names a scheme, else the one the
    /// request came to; a scheme's well-known port is left out, as the Gateway API asks.
    pub fn location(&self, uri: &Uri, host: &str, port: u16, matched: &str) -> String {
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let well_known = if scheme == "https" { 443 } else { 80 };
        let port = self.port.unwrap_or(if self.scheme.is_some() { well_known } else { port });
        let host = match &self.hostname {
            Some(hostname) => hostname.as_str(),
            None => {
                host.parse::<http::uri::Authority>().map_or(host, |authority| strip_port(host, &authority))
            }
        };
        let path = match &self.path {
            Some(modifier) => modifier.apply(uri.path(), matched),
            None => uri.path().to_owned(),
        };
        let query = uri.query().map(|query| format!("?{query}")).unwrap_or_default();
        let port = if port == well_known { String::new() } else { format!(":{port}") };
        format!("{scheme}://{host}{port}{path}{query}")
    }
}

/// `host` without its port (an IPv6 address keeps its brackets).
fn strip_port<'h>(host: &'h str, authority: &http::uri::Authority) -> &'h str {
    match authority.port() {
        Some(port) => &host[..host.len() - port.as_str().len() - 1],
        None => host,
    }
}

impl Rewrite {
    pub fn compile(rewrite: &api::Rewrite) -> Result<Self, Error> {
        let hostname = optional_host(&rewrite.hostname)?
            .map(|host| HeaderValue::from_str(&host).map_err(|_| Error::Hostname(host)))
            .transpose()?;
        Ok(Self { hostname, path: optional_path(rewrite.path.as_ref())? })
    }

    /// Rewrites a request's target `uri` and its `headers`' `Host`; `matched` is the prefix its
    /// route matched. HTTP/2's `:authority` is the URI's, HTTP/1's the `Host` header: both
    /// change, where present.
    pub fn apply(&self, uri: &mut Uri, headers: &mut HeaderMap, matched: &str) {
        let original = uri.clone();
        let mut parts = std::mem::take(uri).into_parts();
        if let Some(modifier) = &self.path {
            let current = parts.path_and_query.as_ref().map_or("/", PathAndQuery::path);
            let path = modifier.apply(current, matched);
            let query = parts.path_and_query.as_ref().and_then(PathAndQuery::query);
            let target = match query {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            // Made of a checked replacement and what was already a valid target.
            parts.path_and_query = target.parse().ok().or(parts.path_and_query);
        }
        if let Some(hostname) = &self.hostname {
            if parts.authority.is_some() {
                parts.authority =
                    hostname.to_str().ok().and_then(|host| host.parse().ok()).or(parts.authority);
            }
            if headers.contains_key(header::HOST) {
                headers.insert(header::HOST, hostname.clone());
            }
        }
        // Parts of the shapes they had: it cannot fail, but if it did the target stays as it was.
        *uri = Uri::from_parts(parts).unwrap_or(original);
    }
}
