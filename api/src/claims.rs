//! The JWT claim an AuthorizationPolicy condition `request.auth.claims[a][b]…` reads, one
//! reading for both sides: the control plane sends waypoints only the conditions they check,
//! and the waypoint checks them.

/// The claim names `key` reads, outermost first: `request.auth.claims[org][team]` reads `team`
/// inside `org`. `None` unless it is such a key, every name bracketed and not empty.
pub fn claim_path(key: &str) -> Option<Vec<&str>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.strip_prefix('[')?.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name);
        rest = after;
    }
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::claim_path;

    #[test]
    fn a_claim_key_names_each_claim_in_brackets_and_nothing_else_is_one() {
        assert_eq!(claim_path("request.auth.claims[groups]"), Some(vec!["groups"]));
        assert_eq!(claim_path("request.auth.claims[org][team]"), Some(vec!["org", "team"]));
        assert_eq!(claim_path("request.auth.claims[a.b]"), Some(vec!["a.b"]));
        for not_one in [
            "request.auth.claims",
            "request.auth.claims[]",
            "request.auth.claims[org][]",
            "request.auth.claims[org",
            "request.auth.claims[a[b]]",
            "request.auth.claims[org]x",
            "request.auth.claimsx[org]",
            "request.auth.principal",
        ] {
            assert_eq!(claim_path(not_one), None, "{not_one}");
        }
    }
}
