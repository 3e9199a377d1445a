//! A rollout's beginning and its rest: first sight of a Canary (the current template adopted as
//! stable), the phases at rest (`Idle`, `Succeeded`, `Failed`), a new revision's start, and a
//! template that changes under a rollout in flight.

use super::predicates::{canary_replicas, first_weight};
use super::{CLUSTER_RETRY, Machine};
use crate::api::{HookType, Phase};
use crate::core::validate::Resolved;
use crate::core::{Action, CanaryServiceState, Clock, EventReason, TargetState};

impl Machine<'_> {
    /// First sight: the current template is adopted as stable without analysis.
    pub(super) fn initialize(&mut self, resolved: &Resolved, target: &TargetState) {
        if self.status.stable_revision.is_none() {
            // The canary Service belongs to the Canary, not to a rollout: written here once, a
            // rollout finds it in place.
            if self.observed.canary_service == CanaryServiceState::Stale {
                self.actions.push(Action::ApplyCanaryService);
            }
            self.status.stable_revision = Some(target.revision.clone());
            self.status.revision = Some(target.revision.clone());
            self.event(
                false,
                EventReason::Initialized,
                format!(
                    "adopted revision {} of Deployment {} as stable",
                    target.revision, resolved.target
                ),
            );
        }
        self.status.phase = Some(Phase::Idle);
        self.at_rest(resolved, target);
    }

    pub(super) fn at_rest(&mut self, resolved: &Resolved, target: &TargetState) {
        for (_, failure) in self.record_hooks(&[HookType::PostRollout, HookType::Rollback]) {
            // Informational: a failure is told, never acted on.
            self.event(true, EventReason::HookFailed, failure);
        }
        let Some(stable) = self.status.stable_revision.clone() else {
            self.initialize(resolved, target);
            return;
        };
        if target.revision == stable {
            self.converge_at_rest(resolved, target, self.hold_paused_at_rest());
            let phase = self.phase();
            self.set_message(match phase {
                Phase::Failed => format!(
                    "revision {} failed; the target serves stable revision {stable}",
                    self.status.failed_revision.clone().unwrap_or_default()
                ),
                Phase::Succeeded => format!("revision {stable} promoted and serving"),
                Phase::Initializing
                | Phase::Idle
                | Phase::Progressing
                | Phase::WaitingPromotion
                | Phase::Promoting
                | Phase::Paused
                | Phase::Invalid => format!("idle on stable revision {stable}"),
            });
            return;
        }
        if self.status.failed_revision.as_deref() == Some(target.revision.as_str()) {
            // The rejected template stays held in both modes until a newer one or a retry.
            self.converge_at_rest(resolved, target, true);
            self.status.phase = Some(Phase::Failed);
            self.status.revision = Some(target.revision.clone());
            self.set_message(format!(
                "revision {} failed and is held; push a new revision or retry it",
                target.revision
            ));
            return;
        }
        self.start(resolved, target);
    }

    fn converge_at_rest(&mut self, resolved: &Resolved, target: &TargetState, paused: bool) {
        if self.observed.router.canary_weight.is_some_and(|w| w != 0) {
            self.route_to_stable(resolved);
        }
        self.scale_down();
        self.status.canary_weight = 0;
        self.set_target(target, true, paused);
    }

    /// A new revision: hold it, then start its canary beside the stable one.
    pub(super) fn start(&mut self, resolved: &Resolved, target: &TargetState) {
        let pausing = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetTarget { paused: true, .. }));
        if !target.paused && !pausing {
            self.set_target(target, true, true);
            self.event(
                true,
                EventReason::TemplateNotHeld,
                format!(
                    "revision {} was not held paused (is the admission policy installed?); pausing the target now",
                    target.revision
                ),
            );
        }
        let revision = target.revision.clone();
        let status = &mut self.status;
        status.phase = Some(Phase::Progressing);
        status.revision = Some(revision.clone());
        status.step_index = 0;
        status.canary_weight = 0;
        status.step_started_at = None;
        status.last_check_at = None;
        status.failed_checks = 0;
        status.unknown_since = None;
        status.iterations = 0;
        status.paused = false;
        status.hooks.clear();
        let replicas = canary_replicas(resolved, target, first_weight(resolved));
        if self.observed.canary_service != CanaryServiceState::Current {
            self.actions.push(Action::ApplyCanaryService);
        }
        let from = self.actions.len();
        self.actions.push(Action::ApplyCanary {
            revision: revision.clone(),
            replicas,
            starts_clock: None,
        });
        // The progress deadline counts from the canary's creation.
        self.start_clock(Clock::Revision, from);
        self.event(
            false,
            EventReason::CanaryStarted,
            format!(
                "revision {revision} started beside stable revision {} with {replicas} canary replicas",
                self.status.stable_revision.clone().unwrap_or_default()
            ),
        );
        self.set_message(format!(
            "revision {revision}: waiting for the canary to be ready"
        ));
        self.requeue_in(CLUSTER_RETRY);
    }

    pub(super) fn changed_template(&mut self, resolved: &Resolved, target: &TargetState) {
        let old = self.revision();
        let new = target.revision.clone();
        if self.status.stable_revision.as_deref() == Some(new.as_str()) {
            self.route_to_stable(resolved);
            self.scale_down();
            self.set_target(target, true, self.hold_paused_at_rest());
            self.status.canary_weight = 0;
            self.status.revision = Some(new.clone());
            self.status.phase = Some(Phase::Idle);
            self.event(
                false,
                EventReason::TemplateReverted,
                format!("the template is back at stable revision {new}; the canary of {old} ended"),
            );
            self.set_message(format!(
                "idle on stable revision {new} (canary of {old} ended)"
            ));
            return;
        }
        if self.phase() == Phase::Promoting && !target.paused {
            self.set_target(target, true, true);
            self.event(
                true,
                EventReason::TemplateChangedDuringPromotion,
                format!("revision {new} landed while {old} was promoting; the target is paused again and {new} is treated as a new revision"),
            );
        }
        self.route_to_stable(resolved);
        self.status.canary_weight = 0;
        if self.status.failed_revision.as_deref() == Some(new.as_str()) {
            self.scale_down();
            self.set_target(target, true, true);
            self.status.revision = Some(new.clone());
            self.status.phase = Some(Phase::Failed);
            self.event(
                true,
                EventReason::Superseded,
                format!("revision {old} superseded by {new}, which failed before and stays held"),
            );
            self.set_message(format!(
                "revision {new} failed before and is held; retry it or push a new revision"
            ));
            return;
        }
        self.event(
            false,
            EventReason::Superseded,
            format!("revision {old} superseded by {new}"),
        );
        self.start(resolved, target);
    }
}
