//! The controller's own Prometheus metrics, under the `sluice_` prefix: reconciles, their duration
//! and their errors by a bounded category (the Canary controller's; the opt-in loop's are not
//! counted), the canary weight, analysis verdicts, hook and notification calls (and those
//! dropped), API calls and 429 answers, and the trigger queues.
//!
//! Two of them count less than their names say:
//! - `sluice_api_calls` counts only the calls the executor makes (its applies and deletes, and the
//!   one GET after a conflict), by verb and kind. Status and finalizer writes, the opt-in loop's
//!   writes, events, start-up checks and the watches are not counted.
//! - `sluice_canaries` (Canaries by phase) is registered, but nothing sets it yet.
//!
//! Every label value comes from a bounded set (phases, verdicts, categories, verbs, kinds, hook
//! types, results, queues) or names a Canary (and, for checks, one of its metrics), so
//! cardinality grows with the Canaries (and their metrics) the process has seen and nothing
//! else; a deleted Canary's series stay until the controller restarts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Identifies one Canary.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub namespace: String,
    pub name: String,
}

/// A reconcile error by its bounded category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: String,
}

/// A count of Canaries in one phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// One metric's verdicts for one Canary.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub namespace: String,
    pub name: String,
    pub metric: String,
    pub verdict: String,
}

/// One Canary's hook calls by hook type and result. `hook_type` is one of the seven hook types
/// or `notification`; `result` one of `hooks::Outcome::label`'s six values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub namespace: String,
    pub name: String,
    pub hook_type: String,
    pub result: String,
}

/// Background calls (event hooks, notifications) dropped because every permit was taken.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    pub hook_type: String,
}

/// API calls by verb and kind (`resource` holds the kind, e.g. `Deployment`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabels {
    pub verb: String,
    pub resource: String,
}

/// One of the controller's two trigger queues (see `controller::TriggerQueue`): `canary`, the
/// Canaries woken by the objects they watch, or `optin`, the annotated Deployments woken by
/// policies and Canaries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

/// Every 429 Too Many Requests the API server answered this process, counted by
/// [`CountThrottled`] as the client gets each one. Process-wide: the client is built before the
/// registry.
pub static API_THROTTLED: std::sync::LazyLock<Counter> = std::sync::LazyLock::new(Counter::default);

/// The controller client's retry policy: kube's own server-aware one (a 429, 503 or 504 is tried
/// again after the server's `Retry-After`, or an exponential backoff when that is sooner or
/// missing; at most 15 times), counting every 429 in [`API_THROTTLED`] on the way.
#[derive(Clone)]
pub struct CountThrottled(kube::client::retry::RetryPolicy);

impl Default for CountThrottled {
    fn default() -> Self {
        CountThrottled(kube::client::retry::RetryPolicy::server_retry())
    }
}

impl<Res>
    tower::retry::Policy<
        axum::http::Request<kube::client::Body>,
        axum::http::Response<Res>,
        tower::BoxError,
    > for CountThrottled
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut axum::http::Request<kube::client::Body>,
        result: &mut Result<axum::http::Response<Res>, tower::BoxError>,
    ) -> Option<Self::Future> {
        if let Ok(response) = result
            && response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS
        {
            API_THROTTLED.inc();
        }
        self.0.retry(request, result)
    }

    fn clone_request(
        &mut self,
        request: &axum::http::Request<kube::client::Body>,
    ) -> Option<axum::http::Request<kube::client::Body>> {
        tower::retry::Policy::<_, axum::http::Response<Res>, _>::clone_request(&mut self.0, request)
    }
}

/// Every controller metric, registered under the `sluice_` prefix.
#[derive(Clone)]
pub struct ControllerMetrics {
    pub reconciles: Counter,
    pub reconcile_duration_seconds: Histogram,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub canaries: Family<PhaseLabels, Gauge>,
    pub canary_weight: Family<CanaryLabels, Gauge>,
    pub checks: Family<VerdictLabels, Counter>,
    pub hook_calls: Family<HookLabels, Counter>,
    pub hook_calls_dropped: Family<DroppedLabels, Counter>,
    pub api_calls: Family<ApiCallLabels, Counter>,
    /// API requests answered 429 Too Many Requests ([`API_THROTTLED`]).
    pub api_throttled: Counter,
    pub triggers: Family<QueueLabels, Counter>,
    pub triggers_coalesced: Family<QueueLabels, Counter>,
    pub trigger_queue_depth: Family<QueueLabels, Gauge>,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Counter::default(),
            // 1 ms .. ~16 s
            reconcile_duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            reconcile_errors: Family::default(),
            canaries: Family::default(),
            canary_weight: Family::default(),
            checks: Family::default(),
            hook_calls: Family::default(),
            hook_calls_dropped: Family::default(),
            api_calls: Family::default(),
            api_throttled: API_THROTTLED.clone(),
            triggers: Family::default(),
            triggers_coalesced: Family::default(),
            trigger_queue_depth: Family::default(),
        };
        let sluice = registry.sub_registry_with_prefix("sluice");
        sluice.register("reconciles", "Reconciles run", metrics.reconciles.clone());
        sluice.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            metrics.reconcile_duration_seconds.clone(),
        );
        sluice.register(
            "reconcile_errors",
            "Reconciles that failed, by error category",
            metrics.reconcile_errors.clone(),
        );
        sluice.register("canaries", "Canaries by phase", metrics.canaries.clone());
        sluice.register(
            "canary_weight",
            "Percentage of traffic routed to each canary",
            metrics.canary_weight.clone(),
        );
        sluice.register(
            "checks",
            "Analysis checks by metric and verdict",
            metrics.checks.clone(),
        );
        sluice.register(
            "hook_calls",
            "Hook and notification calls by hook type and result",
            metrics.hook_calls.clone(),
        );
        sluice.register(
            "hook_calls_dropped",
            "Event hook and notification calls dropped because too many calls were in flight",
            metrics.hook_calls_dropped.clone(),
        );
        sluice.register(
            "api_calls",
            "Kubernetes API calls made by the executor (its applies and deletes, and the GET \
             after a conflict), by verb and kind",
            metrics.api_calls.clone(),
        );
        sluice.register(
            "api_throttled",
            "Kubernetes API requests answered 429 Too Many Requests, each tried again after the \
             server's Retry-After",
            metrics.api_throttled.clone(),
        );
        sluice.register(
            "triggers",
            "Reconciles asked for by watch events, by trigger queue",
            metrics.triggers.clone(),
        );
        sluice.register(
            "triggers_coalesced",
            "Reconciles asked for while the same object was already queued, so merged into it",
            metrics.triggers_coalesced.clone(),
        );
        sluice.register(
            "trigger_queue_depth",
            "Objects queued for a reconcile and not yet taken by the controller",
            metrics.trigger_queue_depth.clone(),
        );
        metrics
    }
}
