//! `sluice simulate`: runs the real decision core (`core::due`, `core::step`) against a simulated
//! cluster on a simulated clock, and returns the timeline: every step, check, event and the
//! outcome, with how long it took. Nothing sleeps: the clock jumps to the earliest of the core's
//! requeue time, the next scenario event and the next thing the world does by itself (pods ready,
//! the target rolled), so an hour-long rollout runs in milliseconds.
//!
//! Like the controller, it reconciles again at once when an action changed what it watches. It
//! never decides anything itself: the core decides, the world applies.

pub mod scenario;
pub mod world;

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;

use self::scenario::{Outcome, Scenario};
use self::world::{Happening, World};
use crate::api::{CanaryStatus, CheckRecord, Command, Phase, Verdict};
use crate::core::{self, EventReason};
use crate::dereference::dereference;

/// The scenario run when `sluice simulate` gets no file.
pub const HEALTHY: &str = include_str!("../../../examples/scenarios/healthy.yaml");

/// Where the simulated clock starts (any fixed instant; only differences are shown).
const EPOCH_SECOND: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// Reconciles at one instant before the simulation calls the core stuck.
const MAX_RECONCILES_PER_INSTANT: usize = 50;

/// Everything that happened, in order.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub scenario: String,
    pub description: String,
    pub events: Vec<Entry>,
    /// Each change of the canary's traffic weight.
    pub steps: Vec<StepEntry>,
    pub outcome: OutcomeReport,
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Simulated time since the start, in seconds.
    pub at_seconds: f64,
    /// The same, written as a duration (`7m30s`).
    pub at: String,
    #[serde(flatten)]
    pub what: What,
}

/// What a timeline line says.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum What {
    /// Something the scenario made happen (a new revision, a command, an outage).
    Scenario { message: String },
    /// Something the simulated cluster did by itself.
    Cluster { message: String },
    /// The rollout's phase changed.
    Phase { from: Option<Phase>, to: Phase },
    /// One metric check and the core's verdict.
    Check {
        metric: String,
        step: i32,
        value: Option<f64>,
        stable_value: Option<f64>,
        limit: Option<String>,
        verdict: Verdict,
        reason: Option<String>,
    },
    /// A Kubernetes Event the controller would emit.
    Event {
        reason: EventReason,
        message: String,
        warning: bool,
    },
    /// An action the controller carried out.
    Action { action: String },
    /// An action the cluster refused.
    Refused { action: String, error: String },
    /// The cluster broke one of the design's invariants (I1, I2): a bug in the core.
    Violation { invariant: String, message: String },
}

/// A change of the canary's weight.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepEntry {
    pub at_seconds: f64,
    pub at: String,
    pub weight: i32,
    pub step_index: i32,
    pub step_count: i32,
}

/// How the simulation ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeReport {
    pub outcome: Outcome,
    /// The revision the outcome is about (the last one that arrived).
    pub revision: Option<String>,
    /// When the outcome was reached, since the start.
    pub at_seconds: f64,
    /// How long since the revision arrived.
    pub duration_seconds: f64,
    /// Weight steps taken for the revision.
    pub steps: usize,
    /// Checks run for the revision, and how many failed.
    pub checks: usize,
    pub failed_checks: usize,
    /// Analysis intervals (instants at which checks ran) for the revision.
    pub intervals: usize,
    /// Invariant violations seen during the whole simulation (see the `violation` events).
    pub violations: usize,
    /// The rollout's last phase and message.
    pub phase: Option<Phase>,
    pub message: Option<String>,
    /// One line a newcomer can read.
    pub summary: String,
    /// Whether the scenario's expectation holds (`None` when it has none).
    pub expectation_met: Option<bool>,
    /// The expectation, in words.
    pub expected: Option<String>,
}

/// Runs a scenario to its outcome.
pub fn simulate(scenario: &Scenario) -> Timeline {
    let spec = &scenario.canary.spec;
    // A scenario's lookups never wait: the future is ready at once.
    let Ok(dereferenced) = futures::executor::block_on(dereference(
        scenario,
        spec,
        scenario
            .canary
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default(),
    ));
    let resolution = core::resolve(spec, &dereferenced);
    let resolved = resolution.as_ref().ok();
    let metrics = resolved.map(|r| r.metrics.clone()).unwrap_or_default();
    let hooks = resolved.map(|r| r.hooks.clone()).unwrap_or_default();

    let mut world = World::new(scenario);
    let mut status = CanaryStatus::default();
    let mut recorder = Recorder::default();
    let mut timeline: Vec<_> = scenario.timeline.iter().collect();
    timeline.sort_by_key(|item| item.at);
    let mut next_item = 0;
    let mut outages: Vec<(Duration, bool)> = scenario
        .outages
        .iter()
        .flat_map(|o| [(o.from.as_std(), true), (o.to.as_std(), false)])
        .collect();
    outages.sort_by_key(|(at, _)| *at);
    let mut next_outage = 0;
    let horizon = scenario.horizon();
    let mut latest: Option<(String, Duration)> = None;
    let mut reconciles_now = 0;
    let mut now = Duration::ZERO;

    let outcome = loop {
        for happening in world.advance(now) {
            let message = match happening {
                Happening::CanaryReady { ready } => format!("canary pods ready ({ready})"),
                Happening::TargetRolled { revision } => {
                    format!("target rolled out revision {revision}")
                }
            };
            recorder.push(now, What::Cluster { message });
        }
        while next_outage < outages.len() && outages[next_outage].0 <= now {
            let message = if outages[next_outage].1 {
                "Prometheus becomes unreachable".to_owned()
            } else {
                "Prometheus is reachable again".to_owned()
            };
            recorder.push(now, What::Scenario { message });
            next_outage += 1;
        }
        while next_item < timeline.len() && timeline[next_item].at.as_std() <= now {
            let item = timeline[next_item];
            next_item += 1;
            if let Some(revision) = &item.revision {
                world.new_template(revision);
                latest = Some((revision.clone(), now));
                recorder.reset_for_revision();
                recorder.push(
                    now,
                    What::Scenario {
                        message: format!("new revision {revision} applied to the target"),
                    },
                );
            }
            if let Some(action) = item.command {
                let revision = status
                    .revision
                    .clone()
                    .or_else(|| latest.as_ref().map(|(r, _)| r.clone()))
                    .unwrap_or_default();
                status.command = Some(Command {
                    action,
                    revision: revision.clone(),
                    requested_at: Time(timestamp(now)),
                    requested_by: Some("sluice simulate".into()),
                });
                recorder.push(
                    now,
                    What::Scenario {
                        message: format!("command {action:?} for revision {revision}"),
                    },
                );
            }
        }

        let at = timestamp(now);
        let mut observed = world.observe();
        observed.dereferenced = dereferenced.clone();
        let due = core::due(&resolution, &status, &observed, at);
        if due.checks {
            observed.checks = Some(world.checks(scenario, &metrics));
        }
        observed.hooks = world::hook_results(&due.hooks, &hooks);
        let decision = core::step(&resolution, &status, &observed, at);

        recorder.record_status(now, &status, &decision.status);
        for event in &decision.events {
            recorder.push(
                now,
                What::Event {
                    reason: event.reason,
                    message: event.message.clone(),
                    warning: event.warning,
                },
            );
        }
        let mut changed = false;
        let mut refused = false;
        for action in &decision.actions {
            match world.apply(action) {
                Ok(did) => {
                    changed |= did;
                    recorder.push(
                        now,
                        What::Action {
                            action: describe(action),
                        },
                    );
                    // Checked after every action: the cluster really is in each in-between state.
                    if let Some(message) = world.weight_without_ready_pods() {
                        recorder.violation(now, "I1", message);
                    }
                }
                Err(error) => {
                    recorder.push(
                        now,
                        What::Refused {
                            action: describe(action),
                            error,
                        },
                    );
                    // A refused write is seen by the watch: reconcile again at once.
                    changed = true;
                    refused = true;
                    break;
                }
            }
        }
        let status_changed = decision.status != status;
        status = decision.status;
        let routed = world.route.unwrap_or(0);
        if !refused && routed != status.canary_weight {
            recorder.violation(
                now,
                "I2",
                format!(
                    "the router sends {routed}% to the canary but status says {}%",
                    status.canary_weight
                ),
            );
        }

        let pending = next_item < timeline.len();
        if !pending && let Some(outcome) = settled(&status, latest.as_ref(), &world) {
            break outcome;
        }

        // A write the controller watches, or its own status change, triggers a reconcile now;
        // otherwise the next thing that can change anything.
        let immediate = changed || status_changed;
        let next = if immediate && reconciles_now < MAX_RECONCILES_PER_INSTANT {
            reconciles_now += 1;
            Some(now)
        } else {
            if immediate {
                recorder.push(
                    now,
                    What::Cluster {
                        message: format!(
                            "the core acted {MAX_RECONCILES_PER_INSTANT} times without time passing; waiting for its requeue"
                        ),
                    },
                );
            }
            [
                decision
                    .requeue_after
                    .map(|d| now + d.max(Duration::from_millis(1))),
                timeline.get(next_item).map(|item| item.at.as_std()),
                world.next_happening(),
                outages.get(next_outage).map(|(at, _)| *at),
            ]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min()
        };
        match next {
            Some(next) if next <= horizon => {
                if next > now {
                    reconciles_now = 0;
                }
                now = next;
            }
            Some(_) | None => break unsettled(&status),
        }
    };

    let report = recorder.outcome(scenario, outcome, now, latest.as_ref(), &status);
    Timeline {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        events: recorder.entries,
        steps: recorder.steps,
        outcome: report,
    }
}

/// The outcome, once the rollout of the last revision is over.
fn settled(
    status: &CanaryStatus,
    latest: Option<&(String, Duration)>,
    world: &World,
) -> Option<Outcome> {
    let revision = latest.map(|(r, _)| r.as_str());
    match status.phase? {
        Phase::Succeeded | Phase::Idle => match revision {
            Some(r) if status.stable_revision.as_deref() == Some(r) && world.target.pods == r => {
                Some(Outcome::Promoted)
            }
            Some(_) => None,
            None => Some(Outcome::Idle),
        },
        Phase::Failed => (revision.is_some() && status.failed_revision.as_deref() == revision)
            .then_some(Outcome::RolledBack),
        Phase::Paused => Some(Outcome::Paused),
        Phase::WaitingPromotion => Some(Outcome::WaitingPromotion),
        Phase::Invalid => Some(Outcome::Invalid),
        Phase::Initializing | Phase::Progressing | Phase::Promoting => None,
    }
}

fn unsettled(status: &CanaryStatus) -> Outcome {
    match status.phase {
        Some(Phase::Invalid) => Outcome::Invalid,
        Some(Phase::Paused) => Outcome::Paused,
        Some(Phase::WaitingPromotion) => Outcome::WaitingPromotion,
        Some(
            Phase::Initializing
            | Phase::Idle
            | Phase::Progressing
            | Phase::Promoting
            | Phase::Succeeded
            | Phase::Failed,
        )
        | None => Outcome::Unfinished,
    }
}

fn timestamp(offset: Duration) -> Timestamp {
    let epoch = Timestamp::from_second(EPOCH_SECOND).unwrap_or(Timestamp::UNIX_EPOCH);
    epoch.checked_add(offset).unwrap_or(Timestamp::MAX)
}

fn offset_of(time: &Time) -> Duration {
    let epoch = Timestamp::from_second(EPOCH_SECOND).unwrap_or(Timestamp::UNIX_EPOCH);
    Duration::try_from(time.0.duration_since(epoch)).unwrap_or_default()
}

fn describe(action: &core::Action) -> String {
    match action {
        core::Action::SetTarget {
            labelled, paused, ..
        } => format!(
            "set target {} and {}",
            if *labelled { "labelled" } else { "unlabelled" },
            if *paused { "paused" } else { "unpaused" }
        ),
        core::Action::ApplyCanary {
            revision, replicas, ..
        } => {
            format!("apply canary Deployment of revision {revision} with {replicas} replica(s)")
        }
        core::Action::ScaleCanary { replicas, .. } => {
            format!("scale canary Deployment to {replicas}")
        }
        core::Action::ApplyCanaryService => "apply canary Service".into(),
        core::Action::SetRoute {
            canary_weight,
            matches,
            ..
        } => {
            if matches.is_empty() {
                format!("route {canary_weight}% to the canary")
            } else {
                format!(
                    "route {canary_weight}% and {} request match(es) to the canary",
                    matches.len()
                )
            }
        }
        core::Action::RemoveRoute => "remove the canary route (all traffic to stable)".into(),
        core::Action::DeleteCanary => "delete the canary Deployment and Service".into(),
        core::Action::RemoveFinalizer => "remove the finalizer".into(),
    }
}

/// Collects the timeline while the simulation runs.
#[derive(Default)]
struct Recorder {
    entries: Vec<Entry>,
    steps: Vec<StepEntry>,
    /// Index in `steps` where the current revision's steps begin.
    revision_steps_from: usize,
    checks: usize,
    failed_checks: usize,
    /// Distinct instants at which checks ran for the current revision.
    intervals: usize,
    last_check_at: Option<Duration>,
    violations: usize,
}

impl Recorder {
    fn push(&mut self, at: Duration, what: What) {
        self.entries.push(Entry {
            at_seconds: at.as_secs_f64(),
            at: format_offset(at),
            what,
        });
    }

    fn violation(&mut self, at: Duration, invariant: &str, message: String) {
        self.violations += 1;
        self.push(
            at,
            What::Violation {
                invariant: invariant.to_owned(),
                message,
            },
        );
    }

    fn reset_for_revision(&mut self) {
        self.revision_steps_from = self.steps.len();
        self.checks = 0;
        self.failed_checks = 0;
        self.intervals = 0;
    }

    fn record_status(&mut self, now: Duration, old: &CanaryStatus, new: &CanaryStatus) {
        let fresh: Vec<&CheckRecord> = new
            .analysis
            .iter()
            .filter(|record| !old.analysis.contains(record))
            .collect();
        for record in fresh {
            self.checks += 1;
            if record.verdict == Verdict::Fail {
                self.failed_checks += 1;
            }
            let at = offset_of(&record.time);
            if self.last_check_at != Some(at) {
                self.intervals += 1;
                self.last_check_at = Some(at);
            }
            self.push(
                at,
                What::Check {
                    metric: record.metric.clone(),
                    step: record.step,
                    value: record.value,
                    stable_value: record.stable_value,
                    limit: record.limit.clone(),
                    verdict: record.verdict,
                    reason: record.reason.clone(),
                },
            );
        }
        if old.phase != new.phase
            && let Some(to) = new.phase
        {
            self.push(
                now,
                What::Phase {
                    from: old.phase,
                    to,
                },
            );
        }
        if old.canary_weight != new.canary_weight {
            self.steps.push(StepEntry {
                at_seconds: now.as_secs_f64(),
                at: format_offset(now),
                weight: new.canary_weight,
                step_index: new.step_index,
                step_count: new.step_count,
            });
        }
    }

    fn outcome(
        &self,
        scenario: &Scenario,
        outcome: Outcome,
        now: Duration,
        latest: Option<&(String, Duration)>,
        status: &CanaryStatus,
    ) -> OutcomeReport {
        let since = latest.map_or(Duration::ZERO, |(_, at)| *at);
        let duration = now.saturating_sub(since);
        let steps = self.steps[self.revision_steps_from..]
            .iter()
            .filter(|s| s.weight > 0)
            .count();
        let revision = latest.map(|(r, _)| r.clone());
        let mut summary = match &revision {
            Some(r) => format!(
                "{outcome} revision {r} after {steps} step(s) in {}",
                format_offset(duration)
            ),
            None => format!("{outcome} (no new revision arrived)"),
        };
        if self.checks > 0 {
            let _ = write!(
                summary,
                "; {} analysis interval(s), {} check(s), {} failed",
                self.intervals, self.checks, self.failed_checks
            );
        }
        let (expectation_met, expected) = match &scenario.expect {
            None => (None, None),
            Some(expect) => {
                let in_time = expect
                    .within
                    .is_none_or(|within| duration <= within.as_std());
                let words = match expect.within {
                    Some(within) => format!("{} within {within}", expect.outcome),
                    None => expect.outcome.to_string(),
                };
                (
                    Some(expect.outcome == outcome && in_time && self.violations == 0),
                    Some(words),
                )
            }
        };
        OutcomeReport {
            outcome,
            revision,
            at_seconds: now.as_secs_f64(),
            duration_seconds: duration.as_secs_f64(),
            steps,
            checks: self.checks,
            failed_checks: self.failed_checks,
            intervals: self.intervals,
            violations: self.violations,
            phase: status.phase,
            message: status.message.clone(),
            summary,
            expectation_met,
            expected,
        }
    }
}

/// `7m30s`, `1h0m5s`, `45s`, `500ms`: simulated times as a person reads them.
pub fn format_offset(offset: Duration) -> String {
    let total = offset.as_secs();
    let millis = offset.subsec_millis();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let seconds = if millis > 0 {
        format!("{s}.{millis:03}s")
    } else {
        format!("{s}s")
    };
    if h > 0 {
        format!("{h}h{m}m{seconds}")
    } else if m > 0 {
        format!("{m}m{seconds}")
    } else if total == 0 && millis > 0 {
        format!("{millis}ms")
    } else {
        seconds
    }
}

/// The timeline as text, one line per entry, then the outcome.
pub fn render_text(timeline: &Timeline) -> String {
    let mut out = String::new();
    if !timeline.scenario.is_empty() {
        let _ = writeln!(out, "scenario: {}", timeline.scenario);
    }
    if !timeline.description.is_empty() {
        let _ = writeln!(out, "{}", timeline.description.trim());
    }
    let _ = writeln!(out);
    for entry in &timeline.events {
        let line = match &entry.what {
            What::Scenario { message } => format!("* {message}"),
            What::Cluster { message } => format!("  {message}"),
            What::Phase { from, to } => match from {
                Some(from) => format!("phase {from} -> {to}"),
                None => format!("phase {to}"),
            },
            What::Check {
                metric,
                step,
                value,
                stable_value,
                limit,
                verdict,
                reason,
            } => {
                let mut line = format!(
                    "check {metric} (step {}): {}",
                    step + 1,
                    value.map_or_else(|| "no value".to_owned(), |v| format!("{v}"))
                );
                if let Some(stable) = stable_value {
                    let _ = write!(line, " vs stable {stable}");
                }
                if let Some(limit) = limit {
                    let _ = write!(line, ", limit {limit}");
                }
                let _ = write!(line, ": {verdict:?}");
                if let Some(reason) = reason {
                    let _ = write!(line, " ({reason})");
                }
                line
            }
            What::Event {
                reason,
                message,
                warning,
            } => format!(
                "{} {reason}: {message}",
                if *warning { "warning" } else { "event" }
            ),
            What::Action { action } => format!("  -> {action}"),
            What::Refused { action, error } => format!("  -> {action}: REFUSED {error}"),
            What::Violation { invariant, message } => {
                format!("INVARIANT {invariant} VIOLATED: {message}")
            }
        };
        let _ = writeln!(out, "{:>9}  {line}", entry.at);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "outcome: {}", timeline.outcome.summary);
    if timeline.outcome.violations > 0 {
        let _ = writeln!(
            out,
            "invariants: {} violation(s), see INVARIANT lines above",
            timeline.outcome.violations
        );
    }
    if timeline.outcome.outcome != Outcome::Promoted
        && let Some(message) = &timeline.outcome.message
    {
        let _ = writeln!(out, "why: {message}");
    }
    match (timeline.outcome.expectation_met, &timeline.outcome.expected) {
        (Some(true), Some(expected)) => {
            let _ = writeln!(out, "expected: {expected}: met");
        }
        (Some(false), Some(expected)) => {
            let _ = writeln!(out, "expected: {expected}: NOT MET");
        }
        (Some(_), None) | (None, _) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_like_durations() {
        assert_eq!(format_offset(Duration::from_secs(0)), "0s");
        assert_eq!(format_offset(Duration::from_secs(45)), "45s");
        assert_eq!(format_offset(Duration::from_secs(420)), "7m0s");
        assert_eq!(format_offset(Duration::from_secs(3605)), "1h0m5s");
        assert_eq!(format_offset(Duration::from_millis(500)), "500ms");
        assert_eq!(format_offset(Duration::from_millis(1500)), "1.500s");
    }

    #[test]
    fn the_embedded_healthy_scenario_parses() {
        let scenario = Scenario::parse(HEALTHY).expect("healthy.yaml is valid");
        assert_eq!(scenario.name, "healthy");
    }
}
