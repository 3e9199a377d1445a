//! Promotion: waiting for approval (a person's `promote`, the confirm-promotion gates), releasing
//! the held template to the stable Deployment, and finishing once it has rolled out.

use super::predicates::{canary_ready, carries, pending_hooks};
use super::{CLUSTER_RETRY, Machine, after, timestamp_of};
use crate::api::names::condition;
use crate::api::{CommandAction, HookType, Phase};
use crate::core::conditions;
use crate::core::validate::Resolved;
use crate::core::{Action, Clock, EventReason, TargetState};

impl Machine<'_> {
    pub(super) fn waiting_promotion(&mut self, resolved: &Resolved, target: &TargetState) {
        if Some(&target.revision) != self.status.revision.as_ref() {
            self.changed_template(resolved, target);
            return;
        }
        self.keep_held(target);
        let revision = self.revision();
        let weight = self.status.canary_weight;
        if canary_ready(&self.status, self.observed)
            && !carries(resolved, self.observed, target, weight)
        {
            // The route drifted from the weight the analysis passed at (a re-applied manifest, a
            // deleted canary Ingress): it is put back before anything else (I2).
            self.set_traffic(resolved, target, weight);
            self.set_message(format!(
                "revision {revision}: putting the canary weight back to {weight}%"
            ));
            self.requeue_in(CLUSTER_RETRY);
            return;
        }
        self.record_hooks(&[HookType::ConfirmPromotion]);
        let approved = !resolved.manual_promotion || self.promote_acknowledged();
        let gates = pending_hooks(resolved, &self.status, &[HookType::ConfirmPromotion]);
        if approved && gates.is_empty() {
            self.begin_promotion(target, "analysis passed and promotion was approved");
            return;
        }
        if approved {
            self.set_message(format!(
                "revision {revision}: waiting for confirm-promotion gate {}",
                gates.join(", ")
            ));
            self.requeue_at(after(
                timestamp_of(&self.status.last_check_at).unwrap_or(self.now),
                resolved.interval,
            ));
        } else {
            self.set_message(format!(
                "revision {revision}: analysis passed; run `kubectl sluice promote` to promote it"
            ));
        }
    }

    fn promote_acknowledged(&self) -> bool {
        self.status
            .acknowledged_command
            .as_ref()
            .is_some_and(|ack| {
                ack.accepted
                    && ack.action == CommandAction::Promote
                    && Some(&ack.revision) == self.status.revision.as_ref()
            })
    }

    /// Releases the held template: the stable Deployment rolls it natively. Callers guarantee a
    /// complete passing analysis of this revision, or a person's `promote --full` (I3).
    pub(super) fn begin_promotion(&mut self, target: &TargetState, why: &str) {
        let revision = self.revision();
        self.status.phase = Some(Phase::Promoting);
        let from = self.actions.len();
        self.set_target(target, true, false);
        // The promotion's clock (the progress deadline) starts when the target is released.
        self.start_clock(Clock::Step, from);
        self.event(
            false,
            EventReason::PromotionStarted,
            format!("revision {revision}: {why}; the stable Deployment rolls it out"),
        );
        self.set_message(format!(
            "revision {revision}: promoting (the stable Deployment rolls it out)"
        ));
        self.requeue_in(CLUSTER_RETRY);
    }

    pub(super) fn promoting(&mut self, resolved: &Resolved, target: &TargetState) {
        if Some(&target.revision) != self.status.revision.as_ref() {
            self.changed_template(resolved, target);
            return;
        }
        let revision = self.revision();
        if target.paused || !target.labelled {
            self.set_target(target, true, false);
            self.set_message(format!(
                "revision {revision}: promoting, releasing the target"
            ));
            self.requeue_in(CLUSTER_RETRY);
            return;
        }
        let rolled_out = target.observed_generation >= target.generation
            && target.updated_replicas == target.replicas
            && target.available_replicas == target.replicas
            && target.status_replicas == target.replicas;
        if rolled_out {
            self.finalise(resolved, target);
            return;
        }
        let deadline = after(
            timestamp_of(&self.status.step_started_at).unwrap_or(self.now),
            resolved.progress_deadline,
        );
        if self.now >= deadline {
            self.promotion_late = true;
            let already = conditions::find(&self.status.conditions, condition::PROGRESSING)
                .is_some_and(|c| c.reason == "PromotionDeadlineExceeded");
            if !already {
                self.event(
                    true,
                    EventReason::PromotionDeadlineExceeded,
                    format!("revision {revision}: the stable Deployment has not finished rolling out within {}; still waiting", crate::api::Duration(resolved.progress_deadline)),
                );
            }
        }
        self.set_message(format!(
            "revision {revision}: promoting, {}/{} pods updated, {} available",
            target.updated_replicas, target.replicas, target.available_replicas
        ));
        self.requeue_in(CLUSTER_RETRY);
    }

    /// The stable Deployment runs the new revision: traffic back to it, held again, canary off.
    fn finalise(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        self.route_to_stable(resolved);
        self.set_target(target, true, self.hold_paused_at_rest());
        self.actions.push(Action::ScaleCanary {
            replicas: 0,
            starts_clock: None,
        });
        self.status.canary_weight = 0;
        self.status.stable_revision = Some(revision.clone());
        self.status.phase = Some(Phase::Succeeded);
        self.status.unknown_since = None;
        self.event(
            false,
            EventReason::Promoted,
            format!("revision {revision} promoted: the stable Deployment serves it"),
        );
        self.set_message(format!("revision {revision} promoted and serving"));
    }
}
