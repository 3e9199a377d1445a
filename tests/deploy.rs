//! `deploy/` is tested like code: every manifest parses as the Kubernetes type it claims to be,
//! with no field the type does not know (a misspelled field would be silently dropped by the API
//! server), and the shipped hold policy is the one sluice's hold mode relies on.

use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1alpha1 as admission;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
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
        for doc in documents(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let result = match (
                doc["apiVersion"].as_str().unwrap_or_default(),
                kind.as_str(),
            ) {
                ("v1", "Namespace") => round_trips_as::<Namespace>(&doc),
                ("v1", "ServiceAccount") => round_trips_as::<ServiceAccount>(&doc),
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
    assert!(checked >= 8, "only {checked} manifests found under deploy/");
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
