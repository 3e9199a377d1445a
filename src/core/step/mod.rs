//! The rollout state machine: one function per [`Phase`], matched exhaustively, all memory in
//! [`CanaryStatus`] so a restarted controller resumes the same step.
//!
//! Flow of one decision: opt out when deleting; resolve the spec (an invalid one sets
//! `InvalidSpec` and moves nothing); answer a pending command; then the phase's function decides.
//! Every transition emits an event with a PascalCase reason ([`EventReason`]) and leaves a one-line `message`.
//!
//! Guarantees (checked by the property tests): no weight above 0 unless the canary has ready pods
//! of the revision (I1); the target is only unpaused to promote a revision whose every step passed
//! (I3) or one that is stable; no step advances before its interval since `stepStartedAt` (I4);
//! at most one `SetTarget` per decision, carrying the observed resourceVersion (I6).
//!
//! Clocks: the write that starts a step (the route's new weight, or the canary's new size with the
//! replica-ratio router), the promotion (the target's release) or a revision (its canary's
//! creation) carries `starts_clock`; the decision sets the clock to `now`, and the executor moves
//! it to the moment that write was acknowledged before the status is persisted ([`super::Clock`]).
//! `now` comes at the microsecond precision status keeps, so a clock read back is the clock decided.
//!
//! Status writes: a decision that writes nothing, tells nothing and changes no field of status
//! keeps the message and conditions it found (see `settle_message`), so waiting (for pods, for the
//! next check, for a rollout to finish) costs no status write; each transition says its own
//! message.
//!
//! Choices worth knowing:
//! - Promotion reuses `stepStartedAt` as its clock. A promotion still rolling after
//!   `progressDeadline` is not rolled back (the stable Deployment already runs part of the new
//!   revision, and sluice never writes its template): it emits a `PromotionDeadlineExceeded`
//!   Warning, sets the `Progressing` condition's reason to it, and keeps waiting.
//! - `pause` is accepted while the canary is analysed or waits for promotion; `resume` returns to
//!   `Progressing` with a fresh step clock, so the current step is checked again before moving.
//! - A canary losing its ready pods mid-step gets its traffic withdrawn (I1), an A/B header match
//!   included, even while paused; the step restarts when it is ready again (no deadline applies to
//!   that wait), and a paused rollout gets its traffic back when resumed.
//! - Promotion ends within one decision (route to stable, re-hold per mode, scale to zero, phase
//!   `Succeeded`); if any of it fails, the at-rest convergence of the next reconcile completes it.
//! - `abort` during promotion holds the stable Deployment where its rollout stands (sluice never
//!   rewrites the template); `skip` on the last step and `promote --full` are a person's choice to
//!   promote without the remaining analysis.
//! - Post-rollout and rollback hooks are called once per revision; their answers are recorded and
//!   told, never acted on. A rollout hook that was due but has no answer (not called) makes the
//!   check Unknown, like a metric with no result.
//! - With the replica-ratio router the canary shares the stable Service, so its pods take traffic
//!   as soon as they are ready, before any gate.
//! - The spec edited mid-step applies from the next decision, and never moves traffic by itself.
//!   A new `interval` times the step from its `stepStartedAt` and the next check from the last
//!   one; a new `threshold` judges the next failed check (a lowered one does not roll back
//!   without a new failure). New step weights: the step keeps the weight it started with
//!   (`canaryWeight`) until it ends; its index becomes that of the new plan's highest step whose
//!   weight does not exceed it (the first step when every one does), and the step after it is
//!   the new plan's first step above that weight, or promotion when there is none. So an edited
//!   plan never raises (nor lowers) the canary's weight mid-step: plan `[10, 20, 30]` at 30%
//!   edited to `[50, 60]` holds 30% until the step ends, then steps to 50% and 60%.
//! - While the stable side has no ready pods (the target scaled to zero, or all its pods
//!   failing) the rollout holds: no check, no step, and no route write (a withdrawal from a
//!   canary without ready pods aside); Ready is False with reason `StableNotReady`. Traffic is
//!   never moved onto the unanalysed canary to make up for it; the route keeps giving the stable
//!   side the share it had, which is the user's doing, not sluice's.
//! - The canary follows the target's replicas at the weight it carries (an HPA scaling the
//!   target mid-step, or scaling it to zero): its replicas change, its weight and the step's
//!   clock do not.
//! - A deleted target: sluice removes what it made for it (its entry in the route, then the
//!   canary Deployment and Service) and waits, Ready False `TargetNotFound`; the user's route and
//!   Service stay. A rollout in flight ends as `Failed` (reason `TargetDeleted`), its revision
//!   held as failed like a rolled-back one.

mod checks;
mod commands;
mod due;
mod predicates;
mod progress;
mod promote;
mod report;
mod rollback;
mod start;
mod traffic;

use std::time::Duration as StdDuration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::validate::Resolved;
use super::{
    Action, Decision, Event, EventReason, FailureReason, Observations, Resolution, TargetState,
};
use crate::api::{CanaryStatus, HoldMode, Phase};
use predicates::{refused_queries, step_count};

pub use due::due;

/// Checks kept in `status.analysis`.
pub const ANALYSIS_LOG_LEN: usize = 20;
/// How soon to look again while waiting for the cluster (pods, rollouts, read-back).
pub const CLUSTER_RETRY: StdDuration = StdDuration::from_secs(5);
/// How soon to look again when something the spec names is missing.
pub const MISSING_RETRY: StdDuration = StdDuration::from_secs(30);
/// Ready's reason while the rollout holds for a stable side with no ready pods.
const STABLE_NOT_READY: &str = "StableNotReady";

/// Decides what to do next.
pub fn step(
    resolution: &Resolution,
    status: &CanaryStatus,
    observed: &Observations,
    now: Timestamp,
) -> Decision {
    let mut machine = Machine::new(status, observed, now);
    if observed.deleting {
        machine.opt_out();
        return machine.decision();
    }
    let resolved = match resolution {
        Ok(resolved) => resolved,
        Err(errors) => {
            machine.invalid(errors);
            return machine.decision();
        }
    };
    let refused = refused_queries(resolved, &machine.status);
    if !refused.is_empty() {
        machine.invalid(&refused);
        return machine.decision();
    }
    machine.status.rejected_queries.clear();
    machine.status.step_count = step_count(&resolved.strategy);
    if machine.phase() == Phase::Invalid {
        machine.recover_from_invalid();
    }
    let Some(target) = observed.target.clone() else {
        machine.target_missing(resolved);
        machine.conditions(Some("TargetNotFound"));
        machine.settle_message();
        return machine.decision();
    };
    if observed.router.missing {
        machine.set_message(
            "the router object named in spec.router does not exist; nothing moves until it does"
                .to_owned(),
        );
        machine.requeue_in(MISSING_RETRY);
        machine.conditions(Some("RouterNotFound"));
        machine.settle_message();
        return machine.decision();
    }
    if !machine.command(resolved, &target) {
        machine.dispatch(resolved, &target);
    }
    // A check whose query the provider refused made the spec invalid: its conditions are set.
    if machine.phase() != Phase::Invalid {
        machine.conditions(machine.not_ready);
    }
    machine.settle_message();
    machine.decision()
}

struct Machine<'a> {
    status: CanaryStatus,
    /// The status as found, before this decision.
    found: &'a CanaryStatus,
    observed: &'a Observations,
    now: Timestamp,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Option<StdDuration>,
    /// Set by a rollback: the Failed condition's reason and message.
    failure: Option<(FailureReason, String)>,
    /// A promotion outlived the progress deadline.
    promotion_late: bool,
    /// Why Ready is False, when a phase holds for something outside it (the stable side).
    not_ready: Option<&'static str>,
}

impl<'a> Machine<'a> {
    fn new(found: &'a CanaryStatus, observed: &'a Observations, now: Timestamp) -> Self {
        let mut status = found.clone();
        status.observed_generation = Some(observed.generation);
        status.hold_mode = Some(observed.hold_mode);
        Self {
            status,
            found,
            observed,
            now,
            actions: Vec::new(),
            events: Vec::new(),
            requeue: None,
            failure: None,
            promotion_late: false,
            not_ready: None,
        }
    }

    fn decision(mut self) -> Decision {
        let overflow = self.status.analysis.len().saturating_sub(ANALYSIS_LOG_LEN);
        self.status.analysis.drain(..overflow);
        if self.status.message.is_none() {
            self.set_message(format!("{}", self.phase()));
        }
        Decision {
            actions: self.actions,
            status: self.status,
            requeue_after: self.requeue,
            events: self.events,
        }
    }

    fn phase(&self) -> Phase {
        self.status.phase.unwrap_or_default()
    }

    fn revision(&self) -> String {
        self.status.revision.clone().unwrap_or_default()
    }

    fn set_message(&mut self, message: String) {
        // One line, whatever a provider or hook put in its error text.
        self.status.message = Some(message.replace(['\n', '\r'], " "));
    }

    fn event(&mut self, warning: bool, reason: EventReason, message: String) {
        self.events.push(Event {
            warning,
            reason,
            message,
        });
    }

    fn requeue_in(&mut self, after: StdDuration) {
        let after = after.max(StdDuration::from_secs(1));
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    /// Looks again at `at`, to the moment when it is still ahead (a step or deadline must not wait
    /// a second longer than it lasts); when it has passed, as [`Self::requeue_in`] would.
    fn requeue_at(&mut self, at: Timestamp) {
        let after = until(self.now, at);
        if after.is_zero() {
            self.requeue_in(after);
        } else {
            let after = after.max(StdDuration::from_millis(1));
            self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
        }
    }

    /// Starts `clock` at this decision, and marks the last action pushed since `from` (the write
    /// that puts the step's traffic in place, releases the target or creates the canary) as the
    /// write whose acknowledgement starts it; the executor moves the clock to that moment. With
    /// no such write (the traffic was already in place) the clock starts at the decision.
    fn start_clock(&mut self, clock: super::Clock, from: usize) {
        let at = Some(Time(self.now));
        match clock {
            super::Clock::Step => self.status.step_started_at = at,
            super::Clock::Revision => self.status.revision_started_at = at,
        }
        if let Some(write) = self.actions.get_mut(from..).and_then(<[Action]>::last_mut) {
            write.start_clock(clock);
        }
    }

    /// A decision that writes nothing to the cluster, emits no event and changes no field of
    /// status but the message keeps the message (and the conditions that repeat it) it found:
    /// waiting for pods, for the next check or for a rollout to finish is not news, and a message
    /// that changed with a pod count or a time would make every reconcile a status write.
    fn settle_message(&mut self) {
        if !self.actions.is_empty() || !self.events.is_empty() {
            return;
        }
        if without_messages(&self.status) == without_messages(self.found) {
            self.status.message = self.found.message.clone();
            self.status.conditions = self.found.conditions.clone();
        }
    }

    fn hold_paused_at_rest(&self) -> bool {
        self.observed.hold_mode == HoldMode::PausedAtRest
    }

    fn dispatch(&mut self, resolved: &Resolved, target: &TargetState) {
        match self.phase() {
            Phase::Initializing => self.initialize(resolved, target),
            Phase::Idle | Phase::Succeeded | Phase::Failed => {
                self.at_rest(resolved, target);
            }
            Phase::Progressing => self.progressing(resolved, target),
            Phase::WaitingPromotion => self.waiting_promotion(resolved, target),
            Phase::Promoting => self.promoting(resolved, target),
            Phase::Paused => self.paused(resolved),
            // recover_from_invalid has already left this phase; rest is the harmless fallback.
            Phase::Invalid => self.at_rest(resolved, target),
        }
    }
}

/// A status with its message, and the conditions' messages that repeat it, left out.
fn without_messages(status: &CanaryStatus) -> CanaryStatus {
    let mut status = status.clone();
    status.message = None;
    for condition in &mut status.conditions {
        condition.message.clear();
    }
    status
}

/// The moment a status time field holds, if it is set.
fn timestamp_of(time: &Option<Time>) -> Option<Timestamp> {
    time.as_ref().map(|t| t.0)
}

fn after(at: Timestamp, span: StdDuration) -> Timestamp {
    at.checked_add(span).unwrap_or(Timestamp::MAX)
}

fn until(now: Timestamp, at: Timestamp) -> StdDuration {
    if at > now {
        at.duration_since(now).unsigned_abs()
    } else {
        StdDuration::ZERO
    }
}
