//! The pure decision core: given a Canary's spec, its status (the rollout's whole memory), what the
//! controller observed, and the time, decide what to do. No kube client, network, tokio or clock
//! here (`now` is an argument); a test keeps it that way.
//!
//! The controller calls, per reconcile:
//! 0. [`resolve`] once, to merge the policy and templates into the effective rollout (or the
//!    reasons the spec is invalid), which the next two take,
//! 1. [`due`] to learn whether checks or hooks must run now (it runs them during its observe stage:
//!    queries and webhook calls are observations, not decisions),
//! 2. [`step`] with everything observed, which returns a [`Decision`]: the actions to execute in
//!    order, the new status to persist, the events to emit once it is persisted, and when to look
//!    again.
//!
//! Traffic is never moved on a guess: an invalid spec yields the `InvalidSpec` condition and no
//! action that changes traffic; Unknown check results hold the step; every write of the target's
//! `spec.paused` or opt-in label carries the resourceVersion it was decided on (invariant I6).

pub mod annotations;
pub mod conditions;
pub mod plan;
pub mod query;
pub mod reasons;
pub mod revision;
pub mod router;
pub mod validate;
pub mod verdict;

mod step;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{CanaryStatus, HoldMode, HookType, HttpMatch, RolloutSpec, TemplateSpec};

pub use reasons::{EventReason, FailureReason};
pub use router::Router;
pub use step::{due, step};
pub use validate::{FieldError, Resolved, resolve};

/// What the controller saw, from its caches and (when [`due`] asked for them) from Prometheus and
/// hooks. Everything the core needs beyond spec and status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Observations {
    /// `metadata.generation` of the Canary.
    pub generation: i64,
    /// How new templates are held on this cluster.
    pub hold_mode: HoldMode,
    /// The Canary is being deleted: opt out (traffic to stable, remove what sluice made, release
    /// the target), then drop the finalizer.
    pub deleting: bool,
    /// What the Canary's references resolve to (its policy, its templates).
    #[serde(flatten)]
    pub dereferenced: Dereferenced,
    /// The target Deployment; `None` when it does not exist.
    pub target: Option<TargetState>,
    /// The controller-owned `<name>-canary` Deployment; `None` when it does not exist.
    pub canary: Option<WorkloadState>,
    /// The router's weights as read back from the cluster.
    pub router: RouterState,
    /// The controller-owned `<service>-canary` Service, compared with what sluice would write.
    pub canary_service: CanaryServiceState,
    /// Results of the checks [`due`] asked for; `None` when no check ran this time.
    pub checks: Option<Vec<MetricResult>>,
    /// Results of the hooks [`due`] asked for (empty when none ran).
    pub hooks: Vec<HookResult>,
}

/// What a Canary's references point at, looked up before the core runs (by the controller from
/// its caches, by the plugin from the API server, by a simulation from its scenario: see
/// `crate::dereference`). [`resolve`] turns it and the spec into the effective rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Dereferenced {
    /// The CanaryPolicy named by `policyRef`, if any.
    pub policy: PolicyLookup,
    /// Templates referenced by metrics, by template name (absent when not found).
    pub templates: BTreeMap<String, TemplateSpec>,
    /// For a Canary that stands for a Deployment's `sluice.dev/*` annotations: what is wrong with
    /// them (each naming the annotation). Any makes the spec invalid.
    pub annotation_errors: Vec<FieldError>,
}

/// A spec resolved against what it references: the effective rollout, or every reason it cannot
/// be acted on. Computed once per decision ([`resolve`]) and handed to [`due`] and [`step`].
pub type Resolution = Result<Resolved, Vec<FieldError>>;

/// The outcome of looking up `policyRef`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum PolicyLookup {
    /// The Canary names no policy.
    #[default]
    NotReferenced,
    /// The named CanaryPolicy does not exist.
    Missing { name: String },
    /// The named CanaryPolicy's spec.
    Found(Box<RolloutSpec>),
}

/// The target Deployment as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetState {
    /// `metadata.resourceVersion`: every write of `paused` or of the opt-in label is conditional
    /// on it (I6).
    pub resource_version: String,
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// Hash of `spec.template` ([`revision::template_hash`]).
    pub revision: String,
    /// `spec.paused`.
    pub paused: bool,
    /// Carries `sluice.dev/canary: <this canary>`.
    pub labelled: bool,
    /// `spec.replicas` (defaulted to 1).
    pub replicas: i32,
    /// `status.replicas` (all pods, old and new).
    pub status_replicas: i32,
    /// `status.updatedReplicas` (pods of the current template).
    pub updated_replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
}

/// The canary Deployment as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadState {
    /// The revision its template was built from (its `sluice.dev/revision` label).
    pub revision: Option<String>,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
}

/// The router as read back from the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouterState {
    /// Canary weight found in the router object; `None` when the router object carries no canary
    /// route (not yet ensured, or removed).
    pub canary_weight: Option<i32>,
    /// The router object sends header-matched requests to the canary (A/B).
    pub matched: bool,
    /// The router object the spec names does not exist (a user error, reported, never created).
    pub missing: bool,
}

/// The `<service>-canary` Service as observed. It is written once per Canary (when it is adopted,
/// or when a rollout finds it missing or stale), not at every rollout: applying it unchanged would
/// be a write that changes nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CanaryServiceState {
    /// Not known: the stable Service it is built from is not there (yet).
    #[default]
    Unknown,
    /// Missing, or different from what sluice would write now.
    Stale,
    /// As sluice would write it.
    Current,
}

/// One value from a metrics provider, as data; the core gives the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Sample {
    Value(f64),
    /// The query returned no series.
    NoData,
    /// The query returned NaN (e.g. 0/0 with no traffic).
    #[serde(rename = "nan")]
    NaN,
    /// The query returned several series: a configuration error, never silently reduced.
    Several(usize),
    /// The provider was unreachable, slow, or answered an error.
    Error(String),
    /// The provider refused the query itself (Prometheus's `bad_data`): the spec is wrong, and
    /// waiting will not help. The core reports it as `InvalidSpec` naming the metric.
    Invalid(String),
}

/// The samples of one metric's check. Comparison and two-proportion metrics carry the stable side
/// and totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    /// The metric's name in the spec.
    pub metric: String,
    /// The canary query as sent.
    #[serde(default)]
    pub query: String,
    pub canary: Sample,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<Sample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_total: Option<Sample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_total: Option<Sample>,
}

/// The answer of one hook call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookResult {
    pub name: String,
    pub hook_type: HookType,
    /// Answered 2xx.
    pub passed: bool,
    /// HTTP status or error text.
    #[serde(default)]
    pub message: String,
}

/// What [`due`] asks the controller to gather before calling [`step`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Due {
    /// Run every metric's check now.
    pub checks: bool,
    /// Call these hooks (by name) now.
    pub hooks: Vec<String>,
}

/// What to do, what to remember, what to tell, and when to look again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Executed in order; execution stops at the first failure (the next reconcile decides again).
    pub actions: Vec<Action>,
    /// The status to persist (only written when it differs from the current one).
    pub status: CanaryStatus,
    /// When to reconcile again even if nothing changes (written as a duration such as `30s`).
    #[serde(default, with = "optional_duration")]
    pub requeue_after: Option<std::time::Duration>,
    /// Emitted after the status is persisted.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// A clock in status that starts when a write is acknowledged, not when it is decided: the step
/// clock `stepStartedAt` (also the promotion's clock) and the revision clock `revisionStartedAt`
/// (the progress deadline's).
///
/// The core stays the single source of truth: it decides which write starts which clock, says so
/// on that action (`starts_clock`), and sets the clock to its decision time. The executor, once
/// the API server has answered that write, moves the clock to the moment the answer arrived
/// (rounded up to the microsecond status keeps) before the status is persisted, in the same
/// status write. So a step is measured from the moment its traffic was in place (I4) and a
/// deadline never counts from before the write it waits on. A decision whose clock-starting write
/// fails is not persisted at all, so a clock never names a write that did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Clock {
    /// `stepStartedAt`.
    Step,
    /// `revisionStartedAt`.
    Revision,
}

impl Clock {
    /// Starts this clock in `status` at `acknowledged`, the moment the API server's answer to the
    /// write that starts it arrived, rounded up to status precision. Never earlier than the
    /// decision set it: rounding and clocks may only delay a step.
    pub fn start(self, status: &mut CanaryStatus, acknowledged: Timestamp) {
        let field = match self {
            Clock::Step => &mut status.step_started_at,
            Clock::Revision => &mut status.revision_started_at,
        };
        let at = crate::api::status_time::round_up(acknowledged);
        let at = field.as_ref().map_or(at, |decided| decided.0.max(at));
        *field = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
    }
}

/// One change to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum Action {
    /// Write the target's opt-in label (`sluice.dev/canary`, present when `labelled`) and its
    /// `spec.paused` together, in one server-side apply conditional on `resource_version`: a
    /// template that landed after the decision makes the write fail with 409 instead of releasing
    /// it (I6). At most one per decision, because a second write with the same resourceVersion
    /// would fail. Releasing the target to promote starts the promotion's clock.
    SetTarget {
        resource_version: String,
        labelled: bool,
        paused: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        starts_clock: Option<Clock>,
    },
    /// Create or update the canary Deployment from the target's current template (which has hash
    /// `revision`) with `replicas` replicas. Creating it for a new revision starts the revision's
    /// clock.
    ApplyCanary {
        revision: String,
        replicas: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        starts_clock: Option<Clock>,
    },
    /// Set the canary Deployment's replicas (0 to scale it down). With the replica-ratio router
    /// this moves the traffic, so it can start a step's clock.
    ScaleCanary {
        replicas: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        starts_clock: Option<Clock>,
    },
    /// Create or update the `<service>-canary` Service.
    ApplyCanaryService,
    /// Route `canary_weight` percent to the canary (and, for A/B, requests matching `matches`).
    /// The route write that puts a step's traffic in place starts the step's clock.
    SetRoute {
        canary_weight: i32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        matches: Vec<HttpMatch>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        starts_clock: Option<Clock>,
    },
    /// Remove every trace of sluice from the router (all traffic to stable).
    RemoveRoute,
    /// Delete the canary Deployment and Service.
    DeleteCanary,
    /// Remove sluice's finalizer from the Canary (the last action of a deletion).
    RemoveFinalizer,
}

impl Action {
    /// The clock this action's acknowledged write starts, if any.
    pub fn starts_clock(&self) -> Option<Clock> {
        match self {
            Action::SetTarget { starts_clock, .. }
            | Action::ApplyCanary { starts_clock, .. }
            | Action::ScaleCanary { starts_clock, .. }
            | Action::SetRoute { starts_clock, .. } => *starts_clock,
            Action::ApplyCanaryService
            | Action::RemoveRoute
            | Action::DeleteCanary
            | Action::RemoveFinalizer => None,
        }
    }

    /// Marks this action's write as the one that starts `clock`. Actions that write nothing a
    /// clock could wait on are left as they are.
    fn start_clock(&mut self, clock: Clock) {
        match self {
            Action::SetTarget { starts_clock, .. }
            | Action::ApplyCanary { starts_clock, .. }
            | Action::ScaleCanary { starts_clock, .. }
            | Action::SetRoute { starts_clock, .. } => *starts_clock = Some(clock),
            Action::ApplyCanaryService
            | Action::RemoveRoute
            | Action::DeleteCanary
            | Action::RemoveFinalizer => {}
        }
    }
}

/// A Kubernetes Event to emit once the status is persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default)]
    pub warning: bool,
    /// PascalCase reason, e.g. `CanaryStarted`.
    pub reason: EventReason,
    pub message: String,
}

/// Converts a Kubernetes `Time` to the core's timestamp type.
pub fn timestamp(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    time.0
}

/// Serde for `Option<std::time::Duration>` as the API's duration strings (`30s`, `1m30s`).
mod optional_duration {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::api::Duration;

    pub fn serialize<S: Serializer>(
        value: &Option<std::time::Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.map(Duration).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        Ok(Option::<Duration>::deserialize(deserializer)?.map(Duration::as_std))
    }
}
