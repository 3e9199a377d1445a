//! `kubectl sluice` end to end: the real plugin and controller binaries against the test cluster.
//! `abort` in each phase returns traffic to stable; pause, resume, skip and promote are answered;
//! `status --watch` prints a line per change; `analyze` runs the queries without writing; every
//! write the plugin makes is to `canaries/status`; kubectl finds the plugin on PATH, and
//! `kubectl wait --for=condition=Promoted` is not fooled by the previous release.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice::cli::ExitCode;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::{History, I2_WITHIN, rv_of};
use support::plugin::{self, canary_manifest, template_revision};
use support::{Env, Hold, app_manifests, phase, route_canary_weight};
use tokio::io::AsyncBufReadExt;

const KUBECTL: &str = "/usr/bin/kubectl";
const PLUGIN_RBAC: &str = include_str!("../deploy/examples/plugin-rbac.yaml");

/// Whether the example ClusterRole `role` grants every call in `made`.
fn assert_granted(role: &str, made: &sluice_testcluster::RequestCounts) {
    let docs = sluice_testcluster::harness::parse_yaml_documents(PLUGIN_RBAC).expect("parses");
    let rules = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == role)
        .map(|d| d["rules"].clone())
        .expect("the role exists");
    let listed =
        |list: &Value, value: &str| list.as_array().into_iter().flatten().any(|v| v == value);
    for key in made.0.keys() {
        let resource = if key.subresource.is_empty() {
            key.resource.clone()
        } else {
            format!("{}/{}", key.resource, key.subresource)
        };
        let granted = rules.as_array().into_iter().flatten().any(|rule| {
            listed(&rule["apiGroups"], &key.group)
                && listed(&rule["resources"], &resource)
                && listed(&rule["verbs"], &key.verb)
        });
        assert!(
            granted,
            "{role} in deploy/examples/plugin-rbac.yaml does not grant {key:?}"
        );
    }
}

/// The app adopted (Idle) under a running controller, and the history recorded from before the
/// app was applied.
async fn env_with(prometheus: &FakePrometheus, interval: &str, extra_spec: &str) -> (Env, History) {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let history = History::record_on(&env.cluster);
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&canary_manifest(
        &prometheus.url(),
        interval,
        "",
        extra_spec,
    ))
    .await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;
    (env, history)
}

async fn until_phase(env: &Env, wanted: &str, with_traffic: bool) -> Value {
    env.eventually(
        &format!("phase {wanted}"),
        Duration::from_secs(30),
        || async {
            let canary = env.canary("web").await?;
            let weight = route_canary_weight(&env.http_route("web").await, "web");
            (phase(&canary) == wanted && (!with_traffic || weight > 0)).then_some(canary)
        },
    )
    .await
}

async fn abort_returns_traffic_to_stable(env: &Env, during: &str) {
    let abort = plugin::run(env, &["abort", "web", "-o", "json"]).await;
    assert_eq!(abort.code, 0, "abort during {during}: {abort:?}");
    assert_eq!(abort.json()["state"], "Accepted");
    let failed = env
        .eventually(
            "traffic back on stable",
            Duration::from_secs(20),
            || async {
                let canary = env.canary("web").await?;
                let weight = route_canary_weight(&env.http_route("web").await, "web");
                (phase(&canary) == "Failed" && weight == 0).then_some(canary)
            },
        )
        .await;
    let reason = failed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .map(|c| c["reason"].clone());
    assert_eq!(reason, Some(Value::from("Aborted")), "during {during}");
    assert_eq!(failed["status"]["canaryWeight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_in_every_phase_returns_traffic_to_stable_and_promote_passes_the_manual_gate() {
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, history) = env_with(&prometheus, "3s", "  manualPromotion: true").await;
    // Request accounting exists on the test cluster only.
    let counted = env.cluster.reset_requests().is_ok();

    // Progressing, with traffic on the canary.
    env.set_image("web", "registry.local/web:2").await;
    until_phase(&env, "Progressing", true).await;
    abort_returns_traffic_to_stable(&env, "Progressing").await;

    // Paused (with traffic held where it was), after a `status --watch` saw the pause.
    env.set_image("web", "registry.local/web:3").await;
    until_phase(&env, "Progressing", true).await;
    let mut watch = plugin::spawn(&env, &["status", "web", "--watch"]);
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let pause = plugin::run(&env, &["pause", "web"]).await;
    assert_eq!(pause.code, 0, "{pause:?}");
    assert!(pause.stdout.contains("Accepted"), "{pause:?}");
    let paused = until_phase(&env, "Paused", true).await;
    assert_eq!(paused["status"]["paused"], true);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(" Paused ")) {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line per change")
            .expect("stdout readable")
            .expect("watch still running");
        seen.push(line);
    }
    assert!(
        seen.windows(2).all(|pair| pair[0] != pair[1]),
        "a line only when something changes: {seen:?}"
    );
    drop(watch);
    abort_returns_traffic_to_stable(&env, "Paused").await;

    // Waiting for promotion.
    env.set_image("web", "registry.local/web:4").await;
    until_phase(&env, "WaitingPromotion", false).await;
    abort_returns_traffic_to_stable(&env, "WaitingPromotion").await;

    // Resume refused outside a pause; then promote passes the gate of revision 5.
    env.set_image("web", "registry.local/web:5").await;
    let fifth = template_revision(&env, "web").await;
    let before_skip = until_phase(&env, "Progressing", true).await;
    let skip = plugin::run(&env, &["skip", "web", "-o", "json"]).await;
    assert_eq!(skip.code, 0, "{skip:?}");
    assert_eq!(skip.json()["action"], "Skip");
    let skipped = env.canary("web").await.unwrap();
    assert!(
        skipped["status"]["stepIndex"] == 1 || phase(&skipped) == "WaitingPromotion",
        "skip moved to the next step: {skipped}"
    );
    until_phase(&env, "WaitingPromotion", false).await;
    let resume = plugin::run(&env, &["resume", "web"]).await;
    assert_eq!(
        resume.code,
        i32::from(ExitCode::Refused.code()),
        "{resume:?}"
    );
    let status = plugin::run(&env, &["status", "web", "-o", "json"]).await;
    assert_eq!(status.code, 0, "{status:?}");
    let view = status.json();
    assert_eq!(view["phase"], "WaitingPromotion");
    assert_eq!(view["revision"], fifth.as_str());
    assert_eq!(view["checks"][0]["metric"], "error-rate");
    assert_eq!(view["checks"][0]["verdict"], "Pass");
    assert_eq!(view["command"]["state"], "Refused");
    let promote = plugin::run(&env, &["promote", "web"]).await;
    assert_eq!(promote.code, 0, "{promote:?}");
    let command = &env.canary("web").await.unwrap()["status"]["command"];
    assert_eq!(command["action"], "Promote");
    assert_eq!(command["revision"], fifth.as_str());
    assert_eq!(
        command["requestedBy"], "testcluster",
        "the kubeconfig context's user"
    );
    let gate = plugin::run(&env, &["wait", "web", "--timeout", "60s"]).await;
    assert_eq!(gate.code, 0, "{gate:?}");
    assert_eq!(
        env.canary("web").await.unwrap()["status"]["stableRevision"],
        fifth.as_str()
    );
    // I1 and I2 hold throughout, aborts included (an abort ends a step early, which I4 allows:
    // it ends no step by advancing it). The person's `skip` of revision 5 moves it on without
    // its analysis, so I3, I4 and I6 are checked on the history before the skip; revision 5's
    // promotion after it is the person's doing.
    history.dumping(|| {
        history.assert_i1("web");
        history.assert_i2("web", I2_WITHIN);
        let before = history.until(rv_of(&before_skip));
        before.assert_i3("web");
        before.assert_i4("web", Duration::from_secs(3));
        before.assert_i6("web");
    });

    if !counted {
        return;
    }
    // Every write the plugin made went to the status subresource.
    let writes = env.cluster.requests_from("kubectl-sluice").expect("local");
    let written: Vec<_> = writes
        .0
        .keys()
        .filter(|k| !["get", "list", "watch"].contains(&k.verb.as_str()))
        .collect();
    assert!(!written.is_empty());
    assert!(
        written
            .iter()
            .all(|k| k.verb == "patch" && k.resource == "canaries" && k.subresource == "status"),
        "{written:?}"
    );
    assert_granted("sluice-plugin-operator", &writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_runs_every_query_now_and_writes_nothing() {
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, _history) = env_with(&prometheus, "1s", "").await;
    // Request accounting exists on the test cluster only.
    let counted = env.cluster.reset_requests().is_ok();

    prometheus.set_default(Answer::value(0.25));
    let run = plugin::run(&env, &["analyze", "web", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let rows = run.json();
    assert_eq!(rows[0]["metric"], "error-rate");
    assert_eq!(rows[0]["value"], 0.25);
    assert_eq!(rows[0]["verdict"], "Fail");
    assert!(
        rows[0]["query"].as_str().unwrap().contains("web-canary"),
        "{rows}"
    );

    // --prometheus-url wins over the address in the spec.
    let other = FakePrometheus::start().await.expect("second prometheus");
    other.set_default(Answer::value(0.01));
    let run = plugin::run(&env, &["analyze", "web", "--prometheus-url", &other.url()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("METRIC"), "{run:?}");
    assert!(run.stdout.contains("0.01"), "{run:?}");
    assert!(run.stdout.contains("Pass"), "{run:?}");

    assert_eq!(phase(&env.canary("web").await.unwrap()), "Idle");
    if counted {
        let made = env.cluster.requests_from("kubectl-sluice").expect("local");
        assert_eq!(made.writes(), 0, "analyze wrote: {made:?}");
        assert_granted("sluice-plugin-viewer", &made);
    }
}

fn kubectl() -> Option<&'static Path> {
    let path = Path::new(KUBECTL);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: no kubectl at {KUBECTL}");
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_finds_the_plugin_and_kubectl_wait_is_not_fooled_by_the_previous_release() {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, history) = env_with(&prometheus, "1s", "  manualPromotion: true").await;
    let kubeconfig = env.cluster.kubeconfig_path().to_owned();
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = std::env::join_paths(std::iter::once(plugin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let kubectl_run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(kubectl);
        // kubectl refuses flags before a plugin's name, and hands the plugin every flag after it.
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("PATH", &path)
            .kill_on_drop(true);
        command.output()
    };

    let list = kubectl_run(&["sluice", "list", "-A"])
        .await
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{list:?}");
    assert!(stdout.starts_with("NAMESPACE"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("shop") && l.contains("web") && l.contains("Idle")),
        "{stdout}"
    );

    // The previous release is Promoted (already at Idle: the timeout is only for kubectl); once
    // the controller has seen the new template the condition says False for the new revision,
    // and kubectl wait times out.
    let at_rest = kubectl_run(&[
        "wait",
        "--for=condition=Promoted",
        "canaries.sluice.dev/web",
        "-n",
        "shop",
        "--timeout=10s",
    ])
    .await
    .expect("kubectl runs");
    assert!(
        at_rest.status.success(),
        "the previous release is Promoted, so there is something to be fooled by: {at_rest:?}"
    );
    env.set_image("web", "registry.local/web:2").await;
    let revision = template_revision(&env, "web").await;
    until_phase(&env, "WaitingPromotion", false).await;
    let early = kubectl_run(&[
        "wait",
        "--for=condition=Promoted",
        "canaries.sluice.dev/web",
        "-n",
        "shop",
        "--timeout=2s",
    ])
    .await
    .expect("kubectl runs");
    assert!(!early.status.success(), "{early:?}");
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("timed out"),
        "kubectl wait failed for another reason than the condition: {early:?}"
    );

    let promote = kubectl_run(&["sluice", "promote", "web", "-n", "shop"])
        .await
        .expect("kubectl runs");
    assert!(promote.status.success(), "{promote:?}");
    let promoted = kubectl_run(&[
        "wait",
        "--for=condition=Promoted",
        "canaries.sluice.dev/web",
        "-n",
        "shop",
        "--timeout=60s",
    ])
    .await
    .expect("kubectl runs");
    assert!(promoted.status.success(), "{promoted:?}");
    let canary = env.canary("web").await.unwrap();
    assert_eq!(canary["status"]["stableRevision"], revision.as_str());
    history.assert_invariants("web", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_during_promotion_returns_traffic_to_stable() {
    // The stable Deployment's pods of this image never become ready (the canary's, labelled with
    // their revision, do), so the promotion stays in Promoting until it is aborted.
    let never_ready: sluice_testcluster::kubelet::NeverReady = std::sync::Arc::new(|template| {
        let stuck_image = template.spec.as_ref().is_some_and(|spec| {
            spec.containers.iter().any(|c| {
                c.image
                    .as_deref()
                    .is_some_and(|i| i.ends_with(":stuck-promotion"))
            })
        });
        let canary_pod = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .is_some_and(|labels| labels.contains_key(sluice::api::names::REVISION_LABEL));
        stuck_image && !canary_pod
    });
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let mut env = Env::start_with_never_ready(never_ready).await;
    let history = History::record_on(&env.cluster);
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&canary_manifest(
        &prometheus.url(),
        "1s",
        "",
        "  manualPromotion: true",
    ))
    .await;
    env.start_controller(&[]);
    until_phase(&env, "Idle", false).await;

    env.set_image("web", "registry.local/web:stuck-promotion")
        .await;
    until_phase(&env, "WaitingPromotion", false).await;
    let promote = plugin::run(&env, &["promote", "web"]).await;
    assert_eq!(promote.code, 0, "{promote:?}");
    let promoting = until_phase(&env, "Promoting", false).await;
    assert!(
        promoting["status"]["canaryWeight"].as_i64().unwrap() > 0,
        "the canary still carries traffic while the stable Deployment rolls: {promoting}"
    );
    abort_returns_traffic_to_stable(&env, "Promoting").await;
    // The promotion passed the manual gate after a complete analysis, so every invariant holds,
    // the abort during it included.
    history.assert_invariants("web", Duration::from_secs(1));
}
