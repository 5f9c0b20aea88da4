//! `weft-waypoint-bench`: what a waypoint adds to the mesh path, in one run on the harness's
//! cluster (a current API server, the control plane, node proxies, and a waypoint the control
//! plane deploys for its Gateway). A client on node 0 POSTs 1 KB to an HTTP server on node 1 at
//! a fixed rate (open loop, pipelined on one connection), interleaved A B C D A B C D …: `l4`, to
//! a Service that opts out of the waypoint (HBONE between the node proxies), `relayed`, to a
//! Service behind it whose port declares TCP, so the waypoint relays its bytes without reading
//! them (its two HBONE legs alone: what any HTTP handling adds to), `waypoint`, to a Service
//! behind it (client node proxy → waypoint → server node proxy, each hop HBONE), and
//! `policies`, to a Service behind it with every policy a waypoint applies: a JWT verified
//! (ES256) and an AuthorizationPolicy on its principal and path, a fault injected for 0 % of
//! requests, a rate limit far above the load, a circuit breaker with outlier detection, round
//! robin. Prints the latency figures with ratios to `l4`, what the waypoint adds at p50 and p99,
//! and the waypoint's CPU per 1000 requests/s and resident memory. Figures, not a test.
//! `cargo xtask bench --waypoint` builds in release and runs it.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use k8s_openapi::{
    api::core::v1::{Service, ServicePort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use weft_tests::{
    apps,
    bench::{
        RssPeak, field, machine, process_cpu_seconds,
        report::{Figure, Report},
        testpod,
    },
    cluster::Cluster,
    control::{self, ControlPlane},
    kubelet::PodTemplate,
    mesh::{self, Mesh},
    waypoint::{Waypoint, create_object},
};
use weft_waypoint::jwt::testing::{Signer, jwks};

const SERVER_PORT: u16 = 8080;
const NAMESPACE: &str = "bench";

#[derive(Debug, Parser)]
struct Args {
    /// Interleaved repeats of each mode.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of each run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const LATENCY: [(&str, Figure); 4] = [
    ("p50_us", Figure { key: "http_p50_us", label: "1 KB HTTP POST at fixed rate, p50 µs", ratio: true }),
    ("p90_us", Figure { key: "http_p90_us", label: "  p90 µs", ratio: true }),
    ("p99_us", Figure { key: "http_p99_us", label: "  p99 µs", ratio: true }),
    ("p999_us", Figure { key: "http_p999_us", label: "  p99.9 µs", ratio: true }),
];
const WAYPOINT_VCPU: Figure =
    Figure { key: "waypoint_vcpu_per_1000_rps", label: "  waypoint vCPU per 1000 rps", ratio: false };
const WAYPOINT_RSS: Figure =
    Figure { key: "waypoint_rss_peak_kib", label: "  waypoint RSS peak, KiB", ratio: false };
/// Its anonymous part: heap and stacks (the rest is the binary's pages, shared with the page cache).
const WAYPOINT_ANON: Figure =
    Figure { key: "waypoint_anon_peak_kib", label: "    of which anonymous, KiB", ratio: false };

/// Puts every policy a waypoint applies on Service `guarded`; returns the token its requests
/// carry.
async fn guard(client: kube::Client) -> anyhow::Result<String> {
    let signer = Signer::es256("bench");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let token = signer.token(&serde_json::json!({ "iss": "bench", "sub": "client", "exp": now + 24 * 3600 }));
    let target = serde_json::json!([{ "group": "", "kind": "Service", "name": "guarded" }]);
    let security = |kind, plural| ("security.weft.dev/v1", kind, plural);
    let networking = |kind, plural| ("networking.weft.dev/v1alpha1", kind, plural);
    let policies = [
        (
            security("RequestAuthentication", "requestauthentications"),
            serde_json::json!({ "targetRefs": target, "jwtRules": [{ "issuer": "bench", "jwks": jwks(&[&signer]) }] }),
        ),
        (
            security("AuthorizationPolicy", "authorizationpolicies"),
            serde_json::json!({ "targetRefs": target, "rules": [{
             "from": [{ "source": { "requestPrincipals": ["bench/*"] } }],
             "to": [{ "operation": { "paths": ["/bytes/*"] } }] }] }),
        ),
        (
            networking("FaultInjectionPolicy", "faultinjectionpolicies"),
            serde_json::json!({ "targetRefs": target, "abort": { "httpStatus": 503, "percentage": { "value": 0 } } }),
        ),
        (
            networking("RateLimitPolicy", "ratelimitpolicies"),
            serde_json::json!({ "targetRefs": target, "local": { "requests": 1_000_000, "unit": "Second" } }),
        ),
        (
            networking("CircuitBreakerPolicy", "circuitbreakerpolicies"),
            serde_json::json!({ "targetRefs": target, "maxRequests": 100_000, "maxConnections": 10_000,
                                "maxPendingRequests": 1_000, "outlierDetection": { "consecutive5xxErrors": 5 } }),
        ),
        (
            networking("LoadBalancerPolicy", "loadbalancerpolicies"),
            serde_json::json!({ "targetRefs": target, "type": "RoundRobin" }),
        ),
    ];
    for (kind, spec) in policies {
        create_object(client.clone(), kind, NAMESPACE, "bench", spec).await?;
    }
    Ok(token)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cluster = Cluster::start(2).await?;
    control::install_gateway_api_crds(cluster.client()).await?;
    let labels = [("weft.dev/dataplane-mode", "ambient"), ("weft.dev/use-waypoint", "waypoint")];
    cluster.kubelet().ensure_namespace(NAMESPACE, &labels).await?;
    let client = cluster.add_pod(0, &PodTemplate::new(NAMESPACE, "client").service_account("client")).await?;
    // The server's workload opts out too: the waypoint is the Services' (as Istio's default,
    // `waypoint-for: service`), so the destination takes the l4 path's connections as well.
    let server = PodTemplate::new(NAMESPACE, "server")
        .service_account("server")
        .label("app", "server")
        .label("weft.dev/use-waypoint", "none");
    let server = cluster.add_pod(1, &server).await?;
    let _server = apps::http_echo(&server, SERVER_PORT, "server")?;
    let port = ServicePort {
        port: 80,
        target_port: Some(IntOrString::Int(SERVER_PORT.into())),
        ..Default::default()
    };
    let behind = cluster.create_service(NAMESPACE, "behind", &[("app", "server")], port.clone()).await?;
    let around = cluster.create_service(NAMESPACE, "around", &[("app", "server")], port.clone()).await?;
    let guarded = cluster.create_service(NAMESPACE, "guarded", &[("app", "server")], port.clone()).await?;
    // Declared TCP (Istio reads `appProtocol`): relayed at L4 by the waypoint.
    let tcp = ServicePort { app_protocol: Some("tcp".into()), ..port };
    let relayed = cluster.create_service(NAMESPACE, "relayed", &[("app", "server")], tcp).await?;
    // The namespace's waypoint for every Service but this one.
    let opt_out = serde_json::json!({ "metadata": { "labels": { "weft.dev/use-waypoint": "none" } } });
    Api::<Service>::namespaced(cluster.client(), NAMESPACE)
        .patch("around", &PatchParams::default(), &Patch::Merge(&opt_out))
        .await?;
    let plane = ControlPlane::start(&cluster).await?;
    // Its CRDs are installed now.
    let token = guard(cluster.client()).await?;
    let mut waypoint = Waypoint::start(&mut cluster, &plane, NAMESPACE, "waypoint", 0).await?;
    let _mesh = Mesh::start_managed(&cluster, &plane).await?;
    let wait = std::time::Duration::from_secs(30);
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let client_node = &cluster.topology().nodes()[0].netns;
        for service in ["around", "waypoint"] {
            let key = format!("{NAMESPACE}/{service}.{NAMESPACE}.svc.cluster.local");
            mesh::wait_for_endpoints(client_node, &key, 1, wait)?;
        }
        for service in ["relayed", "behind", "guarded"] {
            let key = format!("{NAMESPACE}/{service}.{NAMESPACE}.svc.cluster.local");
            mesh::wait_for_endpoints(&waypoint.pod().netns, &key, 1, wait)?;
        }
        // Every policy in force before the load: a request without the token is refused.
        let guarded = SocketAddr::new(guarded, 80);
        let bearer = format!("authorization:Bearer {token}");
        weft_tests::until("the policies to reach the waypoint", wait, || {
            let refused = apps::http_requests(&client, guarded, "/bytes/8", &[], 1)
                .is_ok_and(|tally| tally.contains("1 status=403"));
            let taken = apps::http_requests(&client, guarded, "/bytes/8", &[&bearer], 1)
                .is_ok_and(|tally| tally.contains("1 status=200"));
            refused && taken
        })
    })?;
    let pid = waypoint.process().pid();
    let idle = weft_tests::bench::resident_kib(pid)?;

    let modes = [
        ("l4", SocketAddr::new(around, 80)),
        ("relayed", SocketAddr::new(relayed, 80)),
        ("waypoint", SocketAddr::new(behind, 80)),
        ("policies", SocketAddr::new(guarded, 80)),
    ];
    let header = format!("authorization:Bearer {token}");
    let figures: Vec<Figure> = LATENCY
        .iter()
        .map(|(_, figure)| *figure)
        .chain([WAYPOINT_VCPU, WAYPOINT_RSS, WAYPOINT_ANON])
        .collect();
    let mut report = Report::new(&modes.map(|(name, _)| name), &figures);
    let (rate, seconds) = (args.rate.to_string(), args.seconds.to_string());
    for repeat in 1..=args.repeats {
        eprintln!("repeat {repeat} of {}", args.repeats);
        for (name, to) in modes {
            let before = process_cpu_seconds(pid)?;
            let peak = RssPeak::start(vec![pid]);
            let mut load = vec!["http-openloop", "--rate", &rate, "--seconds", &seconds];
            if name == "policies" {
                load.extend(["--header", &header]);
            }
            let out = tokio::task::block_in_place(|| testpod(&client, &load, to))
                .with_context(|| format!("{name}: the load"))?;
            let (peaks, used) = (peak.finish(), process_cpu_seconds(pid)? - before);
            for (key, figure) in LATENCY {
                report.record(name, figure, field(&out, key)?);
            }
            if name != "l4" {
                report.record(name, WAYPOINT_VCPU, used / args.seconds / (f64::from(args.rate) / 1000.0));
                report.record(name, WAYPOINT_RSS, peaks[0].total as f64);
                report.record(name, WAYPOINT_ANON, peaks[0].anonymous as f64);
            }
        }
    }

    println!(
        "a waypoint on the mesh path, {} interleaved repeats of {} requests/s for {} s: median [min–max] ×ratio to l4",
        args.repeats, args.rate, args.seconds
    );
    print!("{}", report.table());
    let json = report.json();
    let added = |key: &str| -> anyhow::Result<f64> {
        let median = |mode: &str| json["figures"][key]["modes"][mode]["median"].as_f64().context("a median");
        Ok(median("waypoint")? - median("l4")?)
    };
    let (added_p50, added_p99) = (added("http_p50_us")?, added("http_p99_us")?);
    println!("the waypoint adds {added_p50:.0} µs at p50 and {added_p99:.0} µs at p99 (medians)");
    println!("waypoint RSS idle: {} KiB ({} anonymous)", idle.total, idle.anonymous);
    println!("{}", machine());
    if let Some(path) = &args.json {
        let mut json = json;
        json["added_us"] = serde_json::json!({ "p50": added_p50, "p99": added_p99 });
        json["waypoint_rss_idle_kib"] = serde_json::json!(idle.total);
        json["waypoint_anon_idle_kib"] = serde_json::json!(idle.anonymous);
        json["machine"] = serde_json::json!(machine());
        json["settings"] = serde_json::json!(format!("{args:?}"));
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}
