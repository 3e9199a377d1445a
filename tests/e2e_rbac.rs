//! RBAC from request accounting: the real `sluice controller` runs a representative scenario
//! (adoption, a Gateway API canary promoted, an NGINX canary Ingress rolled back, a Canary deleted,
//! a Prometheus provider authenticated by a Secret), and every (verb, group, resource,
//! subresource) it used must be granted by the Roles and ClusterRoles in deploy/ bound to its
//! ServiceAccount. Secrets must never be granted cluster-wide nor with a verb other than `get`.

mod support;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_testcluster::accounting::RequestKey;
use sluice_testcluster::harness::parse_yaml_documents;
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus, QueryMatch};
use support::{Env, Hold, NAMESPACE, app_manifests, canary_resource, phase, route_canary_weight};

const TOKEN: &str = "s3cr3t-token";
/// `TOKEN` in base64, as a Secret's `data` holds it.
const TOKEN_BASE64: &str = "czNjcjN0LXRva2Vu";

/// Every Role and ClusterRole in deploy/ (and deploy/examples/), with the file it came from.
fn roles() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files: Vec<_> = ["", "examples"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).expect("deploy/ readable"))
        .map(|entry| entry.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // The plugin's example roles are for people, not the controller.
        .filter(|p| !p.ends_with("examples/plugin-rbac.yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("manifest readable");
            parse_yaml_documents(&text)
                .expect("manifest parses")
                .into_iter()
                .map(move |doc| (path.display().to_string(), doc))
        })
        .filter(|(_, doc)| doc["kind"] == "Role" || doc["kind"] == "ClusterRole")
        .collect()
}

fn listed(list: &Value, value: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .any(|v| v == value || v == "*")
}

/// Whether `rules` grant `key` (resource names are not in the accounting, so a rule limited to
/// names counts as granting; the Secret checks below look at names separately).
fn grants(rules: &Value, key: &RequestKey) -> bool {
    let resource = if key.subresource.is_empty() {
        key.resource.clone()
    } else {
        format!("{}/{}", key.resource, key.subresource)
    };
    rules.as_array().into_iter().flatten().any(|rule| {
        listed(&rule["apiGroups"], &key.group)
            && listed(&rule["resources"], &resource)
            && listed(&rule["verbs"], &key.verb)
    })
}

/// Whether the Role or ClusterRole bound to sluice's ServiceAccount covers the request: a
/// ClusterRole anywhere, a Role only in its own namespace.
fn granted(roles: &[(String, Value)], key: &RequestKey) -> bool {
    roles.iter().any(|(_, role)| {
        let in_scope = role["kind"] == "ClusterRole"
            || (!key.namespace.is_empty()
                && role["metadata"]["namespace"] == key.namespace.as_str());
        in_scope && grants(&role["rules"], key)
    })
}

fn canary_manifest(name: &str, router: &str, prometheus: &str, query: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: {name}}}
  service: {{port: 8080}}
  router: {router}
  strategy: {{canary: {{stepWeights: [50]}}}}
  analysis:
    interval: 1s
    threshold: 2
    progressDeadline: 1m
    provider: {{prometheus: {{address: "{prometheus}", secretRef: {{name: prometheus-auth}}}}}}
    metrics:
    - name: error-rate
      query: '{query}'
      max: 0.05
"#
    )
}

/// Sets (or, with `None`, removes) the sluice annotations of `cart`, as its owner's GitOps tool
/// would: a server-side apply under its own field manager.
async fn annotate_cart(env: &Env, annotations: Option<Value>) {
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(env.client(), NAMESPACE);
    let body = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "cart", "annotations": annotations.unwrap_or_else(|| json!({}))},
    });
    deployments
        .patch(
            "cart",
            &kube::api::PatchParams::apply("gitops").force(),
            &kube::api::Patch::Apply(&body),
        )
        .await
        .expect("annotations applied");
}

fn ingress_manifest(name: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  ingressClassName: nginx
  rules:
  - host: {name}.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {{service: {{name: {name}, port: {{number: 8080}}}}}}
"#
    )
}

async fn canary_ingress_weight(env: &Env, ingress: &str) -> i32 {
    let api: kube::Api<k8s_openapi::api::networking::v1::Ingress> =
        kube::Api::namespaced(env.client(), NAMESPACE);
    api.get_opt(&format!("{ingress}-canary"))
        .await
        .expect("ingress readable")
        .and_then(|i| i.metadata.annotations)
        .and_then(|a| a.get("nginx.ingress.kubernetes.io/canary-weight").cloned())
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

async fn canary_ready_pods(env: &Env, target: &str) -> i32 {
    env.deployment(&format!("{target}-canary"))
        .await
        .and_then(|d| d.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_call_the_controller_makes_is_granted_by_the_shipped_rbac() {
    if support::skipped_on_a_real_cluster("request accounting") {
        return;
    }
    let mut env = Env::start(Hold::AdmissionPolicy).await;
    let mut prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    prometheus.require_authorization(Some(&format!("Bearer {TOKEN}")));
    prometheus.on(
        QueryMatch::predicate(|q| q.contains("checkout")),
        Answer::value(1.0),
    );
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: prometheus-auth, namespace: {NAMESPACE}}}\ndata: {{token: {TOKEN_BASE64}}}\n"
    ))
    .await;
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&app_manifests("checkout", "registry.local/checkout:1", 2))
        .await;
    env.apply(&ingress_manifest("checkout")).await;
    let url = prometheus.url();
    // The annotation way in: a policy and a Deployment that names it.
    env.apply(&app_manifests("cart", "registry.local/cart:1", 1))
        .await;
    env.apply(&format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: CanaryPolicy\nmetadata: {{name: standard}}\nspec:\n  service: {{port: 8080}}\n  analysis: {{interval: 1s, provider: {{prometheus: {{address: \"{url}\"}}}}}}\n"
    ))
    .await;
    annotate_cart(
        &env,
        Some(json!({"sluice.dev/policy": "standard", "sluice.dev/router": "gatewayAPI"})),
    )
    .await;
    env.apply(&canary_manifest(
        "web",
        "{gatewayAPI: {httpRoute: {name: web}}}",
        &url,
        "sum(rate(errors{app=\"web\"}[{{ interval }}]))",
    ))
    .await;
    env.apply(&canary_manifest(
        "checkout",
        "{nginx: {ingress: {name: checkout}}}",
        &url,
        "sum(rate(errors{app=\"checkout\"}[{{ interval }}]))",
    ))
    .await;
    env.start_controller(&[]);

    // Adoption.
    for name in ["web", "checkout", "cart"] {
        env.eventually(
            &format!("{name} to be Idle"),
            Duration::from_secs(20),
            || async { env.canary(name).await.filter(|c| phase(c) == "Idle") },
        )
        .await;
    }

    // A promotion through the HTTPRoute and a rollback through the canary Ingress, at once; I1 is
    // sampled on both routers while they run.
    env.set_image("web", "registry.local/web:2").await;
    env.set_image("checkout", "registry.local/checkout:2").await;
    let (web_done, checkout_done) = (Cell::new(false), Cell::new(false));
    env.eventually(
        "web promoted and checkout rolled back",
        Duration::from_secs(40),
        || async {
            let web_weight = route_canary_weight(&env.http_route("web").await, "web");
            if web_weight > 0 {
                assert!(canary_ready_pods(&env, "web").await > 0, "I1 on web");
            }
            let checkout_weight = canary_ingress_weight(&env, "checkout").await;
            if checkout_weight > 0 {
                assert!(
                    canary_ready_pods(&env, "checkout").await > 0,
                    "I1 on checkout"
                );
            }
            let web = env.canary("web").await?;
            let checkout = env.canary("checkout").await?;
            if phase(&web) == "Succeeded" && web_weight == 0 {
                web_done.set(true);
            }
            if phase(&checkout) == "Failed" && checkout_weight == 0 {
                checkout_done.set(true);
            }
            (web_done.get() && checkout_done.get()).then_some(())
        },
    )
    .await;
    let authorized = prometheus
        .queries()
        .iter()
        .filter(|q| q.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")))
        .count();
    assert!(authorized > 0, "the Secret's token reached Prometheus");
    let served = env
        .kubelet
        .wait_serving(NAMESPACE, "web", Duration::from_secs(10), |s| {
            s.images == ["registry.local/web:2"]
        })
        .await;
    assert!(served.is_some(), "web promoted");

    // Deletion: the finalizer opts web out before the Canary goes.
    let canaries: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(env.client(), NAMESPACE, &canary_resource());
    canaries
        .delete("web", &Default::default())
        .await
        .expect("canary deleted");
    env.eventually(
        "web's Canary to be gone",
        Duration::from_secs(20),
        || async { env.canary("web").await.is_none().then_some(()) },
    )
    .await;
    // The annotation goes: sluice deletes the Canary it wrote (and the finalizer opts cart out).
    annotate_cart(&env, None).await;
    env.eventually(
        "cart's Canary to be gone",
        Duration::from_secs(20),
        || async { env.canary("cart").await.is_none().then_some(()) },
    )
    .await;
    prometheus.go_down().await.expect("fake prometheus stops");
    env.kill_controller().await;

    let used = env
        .cluster
        .requests_from("sluice")
        .expect("request accounting");
    assert!(
        used.count("patch", "canaries") > 0 && used.count("get", "secrets") > 0,
        "the scenario exercised the controller: {used:?}"
    );
    // kube-apiserver authorizes a server-side apply that creates an object as `create` as well as
    // `patch`; the accounting sees only the patch, so objects sluice made (its managed-by label)
    // add the create they needed.
    let mut required: BTreeSet<RequestKey> = used.0.keys().cloned().collect();
    for (group, version, kind, resource) in [
        ("apps", "v1", "Deployment", "deployments"),
        ("", "v1", "Service", "services"),
        ("networking.k8s.io", "v1", "Ingress", "ingresses"),
    ] {
        // (The annotation's Canary is made by a server-side apply too; it is checked below.)
        let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
            env.client(),
            NAMESPACE,
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                group, version, kind,
            )),
        );
        let made = api
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=sluice"))
            .await
            .expect("list");
        assert!(!made.items.is_empty(), "sluice made a {kind}");
        required.insert(RequestKey {
            verb: "create".into(),
            group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: NAMESPACE.into(),
        });
    }
    assert!(
        used.count("delete", "canaries") > 0,
        "the scenario deleted the annotation's Canary: {used:?}"
    );
    required.insert(RequestKey {
        verb: "create".into(),
        group: "sluice.dev".into(),
        resource: "canaries".into(),
        subresource: String::new(),
        namespace: NAMESPACE.into(),
    });
    for key in &required {
        eprintln!(
            "controller needs: {} {}/{} {} in {:?}",
            key.verb, key.group, key.resource, key.subresource, key.namespace
        );
    }
    let roles = roles();
    let missing: BTreeSet<_> = required
        .iter()
        .filter(|key| !granted(&roles, key))
        .map(|k| {
            format!(
                "{} {}/{}{}{} in {:?}",
                k.verb,
                k.group,
                k.resource,
                if k.subresource.is_empty() { "" } else { "/" },
                k.subresource,
                k.namespace
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/ does not grant what the controller used: {missing:#?}"
    );
}

#[test]
fn no_role_in_deploy_grants_secrets_cluster_wide_or_beyond_get() {
    let roles = roles();
    assert!(!roles.is_empty(), "deploy/ has roles");
    for (file, role) in &roles {
        for rule in role["rules"].as_array().into_iter().flatten() {
            if !(listed(&rule["apiGroups"], "") && listed(&rule["resources"], "secrets")) {
                continue;
            }
            let name = &role["metadata"]["name"];
            assert_ne!(
                role["kind"], "ClusterRole",
                "{file}: ClusterRole {name} grants Secrets cluster-wide"
            );
            let verbs: Vec<_> = rule["verbs"].as_array().into_iter().flatten().collect();
            assert!(
                verbs.iter().all(|v| *v == "get"),
                "{file}: {name} grants {verbs:?} on Secrets (only get)"
            );
            assert!(
                rule["resourceNames"]
                    .as_array()
                    .is_some_and(|names| !names.is_empty()),
                "{file}: {name} grants every Secret of its namespace, not the named one"
            );
        }
    }
}
