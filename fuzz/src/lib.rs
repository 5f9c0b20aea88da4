//! What the fuzz targets share: inputs written as a request head, one field a line, so that
//! seeds can be written by hand, and an input that carries a request beside a resource.

/// `data` as text lines: the first, and the rest as `name: value` header lines (a line
/// without a colon is a name with an empty value). `None` when `data` is not UTF-8.
pub fn head(data: &[u8]) -> Option<(&str, Vec<(&str, &str)>)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let headers = lines
        .map(|line| match line.split_once(':') {
            Some((name, value)) => (name, value.trim_start()),
            None => (line, ""),
        })
        .collect();
    Some((first, headers))
}

/// `headers` as an HTTP header map, leaving out the names and values HTTP cannot carry (a
/// peer's HTTP/2 or HTTP/1 parser refuses them before Weft sees them).
pub fn header_map(headers: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// A request as a client sends it to a waypoint.
#[derive(Debug)]
pub struct Request {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
}

/// `data` as a request and a resource: a byte giving the request's length, the request (its
/// first line `METHOD TARGET`, then a `name: value` line a header), the resource's protobuf
/// encoding. `None` when the request is none HTTP could carry.
pub fn request_and_resource(data: &[u8]) -> Option<(Request, &[u8])> {
    let (&length, rest) = data.split_first()?;
    let (request, resource) = rest.split_at_checked(usize::from(length))?;
    let (first, headers) = head(request)?;
    let (method, target) = first.split_once(' ')?;
    let request = Request {
        method: http::Method::from_bytes(method.as_bytes()).ok()?,
        uri: http::Uri::try_from(target).ok()?,
        headers: header_map(&headers),
    };
    Some((request, resource))
}
