//! Observe: everything the core needs, from the reflector caches only (no GETs), plus the raw
//! objects the executor builds from. Queries and hooks are not run here; the reconcile runs the
//! ones `core::due` asks for and adds their results.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;

use super::stores::Stores;
use crate::api::names::{self, canary_name};
use crate::api::{Canary, CanaryStatus, HoldMode, RolloutSpec, TemplateSpec};
use crate::core::validate::{FieldError, Resolved};
use crate::core::{
    self, CanaryServiceState, Dereferenced, Observations, Resolution, RouterState, annotations,
    revision,
};
use crate::dereference::{Dereference, dereference};
use crate::router::{ReadyReplicas, RouteInputs, Router};
use crate::workload::{self, CanaryIdentity};

/// What one reconcile observed.
pub struct Observed {
    pub canary: Canary,
    pub status: CanaryStatus,
    pub identity: CanaryIdentity,
    pub observations: Observations,
    /// The spec resolved against its policy and templates, once per reconcile: the effective
    /// rollout, or why the spec is invalid (the core reports it).
    pub resolution: Resolution,
    pub target: Option<Deployment>,
    pub canary_deployment: Option<Deployment>,
    pub stable_service: Option<Service>,
    /// The router and its inputs, when the spec names one.
    pub router: Option<(Router, RouteInputs)>,
    /// The live object the router builds from (the user's route, Ingress or Service).
    pub router_source: Option<Value>,
}

impl Observed {
    /// The effective rollout, when the spec is valid.
    pub fn resolved(&self) -> Option<&Resolved> {
        self.resolution.as_ref().ok()
    }
}

/// Gathers the observations for `canary` from the caches.
pub async fn observe(canary: Canary, stores: &Stores, hold_mode: HoldMode) -> Observed {
    let namespace = canary.namespace().unwrap_or_default();
    let identity = CanaryIdentity {
        name: canary.name_any(),
        namespace: namespace.clone(),
        uid: canary.uid().unwrap_or_default(),
    };
    let status = canary.status.clone().unwrap_or_default();

    let Ok(mut dereferenced) = dereference(stores, &canary.spec, &namespace).await;

    let target = stores.deployment(&namespace, &canary.spec.target_ref.name);
    let canary_deployment =
        stores.deployment(&namespace, &canary_name(&canary.spec.target_ref.name));
    let target_state = target.as_ref().map(|deployment| {
        workload::target_state(
            deployment,
            &identity.name,
            revision::deployment_revision(deployment),
        )
    });

    let mut observations = Observations {
        generation: canary.metadata.generation.unwrap_or_default(),
        hold_mode,
        deleting: canary.metadata.deletion_timestamp.is_some(),
        dereferenced: Dereferenced::default(),
        target: target_state,
        canary: canary_deployment.as_ref().map(workload::workload_state),
        router: RouterState::default(),
        canary_service: CanaryServiceState::Unknown,
        checks: None,
        hooks: Vec::new(),
    };
    if is_from_annotations(&canary) && observations.target.is_some() && !observations.deleting {
        dereferenced.annotation_errors = target
            .as_ref()
            .map(|deployment| annotation_errors(deployment, stores))
            .unwrap_or_default();
    }
    // Resolved once per reconcile: the executor, the checks, the hooks and the core all take it.
    let resolution = core::resolve(&canary.spec, &dereferenced);
    observations.dereferenced = dereferenced;
    let resolved = resolution.as_ref().ok();
    let stable_service = resolved
        .as_ref()
        .and_then(|r| stores.service(&namespace, &r.service.name));
    observations.canary_service = match (&stable_service, &resolved) {
        (Some(stable), Some(r)) => match workload::canary_service(stable, &identity) {
            Ok(desired) => {
                let live = stores.service(&namespace, &canary_name(&r.service.name));
                if live.is_some_and(|live| workload::is_in_place(&desired, &live)) {
                    CanaryServiceState::Current
                } else {
                    CanaryServiceState::Stale
                }
            }
            Err(_) => CanaryServiceState::Unknown,
        },
        (None, _) | (_, None) => CanaryServiceState::Unknown,
    };
    let router = resolved.map(|r| {
        let inputs = RouteInputs {
            canary: identity.clone(),
            service: r.service.name.clone(),
            port: r.service.port,
        };
        (r.router.clone(), inputs)
    });

    let mut router_source = None;
    if let Some((router, inputs)) = &router {
        router_source = router
            .source(inputs)
            .and_then(|key| stores.router_object(key.kind, &key.namespace, &key.name));
        let applied = router
            .applied(inputs)
            .and_then(|key| stores.router_object(key.kind, &key.namespace, &key.name));
        let ready = ReadyReplicas {
            stable: observations.target.as_ref().map_or(0, |t| t.ready_replicas),
            canary: observations.canary.as_ref().map_or(0, |c| c.ready_replicas),
        };
        observations.router = RouterState {
            canary_weight: router.canary_weight(inputs, applied.as_ref(), ready),
            matched: router.canary_matched(inputs, applied.as_ref()),
            missing: router.source(inputs).is_some() && router_source.is_none(),
        };
    }

    Observed {
        canary,
        status,
        identity,
        observations,
        resolution,
        target,
        canary_deployment,
        stable_service,
        router,
        router_source,
    }
}

/// Whether sluice wrote this Canary for a Deployment's `sluice.dev/policy` annotation.
pub fn is_from_annotations<K: kube::Resource>(canary: &K) -> bool {
    canary
        .meta()
        .labels
        .as_ref()
        .and_then(|labels| labels.get(names::FROM_ANNOTATIONS_LABEL))
        .is_some_and(|value| value == "true")
}

/// What is wrong with the target's `sluice.dev/*` annotations, for the Canary that stands for
/// them. None while the policy annotation is gone: the opt-in loop is then deleting the Canary,
/// and its opt-out must not be held up by an invalid spec.
fn annotation_errors(deployment: &Deployment, stores: &Stores) -> Vec<FieldError> {
    let parsed = annotations::parse(deployment.annotations());
    let Some(policy) = parsed.policy.clone() else {
        return parsed.errors;
    };
    let found = stores.policies.get(&ObjectRef::new(&policy));
    annotations::canary_spec(
        &deployment.name_any(),
        &parsed,
        found.as_ref().map(|p| &p.spec.rollout),
    )
    .err()
    .unwrap_or_default()
}

/// The controller dereferences from its caches: no request, never an error.
impl Dereference for Stores {
    type Error = std::convert::Infallible;

    async fn policy(&self, name: &str) -> Result<Option<RolloutSpec>, Self::Error> {
        Ok(self
            .policies
            .get(&ObjectRef::new(name))
            .map(|policy| policy.spec.rollout.clone()))
    }

    async fn template(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<TemplateSpec>, Self::Error> {
        Ok(self
            .templates
            .get(&ObjectRef::new(name).within(namespace))
            .map(|t| t.spec.template.clone()))
    }

    async fn cluster_template(&self, name: &str) -> Result<Option<TemplateSpec>, Self::Error> {
        Ok(self
            .cluster_templates
            .get(&ObjectRef::new(name))
            .map(|t| t.spec.template.clone()))
    }
}
