//! The scenario file of `sluice simulate`: the Canary as a user writes it, the cluster it runs in
//! (hold mode, the target's size and rollout speed, how fast canary pods get ready), what the
//! metrics say over time, when Prometheus is down, what happens on the timeline (new revisions,
//! commands), and what the outcome should be. `examples/scenarios/README.md` documents the format.
//!
//! Only parsing and checking of the file here; the simulated world lives in `world`.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::dereference::Dereference;

use crate::api::{
    AnalysisTemplate, Canary, CanaryPolicy, ClusterAnalysisTemplate, CommandAction, Duration,
    HoldMode, RolloutSpec, TemplateSpec,
};

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in the timeline's header.
    #[serde(default)]
    pub name: String,
    /// What the scenario shows, in a sentence or two.
    #[serde(default)]
    pub description: String,
    /// How the cluster holds new templates (default `AdmissionPolicy`).
    #[serde(default)]
    pub hold_mode: HoldMode,
    /// The Canary, exactly as a user would apply it.
    pub canary: Canary,
    /// The CanaryPolicy its `policyRef` names, if any.
    #[serde(default)]
    pub policy: Option<CanaryPolicy>,
    /// AnalysisTemplates and ClusterAnalysisTemplates its metrics name.
    #[serde(default)]
    pub templates: Vec<Value>,
    /// The target Deployment.
    #[serde(default)]
    pub target: Target,
    /// How the canary Deployment's pods behave.
    #[serde(default)]
    pub canary_pods: CanaryPods,
    /// What each metric's query returns over time, by metric name.
    #[serde(default)]
    pub metrics: BTreeMap<String, Vec<Segment>>,
    /// Spans of time when Prometheus is unreachable (every check returns an error).
    #[serde(default)]
    pub outages: Vec<Outage>,
    /// What happens, and when.
    #[serde(default)]
    pub timeline: Vec<TimelineItem>,
    /// The outcome the scenario expects.
    #[serde(default)]
    pub expect: Option<Expectation>,
    /// Simulated time after which the simulation stops (default `24h`).
    #[serde(default)]
    pub horizon: Option<Duration>,
}

/// The target Deployment.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// `spec.replicas`.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// The revision it runs at the start (its pod-template hash).
    #[serde(default = "default_stable_revision")]
    pub revision: String,
    /// How long the Deployment takes to roll a new template out once unpaused.
    #[serde(default = "default_rollout_duration")]
    pub rollout_duration: Duration,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            revision: default_stable_revision(),
            rollout_duration: default_rollout_duration(),
        }
    }
}

fn default_replicas() -> i32 {
    4
}

fn default_stable_revision() -> String {
    "7c6b5a4d3e".into()
}

fn default_rollout_duration() -> Duration {
    Duration::from_secs(60)
}

/// How the canary's pods behave.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryPods {
    /// Time from creating (or scaling up) canary pods until they are ready: a duration, or
    /// `never` (default `20s`).
    #[serde(default)]
    pub ready_after: ReadyAfter,
}

/// When pods get ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyAfter {
    After(Duration),
    Never,
}

impl Default for ReadyAfter {
    fn default() -> Self {
        ReadyAfter::After(Duration::from_secs(20))
    }
}

impl<'de> Deserialize<'de> for ReadyAfter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "never" {
            return Ok(ReadyAfter::Never);
        }
        Duration::parse(&text)
            .map(ReadyAfter::After)
            .map_err(serde::de::Error::custom)
    }
}

/// From `at` on, what a metric's query returns. Exactly one of `value`, `values`, `ramp`,
/// `noData` or `nan`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Segment {
    /// Simulated time from which this segment applies.
    pub at: Duration,
    /// The same value at every check.
    #[serde(default)]
    pub value: Option<f64>,
    /// One value per check, the last repeated.
    #[serde(default)]
    pub values: Option<Vec<f64>>,
    /// A straight line from `from` to `to` over `over`, then `to`.
    #[serde(default)]
    pub ramp: Option<Ramp>,
    /// The query returns no series.
    #[serde(default)]
    pub no_data: bool,
    /// The query returns NaN.
    #[serde(default)]
    pub nan: bool,
    /// The stable side's value, for comparison metrics.
    #[serde(default)]
    pub stable: Option<f64>,
    /// The canary's total count, for two-proportion metrics.
    #[serde(default)]
    pub canary_total: Option<f64>,
    /// The stable side's total count, for two-proportion metrics.
    #[serde(default)]
    pub stable_total: Option<f64>,
}

/// A linear change of a metric.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ramp {
    pub from: f64,
    pub to: f64,
    pub over: Duration,
}

/// Prometheus is unreachable from `from` until `to`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outage {
    pub from: Duration,
    pub to: Duration,
}

/// One thing that happens at `at`: a new revision of the target's template, or a command from
/// `kubectl sluice`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimelineItem {
    pub at: Duration,
    /// A new pod template arrives (a GitOps sync or `kubectl apply`), with this revision.
    #[serde(default)]
    pub revision: Option<String>,
    /// A command for the current revision: `Promote`, `PromoteFull`, `Abort`, `Retry`, `Pause`,
    /// `Resume` or `Skip`.
    #[serde(default)]
    pub command: Option<CommandAction>,
}

/// What the scenario expects.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    pub outcome: Outcome,
    /// Reached at most this long after the last new revision arrived.
    #[serde(default)]
    pub within: Option<Duration>,
}

/// How a simulation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The last revision was promoted: the target runs it and all traffic is on stable.
    Promoted,
    /// The last revision was rolled back.
    RolledBack,
    /// The rollout stopped and waits for a person (unknown deadline with `Pause`, or `pause`).
    Paused,
    /// Analysis passed; waiting for `kubectl sluice promote`.
    WaitingPromotion,
    /// The spec cannot be acted on.
    Invalid,
    /// Nothing to roll out.
    Idle,
    /// The horizon was reached (or the core stopped asking to be called) with the rollout still
    /// under way.
    Unfinished,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Promoted => "Promoted",
            Outcome::RolledBack => "RolledBack",
            Outcome::Paused => "Paused",
            Outcome::WaitingPromotion => "WaitingPromotion",
            Outcome::Invalid => "Invalid",
            Outcome::Idle => "Idle",
            Outcome::Unfinished => "Unfinished",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a scenario file cannot be simulated.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("failed to parse the scenario: {0}")]
    Parse(String),
    #[error("invalid scenario: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl Scenario {
    /// Parses a scenario from YAML (or JSON) and checks it.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let value: Value = serde_saphyr::from_str(text)
            .map_err(|e| ScenarioError::Parse(first_line(&e.to_string())))?;
        let scenario: Scenario =
            serde_json::from_value(value).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let invalid = |field: String, reason: &str| ScenarioError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        for (name, segments) in &self.metrics {
            for (i, s) in segments.iter().enumerate() {
                let set = [
                    s.value.is_some(),
                    s.values.is_some(),
                    s.ramp.is_some(),
                    s.no_data,
                    s.nan,
                ]
                .into_iter()
                .filter(|x| *x)
                .count();
                if set != 1 {
                    return Err(invalid(
                        format!("metrics.{name}[{i}]"),
                        "set exactly one of value, values, ramp, noData or nan",
                    ));
                }
                if s.values.as_ref().is_some_and(Vec::is_empty) {
                    return Err(invalid(
                        format!("metrics.{name}[{i}].values"),
                        "needs at least one value",
                    ));
                }
                if i > 0 && s.at < segments[i - 1].at {
                    return Err(invalid(
                        format!("metrics.{name}[{i}].at"),
                        "segments must be in time order",
                    ));
                }
            }
        }
        for (i, outage) in self.outages.iter().enumerate() {
            if outage.to <= outage.from {
                return Err(invalid(format!("outages[{i}].to"), "must be after `from`"));
            }
        }
        for (i, item) in self.timeline.iter().enumerate() {
            if item.revision.is_some() == item.command.is_some() {
                return Err(invalid(
                    format!("timeline[{i}]"),
                    "set exactly one of revision or command",
                ));
            }
        }
        if self.target.replicas < 1 {
            return Err(invalid("target.replicas".into(), "must be at least 1"));
        }
        for (i, template) in self.templates.iter().enumerate() {
            self.template_of(template)
                .map_err(|reason| invalid(format!("templates[{i}]"), &reason))?;
        }
        Ok(())
    }

    /// The template of `kind` named `name`, if the scenario has it.
    fn template_named(&self, kind: &str, name: &str) -> Option<TemplateSpec> {
        self.templates
            .iter()
            .filter(|t| t.get("kind").and_then(Value::as_str) == Some(kind))
            .filter_map(|t| self.template_of(t).ok())
            .find(|(found, _)| found == name)
            .map(|(_, spec)| spec)
    }

    fn template_of(&self, value: &Value) -> Result<(String, TemplateSpec), String> {
        match value.get("kind").and_then(Value::as_str) {
            Some("AnalysisTemplate") => serde_json::from_value::<AnalysisTemplate>(value.clone())
                .map(|t| (t.metadata.name.unwrap_or_default(), t.spec.template))
                .map_err(|e| e.to_string()),
            Some("ClusterAnalysisTemplate") => {
                serde_json::from_value::<ClusterAnalysisTemplate>(value.clone())
                    .map(|t| (t.metadata.name.unwrap_or_default(), t.spec.template))
                    .map_err(|e| e.to_string())
            }
            _ => Err("kind must be AnalysisTemplate or ClusterAnalysisTemplate".into()),
        }
    }

    /// Simulated time at which the simulation stops.
    pub fn horizon(&self) -> StdDuration {
        self.horizon
            .map_or(StdDuration::from_secs(24 * 3600), Duration::as_std)
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

/// A scenario dereferences from its own documents, all in one namespace.
impl Dereference for Scenario {
    type Error = std::convert::Infallible;

    async fn policy(&self, name: &str) -> Result<Option<RolloutSpec>, Self::Error> {
        Ok(self
            .policy
            .as_ref()
            .filter(|policy| policy.metadata.name.as_deref() == Some(name))
            .map(|policy| policy.spec.rollout.clone()))
    }

    async fn template(
        &self,
        _namespace: &str,
        name: &str,
    ) -> Result<Option<TemplateSpec>, Self::Error> {
        Ok(self.template_named("AnalysisTemplate", name))
    }

    async fn cluster_template(&self, name: &str) -> Result<Option<TemplateSpec>, Self::Error> {
        Ok(self.template_named("ClusterAnalysisTemplate", name))
    }
}
