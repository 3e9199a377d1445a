//! Hooks, gates and notifications with the real `sluice controller` binary against the test
//! cluster and real HTTP hook servers on 127.0.0.1 (the controller runs with
//! `--hook-allow-cidr 127.0.0.1/32`; nothing else restricted is allowed):
//! - a confirm-promotion gate that says no, then yes: it holds without counting failures, then
//!   promotes; a generic notification target hears Started, Step and Promoted;
//! - a rollout hook that fails: failed checks up to the threshold, then a rollback, told to a
//!   Slack-format target whose URL is in a Secret;
//! - a pre-rollout hook that hangs: the call ends after its timeout (half the interval at most)
//!   and counts as a failed check, while a second Canary keeps moving during the hang, and a gate
//!   at the cloud metadata address is refused without a connection and holds its Canary.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::history::History;
use support::hooks::{Answer, HookServer};
use support::{Env, Hold, NAMESPACE, app_manifests, phase};

const ALLOW_LOOPBACK: &[&str] = &["--hook-allow-cidr", "127.0.0.1/32"];

/// A Canary for Deployment `name` with no metrics (every check passes), `extra` appended to its
/// spec (indented by two spaces).
fn canary(name: &str, interval: &str, threshold: i32, steps: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: {name}}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: {name}}}}}}}
  strategy: {{canary: {{stepWeights: {steps}}}}}
  analysis:
    interval: {interval}
    threshold: {threshold}
    progressDeadline: 1m
{extra}"#
    )
}

/// The status record of hook `name`, if any.
fn hook_record(canary: &Value, name: &str) -> Option<Value> {
    canary["status"]["hooks"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
}

fn failed_checks(canary: &Value) -> i64 {
    canary["status"]["failedChecks"].as_i64().unwrap_or(0)
}

async fn idle(env: &Env, name: &str) {
    env.eventually(
        &format!("Canary {name} to be Idle"),
        Duration::from_secs(20),
        || async { env.canary(name).await.filter(|c| phase(c) == "Idle") },
    )
    .await;
}

#[test]
fn the_readme_shows_the_hooks_example_that_lint_checks() {
    // tests/lint.rs lints every file of examples/; the README must show that file, not a copy
    // that drifts from it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/canary-hooks.yaml")).unwrap();
    let manifest = &example[example.find("apiVersion:").unwrap()..];
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("## Hooks, gates and notifications").unwrap()..];
    assert!(
        section.contains(manifest),
        "README's hooks section shows examples/canary-hooks.yaml"
    );
    assert!(section.contains("--hook-allow-cidr"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_promotion_gate_holds_without_counting_failures_until_it_says_yes() {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let history = History::record_on(&env.cluster);
    let hooks = HookServer::start().await;
    hooks.answer("/gate", Answer::Status(403));
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    let extra = format!(
        r#"  hooks:
  - name: approve
    type: confirm-promotion
    url: "{}"
    metadata: {{team: payments}}
  notifications:
  - name: audit
    url: "{}"
"#,
        hooks.url("/gate"),
        hooks.url("/notify")
    );
    env.apply(&canary("web", "1s", 1, "[50]", &extra)).await;
    env.start_controller(ALLOW_LOOPBACK);
    idle(&env, "web").await;
    env.set_image("web", "registry.local/web:2").await;

    // The gate says no at least twice: the canary waits, every answer recorded, nothing counted.
    let waiting = env
        .eventually(
            "the gate to be asked twice while promotion waits",
            Duration::from_secs(30),
            || async {
                let canary = env.canary("web").await?;
                (phase(&canary) == "WaitingPromotion" && hooks.calls("/gate").len() >= 2)
                    .then_some(canary)
            },
        )
        .await;
    let record = hook_record(&waiting, "approve").expect("the gate's answer is in status");
    assert_eq!(record["passed"], false);
    assert_eq!(record["message"], "HTTP 403 Forbidden");
    assert_eq!(failed_checks(&waiting), 0, "a gate's no is not a failure");
    let revision = waiting["status"]["revision"].as_str().unwrap().to_owned();
    let body = &hooks.calls("/gate")[0].body;
    assert_eq!(body["canary"], "web");
    assert_eq!(body["namespace"], NAMESPACE);
    assert_eq!(body["revision"], revision.as_str());
    assert_eq!(body["phase"], "WaitingPromotion");
    assert_eq!(body["weight"], 50);
    assert_eq!(body["type"], "confirm-promotion");
    assert_eq!(body["metadata"]["team"], "payments");

    hooks.answer("/gate", Answer::Status(200));
    let promoted = env
        .eventually(
            "the revision to be promoted once the gate says yes",
            Duration::from_secs(30),
            || async {
                env.canary("web").await.filter(|c| {
                    phase(c) == "Succeeded" && c["status"]["stableRevision"] == revision.as_str()
                })
            },
        )
        .await;
    assert_eq!(failed_checks(&promoted), 0);

    // Notifications go out in the background: wait for them, then check what they carried.
    let events = env
        .eventually(
            "Started, Step and Promoted notifications",
            Duration::from_secs(10),
            || async {
                let events: Vec<String> = hooks
                    .calls("/notify")
                    .iter()
                    .map(|c| c.body["event"].as_str().unwrap_or("").to_owned())
                    .collect();
                ["Started", "Step", "Promoted"]
                    .iter()
                    .all(|e| events.iter().any(|got| got == e))
                    .then_some(events)
            },
        )
        .await;
    assert!(
        !events.iter().any(|e| e == "RolledBack" || e == "Failed"),
        "{events:?}"
    );
    let promoted_body = hooks
        .calls("/notify")
        .into_iter()
        .map(|c| c.body)
        .find(|b| b["event"] == "Promoted")
        .unwrap();
    assert_eq!(promoted_body["canary"], "web");
    assert_eq!(promoted_body["namespace"], NAMESPACE);
    assert_eq!(promoted_body["revision"], revision.as_str());
    assert_eq!(promoted_body["reason"], "Promoted");
    assert!(
        promoted_body["message"]
            .as_str()
            .unwrap()
            .contains(&revision)
    );
    assert!(promoted_body["time"].as_str().is_some());
    history.assert_invariants("web", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rollout_hook_counts_as_failed_checks_and_the_rollback_is_told_to_slack() {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let history = History::record_on(&env.cluster);
    let hooks = HookServer::start().await;
    hooks.answer("/load", Answer::Status(500));
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    // The Slack URL is a credential: it lives in a Secret.
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(hooks.url("/slack"))
    };
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: slack-webhook, namespace: {NAMESPACE}}}\ndata: {{url: {encoded}}}\n"
    ))
    .await;
    let extra = format!(
        r#"  hooks:
  - name: load-test
    type: rollout
    url: "{}"
    retries: 0
  notifications:
  - name: team-channel
    urlSecretRef: {{name: slack-webhook}}
    format: slack
    events: [RolledBack]
"#,
        hooks.url("/load")
    );
    env.apply(&canary("web", "1s", 2, "[20, 50]", &extra)).await;
    env.start_controller(ALLOW_LOOPBACK);
    idle(&env, "web").await;
    env.set_image("web", "registry.local/web:2").await;

    let failed = env
        .eventually(
            "the rollback after two failed checks",
            Duration::from_secs(30),
            || async { env.canary("web").await.filter(|c| phase(c) == "Failed") },
        )
        .await;
    assert_eq!(failed_checks(&failed), 2);
    assert_eq!(failed["status"]["canaryWeight"], 0);
    let record = hook_record(&failed, "load-test").expect("the hook's answer is in status");
    assert_eq!(record["passed"], false);
    assert_eq!(record["message"], "HTTP 500 Internal Server Error");
    assert_eq!(
        hooks.calls("/load").len(),
        2,
        "one call per check, no retries"
    );
    let revision = failed["status"]["revision"].as_str().unwrap().to_owned();

    let slack = env
        .eventually(
            "the rollback to reach Slack",
            Duration::from_secs(10),
            || async {
                let calls = hooks.calls("/slack");
                (!calls.is_empty()).then_some(calls)
            },
        )
        .await;
    let body = slack[0].body.as_object().unwrap();
    assert_eq!(body.len(), 1, "Slack's format is one text field: {body:?}");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("*{NAMESPACE}/web* RolledBack")),
        "{text}"
    );
    assert!(text.contains(&revision), "{text}");
    assert!(
        slack
            .iter()
            .all(|c| c.body["text"].as_str().unwrap_or("").contains("RolledBack")),
        "only the events asked for are sent"
    );
    history.assert_invariants("web", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_is_cut_at_its_timeout_without_delaying_other_canaries_and_metadata_is_refused()
 {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let history = History::record_on(&env.cluster);
    let hooks = HookServer::start().await;
    hooks.answer("/hang", Answer::Hang);
    for name in ["slow", "fast", "meta"] {
        env.apply(&app_manifests(name, &format!("registry.local/{name}:1"), 2))
            .await;
    }
    // `slow`: a pre-rollout hook that never answers; its timeout is 15s, half the 30s interval.
    env.apply(&canary(
        "slow",
        "30s",
        1,
        "[50]",
        &format!(
            "  hooks:\n  - name: smoke\n    type: pre-rollout\n    timeout: 15s\n    url: \"{}\"\n",
            hooks.url("/hang")
        ),
    ))
    .await;
    // `fast`: no hooks, one-second steps.
    env.apply(&canary("fast", "1s", 1, "[20, 50]", "")).await;
    // `meta`: a gate at the cloud metadata address, which no flag here allows.
    env.apply(&canary(
        "meta",
        "1s",
        1,
        "[50]",
        "  hooks:\n  - name: metadata\n    type: confirm-rollout\n    url: http://169.254.169.254/latest/meta-data\n",
    ))
    .await;
    env.start_controller(ALLOW_LOOPBACK);
    for name in ["slow", "fast", "meta"] {
        idle(&env, name).await;
    }

    env.set_image("slow", "registry.local/slow:2").await;
    env.eventually(
        "the hanging hook to be called",
        Duration::from_secs(20),
        || async { (!hooks.calls("/hang").is_empty()).then_some(()) },
    )
    .await;
    let hang_started = hooks.calls("/hang")[0].at;

    // While `slow`'s reconcile waits on its hook, `fast` rolls out step by step.
    env.set_image("fast", "registry.local/fast:2").await;
    env.set_image("meta", "registry.local/meta:2").await;
    env.eventually(
        "the other Canary to reach its last step during the hang",
        Duration::from_secs(12),
        || async {
            env.canary("fast").await.filter(|c| {
                c["status"]["canaryWeight"] == 50
                    || phase(c) == "Promoting"
                    || phase(c) == "Succeeded"
            })
        },
    )
    .await;
    let slow = env.canary("slow").await.unwrap();
    assert!(
        hook_record(&slow, "smoke").is_none() && hang_started.elapsed() < Duration::from_secs(15),
        "the other Canary moved while the hook still hung"
    );

    // The hung call ends at its timeout (15s) and counts as a failed check: threshold 1 rolls back.
    let failed = env
        .eventually(
            "the hanging pre-rollout hook to fail the canary",
            Duration::from_secs(30),
            || async { env.canary("slow").await.filter(|c| phase(c) == "Failed") },
        )
        .await;
    let waited = hang_started.elapsed();
    assert!(
        waited >= Duration::from_secs(14),
        "the call lasted its timeout ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(22),
        "the call was cut at its timeout, not left to hang ({waited:?})"
    );
    let record = hook_record(&failed, "smoke").unwrap();
    assert_eq!(record["passed"], false);
    assert!(
        record["message"]
            .as_str()
            .unwrap()
            .starts_with("no answer within 15s"),
        "{record}"
    );
    assert_eq!(failed_checks(&failed), 1);

    // The metadata gate: refused before any connection, recorded, and holding the canary at 0%.
    let meta = env
        .eventually(
            "the metadata gate to be refused",
            Duration::from_secs(10),
            || async {
                let canary = env.canary("meta").await?;
                hook_record(&canary, "metadata").map(|r| (canary, r))
            },
        )
        .await;
    let (canary, record) = meta;
    let message = record["message"].as_str().unwrap();
    assert_eq!(record["passed"], false);
    assert!(
        message.starts_with("refused before connecting: 169.254.169.254, a cloud metadata address"),
        "{message}"
    );
    assert!(
        message.contains("--hook-allow-cidr 169.254.169.254/32"),
        "{message}"
    );
    assert_eq!(phase(&canary), "Progressing");
    assert_eq!(canary["status"]["canaryWeight"], 0);
    assert_eq!(
        failed_checks(&canary),
        0,
        "a refused gate holds, never fails"
    );

    env.eventually(
        "the other Canary to be promoted",
        Duration::from_secs(30),
        || async { env.canary("fast").await.filter(|c| phase(c) == "Succeeded") },
    )
    .await;
    history.assert_invariants("slow", Duration::from_secs(30));
    history.assert_invariants("fast", Duration::from_secs(1));
    history.assert_invariants("meta", Duration::from_secs(1));
}
