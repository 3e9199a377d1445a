//! Metrics faults, end to end: the real `sluice controller` against the test cluster and the
//! scripted fake Prometheus, each fault ending in the state and condition the README promises
//! ("Evidence before verdict"):
//!
//! - NaN and an empty vector follow `onNoData`: with the default (`Hold`) the check is Unknown,
//!   the step holds, `unknownSince` is set and a `CheckUnknown` event says why, until
//!   `unknownDeadline`; with `onNoData: Fail` each is a failed check counted toward `threshold`.
//! - Several series are Unknown with a reason that says to aggregate.
//! - A query Prometheus refuses (`bad_data`) makes the Canary `Invalid` at once, naming the
//!   metric's field, remembered in `status.rejectedQueries`, with live traffic left as it was;
//!   editing the query recovers it. A query that does not parse is refused before it is sent.
//! - The metrics Secret missing holds the step with a reason naming it; created, the checks
//!   recover; rotated mid-rollout, the next check succeeds; and no secret value reaches the logs,
//!   Events or status.
//!
//! Every test records the whole watch history (`support::history`) and checks I1, I2, I3, I4 and
//! I6 on it, besides what the scenario is about. Timing bounds come from the spec (`interval`,
//! the query window, `unknownDeadline`) plus [`ALLOWANCE`].

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use sluice_testcluster::prometheus::fake::{Answer, ErrorType, FakePrometheus, QueryMatch, Series};
use support::history::{History, image};
use support::{Env, Hold, NAMESPACE, app_manifests, events_about, phase, route_canary_weight};
use tokio::io::{AsyncBufReadExt, AsyncRead};

const IMAGE_1: &str = "registry.local/web:1";
const IMAGE_2: &str = "registry.local/web:2";
/// The spec's `interval`; every metric below reads `[{{ interval }}]`, so the query window is the
/// same and checks of a step come every `max(interval, window)` = 1 s.
const INTERVAL: Duration = Duration::from_secs(1);
/// How late past the time the spec sets a check or a decision may come: the requeue, a reconcile,
/// the fake's answer and the status write, on 2 shared cores running a debug build and another
/// test beside this one.
const ALLOWANCE: Duration = Duration::from_secs(2);

/// The healthy metric: one number, `sum()`-aggregated, read over the interval.
const QUERY: &str =
    r#"sum(rate(http_requests_total{code=~"5..", pod=~"{{ workload }}-.*"}[{{ interval }}]))"#;

fn span(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).expect("a short duration")
}

// ---- The Canary and the scene -----------------------------------------------------------------

struct Spec<'a> {
    query: &'a str,
    unknown_deadline: &'a str,
    on_no_data: Option<&'a str>,
    secret: Option<&'a str>,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            query: QUERY,
            unknown_deadline: "1m",
            on_no_data: None,
            secret: None,
        }
    }
}

fn canary_manifest(prometheus: &str, spec: &Spec) -> String {
    let secret = spec
        .secret
        .map(|name| format!(", secretRef: {{name: {name}}}"))
        .unwrap_or_default();
    let on_no_data = spec
        .on_no_data
        .map(|v| format!("      onNoData: {v}\n"))
        .unwrap_or_default();
    // The query is a YAML single-quoted scalar: a quote inside it would be doubled.
    let query = spec.query.replace('\'', "''");
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
    unknownDeadline: {deadline}
    provider: {{prometheus: {{address: "{prometheus}", timeout: 1s{secret}}}}}
    metrics:
    - name: error-rate
      query: '{query}'
      max: 0.05
{on_no_data}"#,
        deadline = spec.unknown_deadline,
    )
}

/// The cluster, the stand-in, the fake Prometheus, the history and the controller, with the app
/// at image 1 adopted (Idle).
struct Scene {
    env: Env,
    history: History,
    prometheus: FakePrometheus,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SLUICE_E2E_HISTORY").is_some() {
            eprintln!("history:\n{}", self.history.dump());
        }
    }
}

impl Scene {
    /// Everything but the controller, which the caller starts.
    async fn prepare(hold: Hold, spec: &Spec<'_>) -> Scene {
        let env = Env::start(hold).await;
        let prometheus = FakePrometheus::start().await.expect("fake prometheus");
        prometheus.set_default(Answer::value(0.0));
        let history = History::record_on(&env.cluster);
        env.apply(&app_manifests("web", IMAGE_1, 2)).await;
        env.apply(&canary_manifest(&prometheus.url(), spec)).await;
        Scene {
            env,
            history,
            prometheus,
        }
    }

    async fn start(hold: Hold, spec: &Spec<'_>) -> Scene {
        let mut scene = Scene::prepare(hold, spec).await;
        scene.env.start_controller(&[]);
        scene.wait_phase("Idle", Duration::from_secs(20)).await;
        scene
    }

    /// Waits for the Canary to be in phase `want`; fails at once if the rollout ends otherwise.
    async fn wait_phase(&self, want: &str, timeout: Duration) -> Value {
        self.env
            .eventually(&format!("the Canary to be {want}"), timeout, || async {
                let canary = self.env.canary("web").await?;
                let now = phase(&canary);
                assert!(
                    now == want || !matches!(now, "Succeeded" | "Failed"),
                    "the rollout ended {now}, not {want}: {}",
                    canary["status"]
                );
                (now == want).then_some(canary)
            })
            .await
    }

    /// Waits for a Canary that `accept` takes.
    async fn wait_for(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        self.env
            .eventually(what, Duration::from_secs(20), || async {
                self.env.canary("web").await.filter(|c| accept(c))
            })
            .await
    }

    /// Sets image 2 and waits for its first step to start: the route write acknowledged and
    /// stamped into `stepStartedAt`. Returns that Canary.
    async fn roll_out(&self) -> Value {
        self.env.set_image("web", IMAGE_2).await;
        self.wait_for("the first step to start", |c| {
            phase(c) == "Progressing"
                && c["status"]["revision"] != c["status"]["stableRevision"]
                && c["status"]["stepStartedAt"].is_string()
        })
        .await
    }

    /// Edits the metric's query, as its owner would (the whole manifest applied again).
    async fn edit(&self, spec: &Spec<'_>) -> u64 {
        let applied = self
            .env
            .cluster
            .apply_yaml(&canary_manifest(&self.prometheus.url(), spec))
            .await
            .expect("the edit applies");
        rv(&applied[0])
    }

    /// The Events about the Canary, once `want` is among their reasons (Events are published
    /// after the status write the test may have seen).
    async fn events_once(&self, want: &str) -> Vec<(String, String)> {
        self.env
            .eventually(
                &format!("a {want} event"),
                Duration::from_secs(10),
                || async {
                    let events = events_about(self.env.client(), "web").await;
                    events.iter().any(|(r, _)| r == want).then_some(events)
                },
            )
            .await
    }

    /// I1, I2, I3, I4 and I6 on the whole history; `promoted`: whether the revision was.
    fn assert_invariants(&self, promoted: bool) {
        self.history.assert_i4("web", INTERVAL);
        self.assert_invariants_but_i4(promoted);
    }

    fn assert_invariants_but_i4(&self, promoted: bool) {
        self.history.assert_i1("web");
        assert_i2(&self.history);
        assert_i3(&self.history);
        assert_i6(&self.history, promoted);
    }
}

// ---- Reading status and history ---------------------------------------------------------------

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("a resourceVersion")
}

fn time_of(value: &Value) -> Timestamp {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a timestamp, not {value}"))
}

/// The check records of the Canary's current revision, oldest first.
fn records(canary: &Value) -> Vec<Value> {
    let revision = &canary["status"]["revision"];
    canary["status"]["analysis"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| &r["revision"] == revision)
        .cloned()
        .collect()
}

fn condition<'a>(canary: &'a Value, type_: &str) -> &'a Value {
    canary["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} in {}", canary["status"]))
}

fn reason(record: &Value) -> &str {
    record["reason"].as_str().unwrap_or("")
}

/// Checks come once a window after the step's route write, then every `max(interval, window)`:
/// never earlier (no overlapping windows), and no later than the allowance.
fn assert_check_times(step_started: Timestamp, records: &[Value]) {
    let mut expected = step_started + span(INTERVAL);
    for record in records {
        let at = time_of(&record["time"]);
        assert!(
            at >= expected && at <= expected + span(ALLOWANCE),
            "a check at {at}, due at {expected} (+{ALLOWANCE:?} allowed): {records:?}"
        );
        expected = at + span(INTERVAL);
    }
}

/// I2 on the whole history: every status the controller wrote for the spec as it then was says
/// the weight the route carried (the route is written before the status that describes it).
fn assert_i2(history: &History) {
    let mut route = 0;
    for v in history.versions() {
        if v.kind == "HTTPRoute" && v.name == "web" {
            route = route_canary_weight(&v.object, "web");
        }
        if v.kind != "Canary" || v.name != "web" {
            continue;
        }
        let status = &v.object["status"];
        let decided_on_this_spec =
            status["observedGeneration"] == v.object["metadata"]["generation"];
        if status["phase"].is_string() && decided_on_this_spec {
            assert_eq!(
                status["canaryWeight"].as_i64().unwrap_or(0),
                i64::from(route),
                "I2: the Canary at rv {} says a weight the route (at {route}) does not carry: {status}",
                v.rv
            );
        }
    }
}

/// I3 on the whole history: no Canary version leaves the steps for promotion unless every step of
/// its revision has a passing check and its last check passed.
fn assert_i3(history: &History) {
    for v in history.of("Canary", "web") {
        let status = &v.object["status"];
        if !matches!(
            status["phase"].as_str(),
            Some("Promoting" | "WaitingPromotion")
        ) {
            continue;
        }
        let log = records(&v.object);
        let steps = status["stepCount"].as_i64().unwrap_or(0);
        assert!(steps > 0, "I3: a step count at rv {}: {status}", v.rv);
        for step in 0..steps {
            assert!(
                log.iter()
                    .any(|r| r["step"] == step && r["verdict"] == "Pass"),
                "I3: promoting at rv {} without a passing check of step {step}: {status}",
                v.rv
            );
        }
        assert_eq!(
            log.last().map(|r| &r["verdict"]),
            Some(&Value::from("Pass")),
            "I3: promoting at rv {} after a check that did not pass: {status}",
            v.rv
        );
    }
}

/// I6 on the whole history: the target carries image 2 held (paused) from the write that set it
/// until the write that releases it, and that release is the promotion: the status written with
/// it (the same reconcile writes the target, then the status) is `Promoting`, which I3 holds to a
/// complete passing analysis. The stable Deployment's pods run image 2 only after the release
/// (never, when it was not promoted).
fn assert_i6(history: &History, promoted: bool) {
    let release = history
        .of("Deployment", "web")
        .into_iter()
        .find(|v| image(&v.object) == Some(IMAGE_2) && v.object["spec"]["paused"] != true)
        .map(|v| v.rv);
    assert_eq!(
        release.is_some(),
        promoted,
        "I6: the target with image 2 released (first at rv {release:?})"
    );
    match release {
        None => assert_eq!(
            history.stable_images("web"),
            [IMAGE_1],
            "I6: the stable Deployment's pods ran an unanalysed template"
        ),
        Some(release) => {
            let decided = history
                .of("Canary", "web")
                .into_iter()
                .find(|v| v.rv > release)
                .expect("a status after the release");
            assert_eq!(
                phase(&decided.object),
                "Promoting",
                "I6: the target was released at rv {release} by a decision that is not the \
                 promotion (its status at rv {})",
                decided.rv
            );
            let first = history
                .first_pods_of("web", IMAGE_2)
                .expect("the promoted template reached the stable pods");
            assert!(
                first > release,
                "I6: image 2 had stable pods at rv {first}, before its release at rv {release}"
            );
        }
    }
}

/// I4 on the whole history of a rollout that went Invalid and recovered. `History::assert_i4`
/// refuses any step whose clock starts twice, but sluice restarts the step's clock (a new
/// `stepStartedAt`, no route write) in the status that leaves `Invalid`, since the spec that
/// judged the step changed; that can only delay the step. So this is that check with one
/// exception: a step's clock may start again, later, only in the version right after an `Invalid`
/// one. Otherwise: steps follow one another in order; each step's first clock starts no earlier
/// than the commit of the route write that started it; and the write that ends it (the next
/// step's route write, or the status that leaves the steps for promotion) comes at least an
/// interval after both that route write and the step's last clock start.
fn assert_i4_across_recovery(history: &History) {
    struct Step {
        index: i64,
        weight: i64,
        first_rv: u64,
        first_started: Timestamp,
        last_started: Timestamp,
    }
    let canaries = history.of("Canary", "web");
    let routes = history.of("HTTPRoute", "web");
    let mut steps: Vec<Step> = Vec::new();
    let mut previous_phase = String::new();
    for v in &canaries {
        let status = &v.object["status"];
        let this_phase = phase(&v.object).to_owned();
        if this_phase == "Progressing" && status["stepStartedAt"].is_string() {
            let index = status["stepIndex"].as_i64().unwrap_or(0);
            let started = time_of(&status["stepStartedAt"]);
            match steps.last_mut() {
                Some(step) if step.index == index && step.last_started == started => {}
                Some(step) if step.index == index => {
                    assert_eq!(
                        previous_phase, "Invalid",
                        "I4: step {index}'s clock started again at rv {} other than on leaving Invalid",
                        v.rv
                    );
                    assert!(
                        started > step.last_started,
                        "I4: step {index}'s clock went back at rv {}",
                        v.rv
                    );
                    step.last_started = started;
                }
                last => {
                    let expected = last.map_or(0, |step| step.index + 1);
                    assert_eq!(
                        index,
                        expected,
                        "I4: step {index} at rv {} follows step {}",
                        v.rv,
                        expected - 1
                    );
                    steps.push(Step {
                        index,
                        weight: status["canaryWeight"].as_i64().unwrap_or(0),
                        first_rv: v.rv,
                        first_started: started,
                        last_started: started,
                    });
                }
            }
        }
        previous_phase = this_phase;
    }
    // The route version that put `weight` in place last before `rv`.
    let route_write = |weight: i64, rv: u64| {
        let mut previous = None;
        let mut found = None;
        for route in routes.iter().take_while(|r| r.rv < rv) {
            let w = i64::from(route_canary_weight(&route.object, "web"));
            if w == weight && previous != Some(w) {
                found = Some(route);
            }
            previous = Some(w);
        }
        found.unwrap_or_else(|| panic!("a route write of weight {weight} before rv {rv}"))
    };
    let promotion = canaries
        .iter()
        .find(|v| phase(&v.object) == "Promoting")
        .expect("the rollout was promoted");
    for (i, step) in steps.iter().enumerate() {
        let started_by = route_write(step.weight, step.first_rv);
        let started_by_at = history.written_at(started_by);
        assert!(
            step.first_started >= started_by_at,
            "I4: step {} started at {}, before its route write (rv {}) at {started_by_at}",
            step.index,
            step.first_started,
            started_by.rv
        );
        let ended_by = match steps.get(i + 1) {
            Some(next) => route_write(next.weight, next.first_rv),
            None => promotion,
        };
        let ended_at = history.written_at(ended_by);
        for from in [started_by_at, step.last_started] {
            assert!(
                ended_at >= from + span(INTERVAL),
                "I4: step {} ended at rv {} ({ended_at}), less than {INTERVAL:?} after {from}",
                step.index,
                ended_by.rv
            );
        }
    }
    assert_eq!(steps.len(), 2, "both steps ran");
}

/// The rv of the first version of the Canary that `accept` takes.
fn first_canary(history: &History, accept: impl Fn(&Value) -> bool) -> Option<u64> {
    history
        .of("Canary", "web")
        .into_iter()
        .find(|v| accept(&v.object))
        .map(|v| v.rv)
}

/// While the revision progresses, it never leaves its first step nor counts a failure.
fn assert_step_held(history: &History) {
    for v in history.of("Canary", "web") {
        let status = &v.object["status"];
        if status["phase"] == "Progressing" {
            assert_eq!(status["stepIndex"], 0, "the step held at rv {}", v.rv);
            assert_eq!(
                status["failedChecks"].as_i64().unwrap_or(0),
                0,
                "no failure counted at rv {}",
                v.rv
            );
        }
    }
}

// ---- 1. NaN, no data and several series, with onNoData: Hold (the default) --------------------

/// The metric answers `answer` at every check. Each check is Unknown with a reason holding every
/// one of `words`; the step holds with `unknownSince` set from the first check, until
/// `unknownDeadline` (3 s) rolls the revision back.
async fn unknown_holds_the_step_until_the_deadline(hold: Hold, answer: Answer, words: &[&str]) {
    const DEADLINE: Duration = Duration::from_secs(3);
    let scene = Scene::start(
        hold,
        &Spec {
            unknown_deadline: "3s",
            ..Spec::default()
        },
    )
    .await;
    scene.prometheus.set_default(answer);
    let started = scene.roll_out().await;
    let step_started = time_of(&started["status"]["stepStartedAt"]);
    let failed = scene.wait_phase("Failed", Duration::from_secs(30)).await;

    let failed_condition = condition(&failed, "Failed");
    assert_eq!(failed_condition["status"], "True");
    assert_eq!(
        failed_condition["reason"], "UnknownDeadlineExceeded",
        "rolled back by the deadline, not by failed checks: {failed_condition}"
    );
    let log = records(&failed);
    assert!(
        log.len() >= 3,
        "the step held through a check every interval until the 3 s deadline: {log:?}"
    );
    for record in &log {
        assert_eq!(record["verdict"], "Unknown", "{record}");
        assert_eq!(record["step"], 0, "{record}");
        for word in words {
            assert!(reason(record).contains(word), "{word:?} in {record}");
        }
    }
    assert_check_times(step_started, &log);

    // unknownSince: set by the first Unknown check, kept through the others.
    let first_check = time_of(&log[0]["time"]);
    let mut saw_since = false;
    for v in scene.history.of("Canary", "web") {
        let since = &v.object["status"]["unknownSince"];
        if v.object["status"]["phase"] == "Progressing" && !since.is_null() {
            saw_since = true;
            assert_eq!(
                time_of(since),
                first_check,
                "unknownSince at rv {} is the first Unknown check",
                v.rv
            );
        }
    }
    assert!(saw_since, "unknownSince was set while the step held");
    let decided = time_of(&log[log.len() - 1]["time"]);
    assert!(
        decided >= first_check + span(DEADLINE)
            && decided <= first_check + span(DEADLINE + INTERVAL + ALLOWANCE),
        "rolled back by the check at {decided}; unknownSince {first_check} + {DEADLINE:?} \
         (+ an interval and {ALLOWANCE:?} allowed)"
    );
    assert!(failed["status"]["unknownSince"].is_null());

    let events = scene.events_once("CheckUnknown").await;
    assert!(
        events
            .iter()
            .any(|(r, note)| r == "CheckUnknown" && words.iter().all(|w| note.contains(w))),
        "a CheckUnknown event says why: {events:?}"
    );
    assert!(
        !events.iter().any(|(r, _)| r == "CheckFailed"),
        "no check failed: {events:?}"
    );
    // One query per check, none in between (the revision is at rest: no check runs any more).
    assert_eq!(scene.prometheus.query_count(), log.len());

    assert_step_held(&scene.history);
    assert_eq!(scene.history.route_weights("web"), [0, 20, 0]);
    assert_eq!(failed["status"]["canaryWeight"], 0);
    scene.assert_invariants(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_holds_the_step_as_unknown_until_the_unknown_deadline() {
    unknown_holds_the_step_until_the_deadline(
        Hold::AdmissionPolicy,
        Answer::nan(),
        &["returned NaN", "onNoData: Hold"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_vector_holds_the_step_as_unknown_until_the_unknown_deadline() {
    unknown_holds_the_step_until_the_deadline(
        Hold::PausedAtRest,
        Answer::no_data(),
        &["returned no data", "onNoData: Hold"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_series_hold_the_step_as_unknown_saying_to_aggregate() {
    unknown_holds_the_step_until_the_deadline(
        Hold::AdmissionPolicy,
        Answer::series([
            Series::new([("pod", "web-canary-a")], 0.0),
            Series::new([("pod", "web-canary-b")], 0.0),
            Series::new([("pod", "web-canary-c")], 0.5),
        ]),
        &["returned 3 series", "aggregate it to a single value"],
    )
    .await;
}

// ---- 2. NaN and no data with onNoData: Fail ----------------------------------------------------

/// The metric answers `answer` at every check; with `onNoData: Fail` each check fails, and the
/// second (threshold 2) rolls the revision back, long before `unknownDeadline` (1 m).
async fn no_measurement_fails_the_check_when_told_to(hold: Hold, answer: Answer, what: &str) {
    let scene = Scene::start(
        hold,
        &Spec {
            on_no_data: Some("Fail"),
            ..Spec::default()
        },
    )
    .await;
    scene.prometheus.set_default(answer);
    let started = scene.roll_out().await;
    let step_started = time_of(&started["status"]["stepStartedAt"]);
    let failed = scene.wait_phase("Failed", Duration::from_secs(30)).await;

    let failed_condition = condition(&failed, "Failed");
    assert_eq!(failed_condition["status"], "True");
    assert_eq!(
        failed_condition["reason"], "AnalysisFailed",
        "{failed_condition}"
    );
    assert!(
        failed_condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 failed checks reached the threshold 2")),
        "{failed_condition}"
    );
    let log = records(&failed);
    assert_eq!(
        log.len(),
        2,
        "two failed checks, then the rollback: {log:?}"
    );
    for record in &log {
        assert_eq!(record["verdict"], "Fail", "{record}");
        assert!(
            reason(record).contains(&format!("returned {what}"))
                && reason(record).contains("onNoData: Fail"),
            "{record}"
        );
    }
    assert_check_times(step_started, &log);

    // A failed check, not Unknown: unknownSince never set, the count went 1 then 2.
    for v in scene.history.of("Canary", "web") {
        assert!(
            v.object["status"]["unknownSince"].is_null(),
            "unknownSince set at rv {}",
            v.rv
        );
    }
    assert!(
        first_canary(&scene.history, |c| c["status"]["phase"] == "Progressing"
            && c["status"]["failedChecks"] == 1)
        .is_some(),
        "the first failed check was counted before the rollback"
    );
    let events = scene.events_once("CheckFailed").await;
    assert!(
        events
            .iter()
            .any(|(r, note)| r == "CheckFailed" && note.contains("failed check 1/2")),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|(r, _)| r == "CheckUnknown"),
        "nothing was held as Unknown: {events:?}"
    );
    assert_eq!(scene.prometheus.query_count(), 2, "one query per check");
    assert_eq!(scene.history.route_weights("web"), [0, 20, 0]);
    scene.assert_invariants(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_with_on_no_data_fail_is_a_failed_check() {
    no_measurement_fails_the_check_when_told_to(Hold::PausedAtRest, Answer::nan(), "NaN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_vector_with_on_no_data_fail_is_a_failed_check() {
    no_measurement_fails_the_check_when_told_to(
        Hold::AdmissionPolicy,
        Answer::no_data(),
        "no data",
    )
    .await;
}

// ---- 3. Queries Prometheus refuses, and queries that do not parse ----------------------------

/// Parses as PromQL in sluice's grammar; the fake refuses it as Prometheus would refuse a query
/// it and sluice's parser disagree on.
const REFUSED_QUERY: &str = r#"sum(rate(http_requests_total{code=~"5..", pod=~"{{ workload }}-.*", handler="refused"}[{{ interval }}]))"#;
const BAD_DATA: &str = "invalid parameter \"query\": 1:80: parse error: refused by the fake";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_prometheus_refuses_makes_the_canary_invalid_at_once_and_an_edited_query_recovers()
{
    let refused = QueryMatch::predicate(|q| q.contains("handler=\"refused\""));
    let scene = Scene::start(
        Hold::AdmissionPolicy,
        &Spec {
            query: REFUSED_QUERY,
            ..Spec::default()
        },
    )
    .await;
    scene.prometheus.on(
        refused.clone(),
        Answer::prometheus_error(ErrorType::BadData, BAD_DATA),
    );
    let started = scene.roll_out().await;
    let step_started = time_of(&started["status"]["stepStartedAt"]);
    let invalid = scene.wait_phase("Invalid", Duration::from_secs(20)).await;

    let invalid_spec = condition(&invalid, "InvalidSpec");
    assert_eq!(invalid_spec["status"], "True", "{invalid_spec}");
    let message = invalid_spec["message"].as_str().unwrap_or("");
    assert!(
        message.contains("spec.analysis.metrics[0].query")
            && message.contains("refused by the fake"),
        "the condition names the metric's field and what Prometheus said: {invalid_spec}"
    );
    let rejected = invalid["status"]["rejectedQueries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rejected.len(), 1, "{}", invalid["status"]);
    assert_eq!(rejected[0]["metric"], "error-rate");
    assert!(
        reason(&rejected[0]).contains("refused by the fake"),
        "{rejected:?}"
    );
    // A spec error, not a measurement to wait out: no Unknown check, no unknownSince, and Invalid
    // at the first check (one window after the route write), not at unknownDeadline (1 m).
    assert!(records(&invalid).is_empty(), "{}", invalid["status"]);
    let invalid_rv = first_canary(&scene.history, |c| phase(c) == "Invalid")
        .expect("an Invalid version in the history");
    let invalid_version = scene
        .history
        .of("Canary", "web")
        .into_iter()
        .find(|v| v.rv == invalid_rv)
        .expect("the Invalid version");
    let invalid_at = scene.history.written_at(&invalid_version);
    assert!(
        invalid_at >= step_started + span(INTERVAL)
            && invalid_at <= step_started + span(INTERVAL + ALLOWANCE),
        "Invalid at {invalid_at}, the first check due at {step_started} + {INTERVAL:?}"
    );
    assert_eq!(
        scene.prometheus.count_matching(&refused),
        1,
        "the refused query is sent once"
    );
    let events = scene.events_once("InvalidSpec").await;
    assert!(
        !events.iter().any(|(r, _)| r == "CheckUnknown"),
        "{events:?}"
    );

    // The owner fixes the query: the refusal is lifted and the rollout goes on from its step.
    let edit_rv = scene.edit(&Spec::default()).await;
    let succeeded = scene.wait_phase("Succeeded", Duration::from_secs(30)).await;
    let recovered_rv = first_canary(&scene.history, |c| {
        rv(c) > edit_rv && phase(c) != "Invalid" && c["status"]["phase"].is_string()
    })
    .expect("a recovered version");
    let recovered = scene
        .history
        .of("Canary", "web")
        .into_iter()
        .find(|v| v.rv == recovered_rv)
        .expect("the recovered version")
        .object;
    assert_eq!(phase(&recovered), "Progressing", "{}", recovered["status"]);
    assert_eq!(recovered["status"]["stepIndex"], 0);
    assert_eq!(recovered["status"]["canaryWeight"], 20);
    assert!(
        recovered["status"]["rejectedQueries"].is_null(),
        "{}",
        recovered["status"]
    );
    assert_eq!(condition(&recovered, "InvalidSpec")["status"], "False");
    // Live traffic exactly as it was from the refusal to the recovery: no route write at all.
    let route_writes: Vec<u64> = scene
        .history
        .of("HTTPRoute", "web")
        .iter()
        .map(|v| v.rv)
        .filter(|rv| (invalid_rv..recovered_rv).contains(rv))
        .collect();
    assert!(
        route_writes.is_empty(),
        "the route was written while the Canary was Invalid: {route_writes:?}"
    );
    for v in scene.history.of("Canary", "web") {
        if (invalid_rv..recovered_rv).contains(&v.rv) {
            assert_eq!(phase(&v.object), "Invalid", "rv {}", v.rv);
            assert_eq!(v.object["status"]["canaryWeight"], 20, "rv {}", v.rv);
        }
    }
    assert_eq!(
        scene.prometheus.count_matching(&refused),
        1,
        "the refused query was never sent again"
    );
    assert!(
        scene
            .events_once("SpecFixed")
            .await
            .iter()
            .any(|(r, _)| r == "SpecFixed")
    );
    assert_eq!(scene.history.route_weights("web"), [0, 20, 50, 0]);
    assert!(records(&succeeded).iter().all(|r| r["verdict"] == "Pass"));
    assert_i4_across_recovery(&scene.history);
    scene.assert_invariants_but_i4(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_does_not_parse_is_invalid_before_it_is_sent() {
    // A closing parenthesis short. Were it sent, the fake would refuse it too: only the absence of
    // the query at the fake tells sluice's own parse from Prometheus' refusal.
    const UNPARSEABLE: &str =
        r#"sum(rate(http_requests_total{code=~"5..", handler="unclosed"}[{{ interval }}])"#;
    let unparseable = QueryMatch::predicate(|q| q.contains("unclosed"));
    let scene = Scene::start(Hold::PausedAtRest, &Spec::default()).await;
    scene.prometheus.on(
        unparseable.clone(),
        Answer::prometheus_error(ErrorType::BadData, BAD_DATA),
    );
    // The step holds on Unknown (no data), a check every interval, when the query is edited.
    scene.prometheus.set_default(Answer::no_data());
    scene.roll_out().await;
    scene
        .wait_for("an Unknown check", |c| {
            records(c).iter().any(|r| r["verdict"] == "Unknown")
        })
        .await;
    let edit_rv = scene
        .edit(&Spec {
            query: UNPARSEABLE,
            ..Spec::default()
        })
        .await;
    let invalid = scene.wait_phase("Invalid", Duration::from_secs(20)).await;

    let invalid_spec = condition(&invalid, "InvalidSpec");
    assert_eq!(invalid_spec["status"], "True");
    let message = invalid_spec["message"].as_str().unwrap_or("");
    assert!(
        message.contains("spec.analysis.metrics[0].query") && message.contains("error-rate"),
        "the condition names the metric: {invalid_spec}"
    );
    assert!(
        !message.contains("refused by the fake"),
        "sluice's parser, not Prometheus, refused it: {invalid_spec}"
    );
    assert!(
        invalid["status"]["rejectedQueries"].is_null(),
        "{}",
        invalid["status"]
    );
    assert_eq!(
        scene.prometheus.count_matching(&unparseable),
        0,
        "the query that does not parse was never sent"
    );
    // Live traffic as it was: the first step's weight, no route write since the edit.
    assert_eq!(invalid["status"]["canaryWeight"], 20);
    assert_eq!(
        route_canary_weight(&scene.env.http_route("web").await, "web"),
        20
    );
    assert!(
        scene
            .history
            .of("HTTPRoute", "web")
            .iter()
            .all(|v| v.rv < edit_rv),
        "the route was written after the edit"
    );
    scene.events_once("InvalidSpec").await;
    assert_step_held(&scene.history);
    assert_eq!(scene.history.route_weights("web"), [0, 20]);
    scene.assert_invariants(false);
}

// ---- 4. The metrics Secret: missing, created, rotated -----------------------------------------

const SECRET: &str = "prometheus-auth";
const OLD_TOKEN: &str = "e2e-old-token-7f3a9c2e51";
const NEW_TOKEN: &str = "e2e-new-token-b41d6e08c7";

fn secret_manifest(token: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(token);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {SECRET}, namespace: {NAMESPACE}}}\ntype: Opaque\ndata: {{token: {encoded}}}\n"
    )
}

/// Starts the controller as `Env::start_controller` does, but with both of its output streams
/// read into one buffer. The readers end when the controller does.
fn start_controller_with_logs(
    env: &mut Env,
) -> (Arc<Mutex<String>>, Vec<tokio::task::JoinHandle<()>>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("controller")
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig_path())
        .args(["--metrics-addr", "127.0.0.1:0"])
        // Everything sluice logs, and its libraries' debug logs (HTTP clients included).
        .env("RUST_LOG", "sluice=trace,debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sluice controller starts");
    let logs = Arc::new(Mutex::new(String::new()));
    let streams: [Box<dyn AsyncRead + Unpin + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout piped")),
        Box::new(child.stderr.take().expect("stderr piped")),
    ];
    let readers = streams
        .into_iter()
        .map(|stream| {
            let logs = Arc::clone(&logs);
            tokio::spawn(async move {
                let echo = std::env::var_os("SLUICE_E2E_LOGS").is_some();
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        eprintln!("{line}");
                    }
                    let mut logs = logs.lock().expect("logs");
                    logs.push_str(&line);
                    logs.push('\n');
                }
            })
        })
        .collect();
    env.controller = Some(child);
    (logs, readers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_metrics_secret_holds_the_step_and_a_rotated_token_is_used_at_the_next_check() {
    let mut scene = Scene::prepare(
        Hold::AdmissionPolicy,
        &Spec {
            secret: Some(SECRET),
            ..Spec::default()
        },
    )
    .await;
    scene
        .prometheus
        .require_authorization(Some(&format!("Bearer {OLD_TOKEN}")));
    let (logs, readers) = start_controller_with_logs(&mut scene.env);
    scene.wait_phase("Idle", Duration::from_secs(20)).await;
    scene.roll_out().await;

    // No Secret: Unknown with a reason naming it, the step held, unknownSince set. The Secret is
    // created as soon as the second such check is seen, so that no check runs meanwhile (the next
    // is due an interval after it): the next check is the first that can read it.
    let held = scene
        .wait_for("two Unknown checks", |c| {
            records(c)
                .iter()
                .filter(|r| r["verdict"] == "Unknown")
                .count()
                >= 2
        })
        .await;
    let created_rv = rv(&scene
        .env
        .cluster
        .apply_yaml(&secret_manifest(OLD_TOKEN))
        .await
        .expect("the Secret is created")[0]);
    let created = Timestamp::now();
    let checked = time_of(&held["status"]["lastCheckAt"]);
    assert!(
        created < checked + span(INTERVAL),
        "the Secret was created at {created}, not within an interval of the last check \
         ({checked}): the machine is too slow for this scenario"
    );
    for record in records(&held) {
        assert_eq!(record["verdict"], "Unknown", "{record}");
        assert!(
            reason(&record).contains(&format!("cannot read Secret {SECRET}")),
            "the reason names the Secret: {record}"
        );
    }
    assert_eq!(held["status"]["stepIndex"], 0);
    assert_eq!(held["status"]["canaryWeight"], 20);
    assert!(
        held["status"]["unknownSince"].is_string(),
        "{}",
        held["status"]
    );
    assert_eq!(
        scene.prometheus.query_count(),
        0,
        "no query without the Secret"
    );

    // The rotation, as soon as the second step starts (its first check is due an interval
    // later): Prometheus takes only the new token from then on, and the Secret says it.
    let advanced = scene
        .wait_for("the second step", |c| {
            phase(c) == "Progressing" && c["status"]["stepIndex"] == 1
        })
        .await;
    scene
        .prometheus
        .require_authorization(Some(&format!("Bearer {NEW_TOKEN}")));
    scene
        .env
        .cluster
        .apply_yaml(&secret_manifest(NEW_TOKEN))
        .await
        .expect("the Secret is rotated");
    let rotated = Timestamp::now();
    let step_1 = time_of(&advanced["status"]["stepStartedAt"]);
    assert!(
        rotated < step_1 + span(INTERVAL),
        "the token rotated at {rotated}, not within an interval of the step's start ({step_1}): \
         the machine is too slow for this scenario"
    );

    // The Secret's creation: the next check passed and the step advanced.
    let after_creation: Vec<Value> = records(&advanced)
        .into_iter()
        .filter(|r| time_of(&r["time"]) > created)
        .collect();
    assert_eq!(
        after_creation.first().map(|r| (&r["verdict"], &r["step"])),
        Some((&Value::from("Pass"), &Value::from(0))),
        "the first check after the Secret appeared passed: {after_creation:?}"
    );
    assert!(
        advanced["status"]["unknownSince"].is_null(),
        "{}",
        advanced["status"]
    );
    assert!(
        step_1 <= created + span(INTERVAL + ALLOWANCE),
        "the step advanced at {step_1}, the Secret created at {created}"
    );
    assert!(
        scene
            .history
            .of("Canary", "web")
            .iter()
            .filter(|v| v.rv < created_rv)
            .all(|v| v.object["status"]["stepIndex"].as_i64().unwrap_or(0) == 0),
        "the step held until the Secret existed"
    );
    let events = scene.events_once("CheckUnknown").await;
    assert!(
        events
            .iter()
            .any(|(r, note)| r == "CheckUnknown" && note.contains(SECRET)),
        "{events:?}"
    );

    let succeeded = scene.wait_phase("Succeeded", Duration::from_secs(30)).await;
    let after_rotation: Vec<Value> = records(&succeeded)
        .into_iter()
        .filter(|r| time_of(&r["time"]) > rotated)
        .collect();
    assert_eq!(
        after_rotation.first().map(|r| (&r["verdict"], &r["step"])),
        Some((&Value::from("Pass"), &Value::from(1))),
        "the first check after the rotation passed: {after_rotation:?}"
    );
    let tokens: Vec<Option<String>> = scene
        .prometheus
        .queries()
        .into_iter()
        .map(|q| q.authorization)
        .collect();
    assert_eq!(
        tokens.last(),
        Some(&Some(format!("Bearer {NEW_TOKEN}"))),
        "the new token reached Prometheus: {tokens:?}"
    );
    scene.assert_invariants(true);

    // No secret value in the logs, the Events or the Canary's status, ever.
    scene.env.kill_controller().await;
    for reader in readers {
        reader.await.expect("log reader");
    }
    let logs = logs.lock().expect("logs").clone();
    assert!(
        logs.lines().count() > 10,
        "the controller's logs were captured:\n{logs}"
    );
    let secrets: Vec<String> = [OLD_TOKEN, NEW_TOKEN]
        .iter()
        .flat_map(|t| {
            [
                (*t).to_owned(),
                base64::engine::general_purpose::STANDARD.encode(t),
            ]
        })
        .collect();
    let events = serde_json::to_string(
        &kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(
            scene.env.client(),
            NAMESPACE,
        )
        .list(&Default::default())
        .await
        .expect("events readable")
        .items,
    )
    .expect("json");
    let statuses: Vec<String> = scene
        .history
        .of("Canary", "web")
        .iter()
        .map(|v| v.object["status"].to_string())
        .collect();
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret value in the logs"
        );
        assert!(
            !events.contains(secret.as_str()),
            "a secret value in an Event"
        );
        assert!(
            statuses.iter().all(|s| !s.contains(secret.as_str())),
            "a secret value in the Canary's status"
        );
    }
}
