//! HTTPRoutes, and GRPCRoutes and TCPRoutes read as the HTTPRoutes they amount to
//! ([`super::gateway_api::grpc`], [`super::gateway_api::tcp`]), attached to Services (GAMMA: a parentRef of `group: ""`,
//! `kind: Service`) to
//! `weft.route.ServiceRoutes` resources: one per Service, named like its Address resource
//! (`<namespace>/<hostname>`), holding every route attached to it, oldest first (then by
//! `namespace/name`), as the Gateway API breaks ties. Routes attached to Gateways are not the
//! mesh's and are left alone.
//!
//! A Service behind a waypoint whose ports declare their protocol (`appProtocol`, or the port's
//! name, as Istio reads them) gets them in its resource too ([`declared_protocol`]).
//!
//! What a waypoint cannot apply is left out and noted: a filter other than the header
//! modifiers, redirects, rewrites and mirrors is ignored (on a backendRef, other than the
//! header modifiers, which apply after the rule's when that backend is picked); a rule holding a match of a type unknown here is dropped (matching
//! more would be worse); a backend that is no Service, is missing, or is in another namespace
//! (that needs a ReferenceGrant, not read yet) stays as an unusable one (no Service), so the
//! share its weight draws is answered 500 (connections refused), as the Gateway API asks; a
//! rule without backends answers 500. A route in another namespace than its Service (a consumer
//! route, GEP-1426) applies to that namespace's clients only: it goes into the Service's
//! `consumer_routes` with its namespace, and waypoints match a request from there against that
//! namespace's consumer routes instead of the Service's own (applied to all, any namespace could
//! take over another's Service); a consumer route of that one parent may name it as a backend
//! without a ReferenceGrant.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use k8s_openapi::api::core::v1::Service;
use prost::Message;
use weft_api::route::{self as api, ROUTES_TYPE};

use super::{
    Naming, ParentStatus, Resources, RouteKind, RouteStatus, Verdict, encode_as,
    gateway_api::{
        HeaderModifier, HttpBackendRef, HttpHeader, HttpPathModifier, HttpRequestMirror, HttpRequestRedirect,
        HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteRetry, HttpRouteRule, HttpUrlRewrite,
        HttpValueMatch, PathMatchType, ValueMatchType, duration,
    },
    hostname,
    waypoint::USE_WAYPOINT,
};

/// The routes, compiled per Service (by `namespace/hostname`, encoded by the caller once the
/// traffic policies are in), and what was made of each HTTPRoute attached to one.
pub fn compile<'a>(
    naming: &Naming,
    services: &HashMap<(&str, &str), &Service>,
    with_waypoint: &HashSet<(&str, &str)>,
    routes: impl IntoIterator<Item = (RouteKind, &'a HttpRoute)>,
) -> (BTreeMap<String, api::ServiceRoutes>, Vec<RouteStatus>) {
    let mut routes: Vec<(RouteKind, &HttpRoute, &str, &str)> = routes
        .into_iter()
        .filter_map(|(kind, route)| {
            Some((kind, route, route.metadata.namespace.as_deref()?, route.metadata.name.as_deref()?))
        })
        .collect();
    let created = |route: &HttpRoute| route.metadata.creation_timestamp.as_ref().map(|time| time.0);
    routes.sort_by(|(a_kind, a, a_namespace, a_name), (b_kind, b, b_namespace, b_name)| {
        (created(a), a_namespace, a_name, a_kind).cmp(&(created(b), b_namespace, b_name, b_kind))
    });
    // Per Service: its HTTP routes (HTTPRoutes and GRPCRoutes), its TCPRoutes, its declared ports.
    let mut by_service: BTreeMap<String, api::ServiceRoutes> = BTreeMap::new();
    let mut statuses = Vec::new();
    for (kind, route, namespace, name) in routes {
        let mut notes = Vec::new();
        let mut accepted = Vec::new();
        let parents =
            parents(naming, services, with_waypoint, (kind, route, namespace), &mut notes, &mut accepted);
        if accepted.is_empty() {
            // Attached to Gateways only: not the mesh's.
            continue;
        }
        // A consumer route may send its namespace's requests on to the Service they were for,
        // without a ReferenceGrant — only a route of that one parent: its rules are shared by
        // all its parents, and another parent's requests must not go there.
        let service_parents: Vec<(&str, &str)> = route
            .spec
            .parent_refs
            .iter()
            .filter(|parent| parent.group.is_empty() && parent.kind == "Service")
            .map(|parent| (parent.namespace.as_deref().unwrap_or(namespace), parent.name.as_str()))
            .collect();
        let target = match service_parents[..] {
            [only] if only.0 != namespace && parents.values().any(|attached| attached.consumer) => Some(only),
            _ => None,
        };
        let context = Context { naming, services, namespace, kind, target };
        let mut unresolved = Vec::new();
        let mut left_out = Vec::new();
        let rules: Vec<api::Rule> = route
            .spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| {
                let at = format!("rules[{index}]");
                let noted = notes.len();
                let converted = context.rule(rule, &at, &mut notes, &mut unresolved);
                if converted.is_none() {
                    left_out.extend(notes[noted..].iter().cloned());
                }
                converted
            })
            .collect();
        let resolved_refs = match unresolved.first() {
            None => Verdict::yes("ResolvedRefs", "every backend resolved"),
            Some((reason, _)) => {
                let messages: Vec<&str> = unresolved.iter().map(|(_, message)| message.as_str()).collect();
                Verdict::no(reason, messages.join("; "))
            }
        };
        for (key, Attached { ports, consumer }) in &parents {
            let route = api::Route {
                name: match kind {
                    RouteKind::Http => format!("{namespace}/{name}"),
                    RouteKind::Grpc => format!("GRPCRoute:{namespace}/{name}"),
                    RouteKind::Tcp => format!("TCPRoute:{namespace}/{name}"),
                },
                ports: ports.clone(),
                rules: rules.clone(),
                // Filled in with the traffic policies once they are attached.
                policies: None,
                consumer_namespace: if *consumer { namespace.to_owned() } else { String::new() },
            };
            let compiled = by_service
                .entry(key.clone())
                .or_insert_with(|| api::ServiceRoutes { service: key.clone(), ..Default::default() });
            match (kind, consumer) {
                (RouteKind::Tcp, _) => &mut compiled.tcp_routes,
                (_, true) => &mut compiled.consumer_routes,
                (_, false) => &mut compiled.routes,
            }
            .push(route);
        }
        statuses.push(RouteStatus {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            generation: route.metadata.generation,
            services: parents.into_keys().collect(),
            notes,
            parents: accepted,
            resolved_refs,
            partially_invalid: (!left_out.is_empty()).then(|| left_out.join("; ")),
        });
    }
    yield_to_http(naming, services, &mut by_service, &mut statuses);
    for ((namespace, name), service) in services.iter().filter(|(key, _)| with_waypoint.contains(*key)) {
        let ports = service.spec.iter().flat_map(|spec| spec.ports.iter().flatten());
        let declared: Vec<api::DeclaredPort> = ports
            .filter_map(|port| {
                let protocol =
                    declared_protocol(port.app_protocol.as_deref(), port.name.as_deref(), port.port)?;
                Some(api::DeclaredPort { port: u32::try_from(port.port).ok()?, protocol: protocol.into() })
            })
            .collect();
        if !declared.is_empty() {
            let key = format!("{namespace}/{}", hostname(naming, name, namespace));
            by_service
                .entry(key.clone())
                .or_insert_with(|| api::ServiceRoutes { service: key, ..Default::default() })
                .declared_ports = declared;
        }
    }
    statuses.sort_by(|a, b| (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind)));
    (by_service, statuses)
}

/// The `ServiceRoutes` resources, encoded.
pub fn encode(by_service: BTreeMap<String, api::ServiceRoutes>) -> Resources {
    by_service.into_iter().map(|(key, body)| (key, encode_as(ROUTES_TYPE, body.encode_to_vec()))).collect()
}

/// A Service port's protocol as Istio reads it: its `appProtocol`, else its name (`<protocol>`
/// or `<protocol>-<suffix>`), else, for the well-known ports of server-first protocols (SMTP's
/// 25, MySQL's 3306, MongoDB's 27017), TCP; `None` when it declares nothing the waypoint tells
/// apart (it then tells the protocol from the first bytes).
fn declared_protocol(
    app_protocol: Option<&str>,
    name: Option<&str>,
    port: i32,
) -> Option<api::declared_port::Protocol> {
    use api::declared_port::Protocol;
    // One table for both: the `kubernetes.io/…` values only an appProtocol can hold (a port's
    // name has no `/`).
    let by_word = |word: &str| match word {
        "http" | "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c" => Some(Protocol::Http),
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "kubernetes.io/wss" => Some(Protocol::Tcp),
        _ => None,
    };
    let declared = match (app_protocol, name) {
        (Some(app_protocol), _) => by_word(&app_protocol.to_ascii_lowercase()),
        (None, Some(name)) => {
            let name = name.to_ascii_lowercase();
            // `grpc-web` is a protocol of its own before it is `grpc` with a suffix.
            by_word(&name).or_else(|| by_word(name.split('-').next().unwrap_or_default()))
        }
        (None, None) => None,
    };
    declared.or(match port {
        25 | 3306 | 27017 => Some(Protocol::Tcp),
        _ => None,
    })
}

/// Where HTTP routes (HTTPRoutes, GRPCRoutes) and TCPRoutes bind the same Service port, the
/// HTTP ones apply, as GEP-1294 ranks route types (GRPCRoute, HTTPRoute, then TCPRoute): a
/// TCPRoute keeps only the Service's ports no HTTP route covers. One left with none is
/// `Accepted: False`, reason `Conflicted`, for that Service; one that lost some ports says which
/// in its notes.
fn yield_to_http(
    naming: &Naming,
    services: &HashMap<(&str, &str), &Service>,
    by_service: &mut BTreeMap<String, api::ServiceRoutes>,
    statuses: &mut [RouteStatus],
) {
    for ((namespace, name), service) in services {
        let key = format!("{namespace}/{}", hostname(naming, name, namespace));
        let Some(api::ServiceRoutes { routes: http, tcp_routes: tcp, .. }) = by_service.get_mut(&key) else {
            continue;
        };
        if http.is_empty() || tcp.is_empty() {
            continue;
        }
        let routed =
            |port: u32| http.iter().any(|route| route.ports.is_empty() || route.ports.contains(&port));
        let service_ports: Vec<u32> = service
            .spec
            .iter()
            .flat_map(|spec| spec.ports.iter().flatten())
            .filter_map(|port| u32::try_from(port.port).ok())
            .collect();
        tcp.retain_mut(|route| {
            let bound = if route.ports.is_empty() { service_ports.clone() } else { route.ports.clone() };
            let (lost, kept): (Vec<u32>, Vec<u32>) = bound.into_iter().partition(|port| routed(*port));
            if lost.is_empty() {
                return true;
            }
            let status = route.name.strip_prefix("TCPRoute:").and_then(|named| named.split_once('/')).and_then(
                |(route_namespace, route_name)| {
                    statuses.iter_mut().find(|status| {
                        status.kind == RouteKind::Tcp && status.namespace == route_namespace && status.name == route_name
                    })
                },
            );
            let message = format!(
                "Service {namespace}/{name} port(s) {lost:?} are routed by an HTTPRoute or GRPCRoute, which take precedence over a TCPRoute (GEP-1294)"
            );
            if let Some(status) = status {
                if kept.is_empty() {
                    for parent in status.parents.iter_mut().filter(|parent| parent.parent_ref.name == **name) {
                        parent.accepted = Verdict::no("Conflicted", format!("{message}: not applied"));
                    }
                    status.services.retain(|applied| *applied != key);
                }
                status.notes.push(if kept.is_empty() {
                    format!("{message}: not applied")
                } else {
                    format!("{message}: applied to port(s) {kept:?} only")
                });
            }
            route.ports = kept.clone();
            !kept.is_empty()
        });
    }
}

/// A Service a route attaches to.
struct Attached {
    /// The ports it applies to; empty: every port.
    ports: Vec<u32>,
    /// A consumer route (GEP-1426): the route is in another namespace than the Service, and
    /// applies to requests from its own namespace only.
    consumer: bool,
}

/// The Services `route` (of `kind`, in `namespace`) attaches to, by resource key; each Service
/// parent's `Accepted` goes into `accepted`.
fn parents(
    naming: &Naming,
    services: &HashMap<(&str, &str), &Service>,
    with_waypoint: &HashSet<(&str, &str)>,
    (kind, route, namespace): (RouteKind, &HttpRoute, &str),
    notes: &mut Vec<String>,
    accepted: &mut Vec<ParentStatus>,
) -> BTreeMap<String, Attached> {
    // None: every port.
    let mut parents: BTreeMap<String, (Option<BTreeSet<u32>>, bool)> = BTreeMap::new();
    for parent in &route.spec.parent_refs {
        if !parent.group.is_empty() || parent.kind != "Service" {
            continue;
        }
        let parent_namespace = parent.namespace.as_deref().unwrap_or(namespace);
        let at = format!("parentRef Service {parent_namespace}/{}", parent.name);
        let mut verdict = |verdict: Verdict| {
            accepted.push(ParentStatus { parent_ref: parent.clone(), accepted: verdict });
        };
        let consumer = parent_namespace != namespace;
        if consumer && kind == RouteKind::Tcp {
            let note = format!(
                "{at}: a TCPRoute in another namespace than its Service (a consumer route) is not supported: not applied"
            );
            verdict(Verdict::no("UnsupportedValue", note.clone()));
            notes.push(note);
            continue;
        }
        let Some(service) = services.get(&(parent_namespace, parent.name.as_str())) else {
            let note = format!("{at} not found: not applied to it");
            verdict(Verdict::no("NoMatchingParent", note.clone()));
            notes.push(note);
            continue;
        };
        let port = match (parent.port, parent.section_name.as_deref()) {
            (None, None) => None,
            (port, section) => {
                let found = service
                    .spec
                    .iter()
                    .flat_map(|spec| spec.ports.iter().flatten())
                    .filter(|candidate| port.is_none_or(|port| i64::from(port) == i64::from(candidate.port)))
                    .find(|candidate| {
                        section.is_none_or(|section| candidate.name.as_deref() == Some(section))
                    });
                match found.and_then(|found| u32::try_from(found.port).ok()) {
                    Some(port) => Some(port),
                    None => {
                        let wanted = match (port, section) {
                            (Some(port), Some(section)) => format!("{port} named {section}"),
                            (Some(port), None) => port.to_string(),
                            (None, section) => format!("named {}", section.unwrap_or_default()),
                        };
                        let note = format!("{at} has no port {wanted}: not applied to it");
                        verdict(Verdict::no("NoMatchingParent", note.clone()));
                        notes.push(note);
                        continue;
                    }
                }
            }
        };
        let key = format!("{parent_namespace}/{}", hostname(naming, &parent.name, parent_namespace));
        if with_waypoint.contains(&(parent_namespace, parent.name.as_str())) {
            let whose = if consumer {
                format!(" to requests from namespace {namespace} (a consumer route)")
            } else {
                String::new()
            };
            verdict(Verdict::yes(
                "Accepted",
                format!("applied by the waypoint of Service {parent_namespace}/{}{whose}", parent.name),
            ));
        } else {
            let note = format!("{at} uses no waypoint ({USE_WAYPOINT}): the route applies once it does");
            verdict(Verdict::no("Pending", note.clone()));
            if !parents.contains_key(&key) {
                notes.push(note);
            }
        }
        let (ports, _) = parents.entry(key).or_insert_with(|| (Some(BTreeSet::new()), consumer));
        match (ports, port) {
            (Some(ports), Some(port)) => {
                ports.insert(port);
            }
            (ports, None) => *ports = None,
            (None, Some(_)) => {}
        }
    }
    parents
        .into_iter()
        .map(|(key, (ports, consumer))| {
            (key, Attached { ports: ports.unwrap_or_default().into_iter().collect(), consumer })
        })
        .collect()
}

/// What a route's rules are read against.
struct Context<'a, 'b> {
    naming: &'a Naming,
    services: &'a HashMap<(&'b str, &'b str), &'b Service>,
    /// The route's.
    namespace: &'a str,
    kind: RouteKind,
    /// The one Service a consumer route attaches to, `(namespace, name)`: a backend it may name
    /// in another namespace without a ReferenceGrant (sending requests where they went).
    target: Option<(&'a str, &'a str)>,
}

impl Context<'_, '_> {
    /// The rule as a waypoint applies it, noting at `at` what it leaves out; `None` when it
    /// cannot apply it at all.
    /// A backend that cannot be used goes into `unresolved` with its `ResolvedRefs` reason.
    fn rule(
        &self,
        rule: &HttpRouteRule,
        at: &str,
        notes: &mut Vec<String>,
        unresolved: &mut Vec<(&'static str, String)>,
    ) -> Option<api::Rule> {
        let Some(matches) = rule.matches.iter().map(matching).collect::<Option<Vec<_>>>() else {
            notes.push(format!("{at}: a match of a type not supported: rule not applied"));
            return None;
        };
        // The waypoint refuses a whole Service's routes over one bad pattern; caught here, it
        // costs only its rule.
        if let Some(error) = matches.iter().find_map(bad_pattern) {
            notes.push(format!("{at}: {error}: rule not applied"));
            return None;
        }
        let mut converted = api::Rule { matches, ..Default::default() };
        for (index, filter) in rule.filters.iter().enumerate() {
            let at = format!("{at}.filters[{index}]");
            let (headers, modifier) = match filter.kind.as_str() {
                "RequestHeaderModifier" => (&mut converted.request_headers, &filter.request_header_modifier),
                "ResponseHeaderModifier" => {
                    (&mut converted.response_headers, &filter.response_header_modifier)
                }
                "RequestRedirect" => {
                    let redirect = filter
                        .request_redirect
                        .as_ref()
                        .and_then(|redirect| redirecting(redirect, &at, notes));
                    match redirect {
                        Some(redirect) => converted.redirect = Some(redirect),
                        // A redirect it cannot give must not send the request on instead.
                        None => return None,
                    }
                    continue;
                }
                "RequestMirror" => {
                    let Some(mirror) = &filter.request_mirror else { continue };
                    if self.kind == RouteKind::Grpc {
                        notes.push(format!(
                            "{at}: a call is copied only when its length is known (content-length), which gRPC clients seldom send: most calls are not mirrored"
                        ));
                    }
                    match self.backend(&mirror.backend_ref) {
                        Ok(backend) => converted.mirrors.push(mirroring(backend, mirror)),
                        Err((reason, message)) => {
                            let note = format!("{at}: the mirror's {message}: not mirrored");
                            unresolved.push((reason, note.clone()));
                            notes.push(note);
                        }
                    }
                    continue;
                }
                "URLRewrite" => {
                    let rewrite =
                        filter.url_rewrite.as_ref().and_then(|rewrite| rewriting(rewrite, &at, notes));
                    match rewrite {
                        Some(rewrite) => converted.rewrite = Some(rewrite),
                        None => return None,
                    }
                    continue;
                }
                other => {
                    notes.push(format!("{at}: {other} not supported yet: ignored"));
                    continue;
                }
            };
            if let Some(modifier) = modifier {
                merge(headers.get_or_insert_default(), modifier, &at, notes);
            }
        }
        for (index, backend) in rule.backend_refs.iter().enumerate() {
            match self.backend(backend) {
                Ok(mut resolved) => {
                    filter_backend(
                        &mut resolved,
                        &backend.filters,
                        &format!("{at}.backendRefs[{index}]"),
                        notes,
                    );
                    converted.backends.push(resolved);
                }
                Err((reason, message)) => {
                    let refused = if self.kind == RouteKind::Tcp { "refused" } else { "answered 500" };
                    let note = format!(
                        "{at}.backendRefs[{index}]: {message}: its share (weight {}) is {refused}",
                        backend.weight
                    );
                    unresolved.push((reason, note.clone()));
                    notes.push(note);
                    // Kept as an unusable backend, so its weight still draws its share.
                    converted
                        .backends
                        .push(api::Backend { weight: backend.weight, ..api::Backend::default() });
                }
            }
        }
        let timeouts = rule.timeouts.clone().unwrap_or_default();
        converted.request_timeout_ms =
            milliseconds(timeouts.request.as_deref(), &format!("{at}.timeouts.request"), notes);
        converted.backend_timeout_ms = milliseconds(
            timeouts.backend_request.as_deref(),
            &format!("{at}.timeouts.backendRequest"),
            notes,
        );
        converted.retry = rule.retry.as_ref().map(|retry| retrying(retry, &format!("{at}.retry"), notes));
        Some(converted)
    }

    /// The backend, or why it cannot be used: its `ResolvedRefs` reason and a message.
    fn backend(&self, backend: &HttpBackendRef) -> Result<api::Backend, (&'static str, String)> {
        if !backend.group.is_empty() || backend.kind != "Service" {
            return Err((
                "InvalidKind",
                format!("{} of group {:?} is not a Service", backend.kind, backend.group),
            ));
        }
        let namespace = backend.namespace.as_deref().unwrap_or(self.namespace);
        let name = backend.name.as_str();
        if namespace != self.namespace && self.target != Some((namespace, name)) {
            return Err((
                "RefNotPermitted",
                format!(
                    "Service {namespace}/{name} is in another namespace, which needs a ReferenceGrant (not supported yet)"
                ),
            ));
        }
        if !self.services.contains_key(&(namespace, name)) {
            return Err(("BackendNotFound", format!("Service {namespace}/{name} not found")));
        }
        let port = backend
            .port
            .ok_or_else(|| ("UnsupportedValue", format!("Service {namespace}/{name} without a port")))?;
        Ok(api::Backend {
            service: format!("{namespace}/{}", hostname(self.naming, name, namespace)),
            port,
            weight: backend.weight,
            ..api::Backend::default()
        })
    }
}

/// A match as the waypoint reads it; `None` when it holds a type not known here.
fn matching(matching: &HttpRouteMatch) -> Option<api::Match> {
    let kind = match matching.path.kind {
        PathMatchType::PathPrefix => api::path_match::Kind::Prefix,
        PathMatchType::Exact => api::path_match::Kind::Exact,
        PathMatchType::RegularExpression => api::path_match::Kind::Regex,
        PathMatchType::Any => api::path_match::Kind::Any,
        PathMatchType::Other => return None,
    };
    let values = |values: &[HttpValueMatch]| -> Option<Vec<api::ValueMatch>> {
        values
            .iter()
            .map(|value| {
                let regex = match value.kind {
                    ValueMatchType::Exact => false,
                    ValueMatchType::RegularExpression => true,
                    ValueMatchType::Other => return None,
                };
                Some(api::ValueMatch { name: value.name.clone(), value: value.value.clone(), regex })
            })
            .collect()
    };
    Some(api::Match {
        path: Some(api::PathMatch { kind: kind.into(), value: matching.path.value.clone() }),
        headers: values(&matching.headers)?,
        query_params: values(&matching.query_params)?,
        method: matching.method.clone().unwrap_or_default(),
    })
}

/// The first regular expression of `matching` that does not compile, as the waypoint would
/// compile it (a whole-value match).
fn bad_pattern(matching: &api::Match) -> Option<String> {
    let path = matching
        .path
        .iter()
        .filter(|path| path.kind() == api::path_match::Kind::Regex)
        .map(|path| path.value.as_str());
    let values = matching.headers.iter().chain(&matching.query_params).filter(|value| value.regex);
    path.chain(values.map(|value| value.value.as_str())).find_map(|pattern| {
        let error =
            regex::Regex::new(pattern).and_then(|_| regex::Regex::new(&format!("^(?:{pattern})$"))).err()?;
        Some(format!("regular expression {pattern:?} is invalid ({error})"))
    })
}

/// Adds `modifier` to `into` (the Gateway API allows one of each kind per rule; two are merged).
/// A header whose value no HTTP header may carry (a control character, a line break) is left
/// out and noted at `at`: the waypoint refuses a whole Service's routes over one, so it would
/// freeze them for every waypoint.
fn merge(into: &mut api::HeaderModifier, modifier: &HeaderModifier, at: &str, notes: &mut Vec<String>) {
    let mut valid = |header: &&HttpHeader| {
        let ok = header.value.bytes().all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte));
        if !ok {
            notes.push(format!(
                "{at}: the value of header {} is no valid header value: left out",
                header.name
            ));
        }
        ok
    };
    let header = |header: &HttpHeader| api::Header { name: header.name.clone(), value: header.value.clone() };
    let set: Vec<api::Header> = modifier.set.iter().filter(&mut valid).map(header).collect();
    let add: Vec<api::Header> = modifier.add.iter().filter(&mut valid).map(header).collect();
    into.set.extend(set);
    into.add.extend(add);
    into.remove.extend(modifier.remove.iter().cloned());
}

/// A backendRef's `filters` (at `at`) into its `backend`: the header modifiers, applied when it
/// is picked; any other kind is noted and left out.
fn filter_backend(
    backend: &mut api::Backend,
    filters: &[HttpRouteFilter],
    at: &str,
    notes: &mut Vec<String>,
) {
    for (index, filter) in filters.iter().enumerate() {
        let at = format!("{at}.filters[{index}]");
        let (headers, modifier) = match filter.kind.as_str() {
            "RequestHeaderModifier" => (&mut backend.request_headers, &filter.request_header_modifier),
            "ResponseHeaderModifier" => (&mut backend.response_headers, &filter.response_header_modifier),
            other => {
                notes.push(format!("{at}: {other} on a backendRef not supported yet: ignored"));
                continue;
            }
        };
        if let Some(modifier) = modifier {
            merge(headers.get_or_insert_default(), modifier, &at, notes);
        }
    }
}

/// A `RequestRedirect` as the waypoint gives it; `None` (noted at `at`, and the rule not
/// applied) for one it cannot give.
fn redirecting(redirect: &HttpRequestRedirect, at: &str, notes: &mut Vec<String>) -> Option<api::Redirect> {
    let mut refuse = |reason: String| {
        notes.push(format!("{at}: {reason}: rule not applied"));
        None
    };
    let scheme = redirect.scheme.clone().unwrap_or_default();
    if !matches!(scheme.as_str(), "" | "http" | "https") {
        return refuse(format!("scheme {scheme:?} is neither http nor https"));
    }
    let status_code = redirect.status_code.unwrap_or(302);
    if ![301, 302, 303, 307, 308].contains(&status_code) {
        return refuse(format!("status code {status_code} is no redirect"));
    }
    let hostname = redirect.hostname.clone().unwrap_or_default();
    if !valid_host(&hostname) {
        return refuse(format!("hostname {hostname:?} is no host name"));
    }
    let path = match redirect.path.as_ref().map(path_modifier).transpose() {
        Ok(path) => path,
        Err(reason) => return refuse(reason),
    };
    let port = redirect.port.unwrap_or(0);
    if port > u32::from(u16::MAX) {
        return refuse(format!("port {port} is out of range"));
    }
    Some(api::Redirect { scheme, hostname, path, port, status_code })
}

/// A `URLRewrite` as the waypoint applies it; `None` (noted at `at`, and the rule not applied)
/// for one it cannot apply.
fn rewriting(rewrite: &HttpUrlRewrite, at: &str, notes: &mut Vec<String>) -> Option<api::Rewrite> {
    let mut refuse = |reason: String| {
        notes.push(format!("{at}: {reason}: rule not applied"));
        None
    };
    let hostname = rewrite.hostname.clone().unwrap_or_default();
    if !valid_host(&hostname) {
        return refuse(format!("hostname {hostname:?} is no host name"));
    }
    let path = match rewrite.path.as_ref().map(path_modifier).transpose() {
        Ok(path) => path,
        Err(reason) => return refuse(reason),
    };
    Some(api::Rewrite { hostname, path })
}

/// A redirect's or rewrite's path; the value must be an absolute path without a query.
fn path_modifier(path: &HttpPathModifier) -> Result<api::PathModifier, String> {
    let (kind, value) = match path.kind.as_str() {
        "ReplaceFullPath" => (api::path_modifier::Kind::Full, &path.replace_full_path),
        "ReplacePrefixMatch" => (api::path_modifier::Kind::Prefix, &path.replace_prefix_match),
        other => return Err(format!("path modifier {other:?} not supported")),
    };
    let value = value.clone().unwrap_or_else(|| "/".to_owned());
    // RFC 3986's segment characters and '/': no query, no fragment, nothing to escape.
    let path_byte = |byte: u8| byte.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:@".contains(&byte);
    if !value.starts_with('/') || !value.bytes().all(path_byte) {
        return Err(format!("path {value:?} is no absolute path"));
    }
    Ok(api::PathModifier { kind: kind.into(), value })
}

/// Empty, or a DNS name, IPv4 address or bracketed IPv6 address, without a port (the waypoint
/// refuses the routes over one that is not).
fn valid_host(host: &str) -> bool {
    let ipv6 = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|address| address.parse::<std::net::Ipv6Addr>().is_ok());
    ipv6 || host.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
}

/// A `RequestMirror` to `backend`: for every request, or the share its `percent` or
/// `fraction` says.
fn mirroring(backend: api::Backend, mirror: &HttpRequestMirror) -> api::Mirror {
    let (numerator, denominator) = match (&mirror.fraction, mirror.percent) {
        (Some(fraction), _) => (fraction.numerator, fraction.denominator.unwrap_or(100)),
        (None, Some(percent)) => (percent, 100),
        (None, None) => (0, 0),
    };
    api::Mirror { backend: Some(backend), numerator, denominator }
}

/// A rule's `retry` as the waypoint applies it; a code outside 400–599 cannot mean a failure
/// and is noted at `at` and left out.
fn retrying(retry: &HttpRouteRetry, at: &str, notes: &mut Vec<String>) -> api::Retry {
    let codes = retry
        .codes
        .iter()
        .copied()
        .filter(|code| {
            let failure = (400..600).contains(code);
            if !failure {
                notes.push(format!("{at}.codes: {code} is no failure status: left out"));
            }
            failure
        })
        .collect();
    api::Retry {
        attempts: retry.attempts.unwrap_or(DEFAULT_RETRIES),
        codes,
        backoff_ms: milliseconds(retry.backoff.as_deref(), &format!("{at}.backoff"), notes),
    }
}

/// Retries per request when a route's `retry` leaves `attempts` unset: Istio's default.
const DEFAULT_RETRIES: u32 = 2;

/// A Gateway API duration in milliseconds (0: none, as unset or `0s` mean); one that does not
/// parse is noted at `at` and read as none.
fn milliseconds(text: Option<&str>, at: &str, notes: &mut Vec<String>) -> u32 {
    let Some(text) = text else { return 0 };
    match duration(text) {
        Some(duration) => u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
        None => {
            notes.push(format!("{at}: {text:?} is not a Gateway API duration: ignored"));
            0
        }
    }
}
