//! L4 authorization end to end: AuthorizationPolicy objects written as a user would, on the real
//! API server, converted by the control plane and enforced by the destination's node proxy —
//! for HBONE peers by identity and port, for plaintext peers too, on open connections as on new
//! ones — explained in the proxy's log
//! and by `weftctl policies` and `check`, and lifted when deleted.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{net::SocketAddr, time::Duration};

use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
};
use serde_json::{Value, json};
use weft_tests::{apps, cluster::Cluster, control::ControlPlane, kubelet::PodTemplate, mesh::Mesh};

const WAIT: Duration = Duration::from_secs(20);
const LABEL: &str = "weft.dev/dataplane-mode";

fn policies(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("security.weft.dev", "v1", "AuthorizationPolicy");
    Api::namespaced_with(client, "shop", &ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies"))
}

async fn apply(api: &Api<DynamicObject>, name: &str, spec: Value) {
    let object = json!({
        "apiVersion": "security.weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": spec,
    });
    api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap();
}

/// Retries `holds` (each try a real connection) until it is true; fails after [`WAIT`].
fn eventually(what: &str, holds: impl FnMut() -> bool) {
    weft_tests::until(what, WAIT, holds).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_allow_and_deny_by_identity_port_and_mtls_and_weftctl_explains_them() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[(LABEL, "ambient")]).await.unwrap();
    let web = cluster.add_pod(0, &PodTemplate::new("shop", "web").service_account("web")).await.unwrap();
    let intruder =
        cluster.add_pod(0, &PodTemplate::new("shop", "intruder").service_account("intruder")).await.unwrap();
    let outsider = cluster
        .add_pod(0, &PodTemplate::new("shop", "outsider").service_account("outsider").label(LABEL, "none"))
        .await
        .unwrap();
    let db = cluster
        .add_pod(1, &PodTemplate::new("shop", "db").service_account("db").label("app", "db"))
        .await
        .unwrap();
    let (to_db, to_db_admin) = (SocketAddr::new(db.ipv4.into(), 8080), SocketAddr::new(db.ipv4.into(), 9090));
    let _echo = apps::echo_server(&db, to_db.port()).unwrap();
    let _admin_echo = apps::echo_server(&db, to_db_admin.port()).unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let api = policies(cluster.client());

    let mut open_chat = tokio::task::block_in_place(|| {
        for pod in [&web, &intruder, &outsider] {
            assert!(apps::reaches(pod, to_db), "{} cannot reach db before any policy", pod.name);
        }
        let mut chat = apps::Chat::open(&intruder, to_db).unwrap();
        assert_eq!(chat.say("before the policy").unwrap(), "before the policy");
        chat
    });

    // Only web, only on 8080. HTTP methods are beyond a node proxy: that rule allows nothing.
    let allow_web = json!({
        "selector": { "matchLabels": { "app": "db" } },
        "rules": [{
            "from": [{ "source": { "principals": ["cluster.local/ns/shop/sa/web"] } }],
            "to": [{ "operation": { "ports": ["8080"] } }],
        }],
    });
    apply(&api, "db-allow-web", allow_web).await;
    apply(&api, "db-get-only", json!({ "selector": { "matchLabels": { "app": "db" } }, "rules": [{ "to": [{ "operation": { "methods": ["GET"] } }] }] })).await;
    tokio::task::block_in_place(|| {
        // The connection opened before the policy is cut, not only new ones refused.
        let revoked = mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE revoked"), WAIT).unwrap();
        assert!(revoked.contains("sa/intruder") && revoked.contains("shop/db-allow-web"), "{revoked}");
        assert!(open_chat.say("after the policy").is_err(), "the intruder's open connection still flows");
        eventually("the intruder refused", || !apps::reaches(&intruder, to_db));
        let denied = mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE denied"), WAIT).unwrap();
        assert!(
            denied.contains("sa/intruder")
                && denied.contains("no ALLOW policy matches")
                && denied.contains("shop/db-allow-web"),
            "{denied}"
        );
        assert!(apps::reaches(&web, to_db), "web is allowed on 8080");
        assert!(!apps::reaches(&web, to_db_admin), "web is not allowed on 9090");
        let denied = mesh.ztunnel(1).wait_for(|line| line.contains("inbound HBONE denied"), WAIT).unwrap();
        assert!(denied.contains("sa/web") && denied.contains(":9090"), "{denied}");
        // Plaintext has no identity: no principal matches.
        assert!(!apps::reaches(&outsider, to_db), "plaintext is not allowed");
        mesh.ztunnel(1).wait_for(|line| line.contains("plaintext inbound denied"), WAIT).unwrap();
    });

    // A DENY wins over the ALLOW that matches.
    apply(
        &api,
        "deny-web",
        json!({ "action": "DENY", "rules": [{ "from": [{ "source": { "principals": ["*/sa/web"] } }] }] }),
    )
    .await;
    tokio::task::block_in_place(|| {
        eventually("web refused by the DENY", || !apps::reaches(&web, to_db));
        let denied = mesh
            .ztunnel(1)
            .wait_for(|line| line.contains("inbound HBONE denied") && line.contains("sa/web"), WAIT)
            .unwrap();
        assert!(denied.contains("denied by DENY policy shop/deny-web"), "{denied}");

        let flags = mesh.weftctl_flags(&cluster, &plane).unwrap();
        let (ok, listed) = apps::weftctl(&flags, &["policies", "-o", "json"]).unwrap();
        assert!(ok, "{listed}");
        let listed: Value = serde_json::from_str(&listed).unwrap();
        let row =
            |name: &str| listed.as_array().unwrap().iter().find(|row| row["name"] == name).cloned().unwrap();
        assert_eq!(row("db-allow-web")["applies_to"], "shop/db");
        assert_eq!(row("deny-web")["applies_to"], "namespace shop");
        assert_eq!(row("deny-web")["action"], "DENY");
        let note = row("db-get-only")["not_enforced"].as_str().unwrap().to_owned();
        assert!(note.contains("rule 0 dropped") && note.contains("methods needs HTTP"), "{note}");
        let (ok, table) = apps::weftctl(&flags, &["policies"]).unwrap();
        assert!(
            ok && table.lines().any(|line| line.starts_with("shop") && line.contains("db-allow-web")),
            "{table}"
        );
        // check names the policies db's node proxy applies to it, as that proxy lists them.
        let (_, check) = apps::weftctl(&flags, &["check", "shop/db", "-o", "json"]).unwrap();
        let check: Value = serde_json::from_str(&check).unwrap();
        let policies =
            check.as_array().unwrap().iter().find(|finding| finding["check"] == "policies").cloned();
        let detail = policies.as_ref().and_then(|finding| finding["detail"].as_str()).unwrap_or_default();
        assert!(
            detail.starts_with("refused if any of DENY shop/deny-web matches; allowed only if one of ALLOW ")
                && detail.contains("shop/db-allow-web"),
            "{check}"
        );
    });

    // Deleted, they stop applying.
    for name in ["db-allow-web", "db-get-only", "deny-web"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    tokio::task::block_in_place(|| {
        eventually("the intruder let in again", || apps::reaches(&intruder, to_db));
        for pod in [&web, &outsider] {
            assert!(apps::reaches(pod, to_db), "{} cannot reach db once the policies are gone", pod.name);
        }
    });
}
