//! Taking traffic and the canary away: a rollback, a canary that lost its ready pods, a target
//! that was deleted, and the opt-out of a Canary being deleted.

use super::{MISSING_RETRY, Machine};
use crate::api::Phase;
use crate::core::router::Router;
use crate::core::validate::Resolved;
use crate::core::{Action, EventReason, FailureReason, TargetState};

impl Machine<'_> {
    /// Traffic to stable first, then the canary off; the rejected template stays held.
    pub(super) fn rollback(
        &mut self,
        resolved: &Resolved,
        target: &TargetState,
        reason: FailureReason,
        why: String,
    ) {
        let revision = self.revision();
        self.route_to_stable(resolved);
        self.actions.push(Action::ScaleCanary {
            replicas: 0,
            starts_clock: None,
        });
        self.set_target(target, true, true);
        self.status.canary_weight = 0;
        self.status.failed_revision = Some(revision.clone());
        self.status.phase = Some(Phase::Failed);
        self.status.paused = false;
        self.status.unknown_since = None;
        self.event(
            true,
            EventReason::RolledBack,
            format!("revision {revision} rolled back ({reason}): {why}"),
        );
        self.set_message(format!("revision {revision} rolled back: {why}"));
        self.failure = Some((reason, why));
    }

    /// Takes all traffic off a canary that has no ready pods (I1): its weight and, for A/B, the
    /// header match that sends requests to it even at weight 0. Returns whether it carried any.
    pub(super) fn withdraw_traffic(&mut self, resolved: &Resolved) -> bool {
        if self.status.canary_weight == 0 && !self.observed.router.matched {
            return false;
        }
        let revision = self.revision();
        self.route_to_stable(resolved);
        self.status.canary_weight = 0;
        self.event(
            true,
            EventReason::CanaryNotReady,
            format!("the canary of revision {revision} has no ready pods; its traffic goes back to stable"),
        );
        true
    }

    /// The target Deployment is not there: not created yet, or deleted. What sluice made for it
    /// goes, and only that: its entry in the user's route first (no request is left routed to a
    /// canary being deleted), then the canary Deployment and Service. A rollout in flight cannot
    /// be promoted any more and ends as failed, its revision held like a rolled-back one.
    pub(super) fn target_missing(&mut self, resolved: &Resolved) {
        self.requeue_in(MISSING_RETRY);
        let weight = self.observed.router.canary_weight;
        let routed = match &resolved.router {
            Router::ReplicaRatio => false,
            // The Service router reads 0 from the user's own selector: nothing of sluice's.
            Router::Service => weight.is_some_and(|w| w > 0),
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. } => weight.is_some() || self.observed.router.matched,
        };
        if routed {
            self.actions.push(Action::RemoveRoute);
        }
        if self.observed.canary.is_some() {
            self.actions.push(Action::DeleteCanary);
        }
        self.status.canary_weight = 0;
        let in_flight = match self.phase() {
            Phase::Progressing | Phase::WaitingPromotion | Phase::Promoting | Phase::Paused => true,
            Phase::Initializing
            | Phase::Idle
            | Phase::Succeeded
            | Phase::Failed
            | Phase::Invalid => false,
        };
        if in_flight {
            let revision = self.revision();
            let why = format!(
                "the target Deployment {} was deleted during the rollout; its canary and its route entry were removed",
                resolved.target
            );
            self.status.phase = Some(Phase::Failed);
            self.status.failed_revision = Some(revision.clone());
            self.status.paused = false;
            self.status.unknown_since = None;
            self.event(
                true,
                EventReason::TargetDeleted,
                format!("revision {revision}: {why}"),
            );
            self.set_message(format!(
                "revision {revision} failed: {why}; waiting for a Deployment {}",
                resolved.target
            ));
            self.failure = Some((FailureReason::TargetDeleted, why));
            return;
        }
        if self.status.phase.is_none() {
            self.status.phase = Some(Phase::Initializing);
        }
        self.set_message(format!(
            "target Deployment {} not found; waiting for it",
            resolved.target
        ));
    }

    pub(super) fn opt_out(&mut self) {
        self.actions.push(Action::RemoveRoute);
        self.actions.push(Action::DeleteCanary);
        if let Some(target) = &self.observed.target {
            self.actions.push(Action::SetTarget {
                resource_version: target.resource_version.clone(),
                labelled: false,
                paused: false,
                starts_clock: None,
            });
        }
        self.actions.push(Action::RemoveFinalizer);
        self.status.canary_weight = 0;
        self.event(
            false,
            EventReason::OptedOut,
            "traffic back to stable, the canary removed and the target released".into(),
        );
        self.set_message("opting out: traffic to stable, canary removed, target released".into());
    }
}
