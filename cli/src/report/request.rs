//! `weftctl check --service`: what becomes of one request to a Service — the waypoint it goes
//! through and whether that waypoint can serve, what the L7 policies say to its source, the
//! traffic policies (rate limit, fault) it meets, and the route, rule and backends it gets. Decided by the waypoint's own code (`normalize`, `authz`,
//! `route` of `weft-waypoint`) on the very resources the control plane sends waypoints (its
//! `/config_dump` carries them encoded), so it says what a waypoint of this version does.
use anyhow::Context;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use prost::Message;
use serde_json::Value;
use weft_proxy::identity::Identity;
use weft_waypoint::{
    authz, normalize,
    route::{Reading, Routes, Rule},
};

use super::{
    Mesh, finding,
    waypoints::{Readiness, healthy_endpoints, readiness},
};

/// The request to decide.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// A port of the Service; its first when unset.
    pub port: Option<u16>,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `name:value` each; `Host` defaults to the Service's hostname.
    pub headers: Vec<String>,
    /// The client pod (`namespace/name`), for the policies' source identity and address.
    pub from: Option<String>,
}

impl Mesh {
    /// [`request_findings`] on the control plane's current dump.
    pub async fn check_request(&self, namespace: &str, name: &str, probe: &Probe) -> anyhow::Result<Value> {
        let dump = self.json(self.control()?, "/config_dump").await?;
        request_findings(&dump, namespace, name, probe)
    }
}

/// One finding per step a request to Service `namespace/name` takes: `service`, `waypoint`,
/// `request` (as the waypoint reads it), `policies`, `traffic` (when one applies), `route`; it stops at the first step that
/// ends the request. Errors for a probe that is no request (a bad method, header or `--from`)
/// and for a dump this weftctl cannot read (another version's).
pub fn request_findings(dump: &Value, namespace: &str, name: &str, probe: &Probe) -> anyhow::Result<Value> {
    let items = |key: &str| dump[key].as_array().cloned().unwrap_or_default();
    let (services, workloads) = (items("services"), items("workloads"));
    let mut findings = Vec::new();
    let Some(service) =
        services.iter().find(|service| service["namespace"] == namespace && service["name"] == name)
    else {
        findings.push(finding(
            "service",
            false,
            format!("the control plane serves no Service {namespace}/{name}"),
        ));
        return Ok(Value::Array(findings));
    };
    let (key, hostname) = (text(&service["key"]), text(&service["hostname"]));
    let ports: Vec<u16> = service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|port| u16::try_from(port.as_u64()?).ok())
        .collect();
    let port = match probe.port.or_else(|| ports.first().copied()) {
        Some(port) if ports.contains(&port) => port,
        Some(port) => {
            findings.push(finding(
                "service",
                false,
                format!("{key} has no port {port} (its ports: {ports:?})"),
            ));
            return Ok(Value::Array(findings));
        }
        None => {
            findings.push(finding("service", false, format!("{key} has no ports")));
            return Ok(Value::Array(findings));
        }
    };
    findings.push(finding("service", true, format!("{key}, port {port}, VIPs {}", service["vips"])));

    let Some(waypoint) = service["waypoint"].as_str() else {
        findings.push(finding(
            "waypoint",
            true,
            "none: node proxies carry its connections at L4; no route or L7 policy applies".into(),
        ));
        let unapplied = unapplied_routes(dump, namespace, name);
        if !unapplied.is_empty() {
            findings.push(finding("route", false, unapplied.join("; ")));
        }
        return Ok(Value::Array(findings));
    };
    let Readiness { own, ready, state } = readiness(&services, &workloads, waypoint);
    let waypoint_name = own.map_or_else(
        || waypoint.to_owned(),
        |own| format!("{}/{}", text(&own["namespace"]), text(&own["name"])),
    );
    findings.push(finding(
        "waypoint",
        state == "ready",
        format!("{waypoint_name}: {state} ({ready} ready endpoint(s))"),
    ));
    if state != "ready" {
        return Ok(Value::Array(findings));
    }

    let routes = match service_routes(dump, key) {
        Ok(routes) => routes,
        Err(error) => {
            findings.push(finding(
                "route",
                false,
                format!("waypoints refuse the Service's routes: {error:#}"),
            ));
            return Ok(Value::Array(findings));
        }
    };
    // The client's namespace picks its consumer routes (as `--from` reads it: `default` unless
    // named); none given: the Service's own routes.
    let client_namespace = probe
        .from
        .as_deref()
        .map(|from| from.split_once('/').map_or("default", |(namespace, _)| namespace).to_owned())
        .unwrap_or_default();
    // A TCPRoute makes the port TCP, and so does a protocol it declares: the waypoint reads no
    // HTTP there.
    let reading =
        routes.as_ref().map_or(Reading::Undeclared, |routes| routes.reading(port, &client_namespace));
    let mut headers = HeaderMap::new();
    for line in &probe.headers {
        let (name, value) = line.split_once(':').with_context(|| format!("header {line:?}: name:value"))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes())
                .with_context(|| format!("header name {name:?}"))?,
            HeaderValue::from_str(value.trim()).with_context(|| format!("header value {value:?}"))?,
        );
    }
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_str(hostname).context("the Service's hostname")?);
    }
    let method =
        Method::from_bytes(probe.method.as_bytes()).with_context(|| format!("method {:?}", probe.method))?;
    let mut uri: Uri = probe.path.parse().with_context(|| format!("path {:?}", probe.path))?;
    if let Reading::TcpRoute(_) = reading {
        findings.push(finding(
            "request",
            true,
            format!("port {port} is TCP (a TCPRoute): relayed at L4, not read as HTTP"),
        ));
    } else if reading.opaque() {
        findings.push(finding(
            "request",
            true,
            format!(
                "port {port} is declared as not HTTP (appProtocol or name): relayed at L4, not read as HTTP"
            ),
        ));
    } else if let Err(error) = normalize::target(&mut uri, &headers) {
        findings.push(finding("request", false, format!("the waypoint answers 400: {error}")));
        return Ok(Value::Array(findings));
    } else {
        findings.push(finding("request", true, format!("{method} {uri} as the waypoint reads it")));
    }

    // The waypoint's Gateway is named like its Service.
    let gateway =
        own.map(|own| format!("{}/{}", text(&own["namespace"]), text(&own["name"]))).unwrap_or_default();
    let asked = Asked { method, uri, headers, port, opaque: reading.opaque(), client_namespace };
    match policies_finding(dump, &workloads, key, &gateway, probe.from.as_deref(), &asked)? {
        Some((false, detail)) => {
            findings.push(finding("policies", false, detail));
            return Ok(Value::Array(findings));
        }
        Some((true, detail)) => findings.push(finding("policies", true, detail)),
        None => {}
    }

    // The traffic policies of the route the request takes, else of the Service.
    let traffic = match &routes {
        Some(_) if reading.opaque() => None,
        Some(routes) if routes.routes_http(port, &asked.client_namespace) => routes
            .select(port, &asked.client_namespace, &asked.method, &asked.uri, &asked.headers)
            .map(|selected| selected.policies),
        Some(routes) => Some(routes.policies()),
        None => None,
    };
    if let Some(described) = traffic.and_then(|policies| policies.describe()) {
        findings.push(finding("traffic", true, described));
    }

    let route = match (&routes, reading) {
        (_, Reading::TcpRoute(selected)) => rule_finding(&workloads, selected.route, selected.rule),
        (Some(routes), reading) if routes.routes_http(port, &asked.client_namespace) && !reading.opaque() => {
            http_route_finding(&workloads, routes, &asked)
        }
        _ => {
            let endpoints = healthy_endpoints(&workloads, key);
            finding(
                "route",
                endpoints > 0,
                format!("no route for port {port}: to the Service itself, {endpoints} healthy endpoint(s)"),
            )
        }
    };
    findings.push(route);
    Ok(Value::Array(findings))
}

/// The request as the waypoint reads it.
#[derive(Debug)]
struct Asked {
    method: Method,
    /// Canonical.
    uri: Uri,
    headers: HeaderMap,
    port: u16,
    /// A connection relayed at L4 (a TCPRoute's port): none of the HTTP fields apply.
    opaque: bool,
    /// The client's namespace (`--from`), whose consumer routes it takes; empty: not given.
    client_namespace: String,
}

/// Service `key`'s routes as waypoints compile them; `None` when it has none.
fn service_routes(dump: &Value, key: &str) -> anyhow::Result<Option<Routes>> {
    let Some(resource) =
        dump["routes"].as_array().into_iter().flatten().find(|entry| entry["service"] == key)
    else {
        return Ok(None);
    };
    let bytes = weft_api::hex::decode(text(&resource["resource"])).context("not hex")?;
    let resource = weft_api::route::ServiceRoutes::decode(bytes.as_slice()).context("not ServiceRoutes")?;
    Ok(Some(Routes::try_from(&resource)?))
}

/// What the L7 policies that target Service `key` or `gateway` say to client pod `from`; `None`
/// when none does.
fn policies_finding(
    dump: &Value,
    workloads: &[Value],
    key: &str,
    gateway: &str,
    from: Option<&str>,
    asked: &Asked,
) -> anyhow::Result<Option<(bool, String)>> {
    let mut policies = Vec::new();
    for entry in dump["http_authorizations"].as_array().into_iter().flatten() {
        let name = text(&entry["name"]);
        let bytes = weft_api::hex::decode(text(&entry["resource"]))
            .with_context(|| format!("policy {name}: not hex"))?;
        let resource = weft_api::http_authorization::HttpAuthorization::decode(bytes.as_slice())
            .with_context(|| format!("policy {name}: not an HttpAuthorization"))?;
        let policy = authz::Policy::try_from(resource).with_context(|| format!("policy {name}"))?;
        if policy.applies_to(Some(key), gateway) {
            policies.push(policy);
        }
    }
    if policies.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = policies.iter().map(authz::Policy::key).collect();
    let Some(from) = from else {
        return Ok(Some((
            true,
            format!("{} apply; name the client pod with --from to decide", names.join(", ")),
        )));
    };
    let (namespace, name) = from.split_once('/').unwrap_or(("default", from));
    let client = workloads
        .iter()
        .find(|workload| workload["namespace"] == namespace && workload["name"] == name)
        .with_context(|| format!("--from {from}: the control plane serves no such workload"))?;
    let trust_domain = dump["trust_domain"]
        .as_str()
        .context("the control plane's dump names no trust domain (an older control plane)")?;
    let source = Identity::new(trust_domain, namespace, text(&client["service_account"]));
    let source_ip = client["addresses"][0]
        .as_str()
        .and_then(|address| address.parse().ok())
        .with_context(|| format!("--from {from}: no address"))?;
    let request = if asked.opaque {
        authz::Request::connection(Some(&source), source_ip, asked.port)
    } else {
        authz::Request {
            source: Some(&source),
            source_ip,
            method: &asked.method,
            path: asked.uri.path(),
            host: asked.headers.get(header::HOST).and_then(|host| host.to_str().ok()),
            port: asked.port,
            headers: &asked.headers,
            // A question asked of the policies carries no token: `weftctl` cannot verify one.
            auth: None,
            opaque: false,
        }
    };
    let decision = authz::decide(&policies, &request);
    let mut detail = format!("from {source}: {}", decision.verdict);
    if !decision.verdict.allowed() {
        detail.push_str(if asked.opaque {
            " (the waypoint resets the connection)"
        } else {
            " (the waypoint answers 403)"
        });
    }
    if !decision.dry_run_matches.is_empty() {
        detail.push_str(&format!("; dry-run matches: {}", decision.dry_run_matches.join(", ")));
    }
    Ok(Some((decision.verdict.allowed(), detail)))
}

/// The HTTP route and rule the request gets, and where that sends it.
fn http_route_finding(workloads: &[Value], routes: &Routes, asked: &Asked) -> Value {
    let Asked { method, uri, headers, port, client_namespace, .. } = asked;
    let Some(selected) = routes.select(*port, client_namespace, method, uri, headers) else {
        return finding("route", false, "no route matches: the waypoint answers 404".into());
    };
    if let Some(redirect) = selected.rule.redirect() {
        let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or_default();
        let location = redirect.location(uri, host, *port, selected.matched_prefix);
        return finding(
            "route",
            true,
            format!("{}: redirected ({}) to {location}", selected.route, redirect.status().as_u16()),
        );
    }
    rule_finding(workloads, selected.route, selected.rule)
}

/// Where route `route`'s `rule` sends a request: its backends by weight, each with its healthy
/// endpoints.
fn rule_finding(workloads: &[Value], route: &str, rule: &Rule) -> Value {
    let backends: Vec<String> = rule
        .backends()
        .iter()
        .map(|backend| {
            if !backend.usable() {
                return format!("an unusable backendRef weight {} (its share answered 500)", backend.weight);
            }
            let endpoints = healthy_endpoints(workloads, &backend.service);
            format!(
                "{}:{} weight {} ({endpoints} healthy endpoint(s))",
                backend.service, backend.port, backend.weight
            )
        })
        .collect();
    let usable = rule.backends().iter().any(|backend| {
        backend.usable() && backend.weight > 0 && healthy_endpoints(workloads, &backend.service) > 0
    });
    let detail = if backends.is_empty() {
        format!("{route}: a rule without backends (the waypoint answers 500)")
    } else {
        format!("{route} → {}", backends.join(", "))
    };
    finding("route", usable, detail)
}

/// The routes attached to Service `namespace/name` that no waypoint applies, with why.
fn unapplied_routes(dump: &Value, namespace: &str, name: &str) -> Vec<String> {
    let attached = |route: &Value| {
        route["parents"].as_array().into_iter().flatten().any(|parent| {
            let reference = &parent["parent_ref"];
            let parent_namespace = reference["namespace"].as_str().unwrap_or(text(&route["namespace"]));
            reference["name"] == name && parent_namespace == namespace
        })
    };
    dump["mesh_routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|route| attached(route))
        .map(|route| {
            let notes: Vec<&str> =
                route["notes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            format!(
                "{} {}/{} is attached but not applied: {}",
                text(&route["kind"]),
                text(&route["namespace"]),
                text(&route["name"]),
                notes.join("; ")
            )
        })
        .collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

#[cfg(test)]
mod tests;
