//! Scaling the canary for the next step, end to end: the real `sluice controller` against the
//! test cluster, the Deployment stand-in and a scripted Prometheus answering healthy values.
//!
//! sluice's own replica change is a new generation of the canary Deployment, which the
//! Deployment controller reports on a moment later. Meanwhile the canary's pods stay Ready, so
//! the route must keep the step's weight: withdrawing it until the status catches up and then
//! putting it back is a traffic flap (seen on a real cluster, 25-57 ms at 100% stable). The test
//! makes the lag last by parking the stand-in's status write for the canary Deployment, and
//! checks the route's whole watch history.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use sluice_testcluster::RequestMatch;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::History;
use support::{Env, Hold, NAMESPACE, app_manifests, phase, route_canary_weight};

const IMAGE_1: &str = "registry.local/web:1";
const IMAGE_2: &str = "registry.local/web:2";
/// The analysis interval of the spec under test: a step lasts at least this long (I4).
const INTERVAL: Duration = Duration::from_secs(1);
/// The spec's progress deadline, the bound on waiting for a rollout to move at all.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);
/// Stable pods: the first step (20%) runs 2 canary pods, the second (50%) 5, so moving to the
/// second step scales the canary up.
const STABLE_REPLICAS: i32 = 10;
const FIRST_STEP: (i32, i32) = (20, 2);
const SECOND_STEP: (i32, i32) = (50, 5);

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
  strategy: {{canary: {{stepWeights: [{first}, {second}]}}}}
  analysis:
    interval: {interval}s
    threshold: 2
    progressDeadline: {deadline}s
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#,
        first = FIRST_STEP.0,
        second = SECOND_STEP.0,
        interval = INTERVAL.as_secs(),
        deadline = PROGRESS_DEADLINE.as_secs(),
    )
}

/// Prints the recorded history when a test fails and `SLUICE_E2E_HISTORY` is set.
struct DumpOnFailure<'h>(&'h History);

impl Drop for DumpOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SLUICE_E2E_HISTORY").is_some() {
            eprintln!("history:\n{}", self.0.dump());
        }
    }
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn generation_lag(d: &Deployment) -> bool {
    let observed = d.status.as_ref().and_then(|s| s.observed_generation);
    observed.unwrap_or_default() < d.metadata.generation.unwrap_or_default()
}

fn ready(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or_default()
}

fn image_of(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
}

fn rv_of(d: &Deployment) -> u64 {
    d.metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .expect("resourceVersion")
}

/// The stand-in's `deployments/status` write for the canary Deployment that follows sluice's
/// replica change is held back: the canary Deployment then has a generation its status does not
/// describe, while its pods stay Ready. The route keeps the step's weight through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_the_canary_up_for_the_next_step_keeps_its_weight_while_the_deployment_controller_lags()
 {
    if support::skipped_on_a_real_cluster("park rules") {
        return;
    }
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let history = History::record(env.client());
    let _dump = DumpOnFailure(&history);
    env.apply(&app_manifests("web", IMAGE_1, STABLE_REPLICAS))
        .await;
    env.apply(&canary_manifest(&prometheus.url())).await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", PROGRESS_DEADLINE, || async {
        (phase(&env.canary("web").await?) == "Idle").then_some(())
    })
    .await;
    let faults = env.cluster.faults().expect("local cluster");
    let patch_of_the_canary_deployment = || {
        RequestMatch::any()
            .verb("patch")
            .resource("deployments")
            .namespace(NAMESPACE)
    };

    // The first step, settled: its 2 pods ready and reported, the route at 20%.
    env.set_image("web", IMAGE_2).await;
    env.eventually(
        "the first step with its canary pods ready",
        PROGRESS_DEADLINE,
        || async {
            let canary = env.deployment("web-canary").await?;
            let settled = image_of(&canary) == Some(IMAGE_2)
                && replicas(&canary) == FIRST_STEP.1
                && ready(&canary) == FIRST_STEP.1
                && !generation_lag(&canary);
            let weight = route_canary_weight(&env.http_route("web").await, "web");
            (settled && weight == FIRST_STEP.0).then_some(())
        },
    )
    .await;

    // The next write of the canary Deployment is sluice's replica change at the end of the step
    // (at least one interval after the route write that started it, I4): the stand-in has
    // nothing left to write for a settled Deployment. Hold it long enough to line up the park
    // that catches the stand-in's status write after it.
    let mut scale = faults.park_next(patch_of_the_canary_deployment(), "web-canary");
    assert_eq!(
        replicas(&env.deployment("web-canary").await.expect("canary")),
        FIRST_STEP.1,
        "the park was set before the step ended"
    );
    assert!(
        scale.arrived(PROGRESS_DEADLINE).await,
        "sluice wrote the canary Deployment for the next step"
    );
    let before_scale = env.deployment("web-canary").await.expect("canary");
    assert_eq!(
        replicas(&before_scale),
        FIRST_STEP.1,
        "the parked write is the one that changes the replicas"
    );
    let mut status_write = faults.park_next(patch_of_the_canary_deployment(), "web-canary");
    let queries_before = prometheus.query_count();
    scale.release();
    assert!(
        status_write.arrived(PROGRESS_DEADLINE).await,
        "the stand-in wrote the canary Deployment's status after the replica change"
    );
    let lagging = env.deployment("web-canary").await.expect("canary");
    assert_eq!(
        replicas(&lagging),
        SECOND_STEP.1,
        "sluice scaled the canary"
    );
    assert!(
        generation_lag(&lagging),
        "the status does not describe the scaled Deployment: {:?}",
        lagging.status
    );
    assert_eq!(
        ready(&lagging),
        FIRST_STEP.1,
        "the first step's pods are Ready"
    );

    // The lag lasts until the controller has analysed the step on the lagging Deployment (its
    // check is due one interval after the route write that started the step, which follows the
    // scale), with one more interval allowed for the reconcile and the query. A controller that
    // takes the route off the canary has shown what this test is about sooner.
    let lag = INTERVAL + INTERVAL;
    let _ = tokio::time::timeout(lag, async {
        while prometheus.query_count() == queries_before
            && !left_the_second_step(&history, rv_of(&lagging))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    status_write.release();
    env.eventually("the Canary to be Succeeded", PROGRESS_DEADLINE, || async {
        (phase(&env.canary("web").await?) == "Succeeded").then_some(())
    })
    .await;

    // The route was at the second step's weight while the status lagged, and never left it.
    let caught_up = history
        .of("Deployment", "web-canary")
        .into_iter()
        .filter(|v| v.rv > rv_of(&lagging))
        .find_map(|v| {
            let canary: Deployment = serde_json::from_value(v.object).ok()?;
            (!generation_lag(&canary)).then_some(v.rv)
        })
        .expect("the canary Deployment's status caught up");
    let during_lag: Vec<(u64, i32)> = history
        .of("HTTPRoute", "web")
        .iter()
        .filter(|v| v.rv > rv_of(&lagging) && v.rv < caught_up)
        .map(|v| (v.rv, route_canary_weight(&v.object, "web")))
        .collect();
    assert!(
        !during_lag.is_empty() && during_lag.iter().all(|(_, w)| *w == SECOND_STEP.0),
        "the route must stay at {}% while the canary Deployment's status lags (rv {} to {}); \
         it went (rv, weight) {during_lag:?}",
        SECOND_STEP.0,
        rv_of(&lagging),
        caught_up
    );
    assert_eq!(
        history.route_weights("web"),
        vec![0, FIRST_STEP.0, SECOND_STEP.0, 0],
        "the spec's steps, each once, then back to stable on promotion"
    );
    history.assert_i1("web");
    history.assert_i4("web", INTERVAL);
}

/// Whether the route, after `since`, reached the second step's weight and then left it.
fn left_the_second_step(history: &History, since: u64) -> bool {
    history
        .of("HTTPRoute", "web")
        .iter()
        .filter(|v| v.rv > since)
        .map(|v| route_canary_weight(&v.object, "web"))
        .skip_while(|w| *w != SECOND_STEP.0)
        .any(|w| w != SECOND_STEP.0)
}
