//! A person's commands (`promote`, `promote --full`, `abort`, `retry`, `pause`, `resume`, `skip`):
//! each answered once, accepted or refused with the reason, and carried out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Machine;
use super::predicates::{canary_ready, next_step};
use crate::api::{Command, CommandAck, CommandAction, Phase};
use crate::core::validate::{Resolved, Strategy};
use crate::core::{EventReason, FailureReason, TargetState};

impl Machine<'_> {
    /// Answers a pending command. Returns true when the command decided this reconcile.
    pub(super) fn command(&mut self, resolved: &Resolved, target: &TargetState) -> bool {
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
        let refusal = self.command_refusal(&command, resolved, target);
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
                EventReason::CommandRefused,
                format!(
                    "{:?} for revision {} refused: {message}",
                    command.action, command.revision
                ),
            );
            return false;
        }
        self.event(
            false,
            EventReason::CommandAccepted,
            format!(
                "{:?} for revision {} accepted",
                command.action, command.revision
            ),
        );
        self.carry_out(command.action, resolved, target)
    }

    /// Why `command` is refused, if it is: it names another revision than the rollout's (or, for
    /// `retry`, than the failed one), or it does not apply in this phase.
    fn command_refusal(
        &self,
        command: &Command,
        resolved: &Resolved,
        target: &TargetState,
    ) -> Option<String> {
        let phase = self.phase();
        let current = self.revision();
        let rollout_revision = self.status.revision.clone();
        let wrong_revision =
            |named: Option<&String>| named.map(String::as_str) != Some(command.revision.as_str());
        match command.action {
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
        }
    }

    /// Carries out an accepted command. Returns true when it decided this reconcile.
    fn carry_out(
        &mut self,
        action: CommandAction,
        resolved: &Resolved,
        target: &TargetState,
    ) -> bool {
        let current = self.revision();
        match action {
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
                self.rollback(
                    resolved,
                    target,
                    FailureReason::Aborted,
                    "aborted by a person".into(),
                );
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
                    EventReason::Paused,
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
                self.event(
                    false,
                    EventReason::Resumed,
                    format!("revision {current}: resumed"),
                );
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
}

/// Whether two command times name the same command. A command's `requestedAt` is written by the
/// plugin (possibly with fractional seconds) and echoed in the acknowledgement as a Kubernetes
/// `Time`, which keeps whole seconds: compared exactly, an answered command would look pending
/// forever and be answered again (refused in the next phase) at every reconcile.
fn same_second(a: &Time, b: &Time) -> bool {
    a.0.as_second() == b.0.as_second()
}
