use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use weft_api::route as api;
use weft_api::route::path_modifier::Kind;

use super::{PathModifier, Redirect, Rewrite};

fn modifier(kind: Kind, value: &str) -> Option<api::PathModifier> {
    Some(api::PathModifier { kind: kind.into(), value: value.into() })
}

fn redirect(
    scheme: &str,
    hostname: &str,
    path: Option<api::PathModifier>,
    port: u32,
    status: u32,
) -> Redirect {
    Redirect::compile(&api::Redirect {
        scheme: scheme.into(),
        hostname: hostname.into(),
        path,
        port,
        status_code: status,
    })
    .unwrap()
}

#[test]
fn a_prefix_is_replaced_by_whole_segments_and_an_empty_result_is_the_root() {
    let new = PathModifier::Prefix("/new".into());
    assert_eq!(new.apply("/old/page", "/old"), "/new/page");
    assert_eq!(new.apply("/old", "/old"), "/new");
    assert_eq!(new.apply("/old/", "/old"), "/new/");
    let root = PathModifier::Prefix(String::new());
    assert_eq!(root.apply("/old/page", "/old"), "/page");
    assert_eq!(root.apply("/old", "/old"), "/");
    assert_eq!(new.apply("/page", ""), "/new/page", "a route matching / replaces nothing but adds");
    assert_eq!(PathModifier::Full("/x".into()).apply("/old/page", "/old"), "/x");
}

#[test]
fn a_redirect_keeps_what_it_does_not_replace_and_leaves_well_known_ports_out() {
    let uri: Uri = "/old/page?q=1".parse().unwrap();
    let plain = redirect("", "", None, 0, 0);
    assert_eq!(plain.status(), StatusCode::FOUND, "302 by default");
    assert_eq!(plain.location(&uri, "web.shop:8080", 8080, ""), "http://web.shop:8080/old/page?q=1");
    assert_eq!(plain.location(&uri, "web.shop", 80, ""), "http://web.shop/old/page?q=1");
    assert_eq!(plain.location(&uri, "[fd00::1]:80", 80, ""), "http://[fd00::1]/old/page?q=1");
    let https = redirect("https", "shop.example.com", modifier(Kind::Prefix, "/new/"), 0, 301);
    assert_eq!(https.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(https.location(&uri, "web.shop:8080", 8080, "/old"), "https://shop.example.com/new/page?q=1");
    let port = redirect("", "", modifier(Kind::Full, "/"), 8443, 308);
    assert_eq!(port.location(&uri, "web.shop", 80, "/old"), "http://web.shop:8443/?q=1");
}

#[test]
fn what_no_redirect_or_rewrite_can_carry_is_refused_when_compiled() {
    let bad = |redirect: api::Redirect| Redirect::compile(&redirect).is_err();
    assert!(bad(api::Redirect { status_code: 200, ..Default::default() }));
    assert!(bad(api::Redirect { scheme: "ftp".into(), ..Default::default() }));
    assert!(bad(api::Redirect { hostname: "a b".into(), ..Default::default() }));
    assert!(
        bad(api::Redirect { hostname: "web:80".into(), ..Default::default() }),
        "a port of its own field"
    );
    assert!(bad(api::Redirect { port: 70_000, ..Default::default() }));
    assert!(bad(api::Redirect { path: modifier(Kind::Full, "relative"), ..Default::default() }));
    assert!(bad(api::Redirect { path: modifier(Kind::Full, "/a?b=c"), ..Default::default() }));
    assert!(bad(api::Redirect { path: modifier(Kind::Full, "/a\r\nx: y"), ..Default::default() }));
    assert!(Rewrite::compile(&api::Rewrite { hostname: "a\nb".into(), path: None }).is_err());
}

#[test]
fn a_rewrite_changes_the_path_keeping_the_query_and_the_host_where_the_request_has_one() {
    let rewrite = Rewrite::compile(&api::Rewrite {
        hostname: "web.internal".into(),
        path: modifier(Kind::Prefix, "/v2"),
    })
    .unwrap();
    // HTTP/1: origin form and a Host header.
    let (mut uri, mut headers): (Uri, HeaderMap) = ("/api/items?id=7".parse().unwrap(), HeaderMap::new());
    headers.insert(header::HOST, HeaderValue::from_static("web.shop:80"));
    rewrite.apply(&mut uri, &mut headers, "/api");
    assert_eq!(uri, "/v2/items?id=7");
    assert_eq!(headers[header::HOST], "web.internal");
    // HTTP/2: the authority is the URI's; no Host header is added.
    let (mut uri, mut headers): (Uri, HeaderMap) = ("http://web.shop/api".parse().unwrap(), HeaderMap::new());
    rewrite.apply(&mut uri, &mut headers, "/api");
    assert_eq!(uri, "http://web.internal/v2");
    assert!(headers.is_empty());
    // A rewrite of the host alone leaves the path be.
    let host_only = Rewrite::compile(&api::Rewrite { hostname: "other".into(), path: None }).unwrap();
    let mut uri: Uri = "/keep?x".parse().unwrap();
    host_only.apply(&mut uri, &mut HeaderMap::new(), "");
    assert_eq!(uri, "/keep?x");
}
