//! One reconcile, as a short linear pipeline: parse (a malformed Canary becomes a condition) ->
//! finalizer -> observe (caches only) -> gather what `core::due` asks for (checks and hook calls,
//! side by side) -> `core::step` -> execute the actions in order -> persist the status once, only
//! if it changed -> events, event hooks and notifications (in the background) and metrics.
//! Nothing here decides what the rollout should do; that is the core's job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::cached::{CachedCanary, MalformedCanary};
use super::context::Context;
use super::error::Error;
use super::execute::execute;
use super::metrics::{CanaryLabels, ErrorLabels, VerdictLabels};
use super::observe::{self, Observed};
use crate::api::names::{self, FIELD_MANAGER, FINALIZER};
use crate::api::status_time;
use crate::api::{CanaryStatus, CheckRecord, Phase};
use crate::core::conditions::{self, Status, Update};
use crate::core::{self, Action, Decision};

/// How soon a failed reconcile is retried; a conflict (a newer object exists) is retried at once.
const RETRY_AFTER: Duration = Duration::from_secs(5);
const RETRY_CONFLICT_AFTER: Duration = Duration::from_millis(200);

/// The reconcile entry point for kube-runtime's `Controller`.
pub async fn reconcile(object: Arc<CachedCanary>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&object, &ctx).await;
    ctx.metrics
        .reconcile_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

/// kube-runtime's error policy: count the error by category and retry.
pub fn error_policy(object: Arc<CachedCanary>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            category: error.category().to_owned(),
        })
        .inc();
    warn!(canary = %object.name_any(), namespace = ?object.namespace(), error = %error_chain(error), "reconcile failed");
    Requeue::requeue(if error.is_conflict() {
        RETRY_CONFLICT_AFTER
    } else {
        RETRY_AFTER
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn reconcile_inner(object: &CachedCanary, ctx: &Context) -> Result<Requeue, Error> {
    let namespace = object.namespace().ok_or(Error::Malformed {
        field: "metadata.namespace",
    })?;
    let name = object.name_any();
    let api: Api<CachedCanary> = Api::namespaced(ctx.client.clone(), &namespace);

    let canary = match object {
        CachedCanary::Parsed(canary) => (**canary).clone(),
        CachedCanary::Malformed(malformed) => {
            report_malformed(&api, malformed).await?;
            return Ok(Requeue::await_change());
        }
    };

    // A Canary older than the controller's own last status write would make it decide an old
    // step again; wait for the watch to deliver the current one.
    let resource_version = object.resource_version().unwrap_or_default();
    if ctx
        .superseded
        .is_stale(&namespace, &name, &resource_version)
    {
        return Ok(Requeue::requeue(STALE_CACHE_RETRY));
    }

    let deleting = canary.metadata.deletion_timestamp.is_some();
    let has_finalizer = canary.finalizers().iter().any(|f| f == FINALIZER);
    if !deleting && !has_finalizer {
        add_finalizer(&api, object).await?;
        // The write's watch event brings the next reconcile.
        return Ok(Requeue::await_change());
    }
    if deleting && !has_finalizer {
        return Ok(Requeue::await_change());
    }

    if !deleting && let Some(other) = yields_to(&canary, &ctx.stores) {
        debug!(canary = %name, %namespace, other = %other, "another Canary holds the target; waiting for it to let go");
        return Ok(Requeue::requeue(YIELD_RETRY));
    }

    let mut observed = observe::observe(canary, &ctx.stores, ctx.hold_mode).await;
    // The core's `now` comes at the precision status keeps, so that a time it writes reads back
    // exactly as decided (a clock that read back earlier would end a step early: I4).
    let due = core::due(
        &observed.resolution,
        &observed.status,
        &observed.observations,
        status_time::now(),
    );
    // Checks and hooks are observations: gathered together, each bounded by its own budget
    // (a hook's is at most half the interval).
    let (checks, hooks) = futures::join!(
        async {
            if due.checks {
                Some(ctx.analysis.run_checks(&ctx.client, &observed).await)
            } else {
                None
            }
        },
        super::hooks::call_due(ctx, &observed, &due.hooks),
    );
    observed.observations.checks = checks;
    observed.observations.hooks = hooks;
    let mut decision = core::step(
        &observed.resolution,
        &observed.status,
        &observed.observations,
        status_time::now(),
    );

    // Clocks that acknowledged writes start are stamped into the status before it is persisted,
    // in the same single status write.
    execute(ctx, &observed, &decision.actions, &mut decision.status).await?;
    if deleting {
        if decision.actions.contains(&Action::RemoveFinalizer) {
            remove_finalizer(&api, object).await?;
            ctx.superseded.forget(&namespace, &name);
        } else {
            return Err(Error::CleanupPending { namespace, name });
        }
    }
    if decision.status != observed.status && !deleting {
        let written = persist_after_execute(
            &api,
            &name,
            object.meta().resource_version.as_deref(),
            &decision.status,
        )
        .await;
        // Accepted, or refused because the object moved on: either way the version decided on
        // is no longer the server's.
        if written.is_ok()
            || matches!(&written, Err(kube::Error::Api(status)) if status.code == 409)
        {
            ctx.superseded.record(&namespace, &name, &resource_version);
        }
        written.map_err(|source| Error::Status {
            namespace: namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        })?;
    }
    publish(
        &ctx.recorder,
        &object.object_ref(&()),
        &observed.status,
        &decision,
    )
    .await;
    if !deleting {
        super::hooks::tell(ctx, &observed, &decision);
    }
    record_metrics(ctx, &observed, &decision);

    Ok(match decision.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// How soon a Canary waiting for another to release its target looks again.
const YIELD_RETRY: Duration = Duration::from_secs(1);

/// The Canary this one must wait for, if any: a hand-written Canary wins over the one sluice wrote
/// for the target's annotations, and waits until that one (and its opt-out) is gone, so the two
/// never act on the same Deployment at once.
fn yields_to(canary: &crate::api::Canary, stores: &super::stores::Stores) -> Option<String> {
    let namespace = canary.namespace();
    let from_annotations = observe::is_from_annotations(canary);
    let target = canary.spec.target_ref.name.as_str();
    stores
        .canaries
        .state()
        .iter()
        .filter(|other| other.namespace() == namespace && other.name_any() != canary.name_any())
        .filter(|other| other.target() == Some(target))
        // The annotation's Canary yields to a hand-written one; a hand-written one waits for the
        // annotation's Canary to finish leaving.
        .find(|other| observe::is_from_annotations(other.as_ref()) != from_annotations)
        .map(|other| other.name_any())
}

/// How soon to look again when the cached Canary is older than the controller's own last write.
const STALE_CACHE_RETRY: Duration = Duration::from_millis(100);

/// How often the status write is tried once the decision's actions have been carried out.
const PERSIST_ATTEMPTS: u32 = 3;
/// The pause between those tries.
const PERSIST_RETRY: Duration = Duration::from_millis(200);

/// [`persist`], tried again a few times on failure. The actions already changed the cluster (a
/// route may carry the next step's weight): a status left behind makes the next reconcile put
/// the old step's weight back and take the step again, so a passing API error (a 409, a 500)
/// must not leave it behind. The apply is forced and idempotent, so trying again is safe.
async fn persist_after_execute(
    api: &Api<CachedCanary>,
    name: &str,
    resource_version: Option<&str>,
    status: &CanaryStatus,
) -> Result<(), kube::Error> {
    let mut attempt = 1;
    loop {
        match persist(api, name, resource_version, status).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt >= PERSIST_ATTEMPTS => return Err(error),
            Err(error) => {
                warn!(canary = %name, attempt, error = %error, "status write failed; trying again");
                attempt += 1;
                tokio::time::sleep(PERSIST_RETRY).await;
            }
        }
    }
}

/// Writes the status under sluice's field manager. `command` belongs to the plugin's field manager
/// and is never part of sluice's apply.
///
/// The write carries the resourceVersion of the Canary the decision was made on, when given: the
/// status is the rollout's whole memory, so a decision made on a cached copy older than the
/// controller's own last status write (the watch has not caught up yet) must fail with 409
/// rather than restart the step clock or put back an older step (I4).
async fn persist(
    api: &Api<CachedCanary>,
    name: &str,
    resource_version: Option<&str>,
    status: &CanaryStatus,
) -> Result<(), kube::Error> {
    let mut status = status.clone();
    status.command = None;
    let mut metadata = json!({ "name": name });
    if let Some(resource_version) = resource_version {
        metadata["resourceVersion"] = json!(resource_version);
    }
    let body = json!({
        "apiVersion": format!("{}/{}", names::GROUP, names::VERSION),
        "kind": "Canary",
        "metadata": metadata,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

/// A Canary that does not parse (a schema that was not installed as generated lets anything in):
/// record why in the `InvalidSpec` condition, touch nothing else, and wait for a change.
async fn report_malformed(
    api: &Api<CachedCanary>,
    malformed: &MalformedCanary,
) -> Result<(), Error> {
    let MalformedCanary {
        metadata,
        reason,
        status,
    } = malformed;
    let name = metadata.name.clone().unwrap_or_default();
    let mut status = status.clone().unwrap_or_default();
    let generation = metadata.generation.unwrap_or_default();
    let now = Timestamp::now();
    let before = status.clone();
    status.phase = Some(Phase::Invalid);
    status.observed_generation = Some(generation);
    status.message = Some(format!("the Canary cannot be read: {reason}"));
    let revision = status.revision.clone();
    conditions::merge(
        &mut status.conditions,
        Update {
            type_: names::condition::INVALID_SPEC,
            status: Status::True,
            reason: "Malformed",
            message: reason,
            revision: revision.as_deref(),
        },
        generation,
        now,
    );
    if status == before {
        return Ok(());
    }
    persist(api, &name, metadata.resource_version.as_deref(), &status)
        .await
        .map_err(|source| Error::Status {
            namespace: metadata.namespace.clone().unwrap_or_default(),
            name,
            source: Box::new(source),
        })
}

/// Adds sluice's finalizer with a JSON patch that tests the list it saw, so a concurrent change
/// to the finalizers fails instead of being overwritten.
async fn add_finalizer(api: &Api<CachedCanary>, object: &CachedCanary) -> Result<(), Error> {
    let patch = match &object.meta().finalizers {
        Some(finalizers) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": finalizers },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
        ]),
        None => json!([{ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }]),
    };
    finalizer_patch(api, object, patch, "add the finalizer to").await
}

async fn remove_finalizer(api: &Api<CachedCanary>, object: &CachedCanary) -> Result<(), Error> {
    let finalizers = object.meta().finalizers.clone().unwrap_or_default();
    let Some(index) = finalizers.iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch = json!([
        { "op": "test", "path": "/metadata/finalizers", "value": finalizers },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
    ]);
    finalizer_patch(api, object, patch, "remove the finalizer from").await
}

async fn finalizer_patch(
    api: &Api<CachedCanary>,
    object: &CachedCanary,
    patch: serde_json::Value,
    action: &'static str,
) -> Result<(), Error> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|source| Error::Serialise {
            what: "the finalizer patch",
            source,
        })?;
    api.patch(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Write {
        action,
        kind: "Canary".to_owned(),
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
        source: Box::new(source),
    })
}

/// Emits the decision's events, after the status they describe is persisted. An event that
/// cannot be published is logged, never retried into a second decision.
///
/// kube-runtime's `Recorder` counts an event as a repeat of an earlier one (one Event object, its
/// series count bumped, the first note kept) when the type, reason, action and regarding object
/// match, whatever the note says. The action therefore names the revision the transition is about
/// (see [`event_action`]): each revision's `CanaryStarted`, `Promoted`, `RolledBack`... is an Event
/// of its own with its own message, while the same transition of the same revision repeating is
/// still counted as one series.
async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
    before: &CanaryStatus,
    decision: &Decision,
) {
    if decision.events.is_empty() {
        return;
    }
    let name = regarding.name.as_deref().unwrap_or_default();
    let namespace = regarding.namespace.as_deref().unwrap_or_default();
    for event in &decision.events {
        info!(
            canary = %name,
            namespace = %namespace,
            reason = %event.reason,
            "{}",
            event.message
        );
        let kube_event = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.as_str().to_owned(),
            note: Some(event.message.clone()),
            action: event_action(
                event.reason.as_str(),
                before.revision.as_deref(),
                decision.status.revision.as_deref(),
            ),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&kube_event, regarding).await {
            warn!(reason = %event.reason, error = %error, "failed to publish an event");
        }
    }
}

/// The API's limit on an Event's `action`, in bytes.
const ACTION_MAX_LEN: usize = 128;

/// An Event's `action`: the reason and the revision the decision leaves the Canary at, written
/// `Reason/from->to` when the decision moves it from another revision (a new revision started,
/// superseded, reverted to stable), so that a transition is told apart from the same transition
/// between other revisions. `before` and `after` are the observed and decided `status.revision`.
fn event_action(reason: &str, before: Option<&str>, after: Option<&str>) -> String {
    let before = before.filter(|r| !r.is_empty());
    let after = after.filter(|r| !r.is_empty()).or(before);
    let mut action = match (before, after) {
        (_, None) => reason.to_owned(),
        (Some(from), Some(to)) if from != to => format!("{reason}/{from}->{to}"),
        (_, Some(to)) => format!("{reason}/{to}"),
    };
    if action.len() > ACTION_MAX_LEN {
        let mut end = ACTION_MAX_LEN;
        while !action.is_char_boundary(end) {
            end -= 1;
        }
        action.truncate(end);
    }
    action
}

fn record_metrics(ctx: &Context, observed: &Observed, decision: &Decision) {
    let labels = CanaryLabels {
        namespace: observed.identity.namespace.clone(),
        name: observed.identity.name.clone(),
    };
    ctx.metrics
        .canary_weight
        .get_or_create(&labels)
        .set(i64::from(decision.status.canary_weight));
    let new_checks = decision
        .status
        .analysis
        .iter()
        .filter(|record| !observed.status.analysis.contains(record));
    for CheckRecord {
        metric, verdict, ..
    } in new_checks
    {
        ctx.metrics
            .checks
            .get_or_create(&VerdictLabels {
                namespace: observed.identity.namespace.clone(),
                name: observed.identity.name.clone(),
                metric: metric.clone(),
                verdict: format!("{verdict:?}"),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::events::v1::Event as ApiEvent;
    use kube::api::ListParams;
    use sluice_testcluster::TestCluster;

    use super::*;
    use crate::api::Canary;
    use crate::core::{Event, EventReason};

    #[test]
    fn the_action_names_the_revision_a_transition_is_about() {
        let a = Some("2b01a6d3e1");
        let b = Some("7c4e9f0a12");
        assert_eq!(event_action("CheckFailed", b, b), "CheckFailed/7c4e9f0a12");
        assert_eq!(
            event_action("CanaryStarted", a, b),
            "CanaryStarted/2b01a6d3e1->7c4e9f0a12"
        );
        assert_eq!(
            event_action("Initialized", None, a),
            "Initialized/2b01a6d3e1"
        );
        assert_eq!(
            event_action("Initialized", Some(""), a),
            "Initialized/2b01a6d3e1"
        );
        assert_eq!(event_action("OptedOut", a, None), "OptedOut/2b01a6d3e1");
        assert_eq!(event_action("InvalidSpec", None, None), "InvalidSpec");
        let long = "é".repeat(100);
        let action = event_action("Promoted", None, Some(&long));
        assert!(action.len() <= ACTION_MAX_LEN && action.starts_with("Promoted/é"));
    }

    fn status(revision: &str) -> CanaryStatus {
        CanaryStatus {
            revision: Some(revision.to_owned()),
            ..Default::default()
        }
    }

    fn decision(revision: &str, events: &[(bool, EventReason, &str)]) -> Decision {
        Decision {
            actions: Vec::new(),
            status: status(revision),
            requeue_after: None,
            events: events
                .iter()
                .map(|(warning, reason, message)| Event {
                    warning: *warning,
                    reason: *reason,
                    message: (*message).to_owned(),
                })
                .collect(),
        }
    }

    /// `kubectl events` must show each revision's transition with its own message. Through the
    /// controller's publish path and recorder against the test cluster (or `SLUICE_E2E_KUBECONFIG`):
    /// `CanaryStarted` of two revisions is two Events, each with its note; a repeated transition of
    /// one revision is one Event whose series counts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_revision_has_its_own_event_and_a_repeat_is_counted_in_one_series() {
        let cluster = TestCluster::start().await.expect("test cluster starts");
        let namespace = "sluice-events";
        let name = format!(
            "web-{:x}",
            jiff::Timestamp::now().as_nanosecond() % 0xffff_ffff
        );
        let applied = cluster
            .apply_yaml(&format!(
                r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: web}}}}}}
  strategy: {{canary: {{stepWeights: [20, 50]}}}}
  analysis:
    interval: 1s
    threshold: 2
    provider: {{prometheus: {{address: "http://127.0.0.1:9"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total[1m]))'
      max: 0.05
"#
            ))
            .await
            .expect("namespace and Canary apply");
        let canary: Canary = serde_json::from_value(applied[1].clone()).expect("a Canary");
        let object = CachedCanary::Parsed(Box::new(canary));
        let regarding = object.object_ref(&());
        assert!(regarding.uid.is_some(), "the reference names the object");
        let recorder = super::super::context::recorder(cluster.client());

        let (stable, a, b) = ("0f1e2d3c4b", "2b01a6d3e1", "7c4e9f0a12");
        let started_a =
            format!("revision {a} started beside stable revision {stable} with 1 canary replicas");
        let superseded = format!("revision {a} superseded by {b}");
        let started_b =
            format!("revision {b} started beside stable revision {stable} with 1 canary replicas");
        let failed_1 = format!("revision {b}: failed check 1/2: error-rate 0.3 > 0.05");
        let failed_2 = format!("revision {b}: failed check 2/2: error-rate 0.4 > 0.05");
        let steps = [
            (
                stable,
                decision(a, &[(false, EventReason::CanaryStarted, &started_a)]),
            ),
            (
                a,
                decision(
                    b,
                    &[
                        (false, EventReason::Superseded, &superseded),
                        (false, EventReason::CanaryStarted, &started_b),
                    ],
                ),
            ),
            (
                b,
                decision(b, &[(true, EventReason::CheckFailed, &failed_1)]),
            ),
            (
                b,
                decision(b, &[(true, EventReason::CheckFailed, &failed_2)]),
            ),
        ];
        for (before, decided) in &steps {
            publish(&recorder, &regarding, &status(before), decided).await;
        }

        let events: Vec<ApiEvent> = Api::<ApiEvent>::namespaced(cluster.client(), namespace)
            .list(&ListParams::default())
            .await
            .expect("events list")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_ref()) == regarding.uid.as_ref())
            .collect();
        let with_reason = |reason: &str| -> Vec<(String, i32)> {
            let mut found: Vec<(String, i32)> = events
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .map(|e| {
                    (
                        e.note.clone().unwrap_or_default(),
                        e.series.as_ref().map_or(1, |s| s.count),
                    )
                })
                .collect();
            found.sort();
            found
        };
        let mut started = vec![(started_a.clone(), 1), (started_b.clone(), 1)];
        started.sort();
        assert_eq!(
            with_reason("CanaryStarted"),
            started,
            "one CanaryStarted Event per revision, each with its own message"
        );
        assert_eq!(with_reason("Superseded"), vec![(superseded.clone(), 1)]);
        assert_eq!(
            with_reason("CheckFailed"),
            vec![(failed_1.clone(), 2)],
            "the same transition of the same revision is one series, counted twice"
        );
        assert_eq!(events.len(), 4, "four Event objects: {events:#?}");
    }
}
