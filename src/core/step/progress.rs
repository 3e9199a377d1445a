//! `Progressing` and `Paused`: waiting for the canary and the gates before the first step, putting
//! a step's traffic in place, holding for a stable side without ready pods, and deciding when the
//! next check is due (its judging is in `checks`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::predicates::{
    canary_ready, carries, check_due, first_weight, next_check_at, pending_hooks, plan_index,
    stable_serves, step_weight, withdrawn_match,
};
use super::{CLUSTER_RETRY, Machine, STABLE_NOT_READY, after, timestamp_of};
use crate::api::HookType;
use crate::api::names::condition;
use crate::core::conditions;
use crate::core::router::Router;
use crate::core::validate::{Resolved, Strategy};
use crate::core::{Clock, EventReason, FailureReason, TargetState};

impl Machine<'_> {
    pub(super) fn progressing(&mut self, resolved: &Resolved, target: &TargetState) {
        if Some(&target.revision) != self.status.revision.as_ref() {
            self.changed_template(resolved, target);
            return;
        }
        self.keep_held(target);
        let ready = canary_ready(&self.status, self.observed);
        if self.status.step_started_at.is_none() {
            self.before_traffic(resolved, target, ready);
            return;
        }
        let revision = self.revision();
        if !ready {
            // A/B sends header-matched requests to the canary at weight 0: the match goes too.
            self.withdraw_traffic(resolved);
            self.ensure_canary(resolved, target);
            self.set_message(format!(
                "revision {revision}: the canary has no ready pods; step {} holds",
                self.status.step_index + 1
            ));
            self.requeue_in(CLUSTER_RETRY);
            return;
        }
        if let Strategy::Canary { step_weights } = &resolved.strategy {
            self.status.step_index = plan_index(step_weights, &self.status);
        }
        if !stable_serves(self.observed) {
            self.follow_target_size(resolved, target);
            self.hold_for_stable(resolved, target);
            return;
        }
        self.resume_a_written_advance(resolved);
        let want = step_weight(resolved, &self.status);
        if self.status.canary_weight != want || !carries(resolved, self.observed, target, want) {
            let restored =
                self.status.canary_weight != want || withdrawn_match(resolved, self.observed);
            let from = self.actions.len();
            self.set_traffic(resolved, target, want);
            if restored {
                // Traffic was withdrawn (or never set): the step's clock starts again, once the
                // route carries it (I4).
                self.start_clock(Clock::Step, from);
                self.event(
                    false,
                    EventReason::TrafficRestored,
                    format!("revision {revision}: {want}% of traffic to the canary again"),
                );
            }
            self.set_message(format!(
                "revision {revision}: setting the canary weight to {want}%"
            ));
            self.requeue_in(CLUSTER_RETRY);
            return;
        }
        if self.observed.checks.is_some()
            && check_due(resolved, &self.status, self.observed, want, self.now)
        {
            self.judge_checks(resolved, target);
        } else {
            let next = next_check_at(resolved, &self.status);
            self.set_message(format!(
                "revision {revision}: {}; next check at {next}",
                self.progress_words(resolved)
            ));
            self.requeue_at(next);
        }
        self.follow_target_size(resolved, target);
    }

    /// The route already carries the next step's weight while status still names this step,
    /// whose check was due: the controller wrote the next step's route and was stopped before the
    /// status write that goes with it (the route is written first). Only sluice moves a route to
    /// the next step's weight, and only after a passing check (or a person's `skip`), so the step
    /// is taken as advanced rather than repeated: putting the previous weight back and analysing
    /// that step again would move traffic backwards and repeat a step. Its clock starts now,
    /// later than the route write it follows, so the step can only last longer (I4).
    fn resume_a_written_advance(&mut self, resolved: &Resolved) {
        let Strategy::Canary { step_weights } = &resolved.strategy else {
            return;
        };
        if resolved.router == Router::ReplicaRatio {
            return;
        }
        let next = usize::try_from(self.status.step_index + 1).unwrap_or(usize::MAX);
        let (Some(&weight), Some(read)) =
            (step_weights.get(next), self.observed.router.canary_weight)
        else {
            return;
        };
        if read != weight
            || self.status.canary_weight == weight
            || self.now < next_check_at(resolved, &self.status)
        {
            return;
        }
        let revision = self.revision();
        self.status.step_index = i32::try_from(next).unwrap_or(i32::MAX);
        self.status.canary_weight = weight;
        self.status.step_started_at = Some(Time(self.now));
        self.event(
            false,
            EventReason::StepAdvanced,
            format!(
                "revision {revision}: step {}/{}: {weight}% of traffic to the canary (the route carried it already: the write before a restart)",
                next + 1,
                self.status.step_count
            ),
        );
    }

    /// Holds the rollout where it stands while the stable side has no ready pods: no check, no
    /// step, no route write. Moving traffic to the canary would hand it to an unanalysed revision
    /// because of something the user did (scaled the target to zero) or that happened to the
    /// stable pods; the share the route still gives stable is theirs to restore. Ready says why
    /// until the target has ready pods again; the step then goes on under its own clock.
    fn hold_for_stable(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let pods = if target.replicas == 0 {
            "scaled to 0 replicas".to_owned()
        } else {
            format!("0 of {} ready", target.replicas)
        };
        let at = if self.status.step_started_at.is_some() {
            format!("at {}", self.progress_words(resolved))
        } else {
            "before the first step".to_owned()
        };
        let words = format!(
            "the stable Deployment {} has no ready pods ({pods}); the rollout holds {at} and moves no traffic until it has",
            resolved.target
        );
        let already = conditions::find(&self.found.conditions, condition::READY)
            .is_some_and(|c| c.status == "False" && c.reason == STABLE_NOT_READY);
        if !already {
            self.event(
                true,
                EventReason::StableNotReady,
                format!("revision {revision}: {words}"),
            );
        }
        self.not_ready = Some(STABLE_NOT_READY);
        self.set_message(format!("revision {revision}: {words}"));
        self.requeue_in(CLUSTER_RETRY);
    }

    pub(super) fn progress_words(&self, resolved: &Resolved) -> String {
        match &resolved.strategy {
            Strategy::Canary { step_weights } => format!(
                "step {}/{} at {}%",
                self.status.step_index + 1,
                step_weights.len(),
                self.status.canary_weight
            ),
            Strategy::BlueGreen { iterations } | Strategy::AbTesting { iterations, .. } => {
                format!("{}/{iterations} passing checks", self.status.iterations)
            }
        }
    }

    /// Before the first step, a canary without ready pods: it is (re)made while the progress
    /// deadline allows, and rolled back once it has passed.
    fn wait_for_canary(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let deadline = after(
            timestamp_of(&self.status.revision_started_at).unwrap_or(self.now),
            resolved.progress_deadline,
        );
        if self.now >= deadline {
            self.rollback(
                resolved,
                target,
                FailureReason::ProgressDeadlineExceeded,
                format!(
                    "the canary was not ready within the progress deadline {}",
                    crate::api::Duration(resolved.progress_deadline)
                ),
            );
            return;
        }
        self.ensure_canary(resolved, target);
        let ready_pods = self
            .observed
            .canary
            .as_ref()
            .map_or(0, |c| c.ready_replicas);
        self.set_message(format!(
            "revision {revision}: waiting for the canary to be ready ({ready_pods} ready pods); deadline {deadline}"
        ));
        self.requeue_in(CLUSTER_RETRY);
        self.requeue_at(deadline);
    }

    fn before_traffic(&mut self, resolved: &Resolved, target: &TargetState, ready: bool) {
        let revision = self.revision();
        if !ready {
            self.wait_for_canary(resolved, target);
            return;
        }
        if !stable_serves(self.observed) {
            self.hold_for_stable(resolved, target);
            return;
        }
        let failed = self.record_hooks(&[HookType::ConfirmRollout, HookType::PreRollout]);
        if !failed.is_empty() {
            // Pre-rollout hooks are checks; confirm-rollout gates only hold.
            let pre: Vec<String> = failed
                .into_iter()
                .filter(|(t, _)| *t == HookType::PreRollout)
                .map(|(_, m)| m)
                .collect();
            if !pre.is_empty() && self.count_failure(resolved, target, &pre.join("; ")) {
                return;
            }
        }
        for (kind, words) in [
            (HookType::ConfirmRollout, "confirm-rollout gate"),
            (HookType::PreRollout, "pre-rollout hook"),
        ] {
            let pending = pending_hooks(resolved, &self.status, &[kind]);
            if !pending.is_empty() {
                self.set_message(format!(
                    "revision {revision}: waiting for {words} {} to pass",
                    pending.join(", ")
                ));
                let next = after(
                    timestamp_of(&self.status.last_check_at).unwrap_or(self.now),
                    resolved.interval,
                );
                self.requeue_at(next);
                return;
            }
        }
        let weight = first_weight(resolved);
        self.status.step_index = 0;
        let from = self.actions.len();
        self.set_traffic(resolved, target, weight);
        self.start_clock(Clock::Step, from);
        self.event(
            false,
            EventReason::TrafficShifted,
            format!("revision {revision} is ready: {weight}% of traffic to the canary"),
        );
        self.set_message(format!(
            "revision {revision}: {}",
            self.progress_words(resolved)
        ));
        self.requeue_in(resolved.interval);
    }

    pub(super) fn paused(&mut self, resolved: &Resolved) {
        let revision = self.revision();
        // Nothing moves, except traffic off a canary that lost its ready pods (I1); resuming puts
        // it back with a fresh step clock.
        if !canary_ready(&self.status, self.observed) && self.withdraw_traffic(resolved) {
            self.set_message(format!(
                "revision {revision}: paused, and the canary has no ready pods: traffic is back on stable until `kubectl sluice resume`"
            ));
            self.requeue_in(CLUSTER_RETRY);
            return;
        }
        self.set_message(format!(
            "revision {revision}: paused; nothing moves until `kubectl sluice resume`"
        ));
    }
}
