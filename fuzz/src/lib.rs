//! What the fuzz targets share: reading an input written as a request head, one field a line,
//! so that seeds can be written by hand.

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
