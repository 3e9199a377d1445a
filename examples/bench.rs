//! The performance benchmark of DESIGN.md section 10 (a measurement, not a timed test).
//!
//! Starts the test cluster (with the hold policy), the Deployment stand-in and a scripted
//! Prometheus, creates N Deployments + Services + HTTPRoutes + Canaries, runs the real
//! `sluice controller` binary and prints what it measured next to each budget:
//!
//! ```text
//! cargo build --release
//! cargo run --release --example bench -- --canaries 1000
//! ```
//!
//! The controller binary is `target/release/sluice` next to this example's own executable, or the
//! one `--sluice-bin PATH` names. Only the controller's own API calls are counted: the test cluster
//! keeps counts per client program (User-Agent `sluice/...`). The benchmark never tunes itself to a
//! budget; a missed budget is printed as `MISSED`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::{Value, json};
use sluice_testcluster::TestCluster;
use sluice_testcluster::kubelet;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus, QueryMatch};
use tokio::process::{Child, Command};

const NAMESPACE: &str = "bench";
const HOLD_POLICY: &str = include_str!("../deploy/admission-policy.yaml");
/// The analysis interval of every Canary, and the unit of the idle measurement.
const INTERVAL: Duration = Duration::from_secs(1);
/// How often adoption is checked (by listing every Canary); the adoption time is as precise.
const ADOPTION_POLL: Duration = Duration::from_millis(200);
/// How many intervals the idle window lasts.
const IDLE_INTERVALS: u32 = 5;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn app(i: usize) -> String {
    format!("app-{i:04}")
}

/// An app: Deployment, Service, HTTPRoute and a three-step Canary. `replicas` is 2 for the app
/// whose promotion is measured, so one of its steps needs a bigger canary (a scale write), and 1
/// for the rest.
fn manifests(name: &str, prometheus: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: app, image: "registry.local/{name}:1", ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 8080, targetPort: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{name: public, namespace: gateway-system}}]
  hostnames: ["{name}.example.com"]
  rules:
  - backendRefs: [{{name: {name}, port: 8080}}]
---
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: {name}}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: {name}}}}}}}
  strategy: {{canary: {{stepWeights: [20, 40, 60]}}}}
  analysis:
    interval: 1s
    threshold: 2
    progressDeadline: 5m
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
    - name: latency
      query: 'histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{{pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}])) by (le))'
      max: 0.5
"#
    )
}

struct Args {
    canaries: usize,
    sluice_bin: PathBuf,
}

fn args() -> BenchResult<Args> {
    let mut canaries = 100;
    let mut sluice_bin = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--canaries" => canaries = it.next().ok_or("--canaries needs a number")?.parse()?,
            "--sluice-bin" => {
                sluice_bin = Some(PathBuf::from(it.next().ok_or("--sluice-bin needs a path")?))
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if canaries < 2 {
        return Err("--canaries must be at least 2 (one promotes, one rolls back)".into());
    }
    let sluice_bin = match sluice_bin {
        Some(path) => path,
        // target/<profile>/examples/bench -> target/<profile>/sluice
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .ok_or("no directory above the example's executable")?
            .join("sluice"),
    };
    if !sluice_bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first or pass --sluice-bin",
            sluice_bin.display()
        )
        .into());
    }
    Ok(Args {
        canaries,
        sluice_bin,
    })
}

fn canary_api(client: kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("sluice.dev", "v1alpha1", "Canary"),
        "canaries",
    );
    Api::namespaced_with(client, NAMESPACE, &resource)
}

fn route_api(client: kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client, NAMESPACE, &resource)
}

async fn canary(client: &kube::Client, name: &str) -> BenchResult<Value> {
    Ok(serde_json::to_value(
        canary_api(client.clone()).get(name).await?,
    )?)
}

fn phase(canary: &Value) -> &str {
    canary["status"]["phase"].as_str().unwrap_or("")
}

async fn route_canary_weight(client: &kube::Client, name: &str) -> BenchResult<i64> {
    let route = serde_json::to_value(route_api(client.clone()).get(name).await?)?;
    let canary = format!("{name}-canary");
    Ok(route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
        .filter(|backend| backend["name"] == canary.as_str())
        .map(|backend| backend["weight"].as_i64().unwrap_or(1))
        .max()
        .unwrap_or(0))
}

async fn set_image(client: &kube::Client, name: &str, image: &str) -> BenchResult<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}
    });
    api.patch(
        name,
        &PatchParams::apply("ci").force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Polls `probe` every 5 ms until it returns `Some`, or fails after `timeout`.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> BenchResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<Option<T>>>,
{
    poll_every(Duration::from_millis(5), what, timeout, probe).await
}

/// [`poll`] with a chosen period. A probe that lists every Canary must not run every 5 ms: the
/// test cluster serves it from this very process, and at 1,000 Canaries the lists alone kept it
/// too busy to serve the controller.
async fn poll_every<T, F, Fut>(
    period: Duration,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> BenchResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(period).await;
    }
}

/// Peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> BenchResult<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/<pid>/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("VmHWM without a value")?
        .parse()?)
}

/// How many writes each decision that moved traffic to a canary step made, in order: the writes
/// are cut into decisions at each status write (a decision's writes, then its status, then its
/// Events), and the decisions that routed a weight above zero are the steps.
fn writes_per_traffic_step(writes: &[sluice_testcluster::Write]) -> Vec<usize> {
    let mut decisions: Vec<Vec<&sluice_testcluster::Write>> = vec![Vec::new()];
    for write in writes {
        let is_event = write.key.resource == "events";
        let persisted = decisions
            .last()
            .is_some_and(|d| d.iter().any(|w| w.key.subresource == "status"));
        if persisted && !is_event {
            decisions.push(Vec::new());
        }
        if let Some(decision) = decisions.last_mut() {
            decision.push(write);
        }
    }
    let routes_to_canary = |write: &sluice_testcluster::Write| {
        let body: Value = serde_json::from_str(&write.body).unwrap_or(Value::Null);
        write.key.resource == "httproutes"
            && body["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
                .any(|backend| {
                    backend["name"]
                        .as_str()
                        .is_some_and(|name| name.ends_with("-canary"))
                        && backend["weight"].as_i64().unwrap_or(1) > 0
                })
    };
    decisions
        .iter()
        .filter(|d| d.iter().any(|w| routes_to_canary(w)))
        .map(Vec::len)
        .collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

struct Row {
    what: &'static str,
    measured: String,
    budget: &'static str,
    ok: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BenchResult<()> {
    let args = args()?;
    let n = args.canaries;
    eprintln!(
        "bench: {n} canaries, controller {}",
        args.sluice_bin.display()
    );

    let cluster = TestCluster::start().await?;
    cluster.apply_yaml(HOLD_POLICY).await?;
    let client = cluster.client();
    let _kubelet = kubelet::spawn(
        client.clone(),
        kubelet::Options {
            config: kubelet::Config {
                readiness_delay: Duration::from_millis(300),
                never_ready: None,
            },
            // The stand-in also reacts to watch events; a slower resync keeps its periodic pass
            // over every Deployment from starving the machine at 1,000 apps.
            resync: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let prometheus = FakePrometheus::start().await?;
    prometheus.set_default(Answer::value(0.0));
    cluster
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
        ))
        .await?;

    let created = Instant::now();
    let url = prometheus.url();
    let results: Vec<_> = stream::iter(0..n)
        .map(|i| {
            let cluster = &cluster;
            let url = &url;
            let replicas = if i == 0 { 2 } else { 1 };
            async move { cluster.apply_yaml(&manifests(&app(i), url, replicas)).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for result in results {
        result?;
    }
    eprintln!("bench: created {n} apps in {:?}", created.elapsed());

    let started = Instant::now();
    let mut controller: Child = Command::new(&args.sluice_bin)
        .arg("controller")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            std::env::var("SLUICE_BENCH_RUST_LOG").unwrap_or_else(|_| {
                if std::env::var_os("SLUICE_BENCH_LOGS").is_some() {
                    "sluice=info,warn".into()
                } else {
                    "warn".into()
                }
            }),
        )
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("SLUICE_BENCH_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()?;
    let pid = controller.id().ok_or("controller exited at once")?;

    let canaries = canary_api(client.clone());
    poll_every(
        ADOPTION_POLL,
        "every Canary to be Idle",
        Duration::from_secs(600),
        || {
            let canaries = canaries.clone();
            async move {
                let list = canaries.list(&ListParams::default()).await?;
                let idle = list
                    .items
                    .iter()
                    .filter(|c| c.data["status"]["phase"] == "Idle")
                    .count();
                Ok((idle == n).then_some(()))
            }
        },
    )
    .await?;
    let adoption = started.elapsed();
    eprintln!("bench: all {n} canaries Idle after {adoption:?}");

    // Idle: let the adoption writes' own watch events settle, then count over whole intervals.
    tokio::time::sleep(2 * INTERVAL).await;
    cluster.reset_requests()?;
    tokio::time::sleep(IDLE_INTERVALS * INTERVAL).await;
    let idle = cluster.requests_from("sluice")?;
    let idle_per_canary_interval = idle.total() as f64 / (n as f64 * f64::from(IDLE_INTERVALS));
    for (key, count) in &idle.0 {
        eprintln!("bench: idle request {key:?} x{count}");
    }
    eprintln!(
        "bench: idle: {} controller requests in {IDLE_INTERVALS} intervals; peak RSS so far {} KiB",
        idle.total(),
        peak_rss_kib(pid)?
    );

    // A promotion of app-0000: time to the first action, writes per step, queries per check.
    let promoted = app(0);
    let queries_before = prometheus.query_count();
    cluster.reset_requests()?;
    let before = canary(&client, &promoted).await?;
    let old_revision = before["status"]["revision"].clone();
    let changed = Instant::now();
    set_image(&client, &promoted, &format!("registry.local/{promoted}:2")).await?;
    let first_action = poll("the canary's first action", Duration::from_secs(10), || {
        let client = client.clone();
        let promoted = promoted.clone();
        let old_revision = old_revision.clone();
        async move {
            let c = canary(&client, &promoted).await?;
            let acted = phase(&c) != "Idle" || c["status"]["revision"] != old_revision;
            Ok(acted.then(|| changed.elapsed()))
        }
    })
    .await?;
    let done = poll("the promotion", Duration::from_secs(120), || {
        let client = client.clone();
        let promoted = promoted.clone();
        async move {
            let c = canary(&client, &promoted).await?;
            let revision = c["status"]["revision"].as_str().map(str::to_owned);
            Ok((phase(&c) == "Succeeded"
                && c["status"]["stableRevision"].as_str() == revision.as_deref())
            .then_some(c))
        }
    })
    .await;
    let done = match done {
        Ok(done) => done,
        Err(error) => {
            let c = canary(&client, &promoted).await?;
            return Err(format!(
                "{error}; {promoted} is {} at weight {}: {}",
                phase(&c),
                c["status"]["canaryWeight"],
                c["status"]["conditions"]
            )
            .into());
        }
    };
    // Let the last step's status write land before counting.
    tokio::time::sleep(INTERVAL).await;
    let rollout = cluster.requests_from("sluice")?;
    let writes = rollout.writes();
    let status_writes = rollout
        .count_where(|k| k.resource == "canaries" && k.subresource == "status" && k.verb != "get");
    // Writes per rollout by verb and resource, e.g. `patch canaries/status 6`.
    let mut by_verb_and_resource: std::collections::BTreeMap<String, u64> = Default::default();
    for (key, count) in rollout
        .0
        .iter()
        .filter(|(k, _)| sluice_testcluster::accounting::is_write(&k.verb))
    {
        let resource = if key.subresource.is_empty() {
            key.resource.clone()
        } else {
            format!("{}/{}", key.resource, key.subresource)
        };
        *by_verb_and_resource
            .entry(format!("{} {resource}", key.verb))
            .or_default() += count;
    }
    let writes_by_kind = by_verb_and_resource
        .iter()
        .map(|(what, count)| format!("{what} {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!("bench: rollout writes: {writes_by_kind}");
    let revision = done["status"]["revision"].as_str().unwrap_or_default();
    let checks: BTreeSet<String> = done["status"]["analysis"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["revision"] == revision)
        .filter_map(|r| r["time"].as_str().map(str::to_owned))
        .collect();
    let metric_queries = |needle: &'static str| {
        prometheus
            .queries()
            .iter()
            .skip(queries_before)
            .filter(|q| q.query.contains(needle) && q.query.contains(promoted.as_str()))
            .count()
    };
    let error_rate_queries = metric_queries("http_requests_total");
    let latency_queries = metric_queries("http_request_duration_seconds_bucket");
    let queries_total = prometheus.query_count() - queries_before;
    let checks_n = checks.len().max(1);
    // The writes of each canary step: those of the decision that moved traffic to the step's
    // weight (a scale of the canary when the step needs more pods, the route, the status) and the
    // Events it emitted. The budget is at most 3 writes per step.
    let step_writes = writes_per_traffic_step(&cluster.writes_from("sluice")?);
    let writes_per_step =
        step_writes.iter().sum::<usize>() as f64 / step_writes.len().max(1) as f64;
    let most_per_step = step_writes.iter().copied().max().unwrap_or(0);

    // A rollback of app-0001: from the check that reaches the threshold to no canary weight.
    let failing = app(1);
    let failing_needle = failing.clone();
    prometheus.on(
        QueryMatch::predicate(move |q| {
            q.contains(failing_needle.as_str()) && q.contains("http_requests_total")
        }),
        Answer::value(1.0),
    );
    let queries_before = prometheus.query_count();
    set_image(&client, &failing, &format!("registry.local/{failing}:2")).await?;
    let failing_for_queries = failing.clone();
    let failing_query = |p: &FakePrometheus| {
        p.queries()
            .into_iter()
            .skip(queries_before)
            .filter(|q| {
                q.query.contains(failing_for_queries.as_str())
                    && q.query.contains("http_requests_total")
            })
            .nth(1) // threshold: 2 failed checks
            .map(|q| q.received_at)
    };
    let failed_at = poll(
        "the check that reaches the threshold",
        Duration::from_secs(30),
        || {
            let found = failing_query(&prometheus);
            async move { Ok(found) }
        },
    )
    .await?;
    let back_on_stable = poll("traffic back on stable", Duration::from_secs(10), || {
        let client = client.clone();
        let failing = failing.clone();
        async move {
            Ok((route_canary_weight(&client, &failing).await? == 0)
                .then(|| Instant::now().saturating_duration_since(failed_at)))
        }
    })
    .await?;
    let rolled_back = poll("the Canary to be Failed", Duration::from_secs(10), || {
        let client = client.clone();
        let failing = failing.clone();
        async move {
            let c = canary(&client, &failing).await?;
            Ok((phase(&c) == "Failed").then_some(()))
        }
    })
    .await;

    let peak_kib = peak_rss_kib(pid)?;
    let _ = controller.kill().await;

    let rows = [
        Row {
            what: "API requests per idle canary per interval",
            measured: format!(
                "{idle_per_canary_interval:.3} ({} requests, {n} canaries, {IDLE_INTERVALS} x {INTERVAL:?})",
                idle.total()
            ),
            budget: "0",
            ok: idle.total() == 0,
        },
        Row {
            what: "API writes per canary step",
            measured: format!(
                "{writes_per_step:.2} (steps {step_writes:?}; {status_writes} status writes in the rollout)"
            ),
            budget: "<= 3",
            ok: most_per_step <= 3,
        },
        Row {
            what: "API writes per rollout (3-step promotion, Events included)",
            measured: format!("{writes} ({writes_by_kind})"),
            budget: "<= 20",
            ok: writes <= 20,
        },
        Row {
            what: "Prometheus queries per check",
            measured: format!(
                "error-rate {:.2}, latency {:.2} ({queries_total} queries, {} checks)",
                error_rate_queries as f64 / checks_n as f64,
                latency_queries as f64 / checks_n as f64,
                checks.len()
            ),
            budget: "1 per metric",
            ok: error_rate_queries == checks.len() && latency_queries == checks.len(),
        },
        Row {
            what: "template change -> first action",
            measured: format!("{first_action:?}"),
            budget: "< 1 s",
            ok: first_action < Duration::from_secs(1),
        },
        Row {
            what: "failing check -> traffic on stable",
            measured: format!(
                "{back_on_stable:?}{}",
                if rolled_back.is_ok() {
                    ""
                } else {
                    " (Canary not Failed)"
                }
            ),
            budget: "< 1 s",
            ok: back_on_stable < Duration::from_secs(1) && rolled_back.is_ok(),
        },
        Row {
            what: "controller peak RSS (VmHWM)",
            measured: format!("{:.1} MiB at {n} canaries", peak_kib as f64 / 1024.0),
            budget: "<= 64 MiB at 1,000",
            ok: peak_kib <= 64 * 1024,
        },
    ];
    println!("sluice benchmark: {n} canaries (all Idle {adoption:.1?} after start)");
    println!("| measure | measured | budget | |");
    println!("| --- | --- | --- | --- |");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.what,
            row.measured,
            row.budget,
            verdict(row.ok)
        );
    }
    Ok(())
}
