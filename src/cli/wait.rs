//! The CI gate's decision: given the Canary, its target Deployment and the revision `wait` is
//! bound to, has the rollout of that revision ended, and how?
//!
//! [`assess`] is a pure function of what the watch last saw; the caller re-runs it on every
//! change and stops at the first [`Assessment::Done`]. Binding to a revision is what makes the
//! gate safe right after an image change: the Canary still says `Succeeded` for the previous
//! revision until the controller sees the new template, and a success is only taken when
//! `status.revision` *and* `status.stableRevision` name the bound revision.
//!
//! How the controller's status maps to outcomes (reasons are the `Failed` condition's, written by
//! `core::step`'s rollback and read back as [`FailureReason`]):
//! - `InvalidSpec` condition True (or phase `Invalid`) for the current generation: invalid spec;
//! - target template (or `status.revision`, once the target is gone) moved to another revision:
//!   superseded;
//! - `status.revision` is the bound one and phase `Succeeded`/`Idle` with it stable: promoted;
//! - phase `Failed` for the bound revision: `Aborted` -> aborted, `ProgressDeadlineExceeded` ->
//!   progress deadline, `UnknownDeadlineExceeded` -> unmeasured (rolled back because the checks
//!   stayed Unknown: nothing measured the revision bad), `AnalysisFailed` (failed checks, metric
//!   or hook) -> failed by analysis;
//! - a plain `RolledBack` (the controller holds the revision as failed from an earlier attempt
//!   and no longer records why, e.g. after another revision came and went) and any reason this
//!   version does not know -> failed by analysis: the revision stays rejected until a retry, and
//!   "unmeasured" is only said when the controller says the checks stayed Unknown;
//! - anything else is progress (including `Paused`, whether by a person or by
//!   `onUnknownDeadline: Pause`, and a promotion past its deadline, which the controller keeps
//!   waiting on): the caller's timeout ends those.
//!
//! Must not do I/O or read the clock; the timeout is the caller's.

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use serde::Serialize;

use super::exit::ExitCode;
use super::view::{StepView, target_revision};
use crate::api::names::condition;
use crate::api::{Canary, Phase};
use crate::core::FailureReason;

/// What the gate sees now.
#[derive(Clone, Debug, PartialEq)]
pub enum Assessment {
    /// The rollout of the bound revision ended (or can never end): exit with this.
    Done(Outcome),
    /// Still going; print this line when it differs from the last one.
    Progress(Progress),
}

/// How the wait ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub code: ExitCode,
    /// Why, in words (the controller's message or condition message when there is one).
    pub message: String,
}

/// Where a rollout that has not ended stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub phase: String,
    pub weight: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepView>,
    pub message: String,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} weight {}%", self.phase, self.weight)?;
        if let Some(step) = self.step {
            write!(f, " step {}/{}", step.index, step.count)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The exit code for a `Failed` condition's reason (`None`: a reason this version does not know).
pub fn failure_code(reason: Option<FailureReason>) -> ExitCode {
    let Some(reason) = reason else {
        // A reason from another version: the revision did not pass and stays rejected; only the
        // controller's own word makes it "unmeasured".
        return ExitCode::FailedAnalysis;
    };
    match reason {
        // A person ended the rollout: by `abort`, or by deleting the target Deployment.
        FailureReason::Aborted | FailureReason::TargetDeleted => ExitCode::Aborted,
        FailureReason::ProgressDeadlineExceeded => ExitCode::FailedProgressDeadline,
        // Rolled back because nothing could be measured: no verdict on the revision.
        FailureReason::UnknownDeadlineExceeded => ExitCode::Unmeasured,
        // Failed checks or hooks, and a plain RolledBack (held as failed from an earlier attempt,
        // cause no longer recorded): the revision did not pass and stays rejected.
        FailureReason::AnalysisFailed | FailureReason::RolledBack => ExitCode::FailedAnalysis,
    }
}

/// Judges the rollout of `bound` from the latest `canary` and `target` (`None`: not found).
pub fn assess(canary: Option<&Canary>, target: Option<&Deployment>, bound: &str) -> Assessment {
    let Some(canary) = canary else {
        return done(
            ExitCode::CouldNotAsk,
            "the Canary does not exist (deleted?)",
        );
    };
    let target_revision = target.and_then(target_revision);
    let Some(status) = canary.status.as_ref() else {
        return progress_line(
            "Pending",
            0,
            None,
            "waiting for the controller to see the Canary",
        );
    };
    let message = status.message.clone().unwrap_or_default();
    let current_generation = status.observed_generation.is_some()
        && status.observed_generation == canary.metadata.generation;
    let conditions = &status.conditions;
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);

    let invalid = status.phase == Some(Phase::Invalid)
        || condition(condition::INVALID_SPEC).is_some_and(|c| c.status == "True");
    if invalid && current_generation {
        let why = condition(condition::INVALID_SPEC)
            .map(|c| c.message.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or(message);
        return done(ExitCode::InvalidSpec, &why);
    }

    if let Some(newer) = target_revision.as_deref().filter(|r| *r != bound) {
        return done(
            ExitCode::Superseded,
            &format!("the target's template moved on from revision {bound} to {newer}"),
        );
    }
    let revision = status.revision.as_deref();
    if revision != Some(bound) {
        if target_revision.is_none()
            && let Some(other) = revision
            && status.phase != Some(Phase::Idle)
        {
            return done(
                ExitCode::Superseded,
                &format!("the Canary is rolling out revision {other}, not {bound}"),
            );
        }
        return progress_line(
            &phase_of(status.phase),
            status.canary_weight,
            None,
            &format!("waiting for the controller to pick up revision {bound}"),
        );
    }

    let phase = status.phase.unwrap_or_default();
    match phase {
        Phase::Succeeded | Phase::Idle if status.stable_revision.as_deref() == Some(bound) => done(
            ExitCode::PROMOTED,
            &format!("revision {bound} promoted; the stable Deployment serves it"),
        ),
        Phase::Failed => {
            let failed = condition(condition::FAILED).filter(|c| c.status == "True");
            let reason = failed.map(|c| FailureReason::parse(&c.reason));
            let code = reason.map_or(ExitCode::FailedAnalysis, failure_code);
            let why = failed.map_or(message, |c| c.message.clone());
            // No Failed condition, or the controller's word that the cause is no longer recorded.
            if reason.is_none_or(|r| r == Some(FailureReason::RolledBack)) {
                let held = format!(
                    "revision {bound} is held as failed from an earlier attempt; the cause is no longer recorded on the Canary"
                );
                let why = if why.is_empty() {
                    held
                } else {
                    format!("{why} ({held})")
                };
                return done(code, &why);
            }
            done(code, &why)
        }
        Phase::Initializing
        | Phase::Idle
        | Phase::Succeeded
        | Phase::Progressing
        | Phase::WaitingPromotion
        | Phase::Promoting
        | Phase::Paused
        | Phase::Invalid => {
            let running = matches!(
                phase,
                Phase::Progressing | Phase::WaitingPromotion | Phase::Paused
            );
            let step = (running && status.step_count > 0).then_some(StepView {
                index: status.step_index + 1,
                count: status.step_count,
            });
            progress_line(phase.as_str(), status.canary_weight, step, &message)
        }
    }
}

fn phase_of(phase: Option<Phase>) -> String {
    phase.map_or_else(|| "Pending".to_owned(), |p| p.as_str().to_owned())
}

fn done(code: ExitCode, message: &str) -> Assessment {
    Assessment::Done(Outcome {
        code,
        message: message.to_owned(),
    })
}

fn progress_line(phase: &str, weight: i32, step: Option<StepView>, message: &str) -> Assessment {
    Assessment::Progress(Progress {
        phase: phase.to_owned(),
        weight,
        step,
        message: message.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const OLD: &str = "aaaaaaaaaa";

    fn deployment(image: &str) -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image}]}
                }
            }
        }))
        .expect("deployment parses")
    }

    fn hash(image: &str) -> String {
        target_revision(&deployment(image)).expect("a template")
    }

    fn canary(status: Value) -> Canary {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop", "generation": 1},
            "spec": {"targetRef": {"name": "web"}, "router": {"none": {}}},
            "status": status,
        }))
        .expect("canary parses")
    }

    fn failed(revision: &str, reason: &str) -> Canary {
        canary(json!({
            "phase": "Failed", "observedGeneration": 1, "revision": revision,
            "stableRevision": OLD, "failedRevision": revision,
            "message": "rolled back",
            "conditions": [{"type": "Failed", "status": "True", "reason": reason,
                "message": format!("revision {revision}: why"), "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }))
    }

    fn code(assessment: Assessment) -> Option<ExitCode> {
        match assessment {
            Assessment::Done(outcome) => Some(outcome.code),
            Assessment::Progress(_) => None,
        }
    }

    #[test]
    fn the_previous_release_s_success_does_not_satisfy_a_wait_for_the_new_template() {
        let new = hash("web:2");
        let before_the_controller_saw_it = canary(json!({
            "phase": "Succeeded", "observedGeneration": 1, "revision": OLD, "stableRevision": OLD,
            "conditions": [{"type": "Promoted", "status": "True", "reason": "Promoted",
                "message": "revision aaaaaaaaaa: promoted", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }));
        let assessment = assess(
            Some(&before_the_controller_saw_it),
            Some(&deployment("web:2")),
            &new,
        );
        let Assessment::Progress(progress) = assessment else {
            panic!("took the old success: {assessment:?}");
        };
        assert!(progress.message.contains(&new), "{progress}");
    }

    #[test]
    fn a_promoted_bound_revision_is_promoted() {
        let new = hash("web:2");
        let promoted = canary(json!({
            "phase": "Succeeded", "observedGeneration": 1, "revision": new, "stableRevision": new,
        }));
        assert_eq!(
            code(assess(Some(&promoted), Some(&deployment("web:2")), &new)),
            Some(ExitCode::PROMOTED)
        );
    }

    #[test]
    fn a_revision_still_promoting_is_not_yet_promoted() {
        let new = hash("web:2");
        let promoting = canary(json!({
            "phase": "Promoting", "observedGeneration": 1, "revision": new,
            "stableRevision": hash("web:1"),
        }));
        assert_eq!(
            code(assess(Some(&promoting), Some(&deployment("web:2")), &new)),
            None
        );
    }

    #[test]
    fn each_rollback_reason_has_its_own_exit_code() {
        let new = hash("web:2");
        let table = [
            ("AnalysisFailed", ExitCode::FailedAnalysis),
            ("UnknownDeadlineExceeded", ExitCode::Unmeasured),
            ("RolledBack", ExitCode::FailedAnalysis),
            ("ProgressDeadlineExceeded", ExitCode::FailedProgressDeadline),
            ("Aborted", ExitCode::Aborted),
            ("TargetDeleted", ExitCode::Aborted),
            // A reason from another version of the controller.
            ("SomeFutureReason", ExitCode::FailedAnalysis),
        ];
        for reason in FailureReason::ALL {
            assert!(
                table.iter().any(|(word, _)| *word == reason.as_str()),
                "{reason} has no expected exit code here"
            );
        }
        for (reason, expected) in table {
            assert_eq!(
                code(assess(
                    Some(&failed(&new, reason)),
                    Some(&deployment("web:2")),
                    &new
                )),
                Some(expected),
                "{reason}"
            );
        }
    }

    fn outcome(assessment: Assessment) -> Outcome {
        match assessment {
            Assessment::Done(outcome) => outcome,
            Assessment::Progress(progress) => panic!("still progressing: {progress}"),
        }
    }

    #[test]
    fn an_unknown_failure_reason_is_failed_analysis_with_the_condition_s_message() {
        let new = hash("web:2");
        let ended = outcome(assess(
            Some(&failed(&new, "SomeFutureReason")),
            Some(&deployment("web:2")),
            &new,
        ));
        assert_eq!(ended.code, ExitCode::FailedAnalysis);
        assert_eq!(ended.message, format!("revision {new}: why"));
    }

    #[test]
    fn a_rollback_at_the_unknown_deadline_is_unmeasured_not_failed_analysis() {
        let new = hash("web:2");
        let ended = outcome(assess(
            Some(&failed(&new, "UnknownDeadlineExceeded")),
            Some(&deployment("web:2")),
            &new,
        ));
        assert_eq!(ended.code, ExitCode::Unmeasured);
        assert_ne!(ended.code.code(), ExitCode::FailedAnalysis.code());
        assert_eq!(ended.code.code(), 9);
        assert_eq!(ended.code.name(), "Unmeasured");
        assert_eq!(ended.message, format!("revision {new}: why"));
    }

    #[test]
    fn measured_failures_of_checks_and_hooks_keep_exit_1() {
        let new = hash("web:2");
        let ended = outcome(assess(
            Some(&failed(&new, "AnalysisFailed")),
            Some(&deployment("web:2")),
            &new,
        ));
        assert_eq!(ended.code, ExitCode::FailedAnalysis);
        assert_eq!(ended.code.code(), 1);
        assert_eq!(ended.message, format!("revision {new}: why"));
    }

    #[test]
    fn a_revision_held_failed_from_an_earlier_attempt_exits_1_and_says_the_cause_is_not_recorded() {
        let new = hash("web:2");
        let ended = outcome(assess(
            Some(&failed(&new, "RolledBack")),
            Some(&deployment("web:2")),
            &new,
        ));
        assert_eq!(ended.code, ExitCode::FailedAnalysis);
        assert!(
            ended.message.contains("earlier attempt")
                && ended.message.contains("no longer recorded"),
            "{}",
            ended.message
        );
        // Without any Failed condition at all, the same: rejected, not "unmeasured".
        let bare = canary(json!({
            "phase": "Failed", "observedGeneration": 1, "revision": new,
            "stableRevision": OLD, "failedRevision": new,
        }));
        let ended = outcome(assess(Some(&bare), Some(&deployment("web:2")), &new));
        assert_eq!(ended.code, ExitCode::FailedAnalysis);
        assert!(
            ended
                .message
                .starts_with(&format!("revision {new} is held")),
            "{}",
            ended.message
        );
    }

    #[test]
    fn a_rollout_paused_at_the_unknown_deadline_is_still_progress() {
        let new = hash("web:2");
        // What `onUnknownDeadline: Pause` leaves: phase Paused, weight and step kept, Failed
        // False (the UnknownDeadlinePaused event is not a condition).
        let paused = canary(json!({
            "phase": "Paused", "observedGeneration": 1, "revision": new, "stableRevision": OLD,
            "paused": true, "canaryWeight": 20, "stepIndex": 0, "stepCount": 2,
            "unknownSince": "2026-01-01T00:00:00Z",
            "message": format!("revision {new}: paused, checks stayed Unknown past the deadline (error-rate: no data)"),
            "conditions": [
                {"type": "Failed", "status": "False", "reason": "NotFailed",
                 "message": "paused", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Progressing", "status": "Unknown", "reason": "Paused",
                 "message": "paused", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]
        }));
        let Assessment::Progress(progress) =
            assess(Some(&paused), Some(&deployment("web:2")), &new)
        else {
            panic!("a rollout paused at the unknown deadline ended the wait");
        };
        assert_eq!(progress.phase, "Paused");
        assert_eq!(progress.step, Some(StepView { index: 1, count: 2 }));
        assert!(progress.message.contains("stayed Unknown"), "{progress}");
    }

    #[test]
    fn a_newer_template_on_the_target_supersedes_the_bound_revision() {
        let bound = hash("web:2");
        let progressing = canary(json!({
            "phase": "Progressing", "observedGeneration": 1, "revision": bound, "stableRevision": OLD,
        }));
        assert_eq!(
            code(assess(
                Some(&progressing),
                Some(&deployment("web:3")),
                &bound
            )),
            Some(ExitCode::Superseded)
        );
    }

    #[test]
    fn an_invalid_spec_ends_the_wait_only_once_the_controller_judged_the_current_generation() {
        let bound = hash("web:2");
        let mut invalid = canary(json!({
            "phase": "Invalid", "observedGeneration": 1,
            "conditions": [{"type": "InvalidSpec", "status": "True", "reason": "InvalidSpec",
                "message": "no revision: spec.policyRef: CanaryPolicy \"x\" does not exist",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }));
        let target = deployment("web:2");
        assert_eq!(
            code(assess(Some(&invalid), Some(&target), &bound)),
            Some(ExitCode::InvalidSpec)
        );
        invalid.metadata.generation = Some(2);
        assert_eq!(code(assess(Some(&invalid), Some(&target), &bound)), None);
    }

    #[test]
    fn a_paused_rollout_is_still_progress_with_its_step() {
        let bound = hash("web:2");
        let paused = canary(json!({
            "phase": "Paused", "observedGeneration": 1, "revision": bound, "stableRevision": OLD,
            "paused": true, "canaryWeight": 20, "stepIndex": 0, "stepCount": 2, "message": "paused",
        }));
        let Assessment::Progress(progress) =
            assess(Some(&paused), Some(&deployment("web:2")), &bound)
        else {
            panic!("a paused rollout ended the wait");
        };
        assert_eq!(progress.to_string(), "Paused weight 20% step 1/2: paused");
    }

    #[test]
    fn a_deleted_canary_means_the_gate_could_not_ask() {
        assert_eq!(
            code(assess(None, Some(&deployment("web:2")), "x")),
            Some(ExitCode::CouldNotAsk)
        );
    }

    #[test]
    fn a_canary_without_status_is_waited_for() {
        let bare = canary(Value::Null);
        assert_eq!(
            code(assess(
                Some(&bare),
                Some(&deployment("web:2")),
                &hash("web:2")
            )),
            None
        );
    }
}
