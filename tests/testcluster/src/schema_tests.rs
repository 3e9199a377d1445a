//! Schema validation held to a real apiserver's answers (recording 06) and exercised on the real
//! upstream router CRDs plus one small schema per keyword.

use super::*;
use serde_json::json;

fn shared(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel)
}

/// The `openAPIV3Schema` of one served version of an upstream CRD.
fn crd_schema(file: &str, version: &str) -> Value {
    let text = std::fs::read_to_string(shared(&format!("upstream-crds/{file}"))).expect("read CRD");
    let text = text.trim_start_matches("---\n");
    let crd: Value = serde_saphyr::from_str(text).expect("parse CRD YAML");
    crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["name"] == version)
        .expect("version present")["schema"]["openAPIV3Schema"]
        .clone()
}

fn httproute_schema() -> Value {
    crd_schema("gateway-api/httproutes.yaml", "v1")
}

/// What the server does with a create body: prune and default, then validate.
fn admit(schema: &Value, body: &Value) -> (Value, Vec<String>, Vec<Cause>) {
    let mut object = body.clone();
    let pruned = prune_and_default(schema, &mut object);
    let causes = validate(schema, &object, None);
    (object, pruned, causes)
}

fn recorded_causes(step: &Value) -> Vec<Cause> {
    step["response"]["body"]["details"]["causes"]
        .as_array()
        .map(|causes| {
            causes
                .iter()
                .map(|c| Cause {
                    reason: c["reason"].as_str().unwrap_or_default().to_string(),
                    field: c["field"].as_str().unwrap_or_default().to_string(),
                    message: c["message"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_schema_rejection_in_recording_06_is_reproduced_cause_for_cause() {
    let text = std::fs::read_to_string(shared("apiserver-recordings/06-crd-validation.json"))
        .expect("read recording 06");
    let recording: Value = serde_json::from_str(&text).expect("parse recording");
    let schema = httproute_schema();
    let mut checked = 0;
    for step in recording["steps"].as_array().expect("steps") {
        let request = &step["request"];
        if !request["path"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/httproutes")
        {
            continue;
        }
        let (_, _, causes) = admit(&schema, &request["body"]);
        let recorded = recorded_causes(step);
        let metadata_only = recorded.iter().all(|c| c.field.starts_with("metadata."));
        if step["response"]["status"] == 422 && !metadata_only {
            assert_eq!(
                causes, recorded,
                "step {}",
                request["body"]["metadata"]["name"]
            );
            checked += 1;
        } else {
            // Accepted bodies, and names the server (not the schema) rejects, pass the schema.
            assert!(causes.is_empty(), "unexpected causes {causes:?}");
        }
    }
    assert_eq!(checked, 4, "the four schema rejections of recording 06");
}

#[test]
fn an_unknown_field_is_pruned_and_named_as_in_the_servers_warning_and_defaults_match() {
    let text = std::fs::read_to_string(shared("apiserver-recordings/06-crd-validation.json"))
        .expect("read recording 06");
    let recording: Value = serde_json::from_str(&text).expect("parse recording");
    let step = recording["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["request"]["body"]["metadata"]["name"] == "unknown")
        .expect("the unknown-field step");
    let (object, pruned, causes) = admit(&httproute_schema(), &step["request"]["body"]);
    assert!(causes.is_empty(), "{causes:?}");
    let warning = step["response"]["warning"].as_str().expect("warning");
    assert_eq!(
        pruned,
        vec!["spec.rules[0].backendRefs[0].wieght".to_string()]
    );
    assert!(
        warning.contains(&format!("unknown field \\\"{}\\\"", pruned[0]))
            || warning.contains(&format!("unknown field \"{}\"", pruned[0]))
    );
    assert_eq!(object["spec"], step["response"]["body"]["spec"]);
}

#[test]
fn the_readme_httproute_and_virtualservice_examples_are_accepted() {
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "podinfo", "namespace": "demo"},
        "spec": {"parentRefs": [{"name": "public-gateway", "namespace": "gateway-system"}],
                 "hostnames": ["podinfo.example.com"],
                 "rules": [{"backendRefs": [{"name": "podinfo-primary", "port": 9898, "weight": 90},
                                            {"name": "podinfo-canary", "port": 9898, "weight": 10}]}]}});
    let (_, pruned, causes) = admit(&httproute_schema(), &route);
    assert!(
        causes.is_empty() && pruned.is_empty(),
        "{causes:?} {pruned:?}"
    );

    let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "podinfo", "namespace": "demo"},
        "spec": {"hosts": ["podinfo"], "http": [{"route": [
            {"destination": {"host": "podinfo-primary", "port": {"number": 9898}}, "weight": 90},
            {"destination": {"host": "podinfo-canary", "port": {"number": 9898}}, "weight": 10}]}]}});
    let (_, pruned, causes) = admit(&crd_schema("istio/virtualservices.yaml", "v1"), &vs);
    assert!(
        causes.is_empty() && pruned.is_empty(),
        "{causes:?} {pruned:?}"
    );
}

#[test]
fn a_virtualservice_destination_without_host_is_a_required_value() {
    let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "p"},
        "spec": {"hosts": ["p"], "http": [{"route": [{"destination": {"port": {"number": 1}}}]}]}});
    let (_, _, causes) = admit(&crd_schema("istio/virtualservices.yaml", "v1"), &vs);
    assert!(
        causes
            .iter()
            .any(|c| c.field == "spec.http[0].route[0].destination.host"
                && c.message.starts_with("Required value")),
        "{causes:?}"
    );
}

#[test]
fn httproute_duplicate_hostnames_and_a_bad_hostname_pattern_are_rejected() {
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"hostnames": ["Bad_Host"], "rules": [{"backendRefs": [{"name": "a", "port": 1}]}]}});
    let (_, _, causes) = admit(&httproute_schema(), &route);
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].field, "spec.hostnames[0]");
    assert!(
        causes[0]
            .message
            .starts_with("Invalid value: \"Bad_Host\": spec.hostnames[0] in body should match '^")
    );
}

#[test]
fn a_trafficsplit_without_backends_and_a_valid_one_are_told_apart() {
    let schema = crd_schema("smi/trafficsplits.yaml", "v1alpha4");
    let good = json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "t"},
        "spec": {"service": "web", "backends": [{"service": "web-primary", "weight": 90},
                                                 {"service": "web-canary", "weight": 10}]}});
    assert_eq!(admit(&schema, &good).2, vec![]);
    let bad = json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "t"}, "spec": {"service": "web"}});
    assert_eq!(
        admit(&schema, &bad).2,
        vec![Cause {
            reason: "FieldValueRequired".into(),
            field: "spec.backends".into(),
            message: "Required value".into()
        }]
    );
}

#[test]
fn a_traefikservice_weighted_service_accepts_int_or_string_ports() {
    let schema = crd_schema("traefik/traefikservices.yaml", "v1alpha1");
    let ts = json!({"apiVersion": "traefik.io/v1alpha1", "kind": "TraefikService",
        "metadata": {"name": "t"},
        "spec": {"weighted": {"services": [{"name": "a", "port": 80, "weight": 1},
                                           {"name": "b", "port": "http", "weight": 1}]}}});
    let (_, pruned, causes) = admit(&schema, &ts);
    assert!(
        causes.is_empty() && pruned.is_empty(),
        "{causes:?} {pruned:?}"
    );
    let bad = json!({"apiVersion": "traefik.io/v1alpha1", "kind": "TraefikService",
        "metadata": {"name": "t"},
        "spec": {"weighted": {"services": [{"name": "a", "port": true}]}}});
    assert!(!admit(&schema, &bad).2.is_empty());
}

#[test]
fn a_flagger_canary_needs_a_known_target_kind_and_one_analysis_shape() {
    let schema = crd_schema("flagger/canaries.yaml", "v1beta1");
    let good = json!({"apiVersion": "flagger.app/v1beta1", "kind": "Canary", "metadata": {"name": "c"},
        "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "service": {"port": 80},
                 "analysis": {"interval": "1m", "threshold": 5, "stepWeight": 10, "maxWeight": 50}}});
    assert_eq!(admit(&schema, &good).2, vec![]);
    let mut bad = good.clone();
    bad["spec"]["targetRef"]["kind"] = json!("StatefulSet");
    let causes = admit(&schema, &bad).2;
    assert_eq!(causes[0].field, "spec.targetRef.kind");
    assert_eq!(
        causes[0].message,
        "Unsupported value: \"StatefulSet\": supported values: \"DaemonSet\", \"Deployment\", \"Service\""
    );
    let mut no_shape = good.clone();
    no_shape["spec"]["analysis"] = json!({"interval": "1m", "threshold": 5});
    let causes = admit(&schema, &no_shape).2;
    assert!(
        causes
            .iter()
            .any(|c| c.field == "spec.analysis" && c.message.contains("(oneOf)")),
        "{causes:?}"
    );
}

fn object_schema(spec: Value) -> Value {
    json!({"type": "object", "properties": {"apiVersion": {"type": "string"},
        "kind": {"type": "string"}, "metadata": {"type": "object"}, "spec": spec}})
}

fn spec_causes(spec_schema: Value, spec: Value) -> Vec<Cause> {
    validate(&object_schema(spec_schema), &json!({"spec": spec}), None)
}

fn messages(causes: &[Cause]) -> Vec<String> {
    causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

#[test]
fn string_bounds_pattern_and_format_read_like_kube_openapi() {
    let schema = json!({"type": "object", "properties": {
        "short": {"type": "string", "maxLength": 3},
        "long": {"type": "string", "minLength": 3},
        "pat": {"type": "string", "pattern": "^a+$"},
        "when": {"type": "string", "format": "date-time"},
        "ip": {"type": "string", "format": "ipv4"}}});
    let causes = spec_causes(
        schema.clone(),
        json!({"short": "abcd", "long": "ab", "pat": "b", "when": "yesterday", "ip": "1.2.3.4"}),
    );
    assert_eq!(
        messages(&causes),
        vec![
            "spec.long: Invalid value: \"ab\": spec.long in body should be at least 3 chars long",
            "spec.pat: Invalid value: \"b\": spec.pat in body should match '^a+$'",
            "spec.short: Too long: may not be more than 3 bytes",
            "spec.when: Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
        ]
    );
    assert!(
        spec_causes(
            schema,
            json!({"when": "2026-01-02T03:04:05Z", "ip": "10.0.0.1"})
        )
        .is_empty()
    );
}

#[test]
fn numeric_bounds_honour_exclusivity_and_print_integers_as_integers() {
    let schema = json!({"type": "object", "properties": {
        "a": {"type": "integer", "maximum": 10, "exclusiveMaximum": true},
        "b": {"type": "integer", "minimum": 0, "exclusiveMinimum": true},
        "c": {"type": "number", "maximum": 1.5},
        "d": {"type": "integer", "multipleOf": 5}}});
    let causes = spec_causes(schema.clone(), json!({"a": 10, "b": 0, "c": 2.5, "d": 7}));
    assert_eq!(
        messages(&causes),
        vec![
            "spec.a: Invalid value: 10: spec.a in body should be less than 10",
            "spec.b: Invalid value: 0: spec.b in body should be greater than 0",
            "spec.c: Invalid value: 2.5: spec.c in body should be less than or equal to 1.5",
            "spec.d: Invalid value: 7: spec.d in body should be a multiple of 5",
        ]
    );
    assert!(spec_causes(schema, json!({"a": 9, "b": 1, "c": 1.5, "d": 10})).is_empty());
}

#[test]
fn item_counts_and_list_type_uniqueness_are_enforced() {
    let schema = json!({"type": "object", "properties": {
        "few": {"type": "array", "minItems": 2, "items": {"type": "string"}},
        "many": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
        "set": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "map": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "v": {"type": "integer"}}}}}});
    let causes = spec_causes(
        schema,
        json!({"few": ["a"], "many": ["a", "b"], "set": ["x", "y", "x"],
               "map": [{"name": "a", "v": 1}, {"name": "a", "v": 2}]}),
    );
    assert_eq!(
        messages(&causes),
        vec![
            "spec.few: Invalid value: 1: spec.few in body should have at least 2 items",
            "spec.many: Too many: 2: must have at most 1 item",
            "spec.map[1]: Duplicate value: {\"name\":\"a\"}",
            "spec.set[2]: Duplicate value: \"x\"",
        ]
    );
}

#[test]
fn nullable_int_or_string_and_additional_properties_are_typed() {
    let schema = json!({"type": "object", "properties": {
        "n": {"type": "string", "nullable": true},
        "ios": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}}}});
    assert!(
        spec_causes(
            schema.clone(),
            json!({"n": null, "ios": "50%", "labels": {"a": "b"}})
        )
        .is_empty()
    );
    assert!(spec_causes(schema.clone(), json!({"ios": 3})).is_empty());
    let causes = spec_causes(schema, json!({"ios": 1.5, "labels": {"a": 1}}));
    assert_eq!(causes.len(), 2, "{causes:?}");
    assert_eq!(causes[0].field, "spec.ios");
    assert_eq!(causes[0].reason, "FieldValueTypeInvalid");
    assert_eq!(
        causes[1].message,
        "Invalid value: \"integer\": spec.labels.a in body must be of type string: \"integer\""
    );
}

#[test]
fn an_embedded_resource_needs_apiversion_and_kind_and_keeps_its_metadata() {
    let schema = object_schema(json!({"type": "object", "properties": {"template": {
        "type": "object", "x-kubernetes-embedded-resource": true,
        "x-kubernetes-preserve-unknown-fields": true}}}));
    let mut object = json!({"spec": {"template": {"metadata": {"name": "x"}, "spec": {"a": 1}}}});
    assert!(prune_and_default(&schema, &mut object).is_empty());
    assert_eq!(object["spec"]["template"]["spec"]["a"], 1);
    let causes = validate(&schema, &object, None);
    assert_eq!(
        messages(&causes),
        vec![
            "spec.template.apiVersion: Required value: must not be empty",
            "spec.template.kind: Required value: must not be empty",
        ]
    );
}

#[test]
fn pruning_keeps_preserved_subtrees_and_defaults_fill_absent_and_null_fields() {
    let schema = object_schema(json!({"type": "object", "properties": {
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        "replicas": {"type": "integer", "default": 1},
        "strategy": {"type": "object", "default": {}, "properties": {"type": {"type": "string", "default": "Canary"}}},
        "gone": {"type": "string"}}}));
    let mut object = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a", "odd": 1},
        "spec": {"free": {"anything": [1]}, "extra": true, "gone": null}, "top": 1});
    let mut pruned = prune_and_default(&schema, &mut object);
    pruned.sort();
    assert_eq!(pruned, vec!["spec.extra".to_string(), "top".to_string()]);
    assert_eq!(
        object,
        json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a", "odd": 1},
            "spec": {"free": {"anything": [1]}, "replicas": 1, "strategy": {"type": "Canary"}}})
    );
}

fn cel_schema(rules: Value) -> Value {
    object_schema(json!({"type": "object", "x-kubernetes-validations": rules,
        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}, "name": {"type": "string"}}}))
}

#[test]
fn cel_rules_report_message_message_expression_field_path_and_reason() {
    let schema = cel_schema(json!([
        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
        {"rule": "self.min > 0", "messageExpression": "'min is ' + string(self.min)"},
        {"rule": "self.name != 'bad'", "fieldPath": ".name", "reason": "FieldValueForbidden", "message": "no"},
        {"rule": "self.max < 100"}
    ]));
    let causes = validate(
        &schema,
        &json!({"spec": {"min": 0, "max": -1, "name": "bad"}}),
        None,
    );
    assert_eq!(
        messages(&causes),
        vec![
            "spec: Invalid value: min must not exceed max",
            "spec: Invalid value: min is 0",
            "spec.name: Forbidden: no",
        ]
    );
    assert_eq!(causes[2].reason, "FieldValueForbidden");
    let causes = validate(
        &schema,
        &json!({"spec": {"min": 1, "max": 200, "name": "a"}}),
        None,
    );
    assert_eq!(
        messages(&causes),
        vec!["spec: Invalid value: failed rule: self.max < 100"]
    );
}

#[test]
fn cel_transition_rules_see_old_self_only_on_update_unless_optional() {
    let schema = cel_schema(json!([
        {"rule": "self.name == oldSelf.name", "message": "name is immutable"},
        {"rule": "!has(oldSelf.min) || self.min >= oldSelf.min", "optionalOldSelf": true, "message": "min only grows"}
    ]));
    let new = json!({"spec": {"min": 1, "name": "b"}});
    assert!(validate(&schema, &new, None).is_empty());
    let old = json!({"spec": {"min": 2, "name": "a"}});
    assert_eq!(
        messages(&validate(&schema, &new, Some(&old))),
        vec![
            "spec: Invalid value: name is immutable",
            "spec: Invalid value: min only grows"
        ]
    );
}

#[test]
fn cel_rules_are_skipped_with_the_servers_nil_cause_after_a_type_error() {
    let schema = cel_schema(json!([{"rule": "self.min <= self.max"}]));
    let causes = validate(&schema, &json!({"spec": {"min": "x", "max": 1}}), None);
    assert_eq!(causes.len(), 2);
    assert_eq!(causes[1].field, "<nil>");
    assert!(
        causes[1]
            .message
            .starts_with("Invalid value: null: some validation rules were not checked")
    );
}

#[test]
fn an_unsupported_cel_function_is_a_clear_error_not_a_panic() {
    let schema = cel_schema(json!([{"rule": "self.name.noSuchFunction()"}]));
    let causes = validate(&schema, &json!({"spec": {"name": "a"}}), None);
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].field, "spec");
    assert!(causes[0].message.contains("noSuchFunction"), "{causes:?}");
}

#[test]
fn every_cel_rule_in_the_upstream_router_crds_compiles() {
    for (file, version) in [
        ("gateway-api/httproutes.yaml", "v1"),
        ("istio/virtualservices.yaml", "v1"),
        ("istio/destinationrules.yaml", "v1"),
        ("flagger/canaries.yaml", "v1beta1"),
        ("argo-rollouts/rollouts.yaml", "v1alpha1"),
    ] {
        let compiled = kube_cel::compile_schema(&crd_schema(file, version));
        let errors: Vec<String> = compiled
            .compilation_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
    }
}

#[test]
fn a_rich_httproute_passes_every_cel_rule_and_a_broken_filter_fails_one() {
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "rich"},
        "spec": {"parentRefs": [{"name": "gw", "sectionName": "https"}],
            "hostnames": ["a.example.com", "*.example.org"],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                             "headers": [{"name": "x-canary", "value": "always"}],
                             "queryParams": [{"name": "v", "value": "2"}], "method": "GET"}],
                "filters": [{"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}},
                            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                "backendRefs": [{"name": "primary", "port": 80, "weight": 90},
                                {"name": "canary", "port": 80, "weight": 10}],
                "timeouts": {"request": "10s", "backendRequest": "5s"}}]}});
    let (_, pruned, causes) = admit(&httproute_schema(), &route);
    assert!(
        causes.is_empty() && pruned.is_empty(),
        "{causes:?} {pruned:?}"
    );

    let mut broken = route.clone();
    // A filter of one type carrying another type's configuration breaks a CEL rule.
    broken["spec"]["rules"][0]["filters"][0] = json!({"type": "RequestHeaderModifier",
        "urlRewrite": {"hostname": "x.example.com"}});
    let (_, _, causes) = admit(&httproute_schema(), &broken);
    assert!(
        causes
            .iter()
            .any(|c| c.field.starts_with("spec.rules[0].filters[0]")
                && c.message.starts_with("Invalid value: ")),
        "{causes:?}"
    );
}
