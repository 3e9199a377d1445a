//! The real `sluice controller` binary with the routers other than Gateway API weights: blue/green
//! through the Service selector, a replica-ratio canary with no router, an NGINX canary Ingress
//! (promoted, and rolled back), and A/B testing with a Gateway API header match. Each run samples
//! the router object, the canary's and the target's ready pods, what the stable Deployment serves
//! and the Canary's status, and checks I1-I4 and I6 at every sample, not only at the end; and
//! checks them again on the whole recorded history, the traffic split read from each router's own
//! object (`support::history::Router`).

mod support;

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use serde_json::Value;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::{History, Router};
use support::{Env, Hold, NAMESPACE, app_manifests, phase};

const OLD_IMAGE: &str = "registry.local/web:1";
const NEW_IMAGE: &str = "registry.local/web:2";
/// How long I2 may lag: the router object and the status are written by the same reconcile, a
/// few API round trips apart, so a mismatch that outlives several reconciles is a real one.
const I2_LAG: Duration = Duration::from_secs(5);

/// A Canary `web` with `router` and `strategy` (flow-style YAML), analysed every second by one
/// error-rate query against `prometheus` that fails above 0.05. `manual` waits for a person
/// after the last step.
fn canary_manifest(prometheus: &str, router: &str, strategy: &str, manual: bool) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {router}
  strategy: {strategy}
  manualPromotion: {manual}
  analysis:
    interval: 1s
    threshold: 2
    progressDeadline: 1m
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#
    )
}

/// The user's Ingress `web` (with a host, so ingress-nginx would emit request metrics) to the
/// stable Service.
fn user_ingress() -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  ingressClassName: nginx
  rules:
  - host: web.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {{service: {{name: web, port: {{number: 8080}}}}}}
"#
    )
}

/// What one run saw.
struct Rollout {
    /// Each distinct router weight in the order seen, with the phase it was first seen in.
    weights: Vec<(i32, String)>,
    /// The Canary when `done` first held.
    last: Value,
}

/// Ready replicas of Deployment `name` (0 when it does not exist).
async fn ready(env: &Env, name: &str) -> i32 {
    env.deployment(name)
        .await
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// Spec replicas of Deployment `name` (`None` when it does not exist).
async fn replicas(env: &Env, name: &str) -> Option<i32> {
    env.deployment(name).await.and_then(|d| d.spec?.replicas)
}

fn time_of(value: &Value) -> Option<Time> {
    serde_json::from_value(value.clone()).ok()
}

/// Changes the target's image and samples the rollout until `done` holds for the Canary,
/// checking at every sample:
/// - I1: a canary weight above 0 has canary pods ready, and one below 100 has stable pods ready
///   (each side read before and after the weight, so a side that just scaled down after the
///   weight moved away is not mistaken for a violation);
/// - I2: `status.canaryWeight` equals the router weight, or did within [`I2_LAG`];
/// - I3: once promoting, the status holds passing checks of this revision and no failing one;
/// - I4: `stepStartedAt` moves, while progressing, at least one interval (1 s) at a time;
/// - I6: the stable Deployment serves the new image only once the Canary is promoting.
async fn follow<R, RF>(
    env: &Env,
    read_weight: R,
    done: impl Fn(&Value) -> bool,
    timeout: Duration,
) -> Rollout
where
    R: Fn() -> RF,
    RF: Future<Output = i32>,
{
    env.set_image("web", NEW_IMAGE).await;
    let weights: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());
    let mismatch_since: Mutex<Option<Instant>> = Mutex::new(None);
    let step_starts: Mutex<Vec<Time>> = Mutex::new(Vec::new());
    let sampling = env.eventually(
        "the rollout to finish",
        timeout + Duration::from_secs(5),
        || async {
            let served = env.kubelet.serving(NAMESPACE, "web");
            let canary_ready_before = ready(env, "web-canary").await;
            let stable_ready_before = ready(env, "web").await;
            let weight = read_weight().await;
            let canary_ready_after = ready(env, "web-canary").await;
            let stable_ready_after = ready(env, "web").await;
            let canary = env.canary("web").await?;
            let phase = phase(&canary).to_owned();

            if weight > 0 {
                assert!(
                    canary_ready_before > 0 || canary_ready_after > 0,
                    "I1: weight {weight} on a canary with no ready pods (phase {phase})"
                );
            }
            if weight < 100 {
                assert!(
                    stable_ready_before > 0 || stable_ready_after > 0,
                    "I1: weight {} on a stable side with no ready pods (phase {phase})",
                    100 - weight
                );
            }

            let status_weight = canary["status"]["canaryWeight"].as_i64().unwrap_or(0) as i32;
            {
                let mut since = mismatch_since.lock().expect("lock");
                if status_weight == weight {
                    *since = None;
                } else {
                    let started = *since.get_or_insert_with(Instant::now);
                    assert!(
                        started.elapsed() < I2_LAG,
                        "I2: router weight {weight} != status weight {status_weight} for {:?}",
                        started.elapsed()
                    );
                }
            }

            let revision = canary["status"]["revision"].as_str().unwrap_or("");
            if phase == "Promoting" {
                let checks: Vec<&Value> = canary["status"]["analysis"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["revision"] == revision)
                    .collect();
                assert!(
                    checks.iter().any(|c| c["verdict"] == "Pass"),
                    "I3: promoting without a passing check of {revision}: {checks:?}"
                );
                assert!(
                    checks.iter().all(|c| c["verdict"] != "Fail"),
                    "I3: promoting with a failed check of {revision}: {checks:?}"
                );
            }

            if phase == "Progressing"
                && let Some(started) = time_of(&canary["status"]["stepStartedAt"])
            {
                let mut starts = step_starts.lock().expect("lock");
                if starts.last() != Some(&started) {
                    if let Some(previous) = starts.last() {
                        let gap = started.0.duration_since(previous.0);
                        assert!(
                            gap.as_secs_f64() >= 1.0,
                            "I4: a step started {gap:?} after the previous one"
                        );
                    }
                    starts.push(started);
                }
            }

            if served
                .as_ref()
                .is_some_and(|s| s.images.iter().any(|i| i == NEW_IMAGE))
            {
                assert!(
                    matches!(phase.as_str(), "Promoting" | "Succeeded"),
                    "I6: the stable Deployment serves {NEW_IMAGE} in phase {phase}"
                );
            }

            {
                let mut weights = weights.lock().expect("lock");
                if weights.last().map(|(w, _)| *w) != Some(weight) {
                    weights.push((weight, phase.clone()));
                }
            }
            done(&canary).then_some(canary)
        },
    );
    let Ok(last) = tokio::time::timeout(timeout, sampling).await else {
        let seen = format!("{:?}", weights.lock().expect("lock"));
        let target = env.deployment("web").await.map(|d| (d.spec, d.status));
        let status = env.canary("web").await.unwrap_or_default()["status"].clone();
        panic!(
            "the rollout did not finish in {timeout:?}; weights {seen}; Canary status {status}; target {target:?}"
        );
    };
    // The last sample read the weight before the status that ended the wait, so the write that
    // came with that status (traffic back to stable) is read once more here.
    let mut weights = weights.into_inner().expect("lock");
    let weight = read_weight().await;
    if weights.last().map(|(w, _)| *w) != Some(weight) {
        weights.push((weight, phase(&last).to_owned()));
    }
    Rollout { weights, last }
}

/// The new revision was promoted and is the stable one.
fn promoted(canary: &Value) -> bool {
    phase(canary) == "Succeeded"
        && canary["status"]["stableRevision"].as_str().is_some()
        && canary["status"]["stableRevision"] == canary["status"]["revision"]
}

/// Sets up the app (3 stable pods), `extra` manifests and the Canary, starts the controller and
/// waits until the Canary has adopted the target; the history is recorded from before the app
/// was applied.
async fn start(
    hold: Hold,
    router: &str,
    strategy: &str,
    extra: &str,
    answer: Answer,
    manual: bool,
) -> (Env, FakePrometheus, History) {
    let mut env = Env::start(hold).await;
    let history = History::record_on(&env.cluster);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(answer);
    env.apply(&app_manifests("web", OLD_IMAGE, 3)).await;
    // The app serves before it is put under sluice, as it would in a cluster; otherwise the first
    // samples would see a stable side whose pods are still starting, before sluice did anything.
    env.kubelet
        .wait_serving(NAMESPACE, "web", Duration::from_secs(10), |s| {
            s.ready && s.ready_replicas == 3
        })
        .await
        .expect("the stable Deployment serves before adoption");
    if !extra.is_empty() {
        env.apply(extra).await;
    }
    env.apply(&canary_manifest(
        &prometheus.url(),
        router,
        strategy,
        manual,
    ))
    .await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    (env, prometheus, history)
}

/// The analysis interval of [`canary_manifest`].
const INTERVAL: Duration = Duration::from_secs(1);

/// Every invariant on the whole history (I1, I2, I3, I4 and I6), the traffic split read from
/// `router`'s object: the canary Ingress, or the stable Service's selector. The recorded
/// HTTPRoute `web` of `app_manifests` stays the user's in these tests and is not read.
fn assert_history_on(history: &History, router: &Router) {
    history.assert_invariants_on("web", router, INTERVAL);
}

/// The history's checks for the replica ratio, which has no router object: I1, I3, I4 and I6 on
/// the whole history. The recorded HTTPRoute `web` stays the user's (no canary backend), so I1
/// holds there trivially and I4 times steps by status only; I2 does not apply, since the split is
/// the ratio of ready pods, which no object records and status only follows (`follow` samples it,
/// with I1 on both sides).
fn assert_history_without_router(history: &History) {
    history.dumping(|| {
        history.assert_i1("web");
        history.assert_i3("web");
        history.assert_i4("web", INTERVAL);
        history.assert_i6("web");
    });
}

/// After a promotion: the stable Deployment serves the new image, is held as the mode says, and
/// the canary Deployment is at zero.
async fn assert_promoted_end_state(env: &Env, paused_at_rest: bool) {
    let served = env
        .kubelet
        .wait_serving(NAMESPACE, "web", Duration::from_secs(10), |s| {
            s.images == [NEW_IMAGE]
        })
        .await;
    assert!(served.is_some(), "the stable Deployment serves {NEW_IMAGE}");
    let target = env.deployment("web").await.expect("target");
    assert_eq!(
        target.spec.as_ref().and_then(|s| s.paused).unwrap_or(false),
        paused_at_rest,
        "held per mode at rest"
    );
    assert_eq!(
        replicas(env, "web-canary").await,
        Some(0),
        "canary scaled to zero"
    );
}

// ---------------------------------------------------------------------------------------------
// Blue/green through the Service selector.

/// 100 when the stable Service `web` selects the canary pods, 0 when it selects the stable ones.
async fn selector_weight(env: &Env) -> i32 {
    let api: Api<Service> = Api::namespaced(env.client(), NAMESPACE);
    let service = api.get("web").await.expect("stable Service");
    let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
    match selector.get("app").map(String::as_str) {
        Some("web") => 0,
        Some("web-canary") => 100,
        other => panic!("the stable Service selects neither side: app={other:?}"),
    }
}

async fn blue_green_switches_the_service_selector_at_once(hold: Hold) {
    let paused_at_rest = matches!(hold, Hold::PausedAtRest);
    let (env, prometheus, history) = start(
        hold,
        "{service: {}}",
        "{blueGreen: {iterations: 2}}",
        "",
        Answer::value(0.0),
        false,
    )
    .await;

    // The canary runs at full size before any traffic reaches it.
    let full_size_first = Mutex::new(None);
    let rollout = follow(
        &env,
        || async {
            let weight = selector_weight(&env).await;
            let unseen = full_size_first.lock().expect("lock").is_none();
            if weight == 100 && unseen {
                let size = ready(&env, "web-canary").await;
                *full_size_first.lock().expect("lock") = Some(size);
            }
            weight
        },
        promoted,
        Duration::from_secs(60),
    )
    .await;

    let seen: Vec<i32> = rollout.weights.iter().map(|(w, _)| *w).collect();
    assert_eq!(
        seen,
        vec![0, 100, 0],
        "one switch there and one back, nothing between ({:?})",
        rollout.weights
    );
    assert!(
        full_size_first.into_inner().expect("lock").unwrap_or(0) >= 3,
        "the canary was at full size (3 ready) when the selector switched"
    );
    assert!(
        rollout.last["status"]["iterations"].as_i64().unwrap_or(0) >= 2,
        "both iterations analysed: {}",
        rollout.last["status"]
    );
    assert!(prometheus.query_count() >= 2, "analysis queried Prometheus");
    assert_eq!(selector_weight(&env).await, 0, "stable pods selected again");
    let api: Api<Service> = Api::namespaced(env.client(), NAMESPACE);
    let service = api.get("web").await.expect("stable Service");
    assert!(
        !service
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("sluice.dev/stable-selector"),
        "the saved selector annotation is gone once switched back"
    );
    assert_promoted_end_state(&env, paused_at_rest).await;
    // On the whole history, not only on samples: one switch there and one back.
    let router = Router::service_selector("web");
    assert_eq!(
        history.router_weights("web", &router),
        vec![0, 100, 0],
        "the recorded Service selector switched there and back once"
    );
    assert_history_on(&history, &router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_the_service_selector_at_once_with_the_admission_policy_hold() {
    blue_green_switches_the_service_selector_at_once(Hold::AdmissionPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_the_service_selector_at_once_with_the_paused_at_rest_hold() {
    blue_green_switches_the_service_selector_at_once(Hold::PausedAtRest).await;
}

// ---------------------------------------------------------------------------------------------
// No router: the replica ratio.

/// The canary's share of ready pods, in percent rounded half up (0 with nothing ready).
async fn ready_ratio_weight(env: &Env) -> i32 {
    let canary = ready(env, "web-canary").await;
    let stable = ready(env, "web").await;
    let total = canary + stable;
    if total == 0 {
        0
    } else {
        (200 * canary + total) / (2 * total)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_router_the_canary_is_sized_to_the_replica_ratio_of_each_step() {
    let (env, _prometheus, history) = start(
        Hold::AdmissionPolicy,
        "{none: {}}",
        "{canary: {stepWeights: [25, 50]}}",
        "",
        Answer::value(0.0),
        false,
    )
    .await;

    // Spec replicas of the canary, in order: beside 3 stable pods, 25% is 1 pod and 50% is 3.
    let sizes: Mutex<Vec<i32>> = Mutex::new(Vec::new());
    let rollout = follow(
        &env,
        || async {
            if let Some(size) = replicas(&env, "web-canary").await {
                let mut sizes = sizes.lock().expect("lock");
                if sizes.last() != Some(&size) {
                    sizes.push(size);
                }
            }
            ready_ratio_weight(&env).await
        },
        promoted,
        Duration::from_secs(60),
    )
    .await;

    let canary = env.deployment("web-canary").await.expect("canary");
    let labels = canary
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert_eq!(
        labels.get("app").map(String::as_str),
        Some("web"),
        "with no router the canary pods share the stable Service's labels"
    );
    assert_eq!(
        sizes.into_inner().expect("lock"),
        vec![1, 3, 0],
        "the canary sized for 25% then 50% of 3 stable pods, then scaled to zero"
    );
    // The phase beside each weight is the one of the sample that first saw it, which on a busy
    // machine can already be the next phase: the order is what is asserted, not the phase.
    let seen: Vec<i32> = rollout.weights.iter().map(|(w, _)| *w).collect();
    let at = |weight: i32| seen.iter().position(|w| *w == weight);
    assert!(
        matches!((at(25), at(50)), (Some(a), Some(b)) if a < b),
        "the ready ratio went through 25% and then 50% ({:?})",
        rollout.weights
    );
    let progressing: Vec<i32> = rollout
        .weights
        .iter()
        .filter(|(_, phase)| phase == "Progressing")
        .map(|(w, _)| *w)
        .collect();
    assert!(
        progressing.windows(2).all(|w| w[0] <= w[1]) && progressing.iter().all(|w| *w <= 50),
        "the ratio only grew, up to 50%, while progressing ({:?})",
        rollout.weights
    );
    assert_promoted_end_state(&env, false).await;
    assert_history_without_router(&history);
}

// ---------------------------------------------------------------------------------------------
// NGINX Ingress.

/// An NGINX canary over the user's Ingress `web` (admission-policy hold), stepping 20% then 50%,
/// every check answering `answer`; `manual` waits for a person before promotion.
async fn start_nginx(answer: Answer, manual: bool) -> (Env, FakePrometheus, History) {
    start(
        Hold::AdmissionPolicy,
        "{nginx: {ingress: {name: web}}}",
        "{canary: {stepWeights: [20, 50]}}",
        &user_ingress(),
        answer,
        manual,
    )
    .await
}

/// The canary Ingress `web-canary`, if any.
async fn canary_ingress(env: &Env) -> Option<Ingress> {
    let api: Api<Ingress> = Api::namespaced(env.client(), NAMESPACE);
    api.get_opt("web-canary").await.expect("ingress readable")
}

/// The weight the canary Ingress gives (0 when there is none), checking its shape on the way.
async fn nginx_weight(env: &Env) -> i32 {
    let Some(ingress) = canary_ingress(env).await else {
        return 0;
    };
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("nginx.ingress.kubernetes.io/canary")
            .map(String::as_str),
        Some("true"),
        "the canary Ingress is marked as one"
    );
    let owners = ingress
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "Canary" && o.name == "web" && o.controller == Some(true)),
        "the canary Ingress is owned by the Canary: {owners:?}"
    );
    let rules = ingress.spec.and_then(|s| s.rules).unwrap_or_default();
    assert!(
        rules
            .iter()
            .all(|r| r.host.as_deref() == Some("web.example.com")),
        "the canary Ingress keeps the user's host"
    );
    assert!(
        rules
            .iter()
            .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
            .all(|p| p.backend.service.as_ref().map(|s| s.name.as_str()) == Some("web-canary")),
        "the canary Ingress sends to the canary Service"
    );
    annotations
        .get("nginx.ingress.kubernetes.io/canary-weight")
        .map(|w| w.parse().expect("a numeric canary-weight"))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_canary_ingress_steps_its_weight_and_sends_nothing_after_promotion() {
    let (env, _prometheus, history) = start_nginx(Answer::value(0.0), false).await;

    let rollout = follow(
        &env,
        || nginx_weight(&env),
        promoted,
        Duration::from_secs(60),
    )
    .await;
    let steps: Vec<i32> = rollout
        .weights
        .iter()
        .map(|(w, _)| *w)
        .filter(|w| *w > 0)
        .collect();
    assert_eq!(
        steps,
        vec![20, 50],
        "canary-weight stepped as the spec says ({:?})",
        rollout.weights
    );
    // sluice's own router objects are deleted only on opt-out (src/router/mod.rs); between
    // rollouts the canary Ingress stays, sending nothing.
    assert_eq!(nginx_weight(&env).await, 0, "no weight left on the canary");
    let api: Api<Ingress> = Api::namespaced(env.client(), NAMESPACE);
    let user = api.get("web").await.expect("the user's Ingress stays");
    assert!(
        user.metadata.annotations.unwrap_or_default().is_empty(),
        "the user's Ingress is left untouched"
    );
    assert_promoted_end_state(&env, false).await;
    let router = Router::nginx_ingress("web");
    assert_eq!(
        history.router_weights("web", &router),
        vec![0, 20, 50, 0],
        "every recorded version of the canary Ingress, from before it existed"
    );
    assert_history_on(&history, &router);
}

/// A canary Ingress deleted while the rollout waits for a person (a GitOps prune, a hand) is put
/// back at the weight status says, within I2's bound, before anything else happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_ingress_deleted_while_waiting_for_promotion_is_put_back() {
    let (env, _prometheus, history) = start_nginx(Answer::value(0.0), true).await;
    follow(
        &env,
        || nginx_weight(&env),
        |c| phase(c) == "WaitingPromotion",
        Duration::from_secs(60),
    )
    .await;
    let api: Api<Ingress> = Api::namespaced(env.client(), NAMESPACE);
    api.delete("web-canary", &Default::default())
        .await
        .expect("the canary Ingress is deleted");
    // How soon is I2's to judge, on the history below; this only waits for it.
    env.eventually(
        "the canary Ingress back at 50%",
        Duration::from_secs(30),
        || async { (nginx_weight(&env).await == 50).then_some(()) },
    )
    .await;
    let router = Router::nginx_ingress("web");
    assert_eq!(
        history.router_weights("web", &router),
        vec![0, 20, 50, 0, 50],
        "the deletion is recorded, and then the Ingress at the weight status says"
    );
    let canary = env.canary("web").await.expect("the Canary");
    assert_eq!(
        phase(&canary),
        "WaitingPromotion",
        "still waiting for a person"
    );
    assert_history_on(&history, &router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_nginx_canary_is_rolled_back_with_the_weight_at_zero_first() {
    let (env, _prometheus, history) = start_nginx(Answer::value(0.5), false).await;

    // Traffic leaves the canary before its pods do: whenever the canary Deployment has been
    // scaled to zero, no weight remains on it.
    let rollout = follow(
        &env,
        || async {
            let weight = nginx_weight(&env).await;
            let size = replicas(&env, "web-canary").await;
            if size == Some(0) {
                assert_eq!(
                    nginx_weight(&env).await,
                    0,
                    "the canary was scaled to zero with weight on it"
                );
            }
            weight
        },
        |c| phase(c) == "Failed",
        Duration::from_secs(60),
    )
    .await;

    assert!(
        rollout.weights.iter().all(|(w, _)| *w <= 20),
        "a failing canary never advanced past its first step ({:?})",
        rollout.weights
    );
    assert_eq!(
        rollout.last["status"]["failedRevision"], rollout.last["status"]["revision"],
        "the failed revision is recorded"
    );
    env.eventually(
        "the canary to be at zero with no weight",
        Duration::from_secs(10),
        || async {
            (nginx_weight(&env).await == 0 && replicas(&env, "web-canary").await == Some(0))
                .then_some(())
        },
    )
    .await;
    let served = env
        .kubelet
        .serving(NAMESPACE, "web")
        .expect("stable served");
    assert_eq!(
        served.images,
        [OLD_IMAGE],
        "stable still serves the old image"
    );
    let target = env.deployment("web").await.expect("target");
    assert_eq!(
        target.spec.as_ref().and_then(|s| s.paused),
        Some(true),
        "the target stays held with the rejected template"
    );
    let image = target
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(image.as_deref(), Some(NEW_IMAGE));
    let router = Router::nginx_ingress("web");
    assert_eq!(
        history.router_weights("web", &router),
        vec![0, 20, 0],
        "every recorded version of the canary Ingress: the first step, then nothing"
    );
    assert_history_on(&history, &router);
}

// ---------------------------------------------------------------------------------------------
// A/B testing with a Gateway API header match.

/// What the HTTPRoute `web` sends to the canary: whether a rule matching `x-canary: 1` sends
/// everything to it, and the weight of the canary on rules without header matches.
async fn ab_route(env: &Env) -> (bool, i32) {
    let route = env.http_route("web").await;
    let rules: Vec<Value> = route["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let backends = |rule: &Value| -> Vec<Value> {
        rule["backendRefs"].as_array().cloned().unwrap_or_default()
    };
    let has_header = |rule: &Value| {
        rule["matches"].as_array().into_iter().flatten().any(|m| {
            m["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|h| h["name"] == "x-canary" && h["value"] == "1")
        })
    };
    let header_rule = rules.iter().any(|rule| {
        let refs = backends(rule);
        has_header(rule) && !refs.is_empty() && refs.iter().all(|b| b["name"] == "web-canary")
    });
    let weighted = rules
        .iter()
        .filter(|rule| !has_header(rule))
        .flat_map(backends)
        .filter(|b| b["name"] == "web-canary")
        .map(|b| b["weight"].as_i64().unwrap_or(1) as i32)
        .max()
        .unwrap_or(0);
    (header_rule, weighted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_testing_routes_only_matching_requests_to_the_canary_then_removes_the_rule() {
    let (env, _prometheus, history) = start(
        Hold::AdmissionPolicy,
        "{gatewayAPI: {httpRoute: {name: web}}}",
        r#"{abTesting: {iterations: 2, match: [{headers: [{name: x-canary, value: "1"}]}]}}"#,
        "",
        Answer::value(0.0),
        false,
    )
    .await;

    let header_rule_seen = Mutex::new(false);
    let rollout = follow(
        &env,
        || async {
            let ready_before = ready(&env, "web-canary").await;
            let (header_rule, weighted) = ab_route(&env).await;
            if header_rule {
                *header_rule_seen.lock().expect("lock") = true;
                let ready_after = ready(&env, "web-canary").await;
                let canary = env.canary("web").await.unwrap_or_default();
                assert!(
                    ready_before > 0 || ready_after > 0,
                    "I1: header-matched requests sent to a canary with no ready pods ({})",
                    canary["status"]
                );
            }
            weighted
        },
        promoted,
        Duration::from_secs(60),
    )
    .await;

    assert!(
        header_rule_seen.into_inner().expect("lock"),
        "the route had a header-match rule to the canary"
    );
    assert!(
        rollout.weights.iter().all(|(w, _)| *w == 0),
        "no weighted traffic reached the canary ({:?})",
        rollout.weights
    );
    assert!(
        rollout.last["status"]["iterations"].as_i64().unwrap_or(0) >= 2,
        "both iterations analysed"
    );
    let (header_rule, _) = ab_route(&env).await;
    assert!(!header_rule, "promotion removed the header-match rule");
    let route = env.http_route("web").await;
    assert_eq!(
        route["spec"]["rules"].as_array().map(Vec::len),
        Some(1),
        "the route is back to the user's one rule: {}",
        route["spec"]
    );
    assert_promoted_end_state(&env, false).await;
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_ab_canary_loses_its_header_match_before_its_pods() {
    let (env, _prometheus, history) = start(
        Hold::AdmissionPolicy,
        "{gatewayAPI: {httpRoute: {name: web}}}",
        r#"{abTesting: {iterations: 3, match: [{headers: [{name: x-canary, value: "1"}]}]}}"#,
        "",
        Answer::value(0.5),
        false,
    )
    .await;

    let header_rule_seen = Mutex::new(false);
    let rollout = follow(
        &env,
        || async {
            // The canary's size is read before the route: sluice removes the match, then scales
            // down, so a size of zero read first and a match read after is a true violation,
            // while the other order would catch the two writes in between.
            let replicas_before = replicas(&env, "web-canary").await;
            let (header_rule, weighted) = ab_route(&env).await;
            if header_rule {
                *header_rule_seen.lock().expect("lock") = true;
                assert_ne!(
                    replicas_before,
                    Some(0),
                    "the canary was scaled to zero with the header match still on it"
                );
            }
            weighted
        },
        |c| phase(c) == "Failed",
        Duration::from_secs(60),
    )
    .await;

    assert!(
        header_rule_seen.into_inner().expect("lock"),
        "the route had a header-match rule to the canary before the rollback"
    );
    assert!(
        rollout.weights.iter().all(|(w, _)| *w == 0),
        "no weighted traffic reached the canary ({:?})",
        rollout.weights
    );
    let (header_rule, _) = ab_route(&env).await;
    assert!(!header_rule, "the rollback removed the header-match rule");
    env.eventually(
        "the canary to be at zero",
        Duration::from_secs(10),
        || async { (replicas(&env, "web-canary").await == Some(0)).then_some(()) },
    )
    .await;
    let served = env
        .kubelet
        .serving(NAMESPACE, "web")
        .expect("stable served");
    assert_eq!(
        served.images,
        [OLD_IMAGE],
        "stable still serves the old image"
    );
    history.assert_invariants("web", INTERVAL);
}

/// The canary Ingress sluice writes, read the way ingress-nginx reads it: the simulated
/// ingress-nginx follows its `canary-weight` and splits real requests accordingly, and labels
/// canary requests with the canary upstream only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_ingress_nginx_splits_by_the_canary_ingress_sluice_writes() {
    use sluice_testcluster::traffic::app::{AppConfig, TestApp};
    use sluice_testcluster::traffic::ingress::{IngressConfig, SimulatedIngress};
    use sluice_testcluster::traffic::load::{self, LoadConfig};
    use sluice_testcluster::traffic::weights::NginxCanaryWeights;

    let (env, _prometheus, history) = start_nginx(Answer::value(0.0), true).await;
    // Every step passes, then the rollout waits for a person at the last weight.
    let rollout = follow(
        &env,
        || nginx_weight(&env),
        |c| phase(c) == "WaitingPromotion",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        rollout.weights.last().map(|(w, _)| *w),
        Some(50),
        "held at the last step ({:?})",
        rollout.weights
    );

    let stable = TestApp::start(AppConfig::stable(NAMESPACE, "web"))
        .await
        .expect("stable app");
    let canary = TestApp::start(AppConfig::canary(NAMESPACE, "web"))
        .await
        .expect("canary app");
    let mut config = IngressConfig::new(NAMESPACE, "web");
    config.host = Some("web.example.com".to_owned());
    config.port = 8080;
    let ingress = SimulatedIngress::start(
        config,
        &stable,
        &canary,
        NginxCanaryWeights {
            client: env.client(),
            namespace: NAMESPACE.to_owned(),
            canary_ingress: "web-canary".to_owned(),
        },
    )
    .await
    .expect("simulated ingress");
    let share = ingress.refresh().await.expect("the canary Ingress parses");
    assert!(
        (share - 0.5).abs() < 1e-9,
        "ingress-nginx reads 50%: {share}"
    );

    let report = load::run(
        ingress.addr(),
        LoadConfig::new(400.0, 100)
            .host("web.example.com")
            .max_duration(Duration::from_secs(20)),
    )
    .await
    .expect("load runs");
    assert_eq!(report.failed, 0, "{report:?}");
    let to_canary = report.answered_by("canary");
    assert!(
        (49..=51).contains(&to_canary),
        "half of 100 requests reach the canary: {report:?}"
    );
    let metrics = ingress.metrics_text();
    assert!(
        metrics.contains(r#"canary="shop-web-canary-8080""#),
        "canary requests carry the canary upstream: {metrics}"
    );
    let router = Router::nginx_ingress("web");
    assert_eq!(
        history.router_weights("web", &router),
        vec![0, 20, 50],
        "every recorded version of the canary Ingress, held at the last step"
    );
    assert_history_on(&history, &router);
}
