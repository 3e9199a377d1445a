//! Shared predicates (used by both `due` and `step`, so they cannot disagree), and the plan's
//! arithmetic: which weight a step gives the canary, which step comes next, how large the canary
//! is.

use std::time::Duration as StdDuration;

use jiff::Timestamp;

use super::{after, timestamp_of};
use crate::api::{CanaryStatus, HookType};
use crate::core::router::Router;
use crate::core::validate::{self, FieldError, Resolved, Strategy};
use crate::core::{Observations, TargetState, plan};

pub(super) fn step_count(strategy: &Strategy) -> i32 {
    match strategy {
        Strategy::Canary { step_weights } => i32::try_from(step_weights.len()).unwrap_or(i32::MAX),
        Strategy::BlueGreen { .. } | Strategy::AbTesting { .. } => 1,
    }
}

pub(super) fn first_weight(resolved: &Resolved) -> i32 {
    match &resolved.strategy {
        Strategy::Canary { step_weights } => step_weights.first().copied().unwrap_or(0),
        Strategy::BlueGreen { .. } | Strategy::AbTesting { .. } => 0,
    }
}

/// The weight the current step gives the canary: the weight it started with (`canaryWeight`),
/// which it keeps until it ends whatever the plan says meanwhile (an edited plan never moves
/// traffic mid-step). With no traffic in place (before the first step, or withdrawn from a canary
/// without ready pods), the plan's weight at the step index, or its last step's.
pub(super) fn step_weight(resolved: &Resolved, status: &CanaryStatus) -> i32 {
    match &resolved.strategy {
        Strategy::Canary { .. } if status.canary_weight > 0 => status.canary_weight,
        Strategy::Canary { step_weights } => usize::try_from(status.step_index)
            .ok()
            .and_then(|i| step_weights.get(i))
            .or(step_weights.last())
            .copied()
            .unwrap_or(0),
        Strategy::BlueGreen { .. } | Strategy::AbTesting { .. } => 0,
    }
}

/// The index of the step the canary is on, in the plan as it stands now: the highest step whose
/// weight does not exceed the weight the canary carries, or the first when every step is above
/// it (an unedited plan gives the step's own index). With no traffic in place, the step index
/// clamped to the plan.
pub(super) fn plan_index(step_weights: &[i32], status: &CanaryStatus) -> i32 {
    let index = if status.canary_weight > 0 {
        step_weights
            .iter()
            .filter(|w| **w <= status.canary_weight)
            .count()
            .saturating_sub(1)
    } else {
        usize::try_from(status.step_index)
            .unwrap_or(0)
            .min(step_weights.len().saturating_sub(1))
    };
    i32::try_from(index).unwrap_or(i32::MAX)
}

/// The step after the current one: the plan's first step above the weight the canary carries
/// (the next index, when the plan is the one the step started with); `None` when no step is
/// above it, and the analysis is complete.
pub(super) fn next_step(step_weights: &[i32], status: &CanaryStatus) -> Option<usize> {
    if status.canary_weight > 0 {
        return step_weights.iter().position(|w| *w > status.canary_weight);
    }
    let next = usize::try_from(status.step_index.saturating_add(1)).ok()?;
    (next < step_weights.len()).then_some(next)
}

pub(super) fn canary_replicas(resolved: &Resolved, target: &TargetState, weight: i32) -> i32 {
    match &resolved.strategy {
        Strategy::BlueGreen { .. } | Strategy::AbTesting { .. } => target.replicas.max(1),
        Strategy::Canary { .. } if resolved.router == Router::ReplicaRatio => {
            plan::ratio_replicas(target.replicas, weight)
        }
        Strategy::Canary { .. } => plan::routed_replicas(target.replicas, weight),
    }
}

/// The stable side serves: the target Deployment has ready pods. A rollout in `Progressing`
/// holds while it has none (see [`Machine::hold_for_stable`](super::Machine::hold_for_stable)).
pub(super) fn stable_serves(observed: &Observations) -> bool {
    observed
        .target
        .as_ref()
        .is_some_and(|t| t.ready_replicas >= 1)
}

/// The canary has ready pods of the revision being rolled out (I1's precondition).
pub(super) fn canary_ready(status: &CanaryStatus, observed: &Observations) -> bool {
    observed.canary.as_ref().is_some_and(|c| {
        c.ready_replicas >= 1 && c.revision.is_some() && c.revision == status.revision
    })
}

/// An A/B canary whose header match is not in place (withdrawn while it had no ready pods, or
/// removed by someone else): putting it back restarts the step's clock (I4).
pub(super) fn withdrawn_match(resolved: &Resolved, observed: &Observations) -> bool {
    matches!(&resolved.strategy, Strategy::AbTesting { matches, .. } if !matches.is_empty())
        && resolved.router != Router::ReplicaRatio
        && !observed.router.matched
}

/// The canary carries `weight` as read back from the cluster (I2), and for A/B its header match.
pub(super) fn carries(
    resolved: &Resolved,
    observed: &Observations,
    target: &TargetState,
    weight: i32,
) -> bool {
    match &resolved.router {
        Router::ReplicaRatio => observed
            .canary
            .as_ref()
            .is_some_and(|c| c.replicas == plan::ratio_replicas(target.replicas, weight)),
        Router::GatewayApi { .. }
        | Router::Nginx { .. }
        | Router::Istio { .. }
        | Router::Smi { .. }
        | Router::Traefik { .. }
        | Router::Service => {
            observed.router.canary_weight.unwrap_or(0) == weight
                && !withdrawn_match(resolved, observed)
        }
    }
}

/// When the next check may run. Its evidence must lie wholly inside the time the canary has
/// carried its current traffic, and must not overlap the previous check's: so the first check of
/// a step waits the longest window any metric's query reads, and each later one waits
/// `max(interval, window)` after the last (a burst of errors is counted once, not by every
/// window that sees it).
pub(super) fn next_check_at(resolved: &Resolved, status: &CanaryStatus) -> Timestamp {
    let window = check_window(resolved);
    let started = timestamp_of(&status.step_started_at);
    let last = timestamp_of(&status.last_check_at).filter(|last| started.is_none_or(|s| *last > s));
    match (last, started) {
        (Some(last), _) => after(last, resolved.interval.max(window)),
        (None, Some(started)) => after(started, resolved.interval.max(window)),
        (None, None) => Timestamp::MIN,
    }
}

/// The longest window any metric's queries read.
pub(super) fn check_window(resolved: &Resolved) -> StdDuration {
    resolved
        .metrics
        .iter()
        .map(|m| m.window)
        .max()
        .unwrap_or(StdDuration::ZERO)
}

/// A metric's query as the provider refusals remember it: the query and its count query.
pub(super) fn query_fingerprint(metric: &validate::ResolvedMetric) -> String {
    format!(
        "{}\n\n{}",
        metric.query,
        metric.total_query.as_deref().unwrap_or_default()
    )
}

/// The metrics whose current query the provider has refused (and not been changed since), as
/// spec errors naming each.
pub(super) fn refused_queries(resolved: &Resolved, status: &CanaryStatus) -> Vec<FieldError> {
    resolved
        .metrics
        .iter()
        .enumerate()
        .filter_map(|(i, metric)| {
            let refused = status
                .rejected_queries
                .iter()
                .find(|r| r.metric == metric.name && r.query == query_fingerprint(metric))?;
            let field = if metric.template.is_some() {
                format!("spec.analysis.metrics[{i}].templateRef.name")
            } else {
                format!("spec.analysis.metrics[{i}].query")
            };
            Some(FieldError::new(
                field,
                format!(
                    "the metrics provider refused the query of metric {:?} as invalid: {}",
                    metric.name, refused.reason
                ),
            ))
        })
        .collect()
}

pub(super) fn check_due(
    resolved: &Resolved,
    status: &CanaryStatus,
    observed: &Observations,
    want: i32,
    now: Timestamp,
) -> bool {
    let Some(target) = &observed.target else {
        return false;
    };
    status.step_started_at.is_some()
        && status.canary_weight == want
        && canary_ready(status, observed)
        && carries(resolved, observed, target, want)
        && now >= next_check_at(resolved, status)
}

pub(super) fn hooks_of(resolved: &Resolved, kind: HookType) -> Vec<String> {
    resolved
        .hooks
        .iter()
        .filter(|h| h.hook_type == kind)
        .map(|h| h.name.clone())
        .collect()
}

/// Hooks of `kinds` without a passing result for the current revision.
pub(super) fn pending_hooks(
    resolved: &Resolved,
    status: &CanaryStatus,
    kinds: &[HookType],
) -> Vec<String> {
    resolved
        .hooks
        .iter()
        .filter(|h| kinds.contains(&h.hook_type))
        .filter(|h| {
            !status.hooks.iter().any(|r| {
                r.name == h.name && r.passed && Some(&r.revision) == status.revision.as_ref()
            })
        })
        .map(|h| h.name.clone())
        .collect()
}
