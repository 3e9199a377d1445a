//! Builders and readers held to objects a user could have written.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::*;
use crate::api::names::{CANARY_LABEL, MANAGED_BY_LABEL, REVISION_LABEL};

const TARGET: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: checkout
  namespace: shop
  generation: 4
  resourceVersion: "812"
  labels: {app: checkout, sluice.dev/canary: checkout}
spec:
  replicas: 3
  minReadySeconds: 5
  selector:
    matchLabels: {app: checkout, tier: web}
    matchExpressions:
    - {key: app, operator: In, values: [checkout]}
  template:
    metadata:
      labels: {app: checkout, tier: web, version: v2}
      annotations: {prometheus.io/scrape: "true"}
    spec:
      containers:
      - name: app
        image: shop/checkout:2.0
        ports: [{containerPort: 8080}]
status:
  observedGeneration: 4
  replicas: 3
  updatedReplicas: 3
  readyReplicas: 3
  availableReplicas: 3
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.0.0.12
  clusterIPs: [10.0.0.12]
  selector: {app: checkout}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}
"#;

fn target() -> Deployment {
    serde_saphyr::from_str(TARGET).expect("fixture Deployment parses")
}

fn service() -> Service {
    serde_saphyr::from_str(SERVICE).expect("fixture Service parses")
}

fn identity() -> CanaryIdentity {
    CanaryIdentity {
        name: "checkout".into(),
        namespace: "shop".into(),
        uid: "5a1d3c9e-0000-4000-8000-000000000001".into(),
    }
}

fn stable_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), "checkout".to_owned())])
}

fn canary(pod_labels: PodLabels) -> Deployment {
    canary_deployment(
        &target(),
        &stable_selector(),
        &identity(),
        "7f9c2b",
        2,
        pod_labels,
    )
    .expect("builds")
}

/// Whether a label selector (matchLabels and In/NotIn/Exists/DoesNotExist) selects `labels`.
fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("unknown operator {other}"),
        }
    });
    by_labels && by_expressions
}

fn selects_map(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels_of(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[test]
fn canary_pods_of_a_routed_provider_carry_rewritten_labels_the_revision_and_the_role() {
    let labels = pod_labels_of(&canary(PodLabels::Separate));
    assert_eq!(
        labels,
        BTreeMap::from([
            ("app".into(), "checkout-canary".into()),
            ("tier".into(), "web".into()),
            ("version".into(), "v2".into()),
            (REVISION_LABEL.into(), "7f9c2b".into()),
            (CANARY_ROLE_LABEL.into(), CANARY_ROLE_VALUE.into()),
        ])
    );
}

#[test]
fn the_stable_service_never_selects_canary_pods_of_a_routed_provider() {
    let labels = pod_labels_of(&canary(PodLabels::Separate));
    assert!(!selects_map(&stable_selector_of(&service()), &labels));
}

#[test]
fn the_canary_service_selects_canary_pods_and_not_stable_pods() {
    let canary_service = canary_service(&service(), &identity()).expect("builds");
    let selector = canary_service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector");
    assert!(selects_map(
        &selector,
        &pod_labels_of(&canary(PodLabels::Separate))
    ));
    assert!(!selects_map(&selector, &pod_labels_of(&target())));
}

#[test]
fn the_canary_deployment_selector_matches_its_own_pods_but_never_stable_pods() {
    for mode in [PodLabels::Separate, PodLabels::Shared] {
        let deployment = canary(mode);
        let selector = &deployment.spec.as_ref().expect("spec").selector;
        assert!(
            selects(selector, &pod_labels_of(&deployment)),
            "{mode:?}: own pods"
        );
        assert!(
            !selects(selector, &pod_labels_of(&target())),
            "{mode:?}: stable pods"
        );
    }
}

#[test]
fn the_routed_canary_selector_rewrites_match_labels_and_expressions() {
    let deployment = canary(PodLabels::Separate);
    let selector = serde_json::to_value(&deployment.spec.as_ref().expect("spec").selector)
        .expect("serialises");
    assert_eq!(
        selector,
        json!({
            "matchLabels": {"app": "checkout-canary", "tier": "web", CANARY_ROLE_LABEL: CANARY_ROLE_VALUE},
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["checkout-canary"]}],
        })
    );
}

#[test]
fn with_the_none_router_the_stable_service_selects_canary_pods() {
    let labels = pod_labels_of(&canary(PodLabels::Shared));
    assert_eq!(labels.get("app").map(String::as_str), Some("checkout"));
    assert!(selects_map(&stable_selector_of(&service()), &labels));
}

#[test]
fn the_canary_selector_does_not_change_with_the_revision_because_selectors_are_immutable() {
    let one = canary(PodLabels::Shared);
    let other = canary_deployment(
        &target(),
        &stable_selector(),
        &identity(),
        "0000aa",
        2,
        PodLabels::Shared,
    )
    .expect("builds");
    assert_eq!(
        one.spec.as_ref().map(|s| &s.selector),
        other.spec.as_ref().map(|s| &s.selector)
    );
    assert_ne!(pod_labels_of(&one), pod_labels_of(&other));
}

#[test]
fn the_canary_deployment_is_named_owned_sized_and_never_labelled_for_the_hold_policy() {
    let deployment = canary(PodLabels::Separate);
    assert_eq!(deployment.metadata.name.as_deref(), Some("checkout-canary"));
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("shop"));
    let owners = deployment
        .metadata
        .owner_references
        .clone()
        .expect("owners");
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "Canary");
    assert_eq!(owners[0].api_version, "sluice.dev/v1alpha1");
    assert_eq!(owners[0].name, "checkout");
    assert_eq!(owners[0].uid, identity().uid);
    assert_eq!(owners[0].controller, Some(true));
    let labels = deployment.metadata.labels.clone().expect("labels");
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("sluice")
    );
    assert!(!labels.contains_key(CANARY_LABEL));
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.paused, None);
    assert_eq!(spec.min_ready_seconds, Some(5));
    assert_eq!(deployment.status, None);
}

#[test]
fn the_canary_deployment_keeps_the_target_pod_spec_and_annotations() {
    let built = canary(PodLabels::Separate);
    let template = &built.spec.as_ref().expect("spec").template;
    let original = &target().spec.expect("spec").template;
    assert_eq!(template.spec, original.spec);
    assert_eq!(
        template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone()),
        original
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
    );
}

#[test]
fn a_built_deployment_round_trips_through_serde_without_losing_a_field() {
    let built = canary(PodLabels::Separate);
    let value = serde_json::to_value(&built).expect("serialises");
    assert_eq!(value["apiVersion"], "apps/v1");
    assert_eq!(value["kind"], "Deployment");
    let back: Deployment = serde_json::from_value(value.clone()).expect("deserialises");
    assert_eq!(back, built);
    assert_eq!(serde_json::to_value(&back).expect("serialises"), value);
}

#[test]
fn a_deployment_without_a_name_is_an_error_not_a_canary_named_dash_canary() {
    let mut unnamed = target();
    unnamed.metadata.name = None;
    let result = canary_deployment(
        &unnamed,
        &stable_selector(),
        &identity(),
        "r",
        1,
        PodLabels::Separate,
    );
    assert!(matches!(
        result,
        Err(BuildWorkloadError::MissingField {
            field: "metadata.name",
            ..
        })
    ));
}

#[test]
fn the_canary_service_copies_ports_without_node_ports_or_cluster_ips() {
    let built = canary_service(&service(), &identity()).expect("builds");
    let value = serde_json::to_value(&built).expect("serialises");
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "checkout-canary",
                "namespace": "shop",
                "labels": {MANAGED_BY_LABEL: "sluice"},
                "ownerReferences": [{
                    "apiVersion": "sluice.dev/v1alpha1", "kind": "Canary", "name": "checkout",
                    "uid": identity().uid, "controller": true,
                }],
            },
            "spec": {
                "selector": {"app": "checkout-canary"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        })
    );
    let back: Service = serde_json::from_value(value).expect("deserialises");
    assert_eq!(back, built);
}

#[test]
fn the_canary_service_derives_its_selector_from_the_saved_stable_selector_when_switched() {
    let mut switched = service();
    switched.metadata.annotations = Some(BTreeMap::from([(
        STABLE_SELECTOR_ANNOTATION.to_owned(),
        r#"{"app":"checkout"}"#.to_owned(),
    )]));
    if let Some(spec) = switched.spec.as_mut() {
        spec.selector = Some(BTreeMap::from([("app".into(), "checkout-canary".into())]));
    }
    let built = canary_service(&switched, &identity()).expect("builds");
    assert_eq!(
        built.spec.and_then(|s| s.selector),
        Some(BTreeMap::from([("app".into(), "checkout-canary".into())]))
    );
}

#[test]
fn a_long_label_value_is_shortened_so_its_canary_form_is_still_a_valid_label() {
    let long = "a".repeat(63);
    let value = canary_label_value(&long);
    assert_eq!(value.len(), 63);
    assert!(value.ends_with("-canary"));
    assert_ne!(value, long);
    assert_eq!(canary_label_value("checkout"), "checkout-canary");
    assert_eq!(canary_label_value(""), "canary");
}

#[test]
fn target_state_reads_the_deployment() {
    let state = target_state(&target(), "checkout", "abc".into());
    assert_eq!(
        state,
        crate::core::TargetState {
            resource_version: "812".into(),
            generation: 4,
            observed_generation: 4,
            revision: "abc".into(),
            paused: false,
            labelled: true,
            replicas: 3,
            status_replicas: 3,
            updated_replicas: 3,
            ready_replicas: 3,
            available_replicas: 3,
        }
    );
}

#[test]
fn a_target_labelled_for_another_canary_is_not_labelled_for_this_one() {
    assert!(!target_state(&target(), "payments", "abc".into()).labelled);
}

#[test]
fn workload_state_reads_the_revision_label_and_counts() {
    let mut deployment = canary(PodLabels::Separate);
    deployment.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        ready_replicas: Some(1),
        available_replicas: Some(1),
        ..Default::default()
    });
    assert_eq!(
        workload_state(&deployment),
        crate::core::WorkloadState {
            revision: Some("7f9c2b".into()),
            replicas: 2,
            ready_replicas: 1,
            available_replicas: 1,
        }
    );
}

#[test]
fn ready_pods_of_the_canary_previous_revision_do_not_count_as_ready_for_the_new_one() {
    let mut deployment = canary(PodLabels::Separate);
    deployment.metadata.generation = Some(2);
    let status =
        |observed, replicas, updated, ready| k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..Default::default()
        };
    // The template just changed: the status still describes the old revision's ready pod.
    deployment.status = Some(status(1, 1, 1, 1));
    assert_eq!(workload_state(&deployment).ready_replicas, 0);
    // Seen, rolling: one old ready pod, one new pod not ready yet.
    deployment.status = Some(status(2, 2, 1, 1));
    assert_eq!(workload_state(&deployment).ready_replicas, 0);
    assert_eq!(workload_state(&deployment).available_replicas, 0);
    // The new pod is ready, the old one not yet gone.
    deployment.status = Some(status(2, 2, 1, 2));
    assert_eq!(workload_state(&deployment).ready_replicas, 1);
}

/// A canary Deployment's status as the Deployment controller writes it.
fn canary_status(
    observed: i64,
    replicas: i32,
    updated: i32,
    ready: i32,
) -> k8s_openapi::api::apps::v1::DeploymentStatus {
    k8s_openapi::api::apps::v1::DeploymentStatus {
        observed_generation: Some(observed),
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        ..Default::default()
    }
}

/// The canary Deployment as the API server holds it after sluice changed its replicas: the
/// executor re-applies the live labels and spec with the new count and no annotations, so server-
/// side apply drops the annotation sluice alone set, and the spec change moves the generation. The
/// status is the Deployment controller's, not brought up to date yet.
fn scaled_by_sluice(live: &Deployment, replicas: i32) -> Deployment {
    let mut scaled = live.clone();
    scaled.metadata.annotations = None;
    scaled.metadata.generation = live.metadata.generation.map(|g| g + 1);
    if let Some(spec) = scaled.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    scaled
}

#[test]
fn the_write_that_sets_the_canary_template_marks_it() {
    let deployment = canary(PodLabels::Separate);
    let annotations = deployment.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations.get(super::deployment::TEMPLATE_APPLIED_ANNOTATION),
        Some(&"7f9c2b".to_owned())
    );
}

#[test]
fn ready_canary_pods_stay_ready_while_the_deployment_controller_catches_up_with_a_replica_change() {
    let mut live = canary(PodLabels::Separate);
    live.metadata.generation = Some(3);
    live.status = Some(canary_status(3, 2, 2, 2));
    assert_eq!(workload_state(&live).ready_replicas, 2);

    // sluice scales 2 -> 5 for the next step; the status still describes generation 3.
    let scaled = scaled_by_sluice(&live, 5);
    assert_eq!(
        workload_state(&scaled),
        crate::core::WorkloadState {
            revision: Some("7f9c2b".into()),
            replicas: 5,
            ready_replicas: 2,
            available_replicas: 2,
        }
    );
    // The controller has seen it: three new pods, not ready yet.
    let mut seen = scaled.clone();
    seen.status = Some(canary_status(4, 5, 5, 2));
    assert_eq!(workload_state(&seen).ready_replicas, 2);
    // A second replica change before the controller caught up with the first one.
    let again = scaled_by_sluice(&scaled, 6);
    assert_eq!(workload_state(&again).ready_replicas, 2);
    // Scaled to zero (after the route left it): the pods going do not count.
    let emptied = scaled_by_sluice(&seen, 0);
    assert_eq!(workload_state(&emptied).ready_replicas, 0);
    assert_eq!(workload_state(&emptied).available_replicas, 0);
}

#[test]
fn a_template_change_after_replica_changes_still_waits_for_the_deployment_controller() {
    // Revision 7f9c2b ran scaled to 5, all ready, and its marker went with the scale.
    let mut live = scaled_by_sluice(&canary(PodLabels::Separate), 5);
    live.metadata.generation = Some(6);
    live.status = Some(canary_status(6, 5, 5, 5));
    assert_eq!(workload_state(&live).ready_replicas, 5);

    // sluice applies the next revision's template (and its first step's size) in place. The
    // status still counts revision 7f9c2b's five pods as ready and updated (recording 12).
    let mut target = target();
    if let Some(container) = target
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
    {
        container.image = Some("shop/checkout:3.0".into());
    }
    let mut next = canary_deployment(
        &target,
        &stable_selector(),
        &identity(),
        "c41d07",
        2,
        PodLabels::Separate,
    )
    .expect("builds");
    next.metadata.generation = Some(7);
    next.status = live.status.clone();
    assert_eq!(workload_state(&next).revision.as_deref(), Some("c41d07"));
    assert_eq!(workload_state(&next).ready_replicas, 0);
    assert_eq!(workload_state(&next).available_replicas, 0);
    // Seen: the new ReplicaSet surges one pod beside the old five; none of the new is ready.
    next.status = Some(canary_status(7, 6, 1, 5));
    assert_eq!(workload_state(&next).ready_replicas, 0);
    // The new pod is ready.
    next.status = Some(canary_status(7, 6, 1, 6));
    assert_eq!(workload_state(&next).ready_replicas, 1);
}

#[test]
fn a_deployment_is_rolled_out_only_when_every_count_matches_and_the_generation_was_seen() {
    assert!(is_rolled_out(&target()));
    type Change = fn(&mut Deployment);
    let cases: [(&str, Change); 5] = [
        ("generation not observed", |d| {
            d.metadata.generation = Some(5)
        }),
        ("an old pod left", |d| {
            if let Some(s) = d.status.as_mut() {
                s.replicas = Some(4)
            }
        }),
        ("not all updated", |d| {
            if let Some(s) = d.status.as_mut() {
                s.updated_replicas = Some(2)
            }
        }),
        ("not all available", |d| {
            if let Some(s) = d.status.as_mut() {
                s.available_replicas = Some(2)
            }
        }),
        ("no status", |d| d.status = None),
    ];
    for (why, change) in cases {
        let mut deployment = target();
        change(&mut deployment);
        assert!(!is_rolled_out(&deployment), "{why}");
    }
}

#[test]
fn the_hold_patch_names_only_the_label_and_paused_and_carries_the_resource_version() {
    assert_eq!(
        target_hold_patch("checkout", "812", true, true, "checkout"),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "checkout",
                "resourceVersion": "812",
                "labels": {CANARY_LABEL: "checkout"},
            },
            "spec": {"paused": true},
        })
    );
}

#[test]
fn the_release_patch_drops_the_label_but_still_states_paused() {
    let patch = target_hold_patch("checkout", "900", false, false, "checkout");
    assert_eq!(patch["metadata"].get("labels"), None);
    assert_eq!(patch["metadata"]["resourceVersion"], "900");
    assert_eq!(patch["spec"], json!({"paused": false}));
}
