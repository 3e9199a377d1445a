//! A GitOps tool re-applying the Deployment's manifest (server-side with force, as Argo CD and Flux
//! do, and client-side, as `kubectl apply` does; neither carries `paused`) never releases a held
//! template, in either hold mode. The held revision then reaches the stable pods only through a
//! person's `promote` command for that revision, written to the Canary's status as the plugin
//! will write it.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::History;
use support::{Env, Hold, NAMESPACE, app_manifests, canary_resource, phase};

const GIT_MANIFEST_V2: &str = r#"{
  "apiVersion": "apps/v1", "kind": "Deployment",
  "metadata": {"name": "web", "namespace": "shop"},
  "spec": {
    "replicas": 2,
    "selector": {"matchLabels": {"app": "web"}},
    "template": {
      "metadata": {"labels": {"app": "web"}},
      "spec": {"containers": [{"name": "app", "image": "registry.local/web:2", "ports": [{"containerPort": 8080}]}]}
    }
  }
}"#;

fn canary(prometheus: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: web}}}}}}
  strategy: {{canary: {{stepWeights: [50]}}}}
  manualPromotion: true
  analysis:
    interval: 1s
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - {{name: error-rate, query: 'sum(rate(errors{{pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))', max: 0.05}}
"#
    )
}

fn is_paused(deployment: &Deployment) -> bool {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.paused)
        .unwrap_or(false)
}

/// Waits for the stand-in to finish `passes` more sync passes, then asserts the stable pods still
/// run the stable image: the held template did not roll out in the meantime.
async fn assert_still_held(env: &Env, passes: u64, what: &str) {
    let target = env.kubelet.passes() + passes;
    env.eventually(
        "the stand-in to sync again",
        Duration::from_secs(10),
        || async { (env.kubelet.passes() >= target).then_some(()) },
    )
    .await;
    let deployment = env.deployment("web").await.expect("target");
    assert!(
        is_paused(&deployment),
        "{what}: the held Deployment was unpaused"
    );
    let served = env.kubelet.serving(NAMESPACE, "web").expect("served");
    assert_eq!(
        served.images,
        ["registry.local/web:1"],
        "{what}: the held template reached the stable pods"
    );
}

async fn a_gitops_reapply_never_releases_a_held_template(hold: Hold) {
    let mut env = Env::start(hold).await;
    let history = History::record_on(&env.cluster);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&canary(&prometheus.url())).await;
    env.start_controller(&[]);
    env.eventually("adoption", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;

    // CI pushes revision 2 through Git: the GitOps tool applies the whole manifest.
    let deployments: Api<Deployment> = Api::namespaced(env.client(), NAMESPACE);
    let manifest: serde_json::Value = serde_json::from_str(GIT_MANIFEST_V2).expect("manifest");
    deployments
        .patch(
            "web",
            &PatchParams::apply("argocd").force(),
            &Patch::Apply(&manifest),
        )
        .await
        .expect("server-side apply of the manifest");
    let waiting = env
        .eventually(
            "the canary to pass its step and wait for a person",
            Duration::from_secs(30),
            || async {
                env.canary("web")
                    .await
                    .filter(|c| phase(c) == "WaitingPromotion")
            },
        )
        .await;
    let revision = waiting["status"]["revision"]
        .as_str()
        .expect("revision")
        .to_owned();
    assert_still_held(&env, 3, "while waiting for promotion").await;

    // The GitOps tool syncs again (server-side, forced, without `paused`).
    deployments
        .patch(
            "web",
            &PatchParams::apply("argocd").force(),
            &Patch::Apply(&manifest),
        )
        .await
        .expect("server-side re-apply");
    assert_still_held(&env, 3, "after a server-side re-apply").await;

    // A client-side apply sends the manifest as a strategic merge patch under its own manager.
    deployments
        .patch(
            "web",
            &PatchParams {
                field_manager: Some("kubectl-client-side-apply".into()),
                ..Default::default()
            },
            &Patch::Strategic(&manifest),
        )
        .await
        .expect("client-side re-apply");
    assert_still_held(&env, 3, "after a client-side re-apply").await;
    assert_eq!(
        phase(&env.canary("web").await.expect("canary")),
        "WaitingPromotion"
    );

    // A person approves this revision: only then does it reach the stable pods.
    let canaries: Api<DynamicObject> =
        Api::namespaced_with(env.client(), NAMESPACE, &canary_resource());
    let command = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Canary", "metadata": {"name": "web"},
        "status": {"command": {
            "action": "Promote", "revision": revision,
            "requestedAt": jiff::Timestamp::now().to_string(), "requestedBy": "e2e",
        }},
    });
    canaries
        .patch_status(
            "web",
            &PatchParams::apply("kubectl-sluice"),
            &Patch::Apply(&command),
        )
        .await
        .expect("promote command");
    env.eventually(
        "promotion of the approved revision",
        Duration::from_secs(30),
        || async { env.canary("web").await.filter(|c| phase(c) == "Succeeded") },
    )
    .await;
    let served = env
        .kubelet
        .wait_serving(NAMESPACE, "web", Duration::from_secs(10), |s| {
            s.images == ["registry.local/web:2"]
        })
        .await;
    assert!(
        served.is_some(),
        "the approved revision reaches the stable pods"
    );
    let canary = env.canary("web").await.expect("canary");
    let ack = &canary["status"]["acknowledgedCommand"];
    assert_eq!(ack["accepted"], true, "the command is acknowledged: {ack}");
    assert_eq!(
        canary["status"]["command"]["action"], "Promote",
        "the plugin's field is left alone"
    );
    history.assert_invariants("web", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitops_reapply_never_releases_a_held_template_with_the_admission_policy_hold() {
    a_gitops_reapply_never_releases_a_held_template(Hold::AdmissionPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitops_reapply_never_releases_a_held_template_with_the_paused_at_rest_hold() {
    a_gitops_reapply_never_releases_a_held_template(Hold::PausedAtRest).await;
}
