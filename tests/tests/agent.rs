//! The Kubernetes-driven agent: enrollment follows namespace and pod labels on the real API
//! server, without restarting pods, and the wire shows it; peers tunnel only to pods an agent
//! reports captured.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use weft_tests::{
    apps, canary, cluster::Cluster, control::ControlPlane, kubelet::PodTemplate, mesh::Mesh, shop::Shop,
    topology::Pod, wire::WireMonitor,
};

const ECHO_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(20);
const LABEL: &str = "weft.dev/dataplane-mode";

async fn label_namespace(client: kube::Client, name: &str, value: Option<&str>) {
    let patch = serde_json::json!({ "metadata": { "labels": { LABEL: value } } });
    Api::<Namespace>::all(client).patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
}

/// What enrollment sets in `pod`'s netns for the proxy, part by part: the return path of its
/// deliveries (the rule for their mark in both families; `tcp_fwmark_accept` on) and the
/// migration of queued connections between the proxies of an upgrade (`tcp_migrate_req` on).
fn proxy_setup(pod: &Pod) -> [bool; 3] {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let name = pod.netns.name();
    let mark = format!("fwmark {:#x}", weft_ebpf_common::DELIVERY_MARK);
    let rules = [run(&["-n", name, "-4", "rule", "show"]), run(&["-n", name, "-6", "rule", "show"])];
    let switch = |name_of: &str| run(&["netns", "exec", name, "cat", name_of]).trim() == "1";
    [
        rules.iter().all(|rules| rules.contains(&mark)),
        switch("/proc/sys/net/ipv4/tcp_fwmark_accept"),
        switch("/proc/sys/net/ipv4/tcp_migrate_req"),
    ]
}

/// Canary frames that crossed the fabric while `from` sent one message to `to`.
fn plaintext_frames(monitor: &WireMonitor, from: &Pod, to: SocketAddr, canary: &str) -> u64 {
    let before = monitor.canary_frames();
    assert_eq!(apps::send(from, to, canary).unwrap(), canary);
    monitor.settle(WAIT).unwrap();
    monitor.canary_frames() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_labels_enroll_and_release_running_pods_and_the_pod_opt_out_wins() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let server =
        cluster.add_pod(1, &PodTemplate::new("shop", "server").service_account("payments")).await.unwrap();
    let loner = cluster
        .add_pod(0, &PodTemplate::new("shop", "loner").service_account("loner").label(LABEL, "none"))
        .await
        .unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let canary = canary();
    let monitor = WireMonitor::start(cluster.topology().fabric(), &canary).unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let pause_pids: Vec<String> = [&client, &server]
        .iter()
        .map(|pod| std::fs::read_to_string(pod.cgroup.join("cgroup.procs")).unwrap())
        .collect();

    // Not labelled: plaintext.
    assert!(tokio::task::block_in_place(|| plaintext_frames(&monitor, &client, to, &canary)) > 0);

    // Labelled: both running pods join (the opted-out one does not); no plaintext from the client.
    label_namespace(cluster.client(), "shop", Some("ambient")).await;
    tokio::task::block_in_place(|| {
        mesh.agent(0)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=client"), WAIT)
            .unwrap();
        mesh.agent(1)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=server"), WAIT)
            .unwrap();
        mesh.wait_until_tunnelled(WAIT).unwrap();
        assert_eq!(plaintext_frames(&monitor, &client, to, &canary), 0, "plaintext after enrollment");
        assert!(plaintext_frames(&monitor, &loner, to, &canary) > 0, "the opted-out pod was captured");
        assert_eq!((proxy_setup(&client), proxy_setup(&loner)), ([true; 3], [false; 3]));
    });

    // Unlabelled: they leave; plaintext again. Nobody was restarted.
    label_namespace(cluster.client(), "shop", None).await;
    tokio::task::block_in_place(|| {
        mesh.agent(0).wait_for(|line| line.contains("left the mesh"), WAIT).unwrap();
        mesh.agent(1).wait_for(|line| line.contains("left the mesh"), WAIT).unwrap();
        assert!(plaintext_frames(&monitor, &client, to, &canary) > 0);
        assert_eq!(proxy_setup(&client), [false; 3], "a pod that left the mesh keeps part of its setup");
    });
    let after: Vec<String> = [&client, &server]
        .iter()
        .map(|pod| std::fs::read_to_string(pod.cgroup.join("cgroup.procs")).unwrap())
        .collect();
    assert_eq!(after, pause_pids, "a pod was restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_ztunnel_and_agent_converge_on_the_pods_that_exist() {
    let mut cluster = Cluster::start(1).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[(LABEL, "ambient")]).await.unwrap();
    let first =
        cluster.add_pod(0, &PodTemplate::new("shop", "first").service_account("first")).await.unwrap();
    let server =
        cluster.add_pod(0, &PodTemplate::new("shop", "server").service_account("server")).await.unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    // A third pod, created later: the proxies learn it from the control plane.
    let late_template = PodTemplate::new("shop", "late").service_account("late");
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    // The mesh is ready once the agent's first snapshot, with both pods, reached ztunnel.
    let proxied = |line: &str, name: &str| {
        line.contains("outbound via HBONE closed") && line.contains(&format!("sa/{name} "))
    };
    tokio::task::block_in_place(|| {
        assert_eq!(apps::send(&first, to, "before").unwrap(), "before");
        mesh.ztunnel(0).wait_for(|line| proxied(line, "first"), WAIT).unwrap();
    });

    // ztunnel restarts; a pod is created while it is down; both old and new pods are served after.
    tokio::task::block_in_place(|| mesh.kill_ztunnel(0)).unwrap();
    // Meanwhile the agent reports its pods as waiting for ztunnel, not as enrolled.
    weft_tests::eventually("the agent to report ztunnel gone", WAIT, || {
        let dump = mesh.agent_get(0, "/config_dump").unwrap_or_default();
        async move { dump.contains("ztunnel is not connected").then_some(()) }
    })
    .await
    .unwrap();
    let late = cluster.add_pod(0, &late_template).await.unwrap();
    tokio::task::block_in_place(|| {
        mesh.start_ztunnel(0).unwrap();
        mesh.agent(0).wait_for(|line| line.contains("enrolled") && line.contains("name=late"), WAIT).unwrap();
        assert_eq!(apps::send(&first, to, "after ztunnel restart").unwrap(), "after ztunnel restart");
        mesh.ztunnel(0).wait_for(|line| proxied(line, "first"), WAIT).unwrap();
        assert_eq!(apps::send(&late, to, "late pod").unwrap(), "late pod");
        mesh.ztunnel(0).wait_for(|line| proxied(line, "late"), WAIT).unwrap();
    });
    let inbound_links = |node: &weft_tests::topology::Node| {
        std::fs::read_dir(node.bpffs_root.join("links"))
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().starts_with("sk_lookup-"))
            .count()
    };
    let node = cluster.topology().nodes()[0].clone();
    assert_eq!(inbound_links(&node), 3);

    // The agent dies; a pod is deleted meanwhile; the restarted agent removes its enrollment and
    // keeps the others (no re-enrollment of what exists, traffic still flows, and a connection
    // established before the restart survives it).
    let baseline = tokio::task::block_in_place(|| mesh.ztunnel_baseline(0, WAIT)).unwrap();
    let mut chat = tokio::task::block_in_place(|| apps::Chat::open(&late, to)).unwrap();
    assert_eq!(tokio::task::block_in_place(|| chat.say("one")).unwrap(), "one");
    tokio::task::block_in_place(|| mesh.kill_agent(0)).unwrap();
    cluster.remove_pod("shop", &first).await.unwrap();
    tokio::task::block_in_place(|| {
        // Ready means the snapshot was delivered and stale enrollments swept.
        mesh.start_agent(0).unwrap();
        assert_eq!(inbound_links(&node), 2, "the deleted pod's capture was not removed");
        assert_eq!(apps::send(&late, to, "after agent restart").unwrap(), "after agent restart");
        mesh.ztunnel(0).wait_for(|line| proxied(line, "late"), WAIT).unwrap();
        assert_eq!(chat.say("two").unwrap(), "two", "the established connection was dropped");
        // The agent's new ZDS stream replaced the old one, and gave the proxy its pods again:
        // nothing is held twice (the deleted pod's proxy gone, rather, with all it held).
        drop(chat);
        let lanes = weft_tests::invariants::pool_lanes();
        baseline.returned(lanes, WAIT).unwrap();
    });
}

/// Events on pod `name` with `reason`.
async fn events(client: kube::Client, name: &str, reason: &str) -> Vec<k8s_openapi::api::core::v1::Event> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "shop");
    let listed = events.list(&Default::default()).await.unwrap();
    listed
        .items
        .into_iter()
        .filter(|event| {
            event.involved_object.name.as_deref() == Some(name) && event.reason.as_deref() == Some(reason)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_a_findable_netns_is_reported_and_retried_while_the_others_proceed() {
    let mut cluster = Cluster::start(1).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[(LABEL, "ambient")]).await.unwrap();
    let server =
        cluster.add_pod(0, &PodTemplate::new("shop", "server").service_account("server")).await.unwrap();
    // A Pod object that says Running, with no process on the node yet (a kubelet would not
    // do this for long; a pod whose sandbox is being torn down looks the same).
    let ghost_template = PodTemplate::new("shop", "ghost").service_account("ghost");
    let ghost = cluster.kubelet().create_pod(&ghost_template, "node0").await.unwrap();
    let ghost_uid = ghost.metadata.uid.unwrap();
    cluster.kubelet().mark_running("shop", "ghost", &["10.244.0.250".parse().unwrap()]).await.unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();

    // The other pod proceeds; the ghost is retried (two attempts seen), reported once.
    tokio::task::block_in_place(|| {
        let agent = mesh.agent(0);
        for _ in 0..2 {
            agent
                .wait_for(|line| line.contains("cannot enroll yet") && line.contains("name=ghost"), WAIT)
                .unwrap();
        }
    });
    let dump = mesh.agent_get(0, "/config_dump").unwrap();
    let pods = &apps::json_body(&dump)["pods"];
    let server_report = &pods[server.uid.as_str()];
    assert_eq!(
        (&server_report["name"], &server_report["state"]),
        (&"server".into(), &"enrolled".into()),
        "{dump}"
    );
    assert!(dump.contains("\"name\":\"ghost\"") && dump.contains("\"stage\":\"netns\""), "{dump}");
    let failed =
        weft_tests::eventually("the ghost's Warning event", WAIT, || {
            let client = cluster.client();
            async move {
                Some(events(client, "ghost", "WeftEnrollFailed").await).filter(|found| !found.is_empty())
            }
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "one Event per state change, not per retry: {failed:?}");
    let message = failed[0].message.clone().unwrap();
    assert!(message.contains("netns failed") && message.contains(&ghost_uid), "{message}");
    assert_eq!(failed[0].type_.as_deref(), Some("Warning"));

    // Its sandbox appears: the retry enrolls it.
    let pod = cluster.topology_mut().add_pod(0, "ghost", &ghost_uid).unwrap();
    cluster.kubelet().mark_running("shop", "ghost", &pod.addresses()).await.unwrap();
    tokio::task::block_in_place(|| {
        mesh.agent(0)
            .wait_for(|line| line.contains("enrolled") && line.contains("name=ghost"), WAIT)
            .unwrap();
    });
    let metrics = mesh.agent_get(0, "/metrics").unwrap();
    assert!(metrics.contains("weft_agent_enrolled_pods 2"), "{metrics}");
    // The node's pods are inventory: listed on the node-local admin port only.
    let monitoring = mesh.agent_endpoints(0).unwrap().monitoring;
    let public = apps::http_get_at(monitoring, "/config_dump").unwrap();
    assert!(public.starts_with("HTTP/1.1 404"), "{public}");
    let public = apps::http_get_at(monitoring, "/metrics").unwrap();
    assert!(public.contains("weft_agent_enrolled_pods 2"), "{public}");
    assert!(metrics.contains("weft_agent_datapath_events{event=\"redirected\"}"), "{metrics}");
    weft_tests::eventually("the ghost's Enrolled event", WAIT, || {
        let client = cluster.client();
        async move { Some(events(client, "ghost", "WeftEnrolled").await).filter(|found| !found.is_empty()) }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_pod_no_agent_captured_is_reached_in_plaintext_until_its_agent_reports_it() {
    let mut cluster = Cluster::start(2).await.unwrap();
    cluster.kubelet().ensure_namespace("shop", &[(LABEL, "ambient")]).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let flags = mesh.weftctl_flags(&cluster, &plane).unwrap();

    // Node 1's agent is down when a labelled pod starts there: nothing captures it.
    tokio::task::block_in_place(|| mesh.kill_agent(1)).unwrap();
    let late = cluster.add_pod(1, &PodTemplate::new("shop", "late").service_account("late")).await.unwrap();
    let _echo = apps::echo_server(&late, ECHO_PORT).unwrap();
    let to = SocketAddr::new(late.ipv4.into(), ECHO_PORT);
    tokio::task::block_in_place(|| {
        // Reachable (a tunnel would find no proxy listening for it), and said why.
        assert_eq!(apps::send(&client, to, "not captured").unwrap(), "not captured");
        mesh.ztunnel(0).wait_for(|line| line.contains("outbound passthrough closed"), WAIT).unwrap();
        let (ok, report) = apps::weftctl(&flags, &["check", "shop/late", "-o", "json"]).unwrap();
        assert!(!ok, "check passed a pod nobody captured: {report}");
        let findings: serde_json::Value = serde_json::from_str(&report).unwrap();
        let reported = findings.as_array().unwrap().iter().find(|f| f["check"] == "reported").unwrap();
        assert_eq!(reported["ok"], false, "{reported}");

        // Its agent returns, captures it and says so: from then on it is tunnelled to.
        mesh.start_agent(1).unwrap();
        mesh.wait_until_tunnelled(WAIT).unwrap();
        assert_eq!(apps::send(&client, to, "captured").unwrap(), "captured");
        let line = mesh.ztunnel(0).wait_for(|line| line.contains("outbound via HBONE closed"), WAIT).unwrap();
        assert!(line.contains("sa/late"), "{line}");
    });

    // A wrong annotation does not last: the agent puts back what is true.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client(), "shop");
    let tampered = serde_json::json!({ "metadata": { "annotations": { "weft.dev/redirection": null } } });
    pods.patch("late", &PatchParams::default(), &Patch::Merge(tampered)).await.unwrap();
    weft_tests::eventually("the agent to annotate its pod again", WAIT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("late").await.ok()?;
            weft_api::enrollment::Labels::Weft.captured(pod.metadata.annotations.as_ref()).then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_shutting_down_stays_in_the_mesh_until_its_containers_are_gone() {
    // Every part bound: what is left out of a pattern is dropped (stopped) at once.
    let Shop { cluster, client, server, echo: _echo, plane: _plane, mut mesh, canary, monitor, to } =
        Shop::start().await.unwrap();

    // Deleted with a grace period: terminating, its containers still running (no kubelet here
    // ends them). Its last connections still go through the tunnel.
    cluster.kubelet().begin_deleting_pod("shop", "server", 30).await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client(), "shop");
    let terminating = pods.get("server").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some(), "the server is not terminating");
    tokio::task::block_in_place(|| {
        // Once the client's proxy has heard of the deletion (the server turned unhealthy), the
        // server is still tunnelled to.
        let node0 = cluster.topology().nodes()[0].clone();
        let server_uid = server.uid.as_str();
        let known = || {
            let workloads = weft_tests::mesh::proxy_workloads(&node0).unwrap();
            workloads.into_iter().find(|workload| workload["uid"] == server_uid)
        };
        let deadline = std::time::Instant::now() + WAIT;
        let seen = loop {
            match known() {
                Some(workload) if workload["healthy"] == false => break workload,
                _ => {
                    assert!(std::time::Instant::now() < deadline, "the deletion never reached node0's proxy")
                }
            }
        };
        assert_eq!(seen["protocol"], "HBONE", "{seen}");
        assert_eq!(plaintext_frames(&monitor, &client, to, &canary), 0, "plaintext to a terminating pod");
        let line = mesh.ztunnel(0).wait_for(|line| line.contains("outbound via HBONE closed"), WAIT).unwrap();
        assert!(line.contains("sa/payments"), "{line}");
        let dump = apps::json_body(&mesh.agent_get(1, "/config_dump").unwrap());
        assert_eq!(dump["pods"][server_uid]["state"], "enrolled", "{dump}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_sandbox_is_recreated_is_captured_again_in_its_new_namespace() {
    let Shop {
        mut cluster,
        client,
        server: _server,
        echo: _echo,
        plane: _plane,
        mut mesh,
        canary,
        monitor,
        to,
    } = Shop::start().await.unwrap();
    tokio::task::block_in_place(|| {
        mesh.wait_until_tunnelled(WAIT).unwrap();
        assert_eq!(plaintext_frames(&monitor, &client, to, &canary), 0, "plaintext before the restart");
    });

    // The kubelet replaces the client's dead sandbox: the same uid and addresses, a new
    // namespace; then its container runs again. The client's pooled tunnel went with the old
    // namespace.
    let client = cluster.topology_mut().recreate_sandbox(&client.uid).unwrap();
    cluster.kubelet().report_restarted("shop", "client", 1).await.unwrap();
    tokio::task::block_in_place(|| {
        let agent = mesh.agent(0);
        agent
            .wait_for(|line| line.contains("sandbox was recreated") && line.contains("name=client"), WAIT)
            .unwrap();
        agent.wait_for(|line| line.contains(" enrolled") && line.contains("name=client"), WAIT).unwrap();
        assert_eq!(
            plaintext_frames(&monitor, &client, to, &canary),
            0,
            "the new sandbox's traffic escaped the mesh"
        );
        assert_eq!(proxy_setup(&client), [true; 3], "the new sandbox lacks the proxy's setup");
    });
    let pinned = cluster.topology().nodes()[0].bpffs_root.join("links");
    let enrolled_once = |mesh: &Mesh| {
        let dump = apps::json_body(&mesh.agent_get(0, "/config_dump").unwrap());
        assert_eq!(dump["pods"][client.uid.as_str()]["state"], "enrolled", "{dump}");
        let sk_lookup_links = std::fs::read_dir(&pinned)
            .unwrap()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("sk_lookup-"))
            .count();
        assert_eq!(sk_lookup_links, 1, "the old sandbox's inbound capture is still pinned");
    };
    enrolled_once(&mesh);

    // The same while the node's agent is down: the restarted agent enrolls the new namespace,
    // and ztunnel, handed the pod's uid with another namespace, replaces its proxy there.
    mesh.kill_agent(0).unwrap();
    let client = cluster.topology_mut().recreate_sandbox(&client.uid).unwrap();
    cluster.kubelet().report_restarted("shop", "client", 2).await.unwrap();
    tokio::task::block_in_place(|| {
        mesh.start_agent(0).unwrap();
        assert_eq!(
            plaintext_frames(&monitor, &client, to, &canary),
            0,
            "the sandbox recreated while no agent ran escaped the mesh"
        );
    });
    enrolled_once(&mesh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_before_enrollment_are_reported_as_outside_the_mesh() {
    let mut cluster = Cluster::start(2).await.unwrap();
    let client =
        cluster.add_pod(0, &PodTemplate::new("shop", "client").service_account("cart")).await.unwrap();
    let server =
        cluster.add_pod(1, &PodTemplate::new("shop", "server").service_account("payments")).await.unwrap();
    let _echo = apps::echo_server(&server, ECHO_PORT).unwrap();
    let plane = ControlPlane::start(&cluster).await.unwrap();
    let mut mesh = Mesh::start_managed(&cluster, &plane).await.unwrap();
    let flags = mesh.weftctl_flags(&cluster, &plane).unwrap();
    // Opened while the namespace is not in the mesh: it keeps going around the proxy.
    let to = SocketAddr::new(server.ipv4.into(), ECHO_PORT);
    let mut chat = tokio::task::block_in_place(|| apps::Chat::open(&client, to)).unwrap();

    label_namespace(cluster.client(), "shop", Some("ambient")).await;
    tokio::task::block_in_place(|| {
        // Both nodes' agents: tunnelled-to-all-enrolled holds vacuously for an agent that has
        // not enrolled its pod yet.
        for (node, name) in [(0, "name=client"), (1, "name=server")] {
            let enrolled = |line: &str| line.contains("enrolled") && line.contains(name);
            mesh.agent(node).wait_for(enrolled, WAIT).unwrap();
        }
        mesh.wait_until_tunnelled(WAIT).unwrap();
        assert_eq!(chat.say("still open").unwrap(), "still open");
        for (node, pod) in [(0, &client), (1, &server)] {
            let dump = apps::json_body(&mesh.agent_get(node, "/config_dump").unwrap());
            assert_eq!(dump["pods"][pod.uid.as_str()]["preexisting_connections"], 1, "{}: {dump}", pod.name);
        }
        let (ok, report) = apps::weftctl(&flags, &["check", "shop/client", "-o", "json"]).unwrap();
        assert!(!ok, "check passed a pod with a connection outside the mesh: {report}");
        let findings: serde_json::Value = serde_json::from_str(&report).unwrap();
        let preexisting = findings.as_array().unwrap().iter().find(|f| f["check"] == "preexisting").unwrap();
        assert!(preexisting["detail"].as_str().unwrap().starts_with("1 connection"), "{preexisting}");

        // Restarted (an upgrade), the agents enroll both pods again while the mesh carries a
        // connection between them. Its ends in the pods are the mesh's: the client's captured
        // one and the proxy's that accepted it, the proxy's tunnel, the proxy's delivery into
        // the server and the server's end of it. Only the connection from before is counted.
        let mut meshed = apps::Chat::open(&client, to).unwrap();
        assert_eq!(meshed.say("meshed").unwrap(), "meshed");
        for node in 0..2 {
            mesh.agent(node).terminate().unwrap();
            mesh.agent(node).wait_for(|line| line.contains("exiting; capture stays pinned"), WAIT).unwrap();
            mesh.start_agent(node).unwrap();
        }
        for (node, pod) in [(0, &client), (1, &server)] {
            // The new agent's word on the pod, once it enrolled it again.
            let report = || {
                apps::json_body(&mesh.agent_get(node, "/config_dump").unwrap())["pods"][pod.uid.as_str()]
                    .clone()
            };
            weft_tests::until("the restarted agent to enroll the pod", WAIT, || {
                report()["state"] == "enrolled"
            })
            .unwrap();
            let report = report();
            assert_eq!(report["preexisting_connections"], 1, "{}: {report}", pod.name);
        }
        assert_eq!(meshed.say("still meshed").unwrap(), "still meshed");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_weft_returns_pods_to_plain_networking_unrestarted_and_a_restart_keeps_capture() {
    let Shop { cluster, client, server: _server, echo: _echo, plane: _plane, mut mesh, canary, monitor, to } =
        Shop::start().await.unwrap();
    let pause_pids = std::fs::read_to_string(client.cgroup.join("cgroup.procs")).unwrap();
    let pins = cluster.topology().nodes()[0].bpffs_root.clone();
    tokio::task::block_in_place(|| {
        assert_eq!(plaintext_frames(&monitor, &client, to, &canary), 0);
        // A restart or a rolling update (the agent's namespace stays): capture stays.
        mesh.agent(0).terminate().unwrap();
        mesh.agent(0).wait_for(|line| line.contains("exiting; capture stays pinned"), WAIT).unwrap();
        assert!(pins.join("maps").is_dir(), "a restarting agent removed capture");
        assert_eq!(plaintext_frames(&monitor, &client, to, &canary), 0, "plaintext while the agent restarts");
        mesh.start_agent(0).unwrap();
    });

    // `kubectl delete -k manifests/`: the agents' namespace goes, the agents are stopped.
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    namespaces.delete("weft-system", &Default::default()).await.unwrap();
    tokio::task::block_in_place(|| {
        for node in 0..2 {
            mesh.agent(node).terminate().unwrap();
            mesh.agent(node).wait_for(|line| line.contains("capture removed"), WAIT).unwrap();
        }
        assert!(!pins.exists(), "capture is still pinned");
        assert_eq!(proxy_setup(&client), [false; 3]);
        assert!(
            plaintext_frames(&monitor, &client, to, &canary) > 0,
            "the pod is not back to plain networking"
        );
    });
    let after = std::fs::read_to_string(client.cgroup.join("cgroup.procs")).unwrap();
    assert_eq!(after, pause_pids, "the pod was restarted");
}
