//! The soak's faults, one every step in a fixed cycle: pod churn, policy pushes and a label
//! flip, then one of the rarer ones in turn (a node proxy, the control plane, an agent, a root
//! rotation). Each but the root rotation (asked for; its progress is not followed yet) checks
//! that what it changed took effect — a churned pod is tunnelled to and reaches the server, a
//! pushed DENY refuses and its removal readmits, a flipped namespace leaves the mesh, is refused
//! by the server's STRICT node proxy, and rejoins — and each returns the window it ran in.
use std::time::Duration;

use anyhow::{Context, ensure};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{
    Scene,
    trend::{Window, unix_ms},
};
use crate::{apps, kubelet::PodTemplate, mesh};

/// How long a fault's effect may take to show.
pub const WAIT: Duration = Duration::from_secs(30);
/// The namespace the label flips take out of the mesh and back.
pub const FLIP_NAMESPACE: &str = "flip";
const POLICY: &str = "soak-deny-intruder";

/// One fault of the soak.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// A pod created, tunnelled to and used, then deleted; the next one on its node gets its
    /// addresses under another service account.
    PodChurn,
    /// A DENY for the intruder pushed (it is refused), then deleted (it is let in again).
    PolicyPush,
    /// Namespace `flip`'s enrollment label removed (its pod leaves the mesh, and the server's
    /// STRICT node proxy refuses its plaintext) and restored (tunnelled again, let in).
    LabelFlip,
    /// `weftctl rotate-root`: a new root, carried through while traffic flows.
    RootRotation,
    /// SIGKILL and a new control plane on the same socket: proxies keep their configuration
    /// and certificates, and reconnect.
    ControlRestart,
    /// SIGKILL and a new agent: capture stays pinned.
    AgentRestart(usize),
    /// SIGTERM (drain) and a new node proxy.
    ProxyRestart(usize),
}

impl Fault {
    /// The fault of step `step`: five common ones, then a rarer one in turn, so that in ten
    /// minutes each rarer one runs once and every component has a long life to measure.
    pub fn at(step: usize) -> Self {
        const COMMON: [Fault; 5] =
            [Fault::PodChurn, Fault::PolicyPush, Fault::LabelFlip, Fault::PodChurn, Fault::PolicyPush];
        const RARER: [Fault; 6] = [
            Fault::ProxyRestart(0),
            Fault::ControlRestart,
            Fault::AgentRestart(1),
            Fault::RootRotation,
            Fault::ProxyRestart(1),
            Fault::AgentRestart(0),
        ];
        match COMMON.get(step % (COMMON.len() + 1)) {
            Some(common) => *common,
            None => RARER[(step / (COMMON.len() + 1)) % RARER.len()],
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::PodChurn => "pod churn".into(),
            Self::PolicyPush => "policy push".into(),
            Self::LabelFlip => "label flip".into(),
            Self::RootRotation => "root rotation".into(),
            Self::ControlRestart => "control plane restart".into(),
            Self::AgentRestart(node) => format!("agent restart on node-{node}"),
            Self::ProxyRestart(node) => format!("proxy restart on node-{node}"),
        }
    }

    /// Runs the fault on `scene`; returns when it ran and whether its check held.
    pub async fn run(self, scene: &mut Scene) -> (Window, anyhow::Result<()>) {
        let start_ms = unix_ms();
        let outcome = match self {
            Self::PodChurn => churn(scene).await,
            Self::PolicyPush => push_policy(scene).await,
            Self::LabelFlip => flip_label(scene).await,
            Self::RootRotation => rotate_root(scene),
            Self::ControlRestart => {
                let client = scene.shop.cluster.client();
                scene.shop.plane.restart(client).await
            }
            Self::AgentRestart(node) => tokio::task::block_in_place(|| {
                scene.shop.mesh.kill_agent(node)?;
                scene.shop.mesh.start_agent(node)
            }),
            Self::ProxyRestart(node) => tokio::task::block_in_place(|| restart_proxy(scene, node)),
        };
        let window = Window {
            fault: self.name(),
            start_ms,
            end_ms: unix_ms(),
            may_fail_requests: matches!(self, Self::ProxyRestart(_)),
        };
        (window, outcome)
    }
}

async fn churn(scene: &mut Scene) -> anyhow::Result<()> {
    let n = scene.churned;
    scene.churned += 1;
    let node = (n % 2) as usize;
    let account = if (n / 2).is_multiple_of(2) { "churn-a" } else { "churn-b" };
    let template = PodTemplate::new("shop", &format!("churn-{n}")).service_account(account);
    let pod = scene.shop.cluster.add_pod(node, &template).await?;
    let used = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        scene.shop.mesh.wait_until_tunnelled_to(&[&pod], WAIT)?;
        let reply = apps::send(&pod, scene.shop.to, &scene.shop.canary)?;
        ensure!(reply == scene.shop.canary, "churned pod {} got {reply:?} back", pod.name);
        Ok(())
    });
    let removed = scene.shop.cluster.remove_pod("shop", &pod).await;
    used.with_context(|| format!("churned pod {} at {}", pod.name, pod.ipv4))?;
    removed
}

fn policies(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("security.weft.dev", "v1", "AuthorizationPolicy");
    Api::namespaced_with(client, "shop", &ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies"))
}

async fn push_policy(scene: &mut Scene) -> anyhow::Result<()> {
    let api = policies(scene.shop.cluster.client());
    // One a failed push left behind goes first, so each push starts from no policy.
    match api.delete(POLICY, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => return Err(error).context("deleting a DENY left behind"),
    }
    let object = json!({
        "apiVersion": "security.weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": POLICY, "namespace": "shop" },
        "spec": { "action": "DENY", "rules": [{ "from": [{ "source": { "principals": ["*/sa/intruder"] } }] }] },
    });
    api.create(&PostParams::default(), &serde_json::from_value(object)?)
        .await
        .context("creating the DENY")?;
    let (intruder, to) = (&scene.intruder, scene.shop.to);
    let refused = tokio::task::block_in_place(|| {
        crate::until("the intruder refused", WAIT, || !apps::reaches(intruder, to))
    });
    api.delete(POLICY, &DeleteParams::default()).await.context("deleting the DENY")?;
    refused?;
    tokio::task::block_in_place(|| {
        crate::until("the intruder let in again", WAIT, || apps::reaches(intruder, to))
    })
}

async fn flip_label(scene: &mut Scene) -> anyhow::Result<()> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(scene.shop.cluster.client());
    let label = |value: Option<&str>| {
        Patch::Merge(json!({ "metadata": { "labels": { crate::shop::LABEL: value } } }))
    };
    namespaces.patch(FLIP_NAMESPACE, &PatchParams::default(), &label(None)).await?;
    let (flipper, to) = (&scene.flipper, scene.shop.to);
    let outside = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        crate::until("the flipped pod out of the mesh", WAIT, || {
            scene.shop.cluster.topology().nodes().iter().all(|node| {
                mesh::proxy_workloads(node).is_ok_and(|workloads| !mesh::tunnels_to(&workloads, flipper))
            })
        })?;
        // Plaintext now, to a STRICT node: refused (and the message carries no canary).
        crate::until("the flipped pod refused by the STRICT server", WAIT, || !apps::reaches(flipper, to))
    });
    namespaces.patch(FLIP_NAMESPACE, &PatchParams::default(), &label(Some("ambient"))).await?;
    outside?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        scene.shop.mesh.wait_until_tunnelled_to(&[flipper], WAIT)?;
        let reply = apps::send(flipper, to, &scene.shop.canary)?;
        ensure!(reply == scene.shop.canary, "the flipped pod got {reply:?} back");
        Ok(())
    })
}

fn rotate_root(scene: &mut Scene) -> anyhow::Result<()> {
    let flags = scene.shop.mesh.weftctl_flags(&scene.shop.cluster, &scene.shop.plane)?;
    let (ok, said) = apps::weftctl(&flags, &["rotate-root"])?;
    ensure!(ok, "weftctl rotate-root: {said}");
    Ok(())
}

fn restart_proxy(scene: &mut Scene, node: usize) -> anyhow::Result<()> {
    let dump = apps::json_body(&scene.shop.mesh.agent_get(node, "/config_dump")?);
    let pods = dump["pods"]
        .as_object()
        .map_or(0, |pods| pods.values().filter(|pod| pod["state"] == "enrolled").count());
    scene.shop.mesh.restart_ztunnel(node, pods, WAIT)?;
    crate::until("the client reaching the server again", WAIT, || {
        apps::reaches(&scene.shop.client, scene.shop.to)
    })
}
