//! I5 under load, end to end: the real `sluice controller` against the test cluster while the
//! objects one Canary watches (its target Deployment, its stable Service, its HTTPRoute) take a
//! burst of 10,000 metadata updates, each a watch event that asks for a reconcile of the Canary.
//!
//! The controller's trigger queues merge a trigger for an object already queued, so the burst
//! must leave them bounded by the objects they name (one Canary: at most one entry, sampled from
//! `/metrics` while the burst runs); a merged trigger must cost no reconcile and no event more
//! than one; the controller must take the events as they come (no backlog after the last write)
//! without calling the API for metadata it does not read; its memory must stay within the budget
//! (`/proc/<pid>/status`); and it must stay responsive: a template change right after the burst
//! is noticed within DESIGN.md section 10's bound, and rolled out step by step with I1 and I4
//! holding on the watch history.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::{History, image};
use support::{Env, Hold, NAMESPACE, app_manifests, http_route_resource, phase};
use tokio::io::AsyncBufReadExt;

const IMAGE_1: &str = "registry.local/web:1";
const IMAGE_2: &str = "registry.local/web:2";
/// Watch events in the burst: one metadata update each, of the three objects the Canary watches
/// (see [`burst`]).
const BURST: usize = 10_000;
/// Updates in flight at once: as fast as the test cluster takes them.
const WRITERS: usize = 16;
/// The burst must be written within this, or the test fails. The test cluster takes about 1 ms
/// per Service update, 5 ms per Deployment update and 10 ms per HTTPRoute update (schema
/// validation) in a debug build: some 25 s for the burst on a quiet 2-core machine.
const BURST_DEADLINE: Duration = Duration::from_secs(180);
/// The controller must have taken every event of the burst this soon after its last write: it
/// keeps up, no backlog builds (it takes them within about a second even on a loaded machine).
const DRAINED_WITHIN: Duration = Duration::from_secs(10);
/// Reconciles an Idle Canary may run during the burst besides those its triggers ask for (a retry
/// the controller schedules itself, e.g. after reading a stale cache).
const REQUEUES: usize = 5;
/// DESIGN.md section 10: a new revision is noticed within 1 s of the template change.
const NOTICED_WITHIN: Duration = Duration::from_secs(1);
/// The spec's progress deadline: the bound on the whole rollout after the burst.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);
/// Peak resident memory of the controller (VmHWM), in KiB. DESIGN.md section 10 budgets 64 MiB
/// for 1,000 Canaries; one Canary under a burst must not cost what a thousand cost at rest. (The
/// debug build peaks near 40 MiB, nearly all of it there before the burst: the test prints it.)
const PEAK_RSS_KIB: u64 = 64 * 1024;
/// Growth of resident memory over the burst (VmHWM after it, less VmRSS before it), in KiB: what
/// a queue growing with the events would show first. 10,000 queued triggers alone are about
/// 1 MiB; decoding the events costs some transient memory, returned to the allocator.
const BURST_GROWTH_KIB: u64 = 16 * 1024;

fn canary_manifest(prometheus: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: web}}}}}}
  strategy: {{canary: {{stepWeights: [20, 50]}}}}
  analysis:
    interval: 1s
    threshold: 2
    progressDeadline: {deadline}s
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#,
        deadline = PROGRESS_DEADLINE.as_secs(),
    )
}

/// The controller as `Env::start_controller` runs it, but logging JSON to a pipe this reads, to
/// learn the address its `/metrics` is served on (it binds port 0). Returns that address.
async fn start_controller(env: &mut Env) -> String {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("controller")
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig_path())
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
        .env(
            "RUST_LOG",
            std::env::var("SLUICE_E2E_RUST_LOG").unwrap_or_else(|_| "sluice=debug,info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sluice controller starts");
    let stderr = child.stderr.take().expect("stderr piped");
    env.controller = Some(child);
    let (bound, learnt) = tokio::sync::oneshot::channel();
    // Reads the log to its end, so the controller never blocks on a full pipe.
    tokio::spawn(async move {
        let echo = std::env::var_os("SLUICE_E2E_LOGS").is_some();
        let mut bound = Some(bound);
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("{line}");
            }
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["message"] == "serving metrics"
                && let (Some(addr), Some(bound)) = (entry["addr"].as_str(), bound.take())
            {
                let _ = bound.send(addr.to_owned());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), learnt)
        .await
        .expect("the controller logs its metrics address")
        .expect("the controller logs its metrics address")
}

/// The controller's `/metrics`, parsed into (series, value).
async fn scrape(addr: &str) -> Vec<(String, f64)> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `series` (name and labels exactly as exposed), 0 when absent.
fn sample(metrics: &[(String, f64)], series: &str) -> f64 {
    metrics
        .iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

/// The counters the test reads, at one moment.
#[derive(Debug, Clone, Copy)]
struct Counts {
    reconciles: f64,
    triggers: f64,
    coalesced: f64,
    /// Every API call the controller made, of any verb and resource.
    api_calls: f64,
}

impl Counts {
    fn of(metrics: &[(String, f64)]) -> Counts {
        Counts {
            reconciles: sample(metrics, "sluice_reconciles_total"),
            triggers: sample(metrics, r#"sluice_triggers_total{queue="canary"}"#),
            coalesced: sample(
                metrics,
                r#"sluice_triggers_coalesced_total{queue="canary"}"#,
            ),
            api_calls: metrics
                .iter()
                .filter(|(s, _)| s.starts_with("sluice_api_calls_total{"))
                .map(|(_, v)| v)
                .sum(),
        }
    }
}

/// Both trigger queues' depth in `metrics`.
fn depths(metrics: &[(String, f64)]) -> [f64; 2] {
    ["canary", "optin"].map(|queue| {
        sample(
            metrics,
            &format!(r#"sluice_trigger_queue_depth{{queue="{queue}"}}"#),
        )
    })
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Writes the burst: `BURST` annotation updates, `WRITERS` at a time, one in ten of the target
/// Deployment, one in ten of the HTTPRoute and the rest of the stable Service (the cheapest for
/// the test cluster to take). Every one of them is a watch event the controller maps to the
/// Canary, through each of the three ways a cached object names it.
async fn burst(client: kube::Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client, NAMESPACE, &http_route_resource());
    let params = PatchParams::default();
    let written = futures::stream::iter(0..BURST)
        .map(|i| {
            let patch =
                json!({"metadata": {"annotations": {"test.sluice.dev/burst": i.to_string()}}});
            let (deployments, services, routes, params) =
                (&deployments, &services, &routes, &params);
            async move {
                let patch = Patch::Merge(&patch);
                match i % 10 {
                    0 => deployments.patch("web", params, &patch).await.map(drop),
                    5 => routes.patch("web", params, &patch).await.map(drop),
                    _ => services.patch("web", params, &patch).await.map(drop),
                }
                .unwrap_or_else(|error| panic!("burst update {i}: {error}"));
            }
        })
        .buffer_unordered(WRITERS)
        .count();
    let written = tokio::time::timeout(BURST_DEADLINE, written)
        .await
        .unwrap_or_else(|_| panic!("the burst of {BURST} updates took over {BURST_DEADLINE:?}"));
    assert_eq!(written, BURST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10000_watch_events_keeps_the_controller_bounded_and_responsive() {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&app_manifests("web", IMAGE_1, 2)).await;
    env.apply(&canary_manifest(&prometheus.url())).await;
    let metrics_addr = start_controller(&mut env).await;
    let pid = env
        .controller
        .as_ref()
        .and_then(|c| c.id())
        .expect("controller pid");
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    // Adoption's writes and their watch events settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = Counts::of(&scrape(&metrics_addr).await);
    let rss_before = proc_status_kib(pid, "VmRSS");

    // The burst, with the queues' depth sampled while it runs.
    let started = Instant::now();
    let sampling = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn({
        let addr = metrics_addr.clone();
        let mut stop = sampling.1.clone();
        async move {
            let mut deepest = [0.0f64; 2];
            let mut samples = 0;
            while !*stop.borrow() {
                let depth = depths(&scrape(&addr).await);
                deepest = [deepest[0].max(depth[0]), deepest[1].max(depth[1])];
                samples += 1;
                let _ = tokio::time::timeout(Duration::from_millis(20), stop.changed()).await;
            }
            (deepest, samples)
        }
    });
    burst(env.client()).await;
    let written_in = started.elapsed();
    // The controller has taken every event once its counts stop moving: two scrapes half a
    // second apart that agree.
    let mut last = before;
    let after = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = Counts::of(&scrape(&metrics_addr).await);
        let settled = now.triggers - before.triggers >= BURST as f64
            && now.triggers == last.triggers
            && now.reconciles == last.reconciles;
        if settled {
            break now;
        }
        assert!(
            started.elapsed() < written_in + DRAINED_WITHIN,
            "the controller still takes events {DRAINED_WITHIN:?} after the burst's last write: \
             {now:?} (before the burst {before:?})"
        );
        last = now;
    };
    let drained_in = started.elapsed() - written_in;
    let _ = sampling.0.send(true);
    let (deepest, samples) = sampler.await.expect("sampler");
    let end_depths = depths(&scrape(&metrics_addr).await);
    let peak_rss = proc_status_kib(pid, "VmHWM");
    if std::env::var_os("SLUICE_E2E_METRICS").is_some() {
        for (series, value) in scrape(&metrics_addr).await {
            eprintln!("{series} {value}");
        }
    }

    let triggers = after.triggers - before.triggers;
    let coalesced = after.coalesced - before.coalesced;
    let reconciles = after.reconciles - before.reconciles;
    eprintln!(
        "burst of {BURST} updates written in {written_in:?}, taken {drained_in:?} after its last \
         write: {triggers} triggers, {coalesced} merged in the queue, {reconciles} reconciles; \
         deepest queues (canary, optin) {deepest:?} over {samples} samples; RSS {rss_before} KiB \
         before, peak {peak_rss} KiB"
    );
    assert!(
        triggers >= BURST as f64,
        "every update of the burst asked for a reconcile of the Canary ({triggers} triggers)"
    );
    assert!(
        samples > 0 && deepest[0] <= 1.0 && deepest[1] <= 1.0,
        "one Canary, one target: each queue holds at most one entry (deepest {deepest:?})"
    );
    assert_eq!(end_depths, [0.0, 0.0], "the queues are drained");
    assert!(
        reconciles <= triggers - coalesced + REQUEUES as f64,
        "{reconciles} reconciles for {triggers} triggers of which {coalesced} were merged: a \
         merged trigger cost a reconcile, or one event woke several"
    );
    assert!(
        reconciles <= BURST as f64,
        "{reconciles} reconciles for {BURST} events: more than one per event"
    );
    assert_eq!(
        after.api_calls - before.api_calls,
        0.0,
        "metadata the controller does not read made it call the API"
    );
    assert!(
        peak_rss <= PEAK_RSS_KIB,
        "peak RSS {peak_rss} KiB over the budget of {PEAK_RSS_KIB} KiB"
    );
    assert!(
        peak_rss.saturating_sub(rss_before) <= BURST_GROWTH_KIB,
        "the burst grew the controller by {} KiB (RSS {rss_before} KiB before, peak {peak_rss} \
         KiB), over {BURST_GROWTH_KIB} KiB",
        peak_rss.saturating_sub(rss_before)
    );

    // Responsive after it: a template change is noticed within the bound and rolled out.
    let history = History::record_on(&env.cluster);
    env.set_image("web", IMAGE_2).await;
    let rollout = env
        .eventually(
            "the new revision to be promoted after the burst",
            PROGRESS_DEADLINE,
            || async {
                let canary = env.canary("web").await?;
                let revision = canary["status"]["revision"].as_str();
                (phase(&canary) == "Succeeded"
                    && revision.is_some()
                    && canary["status"]["stableRevision"].as_str() == revision)
                    .then_some(canary)
            },
        )
        .await;
    let versions = history.versions();
    let changed = versions
        .iter()
        .find(|v| v.kind == "Deployment" && v.name == "web" && image(&v.object) == Some(IMAGE_2))
        .expect("the template change in the history");
    let noticed = versions
        .iter()
        .find(|v| {
            v.kind == "Canary"
                && v.name == "web"
                && v.object["status"]["revision"] == rollout["status"]["revision"]
        })
        .expect("the Canary taking the new revision in the history");
    let noticed_in = history
        .written_at(noticed)
        .duration_since(history.written_at(changed));
    eprintln!("the template change after the burst was noticed in {noticed_in:?}");
    assert!(
        noticed_in <= jiff::SignedDuration::try_from(NOTICED_WITHIN).expect("bound"),
        "the template change (rv {}) was noticed {noticed_in:?} later (rv {}), over {NOTICED_WITHIN:?}",
        changed.rv,
        noticed.rv
    );
    assert_eq!(history.route_weights("web"), vec![0, 20, 50, 0]);
    history.assert_i1("web");
    history.assert_i4("web", Duration::from_secs(1));
}
