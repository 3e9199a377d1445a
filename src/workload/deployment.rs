//! The canary Deployment built from the target's pod template, the apply body that holds or
//! releases the target, and the readings of both Deployments for the core. Pure: no client, no
//! decision about when any of it is applied.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::{Value, json};

use super::{BuildWorkloadError, CanaryIdentity, PodLabels, canary_label_value, managed_labels};
use crate::api::names::{CANARY_LABEL, REVISION_LABEL, canary_name};
use crate::core::{TargetState, WorkloadState};

/// Label on canary pods and in the canary Deployment's selector that stable pods never carry, so
/// the canary Deployment never selects stable pods even when its other labels equal the stable
/// ones (the `none` router). It is constant across revisions on purpose: a Deployment's
/// `spec.selector` is immutable, so a selector naming the revision would make every new revision's
/// apply fail with 422 instead of rolling the canary in place.
pub const CANARY_ROLE_LABEL: &str = "sluice.dev/role";
/// Value of [`CANARY_ROLE_LABEL`] on canary pods.
pub const CANARY_ROLE_VALUE: &str = "canary";
/// Annotation on the canary Deployment, set (to the revision) by the write that sets its pod
/// template ([`canary_deployment`]). sluice's replica changes re-apply only the live labels and
/// spec, so server-side apply removes it there (sluice is its only field manager). Present: the
/// latest generation may carry a template the Deployment controller has not seen. Absent: every
/// spec change sluice made since it wrote the template changed `spec.replicas` only (see
/// [`workload_state`]).
pub const TEMPLATE_APPLIED_ANNOTATION: &str = "sluice.dev/template-applied";

/// The controller-owned `<target>-canary` Deployment running `revision` (the hash of the target's
/// current pod template) with `replicas` replicas.
///
/// `stable_selector` is the stable Service's selector as the user wrote it (use
/// [`super::stable_selector_of`], which sees through the `service` router's switch). With
/// [`PodLabels::Separate`] every label it selects on is rewritten to its canary value in the pod
/// labels and in the Deployment's selector; with [`PodLabels::Shared`] they are kept. Either way the
/// pods carry the revision and [`CANARY_ROLE_LABEL`], and the selector includes the latter.
///
/// Only the pod template and the availability settings (`minReadySeconds`,
/// `progressDeadlineSeconds`, `strategy`) are taken from the target: never its labels, which carry
/// `sluice.dev/canary` and would make the hold policy pause the canary too. `spec.paused` is left
/// unset.
pub fn canary_deployment(
    target: &Deployment,
    stable_selector: &BTreeMap<String, String>,
    canary: &CanaryIdentity,
    revision: &str,
    replicas: i32,
    pod_labels: PodLabels,
) -> Result<Deployment, BuildWorkloadError> {
    let target_name = target
        .metadata
        .name
        .clone()
        .ok_or_else(|| missing("<unnamed>", "metadata.name"))?;
    let spec = target
        .spec
        .as_ref()
        .ok_or_else(|| missing(&target_name, "spec"))?;

    let mut template = spec.template.clone();
    let template_meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let labels = template_meta.labels.get_or_insert_with(BTreeMap::new);
    let mut selector = spec.selector.clone();
    match pod_labels {
        PodLabels::Separate => {
            for (key, value) in stable_selector {
                labels.insert(key.clone(), canary_label_value(value));
            }
            rewrite_selector(&mut selector, stable_selector);
        }
        PodLabels::Shared => {}
    }
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    labels.insert(CANARY_ROLE_LABEL.to_owned(), CANARY_ROLE_VALUE.to_owned());
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CANARY_ROLE_LABEL.to_owned(), CANARY_ROLE_VALUE.to_owned());

    let mut meta_labels = managed_labels();
    meta_labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(canary_name(&target_name)),
            namespace: Some(canary.namespace.clone()),
            labels: Some(meta_labels),
            annotations: Some(BTreeMap::from([(
                TEMPLATE_APPLIED_ANNOTATION.to_owned(),
                revision.to_owned(),
            )])),
            owner_references: Some(vec![canary.owner_reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector,
            template,
            min_ready_seconds: spec.min_ready_seconds,
            progress_deadline_seconds: spec.progress_deadline_seconds,
            strategy: spec.strategy.clone(),
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// Rewrites the selected keys of a Deployment selector to their canary values, in `matchLabels`
/// and in `In`/`NotIn` expressions, so the selector still matches the rewritten pod labels (a
/// selector that does not match its template is rejected by the API server).
fn rewrite_selector(selector: &mut LabelSelector, stable_selector: &BTreeMap<String, String>) {
    if let Some(match_labels) = selector.match_labels.as_mut() {
        for (key, value) in match_labels.iter_mut() {
            if stable_selector.contains_key(key) {
                *value = canary_label_value(value);
            }
        }
    }
    for expression in selector.match_expressions.iter_mut().flatten() {
        if stable_selector.contains_key(&expression.key) {
            for value in expression.values.iter_mut().flatten() {
                *value = canary_label_value(value);
            }
        }
    }
}

fn missing(name: &str, field: &'static str) -> BuildWorkloadError {
    BuildWorkloadError::MissingField {
        kind: "Deployment",
        name: name.to_owned(),
        field,
    }
}

/// The target Deployment as the core sees it. `revision` is the hash of its pod template
/// (`core::revision::template_hash`), computed by the caller so this module needs no hashing.
pub fn target_state(target: &Deployment, canary_name: &str, revision: String) -> TargetState {
    let spec = target.spec.as_ref();
    let status = target.status.as_ref();
    TargetState {
        resource_version: target.metadata.resource_version.clone().unwrap_or_default(),
        generation: target.metadata.generation.unwrap_or_default(),
        observed_generation: status
            .and_then(|s| s.observed_generation)
            .unwrap_or_default(),
        revision,
        paused: spec.and_then(|s| s.paused).unwrap_or(false),
        labelled: target
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(CANARY_LABEL))
            .is_some_and(|value| value == canary_name),
        replicas: spec_replicas(target),
        status_replicas: status.and_then(|s| s.replicas).unwrap_or_default(),
        updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or_default(),
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or_default(),
        available_replicas: status
            .and_then(|s| s.available_replicas)
            .unwrap_or_default(),
    }
}

/// The canary Deployment as the core sees it; its revision is read from the label
/// [`canary_deployment`] put on it.
///
/// Ready and available pods count only pods of its current template (the revision in the
/// label), from the status: ready pods less the pods not updated, a lower bound, since the status
/// does not split readiness by revision. The status describes the spec of
/// `status.observedGeneration`, and every spec change moves `metadata.generation`, a replica
/// change as much as a template change (apiserver recordings 03 and 12). So:
///
/// - While the write that set the template is sluice's latest ([`TEMPLATE_APPLIED_ANNOTATION`]
///   present), nothing counts until the Deployment controller has seen the latest generation:
///   right after a template change the status still counts the previous revision's pods as ready
///   and even as updated (recording 12), and they must not carry the new revision's weight or
///   analysis (I1).
/// - Once sluice has since changed only `spec.replicas` (annotation gone), a status the
///   Deployment controller has not brought up to date still counts pods of the current template:
///   sluice scales the canary only after its template's pods were counted ready here, so the
///   controller had seen the template by then. Those pods stay ready while it catches up with the
///   replica change; waiting for it would take the route off the canary and put it back (a flap).
///   The count is capped at `spec.replicas`, as a scale-down's surplus pods are going.
pub fn workload_state(canary: &Deployment) -> WorkloadState {
    let status = canary.status.as_ref();
    let revision = canary
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(REVISION_LABEL))
        .cloned();
    let replicas = spec_replicas(canary);
    let observed_latest = status
        .and_then(|s| s.observed_generation)
        .unwrap_or_default()
        >= canary.metadata.generation.unwrap_or_default();
    let template_just_applied = canary
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(TEMPLATE_APPLIED_ANNOTATION));
    let not_updated = status.map_or(0, |s| {
        s.replicas.unwrap_or_default() - s.updated_replicas.unwrap_or_default()
    });
    let of_current = |count: Option<i32>| {
        let of_template = (count.unwrap_or_default() - not_updated).max(0);
        if observed_latest {
            of_template
        } else if template_just_applied {
            0
        } else {
            of_template.min(replicas)
        }
    };
    WorkloadState {
        revision,
        replicas,
        ready_replicas: of_current(status.and_then(|s| s.ready_replicas)),
        available_replicas: of_current(status.and_then(|s| s.available_replicas)),
    }
}

/// Whether the Deployment controller has finished rolling out the current template: it has seen
/// the latest spec and every wanted pod is updated and available, with no old pods left.
pub fn is_rolled_out(target: &Deployment) -> bool {
    let Some(status) = target.status.as_ref() else {
        return false;
    };
    let wanted = spec_replicas(target);
    status.observed_generation.unwrap_or_default() >= target.metadata.generation.unwrap_or_default()
        && status.updated_replicas.unwrap_or_default() == wanted
        && status.available_replicas.unwrap_or_default() == wanted
        && status.replicas.unwrap_or_default() == wanted
}

/// `spec.replicas`, defaulted to 1 as the API server does.
fn spec_replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

/// The server-side-apply body that writes the target's opt-in label and `spec.paused` together
/// (invariant I6).
///
/// It names only what sluice owns: the `sluice.dev/canary` label (present only when `labelled`,
/// so an apply without it removes the label sluice set) and `spec.paused` (always present, so
/// sluice keeps owning it either way). `metadata.resourceVersion` makes the apply conditional:
/// a template change that landed after the decision makes it fail with 409 instead of releasing
/// the template.
pub fn target_hold_patch(
    target_name: &str,
    resource_version: &str,
    labelled: bool,
    paused: bool,
    canary_name: &str,
) -> Value {
    let mut metadata = json!({
        "name": target_name,
        "resourceVersion": resource_version,
    });
    if labelled {
        metadata["labels"] = json!({ CANARY_LABEL: canary_name });
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": { "paused": paused },
    })
}
