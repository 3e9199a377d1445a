//! The rollout state machine: one function per [`Phase`], matched exhaustively, all memory in
//! [`CanaryStatus`] so a restarted controller resumes the same step.
//!
//! Flow of one decision: opt out when deleting; resolve the spec (an invalid one sets
//! `InvalidSpec` and moves nothing); answer a pending command; then the phase's function decides.
//! Every transition emits an event with a PascalCase reason and leaves a one-line `message`.
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

use std::time::Duration as StdDuration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{self, Status, Update};
use super::router::Router;
use super::validate::{self, FieldError, Resolved, Strategy};
use super::{
    Action, Decision, Due, Event, Observations, Resolution, Sample, TargetState, plan, verdict,
};
use crate::api::names::condition;
use crate::api::{
    CanaryStatus, CommandAck, CommandAction, HoldMode, HookRecord, HookType, Phase, RejectedQuery,
    UnknownOutcome, Verdict,
};

/// Checks kept in `status.analysis`.
pub const ANALYSIS_LOG_LEN: usize = 20;
/// How soon to look again while waiting for the cluster (pods, rollouts, read-back).
pub const CLUSTER_RETRY: StdDuration = StdDuration::from_secs(5);
/// How soon to look again when something the spec names is missing.
pub const MISSING_RETRY: StdDuration = StdDuration::from_secs(30);
/// Ready's reason while the rollout holds for a stable side with no ready pods.
const STABLE_NOT_READY: &str = "StableNotReady";

/// What must be gathered (checks run, hooks called) before [`step`] can decide.
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
            match ts(&status.step_started_at) {
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
        machine.say(
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
    failure: Option<(&'static str, String)>,
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
            self.say(format!("{}", self.phase()));
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

    fn say(&mut self, message: String) {
        // One line, whatever a provider or hook put in its error text.
        self.status.message = Some(message.replace(['\n', '\r'], " "));
    }

    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.events.push(Event {
            warning,
            reason: reason.to_owned(),
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

    /// Writes label and `paused` in one conditional apply, only when they differ, and at most once
    /// per decision (a second write with the same resourceVersion would fail with 409).
    fn set_target(&mut self, target: &TargetState, labelled: bool, paused: bool) {
        let written = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetTarget { .. }));
        if written || (target.labelled == labelled && target.paused == paused) {
            return;
        }
        self.actions.push(Action::SetTarget {
            resource_version: target.resource_version.clone(),
            labelled,
            paused,
            starts_clock: None,
        });
    }

    fn route(&mut self, resolved: &Resolved, weight: i32) {
        match &resolved.router {
            Router::ReplicaRatio => {}
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service => {
                let matches = match &resolved.strategy {
                    Strategy::AbTesting { matches, .. } if weight < 100 => matches.clone(),
                    Strategy::AbTesting { .. }
                    | Strategy::Canary { .. }
                    | Strategy::BlueGreen { .. } => Vec::new(),
                };
                self.actions.push(Action::SetRoute {
                    canary_weight: weight,
                    matches,
                    starts_clock: None,
                });
            }
        }
    }

    /// Sends all traffic back to stable: weight 0 and, for A/B, no header match either (a match
    /// left in place would keep sending its requests to a canary that is being scaled down).
    fn route_to_stable(&mut self, resolved: &Resolved) {
        match &resolved.router {
            Router::ReplicaRatio => {}
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service => self.actions.push(Action::SetRoute {
                canary_weight: 0,
                matches: Vec::new(),
                starts_clock: None,
            }),
        }
    }

    fn scale_down(&mut self) {
        if self
            .observed
            .canary
            .as_ref()
            .is_some_and(|c| c.replicas > 0)
        {
            self.actions.push(Action::ScaleCanary {
                replicas: 0,
                starts_clock: None,
            });
        }
    }

    /// Moves the canary to `weight`: sizes it, then routes (or, with no router, sizes it to the
    /// replica ratio). Callers have checked that the canary is ready (I1).
    fn set_traffic(&mut self, resolved: &Resolved, target: &TargetState, weight: i32) {
        let replicas = canary_replicas(resolved, target, weight);
        let current = self.observed.canary.as_ref().map_or(0, |c| c.replicas);
        match &resolved.router {
            Router::ReplicaRatio => {
                if current != replicas {
                    self.actions.push(Action::ScaleCanary {
                        replicas,
                        starts_clock: None,
                    });
                }
            }
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service => {
                if current < replicas {
                    self.actions.push(Action::ScaleCanary {
                        replicas,
                        starts_clock: None,
                    });
                }
                self.route(resolved, weight);
            }
        }
        self.status.canary_weight = weight;
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

    // ---- Phases -------------------------------------------------------------------------------

    /// First sight: the current template is adopted as stable without analysis.
    fn initialize(&mut self, resolved: &Resolved, target: &TargetState) {
        if self.status.stable_revision.is_none() {
            // The canary Service belongs to the Canary, not to a rollout: written here once, a
            // rollout finds it in place.
            if self.observed.canary_service == super::CanaryServiceState::Stale {
                self.actions.push(Action::ApplyCanaryService);
            }
            self.status.stable_revision = Some(target.revision.clone());
            self.status.revision = Some(target.revision.clone());
            self.event(
                false,
                "Initialized",
                format!(
                    "adopted revision {} of Deployment {} as stable",
                    target.revision, resolved.target
                ),
            );
        }
        self.status.phase = Some(Phase::Idle);
        self.at_rest(resolved, target);
    }

    fn at_rest(&mut self, resolved: &Resolved, target: &TargetState) {
        for (_, failure) in self.record_hooks(&[HookType::PostRollout, HookType::Rollback]) {
            // Informational: a failure is told, never acted on.
            self.event(true, "HookFailed", failure);
        }
        let Some(stable) = self.status.stable_revision.clone() else {
            self.initialize(resolved, target);
            return;
        };
        if target.revision == stable {
            self.converge_at_rest(resolved, target, self.hold_paused_at_rest());
            let phase = self.phase();
            self.say(match phase {
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
            self.say(format!(
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
    fn start(&mut self, resolved: &Resolved, target: &TargetState) {
        let pausing = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetTarget { paused: true, .. }));
        if !target.paused && !pausing {
            self.set_target(target, true, true);
            self.event(
                true,
                "TemplateNotHeld",
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
        if self.observed.canary_service != super::CanaryServiceState::Current {
            self.actions.push(Action::ApplyCanaryService);
        }
        let from = self.actions.len();
        self.actions.push(Action::ApplyCanary {
            revision: revision.clone(),
            replicas,
            starts_clock: None,
        });
        // The progress deadline counts from the canary's creation.
        self.start_clock(super::Clock::Revision, from);
        self.event(
            false,
            "CanaryStarted",
            format!(
                "revision {revision} started beside stable revision {} with {replicas} canary replicas",
                self.status.stable_revision.clone().unwrap_or_default()
            ),
        );
        self.say(format!(
            "revision {revision}: waiting for the canary to be ready"
        ));
        self.requeue_in(CLUSTER_RETRY);
    }

    fn progressing(&mut self, resolved: &Resolved, target: &TargetState) {
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
            self.say(format!(
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
                self.start_clock(super::Clock::Step, from);
                self.event(
                    false,
                    "TrafficRestored",
                    format!("revision {revision}: {want}% of traffic to the canary again"),
                );
            }
            self.say(format!(
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
            self.say(format!(
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
            "StepAdvanced",
            format!(
                "revision {revision}: step {}/{}: {weight}% of traffic to the canary (the route carried it already: the write before a restart)",
                next + 1,
                self.status.step_count
            ),
        );
    }

    /// Keeps the canary at its share of the target's capacity when the target's replicas change
    /// mid-step (an HPA, a person, a scale to zero): sized for the weight the step carries, as
    /// [`canary_replicas`] sizes it. Only its replicas change, never the weight or the step's
    /// clock. Left to the decision's own sizing when it already resizes the canary (a new step,
    /// a rollback), and to the next decision when it leaves the steps.
    fn follow_target_size(&mut self, resolved: &Resolved, target: &TargetState) {
        let resized = self.actions.iter().any(|a| {
            matches!(
                a,
                Action::ScaleCanary { .. } | Action::ApplyCanary { .. } | Action::DeleteCanary
            )
        });
        if resized || self.phase() != Phase::Progressing {
            return;
        }
        let Some(canary) = &self.observed.canary else {
            return;
        };
        let replicas = canary_replicas(resolved, target, step_weight(resolved, &self.status));
        if canary.replicas > 0 && canary.replicas != replicas {
            self.actions.push(Action::ScaleCanary {
                replicas,
                starts_clock: None,
            });
        }
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
                "StableNotReady",
                format!("revision {revision}: {words}"),
            );
        }
        self.not_ready = Some(STABLE_NOT_READY);
        self.say(format!("revision {revision}: {words}"));
        self.requeue_in(CLUSTER_RETRY);
    }

    fn progress_words(&self, resolved: &Resolved) -> String {
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

    /// The template of a canary phase must stay held; anything else is a race to correct at once.
    fn keep_held(&mut self, target: &TargetState) {
        if !target.paused || !target.labelled {
            self.set_target(target, true, true);
            if !target.paused {
                self.event(
                    true,
                    "TemplateNotHeld",
                    format!(
                        "the target was unpaused while revision {} is analysed; pausing it again",
                        target.revision
                    ),
                );
            }
        }
    }

    fn ensure_canary(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let stale =
            self.observed.canary.as_ref().is_none_or(|c| {
                c.revision.as_deref() != Some(revision.as_str()) || c.replicas == 0
            });
        if stale {
            self.actions.push(Action::ApplyCanary {
                revision,
                replicas: canary_replicas(resolved, target, first_weight(resolved)),
                starts_clock: None,
            });
        }
    }

    fn before_traffic(&mut self, resolved: &Resolved, target: &TargetState, ready: bool) {
        let revision = self.revision();
        if !ready {
            let deadline = after(
                ts(&self.status.revision_started_at).unwrap_or(self.now),
                resolved.progress_deadline,
            );
            if self.now >= deadline {
                self.rollback(
                    resolved,
                    target,
                    "ProgressDeadlineExceeded",
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
            self.say(format!(
                "revision {revision}: waiting for the canary to be ready ({ready_pods} ready pods); deadline {deadline}"
            ));
            self.requeue_in(CLUSTER_RETRY);
            self.requeue_at(deadline);
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
                self.say(format!(
                    "revision {revision}: waiting for {words} {} to pass",
                    pending.join(", ")
                ));
                let next = after(
                    ts(&self.status.last_check_at).unwrap_or(self.now),
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
        self.start_clock(super::Clock::Step, from);
        self.event(
            false,
            "TrafficShifted",
            format!("revision {revision} is ready: {weight}% of traffic to the canary"),
        );
        self.say(format!(
            "revision {revision}: {}",
            self.progress_words(resolved)
        ));
        self.requeue_in(resolved.interval);
    }

    /// Records hook results of `kinds` in status; returns the failures (type and words).
    fn record_hooks(&mut self, kinds: &[HookType]) -> Vec<(HookType, String)> {
        let revision = self.revision();
        let mut failed = Vec::new();
        let results: Vec<_> = self
            .observed
            .hooks
            .iter()
            .filter(|h| kinds.contains(&h.hook_type))
            .cloned()
            .collect();
        for result in results {
            if !result.passed {
                failed.push((
                    result.hook_type,
                    format!("hook {} failed: {}", result.name, result.message),
                ));
            }
            self.status.hooks.retain(|h| h.name != result.name);
            self.status.hooks.push(HookRecord {
                name: result.name.clone(),
                revision: revision.clone(),
                step: self.status.step_index,
                passed: result.passed,
                message: (!result.message.is_empty()).then(|| result.message.clone()),
                time: Time(self.now),
            });
            self.status.last_check_at = Some(Time(self.now));
        }
        failed
    }

    /// Counts a failed check; rolls back at the threshold. Returns whether it rolled back.
    fn count_failure(&mut self, resolved: &Resolved, target: &TargetState, why: &str) -> bool {
        self.status.failed_checks += 1;
        let revision = self.revision();
        if self.status.failed_checks >= resolved.threshold {
            self.rollback(
                resolved,
                target,
                "AnalysisFailed",
                format!(
                    "{} failed checks reached the threshold {}: {why}",
                    self.status.failed_checks, resolved.threshold
                ),
            );
            return true;
        }
        self.event(
            true,
            "CheckFailed",
            format!(
                "revision {revision}: failed check {}/{}: {why}",
                self.status.failed_checks, resolved.threshold
            ),
        );
        self.say(format!(
            "revision {revision}: failed check {}/{} ({why})",
            self.status.failed_checks, resolved.threshold
        ));
        false
    }

    fn judge_checks(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let results = self.observed.checks.clone().unwrap_or_default();
        // A query the provider refused is a spec error, not a measurement to wait out.
        let rejected: Vec<RejectedQuery> = resolved
            .metrics
            .iter()
            .filter_map(|metric| {
                let result = results.iter().find(|r| r.metric == metric.name)?;
                let reason = [
                    Some(&result.canary),
                    result.stable.as_ref(),
                    result.canary_total.as_ref(),
                    result.stable_total.as_ref(),
                ]
                .into_iter()
                .flatten()
                .find_map(|sample| match sample {
                    Sample::Invalid(reason) => Some(reason.clone()),
                    _ => None,
                })?;
                Some(RejectedQuery {
                    metric: metric.name.clone(),
                    query: query_fingerprint(metric),
                    reason,
                })
            })
            .collect();
        if !rejected.is_empty() {
            self.status.rejected_queries = rejected;
            let errors = refused_queries(resolved, &self.status);
            self.invalid(&errors);
            return;
        }
        let mut failures = Vec::new();
        let mut unknowns = Vec::new();
        for metric in &resolved.metrics {
            let record = match results.iter().find(|r| r.metric == metric.name) {
                Some(result) => verdict::check_record(
                    metric,
                    result,
                    &revision,
                    self.status.step_index,
                    self.now,
                ),
                None => crate::api::CheckRecord {
                    metric: metric.name.clone(),
                    revision: revision.clone(),
                    step: self.status.step_index,
                    query: None,
                    value: None,
                    stable_value: None,
                    limit: None,
                    verdict: Verdict::Unknown,
                    reason: Some("no result was gathered for this metric".into()),
                    time: Time(self.now),
                },
            };
            let words = format!(
                "{} = {} (limit {}): {}",
                record.metric,
                record.value.map_or("none".to_owned(), |v| v.to_string()),
                record.limit.clone().unwrap_or_else(|| "none".into()),
                record.reason.clone().unwrap_or_default()
            );
            match record.verdict {
                Verdict::Pass => {}
                Verdict::Fail => failures.push(words),
                Verdict::Unknown => unknowns.push(words),
            }
            self.status.analysis.push(record);
        }
        for (_, words) in self.record_hooks(&[HookType::Rollout]) {
            failures.push(words);
        }
        // A rollout hook is part of the check: one that could not be called (the controller had
        // too many calls in flight) leaves the check Unknown, never passing.
        for name in hooks_of(resolved, HookType::Rollout) {
            if !self.observed.hooks.iter().any(|h| h.name == name) {
                unknowns.push(format!("hook {name} was not called"));
            }
        }
        self.status.last_check_at = Some(Time(self.now));
        if resolved.skip_analysis {
            failures.clear();
            unknowns.clear();
        }
        if !failures.is_empty() {
            if !self.count_failure(resolved, target, &failures.join("; ")) {
                self.requeue_at(next_check_at(resolved, &self.status));
            }
            return;
        }
        if !unknowns.is_empty() {
            let since = ts(&self.status.unknown_since).unwrap_or(self.now);
            self.status.unknown_since = Some(Time(since));
            let deadline = after(since, resolved.unknown_deadline);
            let why = unknowns.join("; ");
            if self.now >= deadline {
                match resolved.on_unknown_deadline {
                    UnknownOutcome::Rollback => self.rollback(
                        resolved,
                        target,
                        "UnknownDeadlineExceeded",
                        format!(
                            "checks stayed Unknown for {}: {why}",
                            crate::api::Duration(resolved.unknown_deadline)
                        ),
                    ),
                    UnknownOutcome::Pause => {
                        self.status.paused = true;
                        self.status.phase = Some(Phase::Paused);
                        self.event(
                            true,
                            "UnknownDeadlinePaused",
                            format!("revision {revision}: checks stayed Unknown past the deadline; paused until a person acts: {why}"),
                        );
                        self.say(format!(
                            "revision {revision}: paused, checks stayed Unknown past the deadline ({why})"
                        ));
                    }
                }
                return;
            }
            self.event(
                true,
                "CheckUnknown",
                format!("revision {revision}: cannot judge, holding: {why}"),
            );
            self.say(format!(
                "revision {revision}: holding on Unknown since {since} ({why})"
            ));
            self.requeue_at(next_check_at(resolved, &self.status));
            self.requeue_at(deadline);
            return;
        }
        self.status.unknown_since = None;
        self.passed_check(resolved, target);
    }

    fn passed_check(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let step_end = after(
            ts(&self.status.step_started_at).unwrap_or(self.now),
            resolved.interval,
        );
        if self.now < step_end {
            // I4: a check can pass early (a restarted clock), the step still lasts an interval.
            self.say(format!(
                "revision {revision}: check passed; the step lasts until {step_end}"
            ));
            self.requeue_at(step_end);
            return;
        }
        match &resolved.strategy {
            Strategy::Canary { step_weights } => match next_step(step_weights, &self.status) {
                Some(next) => self.advance(resolved, target, next, step_weights[next]),
                None => self.analysis_complete(resolved, target),
            },
            Strategy::BlueGreen { iterations } | Strategy::AbTesting { iterations, .. } => {
                self.status.iterations += 1;
                if self.status.iterations >= *iterations {
                    if matches!(resolved.strategy, Strategy::BlueGreen { .. }) {
                        self.set_traffic(resolved, target, 100);
                        self.event(
                            false,
                            "TrafficSwitched",
                            format!("revision {revision}: all traffic switched to the canary"),
                        );
                    }
                    self.analysis_complete(resolved, target);
                } else {
                    self.event(
                        false,
                        "CheckPassed",
                        format!(
                            "revision {revision}: {}/{iterations} passing checks",
                            self.status.iterations
                        ),
                    );
                    self.say(format!(
                        "revision {revision}: {}",
                        self.progress_words(resolved)
                    ));
                    self.requeue_at(next_check_at(resolved, &self.status));
                }
            }
        }
    }

    fn advance(&mut self, resolved: &Resolved, target: &TargetState, next: usize, weight: i32) {
        self.status.step_index = i32::try_from(next).unwrap_or(i32::MAX);
        let from = self.actions.len();
        self.set_traffic(resolved, target, weight);
        self.start_clock(super::Clock::Step, from);
        let revision = self.revision();
        self.event(
            false,
            "StepAdvanced",
            format!(
                "revision {revision}: step {}/{}: {weight}% of traffic to the canary",
                next + 1,
                self.status.step_count
            ),
        );
        self.say(format!(
            "revision {revision}: {}",
            self.progress_words(resolved)
        ));
        self.requeue_in(resolved.interval);
    }

    fn analysis_complete(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        if resolved.manual_promotion || !hooks_of(resolved, HookType::ConfirmPromotion).is_empty() {
            self.status.phase = Some(Phase::WaitingPromotion);
            self.event(
                false,
                "WaitingPromotion",
                format!("revision {revision} passed every step; waiting for promotion"),
            );
            self.say(format!(
                "revision {revision}: analysis passed; waiting for {}",
                if resolved.manual_promotion {
                    "`kubectl sluice promote`"
                } else {
                    "the confirm-promotion gate"
                }
            ));
            self.requeue_in(CLUSTER_RETRY);
            return;
        }
        self.begin_promotion(target, "analysis passed every step");
    }

    fn waiting_promotion(&mut self, resolved: &Resolved, target: &TargetState) {
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
            self.say(format!(
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
            self.say(format!(
                "revision {revision}: waiting for confirm-promotion gate {}",
                gates.join(", ")
            ));
            self.requeue_at(after(
                ts(&self.status.last_check_at).unwrap_or(self.now),
                resolved.interval,
            ));
        } else {
            self.say(format!(
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
    fn begin_promotion(&mut self, target: &TargetState, why: &str) {
        let revision = self.revision();
        self.status.phase = Some(Phase::Promoting);
        let from = self.actions.len();
        self.set_target(target, true, false);
        // The promotion's clock (the progress deadline) starts when the target is released.
        self.start_clock(super::Clock::Step, from);
        self.event(
            false,
            "PromotionStarted",
            format!("revision {revision}: {why}; the stable Deployment rolls it out"),
        );
        self.say(format!(
            "revision {revision}: promoting (the stable Deployment rolls it out)"
        ));
        self.requeue_in(CLUSTER_RETRY);
    }

    fn promoting(&mut self, resolved: &Resolved, target: &TargetState) {
        if Some(&target.revision) != self.status.revision.as_ref() {
            self.changed_template(resolved, target);
            return;
        }
        let revision = self.revision();
        if target.paused || !target.labelled {
            self.set_target(target, true, false);
            self.say(format!(
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
            ts(&self.status.step_started_at).unwrap_or(self.now),
            resolved.progress_deadline,
        );
        if self.now >= deadline {
            self.promotion_late = true;
            let already = conditions::find(&self.status.conditions, condition::PROGRESSING)
                .is_some_and(|c| c.reason == "PromotionDeadlineExceeded");
            if !already {
                self.event(
                    true,
                    "PromotionDeadlineExceeded",
                    format!("revision {revision}: the stable Deployment has not finished rolling out within {}; still waiting", crate::api::Duration(resolved.progress_deadline)),
                );
            }
        }
        self.say(format!(
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
            "Promoted",
            format!("revision {revision} promoted: the stable Deployment serves it"),
        );
        self.say(format!("revision {revision} promoted and serving"));
    }

    /// Traffic to stable first, then the canary off; the rejected template stays held.
    fn rollback(
        &mut self,
        resolved: &Resolved,
        target: &TargetState,
        reason: &'static str,
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
            "RolledBack",
            format!("revision {revision} rolled back ({reason}): {why}"),
        );
        self.say(format!("revision {revision} rolled back: {why}"));
        self.failure = Some((reason, why));
    }

    fn changed_template(&mut self, resolved: &Resolved, target: &TargetState) {
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
                "TemplateReverted",
                format!("the template is back at stable revision {new}; the canary of {old} ended"),
            );
            self.say(format!(
                "idle on stable revision {new} (canary of {old} ended)"
            ));
            return;
        }
        if self.phase() == Phase::Promoting && !target.paused {
            self.set_target(target, true, true);
            self.event(
                true,
                "TemplateChangedDuringPromotion",
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
                "Superseded",
                format!("revision {old} superseded by {new}, which failed before and stays held"),
            );
            self.say(format!(
                "revision {new} failed before and is held; retry it or push a new revision"
            ));
            return;
        }
        self.event(
            false,
            "Superseded",
            format!("revision {old} superseded by {new}"),
        );
        self.start(resolved, target);
    }

    /// Takes all traffic off a canary that has no ready pods (I1): its weight and, for A/B, the
    /// header match that sends requests to it even at weight 0. Returns whether it carried any.
    fn withdraw_traffic(&mut self, resolved: &Resolved) -> bool {
        if self.status.canary_weight == 0 && !self.observed.router.matched {
            return false;
        }
        let revision = self.revision();
        self.route_to_stable(resolved);
        self.status.canary_weight = 0;
        self.event(
            true,
            "CanaryNotReady",
            format!("the canary of revision {revision} has no ready pods; its traffic goes back to stable"),
        );
        true
    }

    fn paused(&mut self, resolved: &Resolved) {
        let revision = self.revision();
        // Nothing moves, except traffic off a canary that lost its ready pods (I1); resuming puts
        // it back with a fresh step clock.
        if !canary_ready(&self.status, self.observed) && self.withdraw_traffic(resolved) {
            self.say(format!(
                "revision {revision}: paused, and the canary has no ready pods: traffic is back on stable until `kubectl sluice resume`"
            ));
            self.requeue_in(CLUSTER_RETRY);
            return;
        }
        self.say(format!(
            "revision {revision}: paused; nothing moves until `kubectl sluice resume`"
        ));
    }

    // ---- Commands -----------------------------------------------------------------------------

    /// Answers a pending command. Returns true when the command decided this reconcile.
    fn command(&mut self, resolved: &Resolved, target: &TargetState) -> bool {
        let Some(command) = self.status.command.clone() else {
            return false;
        };
        let answered = self
            .status
            .acknowledged_command
            .as_ref()
            .is_some_and(|ack| {
                same_second(&ack.requested_at, &command.requested_at)
                    && ack.action == command.action
                    && ack.revision == command.revision
            });
        if answered {
            return false;
        }
        let phase = self.phase();
        let current = self.revision();
        let rollout_revision = self.status.revision.clone();
        let wrong_revision =
            |named: Option<&String>| named.map(String::as_str) != Some(command.revision.as_str());
        let refusal: Option<String> = match command.action {
            CommandAction::Retry => {
                if wrong_revision(self.status.failed_revision.as_ref()) || phase != Phase::Failed {
                    Some(format!(
                        "retry names revision {}, but the failed revision is {}",
                        command.revision,
                        self.status
                            .failed_revision
                            .clone()
                            .unwrap_or_else(|| "none".into())
                    ))
                } else if target.revision != command.revision {
                    Some(format!(
                        "the target's template is now revision {}, not {}",
                        target.revision, command.revision
                    ))
                } else {
                    None
                }
            }
            CommandAction::Promote
            | CommandAction::PromoteFull
            | CommandAction::Abort
            | CommandAction::Pause
            | CommandAction::Resume
            | CommandAction::Skip => {
                if wrong_revision(rollout_revision.as_ref()) || target.revision != command.revision
                {
                    Some(format!(
                        "the command names revision {}, but the rollout is at revision {current}",
                        command.revision
                    ))
                } else {
                    self.refusal_for_phase(command.action, phase, resolved)
                }
            }
        };
        let accepted = refusal.is_none();
        let message = refusal.unwrap_or_else(|| format!("{:?} accepted", command.action));
        self.status.acknowledged_command = Some(CommandAck {
            action: command.action,
            revision: command.revision.clone(),
            requested_at: command.requested_at.clone(),
            accepted,
            message: message.clone(),
        });
        if !accepted {
            self.event(
                true,
                "CommandRefused",
                format!(
                    "{:?} for revision {} refused: {message}",
                    command.action, command.revision
                ),
            );
            return false;
        }
        self.event(
            false,
            "CommandAccepted",
            format!(
                "{:?} for revision {} accepted",
                command.action, command.revision
            ),
        );
        match command.action {
            CommandAction::Promote => false,
            CommandAction::PromoteFull => {
                self.status.paused = false;
                self.begin_promotion(
                    target,
                    "a person promoted it with --full, skipping analysis",
                );
                true
            }
            CommandAction::Abort => {
                self.rollback(resolved, target, "Aborted", "aborted by a person".into());
                true
            }
            CommandAction::Retry => {
                self.status.failed_revision = None;
                self.start(resolved, target);
                true
            }
            CommandAction::Pause => {
                self.status.paused = true;
                self.status.phase = Some(Phase::Paused);
                self.event(
                    false,
                    "Paused",
                    format!("revision {current}: paused by a person"),
                );
                self.paused(resolved);
                true
            }
            CommandAction::Resume => {
                self.status.paused = false;
                self.status.phase = Some(Phase::Progressing);
                self.status.unknown_since = None;
                if self.status.step_started_at.is_some() {
                    self.status.step_started_at = Some(Time(self.now));
                }
                self.event(false, "Resumed", format!("revision {current}: resumed"));
                false
            }
            CommandAction::Skip => {
                let Strategy::Canary { step_weights } = &resolved.strategy else {
                    return false;
                };
                match next_step(step_weights, &self.status) {
                    Some(next) => self.advance(resolved, target, next, step_weights[next]),
                    None => self.analysis_complete(resolved, target),
                }
                true
            }
        }
    }

    fn refusal_for_phase(
        &self,
        action: CommandAction,
        phase: Phase,
        resolved: &Resolved,
    ) -> Option<String> {
        let allowed: &[Phase] = match action {
            CommandAction::Promote => &[Phase::WaitingPromotion],
            CommandAction::PromoteFull => {
                &[Phase::Progressing, Phase::WaitingPromotion, Phase::Paused]
            }
            CommandAction::Abort => &[
                Phase::Progressing,
                Phase::WaitingPromotion,
                Phase::Promoting,
                Phase::Paused,
            ],
            CommandAction::Pause => &[Phase::Progressing, Phase::WaitingPromotion],
            CommandAction::Resume => &[Phase::Paused],
            CommandAction::Skip => &[Phase::Progressing],
            CommandAction::Retry => &[Phase::Failed],
        };
        if !allowed.contains(&phase) {
            return Some(format!("{action:?} does not apply in phase {phase}"));
        }
        if action == CommandAction::Skip {
            if !matches!(resolved.strategy, Strategy::Canary { .. }) {
                return Some("skip applies to weighted canary steps only".into());
            }
            if self.status.step_started_at.is_none() || !canary_ready(&self.status, self.observed) {
                return Some("the canary carries no traffic yet; nothing to skip".into());
            }
        }
        None
    }

    // ---- Outside the phases --------------------------------------------------------------------

    fn opt_out(&mut self) {
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
            "OptedOut",
            "traffic back to stable, the canary removed and the target released".into(),
        );
        self.say("opting out: traffic to stable, canary removed, target released".into());
    }

    fn invalid(&mut self, errors: &[FieldError]) {
        let words: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let words = words.join("; ");
        if self.phase() != Phase::Invalid {
            self.event(
                true,
                "InvalidSpec",
                format!("the spec cannot be acted on: {words}"),
            );
        }
        self.status.phase = Some(Phase::Invalid);
        let generation = self.observed.generation;
        let revision = self.status.revision.clone();
        for (type_, status, reason) in [
            (condition::INVALID_SPEC, Status::True, "InvalidSpec"),
            (condition::READY, Status::False, "InvalidSpec"),
        ] {
            conditions::merge(
                &mut self.status.conditions,
                Update {
                    type_,
                    status,
                    reason,
                    message: &words,
                    revision: revision.as_deref(),
                },
                generation,
                self.now,
            );
        }
        self.say(format!("invalid spec, live traffic left as it is: {words}"));
    }

    fn recover_from_invalid(&mut self) {
        let status = &mut self.status;
        let phase = match (&status.stable_revision, &status.revision) {
            (None, _) => Phase::Initializing,
            (Some(_), revision) if revision.is_some() && *revision == status.failed_revision => {
                Phase::Failed
            }
            (Some(stable), Some(revision)) if stable != revision => Phase::Progressing,
            (Some(_), Some(_) | None) => Phase::Idle,
        };
        if phase == Phase::Progressing && status.step_started_at.is_some() {
            // The step's clock starts again: the spec that judged it may have changed.
            status.step_started_at = Some(Time(self.now));
        }
        status.phase = Some(phase);
        self.event(
            false,
            "SpecFixed",
            format!("the spec is valid again; continuing in phase {phase}"),
        );
    }

    /// The target Deployment is not there: not created yet, or deleted. What sluice made for it
    /// goes, and only that: its entry in the user's route first (no request is left routed to a
    /// canary being deleted), then the canary Deployment and Service. A rollout in flight cannot
    /// be promoted any more and ends as failed, its revision held like a rolled-back one.
    fn target_missing(&mut self, resolved: &Resolved) {
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
            self.event(true, "TargetDeleted", format!("revision {revision}: {why}"));
            self.say(format!(
                "revision {revision} failed: {why}; waiting for a Deployment {}",
                resolved.target
            ));
            self.failure = Some(("TargetDeleted", why));
            return;
        }
        if self.status.phase.is_none() {
            self.status.phase = Some(Phase::Initializing);
        }
        self.say(format!(
            "target Deployment {} not found; waiting for it",
            resolved.target
        ));
    }

    /// Ready, Progressing, Promoted, Failed and InvalidSpec from the phase, each naming the
    /// revision and the generation.
    /// `not_ready` is the reason Ready is False, if it is.
    fn conditions(&mut self, not_ready: Option<&str>) {
        let phase = self.phase();
        let revision = self.status.revision.clone();
        let message = self.status.message.clone().unwrap_or_default();
        let promoted = revision.is_some()
            && revision == self.status.stable_revision
            && matches!(phase, Phase::Idle | Phase::Succeeded);
        let (progressing, progressing_reason) = match phase {
            Phase::Progressing | Phase::WaitingPromotion => (Status::True, phase.as_str()),
            Phase::Promoting if self.promotion_late => (Status::True, "PromotionDeadlineExceeded"),
            Phase::Promoting => (Status::True, phase.as_str()),
            Phase::Paused => (Status::Unknown, phase.as_str()),
            Phase::Initializing
            | Phase::Idle
            | Phase::Succeeded
            | Phase::Failed
            | Phase::Invalid => (Status::False, phase.as_str()),
        };
        let existing_failure = conditions::find(&self.status.conditions, condition::FAILED)
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()));
        let (failed, failed_reason, failed_message) = match (phase, &self.failure, existing_failure)
        {
            (Phase::Failed, Some((reason, why)), _) => {
                (Status::True, (*reason).to_owned(), why.clone())
            }
            // Keep the original cause (its message already names the revision).
            (Phase::Failed, None, Some((reason, message))) => (Status::True, reason, message),
            (Phase::Failed, None, None) => (Status::True, "RolledBack".to_owned(), message.clone()),
            (
                Phase::Initializing
                | Phase::Idle
                | Phase::Progressing
                | Phase::WaitingPromotion
                | Phase::Promoting
                | Phase::Succeeded
                | Phase::Paused
                | Phase::Invalid,
                _,
                _,
            ) => (Status::False, "NotFailed".to_owned(), message.clone()),
        };
        let generation = self.observed.generation;
        let updates = [
            (
                condition::READY,
                Status::from_bool(not_ready.is_none()),
                not_ready.unwrap_or("Ready").to_owned(),
                message.clone(),
            ),
            (
                condition::PROGRESSING,
                progressing,
                progressing_reason.to_owned(),
                message.clone(),
            ),
            (
                condition::PROMOTED,
                Status::from_bool(promoted),
                if promoted { "Promoted" } else { phase.as_str() }.to_owned(),
                if promoted {
                    "promoted; the stable Deployment serves it".to_owned()
                } else {
                    message.clone()
                },
            ),
            (condition::FAILED, failed, failed_reason, failed_message),
            (
                condition::INVALID_SPEC,
                Status::False,
                "Valid".to_owned(),
                "the spec is valid".to_owned(),
            ),
        ];
        for (type_, status, reason, message) in updates {
            conditions::merge(
                &mut self.status.conditions,
                Update {
                    type_,
                    status,
                    reason: &reason,
                    message: &message,
                    revision: revision.as_deref(),
                },
                generation,
                self.now,
            );
        }
    }
}

// ---- Shared predicates (used by both `due` and `step`, so they cannot disagree) -----------------

/// A status with its message, and the conditions' messages that repeat it, left out.
fn without_messages(status: &CanaryStatus) -> CanaryStatus {
    let mut status = status.clone();
    status.message = None;
    for condition in &mut status.conditions {
        condition.message.clear();
    }
    status
}

fn ts(time: &Option<Time>) -> Option<Timestamp> {
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

fn step_count(strategy: &Strategy) -> i32 {
    match strategy {
        Strategy::Canary { step_weights } => i32::try_from(step_weights.len()).unwrap_or(i32::MAX),
        Strategy::BlueGreen { .. } | Strategy::AbTesting { .. } => 1,
    }
}

fn first_weight(resolved: &Resolved) -> i32 {
    match &resolved.strategy {
        Strategy::Canary { step_weights } => step_weights.first().copied().unwrap_or(0),
        Strategy::BlueGreen { .. } | Strategy::AbTesting { .. } => 0,
    }
}

/// The weight the current step gives the canary: the weight it started with (`canaryWeight`),
/// which it keeps until it ends whatever the plan says meanwhile (an edited plan never moves
/// traffic mid-step). With no traffic in place (before the first step, or withdrawn from a canary
/// without ready pods), the plan's weight at the step index, or its last step's.
fn step_weight(resolved: &Resolved, status: &CanaryStatus) -> i32 {
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
fn plan_index(step_weights: &[i32], status: &CanaryStatus) -> i32 {
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
fn next_step(step_weights: &[i32], status: &CanaryStatus) -> Option<usize> {
    if status.canary_weight > 0 {
        return step_weights.iter().position(|w| *w > status.canary_weight);
    }
    let next = usize::try_from(status.step_index.saturating_add(1)).ok()?;
    (next < step_weights.len()).then_some(next)
}

fn canary_replicas(resolved: &Resolved, target: &TargetState, weight: i32) -> i32 {
    match &resolved.strategy {
        Strategy::BlueGreen { .. } | Strategy::AbTesting { .. } => target.replicas.max(1),
        Strategy::Canary { .. } if resolved.router == Router::ReplicaRatio => {
            plan::ratio_replicas(target.replicas, weight)
        }
        Strategy::Canary { .. } => plan::routed_replicas(target.replicas, weight),
    }
}

/// The stable side serves: the target Deployment has ready pods. A rollout in `Progressing`
/// holds while it has none (see [`Machine::hold_for_stable`]).
fn stable_serves(observed: &Observations) -> bool {
    observed
        .target
        .as_ref()
        .is_some_and(|t| t.ready_replicas >= 1)
}

/// The canary has ready pods of the revision being rolled out (I1's precondition).
fn canary_ready(status: &CanaryStatus, observed: &Observations) -> bool {
    observed.canary.as_ref().is_some_and(|c| {
        c.ready_replicas >= 1 && c.revision.is_some() && c.revision == status.revision
    })
}

/// An A/B canary whose header match is not in place (withdrawn while it had no ready pods, or
/// removed by someone else): putting it back restarts the step's clock (I4).
fn withdrawn_match(resolved: &Resolved, observed: &Observations) -> bool {
    matches!(&resolved.strategy, Strategy::AbTesting { matches, .. } if !matches.is_empty())
        && resolved.router != Router::ReplicaRatio
        && !observed.router.matched
}

/// The canary carries `weight` as read back from the cluster (I2), and for A/B its header match.
fn carries(
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
fn next_check_at(resolved: &Resolved, status: &CanaryStatus) -> Timestamp {
    let window = check_window(resolved);
    let started = ts(&status.step_started_at);
    let last = ts(&status.last_check_at).filter(|last| started.is_none_or(|s| *last > s));
    match (last, started) {
        (Some(last), _) => after(last, resolved.interval.max(window)),
        (None, Some(started)) => after(started, resolved.interval.max(window)),
        (None, None) => Timestamp::MIN,
    }
}

/// The longest window any metric's queries read.
fn check_window(resolved: &Resolved) -> StdDuration {
    resolved
        .metrics
        .iter()
        .map(|m| m.window)
        .max()
        .unwrap_or(StdDuration::ZERO)
}

/// A metric's query as the provider refusals remember it: the query and its count query.
fn query_fingerprint(metric: &validate::ResolvedMetric) -> String {
    format!(
        "{}\n\n{}",
        metric.query,
        metric.total_query.as_deref().unwrap_or_default()
    )
}

/// The metrics whose current query the provider has refused (and not been changed since), as
/// spec errors naming each.
fn refused_queries(resolved: &Resolved, status: &CanaryStatus) -> Vec<FieldError> {
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

fn check_due(
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

fn gate_poll_due(resolved: &Resolved, status: &CanaryStatus, now: Timestamp) -> bool {
    ts(&status.last_check_at).is_none_or(|last| now >= after(last, resolved.interval))
}

fn hooks_of(resolved: &Resolved, kind: HookType) -> Vec<String> {
    resolved
        .hooks
        .iter()
        .filter(|h| h.hook_type == kind)
        .map(|h| h.name.clone())
        .collect()
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

/// Hooks of `kinds` without a passing result for the current revision.
fn pending_hooks(resolved: &Resolved, status: &CanaryStatus, kinds: &[HookType]) -> Vec<String> {
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

/// Whether two command times name the same command. A command's `requestedAt` is written by the
/// plugin (possibly with fractional seconds) and echoed in the acknowledgement as a Kubernetes
/// `Time`, which keeps whole seconds: compared exactly, an answered command would look pending
/// forever and be answered again (refused in the next phase) at every reconcile.
fn same_second(a: &Time, b: &Time) -> bool {
    a.0.as_second() == b.0.as_second()
}
