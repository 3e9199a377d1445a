//! What `kubectl sluice list` and `status` show, as plain data built from a Canary (and its
//! target Deployment): the phase, the revisions, the weight, the step, the last check of each
//! metric with its value, limit and verdict, the hooks, the last command and its answer.
//!
//! Pure: objects in, views out. Fetching is the caller's; rendering is `render`'s. Views are
//! `Serialize` so `-o json|yaml` print exactly what the table shows, with the same field names.

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{Canary, CanaryStatus, CheckRecord, CommandAction, Phase, Verdict};
use crate::core::revision;

/// One Canary, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub name: String,
    pub namespace: String,
    /// The target Deployment's name.
    pub target: String,
    /// The phase, or `Pending` before the controller has written any status.
    pub phase: String,
    /// The revision being (or last) rolled out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The revision the stable Deployment serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The last revision rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    /// The hash of the target's current template: ahead of `revision` until the controller
    /// has seen a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// Percentage of traffic on the canary.
    pub weight: i32,
    /// The step, 1-based, while a canary runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepView>,
    pub failed_checks: i32,
    pub paused: bool,
    /// The last check of each metric, in the order metrics were first checked.
    pub checks: Vec<CheckView>,
    pub hooks: Vec<HookView>,
    /// The last command and the controller's answer to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandView>,
    pub conditions: Vec<ConditionView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Step `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StepView {
    pub index: i32,
    pub count: i32,
}

/// One check as recorded in status.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckView {
    pub metric: String,
    pub revision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, whole seconds.
    pub time: String,
}

/// The last answer of one hook.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookView {
    pub name: String,
    pub revision: String,
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A command and where it stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    pub action: CommandAction,
    pub revision: String,
    pub requested_at: String,
    /// `Pending` until the controller answers, then `Accepted` or `Refused`.
    pub state: CommandState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether the controller has answered a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CommandState {
    Pending,
    Accepted,
    Refused,
}

/// One condition.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// One row of `list`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListRow {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub weight: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<StepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The phase as shown: `Pending` before the controller wrote a status.
pub fn phase_name(status: Option<&CanaryStatus>) -> String {
    status
        .and_then(|s| s.phase)
        .map_or_else(|| "Pending".to_owned(), |p| p.as_str().to_owned())
}

/// The revision (template hash) of a Deployment's current template, computed as the controller
/// computes it.
pub fn target_revision(target: &Deployment) -> Option<String> {
    target.spec.as_ref()?;
    Some(revision::deployment_revision(target))
}

fn step_of(status: &CanaryStatus) -> Option<StepView> {
    let running = matches!(
        status.phase,
        Some(Phase::Progressing | Phase::WaitingPromotion | Phase::Paused)
    );
    (running && status.step_count > 0).then_some(StepView {
        index: status.step_index + 1,
        count: status.step_count,
    })
}

/// The last record of each metric, in the order the metrics first appear.
fn last_checks(records: &[CheckRecord]) -> Vec<CheckView> {
    let mut out: Vec<CheckView> = Vec::new();
    for record in records {
        let view = CheckView {
            metric: record.metric.clone(),
            revision: record.revision.clone(),
            value: record.value,
            stable_value: record.stable_value,
            limit: record.limit.clone(),
            verdict: record.verdict,
            reason: record.reason.clone(),
            time: time_string(&record.time),
        };
        match out.iter_mut().find(|c| c.metric == record.metric) {
            Some(existing) => *existing = view,
            None => out.push(view),
        }
    }
    out
}

fn time_string(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", time.0).unwrap_or_else(|_| time.0.to_string())
}

/// The state of the status's command: answered when the acknowledgement names the same action,
/// revision and second (the controller's own test of "the same command").
pub fn command_view(status: &CanaryStatus) -> Option<CommandView> {
    let command = status.command.as_ref()?;
    let ack = status.acknowledged_command.as_ref().filter(|ack| {
        ack.action == command.action
            && ack.revision == command.revision
            && ack.requested_at.0.as_second() == command.requested_at.0.as_second()
    });
    Some(CommandView {
        action: command.action,
        revision: command.revision.clone(),
        requested_at: time_string(&command.requested_at),
        state: match ack {
            None => CommandState::Pending,
            Some(ack) if ack.accepted => CommandState::Accepted,
            Some(_) => CommandState::Refused,
        },
        message: ack.map(|ack| ack.message.clone()),
    })
}

impl StatusView {
    /// The view of `canary`, with `target` when it was found.
    pub fn new(canary: &Canary, target: Option<&Deployment>) -> Self {
        let status = canary.status.clone().unwrap_or_default();
        StatusView {
            name: canary.name_any(),
            namespace: canary.namespace().unwrap_or_default(),
            target: canary.spec.target_ref.name.clone(),
            phase: phase_name(canary.status.as_ref()),
            revision: status.revision.clone(),
            stable_revision: status.stable_revision.clone(),
            failed_revision: status.failed_revision.clone(),
            target_revision: target.and_then(target_revision),
            weight: status.canary_weight,
            step: step_of(&status),
            failed_checks: status.failed_checks,
            paused: status.paused,
            checks: last_checks(&status.analysis),
            hooks: status
                .hooks
                .iter()
                .map(|h| HookView {
                    name: h.name.clone(),
                    revision: h.revision.clone(),
                    passed: h.passed,
                    message: h.message.clone(),
                })
                .collect(),
            command: command_view(&status),
            conditions: status
                .conditions
                .iter()
                .map(|c| ConditionView {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                })
                .collect(),
            message: status.message.clone(),
        }
    }
}

impl ListRow {
    pub fn new(canary: &Canary) -> Self {
        let status = canary.status.clone().unwrap_or_default();
        ListRow {
            namespace: canary.namespace().unwrap_or_default(),
            name: canary.name_any(),
            phase: phase_name(canary.status.as_ref()),
            weight: status.canary_weight,
            step: step_of(&status),
            revision: status.revision.clone(),
            stable_revision: status.stable_revision.clone(),
            message: status.message.clone(),
        }
    }
}

/// One metric as `analyze` judged it just now.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRow {
    pub metric: String,
    /// The query as sent, after templating.
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    pub verdict: Verdict,
    pub reason: String,
}

/// What `wait -o json|yaml` prints on stdout when it ends.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitSummary {
    pub canary: String,
    pub namespace: String,
    /// The revision the wait was bound to.
    pub revision: String,
    /// [`super::exit::ExitCode::name`].
    pub outcome: String,
    pub exit_code: u8,
    pub message: String,
    pub elapsed_seconds: u64,
}

/// What a command (promote, abort, ...) printed when the controller answered (or did not).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    pub canary: String,
    pub namespace: String,
    pub action: CommandAction,
    pub revision: String,
    pub requested_at: String,
    pub state: CommandState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
