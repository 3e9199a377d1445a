//! Judging a step: recording hook answers, turning check results into verdicts, counting
//! failures against the threshold, holding on Unknown, and what a passing check leads to (the
//! next step, or the end of the analysis).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::predicates::{hooks_of, next_check_at, next_step, query_fingerprint, refused_queries};
use super::{CLUSTER_RETRY, Machine, after, timestamp_of};
use crate::api::{HookRecord, HookType, Phase, RejectedQuery, UnknownOutcome, Verdict};
use crate::core::validate::{Resolved, Strategy};
use crate::core::{Clock, EventReason, FailureReason, MetricResult, Sample, TargetState, verdict};

impl Machine<'_> {
    /// Records hook results of `kinds` in status; returns the failures (type and words).
    pub(super) fn record_hooks(&mut self, kinds: &[HookType]) -> Vec<(HookType, String)> {
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
    pub(super) fn count_failure(
        &mut self,
        resolved: &Resolved,
        target: &TargetState,
        why: &str,
    ) -> bool {
        self.status.failed_checks += 1;
        let revision = self.revision();
        if self.status.failed_checks >= resolved.threshold {
            self.rollback(
                resolved,
                target,
                FailureReason::AnalysisFailed,
                format!(
                    "{} failed checks reached the threshold {}: {why}",
                    self.status.failed_checks, resolved.threshold
                ),
            );
            return true;
        }
        self.event(
            true,
            EventReason::CheckFailed,
            format!(
                "revision {revision}: failed check {}/{}: {why}",
                self.status.failed_checks, resolved.threshold
            ),
        );
        self.set_message(format!(
            "revision {revision}: failed check {}/{} ({why})",
            self.status.failed_checks, resolved.threshold
        ));
        false
    }

    pub(super) fn judge_checks(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let results = self.observed.checks.clone().unwrap_or_default();
        // A query the provider refused is a spec error, not a measurement to wait out.
        let rejected = rejections_in(resolved, &results);
        if !rejected.is_empty() {
            self.status.rejected_queries = rejected;
            let errors = refused_queries(resolved, &self.status);
            self.invalid(&errors);
            return;
        }
        let (mut failures, mut unknowns) = self.record_checks(resolved, &results, &revision);
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
            self.hold_on_unknown(resolved, target, &unknowns);
            return;
        }
        self.status.unknown_since = None;
        self.passed_check(resolved, target);
    }

    /// Records each metric's check of this step in `status.analysis` (a metric with no result is
    /// Unknown); returns the words of the failed ones and of the Unknown ones.
    fn record_checks(
        &mut self,
        resolved: &Resolved,
        results: &[MetricResult],
        revision: &str,
    ) -> (Vec<String>, Vec<String>) {
        let mut failures = Vec::new();
        let mut unknowns = Vec::new();
        for metric in &resolved.metrics {
            let record = match results.iter().find(|r| r.metric == metric.name) {
                Some(result) => verdict::check_record(
                    metric,
                    result,
                    revision,
                    self.status.step_index,
                    self.now,
                ),
                None => crate::api::CheckRecord {
                    metric: metric.name.clone(),
                    revision: revision.to_owned(),
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
        (failures, unknowns)
    }

    /// Holds the step while checks are Unknown, from the first Unknown check until the unknown
    /// deadline; past it, rolls back or pauses as the spec says.
    fn hold_on_unknown(&mut self, resolved: &Resolved, target: &TargetState, unknowns: &[String]) {
        let revision = self.revision();
        let since = timestamp_of(&self.status.unknown_since).unwrap_or(self.now);
        self.status.unknown_since = Some(Time(since));
        let deadline = after(since, resolved.unknown_deadline);
        let why = unknowns.join("; ");
        if self.now >= deadline {
            match resolved.on_unknown_deadline {
                UnknownOutcome::Rollback => self.rollback(
                    resolved,
                    target,
                    FailureReason::UnknownDeadlineExceeded,
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
                        EventReason::UnknownDeadlinePaused,
                        format!("revision {revision}: checks stayed Unknown past the deadline; paused until a person acts: {why}"),
                    );
                    self.set_message(format!(
                        "revision {revision}: paused, checks stayed Unknown past the deadline ({why})"
                    ));
                }
            }
            return;
        }
        self.event(
            true,
            EventReason::CheckUnknown,
            format!("revision {revision}: cannot judge, holding: {why}"),
        );
        self.set_message(format!(
            "revision {revision}: holding on Unknown since {since} ({why})"
        ));
        self.requeue_at(next_check_at(resolved, &self.status));
        self.requeue_at(deadline);
    }

    fn passed_check(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let step_end = after(
            timestamp_of(&self.status.step_started_at).unwrap_or(self.now),
            resolved.interval,
        );
        if self.now < step_end {
            // I4: a check can pass early (a restarted clock), the step still lasts an interval.
            self.set_message(format!(
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
                            EventReason::TrafficSwitched,
                            format!("revision {revision}: all traffic switched to the canary"),
                        );
                    }
                    self.analysis_complete(resolved, target);
                } else {
                    self.event(
                        false,
                        EventReason::CheckPassed,
                        format!(
                            "revision {revision}: {}/{iterations} passing checks",
                            self.status.iterations
                        ),
                    );
                    self.set_message(format!(
                        "revision {revision}: {}",
                        self.progress_words(resolved)
                    ));
                    self.requeue_at(next_check_at(resolved, &self.status));
                }
            }
        }
    }

    pub(super) fn advance(
        &mut self,
        resolved: &Resolved,
        target: &TargetState,
        next: usize,
        weight: i32,
    ) {
        self.status.step_index = i32::try_from(next).unwrap_or(i32::MAX);
        let from = self.actions.len();
        self.set_traffic(resolved, target, weight);
        self.start_clock(Clock::Step, from);
        let revision = self.revision();
        self.event(
            false,
            EventReason::StepAdvanced,
            format!(
                "revision {revision}: step {}/{}: {weight}% of traffic to the canary",
                next + 1,
                self.status.step_count
            ),
        );
        self.set_message(format!(
            "revision {revision}: {}",
            self.progress_words(resolved)
        ));
        self.requeue_in(resolved.interval);
    }

    pub(super) fn analysis_complete(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        if resolved.manual_promotion || !hooks_of(resolved, HookType::ConfirmPromotion).is_empty() {
            self.status.phase = Some(Phase::WaitingPromotion);
            self.event(
                false,
                EventReason::WaitingPromotion,
                format!("revision {revision} passed every step; waiting for promotion"),
            );
            self.set_message(format!(
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
}

/// The metrics whose query the provider refused as invalid in these results, with the reason it
/// gave.
fn rejections_in(resolved: &Resolved, results: &[MetricResult]) -> Vec<RejectedQuery> {
    resolved
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
        .collect()
}
