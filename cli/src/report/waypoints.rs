//! `weftctl waypoints` and `weftctl routes`: which waypoints the mesh's Services and workloads
//! use and whether each can serve them, and what the control plane made of every HTTPRoute and
//! GRPCRoute attached to a Service — from the control plane's `/config_dump`, so they say what
//! the proxies were told.
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Mesh;

impl Mesh {
    /// Every waypoint a Service or workload names: its Service, how many of its endpoints are
    /// healthy, and what uses it.
    pub async fn waypoints(&self) -> anyhow::Result<Value> {
        Ok(waypoint_rows(&self.json(self.control()?, "/config_dump").await?))
    }

    /// Every route attached to a Service: per parent whether it is applied, whether its
    /// backends resolved, and what of it a waypoint cannot apply.
    pub async fn routes(&self) -> anyhow::Result<Value> {
        Ok(route_rows(&self.json(self.control()?, "/config_dump").await?))
    }
}

/// [`Mesh::waypoints`] from a control plane's dump.
pub fn waypoint_rows(dump: &Value) -> Value {
    let items = |key: &str| dump[key].as_array().cloned().unwrap_or_default();
    let (services, workloads) = (items("services"), items("workloads"));
    // By the waypoint's hostname (or address): the Services and workloads that name it.
    let mut users: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let name = |item: &Value| {
        format!("{}/{}", item["namespace"].as_str().unwrap_or("?"), item["name"].as_str().unwrap_or("?"))
    };
    for service in &services {
        if let Some(waypoint) = service["waypoint"].as_str() {
            users.entry(waypoint.to_owned()).or_default().0.push(name(service));
        }
    }
    for workload in &workloads {
        if let Some(waypoint) = workload["waypoint"].as_str() {
            users.entry(waypoint.to_owned()).or_default().1.push(name(workload));
        }
    }
    let rows = users.into_iter().map(|(waypoint, (for_services, for_workloads))| {
        let Readiness { own, ready, state } = readiness(&services, &workloads, &waypoint);
        json!({
            "waypoint": own.map_or_else(|| waypoint.clone(), name),
            "address": own.map_or(Value::Null, |own| own["vips"].clone()),
            "ready_endpoints": ready,
            "state": state,
            "services": for_services,
            "workloads": for_workloads.len(),
        })
    });
    Value::Array(rows.collect())
}

/// Whether a waypoint (its Service's hostname, as Services and workloads name it) can serve.
pub struct Readiness<'a> {
    /// Its Service.
    pub own: Option<&'a Value>,
    /// Its healthy endpoints.
    pub ready: usize,
    /// `ready`, or why its traffic is refused.
    pub state: &'static str,
}

/// [`Readiness`] of `waypoint` among a dump's `services` and `workloads`.
pub fn readiness<'a>(services: &'a [Value], workloads: &[Value], waypoint: &str) -> Readiness<'a> {
    let own = services.iter().find(|service| service["hostname"] == waypoint);
    let ready = own.map_or(0, |own| healthy_endpoints(workloads, own["key"].as_str().unwrap_or_default()));
    let state = match (own, ready) {
        (None, _) => "no such Service: its traffic is refused (503)",
        (Some(_), 0) => "no ready endpoint: its traffic is refused (503)",
        (Some(_), _) => "ready",
    };
    Readiness { own, ready, state }
}

/// How many of a dump's `workloads` are healthy endpoints of Service `key`.
pub fn healthy_endpoints(workloads: &[Value], key: &str) -> usize {
    workloads
        .iter()
        .filter(|workload| workload["healthy"] == true)
        .filter(|workload| workload["services"].as_array().is_some_and(|of| of.iter().any(|one| one == key)))
        .count()
}

/// [`Mesh::routes`] from a control plane's dump.
pub fn route_rows(dump: &Value) -> Value {
    let rows = dump["mesh_routes"].as_array().into_iter().flatten().map(|route| {
        let parents: Vec<String> = route["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|parent| {
                let reference = &parent["parent_ref"];
                let port = reference["port"].as_u64().map(|port| format!(":{port}")).unwrap_or_default();
                let reason = parent["accepted"]["reason"].as_str().unwrap_or("?");
                format!("{}{port} {reason}", reference["name"].as_str().unwrap_or("?"))
            })
            .collect();
        let notes: Vec<&str> =
            route["notes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        json!({
            "kind": route["kind"],
            "namespace": route["namespace"],
            "name": route["name"],
            "parents": parents,
            "backends": route["resolved_refs"]["reason"],
            "notes": if notes.is_empty() { "-".to_owned() } else { notes.join("; ") },
            "applied_to": route["services"],
        })
    });
    Value::Array(rows.collect())
}

#[cfg(test)]
mod tests;
