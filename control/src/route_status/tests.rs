use serde_json::json;

use super::{CONTROLLER, parents};
use crate::index::{ParentStatus, RouteKind, RouteStatus, Verdict, gateway_api::ParentReference};

fn service_parent(name: &str, port: Option<u32>) -> ParentReference {
    ParentReference {
        group: String::new(),
        kind: "Service".into(),
        name: name.into(),
        port,
        ..Default::default()
    }
}

fn route(accepted: Verdict, resolved: Verdict, partially_invalid: Option<&str>) -> RouteStatus {
    RouteStatus {
        kind: RouteKind::Http,
        namespace: "shop".into(),
        name: "r".into(),
        generation: Some(3),
        services: vec![],
        notes: vec![],
        parents: vec![ParentStatus { parent_ref: service_parent("web", Some(80)), accepted }],
        resolved_refs: resolved,
        partially_invalid: partially_invalid.map(Into::into),
    }
}

#[test]
fn weft_writes_its_own_entries_keeps_other_controllers_and_keeps_a_conditions_time_while_it_holds() {
    let theirs =
        json!({ "parentRef": { "name": "gw" }, "controllerName": "example.com/other", "conditions": [] });
    let accepted = route(Verdict::yes("Accepted", "ok"), Verdict::yes("ResolvedRefs", "ok"), None);
    let first = parents(&accepted, std::slice::from_ref(&theirs));
    assert_eq!(first.len(), 2);
    assert_eq!(first[0], theirs, "another controller's entry is left as it was");
    let ours = &first[1];
    assert_eq!(ours["controllerName"], CONTROLLER);
    assert_eq!(ours["parentRef"], json!({ "group": "", "kind": "Service", "name": "web", "port": 80 }));
    let conditions = ours["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 2);
    assert_eq!((&conditions[0]["type"], &conditions[0]["status"]), (&json!("Accepted"), &json!("True")));
    assert_eq!(conditions[1]["observedGeneration"], 3);

    // Nothing changed: exactly what is there, so nothing is written.
    assert_eq!(parents(&accepted, &first), first);

    // A backend gone: ResolvedRefs turns, Accepted keeps its time; a rule left out is said.
    let mut aged = first.clone();
    aged[1]["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
    aged[1]["conditions"][1]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
    let broken = route(
        Verdict::yes("Accepted", "ok"),
        Verdict::no("BackendNotFound", "rules[0].backendRefs[0]: Service shop/gone not found: dropped"),
        Some("rules[1]: invalid regular expression"),
    );
    let next = parents(&broken, &aged);
    let conditions = next[1]["conditions"].as_array().unwrap();
    assert_eq!(conditions[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
    assert_ne!(conditions[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
    assert_eq!(
        (&conditions[1]["status"], &conditions[1]["reason"]),
        (&json!("False"), &json!("BackendNotFound"))
    );
    assert_eq!(conditions[2]["type"], "PartiallyInvalid");
    assert_eq!(next.len(), 2, "one entry per parent, replaced rather than added");
}
