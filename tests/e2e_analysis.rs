//! The real `sluice controller` binary judging revisions: a bad revision rolled back on the
//! evidence of the real Prometheus scraping the traffic simulator, a Prometheus that goes away
//! (the step holds until `unknownDeadline`, then the configured outcome; or it comes back and the
//! rollout goes on), and pods that never become ready (rolled back at the progress deadline).
//! Every scenario samples the router object, the canary's ready pods, the status and the target
//! while it runs, so the invariants are checked along the way, not only at the end.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use serde_json::Value;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use sluice_testcluster::prometheus::server::{PrometheusServer, StartPrometheusError};
use sluice_testcluster::traffic::app::{AppConfig, ErrorSeries};
use sluice_testcluster::traffic::ingress::IngressConfig;
use sluice_testcluster::traffic::load::{self, LoadConfig};
use sluice_testcluster::traffic::stack::TrafficStack;
use sluice_testcluster::traffic::weights::HttpRouteWeights;
use support::history::History;
use support::{
    Env, Hold, NAMESPACE, app_manifests, http_route_resource, phase, route_canary_weight,
};
use tokio::time::Instant;

const APP_ERROR_RATE: &str = include_str!("../analysis-templates/app-error-rate.yaml");
const STABLE_IMAGE: &str = "registry.local/web:1";
/// The analysis interval of every Canary here.
const INTERVAL: Duration = Duration::from_secs(1);

// ---- Observing the run ----------------------------------------------------------------------

/// One sample of everything the invariants speak about.
struct Sample {
    route_weight: i32,
    canary_ready: i32,
    canary: Value,
    target_paused: bool,
    stable_images: Vec<String>,
}

impl Sample {
    fn status(&self) -> &Value {
        &self.canary["status"]
    }
    fn phase(&self) -> &str {
        phase(&self.canary)
    }
    fn step_index(&self) -> i64 {
        self.status()["stepIndex"].as_i64().unwrap_or(0)
    }
    fn status_weight(&self) -> i64 {
        self.status()["canaryWeight"].as_i64().unwrap_or(0)
    }
}

/// Reads the Canary first, then the route, the canary's readiness and the route again. The
/// controller writes the route before the status that describes it, so a status read first is
/// never ahead of the route read after it (I2 at rest compares them). I1 is judged on both route
/// reads around the readiness read: a weight seen before and after a read of zero ready pods was
/// on an unready canary, whichever way a concurrent write went.
async fn sample(env: &Env) -> Option<Sample> {
    let canary = env.canary("web").await?;
    let route_before = route_canary_weight(&env.http_route("web").await, "web");
    let canary_ready = env
        .deployment("web-canary")
        .await
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let route_weight = route_canary_weight(&env.http_route("web").await, "web");
    if route_before > 0 && route_weight > 0 {
        assert!(
            canary_ready > 0,
            "I1: weight {route_weight} on a canary with no ready pods"
        );
    }
    let target_paused = env
        .deployment("web")
        .await
        .and_then(|d| d.spec)
        .and_then(|s| s.paused)
        .unwrap_or(false);
    let stable_images = env
        .kubelet
        .serving(NAMESPACE, "web")
        .map(|s| s.images)
        .unwrap_or_default();
    Some(Sample {
        route_weight,
        canary_ready,
        canary,
        target_paused,
        stable_images,
    })
}

/// The invariants that hold at every instant of a rollout that is never promoted (I1 is checked
/// by every [`sample`]): I6 (the stable Deployment's pods keep the stable image, and
/// the target stays held while the revision is analysed or after it failed).
fn check_unpromoted(sample: &Sample) {
    if !sample.stable_images.is_empty() {
        assert_eq!(
            sample.stable_images,
            [STABLE_IMAGE],
            "I6: the stable Deployment's pods run an unanalysed template"
        );
    }
    if matches!(sample.phase(), "Progressing" | "Failed" | "Paused") {
        assert!(
            sample.target_paused,
            "I6: the target is not held in phase {}",
            sample.phase()
        );
    }
}

fn condition<'a>(canary: &'a Value, type_: &str) -> &'a Value {
    canary["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} in {canary}"))
}

/// The time of the newest check in `status.analysis`: the check whose verdict decided the
/// outcome (its time is the decision's `now`, in whole seconds like every status time, as is the
/// `unknownSince` the controller measures its deadline from).
fn deciding_check_time(sample: &Sample) -> jiff::Timestamp {
    let log = sample.status()["analysis"]
        .as_array()
        .expect("analysis log");
    let last = log.last().expect("a check was recorded");
    assert_eq!(
        last["verdict"], "Unknown",
        "decided on an Unknown check: {last}"
    );
    time_of(&last["time"])
}

fn time_of(value: &Value) -> jiff::Timestamp {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a timestamp, not {value}"))
}

/// Each change of the route's canary weight, with the instant the test saw it.
type WeightLog = Arc<Mutex<Vec<(Instant, i32)>>>;

/// Records the moment each change of the route's canary weight reaches a watcher, on the test's
/// own monotonic clock.
fn watch_route_weights(env: &Env) -> (WeightLog, tokio::task::JoinHandle<()>) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.client(), NAMESPACE, &http_route_resource());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(event) = events.next().await {
            let (watcher::Event::Apply(route) | watcher::Event::InitApply(route)) = (match event {
                Ok(event) => event,
                Err(_) => continue,
            }) else {
                continue;
            };
            if route.metadata.name.as_deref() != Some("web") {
                continue;
            }
            let at = Instant::now();
            let weight = route_canary_weight(&serde_json::to_value(&route).expect("json"), "web");
            let mut seen = record.lock().expect("weights");
            if seen.last().map(|(_, w)| *w) != Some(weight) {
                seen.push((at, weight));
            }
        }
    });
    (seen, task)
}

// ---- A recording pass-through proxy in front of the real Prometheus --------------------------

/// One answer the proxy passed back: when it left the proxy, and the value it carried.
#[derive(Clone, Debug)]
struct Passed {
    at: Instant,
    value: Option<f64>,
    /// The query was the metric's count query (`totalQuery`), not its value query.
    count: bool,
}

struct RecordingProxy {
    url: String,
    answers: Arc<Mutex<Vec<Passed>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingProxy {
    async fn start(upstream: String) -> Self {
        let answers: Arc<Mutex<Vec<Passed>>> = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&answers);
        let http = reqwest::Client::new();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let http = http.clone();
                let upstream = upstream.clone();
                let record = Arc::clone(&record);
                async move {
                    let target = format!(
                        "{upstream}{}",
                        uri.path_and_query().map_or("/", |p| p.as_str())
                    );
                    let count = form_urlencoded_query(&body)
                        .is_some_and(|q| q.trim_start().starts_with("sum(increase("));
                    let mut request = http.request(method, target).body(body);
                    if let Some(kind) = headers.get("content-type") {
                        request = request.header("content-type", kind.clone());
                    }
                    let Ok(response) = request.send().await else {
                        return StatusCode::BAD_GATEWAY.into_response();
                    };
                    let status = response.status();
                    let kind = response.headers().get("content-type").cloned();
                    let body = response.bytes().await.unwrap_or_default();
                    let value = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                        v["data"]["result"][0]["value"][1]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                    });
                    record.lock().expect("answers").push(Passed {
                        at: Instant::now(),
                        value,
                        count,
                    });
                    let mut answer = (
                        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                        body,
                    )
                        .into_response();
                    if let Some(kind) = kind {
                        answer.headers_mut().insert("content-type", kind);
                    }
                    answer
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("proxy serves");
        });
        Self { url, answers, task }
    }
}

/// The `query` parameter of a form-encoded Prometheus query body.
fn form_urlencoded_query(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == "query")
        .map(|(_, value)| value.into_owned())
}

// ---- 1. A bad revision, judged by the real Prometheus ----------------------------------------

fn template_canary(prometheus: &str) -> String {
    // The analysis interval is 1 s, but the query window (the metric's `interval`) is 5 s: with
    // a 1 s scrape interval a `rate()` needs at least two samples, and a window of fewer than
    // about four scrapes often has none. So checks run every 5 s, the first 5 s after the route
    // write (a window wholly inside the canary's traffic). At 200 requests/s and 20 % weight the
    // canary serves about 40 requests/s, so `minSamples: 20` is met by every window.
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
    progressDeadline: 1m
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      templateRef: {{name: app-error-rate, kind: ClusterAnalysisTemplate}}
      interval: 5s
      max: 0.05
      minSamples: 20
"#
    )
}

/// `errors`: whether the canary creates its 5xx series at its first error (as most apps do; the
/// young series once read as "no errors" and let a bad canary advance) or at start.
async fn a_bad_revision_is_rolled_back_on_the_real_prometheus(hold: Hold, errors: ErrorSeries) {
    let mut env = Env::start(hold).await;
    let history = History::record_on(&env.cluster);
    env.apply(&app_manifests("web", STABLE_IMAGE, 2)).await;
    env.apply(APP_ERROR_RATE).await;
    let stack = TrafficStack::start_with(
        AppConfig::stable(NAMESPACE, "web"),
        AppConfig::canary(NAMESPACE, "web")
            .error_rate(0.3)
            .error_series(errors),
        IngressConfig::new(NAMESPACE, "web"),
        HttpRouteWeights {
            client: env.client(),
            namespace: NAMESPACE.into(),
            route: "web".into(),
            service: "web".into(),
        },
    )
    .await
    .expect("traffic stack");
    let prometheus = match PrometheusServer::start(&stack.scrape_targets()).await {
        Ok(prometheus) => prometheus,
        Err(StartPrometheusError::BinaryMissing { .. })
            if std::env::var_os("SLUICE_REQUIRE_PROMETHEUS").is_none() =>
        {
            eprintln!("skipping: no prometheus binary (set SLUICE_REQUIRE_PROMETHEUS to fail)");
            return;
        }
        Err(error) => panic!("prometheus starts: {error}"),
    };
    let proxy = RecordingProxy::start(prometheus.url()).await;
    let traffic = load::spawn(
        stack.ingress.addr(),
        LoadConfig::new(200.0, 20_000)
            .host("web.example.test")
            .max_duration(Duration::from_secs(40)),
    )
    .expect("load starts");

    env.apply(&template_canary(&proxy.url)).await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    let (route_weights, route_watch) = watch_route_weights(&env);

    env.set_image("web", "registry.local/web:2").await;
    let failed = env
        .eventually(
            "the bad revision to fail",
            Duration::from_secs(30),
            || async {
                let sample = sample(&env).await?;
                check_unpromoted(&sample);
                assert_eq!(
                    sample.step_index(),
                    0,
                    "I3/I4: a failing step never advances"
                );
                (sample.phase() == "Failed").then_some(sample)
            },
        )
        .await;
    // Let the route change that came with the failure reach the watcher.
    env.eventually(
        "the route back on stable",
        Duration::from_secs(5),
        || async {
            let weights = route_weights.lock().expect("weights");
            (weights.iter().any(|(_, w)| *w > 0) && weights.last().map(|(_, w)| *w) == Some(0))
                .then_some(())
        },
    )
    .await;
    route_watch.abort();
    traffic.stop();
    let report = traffic.finish().await.expect("load report");

    // Rollback latency. The check that reached the threshold is the last answer the proxy passed
    // back before the canary weight went to 0 (the controller judges right after it, in the same
    // reconcile); the route change is timed when its watch event reaches this test. Both instants
    // are on this process's monotonic clock, so the difference is an upper bound of the time from
    // the failing answer to the router write.
    let weights = route_weights.lock().expect("weights").clone();
    let first_weighted = weights
        .iter()
        .position(|(_, w)| *w > 0)
        .expect("canary weight");
    let (back_on_stable, _) = *weights[first_weighted..]
        .iter()
        .find(|(_, w)| *w == 0)
        .expect("weight back to 0");
    let answers: Vec<Passed> = proxy
        .answers
        .lock()
        .expect("answers")
        .iter()
        .filter(|a| !a.count)
        .cloned()
        .collect();
    let deciding = answers
        .iter()
        .rev()
        .find(|a| a.at <= back_on_stable)
        .expect("an answer before the rollback");
    let failing_answers = answers
        .iter()
        .filter(|a| a.at <= back_on_stable && a.value.is_some_and(|v| v > 0.05))
        .count();
    // Every value the proxy passed back for the canary was above the limit or no value at all:
    // the real Prometheus never read the bad canary as healthy.
    let passing: Vec<&Passed> = answers
        .iter()
        .filter(|a| a.value.is_some_and(|v| v <= 0.05))
        .collect();
    assert!(
        passing.is_empty(),
        "a bad canary read as healthy: {passing:?}"
    );
    assert_eq!(
        failing_answers, 2,
        "rolled back on the second failing answer (threshold 2): {answers:?}"
    );
    let value = deciding.value.expect("the deciding answer carries a value");
    assert!(
        value > 0.05,
        "the deciding answer ({value}) is above the limit"
    );
    let latency = back_on_stable - deciding.at;
    eprintln!("rollback latency: {latency:?} (failing answer {value} to HTTPRoute weight 0)");
    assert!(
        latency <= Duration::from_secs(1),
        "traffic back on stable {latency:?} after the failing check"
    );

    // The verdict explains itself: metric, value and limit in status.analysis and in Failed.
    let status = failed.status();
    let fails: Vec<&Value> = status["analysis"]
        .as_array()
        .expect("analysis log")
        .iter()
        .filter(|r| r["verdict"] == "Fail")
        .collect();
    assert_eq!(fails.len(), 2, "threshold 2: {status}");
    let last = fails[fails.len() - 1];
    assert_eq!(last["metric"], "error-rate");
    let recorded = last["value"].as_f64().expect("value recorded");
    assert!(
        (0.2..0.4).contains(&recorded),
        "the canary's error rate is about 30 %: {recorded}"
    );
    let limit = last["limit"].as_str().expect("limit recorded");
    assert!(limit.contains("0.05"), "limit {limit}");
    assert!(
        last["query"]
            .as_str()
            .is_some_and(|q| q.contains("web-canary")),
        "resolved query names the canary: {last}"
    );
    let failed_condition = condition(&failed.canary, "Failed");
    assert_eq!(failed_condition["status"], "True");
    assert_eq!(failed_condition["reason"], "AnalysisFailed");
    let message = failed_condition["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("error-rate = {recorded}")) && message.contains(limit),
        "Failed names the metric, value and limit: {message}"
    );

    // At rest after the rollback: canary off, the rejected template held, stable still serving.
    assert_eq!(failed.route_weight, 0);
    assert_eq!(failed.status_weight(), 0);
    let canary_deployment = env.deployment("web-canary").await.expect("canary kept");
    assert_eq!(canary_deployment.spec.and_then(|s| s.replicas), Some(0));
    let target = env.deployment("web").await.expect("target");
    assert_eq!(target.spec.and_then(|s| s.paused), Some(true), "held");
    let served = env
        .kubelet
        .serving(NAMESPACE, "web")
        .expect("stable serves");
    assert!(served.ready);
    assert_eq!(served.images, [STABLE_IMAGE]);
    assert!(
        report.answered_by("canary") > 0 && report.server_errors() > 0,
        "the canary really took traffic and failed some of it: {report:?}"
    );
    assert!(
        stack.stable.served() > 0 && stack.stable.errors() == 0,
        "stable stayed healthy"
    );
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_revision_whose_errors_start_late_is_rolled_back_within_a_second_with_the_admission_policy_hold()
 {
    a_bad_revision_is_rolled_back_on_the_real_prometheus(Hold::AdmissionPolicy, ErrorSeries::Late)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_revision_with_pre_registered_errors_is_rolled_back_within_a_second_with_the_paused_at_rest_hold()
 {
    a_bad_revision_is_rolled_back_on_the_real_prometheus(Hold::PausedAtRest, ErrorSeries::Early)
        .await;
}

// ---- 2. Prometheus unreachable ----------------------------------------------------------------

fn inline_canary(prometheus: &str, analysis_extra: &str) -> String {
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
    provider: {{prometheus: {{address: "{prometheus}", timeout: 1s}}}}
{analysis_extra}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#
    )
}

/// A new revision rolling out while Prometheus is down (connections refused): returns once the
/// Canary is Progressing with it, with the env, the (down) Prometheus and the history, recorded
/// from before the app was applied.
async fn a_rollout_with_prometheus_down(
    hold: Hold,
    analysis_extra: &str,
) -> (Env, FakePrometheus, History) {
    let mut env = Env::start(hold).await;
    let history = History::record_on(&env.cluster);
    let mut prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&app_manifests("web", STABLE_IMAGE, 2)).await;
    env.apply(&inline_canary(&prometheus.url(), analysis_extra))
        .await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    prometheus.go_down().await.expect("prometheus goes down");
    env.set_image("web", "registry.local/web:2").await;
    env.eventually(
        "the new revision to be Progressing",
        Duration::from_secs(10),
        || async {
            env.canary("web").await.filter(|c| {
                phase(c) == "Progressing"
                    && c["status"]["revision"] != c["status"]["stableRevision"]
            })
        },
    )
    .await;
    (env, prometheus, history)
}

/// Holds while Unknown: the first step's weight and index never move, `unknownSince` is set.
/// Returns the first sample whose phase is not Progressing, and `unknownSince` as last seen.
async fn hold_while_unknown(env: &Env, timeout: Duration) -> (Sample, Option<jiff::Timestamp>) {
    let unknown_since = Mutex::new(None);
    let end = env
        .eventually("the Unknown hold to end", timeout, || async {
            let sample = sample(env).await?;
            check_unpromoted(&sample);
            if sample.phase() == "Progressing" && sample.status()["stepStartedAt"].is_string() {
                assert_eq!(sample.step_index(), 0, "I4: no advance while Unknown");
                assert!(
                    matches!(sample.status_weight(), 0 | 20) && sample.route_weight <= 20,
                    "I4: weight moved while Unknown: {}",
                    sample.status()
                );
            }
            if !sample.status()["unknownSince"].is_null() {
                *unknown_since.lock().expect("since") =
                    Some(time_of(&sample.status()["unknownSince"]));
            }
            (sample.phase() != "Progressing").then_some(sample)
        })
        .await;
    (end, unknown_since.into_inner().expect("since"))
}

async fn prometheus_down_rolls_back_at_the_unknown_deadline(hold: Hold) {
    let (env, prometheus, history) =
        a_rollout_with_prometheus_down(hold, "    unknownDeadline: 4s").await;
    let (failed, since) = hold_while_unknown(&env, Duration::from_secs(25)).await;
    assert_eq!(failed.phase(), "Failed", "{}", failed.status());
    let since = since.expect("unknownSince was set while the step held");
    let decided = deciding_check_time(&failed);
    assert!(
        decided >= since + jiff::SignedDuration::from_secs(4)
            && decided <= since + jiff::SignedDuration::from_secs(7),
        "rolled back by the check at {decided}, not at unknownSince {since} + 4s"
    );
    let failed_condition = condition(&failed.canary, "Failed");
    assert_eq!(failed_condition["reason"], "UnknownDeadlineExceeded");
    assert_eq!(failed.route_weight, 0, "traffic back on stable");
    assert_eq!(
        failed.status_weight(),
        0,
        "I2: status says what the route carries"
    );
    assert!(failed.status()["unknownSince"].is_null());
    let canary_deployment = env.deployment("web-canary").await.expect("canary kept");
    assert_eq!(canary_deployment.spec.and_then(|s| s.replicas), Some(0));
    assert_eq!(
        env.kubelet.serving(NAMESPACE, "web").map(|s| s.images),
        Some(vec![STABLE_IMAGE.to_owned()])
    );
    assert!(
        failed.status()["analysis"]
            .as_array()
            .is_some_and(|log| log.iter().all(|r| r["verdict"] == "Unknown"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("cannot connect")))),
        "only Unknown checks, for an unreachable Prometheus, were recorded: {}",
        failed.status()
    );
    history.assert_invariants("web", INTERVAL);
    drop(prometheus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_rolls_back_at_the_unknown_deadline_with_the_admission_policy_hold() {
    prometheus_down_rolls_back_at_the_unknown_deadline(Hold::AdmissionPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_rolls_back_at_the_unknown_deadline_with_the_paused_at_rest_hold() {
    prometheus_down_rolls_back_at_the_unknown_deadline(Hold::PausedAtRest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_pauses_at_the_unknown_deadline_when_told_to() {
    let (env, prometheus, history) = a_rollout_with_prometheus_down(
        Hold::AdmissionPolicy,
        "    unknownDeadline: 3s\n    onUnknownDeadline: Pause",
    )
    .await;
    let (paused, since) = hold_while_unknown(&env, Duration::from_secs(25)).await;
    assert_eq!(paused.phase(), "Paused", "{}", paused.status());
    let since = since.expect("unknownSince was set while the step held");
    let decided = deciding_check_time(&paused);
    assert!(
        decided >= since + jiff::SignedDuration::from_secs(3)
            && decided <= since + jiff::SignedDuration::from_secs(6),
        "paused by the check at {decided}, not at unknownSince {since} + 3s"
    );
    // Paused is neither a rollback nor an advance: the first step's traffic stays as it was.
    assert_eq!(paused.route_weight, 20);
    assert_eq!(
        paused.status_weight(),
        20,
        "I2: status says what the route carries"
    );
    assert_eq!(paused.step_index(), 0);
    assert!(paused.target_paused);
    assert_eq!(condition(&paused.canary, "Failed")["status"], "False");
    let canary_deployment = env.deployment("web-canary").await.expect("canary");
    assert!(canary_deployment.spec.and_then(|s| s.replicas).unwrap_or(0) > 0);
    history.assert_invariants("web", INTERVAL);
    drop(prometheus);
}

async fn a_rollout_continues_when_prometheus_comes_back(hold: Hold) {
    let paused_at_rest = matches!(hold, Hold::PausedAtRest);
    let (env, mut prometheus, history) =
        a_rollout_with_prometheus_down(hold, "    unknownDeadline: 1m").await;
    let held = env
        .eventually(
            "unknownSince to be set",
            Duration::from_secs(20),
            || async {
                let sample = sample(&env).await?;
                check_unpromoted(&sample);
                assert_eq!(sample.phase(), "Progressing");
                assert_eq!(sample.step_index(), 0, "I4: no advance while Unknown");
                (!sample.status()["unknownSince"].is_null()).then_some(sample)
            },
        )
        .await;
    assert_eq!(held.route_weight, 20);
    prometheus.come_up().await.expect("prometheus comes back");

    let weights = Mutex::new(Vec::new());
    let promoted = env
        .eventually(
            "the revision to be promoted",
            Duration::from_secs(30),
            || async {
                let sample = sample(&env).await?;
                let mut seen = weights.lock().expect("weights");
                if seen.last() != Some(&sample.route_weight) {
                    seen.push(sample.route_weight);
                }
                assert_ne!(sample.phase(), "Failed", "{}", sample.status());
                if sample.phase() == "Progressing" && sample.step_index() == 1 {
                    assert!(
                        sample.status()["unknownSince"].is_null(),
                        "a passing check ends the Unknown hold: {}",
                        sample.status()
                    );
                }
                if sample.phase() == "Promoting" {
                    // I3: released only after a passing check of every step of this revision.
                    let revision = &sample.status()["revision"];
                    let passed = |step: i64| {
                        sample.status()["analysis"].as_array().is_some_and(|log| {
                            log.iter().any(|r| {
                                r["verdict"] == "Pass"
                                    && r["step"] == step
                                    && &r["revision"] == revision
                            })
                        })
                    };
                    assert!(
                        passed(0) && passed(1),
                        "I3: promoting without passing steps: {}",
                        sample.status()
                    );
                }
                (sample.phase() == "Succeeded").then_some(sample)
            },
        )
        .await;
    let weights = weights.into_inner().expect("weights");
    assert_eq!(
        weights
            .iter()
            .copied()
            .filter(|w| *w > 0)
            .collect::<Vec<_>>(),
        [20, 50],
        "the held step went on once Prometheus answered ({weights:?})"
    );
    assert!(promoted.status()["unknownSince"].is_null());
    assert_eq!(promoted.route_weight, 0);
    assert!(
        promoted.status()["analysis"]
            .as_array()
            .is_some_and(|log| log.iter().any(|r| r["verdict"] == "Unknown")
                && log.iter().any(|r| r["verdict"] == "Pass")),
        "Unknown checks, then passing ones: {}",
        promoted.status()
    );
    let served = env
        .kubelet
        .wait_serving(NAMESPACE, "web", Duration::from_secs(10), |s| {
            s.images == ["registry.local/web:2"]
        })
        .await;
    assert!(
        served.is_some(),
        "the stable Deployment serves the new revision"
    );
    let target = env.deployment("web").await.expect("target");
    assert_eq!(
        target.spec.and_then(|s| s.paused).unwrap_or(false),
        paused_at_rest,
        "held per mode at rest"
    );
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_promoted_when_prometheus_comes_back_with_the_admission_policy_hold() {
    a_rollout_continues_when_prometheus_comes_back(Hold::AdmissionPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_promoted_when_prometheus_comes_back_with_the_paused_at_rest_hold() {
    a_rollout_continues_when_prometheus_comes_back(Hold::PausedAtRest).await;
}

// ---- 3. Pods that never become ready ----------------------------------------------------------

async fn a_canary_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline(hold: Hold) {
    let mut env = Env::start(hold).await;
    let history = History::record_on(&env.cluster);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&app_manifests("web", STABLE_IMAGE, 2)).await;
    env.apply(&inline_canary(
        &prometheus.url(),
        "    progressDeadline: 3s",
    ))
    .await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    env.set_image("web", "registry.local/web:2-crashloop").await;
    let started = jiff::Timestamp::now();
    let failed = env
        .eventually("the revision to fail", Duration::from_secs(25), || async {
            let sample = sample(&env).await?;
            check_unpromoted(&sample);
            assert_eq!(sample.route_weight, 0, "I1: weight on a canary never ready");
            assert_eq!(sample.canary_ready, 0);
            (sample.phase() == "Failed").then_some(sample)
        })
        .await;
    let failed_at = jiff::Timestamp::now();
    // Status times are whole seconds (metav1.Time), so the controller's clock for the deadline
    // is `revisionStartedAt` as stored: up to a second before the change was first seen.
    let revision_started = time_of(&failed.status()["revisionStartedAt"]);
    assert!(
        failed_at >= revision_started + jiff::SignedDuration::from_secs(3)
            && failed_at >= started + jiff::SignedDuration::from_secs(2),
        "rolled back at {failed_at}, before the progress deadline (started {revision_started})"
    );
    let failed_condition = condition(&failed.canary, "Failed");
    assert_eq!(failed_condition["status"], "True");
    assert_eq!(failed_condition["reason"], "ProgressDeadlineExceeded");
    assert_eq!(failed.status_weight(), 0);
    assert_eq!(
        prometheus.query_count(),
        0,
        "a canary without ready pods is never analysed"
    );
    let canary_deployment = env.deployment("web-canary").await.expect("canary kept");
    assert_eq!(canary_deployment.spec.and_then(|s| s.replicas), Some(0));
    assert!(failed.target_paused, "the rejected template stays held");
    assert_eq!(
        env.kubelet.serving(NAMESPACE, "web").map(|s| s.images),
        Some(vec![STABLE_IMAGE.to_owned()])
    );
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_never_becomes_ready_is_rolled_back_with_the_admission_policy_hold() {
    a_canary_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline(
        Hold::AdmissionPolicy,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_never_becomes_ready_is_rolled_back_with_the_paused_at_rest_hold() {
    a_canary_that_never_becomes_ready_is_rolled_back_at_the_progress_deadline(Hold::PausedAtRest)
        .await;
}
