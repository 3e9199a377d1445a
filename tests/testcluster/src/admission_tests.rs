//! The hold policy sluice ships (recording 14) and the matching, condition and mutation rules.

use super::*;
use serde_json::json;

/// The policy and binding exactly as recording 14 created them.
fn recorded_policy_and_binding() -> (Value, Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/apiserver-recordings/14-admission-policy-hold.json");
    let text = std::fs::read_to_string(path).expect("read recording 14");
    let recording: Value = serde_json::from_str(&text).expect("parse recording 14");
    let steps = recording["steps"].as_array().expect("steps");
    (
        steps[0]["request"]["body"].clone(),
        steps[1]["request"]["body"].clone(),
    )
}

fn deployment(labels: Value, image: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "rec-hold", "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": image}]}}}})
}

fn request<'a>(
    operation: Operation,
    object: &'a Value,
    old: Option<&'a Value>,
) -> AdmissionRequest<'a> {
    AdmissionRequest {
        operation,
        group: "apps",
        version: "v1",
        resource: "deployments",
        subresource: "",
        namespace: "rec-hold",
        name: "web",
        object,
        old_object: old,
        namespace_object: None,
    }
}

fn hold(
    object: &Value,
    old: Option<&Value>,
    operation: Operation,
) -> Result<Option<Value>, AdmissionError> {
    let (policy, binding) = recorded_policy_and_binding();
    mutate(&[policy], &[binding], &request(operation, object, old))
}

fn canary_labels() -> Value {
    json!({"app": "web", "sluice.dev/canary": "web"})
}

#[test]
fn a_template_change_on_a_labelled_deployment_pauses_it_in_the_same_write() {
    let old = deployment(canary_labels(), "web:1.0", 2);
    let new = deployment(canary_labels(), "web:2.0", 2);
    let mutated = hold(&new, Some(&old), Operation::Update)
        .expect("admitted")
        .expect("mutated");
    assert_eq!(mutated["spec"]["paused"], json!(true));
    assert_eq!(mutated["spec"]["template"], new["spec"]["template"]);
}

#[test]
fn a_scale_only_change_is_left_alone() {
    let old = deployment(canary_labels(), "web:1.0", 2);
    let new = deployment(canary_labels(), "web:1.0", 5);
    assert_eq!(hold(&new, Some(&old), Operation::Update), Ok(None));
}

#[test]
fn an_unlabelled_deployment_is_untouched() {
    let old = deployment(json!({"app": "web"}), "web:1.0", 2);
    let new = deployment(json!({"app": "web"}), "web:2.0", 2);
    assert_eq!(hold(&new, Some(&old), Operation::Update), Ok(None));
}

#[test]
fn creation_is_not_matched() {
    let new = deployment(canary_labels(), "web:1.0", 2);
    assert_eq!(hold(&new, None, Operation::Create), Ok(None));
}

#[test]
fn the_status_subresource_and_other_resources_are_not_matched() {
    let (policy, binding) = recorded_policy_and_binding();
    let old = deployment(canary_labels(), "web:1.0", 2);
    let new = deployment(canary_labels(), "web:2.0", 2);
    let mut status = request(Operation::Update, &new, Some(&old));
    status.subresource = "status";
    assert_eq!(
        mutate(
            std::slice::from_ref(&policy),
            std::slice::from_ref(&binding),
            &status
        ),
        Ok(None)
    );
    let mut sets = request(Operation::Update, &new, Some(&old));
    sets.resource = "statefulsets";
    assert_eq!(mutate(&[policy], &[binding], &sets), Ok(None));
}

#[test]
fn a_policy_without_a_binding_does_nothing() {
    let (policy, _) = recorded_policy_and_binding();
    let old = deployment(canary_labels(), "web:1.0", 2);
    let new = deployment(canary_labels(), "web:2.0", 2);
    assert_eq!(
        mutate(
            &[policy],
            &[],
            &request(Operation::Update, &new, Some(&old))
        ),
        Ok(None)
    );
}

fn policy(spec: Value) -> Value {
    json!({"metadata": {"name": "p"}, "spec": spec})
}

fn binding(spec: Value) -> Value {
    json!({"metadata": {"name": "b"}, "spec": spec})
}

fn all_deployments() -> Value {
    json!({"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*"]}]})
}

#[test]
fn a_failing_expression_with_failure_policy_fail_is_an_error_and_with_ignore_is_skipped() {
    let old = deployment(canary_labels(), "web:1.0", 2);
    let new = deployment(canary_labels(), "web:2.0", 2);
    let spec = json!({"matchConstraints": all_deployments(), "failurePolicy": "Fail",
        "matchConditions": [{"name": "x", "expression": "object.spec.noSuchField == 1"}],
        "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": "[]"}}]});
    let err = mutate(
        &[policy(spec.clone())],
        &[binding(json!({"policyName": "p"}))],
        &request(Operation::Update, &new, Some(&old)),
    )
    .expect_err("Fail policy must refuse");
    assert_eq!(err.code, 500);
    assert!(err.message.contains("noSuchField"), "{}", err.message);
    let mut ignore = spec;
    ignore["failurePolicy"] = json!("Ignore");
    assert_eq!(
        mutate(
            &[policy(ignore)],
            &[binding(json!({"policyName": "p"}))],
            &request(Operation::Update, &new, Some(&old))
        ),
        Ok(None)
    );
}

#[test]
fn apply_configuration_merges_an_object_built_from_variables() {
    let new = deployment(canary_labels(), "web:2.0", 2);
    let spec = json!({"matchConstraints": all_deployments(),
        "variables": [{"name": "team", "expression": "'payments'"}],
        "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression":
            "Object{metadata: Object.metadata{annotations: {'team': variables.team, 'op': request.operation}}}"}}]});
    let mutated = mutate(
        &[policy(spec)],
        &[binding(json!({"policyName": "p"}))],
        &request(Operation::Create, &new, None),
    )
    .expect("admitted")
    .expect("mutated");
    assert_eq!(
        mutated["metadata"]["annotations"],
        json!({"team": "payments", "op": "CREATE"})
    );
    assert_eq!(mutated["metadata"]["labels"], canary_labels());
}

#[test]
fn a_binding_narrows_by_namespace_and_excluded_rules_win() {
    let new = deployment(canary_labels(), "web:2.0", 2);
    let spec = json!({"matchConstraints": all_deployments(),
        "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression":
            "[JSONPatch{op: 'replace', path: '/spec/replicas', value: 1}]"}}]});
    let narrowed = binding(json!({"policyName": "p", "matchResources": {
        "namespaceSelector": {"matchLabels": {"env": "prod"}}}}));
    let prod = json!({"metadata": {"name": "rec-hold", "labels": {"env": "prod"}}});
    let dev = json!({"metadata": {"name": "rec-hold", "labels": {"env": "dev"}}});
    let mut req = request(Operation::Create, &new, None);
    req.namespace_object = Some(&prod);
    let mutated = mutate(
        &[policy(spec.clone())],
        std::slice::from_ref(&narrowed),
        &req,
    )
    .expect("ok")
    .expect("mutated");
    assert_eq!(mutated["spec"]["replicas"], 1);
    req.namespace_object = Some(&dev);
    assert_eq!(mutate(&[policy(spec.clone())], &[narrowed], &req), Ok(None));

    let mut excluding = spec;
    excluding["matchConstraints"]["excludeResourceRules"] = json!([{"apiGroups": ["apps"],
        "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["deployments"]}]);
    let req = request(Operation::Create, &new, None);
    assert_eq!(
        mutate(
            &[policy(excluding)],
            &[binding(json!({"policyName": "p"}))],
            &req
        ),
        Ok(None)
    );
}

#[test]
fn struct_literals_become_map_literals_and_strings_stay_verbatim() {
    assert_eq!(
        rewrite_struct_literals("[JSONPatch{op: \"add\", path: 'a{b: c}', value: x ? y : z}]"),
        "[{\"op\": \"add\", \"path\": 'a{b: c}', \"value\": x ? y : z}]"
    );
    assert_eq!(
        rewrite_struct_literals("Object{spec: Object.spec{replicas: {'k': 1}.k}}"),
        "{\"spec\": {\"replicas\": {'k': 1}.k}}"
    );
}
