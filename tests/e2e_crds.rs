//! The generated CRDs, installed the way a user installs them (`sluice crds | kubectl apply
//! --server-side -f -`) into the test cluster, which validates custom resources against their
//! schema and CEL rules as kube-apiserver does: valid Canaries are admitted, and each kind of bad
//! input is refused by the API server with a message naming the field.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use sluice_testcluster::TestCluster;

fn sluice_crds() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sluice crds failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the CRDs with kubectl when there is one, else through the harness. kubectl is waited
/// for on a blocking call, so the tests run on a multi-threaded runtime: the in-process API server
/// must keep answering meanwhile.
async fn install_crds(cluster: &TestCluster) {
    let yaml = sluice_crds();
    if kubectl_available() {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig_path())
            .args(["apply", "--server-side", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "kubectl apply --server-side of `sluice crds` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("canaries.sluice.dev"), "{stdout}");
    } else {
        eprintln!("kubectl not found: installing the CRDs through the harness instead");
        cluster.apply_yaml(&yaml).await.unwrap();
    }
}

fn canary(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Canary",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

fn valid_spec() -> serde_json::Value {
    json!({
        "targetRef": {"name": "web"},
        "service": {"port": 8080},
        "router": {"gatewayAPI": {"httpRoute": {"name": "web"}}},
        "strategy": {"canary": {"stepWeight": 10, "maxWeight": 50}},
        "analysis": {"interval": "1m", "threshold": 3, "metrics": [
            {"name": "error-rate", "templateRef": {"name": "http-error-rate"}, "max": 0.01}
        ]}
    })
}

async fn create(cluster: &TestCluster, object: &serde_json::Value) -> Result<(), String> {
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        cluster.client(),
        "default",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("sluice.dev", "v1alpha1", "Canary"),
            "canaries",
        ),
    );
    let object: kube::api::DynamicObject = serde_json::from_value(object.clone()).unwrap();
    match api.create(&Default::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "unexpected refusal: {status:?}");
            Err(status.message)
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_admits_valid_canaries_and_names_the_field_of_each_bad_one() {
    let cluster = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    install_crds(&cluster).await;

    create(&cluster, &canary("valid", valid_spec()))
        .await
        .expect("a valid Canary is admitted");
    let mut explicit = valid_spec();
    explicit["strategy"] = json!({"canary": {"stepWeights": [5, 10, 25, 50]}});
    create(&cluster, &canary("explicit-steps", explicit))
        .await
        .expect("explicit steps are admitted");

    let cases: &[(&str, &str, serde_json::Value, &str)] = &[
        (
            "weight-over-100",
            "/strategy/canary/stepWeight",
            json!(200),
            "stepWeight",
        ),
        (
            "max-below-step",
            "/strategy/canary/maxWeight",
            json!(5),
            "maxWeight must be at least stepWeight",
        ),
        (
            "zero-threshold",
            "/analysis/threshold",
            json!(0),
            "threshold",
        ),
        (
            "bad-interval",
            "/analysis/interval",
            json!("1 minute"),
            "interval",
        ),
        (
            "two-routers",
            "/router",
            json!({"gatewayAPI": {"httpRoute": {"name": "web"}}, "nginx": {"ingress": {"name": "web"}}}),
            "exactly one of gatewayAPI",
        ),
        (
            "not-increasing",
            "/strategy",
            json!({"canary": {"stepWeights": [10, 5, 50]}}),
            "strictly increasing",
        ),
        ("port-zero", "/service/port", json!(0), "port"),
    ];
    for (name, pointer, value, expected) in cases {
        let mut spec = valid_spec();
        *spec
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer} in the valid spec")) = value.clone();
        let refused = create(&cluster, &canary(name, spec)).await;
        let message = refused.expect_err(&format!("{name} must be refused"));
        assert!(
            message.contains(expected),
            "{name}: the message should name {expected:?}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_canaries_with_the_printer_columns_and_short_name() {
    if !kubectl_available() {
        eprintln!("skipped: kubectl not found");
        return;
    }
    let cluster = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    install_crds(&cluster).await;
    create(&cluster, &canary("web", valid_spec()))
        .await
        .unwrap();
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["get", "cn", "-n", "default"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("web"), "{stdout}");
    for column in ["PHASE", "WEIGHT", "REVISION", "AGE"] {
        assert!(stdout.contains(column), "missing column {column}: {stdout}");
    }
}
