//! Execute: carry out the core's actions in order, every write a server-side apply under field
//! manager `sluice` (deletes aside). Execution stops at the first failure; the next reconcile
//! decides again from what it then observes, so a half-executed decision is never "remembered".
//!
//! Two writes carry guards the core relies on: the target's `spec.paused` and opt-in label go in
//! one apply conditional on the resourceVersion the decision was made on (I6), and every route
//! write is read back from the API server's answer and compared with the weight written (I2).
//!
//! A write the core marked as starting a clock (`starts_clock`: a step's route write, the
//! target's release, the canary's creation) stamps that clock, in the status about to be
//! persisted, with the moment the API server's answer arrived, rounded up to status precision
//! ([`Clock`](crate::core::Clock)): a step is measured from when its traffic was in place, not
//! from when it was decided (I4), and the stamp costs no status write of its own. Which write
//! starts which clock is the core's decision; the executor only knows when it happened.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::context::Context;
use super::error::Error;
use super::metrics::ApiCallLabels;
use super::observe::Observed;
use super::stores::api_resource;
use crate::api::CanaryStatus;
use crate::api::names::{FIELD_MANAGER, canary_name};
use crate::core::Action;
use crate::router::{Kind, ReadyReplicas, Removal, kind};
use crate::workload;

/// Executes `actions` in order, starting in `status` (the status the decision will persist) each
/// clock an acknowledged write starts. `RemoveFinalizer` is left to the caller, which owns the
/// finalizer.
pub async fn execute(
    ctx: &Context,
    observed: &Observed,
    actions: &[Action],
    status: &mut CanaryStatus,
) -> Result<(), Error> {
    for action in actions {
        match action {
            Action::SetTarget {
                resource_version,
                labelled,
                paused,
                ..
            } => {
                set_target(ctx, observed, resource_version, *labelled, *paused).await?;
            }
            Action::ApplyCanary {
                revision, replicas, ..
            } => {
                apply_canary(ctx, observed, revision, *replicas).await?;
            }
            Action::ScaleCanary { replicas, .. } => {
                scale_canary(ctx, observed, *replicas).await?;
            }
            Action::ApplyCanaryService => apply_canary_service(ctx, observed).await?,
            Action::SetRoute {
                canary_weight,
                matches,
                ..
            } => {
                set_route(ctx, observed, *canary_weight, matches).await?;
            }
            Action::RemoveRoute => remove_route(ctx, observed).await?,
            Action::DeleteCanary => delete_canary(ctx, observed).await?,
            Action::RemoveFinalizer => {}
        }
        // The write is acknowledged: the API server's answer has arrived (each write above
        // returns only then). A clock it starts starts now.
        if let Some(clock) = action.starts_clock() {
            clock.start(status, Timestamp::now());
        }
    }
    Ok(())
}

fn params(force: bool) -> PatchParams {
    let params = PatchParams::apply(FIELD_MANAGER);
    if force { params.force() } else { params }
}

/// The API of a kind sluice writes, by apiVersion and kind.
/// The Deployments sluice writes: the target's hold, and the canary.
const DEPLOYMENT: Kind = Kind {
    api_version: "apps/v1",
    kind: "Deployment",
    plural: "deployments",
    edits_user_object: true,
    custom: false,
};

fn api_for(client: &Client, kind: &Kind, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &api_resource(kind))
}

fn count(ctx: &Context, verb: &str, resource: &str) {
    ctx.metrics
        .api_calls
        .get_or_create(&ApiCallLabels {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
        })
        .inc();
}

async fn apply(
    ctx: &Context,
    kind: &Kind,
    namespace: &str,
    name: &str,
    body: &Value,
    force: bool,
) -> Result<DynamicObject, Error> {
    count(ctx, "patch", kind.kind);
    api_for(&ctx.client, kind, namespace)
        .patch(name, &params(force), &Patch::Apply(body))
        .await
        .map_err(|source| Error::Write {
            action: "apply",
            kind: kind.kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })
}

async fn delete(ctx: &Context, kind: &Kind, namespace: &str, name: &str) -> Result<(), Error> {
    count(ctx, "delete", kind.kind);
    match api_for(&ctx.client, kind, namespace)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Write {
            action: "delete",
            kind: kind.kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }),
    }
}

fn namespace(observed: &Observed) -> &str {
    &observed.identity.namespace
}

fn not_cached(observed: &Observed, what: String) -> Error {
    Error::NotCached {
        namespace: observed.identity.namespace.clone(),
        name: observed.identity.name.clone(),
        what,
    }
}

async fn set_target(
    ctx: &Context,
    observed: &Observed,
    resource_version: &str,
    labelled: bool,
    paused: bool,
) -> Result<(), Error> {
    let target = &observed.canary.spec.target_ref.name;
    // Forced: a GitOps manager may own `paused` from a manifest that set it; sluice's hold must
    // win, and the resourceVersion in the body still makes the write conditional (I6).
    let write = |resource_version: &str| {
        let body = workload::target_hold_patch(
            target,
            resource_version,
            labelled,
            paused,
            &observed.identity.name,
        );
        async move { apply(ctx, &DEPLOYMENT, namespace(observed), target, &body, true).await }
    };
    let Err(conflict) = write(resource_version).await else {
        return Ok(());
    };
    if !conflict.is_conflict() {
        return Err(conflict);
    }
    // The cached Deployment is older than the server's. Usually the watch brings the newer one
    // and the next reconcile decides on it; but a cache that stays behind would refuse this write
    // forever. So read the Deployment once: if what the decision rests on (its template, paused
    // and the opt-in label) is unchanged, the decision stands and is written against the fresh
    // resourceVersion, still conditional (I6); otherwise the conflict stands.
    let Some(fresh) = fresh_target(ctx, observed).await else {
        return Err(conflict);
    };
    let Some(cached) = observed.observations.target.as_ref() else {
        return Err(conflict);
    };
    let same = fresh.revision == cached.revision
        && fresh.paused == cached.paused
        && fresh.labelled == cached.labelled;
    if !same || fresh.resource_version == resource_version {
        return Err(conflict);
    }
    write(&fresh.resource_version).await?;
    Ok(())
}

/// The target as the API server has it now (one GET, made only after a conflict).
async fn fresh_target(ctx: &Context, observed: &Observed) -> Option<crate::core::TargetState> {
    count(ctx, "get", "Deployment");
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace(observed));
    let deployment = api
        .get_opt(&observed.canary.spec.target_ref.name)
        .await
        .ok()
        .flatten()?;
    Some(workload::target_state(
        &deployment,
        &observed.identity.name,
        crate::core::revision::deployment_revision(&deployment),
    ))
}

fn deployment_body(deployment: &Deployment) -> Result<Value, Error> {
    let mut body = serde_json::to_value(deployment).map_err(|source| Error::Serialise {
        what: "the canary Deployment",
        source,
    })?;
    body["apiVersion"] = json!("apps/v1");
    body["kind"] = json!("Deployment");
    if let Some(object) = body.as_object_mut() {
        object.remove("status");
    }
    Ok(body)
}

async fn apply_canary(
    ctx: &Context,
    observed: &Observed,
    revision: &str,
    replicas: i32,
) -> Result<(), Error> {
    let target = observed
        .target
        .as_ref()
        .ok_or_else(|| not_cached(observed, "the target Deployment".into()))?;
    let service = observed
        .stable_service
        .as_ref()
        .ok_or_else(|| not_cached(observed, "the stable Service".into()))?;
    let pod_labels = observed
        .router
        .as_ref()
        .map_or(workload::PodLabels::Separate, |(r, _)| r.pod_labels());
    let deployment = workload::canary_deployment(
        target,
        &workload::stable_selector_of(service),
        &observed.identity,
        revision,
        replicas,
        pod_labels,
    )
    .map_err(|source| Error::Workload {
        namespace: observed.identity.namespace.clone(),
        name: observed.identity.name.clone(),
        source,
    })?;
    let name = deployment.name_any();
    let body = deployment_body(&deployment)?;
    apply(ctx, &DEPLOYMENT, namespace(observed), &name, &body, true).await?;
    Ok(())
}

/// Scales the canary by re-applying its live spec with new replicas: an apply naming only
/// `replicas` would drop every other field sluice owns.
async fn scale_canary(ctx: &Context, observed: &Observed, replicas: i32) -> Result<(), Error> {
    let Some(live) = &observed.canary_deployment else {
        return if replicas == 0 {
            Ok(())
        } else {
            Err(not_cached(observed, "the canary Deployment".into()))
        };
    };
    let mut deployment = Deployment {
        metadata: kube::api::ObjectMeta {
            name: live.metadata.name.clone(),
            namespace: live.metadata.namespace.clone(),
            labels: live.metadata.labels.clone(),
            owner_references: live.metadata.owner_references.clone(),
            ..Default::default()
        },
        spec: live.spec.clone(),
        status: None,
    };
    if let Some(spec) = deployment.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    let body = deployment_body(&deployment)?;
    let name = live.name_any();
    apply(ctx, &DEPLOYMENT, namespace(observed), &name, &body, true).await?;
    Ok(())
}

async fn apply_canary_service(ctx: &Context, observed: &Observed) -> Result<(), Error> {
    let stable = observed
        .stable_service
        .as_ref()
        .ok_or_else(|| not_cached(observed, "the stable Service".into()))?;
    let service =
        workload::canary_service(stable, &observed.identity).map_err(|source| Error::Workload {
            namespace: observed.identity.namespace.clone(),
            name: observed.identity.name.clone(),
            source,
        })?;
    let mut body = serde_json::to_value(&service).map_err(|source| Error::Serialise {
        what: "the canary Service",
        source,
    })?;
    body["apiVersion"] = json!(kind::SERVICE.api_version);
    body["kind"] = json!(kind::SERVICE.kind);
    if let Some(object) = body.as_object_mut() {
        object.remove("status");
    }
    let name = service.name_any();
    apply(ctx, &kind::SERVICE, namespace(observed), &name, &body, true).await?;
    Ok(())
}

fn route_error(observed: &Observed, source: crate::router::BuildRouteError) -> Error {
    Error::Route {
        namespace: observed.identity.namespace.clone(),
        name: observed.identity.name.clone(),
        source,
    }
}

async fn set_route(
    ctx: &Context,
    observed: &Observed,
    weight: i32,
    matches: &[crate::api::HttpMatch],
) -> Result<(), Error> {
    let Some((router, inputs)) = &observed.router else {
        return Err(Error::Malformed {
            field: "spec.router",
        });
    };
    let Some(body) = router
        .desired(inputs, observed.router_source.as_ref(), weight, matches)
        .map_err(|e| route_error(observed, e))?
    else {
        // The replica-ratio router has no object: the weight is the canary's share of pods.
        return Ok(());
    };
    let Some(key) = router.applied(inputs) else {
        return Ok(());
    };
    let applied = apply(
        ctx,
        key.kind,
        &key.namespace,
        &key.name,
        &body,
        router.force_apply(),
    )
    .await?;
    let applied = serde_json::to_value(&applied).map_err(|source| Error::Serialise {
        what: "the applied route",
        source,
    })?;
    let found = router.canary_weight(inputs, Some(&applied), ReadyReplicas::default());
    if found.unwrap_or(0) != weight {
        return Err(Error::ReadBack {
            namespace: observed.identity.namespace.clone(),
            name: observed.identity.name.clone(),
            expected: weight,
            found,
        });
    }
    Ok(())
}

async fn remove_route(ctx: &Context, observed: &Observed) -> Result<(), Error> {
    let Some((router, inputs)) = &observed.router else {
        return Ok(());
    };
    match router
        .removal(inputs, observed.router_source.as_ref())
        .map_err(|e| route_error(observed, e))?
    {
        Removal::Apply(body) => {
            if let Some(key) = router.applied(inputs) {
                apply(ctx, key.kind, &key.namespace, &key.name, &body, true).await?;
            }
        }
        Removal::Delete(key) => {
            delete(ctx, key.kind, &key.namespace, &key.name).await?;
        }
        Removal::Nothing => {}
    }
    Ok(())
}

async fn delete_canary(ctx: &Context, observed: &Observed) -> Result<(), Error> {
    let ns = namespace(observed);
    let deployment = canary_name(&observed.canary.spec.target_ref.name);
    delete(ctx, &DEPLOYMENT, ns, &deployment).await?;
    if let Some(resolved) = observed.resolved() {
        let service = canary_name(&resolved.service.name);
        delete(ctx, &kind::SERVICE, ns, &service).await?;
    }
    Ok(())
}
