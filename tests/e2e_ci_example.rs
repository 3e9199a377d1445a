//! The shipped CI example: `examples/ci/deploy-and-gate.sh` run against the test cluster with
//! the real kubectl, plugin and controller, for a promoted and a failed rollout; and the GitHub
//! Actions job, parsed, calls that same script in a shell that keeps its exit code.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice::cli::ExitCode;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::history::History;
use support::plugin::{canary_manifest, template_revision};
use support::{Env, Hold, NAMESPACE, app_manifests, phase};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/ci/deploy-and-gate.sh"
);
const ACTIONS: &str = include_str!("../examples/ci/github-actions.yaml");

async fn deploy(env: &Env, image: &str) -> std::process::Output {
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
        .parent()
        .unwrap()
        .to_owned();
    let path = std::env::join_paths(std::iter::once(plugin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let run = tokio::process::Command::new("bash")
        .arg(SCRIPT)
        .args(["web", "app", image, NAMESPACE])
        .env("PATH", path)
        .env("KUBECONFIG", env.cluster.kubeconfig_path())
        .env("TIMEOUT", "60s")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the script ends")
        .expect("bash runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ci_script_exits_0_for_a_promoted_image_and_1_for_one_analysis_rejects() {
    if !Path::new("/usr/bin/kubectl").exists() {
        eprintln!("skipping: the CI script needs kubectl, and there is none at /usr/bin/kubectl");
        return;
    }
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let history = History::record_on(&env.cluster);
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&canary_manifest(&prometheus.url(), "1s", "", ""))
        .await;
    env.start_controller(&[]);
    env.eventually("the Canary to be Idle", Duration::from_secs(20), || async {
        env.canary("web").await.filter(|c| phase(c) == "Idle")
    })
    .await;

    let promoted = deploy(&env, "registry.local/web:2").await;
    assert_eq!(promoted.status.code(), Some(0), "{promoted:?}");
    let summary: Value = serde_json::from_slice(&promoted.stdout).expect("JSON summary");
    assert_eq!(summary["outcome"], "Promoted");
    let revision = template_revision(&env, "web").await;
    assert_eq!(summary["revision"], revision.as_str());
    assert!(String::from_utf8_lossy(&promoted.stderr).contains("promoted"));

    prometheus.set_default(Answer::value(0.5));
    let failed = deploy(&env, "registry.local/web:3").await;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("rolled back by analysis"),
        "{failed:?}"
    );
    let canary = env.canary("web").await.unwrap();
    assert_eq!(canary["status"]["stableRevision"], revision.as_str());
    history.assert_invariants("web", Duration::from_secs(1));
}

#[test]
fn the_actions_job_runs_the_same_script_with_pipefail() {
    let workflow: Value = serde_saphyr::from_str(ACTIONS).expect("the workflow parses");
    let jobs = workflow["jobs"].as_object().expect("jobs");
    let steps: Vec<&Value> = jobs
        .values()
        .flat_map(|job| job["steps"].as_array().expect("steps"))
        .collect();
    let gate = steps
        .iter()
        .find(|step| {
            step["run"]
                .as_str()
                .is_some_and(|run| run.contains("examples/ci/deploy-and-gate.sh"))
        })
        .expect("a step runs examples/ci/deploy-and-gate.sh");
    assert_eq!(
        gate["shell"], "bash",
        "an explicit bash shell runs with pipefail, so the tee keeps the gate's exit code"
    );
    assert!(
        steps.iter().any(|step| step["run"]
            .as_str()
            .is_some_and(|run| run.contains("kubectl-sluice"))),
        "the job installs the plugin"
    );
    let script = Path::new(SCRIPT);
    let mode = std::os::unix::fs::PermissionsExt::mode(&script.metadata().unwrap().permissions());
    assert!(mode & 0o111 != 0, "the script is executable");
}

#[test]
fn the_script_tells_every_outcome_of_wait_apart() {
    let script = std::fs::read_to_string(SCRIPT).expect("the script is readable");
    for outcome in ExitCode::ALL {
        // `wait` never refuses, and usage errors are the script's own.
        if matches!(outcome, ExitCode::Refused | ExitCode::Usage) {
            continue;
        }
        assert!(
            script.contains(&format!("\n  {}) echo \"deploy: ", outcome.code())),
            "deploy-and-gate.sh has no message for exit {} ({})",
            outcome.code(),
            outcome.name()
        );
    }
    assert!(
        script.contains("9) echo \"deploy: $image rolled back unmeasured"),
        "exit 9 is told apart from a measured failure"
    );
}
