//! Shared set-up for the end-to-end tests: the test cluster with the Deployment stand-in, the
//! real `sluice controller` binary as a child process, and small readers of the objects the
//! tests assert on. Each test file includes it with `mod support;`.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_testcluster::TestCluster;
use sluice_testcluster::kubelet::{self, Handle};
use tokio::process::{Child, Command};

pub mod history;
pub mod hooks;
pub mod plugin;
pub mod writes;

pub const NAMESPACE: &str = "shop";

/// What sluice's User-Agent starts with: a fault rule meant for sluice's own requests matches
/// with `RequestMatch::any().client(SLUICE_USER_AGENT)`.
pub const SLUICE_USER_AGENT: &str = "sluice/";
/// sluice as the test cluster's request accounting names it (the program part of its User-Agent).
pub const SLUICE_CLIENT: &str = "sluice";

/// A point in a scenario to count sluice's requests from ([`Env::mark`]).
pub struct Mark {
    pub at: std::time::SystemTime,
    counts: sluice_testcluster::RequestCounts,
}

/// Whether this run is against a real cluster (`SLUICE_E2E_KUBECONFIG`), which has none of the test
/// cluster's fault injection or request accounting: a test that needs them is skipped there, saying
/// which it needs.
pub fn skipped_on_a_real_cluster(needs: &str) -> bool {
    let real = std::env::var_os(sluice_testcluster::harness::E2E_KUBECONFIG_ENV).is_some();
    if real {
        eprintln!("skipping on a real cluster: needs the test cluster's {needs}");
    }
    real
}
pub const HOLD_POLICY: &str = include_str!("../../deploy/admission-policy.yaml");

/// The cluster, the Deployment stand-in and a running controller. Dropping it stops them all.
pub struct Env {
    pub cluster: TestCluster,
    pub kubelet: Handle,
    pub controller: Option<Child>,
}

pub enum Hold {
    AdmissionPolicy,
    PausedAtRest,
}

impl Env {
    /// Starts the test cluster (serving the admission-policy API and with the hold policy
    /// installed, or without the API, like a cluster older than 1.36) and the stand-in.
    pub async fn start(hold: Hold) -> Env {
        let cluster = match hold {
            Hold::AdmissionPolicy => TestCluster::start().await.expect("test cluster starts"),
            Hold::PausedAtRest => TestCluster::builder()
                .without_admission_policies()
                .start()
                .await
                .expect("test cluster starts"),
        };
        if matches!(hold, Hold::AdmissionPolicy) {
            cluster
                .apply_yaml(HOLD_POLICY)
                .await
                .expect("hold policy applies");
        }
        let kubelet = kubelet::spawn(
            cluster.client(),
            kubelet::Options {
                config: kubelet::Config {
                    readiness_delay: Duration::from_millis(300),
                    never_ready: None,
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

    /// Starts `sluice controller` against the cluster.
    pub fn start_controller(&mut self, extra: &[&str]) {
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("controller")
            .arg("--kubeconfig")
            .arg(self.cluster.kubeconfig_path())
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_E2E_RUST_LOG").unwrap_or_else(|_| "sluice=debug,info".into()),
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("SLUICE_E2E_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("sluice controller starts");
        self.controller = Some(child);
    }

    /// Kills the controller with SIGKILL, as a node failure would.
    pub async fn kill_controller(&mut self) {
        if let Some(mut child) = self.controller.take() {
            let _ = child.kill().await;
        }
    }

    pub fn client(&self) -> kube::Client {
        self.cluster.client()
    }

    pub async fn apply(&self, yaml: &str) {
        self.cluster
            .apply_yaml(yaml)
            .await
            .expect("manifest applies");
    }

    pub async fn canary(&self, name: &str) -> Option<Value> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client(), NAMESPACE, &canary_resource());
        api.get_opt(name)
            .await
            .expect("canary readable")
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    pub async fn deployment(&self, name: &str) -> Option<Deployment> {
        let api: Api<Deployment> = Api::namespaced(self.client(), NAMESPACE);
        api.get_opt(name).await.expect("deployment readable")
    }

    pub async fn http_route(&self, name: &str) -> Value {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client(), NAMESPACE, &http_route_resource());
        serde_json::to_value(api.get(name).await.expect("route readable")).expect("json")
    }

    /// Sets the target's container image, as a CI pipeline would (a server-side apply by another
    /// field manager, without `paused`).
    pub async fn set_image(&self, deployment: &str, image: &str) {
        let api: Api<Deployment> = Api::namespaced(self.client(), NAMESPACE);
        let patch = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": deployment},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}
        });
        api.patch(
            deployment,
            &PatchParams::apply("ci").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("image change applies");
    }

    /// Marks the start of a scenario's window: sluice's requests are counted from here.
    pub fn mark(&self) -> Mark {
        Mark {
            at: std::time::SystemTime::now(),
            counts: self
                .cluster
                .requests_from(SLUICE_CLIENT)
                .expect("request accounting"),
        }
    }

    /// sluice's requests since `mark` (by verb, resource, subresource and namespace).
    pub fn sluice_requests_since(&self, mark: &Mark) -> sluice_testcluster::RequestCounts {
        let mut now = self
            .cluster
            .requests_from(SLUICE_CLIENT)
            .expect("request accounting");
        for (key, n) in &mut now.0 {
            *n = n.saturating_sub(mark.counts.0.get(key).copied().unwrap_or(0));
        }
        now.0.retain(|_, n| *n > 0);
        now
    }

    /// sluice's write requests since `mark`, oldest first, from the test cluster's write log.
    pub fn sluice_writes_since(&self, mark: &Mark) -> Vec<sluice_testcluster::Write> {
        self.cluster
            .writes_from(SLUICE_CLIENT)
            .expect("request accounting")
            .into_iter()
            .filter(|w| w.at >= mark.at)
            .collect()
    }

    /// Polls `probe` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn canary_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("sluice.dev", "v1alpha1", "Canary"),
        "canaries",
    )
}

pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// A Deployment `name` with `replicas` pods of `image`, its Service, and an HTTPRoute to it.
pub fn app_manifests(name: &str, image: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: app, image: "{image}", ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 8080, targetPort: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{name: public, namespace: gateway-system}}]
  hostnames: ["{name}.example.com"]
  rules:
  - backendRefs: [{{name: {name}, port: 8080}}]
"#
    )
}

/// The canary weight written in an HTTPRoute (0 when it has no canary backend).
pub fn route_canary_weight(route: &Value, service: &str) -> i32 {
    let canary = format!("{service}-canary");
    route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
        .filter(|backend| backend["name"] == canary.as_str())
        .map(|backend| backend["weight"].as_i64().unwrap_or(1) as i32)
        .max()
        .unwrap_or(0)
}

pub fn phase(canary: &Value) -> &str {
    canary["status"]["phase"].as_str().unwrap_or("")
}

/// The (reason, note) of every Event about the object named `name` in the test namespace.
pub async fn events_about(client: kube::Client, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, NAMESPACE);
    api.list(&Default::default())
        .await
        .expect("events readable")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}
