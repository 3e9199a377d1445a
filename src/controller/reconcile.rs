//! One reconcile, as a short linear pipeline: parse (a malformed Canary becomes a condition) ->
//! finalizer -> observe (caches only) -> gather what `core::due` asks for (checks and hook calls,
//! side by side) -> `core::step` -> execute the actions in order -> persist the status once, only
//! if it changed -> events, event hooks and notifications (in the background) and metrics.
//! Nothing here decides what the rollout should do; that is the core's job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType};
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

    let mut observed = observe::observe(canary, &ctx.stores, ctx.hold_mode);
    let due = core::due(
        &observed.canary.spec,
        &observed.status,
        &observed.observations,
        Timestamp::now(),
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
    let decision = core::step(
        &observed.canary.spec,
        &observed.status,
        &observed.observations,
        Timestamp::now(),
    );

    execute(ctx, &observed, &decision.actions).await?;
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
    publish(ctx, object, &observed, &decision).await;
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
fn yields_to(canary: &crate::api::Canary, stores: &super::context::Stores) -> Option<String> {
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
async fn publish(ctx: &Context, object: &CachedCanary, observed: &Observed, decision: &Decision) {
    if decision.events.is_empty() {
        return;
    }
    let reference = object.object_ref(&());
    for event in &decision.events {
        info!(
            canary = %observed.identity.name,
            namespace = %observed.identity.namespace,
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
            reason: event.reason.clone(),
            note: Some(event.message.clone()),
            action: event.reason.clone(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&kube_event, &reference).await {
            warn!(reason = %event.reason, error = %error, "failed to publish an event");
        }
    }
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
