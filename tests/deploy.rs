//! `deploy/` is tested like code: every manifest parses as the Kubernetes type it claims to be,
//! with no field the type does not know (a misspelled field would be silently dropped by the API
//! server), and the shipped hold policy is the one sluice's hold mode relies on.

use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1alpha1 as admission;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::Value;

fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("deploy/ is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(manifests(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("manifest is readable");
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Drops nulls, empty maps and empty lists, which typed round trips add or remove freely.
fn normalise(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalise(v)))
                .filter(|(_, v)| {
                    !v.is_null()
                        && v != &Value::Object(Default::default())
                        && v != &Value::Array(vec![])
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// Parses `doc` as `T` and back; what the type does not know is lost, so a difference names it.
fn round_trips_as<T: serde::de::DeserializeOwned + serde::Serialize>(
    doc: &Value,
) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if normalise(&back) == normalise(doc) {
        Ok(())
    } else {
        Err(format!(
            "fields the type does not know were dropped:\nwritten: {doc:#}\nparsed:  {back:#}"
        ))
    }
}

#[test]
fn every_deploy_manifest_is_a_known_kubernetes_object_with_no_unknown_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut checked = 0;
    for path in manifests(&dir) {
        // Not an object: an entry for a Flux Kustomization's list, checked by gitops_health.rs.
        if path.ends_with("gitops/flux-health-check.yaml") {
            continue;
        }
        for doc in documents(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let result = match (
                doc["apiVersion"].as_str().unwrap_or_default(),
                kind.as_str(),
            ) {
                ("v1", "Namespace") => round_trips_as::<Namespace>(&doc),
                ("v1", "ServiceAccount") => round_trips_as::<ServiceAccount>(&doc),
                ("v1", "Service") => round_trips_as::<Service>(&doc),
                ("v1", "ConfigMap") => round_trips_as::<ConfigMap>(&doc),
                ("apps/v1", "Deployment") => round_trips_as::<Deployment>(&doc),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    round_trips_as::<ClusterRole>(&doc)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    round_trips_as::<ClusterRoleBinding>(&doc)
                }
                ("rbac.authorization.k8s.io/v1", "Role") => round_trips_as::<Role>(&doc),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    round_trips_as::<RoleBinding>(&doc)
                }
                // The v1 policy API (Kubernetes 1.36) has the v1alpha1 shape; k8s-openapi's
                // v1_33 types only know the alpha version.
                ("admissionregistration.k8s.io/v1", "MutatingAdmissionPolicy") => {
                    let mut alpha = doc.clone();
                    alpha["apiVersion"] = "admissionregistration.k8s.io/v1alpha1".into();
                    round_trips_as::<admission::MutatingAdmissionPolicy>(&alpha)
                }
                ("admissionregistration.k8s.io/v1", "MutatingAdmissionPolicyBinding") => {
                    let mut alpha = doc.clone();
                    alpha["apiVersion"] = "admissionregistration.k8s.io/v1alpha1".into();
                    round_trips_as::<admission::MutatingAdmissionPolicyBinding>(&alpha)
                }
                (api_version, kind) => {
                    Err(format!("no test knows {api_version} {kind}; add it here"))
                }
            };
            if let Err(reason) = result {
                panic!(
                    "{}: {kind} {}: {reason}",
                    path.display(),
                    doc["metadata"]["name"]
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} manifests found under deploy/"
    );
}

#[test]
fn the_hold_policy_pauses_labelled_deployments_on_template_updates_only() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/admission-policy.yaml");
    let docs = documents(&path);
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "MutatingAdmissionPolicy")
        .expect("a policy");
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "MutatingAdmissionPolicyBinding")
        .expect("a binding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rules["operations"], serde_json::json!(["UPDATE"]));
    assert_eq!(rules["resources"], serde_json::json!(["deployments"]));
    let selector = &policy["spec"]["matchConstraints"]["objectSelector"]["matchExpressions"][0];
    assert_eq!(selector["key"], sluice::api::names::CANARY_LABEL);
    assert_eq!(selector["operator"], "Exists");
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let condition = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .expect("a condition");
    assert!(condition.contains("object.spec.template != oldObject.spec.template"));
    let patch = policy["spec"]["mutations"][0]["jsonPatch"]["expression"]
        .as_str()
        .expect("a patch");
    assert!(patch.contains("/spec/paused") && patch.contains("true"));
}

#[test]
fn the_controller_role_grants_no_secret_access_cluster_wide() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rbac.yaml");
    for doc in documents(&path)
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
    {
        for rule in doc["rules"].as_array().expect("rules") {
            let resources = rule["resources"].as_array().expect("resources");
            assert!(
                !resources.iter().any(|r| r == "secrets" || r == "*"),
                "ClusterRole {} grants {rule} cluster-wide",
                doc["metadata"]["name"]
            );
        }
    }
}

/// The verbs the controller's ClusterRole grants on `group`/`plural`, over all its rules.
fn granted(group: &str, plural: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rbac.yaml");
    let mut verbs = Vec::new();
    for doc in documents(&path)
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
    {
        for rule in doc["rules"].as_array().expect("rules") {
            let has = |field: &str, want: &str| {
                rule[field]
                    .as_array()
                    .is_some_and(|values| values.iter().any(|v| v == want))
            };
            if has("apiGroups", group) && has("resources", plural) {
                let listed = rule["verbs"].as_array().expect("verbs");
                verbs.extend(listed.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
        }
    }
    verbs
}

#[test]
fn the_controller_role_grants_what_each_router_kind_needs() {
    // Every kind is cached (list, watch) and applied (patch); sluice's own objects are also
    // created by the apply and deleted on removal.
    for kind in sluice::router::kind::KINDS {
        let verbs = granted(kind.group(), kind.plural);
        let mut needed = vec!["list", "watch", "patch"];
        if !kind.edits_user_object {
            needed.extend(["create", "delete"]);
        }
        for verb in needed {
            assert!(
                verbs.iter().any(|v| v == verb),
                "deploy/rbac.yaml does not grant {verb} on {} {} (granted: {verbs:?})",
                kind.api_version,
                kind.plural
            );
        }
    }
}

fn controller_manifests() -> Vec<Value> {
    documents(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/controller.yaml"))
}

#[test]
fn the_controller_runs_non_root_read_only_without_capabilities() {
    let docs = controller_manifests();
    let doc = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let deployment: Deployment = serde_json::from_value(doc.clone()).expect("a Deployment");
    assert_eq!(
        deployment.metadata.namespace.as_deref(),
        Some("sluice-system")
    );
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(1), "no leader election: one replica");
    assert_eq!(
        spec.strategy.and_then(|s| s.type_).as_deref(),
        Some("Recreate"),
        "two controllers never overlap"
    );
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("sluice"));
    let pod_security = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(65532));
    assert_eq!(
        pod_security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.containers.len(), 1);
    let container = &pod.containers[0];
    assert_eq!(
        container
            .args
            .as_deref()
            .and_then(|a| a.first())
            .map(String::as_str),
        Some("controller")
    );
    assert!(
        !container.image.as_deref().unwrap_or_default().contains('/'),
        "a plain image name, no registry host"
    );
    let security = container
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.privileged, None);
    assert_eq!(
        security.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let env = container.env.clone().unwrap_or_default();
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").expect("POD_NAME");
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    let resources = container.resources.clone().expect("resources");
    for (what, list) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        assert!(
            list.as_ref().is_some_and(|l| l.contains_key("memory")),
            "memory {what} set"
        );
    }
}

#[test]
fn the_probes_and_the_metrics_service_use_the_metrics_port() {
    let docs = controller_manifests();
    let deployment: Deployment = serde_json::from_value(
        docs.iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment")
            .clone(),
    )
    .expect("a Deployment");
    let service: Service = serde_json::from_value(
        docs.iter()
            .find(|d| d["kind"] == "Service")
            .expect("a Service")
            .clone(),
    )
    .expect("a Service");
    let spec = deployment.spec.expect("spec");
    let container = &spec.template.spec.expect("pod").containers[0];
    let port = container
        .ports
        .as_ref()
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("metrics")))
        .expect("a metrics port");
    assert!(
        container
            .args
            .iter()
            .flatten()
            .any(|a| *a == format!("--metrics-addr=0.0.0.0:{}", port.container_port)),
        "the controller listens on the port the probes use"
    );
    for (what, probe, path) in [
        ("liveness", &container.liveness_probe, "/healthz"),
        ("readiness", &container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe over HTTP"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} path");
        assert_eq!(
            serde_json::to_value(&get.port).expect("port"),
            serde_json::json!("metrics"),
            "{what} port"
        );
    }
    let service_spec = service.spec.expect("service spec");
    assert_eq!(
        service_spec.selector, spec.selector.match_labels,
        "the Service selects the controller's pods"
    );
    let service_port = &service_spec.ports.expect("ports")[0];
    assert_eq!(
        serde_json::to_value(&service_port.target_port).expect("port"),
        serde_json::json!("metrics")
    );
    assert_eq!(
        spec.template.metadata.and_then(|m| m.labels),
        service_spec.selector.clone(),
        "the pods carry the selected labels"
    );
}

#[test]
fn the_image_has_no_shell_and_runs_as_the_non_root_user() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Containerfile"))
        .expect("Containerfile");
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.last(),
        Some(&"FROM scratch"),
        "final stage has no shell"
    );
    assert!(text.contains("USER 65532:65532"));
    assert!(
        text.contains("ca-certificates.crt"),
        "CA certificates shipped"
    );
    for host in [
        "gcr.io",
        "ghcr.io",
        "docker.io",
        "quay.io",
        "registry.k8s.io",
    ] {
        assert!(!text.contains(host), "no registry host ({host})");
    }
}
