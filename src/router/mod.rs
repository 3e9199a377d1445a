//! Routers: the objects that split traffic between the stable Service and `<service>-canary`, as
//! pure builders of the desired object for a canary weight (and A/B header matches) plus pure
//! read-back parsers of the weight a live object carries. One file per provider; [`Router`] is
//! resolved from the Canary's `router` by an exhaustive match and dispatches to them.
//!
//! This module must not call a client, read the clock or judge: the core decides the weight
//! (`Action::SetRoute`, `Action::RemoveRoute`) and checks the read-back against status (I2); the
//! controller's executor fetches [`Router::source`], server-side applies what [`Router::desired`]
//! builds under field manager `sluice` (with `force` when [`Router::force_apply`] says so), and
//! feeds the live [`Router::applied`] object to [`Router::canary_weight`].
//!
//! Two kinds of router object:
//! - **the user's, edited in place** (Gateway API `HTTPRoute`, Istio `VirtualService`, the stable
//!   `Service` of the `service` router): the builder starts from the live object and returns an
//!   apply body holding only the field sluice takes over. Those fields are atomic for server-side
//!   apply (`HTTPRoute.spec.rules`, `VirtualService.spec.http`, `Service.spec.selector`), so the
//!   apply must be forced and, once sluice owns the field, it must always send all of it: an apply
//!   that dropped it would delete the user's routes.
//! - **sluice's own** (the NGINX canary `Ingress`, SMI `TrafficSplit`, `TraefikService`): a new
//!   object with an ownerReference to the Canary, deleted on removal.
//!
//! Weights are integers 0..=100 (percent to the canary). A read-back of `None` means the object
//! carries no canary route at all: for the routers that edit the user's object, weight 0 without
//! matches removes the canary backend entirely, so `None` is what "at rest" reads back as.

mod gateway;
mod istio;
pub mod kind;
mod nginx;
mod service;
mod smi;
mod traefik;

use serde_json::Value;

use crate::api::names::canary_name;
use crate::api::{HttpMatch, ObjectRef};
pub use crate::core::router::{ResolveRouterError, Router};
use crate::workload::{CanaryIdentity, PodLabels};
pub use kind::Kind;

pub use gateway::{http_route_matched, http_route_patch, http_route_weight};
pub use istio::{virtual_service_matched, virtual_service_patch, virtual_service_weight};
pub use nginx::{canary_ingress, ingress_matched, ingress_weight, warnings as ingress_warnings};
pub use service::{service_switch_patch, service_weight};
pub use smi::{traffic_split, traffic_split_weight};
pub use traefik::{traefik_service, traefik_service_weight};

/// What every router builder needs to know about the rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInputs {
    /// The owning Canary (ownerReferences, and the default namespace).
    pub canary: CanaryIdentity,
    /// Name of the user's stable Service; the canary Service is `<service>-canary`.
    pub service: String,
    /// The Service port routers send traffic to.
    pub port: i32,
}

impl RouteInputs {
    /// Name of the canary Service.
    pub fn canary_service(&self) -> String {
        canary_name(&self.service)
    }
}

/// Ready pod counts, the only input of the `none` router's read-back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadyReplicas {
    pub stable: i32,
    pub canary: i32,
}

/// Identifies an object the controller reads or writes for a router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    pub kind: &'static Kind,
    pub namespace: String,
    pub name: String,
}

/// What to do to the router object when the canary route goes away for good (opt-out, deletion).
#[derive(Clone, Debug, PartialEq)]
pub enum Removal {
    /// Server-side apply this body (the user's object with every trace of the canary removed).
    Apply(Value),
    /// Delete this sluice-owned object.
    Delete(ObjectKey),
    /// Nothing to undo.
    Nothing,
}

/// Why a router object could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildRouteError {
    #[error("failed to build the route: weight {weight} is outside 0..=100")]
    WeightOutOfRange { weight: i32 },
    #[error("failed to build the route: the {kind} it edits was not found")]
    SourceMissing { kind: &'static str },
    #[error("failed to build the route: {kind} {name} has no route to Service {service}")]
    NoStableBackend {
        kind: &'static str,
        name: String,
        service: String,
    },
    #[error("failed to build the route: the {router} router cannot express these matches: {why}")]
    MatchesUnsupported {
        router: &'static str,
        why: &'static str,
    },
    #[error("failed to build the route: {kind} {name} would exceed its schema's limit: {limit}")]
    TooLarge {
        kind: &'static str,
        name: String,
        limit: &'static str,
    },
    #[error("failed to build the route: the service router switches 0 or 100, not {weight}")]
    NotSwitchable { weight: i32 },
    #[error("failed to build the route: {kind} {name} is not a valid object")]
    InvalidObject {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl BuildRouteError {
    /// Bounded label for metrics and event reasons. Every variant is a permanent error (the spec
    /// or the user's object must change), never a reason to retry sooner.
    pub fn category(&self) -> &'static str {
        match self {
            BuildRouteError::WeightOutOfRange { .. } => "WeightOutOfRange",
            BuildRouteError::SourceMissing { .. } => "RouterObjectMissing",
            BuildRouteError::NoStableBackend { .. } => "NoStableBackend",
            BuildRouteError::MatchesUnsupported { .. } => "MatchesUnsupported",
            BuildRouteError::TooLarge { .. } => "RouteTooLarge",
            BuildRouteError::NotSwitchable { .. } => "NotSwitchable",
            BuildRouteError::InvalidObject { .. } => "InvalidRouterObject",
        }
    }
}

impl Router {
    /// How the canary pods are labelled: only the `none` router shares the stable Service.
    pub fn pod_labels(&self) -> PodLabels {
        match self {
            Router::ReplicaRatio => PodLabels::Shared,
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service => PodLabels::Separate,
        }
    }

    /// The user's object the builder starts from, which must exist (a missing one is reported,
    /// never created): `None` for routers that build from the spec alone.
    pub fn source(&self, inputs: &RouteInputs) -> Option<ObjectKey> {
        match self {
            Router::GatewayApi { http_route } => Some(key(&kind::HTTP_ROUTE, http_route, inputs)),
            Router::Nginx { ingress } => Some(key(&kind::INGRESS, ingress, inputs)),
            Router::Istio { virtual_service } => {
                Some(key(&kind::VIRTUAL_SERVICE, virtual_service, inputs))
            }
            Router::Service => Some(ObjectKey {
                kind: &kind::SERVICE,
                namespace: inputs.canary.namespace.clone(),
                name: inputs.service.clone(),
            }),
            Router::Smi { .. } | Router::Traefik { .. } | Router::ReplicaRatio => None,
        }
    }

    /// The object sluice applies and reads the weight back from.
    pub fn applied(&self, inputs: &RouteInputs) -> Option<ObjectKey> {
        match self {
            Router::GatewayApi { .. } | Router::Istio { .. } | Router::Service => {
                self.source(inputs)
            }
            Router::Nginx { ingress } => Some(ObjectKey {
                name: canary_name(&ingress.name),
                ..key(&kind::INGRESS, ingress, inputs)
            }),
            Router::Smi { traffic_split } => Some(ObjectKey {
                kind: &kind::TRAFFIC_SPLIT,
                namespace: inputs.canary.namespace.clone(),
                name: traffic_split
                    .clone()
                    .unwrap_or_else(|| inputs.service.clone()),
            }),
            Router::Traefik { traefik_service } => Some(ObjectKey {
                kind: &kind::TRAEFIK_SERVICE,
                namespace: inputs.canary.namespace.clone(),
                name: traefik_service
                    .clone()
                    .unwrap_or_else(|| inputs.service.clone()),
            }),
            Router::ReplicaRatio => None,
        }
    }

    /// Whether the apply must be forced: true where sluice takes over a field of the user's
    /// object (recording 05: a second manager changing the atomic `HTTPRoute.spec.rules` gets 409
    /// without `force=true`). Sluice's own objects are applied unforced, so another writer shows up
    /// as a conflict instead of being overwritten silently.
    pub fn force_apply(&self) -> bool {
        self.applied_kind()
            .is_some_and(|kind| kind.edits_user_object)
    }

    /// The kind of the object sluice applies ([`Router::applied`]); `None` for the `none` router.
    pub fn applied_kind(&self) -> Option<&'static Kind> {
        match self {
            Router::GatewayApi { .. } => Some(&kind::HTTP_ROUTE),
            Router::Istio { .. } => Some(&kind::VIRTUAL_SERVICE),
            Router::Service => Some(&kind::SERVICE),
            Router::Nginx { .. } => Some(&kind::INGRESS),
            Router::Smi { .. } => Some(&kind::TRAFFIC_SPLIT),
            Router::Traefik { .. } => Some(&kind::TRAEFIK_SERVICE),
            Router::ReplicaRatio => None,
        }
    }

    /// The server-side-apply body that routes `weight` percent (and, for A/B, requests matching
    /// `matches`) to the canary; `None` for the `none` router, which has no object. `source` is the
    /// live [`Router::source`] object.
    pub fn desired(
        &self,
        inputs: &RouteInputs,
        source: Option<&Value>,
        weight: i32,
        matches: &[HttpMatch],
    ) -> Result<Option<Value>, BuildRouteError> {
        check_weight(weight)?;
        match self {
            Router::GatewayApi { .. } => {
                let route = source.ok_or(BuildRouteError::SourceMissing {
                    kind: kind::HTTP_ROUTE.kind,
                })?;
                http_route_patch(route, inputs, weight, matches).map(Some)
            }
            Router::Istio { .. } => {
                let vs = source.ok_or(BuildRouteError::SourceMissing {
                    kind: kind::VIRTUAL_SERVICE.kind,
                })?;
                virtual_service_patch(vs, inputs, weight, matches).map(Some)
            }
            Router::Nginx { .. } => {
                let ingress = typed(source, kind::INGRESS.kind)?;
                let built = canary_ingress(&ingress, inputs, weight, matches)?;
                to_value(&built, kind::INGRESS.kind).map(Some)
            }
            Router::Service => {
                let stable = typed(source, kind::SERVICE.kind)?;
                no_matches(self.name(), matches)?;
                service_switch_patch(&stable, weight).map(Some)
            }
            Router::Smi { .. } => {
                no_matches(self.name(), matches)?;
                let name = self.owned_name(inputs);
                Ok(Some(traffic_split(&name, inputs, weight)))
            }
            Router::Traefik { .. } => {
                no_matches(self.name(), matches)?;
                let name = self.owned_name(inputs);
                Ok(Some(traefik_service(&name, inputs, weight)))
            }
            Router::ReplicaRatio => {
                no_matches(self.name(), matches)?;
                Ok(None)
            }
        }
    }

    /// Name of the object sluice owns (or edits), from [`Router::applied`].
    fn owned_name(&self, inputs: &RouteInputs) -> String {
        self.applied(inputs)
            .map(|key| key.name)
            .unwrap_or_else(|| inputs.service.clone())
    }

    /// What undoes the router for good: the user's object without the canary (never an apply
    /// that drops the field sluice owns), or the deletion of sluice's own object.
    pub fn removal(
        &self,
        inputs: &RouteInputs,
        source: Option<&Value>,
    ) -> Result<Removal, BuildRouteError> {
        match self {
            Router::GatewayApi { .. } | Router::Istio { .. } | Router::Service => Ok(self
                .desired(inputs, source, 0, &[])?
                .map_or(Removal::Nothing, Removal::Apply)),
            Router::Nginx { .. } | Router::Smi { .. } | Router::Traefik { .. } => Ok(self
                .applied(inputs)
                .map_or(Removal::Nothing, Removal::Delete)),
            Router::ReplicaRatio => Ok(Removal::Nothing),
        }
    }

    /// The canary weight the live [`Router::applied`] object carries (`None`: no canary route, or
    /// no object). The `none` router reads the ready replicas instead.
    pub fn canary_weight(
        &self,
        inputs: &RouteInputs,
        applied: Option<&Value>,
        ready: ReadyReplicas,
    ) -> Option<i32> {
        match self {
            Router::GatewayApi { .. } => applied.and_then(|v| http_route_weight(v, inputs)),
            Router::Istio { .. } => applied.and_then(|v| virtual_service_weight(v, inputs)),
            Router::Nginx { .. } => applied
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .and_then(|ingress| ingress_weight(&ingress)),
            Router::Service => applied
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .and_then(|service| service_weight(&service)),
            Router::Smi { .. } => applied.and_then(|v| traffic_split_weight(v, inputs)),
            Router::Traefik { .. } => applied.and_then(|v| traefik_service_weight(v, inputs)),
            Router::ReplicaRatio => Some(replica_ratio_weight(ready)),
        }
    }

    /// Whether the live [`Router::applied`] object sends header-matched requests to the canary
    /// (A/B); only the routers that can express matches ever do.
    pub fn canary_matched(&self, inputs: &RouteInputs, applied: Option<&Value>) -> bool {
        match self {
            Router::GatewayApi { .. } => applied.is_some_and(|v| http_route_matched(v, inputs)),
            Router::Istio { .. } => applied.is_some_and(|v| virtual_service_matched(v, inputs)),
            Router::Nginx { .. } => applied
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .is_some_and(|ingress| ingress_matched(&ingress)),
            Router::Service
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::ReplicaRatio => false,
        }
    }

    /// Problems with the user's object that do not stop routing but will surprise: for NGINX, a
    /// rule without `host` produces no request metrics (METRICS.md), so analysis gets no data.
    pub fn warnings(&self, source: Option<&Value>) -> Vec<String> {
        match self {
            Router::Nginx { .. } => source
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .map(|ingress| ingress_warnings(&ingress))
                .unwrap_or_default(),
            Router::GatewayApi { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service
            | Router::ReplicaRatio => Vec::new(),
        }
    }
}

/// The `none` router's split: the canary's share of ready pods, rounded to the nearest percent
/// (0 when nothing is ready: no traffic reaches a side without ready pods).
pub fn replica_ratio_weight(ready: ReadyReplicas) -> i32 {
    share(
        i64::from(ready.canary.max(0)),
        i64::from(ready.stable.max(0)),
    )
}

/// `canary` as a percentage of `canary + stable`, rounded half up; 0 when both are 0.
fn share(canary: i64, stable: i64) -> i32 {
    let total = canary + stable;
    if total <= 0 {
        return 0;
    }
    let percent = (200 * canary + total) / (2 * total);
    i32::try_from(percent.clamp(0, 100)).unwrap_or(100)
}

fn check_weight(weight: i32) -> Result<(), BuildRouteError> {
    if (0..=100).contains(&weight) {
        Ok(())
    } else {
        Err(BuildRouteError::WeightOutOfRange { weight })
    }
}

fn no_matches(router: &'static str, matches: &[HttpMatch]) -> Result<(), BuildRouteError> {
    if matches.is_empty() {
        Ok(())
    } else {
        Err(BuildRouteError::MatchesUnsupported {
            router,
            why: "it has no per-request match; use gatewayAPI, istio or nginx for A/B testing",
        })
    }
}

fn key(kind: &'static Kind, object: &ObjectRef, inputs: &RouteInputs) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: object
            .namespace
            .clone()
            .unwrap_or_else(|| inputs.canary.namespace.clone()),
        name: object.name.clone(),
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    source: Option<&Value>,
    kind: &'static str,
) -> Result<T, BuildRouteError> {
    let value = source.ok_or(BuildRouteError::SourceMissing { kind })?;
    serde_json::from_value(value.clone()).map_err(|source| BuildRouteError::InvalidObject {
        kind,
        name: object_name(value),
        source,
    })
}

fn to_value<T: serde::Serialize>(object: &T, kind: &'static str) -> Result<Value, BuildRouteError> {
    serde_json::to_value(object).map_err(|source| BuildRouteError::InvalidObject {
        kind,
        name: String::new(),
        source,
    })
}

/// The metadata of an apply body built from the live `source`: its name and namespace, and its
/// `resourceVersion` when it has one, which makes the apply conditional on the copy it was built
/// from (a forced apply of a whole atomic list must not revert an edit made in between).
fn copied_from(source: &Value, name: &str, namespace: &str) -> Value {
    let mut metadata = serde_json::json!({"name": name, "namespace": namespace});
    if let Some(version) = source["metadata"]["resourceVersion"].as_str() {
        metadata["resourceVersion"] = serde_json::json!(version);
    }
    metadata
}

fn object_name(value: &Value) -> String {
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    match value["metadata"]["namespace"].as_str() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests;
