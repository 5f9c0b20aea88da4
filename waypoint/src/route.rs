//! Route selection: which rule of the Gateway API HTTPRoutes attached to a Service a request gets,
//! and which weighted backend it then goes to. Pure: no I/O, and the caller supplies randomness.

use std::{collections::BTreeMap, time::Duration};

use http::header::{HeaderMap, HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};
use http::{Method, Uri};
use regex::Regex;
use weft_api::route as api;
use weft_api::route::path_match::Kind;

use crate::traffic::Policies;

#[cfg(test)]
mod tests;

/// Why a `ServiceRoutes` resource cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the routes name no service")]
    EmptyService,
    #[error("route {route}: port {port} is out of range")]
    InvalidPort { route: String, port: u32 },
    #[error("route {route}: path {path:?} does not start with '/'")]
    InvalidPath { route: String, path: String },
    #[error("route {route}: unknown path match kind {kind}")]
    UnknownPathKind { route: String, kind: i32 },
    #[error("route {route}: invalid regular expression {pattern:?}")]
    InvalidRegex {
        route: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("route {route}: invalid header name {name:?}")]
    InvalidHeaderName {
        route: String,
        name: String,
        #[source]
        source: InvalidHeaderName,
    },
    // The value is left out: header modifiers may carry credentials.
    #[error("route {route}: invalid value for header {name:?}")]
    InvalidHeaderValue {
        route: String,
        name: String,
        #[source]
        source: InvalidHeaderValue,
    },
    #[error("route {route}: backend weights add up to more than {}", u32::MAX)]
    WeightOverflow { route: String },
    #[error("route {route}: a mirror without a backend")]
    MirrorWithoutBackend { route: String },
    #[error("consumer route {route} names no consumer namespace")]
    ConsumerWithoutNamespace { route: String },
    #[error(transparent)]
    InvalidPolicy(#[from] crate::traffic::Error),
    #[error("route {route}: {source}")]
    InvalidFilter {
        route: String,
        #[source]
        source: crate::rewrite::Error,
    },
}

/// The HTTPRoutes attached to one Service, compiled once so that matching a request does no
/// parsing.
#[derive(Debug, Clone)]
pub struct Routes {
    service: String,
    /// Oldest first: list order breaks precedence ties.
    routes: Vec<Route>,
    /// Consumer routes (in another namespace than the Service) by that namespace, oldest first:
    /// a request from there to a port one of them applies to takes them instead of `routes`.
    consumers: BTreeMap<String, Vec<Route>>,
    /// TCPRoutes, oldest first: on a port one applies to, connections are relayed at L4.
    tcp_routes: Vec<Route>,
    /// Ports whose protocol the Service declares: whether each is HTTP.
    declared: Vec<(u16, bool)>,
    /// The traffic policies of requests no route takes.
    policies: Policies,
}

/// How a Service port's streams are read ([`Routes::reading`]).
#[derive(Debug)]
pub enum Reading<'a> {
    /// A TCPRoute applies: relayed at L4 to its backend, never read.
    TcpRoute(Selected<'a>),
    /// The port declares a protocol other than HTTP: relayed at L4, never read.
    DeclaredOpaque,
    /// The port declares HTTP: read as HTTP without waiting for its first bytes.
    DeclaredHttp,
    /// Nothing declared: HTTP if its first bytes say so.
    Undeclared,
}

impl Reading<'_> {
    /// Whether the stream is relayed at L4 without being read.
    pub fn opaque(&self) -> bool {
        matches!(self, Reading::TcpRoute(_) | Reading::DeclaredOpaque)
    }
}

/// The rule a request gets, and the HTTPRoute it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// `<namespace>/<name>` of the HTTPRoute.
    pub route: &'a str,
    pub rule: &'a Rule,
    /// The path prefix the request matched, without its trailing '/' (empty for `/`, or when the
    /// match was no prefix): what a filter's `ReplacePrefixMatch` replaces.
    pub matched_prefix: &'a str,
    /// The route's traffic policies.
    pub policies: &'a Policies,
}

/// One HTTPRoute rule: what a selected request gets done to it, and where it goes.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Never empty: a rule without matches holds one that matches every request.
    matches: Vec<Match>,
    backends: Vec<Backend>,
    /// Checked against overflow when compiled, so picking a backend cannot overflow.
    total_weight: u32,
    request_headers: HeaderModifier,
    response_headers: HeaderModifier,
    request_timeout: Option<Duration>,
    backend_timeout: Option<Duration>,
    retry: crate::retry::Policy,
    redirect: Option<crate::rewrite::Redirect>,
    rewrite: Option<crate::rewrite::Rewrite>,
    mirrors: Vec<Mirror>,
}

/// Where a rule sends copies of its requests (the Gateway API's `RequestMirror`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Its weight unused.
    pub backend: Backend,
    /// `numerator` in every `denominator` requests; a denominator of 0: every request.
    numerator: u32,
    denominator: u32,
}

impl Mirror {
    /// Whether this request is mirrored, `random(n)` returning a value in `[0, n)`.
    pub fn samples(&self, random: impl FnOnce(u32) -> u32) -> bool {
        self.denominator == 0
            || self.numerator >= self.denominator
            || random(self.denominator) < self.numerator
    }
}

/// A weighted backend Service of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `<namespace>/<hostname>`.
    pub service: String,
    pub port: u16,
    /// Relative to the rule's other backends; 0: never picked.
    pub weight: u32,
    /// Its own header filters, applied after the rule's when it is picked.
    pub request_headers: HeaderModifier,
    pub response_headers: HeaderModifier,
}

/// The Gateway API's header filter (`RequestHeaderModifier` / `ResponseHeaderModifier`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug, Clone)]
struct Route {
    name: String,
    /// Empty: every port.
    ports: Vec<u16>,
    rules: Vec<Rule>,
    /// Its requests' traffic policies (the control plane filled in the Service's).
    policies: Policies,
}

/// One way a request can select a rule; its conditions are ANDed.
#[derive(Debug, Clone)]
struct Match {
    path: PathMatch,
    /// `None`: any method.
    method: Option<String>,
    headers: Vec<(HeaderName, ValueMatch)>,
    query_params: Vec<(String, ValueMatch)>,
}

#[derive(Debug, Clone)]
enum PathMatch {
    /// No path condition (`ANY`: a GRPCRoute match naming no method), ranked below every path
    /// match.
    Any,
    /// Stored without its trailing '/', so the prefix `/` is the empty string.
    Prefix(String),
    Exact(String),
    /// Anchored at both ends.
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum ValueMatch {
    Exact(String),
    /// Anchored at both ends.
    Regex(Regex),
}

/// How specific a matching [`Match`] is: the greater wins. The fields are in the order of the
/// Gateway API's precedence rules, so the derived ordering is that precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    path: PathRank,
    method: bool,
    headers: usize,
    query_params: usize,
}

/// Variants in ascending precedence. The Gateway API leaves where regular expressions rank to
/// implementations; we put them below exact and prefix matches of any length because how specific
/// a pattern is cannot be judged from its text. No path condition at all ranks lowest, as a
/// GRPCRoute rule without a method match does (Istio sorts it last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathRank {
    Any,
    Regex,
    /// The prefix's length in characters, trailing '/' excluded: `/foo/` and `/foo` are the same
    /// match, so they tie and the older route wins.
    Prefix(usize),
    Exact,
}

/// The parts of a request that matching looks at.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
}

impl Routes {
    /// Routes for a Service that has no `ServiceRoutes` resource: [`Routes::select`] answers
    /// `None` to every request, and the caller sends it to the Service itself.
    pub fn none(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            routes: Vec::new(),
            consumers: BTreeMap::new(),
            tcp_routes: Vec::new(),
            declared: Vec::new(),
            policies: Policies::default(),
        }
    }

    /// The traffic policies of a request to the Service that no route takes.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The Service these routes are for: `<namespace>/<hostname>`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The rule a request to `port` of the Service gets, following the Gateway API's HTTPRoute
    /// precedence among every match of every route that applies to `port`: an exact path, then
    /// the longest path prefix, then a regular-expression path, then no path condition (`ANY`);
    /// then a method match; then more
    /// header matches; then more query parameter matches; then the older route, the earlier rule
    /// and the earlier match. `None` when nothing matches (the Gateway API answers 404).
    ///
    /// Only the path of `uri` is matched as a path; its query is matched by the query parameter
    /// matches.
    pub fn select(
        &self,
        port: u16,
        client_namespace: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<Selected<'_>> {
        let request =
            Request { method: method.as_str(), path: uri.path(), query: uri.query().unwrap_or(""), headers };
        let mut best: Option<(Rank, Selected<'_>)> = None;
        for route in self.candidates(port, client_namespace).iter().filter(|route| route.applies_to(port)) {
            for rule in &route.rules {
                for (matched, rank) in rule.matches.iter().filter_map(|m| Some((m, m.rank(&request)?))) {
                    // Strictly greater only: on a tie the one seen first, the older, stays.
                    if best.as_ref().is_none_or(|(best, _)| rank > *best) {
                        let matched_prefix = match &matched.path {
                            PathMatch::Prefix(prefix) => prefix.as_str(),
                            PathMatch::Any | PathMatch::Exact(_) | PathMatch::Regex(_) => "",
                        };
                        best = Some((
                            rank,
                            Selected { route: &route.name, rule, matched_prefix, policies: &route.policies },
                        ));
                    }
                }
            }
        }
        best.map(|(_, selected)| selected)
    }

    /// How the waypoint reads streams from `client_namespace` to `port` — the one place that
    /// ranks a TCPRoute before a declared protocol before the first bytes.
    pub fn reading(&self, port: u16, client_namespace: &str) -> Reading<'_> {
        if let Some(selected) = self.select_tcp(port, client_namespace) {
            return Reading::TcpRoute(selected);
        }
        match self.declared_http(port) {
            Some(true) => Reading::DeclaredHttp,
            Some(false) => Reading::DeclaredOpaque,
            None => Reading::Undeclared,
        }
    }

    /// Whether `port` is declared HTTP (`Some(true)`) or another protocol the waypoint relays
    /// as it is (`Some(false)`); `None`: not declared, told by the first bytes.
    pub fn declared_http(&self, port: u16) -> Option<bool> {
        self.declared.iter().find(|(declared, _)| *declared == port).map(|(_, http)| *http)
    }

    /// Whether an HTTPRoute (or GRPCRoute) applies to requests from `client_namespace` to
    /// `port`: when none does, they go to the Service itself, as to a Service without routes.
    pub fn routes_http(&self, port: u16, client_namespace: &str) -> bool {
        self.candidates(port, client_namespace).iter().any(|route| route.applies_to(port))
    }

    /// The routes a request from `client_namespace` to `port` is matched against: that
    /// namespace's consumer routes when one of them applies to the port (GEP-1426: a consumer's
    /// routes take precedence over the producer's for its own requests), else the Service's own.
    fn candidates(&self, port: u16, client_namespace: &str) -> &[Route] {
        match self.consumers.get(client_namespace) {
            Some(routes) if routes.iter().any(|route| route.applies_to(port)) => routes,
            _ => &self.routes,
        }
    }

    /// The TCPRoute rule for connections from `client_namespace` to `port`: the oldest TCPRoute
    /// that applies to it (a TCPRoute has one rule; it matches every connection). `None`: the
    /// port is not TCP-routed, and its connections are read as HTTP when they are — also when an
    /// HTTP route applies to it for this client, which takes precedence (GEP-1294; the control
    /// plane leaves such a port out of the Service's own TCPRoutes already; a consumer's HTTP
    /// route wins for its namespace's connections only).
    pub fn select_tcp(&self, port: u16, client_namespace: &str) -> Option<Selected<'_>> {
        // The HTTP routes this client's requests would take, its namespace's consumer routes
        // included, outrank TCPRoutes (GEP-1294).
        if self.routes_http(port, client_namespace) {
            return None;
        }
        let route = self.tcp_routes.iter().find(|route| route.applies_to(port))?;
        let rule = route.rules.first()?;
        Some(Selected { route: &route.name, rule, matched_prefix: "", policies: &route.policies })
    }
}

impl TryFrom<&api::ServiceRoutes> for Routes {
    type Error = Error;

    fn try_from(resource: &api::ServiceRoutes) -> Result<Self, Error> {
        if resource.service.is_empty() {
            return Err(Error::EmptyService);
        }
        let routes = resource.routes.iter().map(Route::compile).collect::<Result<_, _>>()?;
        // Another namespace's route that cannot be applied is left out alone: it must not take
        // the Service's own routes down with it (the control plane checks what a waypoint
        // checks; this is for what slips through).
        let mut consumers: BTreeMap<String, Vec<Route>> = BTreeMap::new();
        for route in &resource.consumer_routes {
            let compiled = match route.consumer_namespace.is_empty() {
                true => Err(Error::ConsumerWithoutNamespace { route: route.name.clone() }),
                false => Route::compile(route),
            };
            match compiled {
                Ok(compiled) => consumers.entry(route.consumer_namespace.clone()).or_default().push(compiled),
                Err(error) => tracing::warn!(service = %resource.service, %error, "consumer route left out"),
            }
        }
        let tcp_routes = resource.tcp_routes.iter().map(Route::compile).collect::<Result<_, _>>()?;
        let declared = resource
            .declared_ports
            .iter()
            .map(|declared| {
                let port = u16::try_from(declared.port).map_err(|_| Error::InvalidPort {
                    route: "declared_ports".into(),
                    port: declared.port,
                })?;
                // The raw value: an unknown one, from a newer control plane, is relayed as it
                // is rather than read as HTTP (prost's accessor would say HTTP, its default).
                Ok((port, declared.protocol == i32::from(api::declared_port::Protocol::Http)))
            })
            .collect::<Result<_, Error>>()?;
        let policies = Policies::compile(resource.policies.as_ref())?;
        Ok(Self { service: resource.service.clone(), routes, consumers, tcp_routes, declared, policies })
    }
}

impl Route {
    fn compile(route: &api::Route) -> Result<Self, Error> {
        let name = &route.name;
        let ports = route
            .ports
            .iter()
            .map(|&port| u16::try_from(port).map_err(|_| Error::InvalidPort { route: name.clone(), port }))
            .collect::<Result<_, _>>()?;
        let rules = route.rules.iter().map(|rule| Rule::compile(name, rule)).collect::<Result<_, _>>()?;
        let policies = Policies::compile(route.policies.as_ref())?;
        Ok(Self { name: name.clone(), ports, rules, policies })
    }

    fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

impl Rule {
    /// The backends, in the order the route lists them.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// What to do to the request's headers before sending it on.
    pub fn request_headers(&self) -> &HeaderModifier {
        &self.request_headers
    }

    /// What to do to the response's headers before answering.
    pub fn response_headers(&self) -> &HeaderModifier {
        &self.response_headers
    }

    /// How long the whole request may take, retries included.
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// How long each attempt at a backend may take.
    pub fn backend_timeout(&self) -> Option<Duration> {
        self.backend_timeout
    }

    /// When a failed attempt is tried again.
    pub fn retry(&self) -> &crate::retry::Policy {
        &self.retry
    }

    /// The redirect that answers the request instead of a backend, if any.
    pub fn redirect(&self) -> Option<&crate::rewrite::Redirect> {
        self.redirect.as_ref()
    }

    /// What to change of the request's host and path before it goes on, if anything.
    pub fn rewrite(&self) -> Option<&crate::rewrite::Rewrite> {
        self.rewrite.as_ref()
    }

    /// Where copies of the rule's requests go.
    pub fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    /// A backend chosen by weight, using `random(total)`, which must return a value in
    /// `[0, total)`. `None` when the rule has no backends, every weight is 0, or the draw fell
    /// on an unusable backend's share ([`Backend::usable`]): the Gateway API then answers 500.
    pub fn pick_backend(&self, random: &mut impl FnMut(u32) -> u32) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        // A generator that strays out of range still lands on a backend rather than on none.
        let mut point = random(self.total_weight) % self.total_weight;
        for backend in &self.backends {
            if point < backend.weight {
                return Some(backend).filter(|backend| backend.usable());
            }
            point -= backend.weight;
        }
        None
    }

    /// [`Rule::pick_backend`] with the thread's random number generator.
    pub fn pick_backend_randomly(&self) -> Option<&Backend> {
        self.pick_backend(&mut |total| fastrand::u32(0..total))
    }

    fn compile(route: &str, rule: &api::Rule) -> Result<Self, Error> {
        let filter = |source| Error::InvalidFilter { route: route.to_owned(), source };
        let matches = if rule.matches.is_empty() {
            vec![Match::everything()]
        } else {
            rule.matches.iter().map(|m| Match::compile(route, m)).collect::<Result<_, _>>()?
        };
        let backends: Vec<Backend> =
            rule.backends.iter().map(|backend| Backend::compile(route, backend)).collect::<Result<_, _>>()?;
        let total_weight = backends
            .iter()
            .try_fold(0u32, |total, backend| total.checked_add(backend.weight))
            .ok_or_else(|| Error::WeightOverflow { route: route.to_owned() })?;
        Ok(Self {
            matches,
            backends,
            total_weight,
            request_headers: HeaderModifier::compile(route, rule.request_headers.as_ref())?,
            response_headers: HeaderModifier::compile(route, rule.response_headers.as_ref())?,
            request_timeout: millis(rule.request_timeout_ms),
            backend_timeout: millis(rule.backend_timeout_ms),
            retry: crate::retry::Policy::compile(rule.retry.as_ref()),
            redirect: rule
                .redirect
                .as_ref()
                .map(crate::rewrite::Redirect::compile)
                .transpose()
                .map_err(filter)?,
            rewrite: rule
                .rewrite
                .as_ref()
                .map(crate::rewrite::Rewrite::compile)
                .transpose()
                .map_err(filter)?,
            mirrors: rule
                .mirrors
                .iter()
                .map(|mirror| {
                    let backend = mirror
                        .backend
                        .as_ref()
                        .ok_or_else(|| Error::MirrorWithoutBackend { route: route.to_owned() })?;
                    Ok(Mirror {
                        backend: Backend::compile(route, backend)?,
                        numerator: mirror.numerator,
                        denominator: mirror.denominator,
                    })
                })
                .collect::<Result<_, Error>>()?,
        })
    }
}

impl Backend {
    /// Whether it names a Service: the control plane keeps a backendRef it could not resolve
    /// as one without, so that its weight still draws its share (and gets 500).
    pub fn usable(&self) -> bool {
        !self.service.is_empty()
    }

    fn compile(route: &str, backend: &api::Backend) -> Result<Self, Error> {
        let port = u16::try_from(backend.port)
            .map_err(|_| Error::InvalidPort { route: route.to_owned(), port: backend.port })?;
        Ok(Self {
            service: backend.service.clone(),
            port,
            weight: backend.weight,
            request_headers: HeaderModifier::compile(route, backend.request_headers.as_ref())?,
            response_headers: HeaderModifier::compile(route, backend.response_headers.as_ref())?,
        })
    }
}

impl HeaderModifier {
    /// Applies the filter as three steps in this order: `set` replaces every value of its headers,
    /// `add` appends a value, `remove` deletes every value. The Gateway API does not order them;
    /// removing last means a header both set and removed ends up absent.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }

    fn compile(route: &str, modifier: Option<&api::HeaderModifier>) -> Result<Self, Error> {
        let Some(modifier) = modifier else {
            return Ok(Self::default());
        };
        let header =
            |header: &api::Header| -> Result<_, Error> {
                let name = header_name(route, &header.name)?;
                let value = HeaderValue::from_str(&header.value).map_err(|source| {
                    Error::InvalidHeaderValue { route: route.to_owned(), name: header.name.clone(), source }
                })?;
                Ok((name, value))
            };
        Ok(Self {
            set: modifier.set.iter().map(header).collect::<Result<_, _>>()?,
            add: modifier.add.iter().map(header).collect::<Result<_, _>>()?,
            remove: modifier.remove.iter().map(|name| header_name(route, name)).collect::<Result<_, _>>()?,
        })
    }
}

impl Match {
    /// What a rule without matches gets: the Gateway API's default, a path prefix of `/`.
    fn everything() -> Self {
        Self {
            path: PathMatch::Prefix(String::new()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }

    /// `None` when the request does not match.
    fn rank(&self, request: &Request<'_>) -> Option<Rank> {
        let path = self.path.rank(request.path)?;
        if self.method.as_deref().is_some_and(|method| method != request.method) {
            return None;
        }
        // The first value of a repeated header: the Gateway API leaves the choice to
        // implementations, and the first is what most HTTP libraries hand out.
        let headers_match = self.headers.iter().all(|(name, value)| {
            request.headers.get(name).is_some_and(|actual| value.matches(actual.as_bytes()))
        });
        let query_matches = self.query_params.iter().all(|(name, value)| {
            query_value(request.query, name).is_some_and(|actual| value.matches(actual.as_bytes()))
        });
        (headers_match && query_matches).then_some(Rank {
            path,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query_params: self.query_params.len(),
        })
    }

    fn compile(route: &str, m: &api::Match) -> Result<Self, Error> {
        let path = match &m.path {
            Some(path) => PathMatch::compile(route, path)?,
            None => PathMatch::Prefix(String::new()),
        };
        let headers = m
            .headers
            .iter()
            .map(|header| Ok((header_name(route, &header.name)?, ValueMatch::compile(route, header)?)))
            .collect::<Result<_, Error>>()?;
        let query_params = m
            .query_params
            .iter()
            .map(|param| Ok((param.name.clone(), ValueMatch::compile(route, param)?)))
            .collect::<Result<_, Error>>()?;
        let method = (!m.method.is_empty()).then(|| m.method.clone());
        Ok(Self { path, method, headers, query_params })
    }
}

impl PathMatch {
    /// `None` when `path` does not match.
    fn rank(&self, path: &str) -> Option<PathRank> {
        match self {
            // By whole segments, as the Gateway API requires: `/foo` matches `/foo`, `/foo/` and
            // `/foo/bar` but not `/foobar`.
            Self::Prefix(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                .then(|| PathRank::Prefix(prefix.chars().count())),
            Self::Any => Some(PathRank::Any),
            Self::Exact(exact) => (path == exact).then_some(PathRank::Exact),
            Self::Regex(regex) => regex.is_match(path).then_some(PathRank::Regex),
        }
    }

    fn compile(route: &str, path: &api::PathMatch) -> Result<Self, Error> {
        let kind = Kind::try_from(path.kind)
            .map_err(|_| Error::UnknownPathKind { route: route.to_owned(), kind: path.kind })?;
        match kind {
            Kind::Any => Ok(Self::Any),
            Kind::Regex => Ok(Self::Regex(full_match(route, &path.value)?)),
            _ if !path.value.starts_with('/') => {
                Err(Error::InvalidPath { route: route.to_owned(), path: path.value.clone() })
            }
            Kind::Prefix => Ok(Self::Prefix(path.value.trim_end_matches('/').to_owned())),
            Kind::Exact => Ok(Self::Exact(path.value.clone())),
        }
    }
}

impl ValueMatch {
    /// Compares bytes exactly; a value that is not UTF-8 matches no regular expression.
    fn matches(&self, actual: &[u8]) -> bool {
        match self {
            Self::Exact(expected) => expected.as_bytes() == actual,
            Self::Regex(regex) => std::str::from_utf8(actual).is_ok_and(|actual| regex.is_match(actual)),
        }
    }

    fn compile(route: &str, value: &api::ValueMatch) -> Result<Self, Error> {
        Ok(if value.regex {
            Self::Regex(full_match(route, &value.value)?)
        } else {
            Self::Exact(value.value.clone())
        })
    }
}

/// `pattern` compiled to match whole strings only, as the Gateway API's regular expression
/// matches do.
fn full_match(route: &str, pattern: &str) -> Result<Regex, Error> {
    let invalid =
        |source| Error::InvalidRegex { route: route.to_owned(), pattern: pattern.to_owned(), source };
    // Compiled alone first: a pattern such as `a)|(b` is invalid alone but would turn the anchored
    // wrapping into `^(?:a)|(b)$`, which is valid and anchored at one end only.
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}

/// Parsed as `http` does, which lowercases it: header names compare without case.
fn header_name(route: &str, name: &str) -> Result<HeaderName, Error> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|source| Error::InvalidHeaderName {
        route: route.to_owned(),
        name: name.to_owned(),
        source,
    })
}

/// The value of the first parameter called `name` in `query`, as it appears on the wire: neither
/// is percent-decoded, so the route must spell an encoded name or value encoded the same way.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Milliseconds from the wire, where 0 means none.
fn millis(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms.into()))
}
