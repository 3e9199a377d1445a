//! Edits and faults mid-rollout, end to end: the real `sluice controller` against the test
//! cluster, the Deployment stand-in and a scripted Prometheus. The Canary's weights, interval and
//! threshold edited mid-step; the target scaled as an HPA does, scaled to zero, and deleted.
//!
//! Every scenario records the whole history of the objects from watches (`support::history`,
//! plus the deletions it leaves out) and checks on it, besides what the scenario is about: I1 on
//! the canary side; I1 on the stable side, telling the user's doing (pods scaled away or deleted
//! under a route that gave them a share) from sluice's (a route write that raised the share of a
//! side with no ready pods, or moved traffic to the canary because stable had none); and I4, by
//! weight, under the interval in force when each step started.
//!
//! A step is kept in place while the test acts on it by a check that cannot judge (Prometheus
//! answers "no data": Unknown holds the step), so no edit races the step it means to land in;
//! the answers turn healthy (or failing) only once the controller has observed the edit.
//!
//! Timing bounds come from the spec under test (its `interval`) plus [`ALLOWANCE`] for the
//! controller's reaction: a watch event, a reconcile and a write or two, on a loaded 2-core
//! machine. No bound is met by sleeping; the one wait that is not on a condition
//! (`the_target_scaled_to_zero_mid_step_holds_the_rollout`) watches for something that must not
//! happen.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::Config};
use serde_json::{Value, json};
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus, QueryMatch};
use support::history::{History, Version, image};
use support::{Env, Hold, NAMESPACE, app_manifests, canary_resource, events_about, phase};
use tokio::task::JoinHandle;

const IMAGE_1: &str = "registry.local/web:1";
const IMAGE_2: &str = "registry.local/web:2";
/// The controller's reaction time on top of what the spec allows: the watch event of a change,
/// one reconcile, and its writes acknowledged, on a 2-core machine running other tests.
const ALLOWANCE: Duration = Duration::from_secs(5);
/// How long any one scenario step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// The Canary the scenarios run: a Gateway API route, one metric whose window is the interval.
fn canary_manifest(prometheus: &str, weights: &str, interval: &str, threshold: i32) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: web}}}}}}
  strategy: {{canary: {{stepWeights: {weights}}}}}
  analysis:
    interval: {interval}
    threshold: {threshold}
    progressDeadline: 1m
    unknownDeadline: 10m
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#
    )
}

/// Deployments and ReplicaSets deleted while the test runs, as tombstones (the object as it was,
/// at the resourceVersion of its deletion). `History` records what exists and leaves deletions
/// out, yet a deleted target is what tells "sluice routed to a side with no pods" from "the user
/// deleted the side".
struct Deletions {
    log: Arc<Mutex<Vec<Version>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Deletions {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Deletions {
    fn record(client: kube::Client) -> Deletions {
        let log = Arc::new(Mutex::new(Vec::new()));
        let resources = [("Deployment", "deployments"), ("ReplicaSet", "replicasets")];
        let tasks = resources
            .into_iter()
            .map(|(kind, plural)| {
                let ar = ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("apps", "v1", kind),
                    plural,
                );
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ar);
                let log = log.clone();
                tokio::spawn(async move {
                    let mut stream = watcher::watcher(api, Config::default())
                        .backoff(sluice_testcluster::QuickBackoff::default())
                        .boxed();
                    while let Some(event) = stream.next().await {
                        let Ok(Event::Delete(object)) = event else {
                            continue;
                        };
                        let rv = object
                            .metadata
                            .resource_version
                            .as_deref()
                            .and_then(|rv| rv.parse().ok())
                            .unwrap_or(0);
                        let name = object.metadata.name.clone().unwrap_or_default();
                        log.lock().expect("deletions").push(Version {
                            rv,
                            kind: kind.to_owned(),
                            name,
                            object: serde_json::to_value(&object).expect("json"),
                            seen: SystemTime::now(),
                        });
                    }
                })
            })
            .collect();
        Deletions { log, tasks }
    }

    fn versions(&self) -> Vec<Version> {
        self.log.lock().expect("deletions").clone()
    }
}

/// A started environment: cluster, stand-in, scripted Prometheus, the app at image 1 with
/// `replicas` pods, its Canary adopted (Idle), and the history recording.
struct Scene {
    env: Env,
    history: History,
    deletions: Deletions,
    prometheus: FakePrometheus,
    /// The resourceVersion of the Canary's adoption: the scenarios write the route only while
    /// setting up, so every later version of it is sluice's (checked by [`Scene::route_writers`]).
    adopted_rv: u64,
    /// Every client's route writes at adoption, and sluice's.
    route_writes_at_adoption: Option<(u64, u64)>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SLUICE_E2E_HISTORY").is_some() {
            eprintln!("history:\n{}", self.history.dump());
        }
    }
}

fn route_writes(counts: &sluice_testcluster::RequestCounts) -> u64 {
    counts.count_where(|k| {
        k.resource == "httproutes" && sluice_testcluster::accounting::is_write(&k.verb)
    })
}

impl Scene {
    async fn start(replicas: i32, weights: &str, interval: &str, threshold: i32) -> Scene {
        let mut env = Env::start(Hold::AdmissionPolicy).await;
        let prometheus = FakePrometheus::start().await.expect("fake prometheus");
        prometheus.set_default(Answer::value(0.0));
        let history = History::record_on(&env.cluster);
        let deletions = Deletions::record(env.client());
        env.apply(&app_manifests("web", IMAGE_1, replicas)).await;
        env.apply(&canary_manifest(
            &prometheus.url(),
            weights,
            interval,
            threshold,
        ))
        .await;
        env.start_controller(&[]);
        let mut scene = Scene {
            env,
            history,
            deletions,
            prometheus,
            adopted_rv: 0,
            route_writes_at_adoption: None,
        };
        scene
            .wait_canary("the Canary to be Idle", |c| phase(c) == "Idle")
            .await;
        scene.adopted_rv = scene
            .env
            .eventually("the adoption in the history", PATIENCE, || async {
                scene
                    .statuses()
                    .iter()
                    .find(|v| v.object["status"]["phase"] == "Idle")
                    .map(|v| v.rv)
            })
            .await;
        if scene.env.cluster.is_local() {
            let all = scene.env.cluster.requests().expect("request accounting");
            let sluice = scene
                .env
                .cluster
                .requests_from(support::SLUICE_CLIENT)
                .expect("request accounting");
            scene.route_writes_at_adoption = Some((route_writes(&all), route_writes(&sluice)));
        }
        scene
    }

    /// Polls the Canary until `ready` holds for it.
    async fn wait_canary(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        self.env
            .eventually(what, PATIENCE, || async {
                self.env.canary("web").await.filter(|c| ready(c))
            })
            .await
    }

    /// Merge-patches the Canary's spec, as a person or a GitOps sync edits it; returns the
    /// generation it made.
    async fn edit_spec(&self, spec: Value) -> i64 {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.env.client(), NAMESPACE, &canary_resource());
        let edited = api
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .expect("Canary edited");
        edited.metadata.generation.expect("a generation")
    }

    /// Waits until the controller has persisted a status computed from `generation`.
    async fn wait_observed(&self, generation: i64) -> Value {
        self.wait_canary(&format!("generation {generation} observed"), |c| {
            c["status"]["observedGeneration"].as_i64() >= Some(generation)
        })
        .await
    }

    /// Scales the target through its scale subresource, as an HPA does.
    async fn scale_target(&self, replicas: i32) {
        let api: Api<Deployment> = Api::namespaced(self.env.client(), NAMESPACE);
        api.patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("target scaled");
    }

    /// From now on every query is answered `answer` (a newer rule wins over older ones).
    fn answer(&self, answer: Answer) {
        self.prometheus.on(QueryMatch::Any, answer);
    }

    /// The Canary's versions.
    fn statuses(&self) -> Vec<Version> {
        self.history.of("Canary", "web")
    }

    /// The canary weights the route went through, consecutive repeats folded.
    fn weights(&self) -> Vec<i32> {
        self.history.route_weights("web")
    }

    /// The replicas the canary Deployment was given, consecutive repeats folded.
    fn canary_replicas(&self) -> Vec<i64> {
        let mut replicas = Vec::new();
        for v in self.history.of("Deployment", "web-canary") {
            let n = v.object["spec"]["replicas"].as_i64().unwrap_or(1);
            if replicas.last() != Some(&n) {
                replicas.push(n);
            }
        }
        replicas
    }

    /// Waits until the history holds a Canary version that `found` accepts, and returns it.
    async fn in_history(&self, what: &str, found: impl Fn(&Version) -> bool) -> Version {
        self.env
            .eventually(what, PATIENCE, || async {
                self.statuses().into_iter().find(|v| found(v))
            })
            .await
    }

    /// Waits until the history holds the latest version of every object the assertions read:
    /// each kind comes through its own watch, so a GET that saw the end of a scenario may be
    /// ahead of the history by a few milliseconds.
    async fn caught_up(&self) {
        let rv_of = |rv: Option<&str>| rv.and_then(|rv| rv.parse().ok()).unwrap_or(0);
        let mut latest: Vec<(&str, String, u64)> = Vec::new();
        if let Some(canary) = self.env.canary("web").await {
            latest.push((
                "Canary",
                "web".into(),
                rv_of(canary["metadata"]["resourceVersion"].as_str()),
            ));
        }
        let route = self.env.http_route("web").await;
        latest.push((
            "HTTPRoute",
            "web".into(),
            rv_of(route["metadata"]["resourceVersion"].as_str()),
        ));
        for (kind, plural) in [("Deployment", "deployments"), ("ReplicaSet", "replicasets")] {
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.env.client(),
                NAMESPACE,
                &ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("apps", "v1", kind),
                    plural,
                ),
            );
            for object in api.list(&Default::default()).await.expect("list").items {
                let rv = rv_of(object.metadata.resource_version.as_deref());
                latest.push((kind, object.metadata.name.unwrap_or_default(), rv));
            }
        }
        for (kind, name, rv) in latest {
            self.env
                .eventually(
                    &format!("{kind} {name} at rv {rv} in the history"),
                    PATIENCE,
                    || async {
                        self.history
                            .of(kind, &name)
                            .iter()
                            .any(|v| v.rv >= rv)
                            .then_some(())
                    },
                )
                .await;
        }
    }

    /// Asserts that no client but sluice wrote the route since the adoption, so every route
    /// version after it is sluice's (the stable-side I1 relies on it).
    fn assert_route_writers(&self) {
        let Some((all_before, sluice_before)) = self.route_writes_at_adoption else {
            return;
        };
        let all = route_writes(&self.env.cluster.requests().expect("request accounting"));
        let sluice = route_writes(
            &self
                .env
                .cluster
                .requests_from(support::SLUICE_CLIENT)
                .expect("request accounting"),
        );
        assert_eq!(
            all - all_before,
            sluice - sluice_before,
            "only sluice wrote the route after the adoption"
        );
    }

    /// The checks every scenario ends with: I1 on both sides (returning what the stable side's
    /// check reports as the user's doing) and no weight rise but at a step advance after the
    /// interval in force.
    fn assert_invariants(&self) -> Vec<String> {
        self.history.assert_i1("web");
        self.assert_route_writers();
        assert_rises_only_at_advances(&self.history, "web");
        stable_side_i1(&self.history, &self.deletions, "web", self.adopted_rv)
    }
}

fn condition<'a>(canary: &'a Value, type_: &str) -> Option<&'a Value> {
    canary["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
}

/// `status/reason` of a condition, e.g. `False/StableNotReady`.
fn condition_is(canary: &Value, type_: &str) -> String {
    condition(canary, type_).map_or_else(
        || "absent".to_owned(),
        |c| {
            format!(
                "{}/{}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        },
    )
}

fn time_of(value: &Value) -> Option<jiff::Timestamp> {
    value.as_str().and_then(|t| t.parse().ok())
}

fn span(d: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).expect("duration")
}

fn at(t: SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).expect("a time after 1970")
}

/// The interval a Canary version's spec says. The scenarios write whole seconds (`20s`, `1s`).
fn interval_of(canary: &Value) -> jiff::SignedDuration {
    let text = canary["spec"]["analysis"]["interval"]
        .as_str()
        .expect("an interval");
    let seconds = text
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text:?} is not a number of seconds"));
    jiff::SignedDuration::from_secs(seconds)
}

/// I4 by weight, across plan edits (which re-map the step index, so `History::assert_i4`'s
/// "steps follow one another by index" does not apply to them): the canary weight goes up only
/// when a step starts. Each route version that raises the weight from a non-zero one is the
/// write of a step whose `stepStartedAt` comes at least the interval in force (the spec the
/// controller had observed when it started the step) after the previous step's, and the write
/// itself is committed at least that long after the previous step's start. A rise from zero is
/// a first step (or traffic given back to a ready canary), which I1 covers.
fn assert_rises_only_at_advances(history: &History, name: &str) {
    let canaries = history.of("Canary", name);
    // Each step as the status first showed it: (rv, stepStartedAt, weight, interval in force).
    let mut steps: Vec<(u64, jiff::Timestamp, i64, jiff::SignedDuration)> = Vec::new();
    for v in &canaries {
        let status = &v.object["status"];
        if status["phase"] != "Progressing" {
            continue;
        }
        let (Some(started), Some(weight)) = (
            time_of(&status["stepStartedAt"]),
            status["canaryWeight"].as_i64(),
        ) else {
            continue;
        };
        if weight > 0 && !steps.iter().any(|s| s.1 == started) {
            steps.push((v.rv, started, weight, interval_of(&v.object)));
        }
    }
    let mut previous = 0;
    for route in history.of("HTTPRoute", name) {
        let weight = i64::from(support::route_canary_weight(&route.object, name));
        if previous > 0 && weight > previous {
            let index = steps
                .iter()
                .position(|s| s.2 == weight && s.0 > route.rv)
                .unwrap_or_else(|| {
                    panic!(
                        "I4: the route rose from {previous}% to {weight}% at rv {} with no step starting at {weight}% ({steps:?})",
                        route.rv
                    )
                });
            let (_, started, _, interval) = steps[index];
            let before = steps[..index]
                .iter()
                .rev()
                .find(|s| s.2 == previous)
                .unwrap_or_else(|| {
                    panic!("I4: no step at {previous}% before the rise to {weight}%")
                });
            assert!(
                started.duration_since(before.1) >= interval,
                "I4: the step at {weight}% started {:?} after the one at {previous}%, less than its interval {interval:?}",
                started.duration_since(before.1)
            );
            let written = history.written_at(&route);
            assert!(
                written.duration_since(before.1) >= interval,
                "I4: the route write to {weight}% (rv {}) came {:?} after the step at {previous}% started, less than {interval:?}",
                route.rv,
                written.duration_since(before.1)
            );
        }
        previous = weight;
    }
}

/// I1 on the stable side, on the whole history (versions and deletions, in resourceVersion
/// order), telling apart who put weight on a stable side with no ready pods:
///
/// - **sluice**, when one of its route writes (a route version after the adoption, `sluice_from`)
///   raises the stable side's share while it has no ready pods and the target still exists,
///   unless the canary has none either (withdrawing traffic from a canary that lost its pods is
///   I1's rule for the canary side); or when, with stable empty, its route write raises the
///   canary's weight: traffic moved to an unanalysed canary because stable has no pods. Both
///   panic.
/// - **the user**, when the stable side loses its ready pods (scaled to zero, deleted) under a
///   route that gives it a share, or when sluice hands the route back to stable after the user
///   deleted the target. Returned, one line each, for the scenario to assert on.
///
/// The time before the stable side first had ready pods is set-up (the route is created before
/// the pods are ready) and not judged.
fn stable_side_i1(
    history: &History,
    deletions: &Deletions,
    name: &str,
    sluice_from: u64,
) -> Vec<String> {
    let canary = format!("{name}-canary");
    let mut events: Vec<(Version, bool)> = history
        .versions()
        .into_iter()
        .map(|v| (v, false))
        .chain(deletions.versions().into_iter().map(|v| (v, true)))
        .collect();
    events.sort_by_key(|(v, _)| v.rv);
    let owner = |v: &Version| -> Option<String> {
        v.object["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "Deployment")
            .and_then(|o| o["name"].as_str().map(str::to_owned))
    };
    let mut stable_ready: BTreeMap<String, i64> = BTreeMap::new();
    let mut canary_ready: BTreeMap<String, i64> = BTreeMap::new();
    let mut target_exists = false;
    let mut had_ready = false;
    let mut share: Option<i64> = None;
    let mut empty_since: Option<u64> = None;
    let mut users = Vec::new();
    for (v, deleted) in events {
        match v.kind.as_str() {
            "Deployment" if v.name == name => target_exists = !deleted,
            "ReplicaSet" => {
                let ready = v.object["status"]["readyReplicas"].as_i64().unwrap_or(0);
                let side = match owner(&v).as_deref() {
                    Some(o) if o == name => &mut stable_ready,
                    Some(o) if o == canary => &mut canary_ready,
                    _ => continue,
                };
                if deleted {
                    side.remove(&v.name);
                } else {
                    side.insert(v.name.clone(), ready);
                }
            }
            "HTTPRoute" if v.name == name => {
                let weight = i64::from(support::route_canary_weight(&v.object, name));
                let stable_share = 100 - weight;
                let empty = had_ready && stable_ready.values().sum::<i64>() == 0;
                let by_sluice = v.rv > sluice_from;
                if empty && stable_share > 0 && by_sluice {
                    let canary_has_pods = canary_ready.values().sum::<i64>() > 0;
                    let raised = share.is_some_and(|s| stable_share > s);
                    if raised && target_exists && canary_has_pods {
                        panic!(
                            "I1 (sluice's): the route write at rv {} raised the stable side's share to {stable_share}% while it had no ready pods",
                            v.rv
                        );
                    }
                    if raised && !target_exists {
                        users.push(format!(
                            "rv {}: sluice handed the route back to stable ({stable_share}%) after the user deleted the target",
                            v.rv
                        ));
                    }
                    if share.is_some_and(|s| stable_share < s) && target_exists {
                        panic!(
                            "traffic moved to the unanalysed canary (route rv {}: {weight}%) because stable had no ready pods",
                            v.rv
                        );
                    }
                }
                share = Some(stable_share);
                continue;
            }
            _ => continue,
        }
        let ready: i64 = stable_ready.values().sum();
        if ready > 0 {
            had_ready = true;
            empty_since = None;
        } else if had_ready && empty_since.is_none() && share.is_some_and(|s| s > 0) {
            empty_since = Some(v.rv);
            users.push(format!(
                "rv {}: the stable side lost its ready pods ({}) while the route gave it {}%",
                v.rv,
                if target_exists {
                    "scaled away"
                } else {
                    "the target deleted"
                },
                share.unwrap_or(0)
            ));
        }
    }
    users
}

// ---- 1. The plan edited mid-step ----------------------------------------------------------------

/// The plan `[10, 20, 30]` is edited to `[50, 60]` during its third step (30%): the step keeps
/// 30% until it ends (re-mapped as the first step of the new plan, with its own clock), then the
/// rollout steps to 50% and 60% and promotes. The weight never rises but at a step advance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_weights_edited_mid_step_never_raise_the_weight_before_the_step_ends() {
    let scene = Scene::start(4, "[10, 20, 30]", "1s", 2).await;
    // Two steps pass; the third is held on Unknown while the plan is edited.
    scene.answer(Answer::Sequence(vec![
        Answer::value(0.0),
        Answer::value(0.0),
        Answer::no_data(),
    ]));
    scene.env.set_image("web", IMAGE_2).await;
    let held = scene
        .wait_canary("the third step held on Unknown", |c| {
            c["status"]["stepIndex"] == 2
                && c["status"]["canaryWeight"] == 30
                && !c["status"]["unknownSince"].is_null()
        })
        .await;
    let generation = scene
        .edit_spec(json!({"strategy": {"canary": {"stepWeights": [50, 60]}}}))
        .await;
    let edited = scene.wait_observed(generation).await;
    assert_eq!(
        edited["status"]["canaryWeight"], 30,
        "the weight held: {edited}"
    );
    assert_eq!(
        edited["status"]["stepIndex"], 0,
        "re-mapped to the new plan's first step"
    );
    assert_eq!(edited["status"]["stepCount"], 2);
    assert_eq!(
        edited["status"]["stepStartedAt"], held["status"]["stepStartedAt"],
        "the edit does not restart the step"
    );
    scene.answer(Answer::value(0.0));
    scene
        .wait_canary("the new revision promoted", |c| phase(c) == "Succeeded")
        .await;
    scene.caught_up().await;

    assert_eq!(
        scene.weights(),
        vec![0, 10, 20, 30, 50, 60, 0],
        "30% held, then the new plan's steps above it"
    );
    // Every status computed from the edited spec shows no weight the new plan does not reach
    // by a step: the first shows the held 30%.
    for v in scene.statuses() {
        let status = &v.object["status"];
        if status["observedGeneration"].as_i64() >= Some(generation)
            && status["phase"] == "Progressing"
        {
            assert!(
                [30, 50, 60].contains(&status["canaryWeight"].as_i64().unwrap_or(-1)),
                "a weight outside the held one and the new plan: {status}"
            );
        }
    }
    let users = scene.assert_invariants();
    assert!(users.is_empty(), "stable always had ready pods: {users:?}");
}

/// The interval edited both ways mid-step. Step 1 starts under `20s`, which is shortened to `1s`:
/// it ends once one second has passed, long before twenty. Step 2 is held on Unknown under `1s`
/// (a check every second) and lengthened to `3s`: every check from then on comes at least three
/// seconds after the one before, and the step ends no earlier than three seconds after it
/// started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_edited_mid_step_governs_the_next_check_and_the_step_end() {
    const LONG: Duration = Duration::from_secs(20);
    const SHORT: Duration = Duration::from_secs(1);
    const MEDIUM: Duration = Duration::from_secs(3);
    let scene = Scene::start(4, "[20, 50]", "20s", 2).await;
    // Step 1's check passes; step 2's checks cannot judge until the answers turn healthy.
    scene.answer(Answer::Sequence(vec![
        Answer::value(0.0),
        Answer::no_data(),
    ]));
    scene.env.set_image("web", IMAGE_2).await;
    let first = scene
        .wait_canary("step 1 carrying 20%", |c| {
            c["status"]["canaryWeight"] == 20 && !c["status"]["stepStartedAt"].is_null()
        })
        .await;
    let step_1 = time_of(&first["status"]["stepStartedAt"]).expect("stepStartedAt");
    let shortened_at = at(SystemTime::now());
    let shortened = scene
        .edit_spec(json!({"analysis": {"interval": "1s"}}))
        .await;
    let second = scene
        .wait_canary("step 2 held on Unknown", |c| {
            c["status"]["stepIndex"] == 1 && !c["status"]["unknownSince"].is_null()
        })
        .await;
    let step_2 = time_of(&second["status"]["stepStartedAt"]).expect("stepStartedAt");
    assert!(
        step_2.duration_since(step_1) >= span(SHORT),
        "step 1 lasted {:?}, less than the new interval",
        step_2.duration_since(step_1)
    );
    let latest = std::cmp::max(step_1 + span(SHORT), shortened_at) + span(SHORT + ALLOWANCE);
    assert!(
        step_2 <= latest && step_2.duration_since(step_1) < span(LONG),
        "step 1 ended at {step_2}: the shortened interval governed it by {latest} (started {step_1}, edited at {shortened_at})"
    );
    let lengthened = scene
        .edit_spec(json!({"analysis": {"interval": "3s"}}))
        .await;
    scene.wait_observed(lengthened).await;
    let healthy_at = at(SystemTime::now());
    scene.answer(Answer::value(0.0));
    let promoting = scene
        .in_history("the promotion in the history", |v| {
            v.object["status"]["phase"] == "Promoting"
        })
        .await;
    scene
        .wait_canary("the new revision promoted", |c| phase(c) == "Succeeded")
        .await;
    scene.caught_up().await;

    assert_eq!(scene.weights(), vec![0, 20, 50, 0]);
    // Checks in step 2, each with the generation it was made under.
    let mut last: Option<jiff::Timestamp> = None;
    let mut under_medium = 0;
    for v in scene.statuses() {
        let status = &v.object["status"];
        let Some(check) = time_of(&status["lastCheckAt"]) else {
            continue;
        };
        if last == Some(check) {
            continue;
        }
        let before = last.replace(check);
        if check <= step_2 {
            continue;
        }
        let generation = status["observedGeneration"].as_i64().unwrap_or(0);
        let interval = if generation >= lengthened {
            under_medium += 1;
            MEDIUM
        } else {
            assert!(
                generation >= shortened,
                "a step-2 check under the first spec"
            );
            SHORT
        };
        let after = before.map_or(step_2, |b| b.max(step_2));
        assert!(
            check.duration_since(after) >= span(interval),
            "a check at {check}, {:?} after the one before, under an interval of {interval:?}",
            check.duration_since(after)
        );
    }
    assert!(
        under_medium >= 1,
        "a check was made under the lengthened interval"
    );
    let promoted_at = scene.history.written_at(&promoting);
    assert!(
        promoted_at.duration_since(step_2) >= span(MEDIUM),
        "step 2 ended {:?} after it started, less than the lengthened interval",
        promoted_at.duration_since(step_2)
    );
    assert!(
        promoted_at <= healthy_at + span(MEDIUM + ALLOWANCE),
        "step 2 ended at {promoted_at}, later than one lengthened interval after the checks turned healthy ({healthy_at}) plus the allowance"
    );
    scene.history.assert_i4("web", SHORT);
    let users = scene.assert_invariants();
    assert!(users.is_empty(), "stable always had ready pods: {users:?}");
}

/// The threshold raised mid-step from 2 to 3 after one failed check: the second failed check holds
/// (2/3) where the old threshold would have rolled back, and the third rolls back, traffic first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_edited_mid_step_judges_the_next_failed_check() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let scene = Scene::start(4, "[20, 50]", "1s", 2).await;
    scene.answer(Answer::Sequence(vec![
        Answer::value(1.0),
        Answer::no_data(),
    ]));
    scene.env.set_image("web", IMAGE_2).await;
    scene
        .wait_canary("one failed check, then Unknown", |c| {
            c["status"]["failedChecks"] == 1 && !c["status"]["unknownSince"].is_null()
        })
        .await;
    let generation = scene.edit_spec(json!({"analysis": {"threshold": 3}})).await;
    scene.wait_observed(generation).await;
    let failing_at = at(SystemTime::now());
    scene.answer(Answer::value(1.0));
    let failed = scene
        .wait_canary("the rollback", |c| phase(c) == "Failed")
        .await;
    scene.caught_up().await;

    let held_at_two = scene.statuses().into_iter().find(|v| {
        let status = &v.object["status"];
        status["failedChecks"] == 2
            && status["phase"] == "Progressing"
            && status["observedGeneration"].as_i64() >= Some(generation)
    });
    assert!(
        held_at_two.is_some(),
        "the second failed check held the step under the new threshold"
    );
    assert_eq!(failed["status"]["failedChecks"], 3);
    assert_eq!(condition_is(&failed, "Failed"), "True/AnalysisFailed");
    let why = condition(&failed, "Failed").expect("Failed")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("reached the threshold 3"), "{why}");
    assert_eq!(
        scene.weights(),
        vec![0, 20, 0],
        "no step; traffic back on stable"
    );
    let rolled_back = scene
        .in_history("the rollback in the history", |v| {
            v.object["status"]["phase"] == "Failed"
        })
        .await;
    // Two failed checks after the answers turned bad, one interval apart at most.
    let by = failing_at + span(INTERVAL * 2 + ALLOWANCE);
    assert!(
        scene.history.written_at(&rolled_back) <= by,
        "rolled back at {}, later than two intervals plus the allowance after the checks failed ({failing_at})",
        scene.history.written_at(&rolled_back)
    );
    scene.history.assert_i4("web", INTERVAL);
    let users = scene.assert_invariants();
    assert!(users.is_empty(), "stable always had ready pods: {users:?}");
}

// ---- 2. The target scaled (as an HPA does), scaled to zero, and deleted -------------------------

/// An HPA scales the target from 10 to 20 and then to 5 pods while step 1 (20%) runs: the canary
/// follows to its share at 20% each time (4, then 1 pod), and nothing else moves: no route write,
/// the same step clock. Step 2 (50% of 5) runs 3 pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_follows_the_targets_replicas_mid_step_at_the_same_weight() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let scene = Scene::start(10, "[20, 50]", "1s", 2).await;
    scene.answer(Answer::no_data());
    scene.env.set_image("web", IMAGE_2).await;
    let held = scene
        .wait_canary("step 1 held on Unknown", |c| {
            c["status"]["canaryWeight"] == 20 && !c["status"]["unknownSince"].is_null()
        })
        .await;
    for (target, canary) in [(20, 4), (5, 1)] {
        let scaled_at = at(SystemTime::now());
        scene.scale_target(target).await;
        let followed = scene
            .env
            .eventually(
                &format!("the canary at {canary} pods"),
                PATIENCE,
                || async {
                    scene
                        .history
                        .of("Deployment", "web-canary")
                        .into_iter()
                        .find(|v| {
                            v.object["spec"]["replicas"] == canary
                                && scene.history.written_at(v) >= scaled_at
                        })
                },
            )
            .await;
        let followed_at = scene.history.written_at(&followed);
        assert!(
            followed_at <= scaled_at + span(ALLOWANCE),
            "the canary followed the target to {target} pods {:?} after it was scaled",
            followed_at.duration_since(scaled_at)
        );
    }
    scene.answer(Answer::value(0.0));
    scene
        .wait_canary("the new revision promoted", |c| phase(c) == "Succeeded")
        .await;
    scene.caught_up().await;

    assert_eq!(
        scene.canary_replicas(),
        vec![2, 4, 1, 3, 0],
        "the canary's share of 10, 20 and 5 pods at 20%, then of 5 at 50%"
    );
    assert_eq!(
        scene.weights(),
        vec![0, 20, 50, 0],
        "no weight change but the steps"
    );
    for v in scene.statuses() {
        let status = &v.object["status"];
        if status["phase"] == "Progressing"
            && status["stepIndex"] == 0
            && status["canaryWeight"] == 20
        {
            assert_eq!(
                status["stepStartedAt"], held["status"]["stepStartedAt"],
                "step 1 kept its clock through the scaling"
            );
        }
    }
    scene.history.assert_i4("web", INTERVAL);
    let users = scene.assert_invariants();
    assert!(users.is_empty(), "stable always had ready pods: {users:?}");
}

/// The target scaled to zero while step 1 (20%) runs: stable has no ready pods. The rollout holds
/// with Ready False `StableNotReady` (no check, no step, no route write: the 80% the route still
/// gives stable is the user's doing, and none of it moves to the unanalysed canary, even with
/// healthy answers), the canary follows to one pod. Scaled back to 10, the rollout goes on and
/// promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_scaled_to_zero_mid_step_holds_the_rollout() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let scene = Scene::start(10, "[20, 50]", "1s", 2).await;
    scene.answer(Answer::no_data());
    scene.env.set_image("web", IMAGE_2).await;
    scene
        .wait_canary("step 1 held on Unknown", |c| {
            c["status"]["canaryWeight"] == 20 && !c["status"]["unknownSince"].is_null()
        })
        .await;
    let scaled_at = at(SystemTime::now());
    scene.scale_target(0).await;
    let holding = scene
        .wait_canary("the rollout held for stable", |c| {
            condition_is(c, "Ready") == "False/StableNotReady"
        })
        .await;
    let message = holding["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("has no ready pods (scaled to 0 replicas)"),
        "{message}"
    );
    let held_rv = scene
        .in_history("the hold in the history", |v| {
            condition_is(&v.object, "Ready") == "False/StableNotReady"
        })
        .await;
    assert!(
        scene.history.written_at(&held_rv) <= scaled_at + span(ALLOWANCE),
        "the hold was reported {:?} after the target was scaled to zero",
        scene.history.written_at(&held_rv).duration_since(scaled_at)
    );
    // Healthy answers now: a rollout that did not hold would check, pass and step. Three
    // intervals pass with nothing asked or moved. This wait makes no bound pass; it watches for
    // what must not happen.
    scene.answer(Answer::value(0.0));
    let queries = scene.prometheus.query_count();
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(
        scene.prometheus.query_count(),
        queries,
        "no check while held"
    );
    let still = scene.env.canary("web").await.expect("Canary");
    assert_eq!(still["status"]["stepIndex"], 0);
    assert_eq!(still["status"]["canaryWeight"], 20);
    assert_eq!(condition_is(&still, "Ready"), "False/StableNotReady");
    let back_at = at(SystemTime::now());
    scene.scale_target(10).await;
    let promoting = scene
        .in_history("the promotion in the history", |v| {
            v.object["status"]["phase"] == "Promoting"
        })
        .await;
    scene
        .wait_canary("the new revision promoted", |c| phase(c) == "Succeeded")
        .await;
    scene.caught_up().await;

    assert_eq!(
        scene.weights(),
        vec![0, 20, 50, 0],
        "nothing moved while held"
    );
    assert_eq!(
        scene.canary_replicas(),
        vec![2, 1, 2, 5, 0],
        "the canary's share of 10 pods, of none (one pod), of 10 again, then at 50%"
    );
    // Stable's pods ready again (the stand-in's readiness delay), then one step of an interval
    // and the last one: promotion follows within two intervals plus the allowance.
    let by = back_at + span(INTERVAL * 2 + ALLOWANCE);
    assert!(
        scene.history.written_at(&promoting) <= by,
        "promoted at {}, later than {by}",
        scene.history.written_at(&promoting)
    );
    let events = events_about(scene.env.client(), "web").await;
    assert!(
        events.iter().any(|(reason, _)| reason == "StableNotReady"),
        "a StableNotReady event: {events:?}"
    );
    scene.history.assert_i4("web", INTERVAL);
    let users = scene.assert_invariants();
    assert!(
        users
            .iter()
            .any(|u| u.contains("lost its ready pods (scaled away)") && u.contains("80%")),
        "the stable side scaled away under its 80% is reported as the user's doing: {users:?}"
    );
}

/// The target Deployment deleted while step 1 (20%) runs: the Canary says so (phase Failed, Failed
/// `TargetDeleted`, Ready `TargetNotFound`) and removes what sluice made, and only that: its entry
/// in the user's route (which otherwise stays as the user wrote it), the canary Deployment and
/// Service. The user's route and Service stay, and so does the Canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_deleted_mid_rollout_fails_it_and_removes_only_what_sluice_made() {
    let scene = Scene::start(4, "[20, 50]", "1s", 2).await;
    scene.answer(Answer::no_data());
    scene.env.set_image("web", IMAGE_2).await;
    scene
        .wait_canary("step 1 held on Unknown", |c| {
            c["status"]["canaryWeight"] == 20 && !c["status"]["unknownSince"].is_null()
        })
        .await;
    let users_route = scene.history.of("HTTPRoute", "web")[0].object["spec"].clone();
    let deployments: Api<Deployment> = Api::namespaced(scene.env.client(), NAMESPACE);
    let deleted_at = at(SystemTime::now());
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .expect("target deleted");
    let failed = scene
        .wait_canary("the rollout ended", |c| phase(c) == "Failed")
        .await;
    assert_eq!(condition_is(&failed, "Failed"), "True/TargetDeleted");
    assert_eq!(condition_is(&failed, "Ready"), "False/TargetNotFound");
    assert_eq!(
        failed["status"]["failedRevision"],
        failed["status"]["revision"]
    );
    assert_eq!(failed["status"]["canaryWeight"], 0);
    let message = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("was deleted during the rollout"),
        "{message}"
    );

    let services: Api<Service> = Api::namespaced(scene.env.client(), NAMESPACE);
    scene
        .env
        .eventually(
            "the canary Deployment and Service gone",
            PATIENCE,
            || async {
                let deployment = deployments.get_opt("web-canary").await.expect("readable");
                let service = services.get_opt("web-canary").await.expect("readable");
                (deployment.is_none() && service.is_none()).then_some(())
            },
        )
        .await;
    // The target's ReplicaSets go with it (garbage collection), before the checks below read
    // the stable side's end.
    scene
        .env
        .eventually("the target's ReplicaSets deleted", PATIENCE, || async {
            let replica_sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
                Api::namespaced(scene.env.client(), NAMESPACE);
            let left = replica_sets.list(&Default::default()).await.expect("list");
            let owned = left.items.iter().any(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.name == "web")
            });
            let tombstones = scene.deletions.versions();
            let seen = |kind: &str| {
                tombstones.iter().any(|v| {
                    v.kind == kind
                        && match kind {
                            "Deployment" => v.name == "web",
                            _ => image(&v.object) == Some(IMAGE_1),
                        }
                })
            };
            (!owned && seen("Deployment") && seen("ReplicaSet")).then_some(())
        })
        .await;
    assert!(
        services.get_opt("web").await.expect("readable").is_some(),
        "the user's Service stays"
    );
    assert!(scene.env.canary("web").await.is_some(), "the Canary stays");

    let route = scene.env.http_route("web").await;
    let backends: Vec<&str> = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(
        backends,
        vec!["web"],
        "sluice's backend is gone, the user's stays"
    );
    for field in ["parentRefs", "hostnames"] {
        assert_eq!(
            route["spec"][field], users_route[field],
            "the user's {field} untouched"
        );
    }
    scene.caught_up().await;
    assert_eq!(scene.weights(), vec![0, 20, 0]);
    let routes = scene.history.of("HTTPRoute", "web");
    let carried = routes
        .iter()
        .position(|v| support::route_canary_weight(&v.object, "web") == 20)
        .expect("the route at 20%");
    let cleaned = routes[carried..]
        .iter()
        .find(|v| support::route_canary_weight(&v.object, "web") == 0)
        .expect("the route back on stable");
    let cleaned_at = scene.history.written_at(cleaned);
    assert!(
        cleaned_at >= deleted_at && cleaned_at <= deleted_at + span(ALLOWANCE),
        "the route was handed back at {cleaned_at}, not within the allowance after the target was deleted at {deleted_at}"
    );
    let events = events_about(scene.env.client(), "web").await;
    assert!(
        events.iter().any(|(reason, _)| reason == "TargetDeleted"),
        "a TargetDeleted event: {events:?}"
    );
    let users = scene.assert_invariants();
    assert!(
        users.iter().any(|u| u.contains("the target deleted")),
        "the stable side deleted under its share is reported as the user's doing: {users:?}"
    );
}
