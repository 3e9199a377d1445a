//! The CI gate end to end: the real `kubectl-sluice wait` and `sluice controller` binaries
//! against the test cluster and a scripted Prometheus. Each outcome is made to happen and must
//! return its own documented exit code; a `wait` started right after an image change must not
//! return the previous release's success.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use sluice::cli::ExitCode;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::{History, I2_WITHIN};
use support::plugin::{self, canary_manifest, template_revision};
use support::{Env, Hold, NAMESPACE, app_manifests, phase};

const STABLE_IMAGE: &str = "registry.local/web:1";

/// The app adopted (Idle) under a running controller, and the history recorded from before the
/// app was applied.
async fn env_with(
    prometheus: &FakePrometheus,
    extra_analysis: &str,
    extra_spec: &str,
) -> (Env, History) {
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let history = History::record_on(&env.cluster);
    env.apply(&app_manifests("web", STABLE_IMAGE, 2)).await;
    env.apply(&canary_manifest(
        &prometheus.url(),
        "1s",
        extra_analysis,
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

fn code(outcome: ExitCode) -> i32 {
    i32::from(outcome.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_binds_to_the_new_template_and_exits_0_only_once_that_revision_is_promoted() {
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (mut env, history) = env_with(&prometheus, "", "").await;

    // At rest the current template is the stable one: there is nothing left to wait for.
    let at_rest = plugin::run(&env, &["wait", "web", "-o", "json"]).await;
    assert_eq!(at_rest.code, code(ExitCode::PROMOTED), "{at_rest:?}");
    assert_eq!(at_rest.json()["outcome"], "Promoted");

    // With the controller stopped, the Canary keeps saying Succeeded/Promoted for the previous
    // revision after the image changes; the gate must not take that success.
    env.kill_controller().await;
    env.set_image("web", "registry.local/web:2").await;
    let new = template_revision(&env, "web").await;
    let early = plugin::run(&env, &["wait", "web", "--timeout", "2s", "-o", "json"]).await;
    assert_eq!(early.code, code(ExitCode::TimedOut), "{early:?}");
    assert_eq!(early.json()["revision"], new.as_str());
    assert!(
        early.stderr.contains(&format!(
            "waiting for the controller to pick up revision {new}"
        )),
        "{early:?}"
    );

    let waiting = plugin::spawn(&env, &["wait", "web", "--timeout", "60s", "-o", "json"]);
    env.start_controller(&[]);
    let done = plugin::finish(waiting, Duration::from_secs(90)).await;
    assert_eq!(done.code, code(ExitCode::PROMOTED), "{done:?}");
    let summary = done.json();
    assert_eq!(summary["outcome"], "Promoted");
    assert_eq!(summary["exitCode"], 0);
    assert_eq!(summary["revision"], new.as_str());
    let canary = env.canary("web").await.expect("canary");
    assert_eq!(canary["status"]["stableRevision"], new.as_str());
    assert!(
        done.stderr.contains("Progressing"),
        "progress lines on stderr: {done:?}"
    );
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_failing_its_checks_exits_1_and_retry_reruns_it_to_promotion() {
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, history) = env_with(&prometheus, "", "").await;

    prometheus.set_default(Answer::value(0.5));
    env.set_image("web", "registry.local/web:2").await;
    let failing = template_revision(&env, "web").await;
    let failed = plugin::run(&env, &["wait", "web", "--timeout", "60s", "-o", "json"]).await;
    assert_eq!(failed.code, code(ExitCode::FailedAnalysis), "{failed:?}");
    assert_eq!(failed.json()["outcome"], "FailedAnalysis");

    // Retry the same revision once the metric is healthy, without touching the template.
    prometheus.set_default(Answer::value(0.0));
    let retry = plugin::run(&env, &["retry", "web", "-o", "json"]).await;
    assert_eq!(retry.code, code(ExitCode::Success), "{retry:?}");
    assert_eq!(retry.json()["state"], "Accepted");
    assert_eq!(retry.json()["revision"], failing.as_str());
    let promoted = plugin::run(&env, &["wait", "web", "--timeout", "60s"]).await;
    assert_eq!(promoted.code, code(ExitCode::PROMOTED), "{promoted:?}");
    assert_eq!(
        template_revision(&env, "web").await,
        failing,
        "template untouched"
    );
    let canary = env.canary("web").await.expect("canary");
    assert_eq!(canary["status"]["stableRevision"], failing.as_str());
    // The person's `retry` starts the revision's steps over, which I4 takes for a restarted
    // step: I4 is checked on each run of it, split at the first status progressing again after
    // the failure; the rest on the whole history.
    let canaries = history.of("Canary", "web");
    let failed_at = canaries
        .iter()
        .position(|v| v.object["status"]["phase"] == "Failed")
        .expect("the failure is in the history");
    let rerun = canaries[failed_at..]
        .iter()
        .find(|v| v.object["status"]["phase"] == "Progressing")
        .expect("the rerun is in the history")
        .rv;
    history.dumping(|| {
        history.assert_i1("web");
        history.assert_i2("web", I2_WITHIN);
        history.assert_i3("web");
        history.assert_i6("web");
        history.until(rerun - 1).assert_i4("web", INTERVAL);
        history.since(rerun).assert_i4("web", INTERVAL);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_never_ready_within_the_progress_deadline_exits_2() {
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, history) = env_with(&prometheus, "    progressDeadline: 3s", "").await;
    env.set_image("web", "registry.local/web:2-crashloop").await;
    let run = plugin::run(&env, &["wait", "web", "--timeout", "60s", "-o", "json"]).await;
    assert_eq!(run.code, code(ExitCode::FailedProgressDeadline), "{run:?}");
    assert_eq!(run.json()["outcome"], "FailedProgressDeadline");
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_revision_times_out_is_superseded_and_an_abort_of_its_successor_exits_3() {
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, history) = env_with(&prometheus, "", "  manualPromotion: true").await;

    env.set_image("web", "registry.local/web:2").await;
    let first = template_revision(&env, "web").await;
    env.eventually(
        "revision 2 to wait for promotion",
        Duration::from_secs(30),
        || async {
            env.canary("web")
                .await
                .filter(|c| phase(c) == "WaitingPromotion")
        },
    )
    .await;
    let timed_out = plugin::run(&env, &["wait", "web", "--timeout", "2s", "-o", "json"]).await;
    assert_eq!(timed_out.code, code(ExitCode::TimedOut), "{timed_out:?}");
    assert_eq!(timed_out.json()["outcome"], "TimedOut");

    // A gate bound to revision 2 ends when revision 3 replaces it.
    let bound_to_first = plugin::spawn(&env, &["wait", "web", "--timeout", "60s", "-o", "json"]);
    // Only once the gate has reported its progress is it known to be bound to revision 2.
    let mut bound_to_first = bound_to_first;
    let stderr = bound_to_first.stderr.take().expect("stderr piped");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let first_line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("wait prints its binding")
        .expect("stderr readable")
        .expect("a line");
    assert!(first_line.contains(&first), "{first_line}");
    env.set_image("web", "registry.local/web:3").await;
    let second = template_revision(&env, "web").await;
    let superseded = plugin::finish(bound_to_first, Duration::from_secs(30)).await;
    assert_eq!(
        superseded.code,
        code(ExitCode::Superseded),
        "{superseded:?}"
    );
    assert_eq!(superseded.json()["revision"], first.as_str());

    // Approving revision 2 now must not promote revision 3.
    env.eventually(
        "the controller to roll out revision 3",
        Duration::from_secs(20),
        || async {
            env.canary("web")
                .await
                .filter(|c| c["status"]["revision"] == second.as_str())
        },
    )
    .await;
    let stale = plugin::run(&env, &["promote", "web", "--revision", &first]).await;
    assert_eq!(stale.code, code(ExitCode::Refused), "{stale:?}");
    assert!(stale.stderr.contains("refused"), "{stale:?}");
    let canary = env.canary("web").await.expect("canary");
    assert_ne!(canary["status"]["stableRevision"], second.as_str());
    assert!(
        ["Progressing", "WaitingPromotion"].contains(&phase(&canary)),
        "revision 3 still rolling out: {canary}"
    );

    // Abort revision 3 while a gate waits for it.
    let bound_to_second = plugin::spawn(&env, &["wait", "web", "--timeout", "60s", "-o", "json"]);
    let abort = plugin::run(&env, &["abort", "web"]).await;
    assert_eq!(abort.code, code(ExitCode::Success), "{abort:?}");
    let aborted = plugin::finish(bound_to_second, Duration::from_secs(30)).await;
    assert_eq!(aborted.code, code(ExitCode::Aborted), "{aborted:?}");
    assert_eq!(aborted.json()["revision"], second.as_str());
    // The person's abort ends revision 3 early, which no invariant forbids (it advances no step
    // and promotes nothing): all of them hold.
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_missing_canaries_unreachable_clusters_and_bad_flags_each_have_their_code() {
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    // No traffic moves here: no history is checked.
    let (mut env, _history) = env_with(&prometheus, "", "").await;

    env.apply(&app_manifests("api", STABLE_IMAGE, 1)).await;
    env.apply(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Canary\nmetadata: {{name: api, namespace: {NAMESPACE}}}\nspec:\n  targetRef: {{name: api}}\n  policyRef: {{name: no-such-policy}}\n"
    ))
    .await;
    let invalid = plugin::run(&env, &["wait", "api", "--timeout", "30s", "-o", "json"]).await;
    assert_eq!(invalid.code, code(ExitCode::InvalidSpec), "{invalid:?}");
    assert!(
        invalid.json()["message"]
            .as_str()
            .unwrap()
            .contains("no-such-policy"),
        "{invalid:?}"
    );

    let missing = plugin::run(&env, &["wait", "nothing-here", "--timeout", "5s"]).await;
    assert_eq!(missing.code, code(ExitCode::CouldNotAsk), "{missing:?}");
    assert!(
        missing.stderr.contains("no Canary nothing-here"),
        "{missing:?}"
    );

    // A kubeconfig naming a port nothing listens on.
    let dir = tempfile::tempdir().expect("temp dir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        sluice_testcluster::kubeconfig::render(&format!("http://127.0.0.1:{port}"), NAMESPACE),
    )
    .expect("kubeconfig written");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
        .args(["wait", "web", "--timeout", "5s", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .await
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(code(ExitCode::CouldNotAsk)),
        "{output:?}"
    );

    for args in [
        &["wait"][..],
        &["wait", "web", "--timeout", "soon"],
        &["frobnicate"],
    ] {
        let usage = plugin::run(&env, args).await;
        assert_eq!(usage.code, code(ExitCode::Usage), "{args:?}: {usage:?}");
        assert!(usage.stdout.is_empty(), "errors go to stderr: {usage:?}");
    }

    if support::skipped_on_a_real_cluster("fault injection for the rest") {
        return;
    }
    // Losing the cluster in the middle of a wait is "could not ask", not "still progressing":
    // with the controller stopped the gate waits for it to pick up revision 2, then the API
    // server refuses every connection until the gate's timeout has passed.
    env.kill_controller().await;
    env.set_image("web", "registry.local/web:2").await;
    let mut cut_off = plugin::spawn(&env, &["wait", "web", "--timeout", "4s", "-o", "json"]);
    let stderr = cut_off.stderr.take().expect("stderr piped");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let bound = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("wait prints its binding")
        .expect("stderr readable")
        .expect("a line");
    assert!(bound.contains("waiting up to"), "{bound}");
    let faults = env.cluster.faults().expect("local cluster");
    faults.refuse_connections_for(Duration::from_secs(60));
    let lost = plugin::finish(cut_off, Duration::from_secs(30)).await;
    faults.accept_connections();
    assert_eq!(lost.code, code(ExitCode::CouldNotAsk), "{lost:?}");
    assert!(
        lost.json()["message"]
            .as_str()
            .unwrap()
            .contains("lost contact"),
        "{lost:?}"
    );
}

/// The analysis interval of [`canary_manifest`] (`"1s"` in [`env_with`]).
const INTERVAL: Duration = Duration::from_secs(1);
/// Time for what the spec does not bound: the controller seeing the new template, the canary's
/// pods becoming ready (300 ms in the test kubelet), watch and process start-up latency.
const ALLOWANCE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_unknown_until_the_unknown_deadline_exit_9_unmeasured_not_1() {
    const UNKNOWN_DEADLINE: Duration = Duration::from_secs(4);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, history) = env_with(&prometheus, "    unknownDeadline: 4s", "").await;

    // Prometheus answers, but with no data: every check is Unknown (onNoData defaults to Hold),
    // none fails. The revision is never measured.
    prometheus.set_default(Answer::no_data());
    let started = std::time::Instant::now();
    env.set_image("web", "registry.local/web:2").await;
    let bound = template_revision(&env, "web").await;
    let run = plugin::run(&env, &["wait", "web", "--timeout", "60s", "-o", "json"]).await;
    let elapsed = started.elapsed();

    assert_eq!(run.code, code(ExitCode::Unmeasured), "{run:?}");
    assert_eq!(run.code, 9, "{run:?}");
    let summary = run.json();
    assert_eq!(summary["outcome"], "Unmeasured");
    assert_eq!(summary["exitCode"], 9);
    assert_eq!(summary["revision"], bound.as_str());
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .contains("stayed Unknown"),
        "{run:?}"
    );
    // Not before the unknown deadline; by the first check after it (one interval), the first
    // check of the step (one more) and the allowance.
    assert!(
        elapsed >= UNKNOWN_DEADLINE && elapsed <= UNKNOWN_DEADLINE + 2 * INTERVAL + ALLOWANCE,
        "wait ended after {elapsed:?}"
    );

    // It ended on the controller's rollback for Unknown checks, with no failed check recorded.
    let canary = env.canary("web").await.expect("canary");
    assert_eq!(phase(&canary), "Failed", "{canary}");
    let failed = canary["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Failed"))
        .expect("a Failed condition");
    assert_eq!(failed["reason"], "UnknownDeadlineExceeded", "{canary}");
    let checks = canary["status"]["analysis"].as_array().expect("checks");
    assert!(
        !checks.is_empty()
            && checks
                .iter()
                .filter(|c| c["revision"] == bound.as_str())
                .all(|c| c["verdict"] == "Unknown"),
        "only Unknown checks for {bound}: {canary}"
    );
    assert_ne!(canary["status"]["stableRevision"], bound.as_str());
    history.assert_invariants("web", INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_paused_at_the_unknown_deadline_keeps_wait_waiting_until_its_timeout_exit_6() {
    const UNKNOWN_DEADLINE: Duration = Duration::from_secs(3);
    // Long enough that the pause (by UNKNOWN_DEADLINE + 2 intervals + ALLOWANCE = 20 s) comes
    // well before it.
    const TIMEOUT: Duration = Duration::from_secs(30);
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let (env, history) = env_with(
        &prometheus,
        "    unknownDeadline: 3s\n    onUnknownDeadline: Pause",
        "",
    )
    .await;

    prometheus.set_default(Answer::no_data());
    let started = std::time::Instant::now();
    env.set_image("web", "registry.local/web:2").await;
    let bound = template_revision(&env, "web").await;
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let mut waiting = plugin::spawn(&env, &["wait", "web", "--timeout", &timeout, "-o", "json"]);

    let paused = env
        .eventually(
            "the rollout to pause at the unknown deadline",
            UNKNOWN_DEADLINE + 2 * INTERVAL + ALLOWANCE,
            || async {
                let canary = env.canary("web").await?;
                if phase(&canary) != "Paused" {
                    return None;
                }
                let events = support::events_about(env.client(), "web").await;
                events
                    .iter()
                    .any(|(reason, _)| reason == "UnknownDeadlinePaused")
                    .then_some(canary)
            },
        )
        .await;
    assert_eq!(paused["status"]["revision"], bound.as_str());
    assert!(
        started.elapsed() >= UNKNOWN_DEADLINE,
        "paused before the deadline"
    );
    assert!(
        waiting.try_wait().expect("wait pollable").is_none(),
        "wait ended when the rollout paused at the unknown deadline"
    );

    let run = plugin::finish(waiting, TIMEOUT + ALLOWANCE).await;
    let elapsed = started.elapsed();
    assert_eq!(run.code, code(ExitCode::TimedOut), "{run:?}");
    let summary = run.json();
    assert_eq!(summary["outcome"], "TimedOut");
    assert_eq!(summary["revision"], bound.as_str());
    assert!(
        summary["message"].as_str().unwrap().contains("Paused"),
        "{run:?}"
    );
    // The gate saw the pause at the deadline and kept waiting through it.
    assert!(
        run.stderr.lines().any(|line| line.contains("] Paused ")
            && line.contains("checks stayed Unknown past the deadline")),
        "{run:?}"
    );
    assert!(
        elapsed >= TIMEOUT && elapsed <= TIMEOUT + ALLOWANCE,
        "wait ended after {elapsed:?}, its timeout is {TIMEOUT:?}"
    );
    // Still paused: the pause is not a rollback, and the gate did not call it one.
    let canary = env.canary("web").await.expect("canary");
    assert_eq!(phase(&canary), "Paused", "{canary}");
    assert_ne!(canary["status"]["stableRevision"], bound.as_str());
    history.assert_invariants("web", INTERVAL);
}
