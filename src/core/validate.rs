//! Validation and resolution of a Canary spec: merge the policy, apply defaults, and check every
//! bound the core relies on (the same bounds the CRD schema states, checked again because a schema
//! is not always installed as generated). Errors name the field and the reason.
//!
//! Resolution is pure: the policy and templates come from [`Observations`], looked up by the
//! controller. Template arguments are merged here but substituted into queries by the controller
//! (the escaping lives with the provider that sends them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::router::Router;
use super::{Dereferenced, PolicyLookup, Resolution, plan};
use crate::api::{
    AnalysisSpec, CanarySpec, Comparison, ComparisonMethod, HookSpec, HttpMatch, NotificationSpec,
    OnNoData, ProviderSpec, RolloutSpec, RouterSpec, ServiceSpec, StrategySpec, TemplateRef,
    TemplateSpec, UnknownOutcome,
};

/// Interval between checks when the spec sets none.
pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Failed checks that roll back when the spec sets none.
pub const DEFAULT_THRESHOLD: i32 = 3;
/// Progress deadline when the spec sets none.
pub const DEFAULT_PROGRESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);
/// Unknown deadline when the spec sets none.
pub const DEFAULT_UNKNOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
/// Canary step weight when the spec sets no strategy.
pub const DEFAULT_STEP_WEIGHT: i32 = 10;
/// Highest canary weight with `stepWeight` when the spec sets none.
pub const DEFAULT_MAX_WEIGHT: i32 = 50;
/// Hook timeout when the hook sets none (lowered to half the interval when that is shorter).
pub const DEFAULT_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Confidence of the two-proportion test when the metric sets none.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
/// Fewest requests (as the count query counts them) for a verdict when the metric sets none.
pub const DEFAULT_MIN_SAMPLES: i64 = 50;

/// One reason a spec cannot be acted on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.strategy.canary.stepWeights[2]`.
    pub field: String,
    /// What is wrong with it, in words.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The effective spec: the policy merged in, defaults applied, templates resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// Name of the target Deployment.
    pub target: String,
    /// The stable Service (name defaulted to the target's) and its port.
    pub service: ResolvedService,
    pub router: Router,
    pub strategy: Strategy,
    pub interval: std::time::Duration,
    pub threshold: i32,
    pub progress_deadline: std::time::Duration,
    pub unknown_deadline: std::time::Duration,
    pub on_unknown_deadline: UnknownOutcome,
    /// The analysis provider; `None` means the controller's default.
    pub provider: Option<ProviderSpec>,
    pub metrics: Vec<ResolvedMetric>,
    /// Hooks with their timeouts and retries defaulted.
    pub hooks: Vec<HookSpec>,
    /// Where lifecycle events are sent.
    pub notifications: Vec<NotificationSpec>,
    pub manual_promotion: bool,
    pub skip_analysis: bool,
}

/// The stable Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedService {
    pub name: String,
    pub port: i32,
}

/// The one strategy a spec names, with its steps computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted steps; the weights are strictly increasing.
    Canary {
        step_weights: Vec<i32>,
    },
    BlueGreen {
        iterations: i32,
    },
    AbTesting {
        iterations: i32,
        matches: Vec<HttpMatch>,
    },
}

/// A metric with its template applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedMetric {
    pub name: String,
    /// The template the query came from, if any.
    pub template: Option<TemplateRef>,
    /// The query with `{{ ... }}` variables still in it.
    pub query: String,
    pub total_query: Option<String>,
    /// Every template argument's value (the metric's, else the template's default).
    pub args: BTreeMap<String, String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The window substituted for `{{ interval }}`.
    pub interval: std::time::Duration,
    /// How far back the rendered queries read (their largest `offset + range`, parsed): a check
    /// waits until this much time has passed since the canary began carrying its current
    /// traffic, and checks of a step never read overlapping windows.
    pub window: std::time::Duration,
    /// Fewest requests counted by `total_query` (each side, with a comparison) for a verdict.
    pub min_samples: i64,
    pub on_no_data: OnNoData,
    pub compare: Option<Comparison>,
    pub provider: Option<ProviderSpec>,
}

impl ResolvedMetric {
    /// The queries one check of this metric runs, rendered for `vars`.
    pub fn queries(
        &self,
        vars: &super::query::Variables,
    ) -> Result<super::query::Queries, super::query::RenderQueryError> {
        let spec = crate::api::MetricSpec {
            name: self.name.clone(),
            template_ref: None,
            query: Some(self.query.clone()),
            total_query: self.total_query.clone(),
            args: self.args.clone(),
            min: self.min,
            max: self.max,
            min_samples: Some(self.min_samples),
            interval: Some(self.interval.into()),
            on_no_data: Some(self.on_no_data),
            compare: self.compare.clone(),
        };
        super::query::queries(&spec, None, vars)
    }
}

/// Merges the policy into the Canary's spec, applies defaults and checks every bound.
pub fn resolve(spec: &CanarySpec, dereferenced: &Dereferenced) -> Resolution {
    // A Canary that stands for annotations is only as valid as they are: its spec was written
    // from the last good ones, so a bad value now must stop it rather than go unnoticed.
    if !dereferenced.annotation_errors.is_empty() {
        return Err(dereferenced.annotation_errors.clone());
    }
    let mut errors = Vec::new();
    if spec.target_ref.name.is_empty() {
        errors.push(FieldError::new(
            "spec.targetRef.name",
            "must name the target Deployment",
        ));
    }
    if spec.target_ref.kind != "Deployment" || spec.target_ref.api_version != "apps/v1" {
        errors.push(FieldError::new(
            "spec.targetRef",
            "only apps/v1 Deployment targets are supported",
        ));
    }
    let merged = match (&spec.policy_ref, &dereferenced.policy) {
        (None, _) => spec.rollout.clone(),
        (Some(_), PolicyLookup::Found(found)) => merge(found, &spec.rollout),
        (Some(policy), PolicyLookup::Missing { .. } | PolicyLookup::NotReferenced) => {
            errors.push(FieldError::new(
                "spec.policyRef.name",
                format!("CanaryPolicy {:?} does not exist", policy.name),
            ));
            spec.rollout.clone()
        }
    };
    errors.extend(rollout(&merged, "spec"));
    if merged.router.is_none() {
        errors.push(FieldError::new(
            "spec.router",
            "a router is required (set it here or in the CanaryPolicy)",
        ));
    }
    if merged.service.is_none() {
        errors.push(FieldError::new(
            "spec.service.port",
            "the service port is required (the port routers send traffic to)",
        ));
    }
    let analysis = merged.analysis.clone().unwrap_or_default();
    let interval = analysis.interval.map_or(DEFAULT_INTERVAL, |d| d.as_std());
    let mut metrics = Vec::new();
    for (i, metric) in analysis.metrics.iter().flatten().enumerate() {
        let path = format!("spec.analysis.metrics[{i}]");
        let template = match &metric.template_ref {
            None => None,
            Some(reference) => match dereferenced.templates.get(&reference.name) {
                Some(found) => Some(found),
                None => {
                    errors.push(FieldError::new(
                        format!("{path}.templateRef.name"),
                        format!("analysis template {:?} does not exist", reference.name),
                    ));
                    continue;
                }
            },
        };
        let errors_before = errors.len();
        let mut args = BTreeMap::new();
        if let Some(template) = template {
            for arg in &template.args {
                match metric.args.get(&arg.name).or(arg.default.as_ref()) {
                    Some(value) => {
                        args.insert(arg.name.clone(), value.clone());
                    }
                    None => errors.push(FieldError::new(
                        format!("{path}.args.{}", arg.name),
                        format!(
                            "template {:?} needs argument {:?}, which has no default",
                            metric.template_ref.as_ref().map_or("", |t| t.name.as_str()),
                            arg.name
                        ),
                    )),
                }
            }
        }
        let query = metric
            .query
            .clone()
            .or_else(|| template.map(|t| t.query.clone()))
            .unwrap_or_default();
        let min = metric.min.or(template.and_then(|t| t.min));
        let max = metric.max.or(template.and_then(|t| t.max));
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            errors.push(FieldError::new(
                format!("{path}.min"),
                format!("min {min} exceeds max {max} (after applying the template)"),
            ));
        }
        let compare = metric
            .compare
            .clone()
            .or_else(|| template.and_then(|t| t.compare.clone()));
        let total_query = metric
            .total_query
            .clone()
            .or_else(|| template.and_then(|t| t.total_query.clone()));
        if let Some(compare) = &compare
            && compare.method == ComparisonMethod::TwoProportion
            && total_query.is_none()
        {
            errors.push(FieldError::new(
                format!("{path}.totalQuery"),
                "compare.method TwoProportion needs totalQuery (the total request count)",
            ));
        }
        let metric_interval = metric.interval.map_or(interval, |d| d.as_std());
        // Only a metric that is otherwise whole is rendered: a missing argument is reported once.
        let window = if errors.len() > errors_before {
            std::time::Duration::ZERO
        } else {
            match rendered_window(
                metric,
                template,
                &spec.target_ref.name,
                metric_interval,
                &path,
            ) {
                Ok(window) => window,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            }
        };
        let min_samples = metric
            .min_samples
            .or(metric.compare.as_ref().and_then(|c| c.min_samples))
            .or(template.and_then(|t| t.min_samples))
            .or(compare.as_ref().and_then(|c| c.min_samples))
            .unwrap_or(DEFAULT_MIN_SAMPLES);
        metrics.push(ResolvedMetric {
            name: metric.name.clone(),
            template: metric.template_ref.clone(),
            query,
            total_query,
            args,
            min,
            max,
            interval: metric_interval,
            window,
            min_samples,
            on_no_data: metric
                .on_no_data
                .or(template.and_then(|t| t.on_no_data))
                .unwrap_or_default(),
            compare,
            provider: template
                .and_then(|t| t.provider.clone())
                .or_else(|| analysis.provider.clone()),
        });
    }
    let router = merged
        .router
        .as_ref()
        .and_then(|r| Router::from_spec(r).ok());
    let strategy = strategy_of(merged.strategy.as_ref());
    let (Some(router), Some(strategy), Some(service), true) =
        (router, strategy, merged.service.as_ref(), errors.is_empty())
    else {
        return Err(errors);
    };
    let hook_default = DEFAULT_HOOK_TIMEOUT.min(interval / 2);
    let hooks = merged
        .hooks
        .iter()
        .flatten()
        .map(|hook| HookSpec {
            timeout: Some(hook.timeout.unwrap_or(hook_default.into())),
            retries: Some(hook.retries.unwrap_or(2)),
            ..hook.clone()
        })
        .collect();
    Ok(Resolved {
        target: spec.target_ref.name.clone(),
        service: ResolvedService {
            name: stable_service_name(&spec.target_ref.name, Some(service)),
            port: service.port,
        },
        router,
        strategy,
        interval,
        threshold: analysis.threshold.unwrap_or(DEFAULT_THRESHOLD),
        progress_deadline: analysis
            .progress_deadline
            .map_or(DEFAULT_PROGRESS_DEADLINE, |d| d.as_std()),
        unknown_deadline: analysis
            .unknown_deadline
            .map_or(DEFAULT_UNKNOWN_DEADLINE, |d| d.as_std()),
        on_unknown_deadline: analysis.on_unknown_deadline.unwrap_or_default(),
        provider: analysis.provider.clone(),
        metrics,
        hooks,
        notifications: merged.notifications.clone().unwrap_or_default(),
        manual_promotion: merged.manual_promotion.unwrap_or(false),
        skip_analysis: merged.skip_analysis.unwrap_or(false),
    })
}

/// Renders the metric's queries as a check would (with placeholder names where the spec has none)
/// and parses them: a query that does not render or parse is a spec error naming the metric, found
/// before anything is sent. Returns the window the queries read.
fn rendered_window(
    metric: &crate::api::MetricSpec,
    template: Option<&TemplateSpec>,
    target: &str,
    interval: std::time::Duration,
    path: &str,
) -> Result<std::time::Duration, FieldError> {
    use super::query;
    let target = if target.is_empty() { "target" } else { target };
    let vars = query::Variables {
        namespace: "default".into(),
        target: target.to_owned(),
        canary: crate::api::names::canary_name(target),
        stable: target.to_owned(),
        service: target.to_owned(),
        interval,
        revision: "0123456789".into(),
    };
    let field = |which: &str, inline: bool| match (&metric.template_ref, inline) {
        (Some(t), false) => (
            format!("{path}.templateRef.name"),
            format!("the {which} of template {:?}", t.name),
        ),
        (_, _) => (format!("{path}.{which}"), format!("the {which}")),
    };
    let queries = query::queries(metric, template, &vars).map_err(|error| {
        let (field, _) = field("query", metric.query.is_some());
        FieldError::new(field, error.to_string())
    })?;
    let mut window = std::time::Duration::ZERO;
    let sides = [
        ("query", metric.query.is_some(), Some(&queries.canary)),
        ("query", metric.query.is_some(), queries.stable.as_ref()),
        (
            "totalQuery",
            metric.total_query.is_some(),
            queries.canary_total.as_ref(),
        ),
        (
            "totalQuery",
            metric.total_query.is_some(),
            queries.stable_total.as_ref(),
        ),
    ];
    for (which, inline, rendered) in sides {
        let Some(rendered) = rendered else { continue };
        match query::parse_window(rendered) {
            Ok(read) => window = window.max(read),
            Err(error) => {
                let (field, what) = field(which, inline);
                return Err(FieldError::new(
                    field,
                    format!("{what} of metric {:?}: {error}", metric.name),
                ));
            }
        }
    }
    Ok(window)
}

/// The `service` in effect: the Canary's own (whole, when set), else its policy's. The rule
/// [`resolve`] merges by, for callers that need only this field (the controller's triggers).
pub fn service_spec<'a>(
    own: &'a RolloutSpec,
    policy: Option<&'a RolloutSpec>,
) -> Option<&'a ServiceSpec> {
    own.service
        .as_ref()
        .or_else(|| policy.and_then(|p| p.service.as_ref()))
}

/// The `router` in effect: the Canary's own, else its policy's (as [`resolve`] merges them).
pub fn router_spec<'a>(
    own: &'a RolloutSpec,
    policy: Option<&'a RolloutSpec>,
) -> Option<&'a RouterSpec> {
    own.router
        .as_ref()
        .or_else(|| policy.and_then(|p| p.router.as_ref()))
}

/// The stable Service's name: the one `service` names, else the target's.
pub fn stable_service_name(target: &str, service: Option<&ServiceSpec>) -> String {
    service
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| target.to_owned())
}

/// Every top-level field set in `own` overrides the policy's; inside `analysis`, each field set.
fn merge(policy: &RolloutSpec, own: &RolloutSpec) -> RolloutSpec {
    let analysis = match (&policy.analysis, &own.analysis) {
        (None, None) => None,
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (Some(base), Some(over)) => Some(AnalysisSpec {
            interval: over.interval.or(base.interval),
            threshold: over.threshold.or(base.threshold),
            progress_deadline: over.progress_deadline.or(base.progress_deadline),
            unknown_deadline: over.unknown_deadline.or(base.unknown_deadline),
            on_unknown_deadline: over.on_unknown_deadline.or(base.on_unknown_deadline),
            provider: over.provider.clone().or_else(|| base.provider.clone()),
            metrics: over.metrics.clone().or_else(|| base.metrics.clone()),
        }),
    };
    RolloutSpec {
        service: service_spec(own, Some(policy)).cloned(),
        router: router_spec(own, Some(policy)).cloned(),
        strategy: own.strategy.clone().or_else(|| policy.strategy.clone()),
        analysis,
        hooks: own.hooks.clone().or_else(|| policy.hooks.clone()),
        notifications: own
            .notifications
            .clone()
            .or_else(|| policy.notifications.clone()),
        manual_promotion: own.manual_promotion.or(policy.manual_promotion),
        skip_analysis: own.skip_analysis.or(policy.skip_analysis),
    }
}

fn strategy_of(spec: Option<&StrategySpec>) -> Option<Strategy> {
    let Some(spec) = spec else {
        return Some(Strategy::Canary {
            step_weights: plan::step_weights(DEFAULT_STEP_WEIGHT, DEFAULT_MAX_WEIGHT),
        });
    };
    match (&spec.canary, &spec.blue_green, &spec.ab_testing) {
        (Some(c), None, None) => Some(Strategy::Canary {
            step_weights: match (&c.step_weights, c.step_weight) {
                (Some(weights), _) => weights.clone(),
                (None, step) => plan::step_weights(
                    step.unwrap_or(DEFAULT_STEP_WEIGHT),
                    c.max_weight.unwrap_or(DEFAULT_MAX_WEIGHT),
                ),
            },
        }),
        (None, Some(b), None) => Some(Strategy::BlueGreen {
            iterations: b.iterations,
        }),
        (None, None, Some(a)) => Some(Strategy::AbTesting {
            iterations: a.iterations,
            matches: a.matches.clone(),
        }),
        _ => None,
    }
}

/// Checks a rollout spec (a CanaryPolicy's, or a Canary's after merging) on its own: every bound
/// the schema states. `prefix` is the path of the spec, e.g. `spec`.
pub fn rollout(spec: &RolloutSpec, prefix: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: String, reason: String| errors.push(FieldError::new(field, reason));
    if let Some(service) = &spec.service {
        if !(1..=65535).contains(&service.port) {
            err(
                format!("{prefix}.service.port"),
                format!("port {} is outside 1..=65535", service.port),
            );
        }
        if service.name.as_deref() == Some("") {
            err(format!("{prefix}.service.name"), "must not be empty".into());
        }
    }
    if let Some(router) = &spec.router
        && Router::from_spec(router).is_err()
    {
        err(
            format!("{prefix}.router"),
            "exactly one of gatewayAPI, nginx, istio, smi, traefik, service or none must be set"
                .into(),
        );
    }
    if let Some(strategy) = &spec.strategy {
        let path = format!("{prefix}.strategy");
        let set = [
            strategy.canary.is_some(),
            strategy.blue_green.is_some(),
            strategy.ab_testing.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            err(
                path.clone(),
                "exactly one of canary, blueGreen or abTesting must be set".into(),
            );
        }
        if let Some(canary) = &strategy.canary {
            let path = format!("{path}.canary");
            for (name, value) in [
                ("stepWeight", canary.step_weight),
                ("maxWeight", canary.max_weight),
            ] {
                if let Some(w) = value
                    && !(1..=100).contains(&w)
                {
                    err(
                        format!("{path}.{name}"),
                        format!("weight {w} is outside 1..=100"),
                    );
                }
            }
            match (&canary.step_weights, canary.step_weight) {
                (Some(_), Some(_)) => err(
                    path.clone(),
                    "set either stepWeight or stepWeights, not both".into(),
                ),
                (Some(weights), None) => {
                    if weights.is_empty() {
                        err(
                            format!("{path}.stepWeights"),
                            "needs at least one step".into(),
                        );
                    }
                    for (i, w) in weights.iter().enumerate() {
                        if !(1..=100).contains(w) {
                            err(
                                format!("{path}.stepWeights[{i}]"),
                                format!("weight {w} is outside 1..=100"),
                            );
                        } else if i > 0 && *w <= weights[i - 1] {
                            err(
                                format!("{path}.stepWeights[{i}]"),
                                format!(
                                    "weight {w} does not exceed the previous step's {}: steps must be strictly increasing",
                                    weights[i - 1]
                                ),
                            );
                        }
                    }
                    if canary.max_weight.is_some() {
                        err(
                            format!("{path}.maxWeight"),
                            "maxWeight applies to stepWeight; with stepWeights the last step is the maximum".into(),
                        );
                    }
                }
                (None, step) => {
                    let step = step.unwrap_or(DEFAULT_STEP_WEIGHT);
                    let max = canary.max_weight.unwrap_or(DEFAULT_MAX_WEIGHT);
                    if max < step {
                        err(
                            format!("{path}.maxWeight"),
                            format!("maxWeight {max} must be at least stepWeight {step}"),
                        );
                    }
                }
            }
        }
        for (name, iterations) in [
            (
                "blueGreen",
                strategy.blue_green.as_ref().map(|b| b.iterations),
            ),
            (
                "abTesting",
                strategy.ab_testing.as_ref().map(|a| a.iterations),
            ),
        ] {
            if let Some(n) = iterations
                && !(1..=1000).contains(&n)
            {
                err(
                    format!("{path}.{name}.iterations"),
                    format!("{n} is outside 1..=1000"),
                );
            }
        }
        if let Some(ab) = &strategy.ab_testing {
            if ab.matches.is_empty() || ab.matches.len() > 8 {
                err(
                    format!("{path}.abTesting.match"),
                    "needs 1 to 8 request matches".into(),
                );
            }
            for (i, m) in ab.matches.iter().enumerate() {
                if m.headers.is_empty() {
                    err(
                        format!("{path}.abTesting.match[{i}].headers"),
                        "needs at least one header condition".into(),
                    );
                }
            }
        }
    }
    let analysis = spec.analysis.clone().unwrap_or_default();
    let interval = analysis.interval.map_or(DEFAULT_INTERVAL, |d| d.as_std());
    let path = format!("{prefix}.analysis");
    for (name, value) in [
        ("interval", analysis.interval),
        ("progressDeadline", analysis.progress_deadline),
        ("unknownDeadline", analysis.unknown_deadline),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            err(format!("{path}.{name}"), "must not be zero".into());
        }
    }
    if let Some(t) = analysis.threshold
        && !(1..=100).contains(&t)
    {
        err(
            format!("{path}.threshold"),
            format!("{t} is outside 1..=100"),
        );
    }
    let mut names = BTreeSet::new();
    for (i, metric) in analysis.metrics.iter().flatten().enumerate() {
        let mpath = format!("{path}.metrics[{i}]");
        if !names.insert(metric.name.as_str()) {
            err(
                format!("{mpath}.name"),
                format!("metric name {:?} is used twice", metric.name),
            );
        }
        if metric.template_ref.is_some() == metric.query.is_some() {
            err(
                mpath.clone(),
                "set either templateRef or query, not both".into(),
            );
        }
        if metric.query.as_deref() == Some("") {
            err(format!("{mpath}.query"), "must not be empty".into());
        }
        if let (Some(min), Some(max)) = (metric.min, metric.max)
            && min > max
        {
            err(
                format!("{mpath}.min"),
                format!("min {min} exceeds max {max}"),
            );
        }
        if metric.interval.is_some_and(|d| d.is_zero()) {
            err(format!("{mpath}.interval"), "must not be zero".into());
        }
        if let Some(compare) = &metric.compare {
            errors_of_comparison(compare, &format!("{mpath}.compare"), &mut err);
        }
    }
    let mut hook_names = BTreeSet::new();
    for (i, hook) in spec.hooks.iter().flatten().enumerate() {
        let hpath = format!("{prefix}.hooks[{i}]");
        if !hook_names.insert(hook.name.as_str()) {
            err(
                format!("{hpath}.name"),
                format!("hook name {:?} is used twice", hook.name),
            );
        }
        if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
            err(format!("{hpath}.url"), "must be an http(s) URL".into());
        }
        if let Some(timeout) = hook.timeout {
            if timeout.is_zero() {
                err(format!("{hpath}.timeout"), "must not be zero".into());
            } else if timeout.as_std() > interval / 2 {
                err(
                    format!("{hpath}.timeout"),
                    format!(
                        "timeout {timeout} is more than half the analysis interval {}",
                        crate::api::Duration(interval)
                    ),
                );
            }
        }
        if let Some(r) = hook.retries
            && !(0..=5).contains(&r)
        {
            err(format!("{hpath}.retries"), format!("{r} is outside 0..=5"));
        }
    }
    let mut notification_names = BTreeSet::new();
    for (i, notification) in spec.notifications.iter().flatten().enumerate() {
        let npath = format!("{prefix}.notifications[{i}]");
        if !notification_names.insert(notification.name.as_str()) {
            err(
                format!("{npath}.name"),
                format!("notification name {:?} is used twice", notification.name),
            );
        }
        match (&notification.url, &notification.url_secret_ref) {
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    err(format!("{npath}.url"), "must be an http(s) URL".into());
                }
            }
            (None, Some(_)) => {}
            (Some(_), Some(_)) | (None, None) => err(
                npath.clone(),
                "set either url or urlSecretRef, not both".into(),
            ),
        }
        if let Some(events) = &notification.events {
            let distinct: BTreeSet<_> = events.iter().map(|e| e.as_str()).collect();
            if events.is_empty() || distinct.len() != events.len() {
                err(
                    format!("{npath}.events"),
                    "must list each event at most once, and at least one".into(),
                );
            }
        }
    }
    errors
}

fn errors_of_comparison(compare: &Comparison, path: &str, err: &mut impl FnMut(String, String)) {
    match compare.method {
        ComparisonMethod::Difference => match compare.max_difference {
            None => err(
                format!("{path}.maxDifference"),
                "method Difference needs maxDifference".into(),
            ),
            Some(d) if d.is_nan() || d < 0.0 => err(
                format!("{path}.maxDifference"),
                format!("{d} must be at least 0"),
            ),
            Some(_) => {}
        },
        ComparisonMethod::Ratio => match compare.max_ratio {
            None => err(
                format!("{path}.maxRatio"),
                "method Ratio needs maxRatio".into(),
            ),
            Some(r) if r.is_nan() || r < 1.0 => err(
                format!("{path}.maxRatio"),
                format!("{r} must be at least 1"),
            ),
            Some(_) => {}
        },
        ComparisonMethod::TwoProportion => {}
    }
    if let Some(c) = compare.confidence
        && !(0.5..=0.9999).contains(&c)
    {
        err(
            format!("{path}.confidence"),
            format!("{c} is outside 0.5..=0.9999"),
        );
    }
    if let Some(n) = compare.min_samples
        && n < 1
    {
        err(
            format!("{path}.minSamples"),
            format!("{n} must be at least 1"),
        );
    }
}

/// Checks an analysis template's body. `prefix` is the path of the spec, e.g. `spec`.
pub fn template(spec: &TemplateSpec, prefix: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: String, reason: String| errors.push(FieldError::new(field, reason));
    if spec.query.is_empty() {
        err(format!("{prefix}.query"), "must not be empty".into());
    }
    if let (Some(min), Some(max)) = (spec.min, spec.max)
        && min > max
    {
        err(
            format!("{prefix}.min"),
            format!("min {min} exceeds max {max}"),
        );
    }
    if let Some(compare) = &spec.compare {
        errors_of_comparison(compare, &format!("{prefix}.compare"), &mut err);
        if compare.method == ComparisonMethod::TwoProportion && spec.total_query.is_none() {
            err(
                format!("{prefix}.totalQuery"),
                "compare.method TwoProportion needs totalQuery (the total request count)".into(),
            );
        }
    }
    let mut names = BTreeSet::new();
    for (i, arg) in spec.args.iter().enumerate() {
        if !names.insert(arg.name.as_str()) {
            err(
                format!("{prefix}.args[{i}].name"),
                format!("argument {:?} is declared twice", arg.name),
            );
        }
    }
    for (field, query) in [
        ("query", Some(&spec.query)),
        ("totalQuery", spec.total_query.as_ref()),
    ] {
        if let Some(query) = query.filter(|q| !q.is_empty())
            && let Some(reason) = template_query_error(spec, query)
        {
            err(format!("{prefix}.{field}"), reason);
        }
    }
    errors
}

/// Renders a template's query with sample values (each argument's default, else a sample that
/// fits where a label name or a number goes) and parses it; the reason when no sample parses.
fn template_query_error(spec: &TemplateSpec, query: &str) -> Option<String> {
    use super::query;
    let vars = query::Variables {
        namespace: "default".into(),
        target: "web".into(),
        canary: crate::api::names::canary_name("web"),
        stable: "web".into(),
        service: "web".into(),
        interval: DEFAULT_INTERVAL,
        revision: "0123456789".into(),
    };
    let mut last = None;
    for sample in ["x", "1"] {
        let args: BTreeMap<String, String> = spec
            .args
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.default.clone().unwrap_or_else(|| sample.into()),
                )
            })
            .collect();
        let rendered = match query::render(query, &vars, query::Workload::Canary, &args) {
            Ok(rendered) => rendered,
            Err(error) => {
                last = Some(error.to_string());
                continue;
            }
        };
        match query::parse_window(&rendered) {
            Ok(_) => return None,
            Err(error) => last = Some(error.to_string()),
        }
    }
    last
}
