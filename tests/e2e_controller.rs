//! The real `sluice controller` binary against the test cluster (API server, Deployment
//! stand-in) and a scripted Prometheus: a new revision of a Gateway-API-routed Deployment is
//! canaried step by step and promoted, in both hold modes, with the invariants checked while it
//! runs, not only at the end.

mod support;

use std::time::Duration;

use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::{Env, Hold, NAMESPACE, app_manifests, phase, route_canary_weight};

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
    progressDeadline: 1m
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#
    )
}

async fn a_healthy_revision_is_promoted(hold: Hold) {
    let paused_at_rest = matches!(hold, Hold::PausedAtRest);
    let mut env = Env::start(hold).await;
    let history = support::history::History::record_on(&env.cluster);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&canary_manifest(&prometheus.url())).await;
    env.start_controller(&[]);

    // Adoption: the current template becomes stable and the target is labelled (and paused in the
    // paused-at-rest mode).
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    let target = env.deployment("web").await.expect("target");
    assert_eq!(
        target
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("sluice.dev/canary"))
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(
        target.spec.as_ref().and_then(|s| s.paused).unwrap_or(false),
        paused_at_rest
    );

    env.set_image("web", "registry.local/web:2").await;

    // Watch the rollout: record every distinct canary weight, and check I1 (no weight on a canary
    // without ready pods) at every sample.
    let weights = std::sync::Mutex::new(Vec::new());
    let succeeded = env
        .eventually(
            "the new revision to be promoted",
            Duration::from_secs(60),
            || async {
                let route = env.http_route("web").await;
                let weight = route_canary_weight(&route, "web");
                {
                    let mut weights = weights.lock().expect("weights");
                    if weights.last() != Some(&weight) {
                        weights.push(weight);
                    }
                }
                if weight > 0 {
                    let canary = env.deployment("web-canary").await;
                    let ready = canary
                        .and_then(|d| d.status)
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0);
                    assert!(
                        ready > 0,
                        "I1: weight {weight} on a canary with no ready pods"
                    );
                }
                let canary = env.canary("web").await?;
                let revision = canary["status"]["revision"].as_str().map(str::to_owned);
                (phase(&canary) == "Succeeded"
                    && canary["status"]["stableRevision"].as_str() == revision.as_deref())
                .then_some(canary)
            },
        )
        .await;

    let weights = weights.into_inner().expect("weights");
    let steps: Vec<i32> = weights.iter().copied().filter(|w| *w > 0).collect();
    assert_eq!(
        steps,
        vec![20, 50],
        "weights stepped as the spec says (observed {weights:?})"
    );
    assert_eq!(
        route_canary_weight(&env.http_route("web").await, "web"),
        0,
        "traffic back on stable"
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
        target.spec.as_ref().and_then(|s| s.paused).unwrap_or(false),
        paused_at_rest,
        "held per mode at rest"
    );
    let canary_deployment = env
        .deployment("web-canary")
        .await
        .expect("canary deployment kept");
    assert_eq!(
        canary_deployment.spec.and_then(|s| s.replicas),
        Some(0),
        "canary scaled to zero"
    );
    let conditions = succeeded["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let promoted = conditions
        .iter()
        .find(|c| c["type"] == "Promoted")
        .expect("Promoted condition");
    assert_eq!(promoted["status"], "True");
    assert!(prometheus.query_count() >= 2, "analysis queried Prometheus");
    // The hold is what the test is named for: the new template reached the stable pods only by
    // the promotion (I6), with the other invariants on the whole history.
    history.assert_invariants("web", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_revision_is_promoted_with_the_admission_policy_hold() {
    a_healthy_revision_is_promoted(Hold::AdmissionPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_revision_is_promoted_with_the_paused_at_rest_hold() {
    a_healthy_revision_is_promoted(Hold::PausedAtRest).await;
}

/// The write budget of DESIGN.md section 10: one healthy promotion with three steps on a Gateway
/// API route costs the controller at most 20 API writes, Events included (21 when the target is
/// held paused at rest, which must be paused again after the promotion), with at most one status
/// write per step and per phase change and none that changes nothing. Counted from the
/// controller's own requests (User-Agent `sluice/...`) between the template change and two quiet
/// intervals after `Succeeded`. The same rollout is checked for I1 and I4 on its whole history.
async fn a_healthy_three_step_promotion_stays_within_the_write_budget(hold: Hold) {
    if support::skipped_on_a_real_cluster("request accounting") {
        return;
    }
    let budget = match hold {
        Hold::AdmissionPolicy => 20,
        Hold::PausedAtRest => 21,
    };
    let mut env = Env::start(hold).await;
    let history = support::history::History::record_on(&env.cluster);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&canary_manifest(&prometheus.url()).replace("[20, 50]", "[20, 40, 60]"))
        .await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    // Adoption's own writes and their watch events settle before the window opens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.cluster.reset_requests().expect("local cluster");
    let opened = std::time::SystemTime::now();

    env.set_image("web", "registry.local/web:2").await;
    env.eventually(
        "the new revision to be promoted",
        Duration::from_secs(60),
        || async {
            let canary = env.canary("web").await?;
            let revision = canary["status"]["revision"].as_str().map(str::to_owned);
            (phase(&canary) == "Succeeded"
                && canary["status"]["stableRevision"].as_str() == revision.as_deref())
            .then_some(canary)
        },
    )
    .await;
    // What the promotion still writes after `Succeeded` (nothing, if all went in its decision)
    // belongs to it: two intervals of quiet close the window.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let writes = env.cluster.writes_from("sluice").expect("local cluster");
    let counts = env.cluster.requests_from("sluice").expect("local cluster");
    let listing = support::writes::listing(&writes, opened);
    if std::env::var_os("SLUICE_E2E_WRITES").is_some() {
        eprintln!("sluice's writes during the rollout:\n{listing}");
    }
    assert_eq!(
        counts.writes(),
        writes.len() as u64,
        "the log holds every counted write"
    );
    let status_writes = writes
        .iter()
        .filter(|w| w.key.resource == "canaries" && w.key.subresource == "status")
        .count();
    assert_eq!(
        support::writes::status_writes_changing_nothing(&writes),
        0,
        "a status write that changes nothing:\n{listing}"
    );
    // Started, three steps, promoting, promoted: six status changes at most.
    assert!(
        status_writes <= 6,
        "{status_writes} status writes, more than one per step and phase change:\n{listing}"
    );
    assert!(
        writes.len() <= budget,
        "{} writes for one three-step promotion, budget {budget}:\n{listing}",
        writes.len()
    );
    history.assert_i1("web");
    history.assert_i4("web", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_three_step_promotion_stays_within_the_write_budget_with_the_admission_policy_hold()
 {
    a_healthy_three_step_promotion_stays_within_the_write_budget(Hold::AdmissionPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_three_step_promotion_stays_within_the_write_budget_paused_at_rest() {
    a_healthy_three_step_promotion_stays_within_the_write_budget(Hold::PausedAtRest).await;
}
