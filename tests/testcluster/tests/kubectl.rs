//! kubectl 1.32 against the test cluster: get, server-side and client-side apply, a status patch,
//! wait for a condition, delete. Skipped, with a printed reason, when /usr/bin/kubectl is absent.

// The whole file is test code: helpers outside `#[test]` panic on failure too.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use sluice_testcluster::TestCluster;

const KUBECTL: &str = "/usr/bin/kubectl";

async fn kubectl(tc: &TestCluster, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(tc.kubeconfig_path())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl timed out")
    .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.example/web:1.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_applies_patches_status_waits_and_deletes() {
    if !Path::new(KUBECTL).exists() {
        eprintln!("skipping: {KUBECTL} is not installed");
        return;
    }
    let tc = TestCluster::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOYMENT).unwrap();
    let f = file.to_str().unwrap();

    let (ok, out, err) = kubectl(&tc, &["apply", "--server-side", "-f", f]).await;
    assert!(ok, "apply --server-side failed: {out}{err}");
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );

    let (ok, out, err) = kubectl(&tc, &["get", "deployments", "-A"]).await;
    assert!(ok, "get failed: {err}");
    assert!(out.contains("web"), "{out}");

    let (ok, out, err) = kubectl(
        &tc,
        &["patch", "deployment", "web", "--subresource", "status", "--type", "merge", "-p",
          r#"{"status":{"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable"}]}}"#],
    )
    .await;
    assert!(ok, "patch --subresource status failed: {out}{err}");

    let (ok, out, err) = kubectl(
        &tc,
        &[
            "wait",
            "--for=condition=Available",
            "deployment/web",
            "--timeout=20s",
        ],
    )
    .await;
    assert!(ok, "wait failed: {out}{err}");
    assert!(out.contains("condition met"), "{out}");

    // Client-side apply of a changed manifest (three-way strategic merge patch).
    std::fs::write(&file, DEPLOYMENT.replace("web:1.0", "web:2.0")).unwrap();
    let (ok, out, err) = kubectl(&tc, &["apply", "-f", f]).await;
    assert!(ok, "client-side apply failed: {out}{err}");
    let (ok, out, _) = kubectl(
        &tc,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(out, "registry.example/web:2.0");

    let (ok, out, err) = kubectl(&tc, &["scale", "deployment", "web", "--replicas=4"]).await;
    assert!(ok, "scale failed: {out}{err}");
    let (_, out, _) = kubectl(
        &tc,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )
    .await;
    assert_eq!(out, "4");

    // A server-side dry run persists nothing.
    std::fs::write(&file, DEPLOYMENT.replace("web:1.0", "web:9.9")).unwrap();
    let (ok, out, err) = kubectl(
        &tc,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            f,
        ],
    )
    .await;
    assert!(ok, "dry-run apply failed: {out}{err}");
    let (_, out, _) = kubectl(
        &tc,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .await;
    assert_eq!(out, "registry.example/web:2.0");

    let (ok, out, err) = kubectl(&tc, &["delete", "deployment", "web"]).await;
    assert!(ok, "delete failed: {out}{err}");
    let (ok, _, err) = kubectl(&tc, &["get", "deployment", "web"]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
    tc.stop().await;
}
