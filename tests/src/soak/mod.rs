//! The soak (`cargo xtask soak --minutes N`, binary `weft-soak`): the mesh on the harness's
//! cluster under steady traffic while faults follow one another — pod churn with address
//! reuse, namespace label flips, policy pushes, leaf certificates that live 30 s, a root
//! rotation, and restarts of the control plane, each agent and each node proxy ([`faults`]).
//! It reports failed requests (those a fault explains apart from the rest), and how each
//! component's memory and descriptors grow ([`trend`]); it fails on an unexplained failure, a
//! fault whose own check failed, plaintext on the fabric, a connection from outside the mesh
//! answered by the STRICT server at any moment, a panic or key in a log, or growth.
pub mod evidence;
pub mod faults;
pub mod trend;

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    apps,
    invariants::Footprint,
    kubelet::PodTemplate,
    shop::Shop,
    soak::trend::{Sample, Slopes},
    topology::Pod,
};

/// Leaf certificates live this long, so every proxy renews every identity it holds twice a
/// minute throughout the soak.
pub const LEAF_SECONDS: u64 = 30;
/// The steady traffic: one request on a new connection this often.
pub const INTERVAL: Duration = Duration::from_millis(50);
/// The pod outside the mesh tries the STRICT server this often.
const OUTSIDER_INTERVAL: Duration = Duration::from_millis(200);
/// How often each component's memory and descriptors are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A fault begins this often (the next waits if one runs long).
const STEP: Duration = Duration::from_secs(15);
/// Samples from this long after a process's first sample are left out of its slopes (measured:
/// a node proxy's memory grows fastest over its first few pods and certificates, then ever
/// slower).
pub const WARM_UP: Duration = Duration::from_secs(120);
/// Growth that counts as flat: 1 MiB in ten minutes (a ten-minute soak measured 45 to 57 KiB
/// a minute for the node proxies and the control plane, still settling), and five descriptors
/// in ten minutes — a fault may leave a connection that stays (a pooled tunnel to a new peer, a
/// control plane's watch), but one leaked per churned pod, restart or policy push would pass
/// this within the run.
pub const FLAT_RSS_KIB_PER_MINUTE: f64 = 102.4;
pub const FLAT_DESCRIPTORS_PER_MINUTE: f64 = 0.5;

/// The running soak: the shop scene, and the pods its faults use.
#[derive(Debug)]
pub struct Scene {
    pub shop: Shop,
    /// In `shop` as service account `intruder`: the policy pushes deny and allow it.
    pub intruder: Pod,
    /// Alone in namespace `flip`, whose enrollment label the label flips take away and give back
    /// (out of the mesh, the server's STRICT node proxy must refuse it).
    pub flipper: Pod,
    /// In `shop` but out of the mesh (its label says so): it tries the server in plaintext
    /// throughout, and its node proxy in STRICT must refuse it every time, whatever the faults.
    pub outsider: Pod,
    /// Per component, the processes it ran as and their samples.
    pub components: Vec<Component>,
    pub began: Instant,
    /// How many pods the churn made so far (the next is `churn-<n>`).
    pub churned: u32,
}

impl Scene {
    /// The shop with short-lived leaves and a fast CA check, and the faults' pods.
    pub async fn start() -> anyhow::Result<Self> {
        let leaf = LEAF_SECONDS.to_string();
        let flags =
            ["--max-cert-ttl-seconds", &leaf, "--ca-check-seconds", "1", "--ca-rotation-margin-seconds", "2"];
        let mut shop = Shop::start_with(&flags).await?;
        // The server's node refuses plaintext (STRICT) for the whole soak, restarts included:
        // nothing without an identity may reach it, whatever the faults do.
        tokio::task::block_in_place(|| shop.mesh.restart_ztunnel_with(1, &["--strict"], 1))?;
        let template = PodTemplate::new("shop", "intruder").service_account("intruder");
        let intruder = shop.cluster.add_pod(0, &template).await?;
        shop.cluster
            .kubelet()
            .ensure_namespace(faults::FLIP_NAMESPACE, &[(crate::shop::LABEL, "ambient")])
            .await?;
        let template = PodTemplate::new(faults::FLIP_NAMESPACE, "flipper").service_account("flipper");
        let flipper = shop.cluster.add_pod(0, &template).await?;
        let template = PodTemplate::new("shop", "outsider")
            .service_account("outsider")
            .label(crate::shop::LABEL, "none");
        let outsider = shop.cluster.add_pod(0, &template).await?;
        tokio::task::block_in_place(|| {
            shop.mesh.wait_until_tunnelled_to(&[&shop.client, &intruder, &flipper], faults::WAIT)
        })?;
        let components = Vec::new();
        Ok(Self { shop, intruder, flipper, outsider, components, began: Instant::now(), churned: 0 })
    }

    /// The components and their processes now.
    fn running(&mut self) -> Vec<(String, u32)> {
        let mut components = vec![("control".to_owned(), self.shop.plane.process().pid())];
        for node in 0..self.shop.cluster.topology().nodes().len() {
            components.push((format!("agent node-{node}"), self.shop.mesh.agent(node).pid()));
            components.push((format!("ztunnel node-{node}"), self.shop.mesh.ztunnel(node).pid()));
        }
        components
    }

    /// One sample of every component (a process that just ended is skipped).
    pub fn sample(&mut self) {
        let at_seconds = self.began.elapsed().as_secs_f64();
        for (name, pid) in self.running() {
            let Ok(footprint) = Footprint::of(pid) else { continue };
            let sample = Sample {
                at_seconds,
                rss_kib: footprint.rss_kib as f64,
                descriptors: footprint.descriptors as f64,
            };
            let at = match self.components.iter().position(|component| component.name == name) {
                Some(at) => at,
                None => {
                    self.components.push(Component { name, lives: Vec::new() });
                    self.components.len() - 1
                }
            };
            let lives = &mut self.components[at].lives;
            match lives.last_mut() {
                Some(life) if life.pid == pid => life.samples.push(sample),
                _ => lives.push(Life { pid, samples: vec![sample] }),
            }
        }
    }

    /// Samples until `until`, every [`SAMPLE_EVERY`] (pacing, not synchronisation).
    pub fn sample_until(&mut self, until: Instant) {
        loop {
            self.sample();
            let next = Instant::now() + SAMPLE_EVERY;
            if next >= until {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                return;
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
    }
}

/// One of the mesh's processes as the soak followed it across restarts.
#[derive(Debug)]
pub struct Component {
    /// `control`, `agent node-0`, `ztunnel node-1`, …
    pub name: String,
    pub lives: Vec<Life>,
}

/// One process of a component, from its first sample to its last.
#[derive(Debug)]
pub struct Life {
    pub pid: u32,
    pub samples: Vec<Sample>,
}

/// How a component grew: over its longest life, after the warm-up.
#[derive(Debug)]
pub struct Growth {
    pub component: String,
    /// How many processes it ran as (restarts + 1).
    pub processes: usize,
    pub longest_minutes: f64,
    /// `None` when its longest life was too short to tell.
    pub slopes: Option<Slopes>,
}

impl Growth {
    fn of(component: &Component) -> Self {
        let longest = component.lives.iter().map(|life| &life.samples).max_by_key(|samples| samples.len());
        let longest_minutes = longest
            .and_then(|samples| Some((samples.last()?.at_seconds - samples.first()?.at_seconds) / 60.0))
            .unwrap_or(0.0);
        Self {
            component: component.name.clone(),
            processes: component.lives.len(),
            longest_minutes,
            slopes: longest.and_then(|samples| trend::slopes(samples, WARM_UP)),
        }
    }

    fn flat(&self) -> bool {
        self.slopes.is_none_or(|slopes| {
            slopes.rss_kib <= FLAT_RSS_KIB_PER_MINUTE && slopes.descriptors <= FLAT_DESCRIPTORS_PER_MINUTE
        })
    }
}

/// What a soak found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub minutes: f64,
    pub requests: u64,
    pub failed: u64,
    /// Failures a fault explains, by fault.
    pub explained: Vec<(String, u64)>,
    /// Failures no fault explains: `at_ms error (where it fell among the faults)`.
    pub unexplained: Vec<String>,
    /// What the components logged around the first of them ([`evidence`]).
    pub evidence: Vec<String>,
    /// Faults run, and those whose own check failed (with why).
    pub windows: Vec<trend::Window>,
    pub fault_failures: Vec<String>,
    pub canary_frames: u64,
    /// Plaintext connections the pod outside the mesh tried, and those the STRICT server's
    /// app answered (a breach).
    pub outsider_tries: u64,
    pub strict_breaches: u64,
    /// Log lines with a panic or private key material ([`crate::invariants`]).
    pub log_findings: Vec<String>,
    pub growth: Vec<Growth>,
}

impl Outcome {
    /// Why the soak failed, or `None`.
    pub fn verdict(&self) -> Option<String> {
        let mut why = Vec::new();
        if !self.unexplained.is_empty() {
            why.push(format!("{} failed requests no fault explains", self.unexplained.len()));
        }
        if !self.fault_failures.is_empty() {
            why.push(format!("{} faults failed their own check", self.fault_failures.len()));
        }
        if !self.log_findings.is_empty() {
            why.push(format!("{} log lines with a panic or a private key", self.log_findings.len()));
        }
        if self.canary_frames > 0 {
            why.push(format!("{} plaintext canary frames on the fabric", self.canary_frames));
        }
        if self.strict_breaches > 0 {
            why.push(format!(
                "{} connections from outside the mesh reached the STRICT server",
                self.strict_breaches
            ));
        }
        for growth in self.growth.iter().filter(|growth| !growth.flat()) {
            if let Some(slopes) = growth.slopes {
                why.push(format!(
                    "{} grows {:.0} KiB and {:.2} descriptors a minute",
                    growth.component, slopes.rss_kib, slopes.descriptors
                ));
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The report, as printed.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let ok = self.requests.saturating_sub(self.failed);
        let _ = writeln!(
            out,
            "soak: {:.1} min, {} requests on new connections, {ok} ok, {} failed: {} explained, {} unexplained",
            self.minutes,
            self.requests,
            self.failed,
            self.failed.saturating_sub(self.unexplained.len() as u64),
            self.unexplained.len()
        );
        for (fault, count) in &self.explained {
            let _ = writeln!(out, "  explained by {fault}: {count}");
        }
        for line in self.unexplained.iter().take(20) {
            let _ = writeln!(out, "  unexplained: {line}");
        }
        if !self.evidence.is_empty() {
            let _ = writeln!(out, "  the components' logs around the first:");
        }
        for line in &self.evidence {
            let _ = writeln!(out, "    {line}");
        }
        let mut counts: Vec<(String, u64)> = Vec::new();
        for window in &self.windows {
            count(&mut counts, &window.fault);
        }
        let listed: Vec<String> = counts.iter().map(|(fault, count)| format!("{fault} ×{count}")).collect();
        let _ = writeln!(out, "faults: {}", listed.join(", "));
        for failure in &self.fault_failures {
            let _ = writeln!(out, "  fault failed: {failure}");
        }
        let _ = writeln!(out, "plaintext canary frames on the fabric: {}", self.canary_frames);
        let _ = writeln!(
            out,
            "plaintext from outside the mesh to the STRICT server: {} tried, {} answered",
            self.outsider_tries, self.strict_breaches
        );
        for finding in &self.log_findings {
            let _ = writeln!(out, "  {finding}");
        }
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>13} {:>14} {:>16}",
            "component", "processes", "longest life", "RSS KiB/min", "descriptors/min"
        );
        for growth in &self.growth {
            let (rss, descriptors) = match growth.slopes {
                Some(slopes) => (format!("{:.1}", slopes.rss_kib), format!("{:.3}", slopes.descriptors)),
                None => ("too short".to_owned(), "too short".to_owned()),
            };
            let _ = writeln!(
                out,
                "{:<16} {:>9} {:>9.1} min {rss:>14} {descriptors:>16}",
                growth.component, growth.processes, growth.longest_minutes
            );
        }
        let _ = writeln!(
            out,
            "flat: at most {FLAT_RSS_KIB_PER_MINUTE} KiB and {FLAT_DESCRIPTORS_PER_MINUTE} descriptors a minute, over each component's longest life after its first {} s",
            WARM_UP.as_secs()
        );
        out
    }
}

/// How long a soak runs.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// Faults begin until this much time has passed.
    Minutes(f64),
    /// This many faults, however long they take (a test that needs each of them).
    Steps(usize),
}

/// Runs the soak for `length` and returns what it found. Call it on a multi-threaded runtime.
pub async fn run(length: Length) -> anyhow::Result<Outcome> {
    let mut scene = Scene::start().await?;
    let shop = &scene.shop;
    let steady = tokio::task::block_in_place(|| apps::steady(&shop.client, shop.to, &shop.canary, INTERVAL))?;
    // Plaintext by design: no canary in it.
    let outsider = tokio::task::block_in_place(|| {
        apps::steady(&scene.outsider, shop.to, "outsider", OUTSIDER_INTERVAL)
    })?;
    scene.began = Instant::now();
    let end = match length {
        Length::Minutes(minutes) => Some(scene.began + Duration::from_secs_f64(minutes * 60.0)),
        Length::Steps(_) => None,
    };
    let more = |step: usize| match length {
        Length::Minutes(_) => end.is_some_and(|end| Instant::now() < end),
        Length::Steps(steps) => step < steps,
    };
    let (mut windows, mut fault_failures) = (Vec::new(), Vec::new());
    let mut step = 0;
    while more(step) {
        let next = Instant::now() + STEP;
        let fault = faults::Fault::at(step);
        eprintln!("soak: {:>5.0} s: {}", scene.began.elapsed().as_secs_f64(), fault.name());
        let (window, outcome) = fault.run(&mut scene).await;
        if let Err(error) = outcome {
            eprintln!("soak: {} failed: {error:#}", window.fault);
            fault_failures.push(format!("{} at {} ms: {error:#}", window.fault, window.start_ms));
        }
        windows.push(window);
        step += 1;
        let until = end.map_or(next, |end| next.min(end)).max(Instant::now());
        tokio::task::block_in_place(|| scene.sample_until(until));
    }
    let minutes = scene.began.elapsed().as_secs_f64() / 60.0;
    let printed = end_steady(steady, "the steady traffic")?;
    let (outsider_tries, strict_breaches, _) = totals(&end_steady(outsider, "the outsider's traffic")?)?;
    tokio::task::block_in_place(|| scene.shop.monitor.settle(faults::WAIT))?;
    let mut outcome = Outcome {
        minutes,
        windows,
        fault_failures,
        canary_frames: scene.shop.monitor.canary_frames(),
        outsider_tries,
        strict_breaches,
        ..Outcome::default()
    };
    tally(&printed, &mut outcome)?;
    outcome.growth = scene.components.iter().map(Growth::of).collect();
    // Reported here rather than as the panic the scene's drop would raise with them.
    outcome.log_findings = crate::invariants::take_findings();
    Ok(outcome)
}

/// Ends steady traffic (`what`), and returns what it printed.
fn end_steady(mut steady: crate::process::Process, what: &str) -> anyhow::Result<String> {
    drop(steady.take_stdin()?);
    let (ended_well, printed) = tokio::task::block_in_place(|| steady.finish(Duration::from_secs(30)))
        .with_context(|| format!("ending {what}"))?;
    anyhow::ensure!(ended_well, "{what} failed: {printed}");
    Ok(printed)
}

/// Steady traffic's totals, from its last line: requests, answered, failed.
fn totals(printed: &str) -> anyhow::Result<(u64, u64, u64)> {
    let line =
        printed.lines().find(|line| line.starts_with("requests=")).context("no totals from the traffic")?;
    let field = |key: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.parse().ok())
            .with_context(|| format!("no {key} in {line}"))
    };
    Ok((field("requests=")?, field("ok=")?, field("failed=")?))
}

/// Reads the steady traffic's output into `outcome`: its counts, and each failure explained by
/// a fault or not.
fn tally(printed: &str, outcome: &mut Outcome) -> anyhow::Result<()> {
    (outcome.requests, _, outcome.failed) = totals(printed)?;
    for line in printed.lines().filter(|line| line.starts_with("failed at_ms=")) {
        let at_ms = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("at_ms=")?.parse::<u128>().ok())
            .context("a failure line without its time")?;
        if let Some(window) = trend::explained_by(&outcome.windows, at_ms) {
            count(&mut outcome.explained, &window.fault);
            continue;
        }
        if outcome.unexplained.is_empty() {
            let kept = std::env::var_os("WEFT_TEST_LOGS").map(std::path::PathBuf::from);
            let client = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("from="))
                .filter(|from| *from != "-");
            outcome.evidence = kept.map(|dir| evidence::around(&dir, at_ms, client)).unwrap_or_default();
        }
        let placed = trend::placed(&outcome.windows, at_ms);
        outcome.unexplained.push(format!("{} ({placed})", line.trim_start_matches("failed ")));
    }
    Ok(())
}

/// Adds one to `name`'s count in `counts`, in the order names first came.
fn count(counts: &mut Vec<(String, u64)>, name: &str) {
    match counts.iter_mut().find(|(counted, _)| counted == name) {
        Some((_, count)) => *count += 1,
        None => counts.push((name.to_owned(), 1)),
    }
}
