//! What status reports beyond the phase: the conditions every decision sets, and the `Invalid`
//! phase a spec that cannot be acted on puts the rollout in (and leaves once it is fixed).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Machine;
use crate::api::Phase;
use crate::api::names::condition;
use crate::core::conditions::{self, Status, Update};
use crate::core::validate::FieldError;
use crate::core::{EventReason, FailureReason};

impl Machine<'_> {
    /// Ready, Progressing, Promoted, Failed and InvalidSpec from the phase, each naming the
    /// revision and the generation.
    /// `not_ready` is the reason Ready is False, if it is.
    pub(super) fn conditions(&mut self, not_ready: Option<&str>) {
        let phase = self.phase();
        let revision = self.status.revision.clone();
        let message = self.status.message.clone().unwrap_or_default();
        let promoted = revision.is_some()
            && revision == self.status.stable_revision
            && matches!(phase, Phase::Idle | Phase::Succeeded);
        let (progressing, progressing_reason) = self.progressing_condition(phase);
        let (failed, failed_reason, failed_message) = self.failed_condition(phase, &message);
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

    /// The Progressing condition's status and reason in `phase`.
    fn progressing_condition(&self, phase: Phase) -> (Status, &'static str) {
        match phase {
            Phase::Progressing | Phase::WaitingPromotion => (Status::True, phase.as_str()),
            Phase::Promoting if self.promotion_late => (Status::True, "PromotionDeadlineExceeded"),
            Phase::Promoting => (Status::True, phase.as_str()),
            Phase::Paused => (Status::Unknown, phase.as_str()),
            Phase::Initializing
            | Phase::Idle
            | Phase::Succeeded
            | Phase::Failed
            | Phase::Invalid => (Status::False, phase.as_str()),
        }
    }

    /// The Failed condition's status, reason and message in `phase`: the cause this decision
    /// failed for, else the one already recorded, else `message`.
    fn failed_condition(&self, phase: Phase, message: &str) -> (Status, String, String) {
        let existing_failure = conditions::find(&self.status.conditions, condition::FAILED)
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()));
        match (phase, &self.failure, existing_failure) {
            (Phase::Failed, Some((reason, why)), _) => {
                (Status::True, reason.as_str().to_owned(), why.clone())
            }
            // Keep the original cause (its message already names the revision).
            (Phase::Failed, None, Some((reason, message))) => (Status::True, reason, message),
            (Phase::Failed, None, None) => (
                Status::True,
                FailureReason::RolledBack.as_str().to_owned(),
                message.to_owned(),
            ),
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
            ) => (Status::False, "NotFailed".to_owned(), message.to_owned()),
        }
    }

    pub(super) fn invalid(&mut self, errors: &[FieldError]) {
        let words: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let words = words.join("; ");
        if self.phase() != Phase::Invalid {
            self.event(
                true,
                EventReason::InvalidSpec,
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
        self.set_message(format!("invalid spec, live traffic left as it is: {words}"));
    }

    pub(super) fn recover_from_invalid(&mut self) {
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
            EventReason::SpecFixed,
            format!("the spec is valid again; continuing in phase {phase}"),
        );
    }
}
