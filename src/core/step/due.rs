//! What a decision must gather first: whether the checks run now, and which hooks are called. It
//! reads the rollout's state through the same predicates [`step`](super::step) decides by, so the
//! two cannot disagree.

use jiff::Timestamp;

use super::predicates::{
    canary_ready, check_due, hooks_of, pending_hooks, refused_queries, stable_serves, step_weight,
};
use super::{after, timestamp_of};
use crate::api::{CanaryStatus, HookType, Phase};
use crate::core::validate::Resolved;
use crate::core::{Due, Observations, Resolution};

/// What must be gathered (checks run, hooks called) before [`step`](super::step) can decide.
pub fn due(
    resolution: &Resolution,
    status: &CanaryStatus,
    observed: &Observations,
    now: Timestamp,
) -> Due {
    let Ok(resolved) = resolution else {
        return Due::default();
    };
    if !refused_queries(resolved, status).is_empty() {
        return Due::default();
    }
    let Some(target) = &observed.target else {
        return Due::default();
    };
    if observed.deleting || status.paused || observed.router.missing {
        return Due::default();
    }
    if status.revision.as_deref() != Some(target.revision.as_str()) {
        return Due::default();
    }
    match status.phase.unwrap_or_default() {
        Phase::Progressing => {
            // A rollout held for a stable side with no ready pods asks nothing.
            if !canary_ready(status, observed) || !stable_serves(observed) {
                return Due::default();
            }
            match timestamp_of(&status.step_started_at) {
                None => Due {
                    checks: false,
                    hooks: if gate_poll_due(resolved, status, now) {
                        pending_hooks(
                            resolved,
                            status,
                            &[HookType::ConfirmRollout, HookType::PreRollout],
                        )
                    } else {
                        Vec::new()
                    },
                },
                Some(_) => {
                    let want = step_weight(resolved, status);
                    if check_due(resolved, status, observed, want, now) {
                        Due {
                            checks: true,
                            hooks: hooks_of(resolved, HookType::Rollout),
                        }
                    } else {
                        Due::default()
                    }
                }
            }
        }
        Phase::WaitingPromotion => Due {
            checks: false,
            hooks: if gate_poll_due(resolved, status, now) {
                pending_hooks(resolved, status, &[HookType::ConfirmPromotion])
            } else {
                Vec::new()
            },
        },
        // Informational hooks are called once per revision: a record of any answer ends them.
        Phase::Succeeded => Due {
            checks: false,
            hooks: unanswered_hooks(resolved, status, HookType::PostRollout),
        },
        Phase::Failed => Due {
            checks: false,
            hooks: unanswered_hooks(resolved, status, HookType::Rollback),
        },
        Phase::Initializing | Phase::Idle | Phase::Promoting | Phase::Paused | Phase::Invalid => {
            Due::default()
        }
    }
}

fn gate_poll_due(resolved: &Resolved, status: &CanaryStatus, now: Timestamp) -> bool {
    timestamp_of(&status.last_check_at).is_none_or(|last| now >= after(last, resolved.interval))
}

/// Hooks of `kind` with no answer at all recorded for the current revision.
fn unanswered_hooks(resolved: &Resolved, status: &CanaryStatus, kind: HookType) -> Vec<String> {
    resolved
        .hooks
        .iter()
        .filter(|h| h.hook_type == kind)
        .filter(|h| {
            !status
                .hooks
                .iter()
                .any(|r| r.name == h.name && Some(&r.revision) == status.revision.as_ref())
        })
        .map(|h| h.name.clone())
        .collect()
}
