//! The annotation way in, as a second small controller over Deployments: a Deployment annotated
//! `sluice.dev/policy: NAME` gets a Canary of its own name, owned by it and labelled
//! `sluice.dev/from-annotations`, whose spec [`core::annotations`] builds from the annotations and
//! the policy. The Canary controller then rolls it out like any other, so every tool works the
//! same for both ways in. This loop only writes and deletes that Canary; it decides nothing about
//! the rollout.
//!
//! - A hand-written Canary for the same Deployment wins: the annotation's Canary is deleted (its
//!   finalizer returns traffic to stable first) and a Warning event on the Deployment says why.
//! - Removing the annotation deletes the annotation's Canary: its finalizer opts the Deployment
//!   out (traffic to stable, sluice's objects removed, the Deployment released).
//! - Bad annotation values, or a policy that does not exist, leave the Canary's spec at the last
//!   good one and live traffic as it is: the Canary's `InvalidSpec` condition names the annotation
//!   (the Canary controller reads the same errors), and a Warning event on the Deployment says so.
//!
//! Nothing is written while the Canary already matches, so an idle annotated Deployment costs no
//! API request.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::cached::CachedCanary;
use super::context::Context;
use super::error::Error;
use super::observe::is_from_annotations;
use crate::api::{Canary, CanarySpec, names};
use crate::core::annotations;

/// How soon to look again while the caches are still filling.
const CACHES_RETRY: Duration = Duration::from_millis(200);
/// How soon a failed write is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A Deployment as this loop watches it: its metadata only (annotations, uid, deletion), so the
/// loop's own cache stays small.
pub type DeploymentMeta = PartialObjectMeta<Deployment>;

/// Reconciles one Deployment's annotation Canary.
pub async fn reconcile(
    deployment: Arc<DeploymentMeta>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    // Deciding with a half-filled Canary or policy cache would create a Canary that a hand-written
    // one should have stopped, or report a policy missing that exists.
    // (Checked, not awaited: the Canary cache fills once the Canary controller runs.)
    let ready = |store: Option<Result<(), _>>| matches!(store, Some(Ok(())));
    if !ready(ctx.stores.canaries.wait_until_ready().now_or_never())
        || !ready(ctx.stores.policies.wait_until_ready().now_or_never())
    {
        return Ok(Requeue::requeue(CACHES_RETRY));
    }

    let namespace = deployment.namespace().ok_or(Error::Malformed {
        field: "metadata.namespace",
    })?;
    let name = deployment.name_any();
    let api: Api<CachedCanary> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = deployment.uid().unwrap_or_default();

    let same_name = ctx
        .stores
        .canaries
        .get(&ObjectRef::new(&name).within(&namespace));
    let ours = same_name
        .as_ref()
        .filter(|c| is_from_annotations(c.as_ref()) && owned_by(c, &uid));
    let hand_written: Option<String> = ctx
        .stores
        .canaries
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|c| !is_from_annotations(c.as_ref()))
        .find(|c| c.target() == Some(name.as_str()))
        .map(|c| c.name_any());

    let opted_in = deployment.metadata.deletion_timestamp.is_none()
        && annotations::policy_of(deployment.annotations()).is_some();
    if !opted_in {
        ctx.last_warnings.forget(&namespace, &name);
        if let Some(ours) = ours
            && ours.meta().deletion_timestamp.is_none()
        {
            info!(deployment = %name, %namespace, "annotation removed: deleting its Canary (opt-out)");
            delete(&api, &name, &namespace).await?;
        }
        return Ok(Requeue::await_change());
    }

    if let Some(winner) = hand_written {
        if let Some(ours) = ours
            && ours.meta().deletion_timestamp.is_none()
        {
            delete(&api, &name, &namespace).await?;
        }
        warn_once(
            &ctx,
            &deployment,
            "HandWrittenCanaryWins",
            format!(
                "Canary {winner} targets this Deployment and wins over the {} annotation; sluice's Canary for the annotation is not used",
                names::POLICY_ANNOTATION
            ),
        )
        .await;
        return Ok(Requeue::await_change());
    }
    if same_name.is_some() && ours.is_none() {
        // A Canary of this name that sluice did not write for this Deployment (another target,
        // or an earlier Deployment of the same name): never overwrite a person's object.
        warn_once(
            &ctx,
            &deployment,
            "CanaryNameTaken",
            format!(
                "a Canary named {name} exists and was not written for this Deployment's annotations; rename or delete it to opt in by annotation"
            ),
        )
        .await;
        return Ok(Requeue::await_change());
    }

    let parsed = annotations::parse(deployment.annotations());
    let policy = parsed.policy.as_ref().and_then(|policy| {
        ctx.stores
            .policies
            .get(&ObjectRef::new(policy))
            .map(|p| p.spec.rollout.clone())
    });
    let desired = match annotations::canary_spec(&name, &parsed, policy.as_ref()) {
        Ok(spec) => {
            ctx.last_warnings.forget(&namespace, &name);
            spec
        }
        Err(errors) => {
            let words = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            warn_once(
                &ctx,
                &deployment,
                "InvalidAnnotation",
                format!("the sluice annotations cannot be used, nothing live changes: {words}"),
            )
            .await;
            match (ours, &parsed.policy) {
                // The Canary keeps its last good spec; its InvalidSpec condition names the
                // annotation (the Canary controller reads the same errors).
                (Some(_), _) | (None, None) => return Ok(Requeue::await_change()),
                // A first Canary, only so that the error shows where people look for it.
                (None, Some(policy)) => minimal_spec(&name, policy),
            }
        }
    };

    if let Some(ours) = ours
        && ours.spec() == Some(&desired)
    {
        debug!(deployment = %name, %namespace, "annotation Canary up to date");
        return Ok(Requeue::await_change());
    }
    apply(&api, &deployment, &desired).await?;
    info!(deployment = %name, %namespace, "annotation Canary written");
    Ok(Requeue::await_change())
}

/// kube-runtime's error policy for the opt-in loop.
pub fn error_policy(deployment: Arc<DeploymentMeta>, error: &Error, _: Arc<Context>) -> Requeue {
    warn!(deployment = %deployment.name_any(), namespace = ?deployment.namespace(), error = %error, "annotation opt-in failed");
    Requeue::requeue(RETRY_AFTER)
}

fn owned_by(canary: &CachedCanary, uid: &str) -> bool {
    canary
        .owner_references()
        .iter()
        .any(|o| o.kind == "Deployment" && o.uid == uid)
}

fn minimal_spec(name: &str, policy: &str) -> CanarySpec {
    CanarySpec {
        target_ref: crate::api::TargetRef {
            api_version: "apps/v1".to_owned(),
            kind: "Deployment".to_owned(),
            name: name.to_owned(),
        },
        policy_ref: Some(crate::api::PolicyRef {
            name: policy.to_owned(),
        }),
        rollout: Default::default(),
    }
}

async fn apply(
    api: &Api<CachedCanary>,
    deployment: &DeploymentMeta,
    spec: &CanarySpec,
) -> Result<(), Error> {
    let name = deployment.name_any();
    let namespace = deployment.namespace().unwrap_or_default();
    let mut owner = deployment.owner_ref(&()).ok_or(Error::Malformed {
        field: "metadata.uid",
    })?;
    // The Deployment controls its Canary: deleting the Deployment deletes the Canary (whose
    // finalizer still cleans up first).
    owner.controller = Some(true);
    let mut canary = Canary::new(&name, spec.clone());
    canary.metadata.namespace = Some(namespace.clone());
    canary.metadata.labels = Some(
        [(names::FROM_ANNOTATIONS_LABEL.to_owned(), "true".to_owned())]
            .into_iter()
            .collect(),
    );
    canary.metadata.owner_references = Some(vec![owner]);
    let body = json!({
        "apiVersion": format!("{}/{}", names::GROUP, names::VERSION),
        "kind": "Canary",
        "metadata": canary.metadata,
        "spec": canary.spec,
    });
    api.patch(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Write {
        action: "apply",
        kind: "Canary".to_owned(),
        namespace,
        name,
        source: Box::new(source),
    })
}

async fn delete(api: &Api<CachedCanary>, name: &str, namespace: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Write {
            action: "delete",
            kind: "Canary".to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Publishes a Warning event on the Deployment unless the same one was the last published.
///
/// kube-runtime's `Recorder` counts an event as a repeat of an earlier one (the first note kept)
/// when type, reason, action and Deployment match, whatever the note says; the action carries a
/// digest of the message (see [`optin_action`]) so that a different warning is never shown as a
/// repeat of an earlier one.
async fn warn_once(ctx: &Context, deployment: &DeploymentMeta, reason: &str, message: String) {
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    if !ctx.last_warnings.is_new(&namespace, &name, &message) {
        return;
    }
    warn!(deployment = %name, %namespace, reason, "{message}");
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        action: optin_action(&message),
        note: Some(message),
        secondary: None,
    };
    if let Err(error) = ctx
        .recorder
        .publish(&event, &deployment.object_ref(&()))
        .await
    {
        warn!(reason, error = %error, "failed to publish an event");
    }
}

/// The opt-in warnings' Event `action`: `OptIn/` and a digest (64-bit FNV-1a) of the message, the
/// same for the same message in every process.
fn optin_action(message: &str) -> String {
    let digest = message
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("OptIn/{digest:016x}")
}
