//! A request's target made canonical before anything decides on it, as Envoy does for Istio's
//! waypoint (`normalizePath: BASE`): authorization, routing and the backend then all read the
//! same path, so `/public/../admin` or `/%61dmin` cannot slip past a policy on `/admin`.
//! Percent-encoded unreserved characters are decoded, dot segments removed (RFC 3986 §5.2.4);
//! an encoded `/` or `\` is refused (a backend might decode it into a separator). A request
//! naming two hosts (several `Host` headers, or one that disagrees with an absolute URI) is
//! refused too: the backend could read the other.
use http::{HeaderMap, Uri, header, uri::PathAndQuery};

/// Why a request target is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the path encodes a separator (%2F or %5C)")]
    EncodedSeparator,
    #[error("the path holds a malformed percent-encoding")]
    BadEncoding,
    #[error("the request names more than one host")]
    AmbiguousHost,
    #[error("the normalized target is no URI")]
    Unparsable,
}

/// The canonical form of `path`.
pub fn path(path: &str) -> Result<String, Error> {
    let decoded = decode_unreserved(path)?;
    Ok(remove_dot_segments(&decoded))
}

/// Rewrites `uri`'s path to its canonical form (the query is kept as it is), and checks that
/// `headers` name at most one host, the URI's own when it has one.
pub fn target(uri: &mut Uri, headers: &HeaderMap) -> Result<(), Error> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Error::AmbiguousHost);
    }
    if let (Some(authority), Some(host)) = (uri.authority(), host)
        && !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(Error::AmbiguousHost);
    }
    let canonical = path(uri.path())?;
    if canonical == uri.path() {
        return Ok(());
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{canonical}?{query}"),
        None => canonical,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse::<PathAndQuery>().map_err(|_| Error::Unparsable)?);
    *uri = Uri::from_parts(parts).map_err(|_| Error::Unparsable)?;
    Ok(())
}

/// Decodes `%XX` of unreserved characters (letters, digits, `-._~`); keeps other encodings as
/// they are, upper-cased, and percent-encodes raw non-ASCII bytes (as Envoy's canonical path does),
/// so that `/café` and `/caf%C3%A9` are one path; refuses encoded separators and malformed
/// escapes.
fn decode_unreserved(path: &str) -> Result<String, Error> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut index = 0;
    while index < bytes.len() {
        if !bytes[index].is_ascii() {
            out.push_str(&format!("%{:02X}", bytes[index]));
            index += 1;
            continue;
        }
        if bytes[index] != b'%' {
            out.push(char::from(bytes[index]));
            index += 1;
            continue;
        }
        let hex = bytes.get(index + 1..index + 3).ok_or(Error::BadEncoding)?;
        // Two hex digits exactly: `from_str_radix` alone takes `%+2` as `%02`.
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(Error::BadEncoding);
        }
        let text = std::str::from_utf8(hex).map_err(|_| Error::BadEncoding)?;
        let value = u8::from_str_radix(text, 16).map_err(|_| Error::BadEncoding)?;
        match value {
            b'/' | b'\\' => return Err(Error::EncodedSeparator),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(value))
            }
            _ => out.push_str(&format!("%{value:02X}")),
        }
        index += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the one before (never
/// above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        let last = index + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." && output.len() > 1 {
                    output.pop();
                }
                // A trailing dot segment names the directory: keep its slash.
                if last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    let joined = output.join("/");
    if joined.starts_with('/') { joined } else { format!("/{joined}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_canonical_and_encoded_separators_are_refused() {
        for (raw, canonical) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/./admin/./x", "/admin/x"),
            ("/a/b/../../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a/%2e%2e/admin", "/admin"),
            ("/docs/", "/docs/"),
            ("/docs/.", "/docs/"),
            ("/a/b/..", "/a/"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/caf\u{e9}", "/caf%C3%A9"),
        ] {
            assert_eq!(path(raw).as_deref(), Ok(canonical), "{raw}");
        }
        assert_eq!(path("/admin%2fusers"), Err(Error::EncodedSeparator));
        assert_eq!(path("/admin%5Cusers"), Err(Error::EncodedSeparator));
        assert_eq!(path("/bad%zz"), Err(Error::BadEncoding));
        assert_eq!(path("/cut%4"), Err(Error::BadEncoding));
        assert_eq!(path("/signed%+2e"), Err(Error::BadEncoding), "a sign is no hex digit");
    }

    /// Found by the `waypoint_request` fuzz target: a raw non-ASCII byte was pushed as the
    /// character of that code point, so the path sent on (and matched by policies) had other
    /// bytes than the client's, and a second pass changed it again.
    #[test]
    fn a_raw_non_ascii_path_is_encoded_once_and_the_canonical_form_is_a_fixed_point() {
        let mut uri = Uri::from_maybe_shared(&b"/%2e%2e/ae%2e/a/ah\xd1\xa2"[..]).unwrap();
        target(&mut uri, &HeaderMap::new()).unwrap();
        assert_eq!(uri.path(), "/ae./a/ah%D1%A2");
        let canonical = uri.clone();
        target(&mut uri, &HeaderMap::new()).unwrap();
        assert_eq!(uri, canonical);
    }

    #[test]
    fn the_target_is_rewritten_with_its_query_and_two_hosts_are_refused() {
        let mut uri: Uri = "/public/../admin?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "echo".parse().unwrap());
        target(&mut uri, &headers).unwrap();
        assert_eq!(uri.to_string(), "/admin?x=1");
        headers.append(header::HOST, "other".parse().unwrap());
        assert_eq!(target(&mut uri, &headers), Err(Error::AmbiguousHost));
        let mut absolute: Uri = "http://echo/x".parse().unwrap();
        let mut one = HeaderMap::new();
        one.insert(header::HOST, "elsewhere".parse().unwrap());
        assert_eq!(target(&mut absolute, &one), Err(Error::AmbiguousHost));
        one.insert(header::HOST, "ECHO".parse().unwrap());
        target(&mut absolute, &one).unwrap();
    }
}
