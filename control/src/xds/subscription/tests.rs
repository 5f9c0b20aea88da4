use prost::Message;
use weft_api::workload::ADDRESS_TYPE;

use super::*;
use crate::index::changes;

/// A snapshot of addresses `(name, content)`; successor of `before` when given.
fn snapshot(version: u64, addresses: &[(&str, &str)], before: Option<&Snapshot>) -> Arc<Snapshot> {
    let mut snapshot = changes::snapshot(version, addresses);
    if let Some(before) = before {
        changes::succeed(&mut snapshot, before);
    }
    Arc::new(snapshot)
}

/// What a response carries: (name, version) of each resource, and the names removed.
fn read(response: Response) -> (Vec<(String, String)>, Vec<String>) {
    let wire: Vec<Bytes> = match response.resources {
        Changed::These(wire) => wire,
        Changed::All { snapshot, type_url } => {
            resources(&snapshot, &type_url).iter().map(|(name, resource)| resource.wire(name)).collect()
        }
    };
    let resources = wire
        .iter()
        .map(|wire| {
            let resource = weft_api::discovery::Resource::decode(wire.as_ref()).expect("a Resource");
            (resource.name, resource.version)
        })
        .collect();
    (resources, response.removed)
}

/// `count` addresses, `r0000` on, all of content `1`.
fn numbered(count: usize) -> Vec<(String, String)> {
    (0..count).map(|i| (format!("r{i:04}"), "1".to_owned())).collect()
}

fn borrowed(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
}

fn pairs(of: &[(&str, &str)]) -> Vec<(String, String)> {
    of.iter().map(|(name, version)| (name.to_string(), version.to_string())).collect()
}

fn names(of: &[&str]) -> Vec<String> {
    of.iter().map(|name| name.to_string()).collect()
}

#[test]
fn a_wildcard_subscriber_gets_everything_then_only_what_changed() {
    let first = snapshot(1, &[("a", "1"), ("b", "1"), ("c", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    let response = subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    assert_eq!(read(response), (pairs(&[("a", "v-1"), ("b", "v-1"), ("c", "v-1")]), vec![]));
    assert!(subscription.respond(ADDRESS_TYPE, &first, "n2").is_none(), "nothing changed");

    let second = snapshot(2, &[("a", "1"), ("b", "2"), ("d", "1")], Some(&first));
    let response = subscription.respond(ADDRESS_TYPE, &second, "n3").expect("a change");
    assert_eq!(read(response), (pairs(&[("b", "v-2"), ("d", "v-1")]), names(&["c"])));
    assert!(subscription.respond(ADDRESS_TYPE, &second, "n4").is_none());
}

#[test]
fn a_subscriber_beyond_the_history_gets_the_difference_all_the_same() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    // Built without a history: the two are compared whole.
    let later = snapshot(9, &[("a", "1"), ("b", "2"), ("c", "1")], None);
    let response = subscription.respond(ADDRESS_TYPE, &later, "n2").expect("a change");
    assert_eq!(read(response), (pairs(&[("b", "v-2"), ("c", "v-1")]), vec![]));
}

#[test]
fn a_rejected_response_is_sent_again_with_what_changed_since() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    assert!(subscription.accepted("n1"));
    let second = snapshot(2, &[("a", "2"), ("b", "1")], Some(&first));
    subscription.respond(ADDRESS_TYPE, &second, "n2").expect("a change");
    assert!(subscription.rejected(ADDRESS_TYPE, "n2"));
    assert!(!subscription.rejected(ADDRESS_TYPE, "n2"), "a nonce is undone once");

    let third = snapshot(3, &[("a", "2"), ("b", "3"), ("c", "1")], Some(&second));
    let response = subscription.respond(ADDRESS_TYPE, &third, "n3").expect("the rejected one and the new");
    assert_eq!(read(response), (pairs(&[("a", "v-2"), ("b", "v-3"), ("c", "v-1")]), vec![]));
    // Back to holding the snapshot: the next change is only that.
    let fourth = snapshot(4, &[("a", "2"), ("b", "3")], Some(&third));
    let response = subscription.respond(ADDRESS_TYPE, &fourth, "n4").expect("a removal");
    assert_eq!(read(response), (vec![], names(&["c"])));
}

#[test]
fn a_rejected_removal_is_sent_again() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    let second = snapshot(2, &[("a", "1")], Some(&first));
    subscription.respond(ADDRESS_TYPE, &second, "n2").expect("a removal");
    assert!(subscription.rejected(ADDRESS_TYPE, "n2"));
    let response = subscription.respond(ADDRESS_TYPE, &second, "n3").expect("the removal again");
    assert_eq!(read(response), (vec![], names(&["b"])));
}

#[test]
fn a_reconnecting_proxy_gets_only_what_differs_from_what_it_holds() {
    let current = snapshot(5, &[("a", "1"), ("b", "2"), ("c", "1")], None);
    let held = [("a", "v-1"), ("b", "v-1"), ("gone", "v-1")];
    let held = held.iter().map(|(name, version)| (name.to_string(), version.to_string())).collect();
    let mut subscription = Subscription::new(true, held);
    let response = subscription.respond(ADDRESS_TYPE, &current, "n1").expect("the difference");
    assert_eq!(read(response), (pairs(&[("b", "v-2"), ("c", "v-1")]), names(&["gone"])));
}

#[test]
fn a_named_subscription_gets_its_names_only() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(false, HashMap::new());
    subscription.names.insert("b".into());
    let response = subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    assert_eq!(read(response), (pairs(&[("b", "v-1")]), vec![]));
    let second = snapshot(2, &[("a", "2"), ("b", "1")], Some(&first));
    assert!(subscription.respond(ADDRESS_TYPE, &second, "n2").is_none(), "a is not asked for");
    subscription.forget(ADDRESS_TYPE, "b");
    let response = subscription.respond(ADDRESS_TYPE, &second, "n3").expect("b again, once forgotten");
    assert_eq!(read(response), (pairs(&[("b", "v-1")]), vec![]));
}

#[test]
fn a_forgotten_name_of_a_wildcard_subscription_is_sent_again() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    subscription.forget(ADDRESS_TYPE, "a");
    let response = subscription.respond(ADDRESS_TYPE, &first, "n2").expect("a again");
    assert_eq!(read(response), (pairs(&[("a", "v-1")]), vec![]));
}

#[test]
fn streams_share_the_encoding_of_a_resource() {
    let first = snapshot(1, &[("a", "1")], None);
    let (mut one, mut other) =
        (Subscription::new(true, HashMap::new()), Subscription::new(true, HashMap::new()));
    one.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    other.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    let second = snapshot(2, &[("a", "1"), ("b", "1")], Some(&first));
    let one = one.respond(ADDRESS_TYPE, &second, "n2").expect("a change");
    let other = other.respond(ADDRESS_TYPE, &second, "n2").expect("a change");
    let (Changed::These(one), Changed::These(other)) = (one.resources, other.resources) else {
        panic!("one resource is not all of them")
    };
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].as_ptr(), other[0].as_ptr(), "the same bytes, not a copy");
}

#[test]
fn a_rejection_leaves_the_proxy_remembered_as_the_snapshot_and_what_it_lacks() {
    let many = numbered(1000);
    let many = borrowed(&many);
    let first = snapshot(1, &many, None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    let mut changed = many.clone();
    changed[7].1 = "2";
    let second = snapshot(2, &changed, Some(&first));
    subscription.respond(ADDRESS_TYPE, &second, "n2").expect("a change");
    // A response of another snapshot went out before the rejection: the proxy is remembered
    // as that one, but for the rejected change.
    let mut later = changed.clone();
    later[9].1 = "3";
    let third = snapshot(3, &later, Some(&second));
    subscription.respond(ADDRESS_TYPE, &third, "n3").expect("another change");
    assert!(subscription.rejected(ADDRESS_TYPE, "n2"));
    let Held::Snapshot { except, .. } = &subscription.held else {
        panic!("written out whole: {:?}", subscription.held)
    };
    assert_eq!(except.len(), 1, "only what the proxy lacks is kept: {except:?}");
    let response = subscription.respond(ADDRESS_TYPE, &third, "n4").expect("the rejected change again");
    assert_eq!(read(response), (pairs(&[("r0007", "v-2")]), vec![]));
    // The latest response rejected: back to what was held before it, nothing written out.
    assert!(subscription.rejected(ADDRESS_TYPE, "n4"));
    let Held::Snapshot { snapshot: held, except } = &subscription.held else {
        panic!("written out whole: {:?}", subscription.held)
    };
    assert!(Arc::ptr_eq(held, &third) && except.len() == 1, "{except:?}");
}

#[test]
fn a_rejection_of_a_response_before_the_last_keeps_what_the_last_one_sent() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    let second = snapshot(2, &[("a", "2"), ("b", "1")], Some(&first));
    subscription.respond(ADDRESS_TYPE, &second, "n2").expect("a's change");
    let third = snapshot(3, &[("a", "2"), ("b", "3")], Some(&second));
    subscription.respond(ADDRESS_TYPE, &third, "n3").expect("b's change");
    // n2 is rejected after n3 went out: a is sent again, b (n3's) is not.
    assert!(subscription.rejected(ADDRESS_TYPE, "n2"));
    let response = subscription.respond(ADDRESS_TYPE, &third, "n4").expect("a again");
    assert_eq!(read(response), (pairs(&[("a", "v-2")]), vec![]));
}

#[test]
fn a_forgotten_name_stays_owed_when_a_later_response_is_rejected() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    let second = snapshot(2, &[("a", "1"), ("b", "2")], Some(&first));
    subscription.respond(ADDRESS_TYPE, &second, "n2").expect("b's change");
    subscription.forget(ADDRESS_TYPE, "a");
    assert!(subscription.rejected(ADDRESS_TYPE, "n2"));
    let response = subscription.respond(ADDRESS_TYPE, &second, "n3").expect("a and b");
    assert_eq!(read(response), (pairs(&[("a", "v-1"), ("b", "v-2")]), vec![]));
}

#[test]
fn a_wildcard_subscription_turned_to_names_keeps_what_it_holds_of_them() {
    let first = snapshot(1, &[("a", "1"), ("b", "1")], None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    subscription.wildcard = false;
    subscription.names.insert("a".into());
    let second = snapshot(2, &[("a", "2"), ("b", "2")], Some(&first));
    let response = subscription.respond(ADDRESS_TYPE, &second, "n2").expect("a's change");
    assert_eq!(read(response), (pairs(&[("a", "v-2")]), vec![]));
    assert!(subscription.respond(ADDRESS_TYPE, &second, "n3").is_none(), "b is not asked for");
}

#[test]
fn a_rejected_first_response_leaves_nothing_held_and_no_exceptions() {
    let many = numbered(1000);
    let many = borrowed(&many);
    let first = snapshot(1, &many, None);
    let mut subscription = Subscription::new(true, HashMap::new());
    subscription.respond(ADDRESS_TYPE, &first, "n1").expect("a first response");
    subscription.forget(ADDRESS_TYPE, "r0001");
    assert!(subscription.rejected(ADDRESS_TYPE, "n1"));
    let Held::Versions(versions) = &subscription.held else { panic!("{:?}", subscription.held) };
    assert!(versions.is_empty(), "{versions:?}");
    let response = subscription.respond(ADDRESS_TYPE, &first, "n2").expect("everything again");
    assert!(matches!(response.resources, Changed::All { .. }), "{response:?}");
}
