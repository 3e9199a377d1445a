//! Running the real `kubectl-sluice` binary against the test cluster: to completion (exit code,
//! stdout, stderr) or in the background (a `wait` started before the event it waits for).

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::{Env, NAMESPACE};

/// What one run of the plugin printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as JSON (for `-o json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// `kubectl-sluice ARGS --kubeconfig <test cluster> -n shop`.
pub fn command(env: &Env, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"));
    command
        .args(args)
        .arg("--kubeconfig")
        .arg(env.cluster.kubeconfig_path())
        .args(["-n", NAMESPACE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the plugin to completion (killed after 90 s).
pub async fn run(env: &Env, args: &[&str]) -> Run {
    finish(spawn(env, args), Duration::from_secs(90)).await
}

/// Starts the plugin in the background; [`finish`] collects it.
pub fn spawn(env: &Env, args: &[&str]) -> Child {
    command(env, args).spawn().expect("kubectl-sluice starts")
}

/// Waits for a background run to end (killing it after `limit`).
pub async fn finish(child: Child, limit: Duration) -> Run {
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl-sluice still running after {limit:?}"))
        .expect("kubectl-sluice output");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The revision (template hash) of the Deployment's current template, as the controller
/// computes it.
pub async fn template_revision(env: &Env, deployment: &str) -> String {
    let target = env.deployment(deployment).await.expect("deployment exists");
    sluice::cli::view::target_revision(&target).expect("a template")
}

/// A Gateway-API-routed Canary for `web` with two steps (20%, 50%), checks every `interval`
/// against `prometheus`, and `extra` analysis/spec lines (already indented).
pub fn canary_manifest(
    prometheus: &str,
    interval: &str,
    extra_analysis: &str,
    extra_spec: &str,
) -> String {
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
{extra_spec}
  analysis:
    interval: {interval}
    threshold: 2
{extra_analysis}
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#
    )
}

impl Env {
    /// Like [`Env::start`] with the admission-policy hold, but pods of templates for which
    /// `never_ready` says so never become ready (to hold a rollout in one phase).
    pub async fn start_with_never_ready(
        never_ready: sluice_testcluster::kubelet::NeverReady,
    ) -> Env {
        use sluice_testcluster::TestCluster;
        use sluice_testcluster::kubelet;
        let cluster = TestCluster::start().await.expect("test cluster starts");
        cluster
            .apply_yaml(super::HOLD_POLICY)
            .await
            .expect("hold policy applies");
        let kubelet = kubelet::spawn(
            cluster.client(),
            kubelet::Options {
                config: kubelet::Config {
                    readiness_delay: Duration::from_millis(300),
                    never_ready: Some(never_ready),
                },
                ..Default::default()
            },
        );
        cluster
            .apply_yaml(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
            ))
            .await
            .expect("namespace");
        Env {
            cluster,
            kubelet,
            controller: None,
        }
    }
}
