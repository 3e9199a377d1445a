//! The annotation way in, end to end with the real controller: a Deployment annotated with a
//! CanaryPolicy gets a Canary of its own name, is canaried on the next image change, survives a
//! GitOps re-apply of its manifest while a revision is held, and is released cleanly when the
//! annotation goes. A hand-written Canary wins over the annotation; bad annotation values and a
//! missing policy are reported where people look (the Canary's InvalidSpec condition, a Warning
//! event on the Deployment) and change nothing live.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::History;
use support::{Env, Hold, NAMESPACE, events_about, phase, route_canary_weight};

const WAIT: Duration = Duration::from_secs(30);

fn policy(prometheus: &str, manual: bool) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: CanaryPolicy
metadata: {{name: web-standard}}
spec:
  service: {{port: 8080}}
  strategy: {{canary: {{stepWeight: 10, maxWeight: 50}}}}
  manualPromotion: {manual}
  analysis:
    interval: 1m
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - {{name: error-rate, query: 'sum(rate(errors{{pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))', max: 0.05}}
"#
    )
}

/// The Deployment's manifest as a GitOps tool holds it: with the opt-in annotations (or without
/// any when `annotations` is empty), never with `paused`.
fn manifest(image: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}
            }
        }
    })
}

const OPT_IN: &[(&str, &str)] = &[
    ("sluice.dev/policy", "web-standard"),
    ("sluice.dev/router", "gatewayAPI"),
    ("sluice.dev/step-weight", "25"),
    ("sluice.dev/interval", "1s"),
];

/// The Service and HTTPRoute in front of `web` (the Deployment comes from [`manifest`]).
const SERVICE_AND_ROUTE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: public, namespace: gateway-system}]
  rules:
  - backendRefs: [{name: web, port: 8080}]
"#;

/// Applies the manifest as the GitOps tool `argocd` would: server-side, forced, its own manager.
async fn gitops_apply(env: &Env, manifest: &Value) {
    let api: Api<Deployment> = Api::namespaced(env.client(), NAMESPACE);
    api.patch(
        "web",
        &PatchParams::apply("argocd").force(),
        &Patch::Apply(manifest),
    )
    .await
    .expect("GitOps apply");
}

fn is_paused(deployment: &Deployment) -> bool {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.paused)
        .unwrap_or(false)
}

fn canary_label(deployment: &Deployment) -> Option<String> {
    deployment
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("sluice.dev/canary").cloned())
}

/// The policy, the Service and route, the annotated Deployment at image 1 and the controller;
/// the history is recorded from before any of them was applied.
async fn start(hold: Hold, manual: bool) -> (Env, FakePrometheus, History) {
    let mut env = Env::start(hold).await;
    let history = History::record_on(&env.cluster);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&policy(&prometheus.url(), manual)).await;
    env.apply(SERVICE_AND_ROUTE).await;
    gitops_apply(&env, &manifest("registry.local/web:1", OPT_IN)).await;
    env.start_controller(&[]);
    (env, prometheus, history)
}

/// The analysis interval the annotations of [`OPT_IN`] set.
const INTERVAL: Duration = Duration::from_secs(1);

async fn an_annotated_deployment_is_canaried_and_released_when_the_annotation_goes(hold: Hold) {
    let (env, _prometheus, history) = start(hold, false).await;

    // The annotation alone brings a Canary of the Deployment's name, owned by it.
    let canary = env
        .eventually("the annotation's Canary to be adopted", WAIT, || async {
            env.canary("web").await.filter(|c| phase(c) == "Idle")
        })
        .await;
    assert_eq!(
        canary["metadata"]["labels"]["sluice.dev/from-annotations"],
        "true"
    );
    assert_eq!(
        canary["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    assert_eq!(canary["metadata"]["ownerReferences"][0]["name"], "web");
    assert_eq!(canary["spec"]["policyRef"]["name"], "web-standard");
    assert_eq!(
        canary["spec"]["strategy"]["canary"],
        json!({"stepWeight": 25, "maxWeight": 50}),
        "the step-weight annotation overrides the policy's, which keeps its maxWeight"
    );
    assert_eq!(
        canary["spec"]["router"]["gatewayAPI"]["httpRoute"]["name"],
        "web"
    );
    assert_eq!(canary["spec"]["analysis"]["interval"], "1s");
    let target = env.deployment("web").await.unwrap();
    assert_eq!(canary_label(&target).as_deref(), Some("web"));

    // Git gets image 2: held, canaried in steps of 25 up to 50, promoted.
    gitops_apply(&env, &manifest("registry.local/web:2", OPT_IN)).await;
    env.eventually("the canary at 25%", WAIT, || async {
        let route = env.http_route("web").await;
        (route_canary_weight(&route, "web") == 25).then_some(())
    })
    .await;
    // The GitOps tool syncs the same manifest again mid-rollout: the held template stays held.
    gitops_apply(&env, &manifest("registry.local/web:2", OPT_IN)).await;
    let served = env.kubelet.serving(NAMESPACE, "web").expect("served");
    assert_eq!(
        served.images,
        ["registry.local/web:1"],
        "a re-apply released the held template"
    );
    env.eventually("the canary at 50%", WAIT, || async {
        let route = env.http_route("web").await;
        (route_canary_weight(&route, "web") == 50).then_some(())
    })
    .await;
    env.eventually("promotion", WAIT, || async {
        env.canary("web").await.filter(|c| phase(c) == "Succeeded")
    })
    .await;
    let served = env
        .kubelet
        .wait_serving(NAMESPACE, "web", WAIT, |s| {
            s.images == ["registry.local/web:2"]
        })
        .await;
    assert!(served.is_some(), "the promoted revision serves");

    // Git drops the annotations: the Canary goes and the Deployment is released.
    gitops_apply(&env, &manifest("registry.local/web:2", &[])).await;
    env.eventually("the annotation's Canary to be deleted", WAIT, || async {
        env.canary("web").await.is_none().then_some(())
    })
    .await;
    let target = env
        .eventually("the Deployment to be released", WAIT, || async {
            env.deployment("web")
                .await
                .filter(|d| canary_label(d).is_none() && !is_paused(d))
        })
        .await;
    assert!(!is_paused(&target));
    assert!(
        env.deployment("web-canary").await.is_none(),
        "the canary Deployment is removed"
    );
    let route = env.http_route("web").await;
    assert_eq!(
        route_canary_weight(&route, "web"),
        0,
        "all traffic on stable"
    );
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the canary backend is gone from the route: {route}"
    );
    // Dropping the annotations releases image 2, promoted already: all invariants hold.
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_deployment_is_canaried_and_released_with_the_admission_policy_hold() {
    an_annotated_deployment_is_canaried_and_released_when_the_annotation_goes(
        Hold::AdmissionPolicy,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_deployment_is_canaried_and_released_when_paused_at_rest() {
    an_annotated_deployment_is_canaried_and_released_when_the_annotation_goes(Hold::PausedAtRest)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_canary_wins_over_the_annotation() {
    // No traffic moves here: no history is checked.
    let (env, prometheus, _history) = start(Hold::AdmissionPolicy, false).await;
    env.eventually("the annotation's Canary", WAIT, || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;

    env.apply(&format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: web-by-hand, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: web}}}}}}
  analysis:
    interval: 1s
    provider: {{prometheus: {{address: "{}"}}}}
    metrics:
    - {{name: error-rate, query: 'sum(rate(errors[{{{{ interval }}}}]))', max: 0.05}}
"#,
        prometheus.url()
    ))
    .await;

    env.eventually("the annotation's Canary to go", WAIT, || async {
        env.canary("web").await.is_none().then_some(())
    })
    .await;
    env.eventually("the hand-written Canary to take over", WAIT, || async {
        env.canary("web-by-hand")
            .await
            .filter(|c| phase(c) == "Idle")
    })
    .await;
    let target = env
        .eventually("the Deployment labelled for the winner", WAIT, || async {
            env.deployment("web")
                .await
                .filter(|d| canary_label(d).as_deref() == Some("web-by-hand"))
        })
        .await;
    assert_eq!(canary_label(&target).as_deref(), Some("web-by-hand"));
    let events = events_about(env.client(), "web").await;
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "HandWrittenCanaryWins" && note.contains("web-by-hand")),
        "an event on the Deployment says the hand-written Canary wins: {events:?}"
    );
    // The annotation stays; the annotation's Canary does not come back while the other exists.
    gitops_apply(&env, &manifest("registry.local/web:1", OPT_IN)).await;
    let passes = env.kubelet.passes() + 3;
    env.eventually("the stand-in to sync", WAIT, || async {
        (env.kubelet.passes() >= passes).then_some(())
    })
    .await;
    assert!(env.canary("web").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_annotation_value_is_reported_and_changes_nothing_live() {
    let (env, _prometheus, history) = start(Hold::AdmissionPolicy, true).await;
    env.eventually("adoption", WAIT, || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    // A rollout that waits for a person at 50%.
    gitops_apply(&env, &manifest("registry.local/web:2", OPT_IN)).await;
    env.eventually("the canary to wait for promotion", WAIT, || async {
        env.canary("web")
            .await
            .filter(|c| phase(c) == "WaitingPromotion")
    })
    .await;
    assert_eq!(route_canary_weight(&env.http_route("web").await, "web"), 50);

    let mut bad = OPT_IN.to_vec();
    bad.retain(|(k, _)| *k != "sluice.dev/step-weight");
    bad.push(("sluice.dev/step-weight", "a lot"));
    gitops_apply(&env, &manifest("registry.local/web:2", &bad)).await;

    let canary = env
        .eventually("InvalidSpec naming the annotation", WAIT, || async {
            env.canary("web").await.filter(|c| phase(c) == "Invalid")
        })
        .await;
    let invalid = canary["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "InvalidSpec")
        .cloned()
        .unwrap();
    assert_eq!(invalid["status"], "True");
    let message = invalid["message"].as_str().unwrap();
    assert!(
        message.contains("metadata.annotations[sluice.dev/step-weight]"),
        "the condition names the annotation: {message}"
    );
    assert_eq!(
        canary["spec"]["strategy"]["canary"]["stepWeight"], 25,
        "the Canary keeps its last good spec"
    );
    assert_eq!(
        route_canary_weight(&env.http_route("web").await, "web"),
        50,
        "live traffic is left as it was"
    );
    let events = env
        .eventually("a Warning event on the Deployment", WAIT, || async {
            let events = events_about(env.client(), "web").await;
            events
                .iter()
                .any(|(reason, note)| {
                    reason == "InvalidAnnotation" && note.contains("sluice.dev/step-weight")
                })
                .then_some(events)
        })
        .await;
    assert!(!events.is_empty());

    // Fixed: the rollout picks up where it was.
    gitops_apply(&env, &manifest("registry.local/web:2", OPT_IN)).await;
    env.eventually("the rollout to wait for promotion again", WAIT, || async {
        env.canary("web")
            .await
            .filter(|c| phase(c) == "WaitingPromotion")
    })
    .await;
    assert_eq!(route_canary_weight(&env.http_route("web").await, "web"), 50);
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_policy_is_reported_on_the_annotation() {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    env.apply(SERVICE_AND_ROUTE).await;
    gitops_apply(
        &env,
        &manifest(
            "registry.local/web:1",
            &[("sluice.dev/policy", "no-such-policy")],
        ),
    )
    .await;
    env.start_controller(&[]);
    let canary = env
        .eventually("the Canary to say why", WAIT, || async {
            env.canary("web").await.filter(|c| phase(c) == "Invalid")
        })
        .await;
    let message = canary["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let conditions = canary["status"]["conditions"].to_string();
    assert!(
        conditions.contains("metadata.annotations[sluice.dev/policy]")
            && conditions.contains("no-such-policy"),
        "InvalidSpec names the annotation and the policy: {conditions} ({message})"
    );
    let target = env.deployment("web").await.unwrap();
    assert!(!is_paused(&target), "nothing live changed");
    assert!(env.deployment("web-canary").await.is_none());
}

/// The README's example: `examples/canary-policy.yaml` and `examples/deployment-annotated.yaml`,
/// applied as they ship, give a Canary named after the Deployment with the overrides merged into
/// the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_annotation_example_becomes_a_canary_with_its_overrides() {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for file in ["canary-policy.yaml", "deployment-annotated.yaml"] {
        env.apply(&std::fs::read_to_string(root.join(file)).unwrap())
            .await;
    }
    env.start_controller(&[]);
    let canary = env
        .eventually("the example's Canary", WAIT, || async {
            env.canary("web")
                .await
                .filter(|c| c["status"]["phase"].is_string())
        })
        .await;
    let spec = &canary["spec"];
    assert_eq!(spec["targetRef"]["name"], "web");
    assert_eq!(spec["policyRef"]["name"], "web-standard");
    assert_eq!(
        spec["strategy"]["canary"],
        json!({"stepWeight": 20, "maxWeight": 60})
    );
    assert_eq!(spec["analysis"]["interval"], "1m");
    assert_eq!(spec["analysis"]["threshold"], 2);
    assert_eq!(
        spec["service"],
        json!({"name": "web", "port": 80}),
        "the Service name from the annotation, the port from the policy"
    );
}
