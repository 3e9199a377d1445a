//! Validation and resolution of a Canary spec: each bound the CRD schema states is checked again,
//! reported with the field's path and a reason in words; resolution merges the policy, applies
//! the defaults and the templates.

use std::time::Duration;

use sluice::api::{CanarySpec, OnNoData, RolloutSpec, TemplateSpec, UnknownOutcome};
use sluice::core::Router;
use sluice::core::validate::{self, Strategy};
use sluice::core::{Dereferenced, PolicyLookup};

const BASE: &str = "
targetRef: {name: checkout}
service: {port: 8080}
router: {gatewayAPI: {httpRoute: {name: checkout}}}
";

fn spec(extra: &str) -> CanarySpec {
    let mut base: serde_json::Value = serde_saphyr::from_str(BASE).expect("base");
    let extra: serde_json::Value = serde_saphyr::from_str(extra).expect("extra");
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(base).expect("spec")
}

fn observed_with_template() -> Dereferenced {
    let mut observed = Dereferenced::default();
    let template: TemplateSpec = serde_saphyr::from_str(
        "query: 'sum(rate(x{job=\"{{ args.job }}\", code=~\"{{ args.codes }}\"}[{{ interval }}]))'\n\
         args: [{name: job}, {name: codes, default: '5..'}]\nmax: 0.01\nonNoData: Pass\n",
    )
    .expect("template");
    observed.templates.insert("error-rate".into(), template);
    observed
}

/// Every case: a spec fragment that slipped past the schema, the field blamed, words of the reason.
const CASES: &[(&str, &str, &str)] = &[
    (
        "strategy: {canary: {stepWeight: 0}}",
        "spec.strategy.canary.stepWeight",
        "outside 1..=100",
    ),
    (
        "strategy: {canary: {stepWeights: [10, 50, 30]}}",
        "spec.strategy.canary.stepWeights[2]",
        "strictly increasing",
    ),
    (
        "strategy: {canary: {stepWeights: [10, 150]}}",
        "spec.strategy.canary.stepWeights[1]",
        "outside 1..=100",
    ),
    (
        "strategy: {canary: {stepWeight: 30, maxWeight: 20}}",
        "spec.strategy.canary.maxWeight",
        "at least stepWeight",
    ),
    (
        "strategy: {canary: {stepWeights: [10], stepWeight: 10}}",
        "spec.strategy.canary",
        "not both",
    ),
    (
        "strategy: {canary: {stepWeight: 10}, blueGreen: {iterations: 2}}",
        "spec.strategy",
        "exactly one",
    ),
    (
        "strategy: {blueGreen: {iterations: 0}}",
        "spec.strategy.blueGreen.iterations",
        "outside 1..=1000",
    ),
    (
        "router: {nginx: {ingress: {name: a}}, istio: {virtualService: {name: b}}}",
        "spec.router",
        "exactly one",
    ),
    ("router: {}", "spec.router", "exactly one"),
    ("router: null", "spec.router", "required"),
    ("service: null", "spec.service.port", "required"),
    (
        "service: {port: 70000}",
        "spec.service.port",
        "outside 1..=65535",
    ),
    (
        "analysis: {threshold: 0}",
        "spec.analysis.threshold",
        "outside 1..=100",
    ),
    ("analysis: {interval: 0s}", "spec.analysis.interval", "zero"),
    (
        "analysis: {metrics: [{name: a, query: q, min: 2, max: 1}]}",
        "spec.analysis.metrics[0].min",
        "exceeds max",
    ),
    (
        "analysis: {metrics: [{name: a, query: q, compare: {method: Difference}}]}",
        "spec.analysis.metrics[0].compare.maxDifference",
        "needs maxDifference",
    ),
    (
        "analysis: {metrics: [{name: a, query: q, compare: {method: Ratio, maxRatio: 0.5}}]}",
        "spec.analysis.metrics[0].compare.maxRatio",
        "at least 1",
    ),
    (
        "analysis: {metrics: [{name: a, query: q, compare: {method: Difference, maxDifference: 1, confidence: 0.3}}]}",
        "spec.analysis.metrics[0].compare.confidence",
        "outside",
    ),
    (
        "analysis: {metrics: [{name: a, query: q, compare: {method: TwoProportion}}]}",
        "spec.analysis.metrics[0].totalQuery",
        "needs totalQuery",
    ),
    (
        "analysis: {metrics: [{name: a, query: q, templateRef: {name: error-rate}, args: {job: x}}]}",
        "spec.analysis.metrics[0]",
        "not both",
    ),
    (
        "analysis: {metrics: [{name: a}]}",
        "spec.analysis.metrics[0]",
        "templateRef or query",
    ),
    (
        "analysis: {metrics: [{name: a, query: q}, {name: a, query: r}]}",
        "spec.analysis.metrics[1].name",
        "used twice",
    ),
    (
        "analysis: {metrics: [{name: a, templateRef: {name: missing}}]}",
        "spec.analysis.metrics[0].templateRef.name",
        "does not exist",
    ),
    (
        "analysis: {metrics: [{name: a, templateRef: {name: error-rate}}]}",
        "spec.analysis.metrics[0].args.job",
        "no default",
    ),
    (
        "policyRef: {name: web-standard}",
        "spec.policyRef.name",
        "does not exist",
    ),
    (
        "hooks: [{name: load, type: rollout, url: 'http://load.test/', timeout: 40s}]",
        "spec.hooks[0].timeout",
        "half the analysis interval",
    ),
    (
        "hooks: [{name: load, type: rollout, url: 'http://load.test/', retries: 9}]",
        "spec.hooks[0].retries",
        "outside 0..=5",
    ),
    (
        "notifications: [{name: team}]",
        "spec.notifications[0]",
        "either url or urlSecretRef",
    ),
    (
        "notifications: [{name: team, url: 'http://a.test/', urlSecretRef: {name: slack}}]",
        "spec.notifications[0]",
        "either url or urlSecretRef",
    ),
    (
        "notifications: [{name: team, url: 'ftp://a.test/'}]",
        "spec.notifications[0].url",
        "http(s) URL",
    ),
    (
        "notifications: [{name: team, url: 'http://a.test/'}, {name: team, url: 'http://b.test/'}]",
        "spec.notifications[1].name",
        "used twice",
    ),
    (
        "notifications: [{name: team, url: 'http://a.test/', events: [Promoted, Promoted]}]",
        "spec.notifications[0].events",
        "at most once",
    ),
    (
        "analysis: {metrics: [{name: errors, query: 'sum(rate(x[{{ interval }}])'}]}",
        "spec.analysis.metrics[0].query",
        "PromQL does not parse",
    ),
    (
        "analysis: {metrics: [{name: errors, query: 'rate(x)', max: 1}]}",
        "spec.analysis.metrics[0].query",
        "of metric \"errors\"",
    ),
    (
        "analysis: {metrics: [{name: errors, query: 'sum(x)', totalQuery: 'sum(increase(y[1m]) by', max: 1}]}",
        "spec.analysis.metrics[0].totalQuery",
        "PromQL does not parse",
    ),
    (
        "analysis: {metrics: [{name: errors, templateRef: {name: error-rate}, args: {job: web, min-requests: '20'}}]}",
        "spec.analysis.metrics[0].templateRef.name",
        "set `minSamples` instead",
    ),
];

#[test]
fn a_metrics_window_is_what_its_rendered_queries_read_and_min_samples_is_layered() {
    let resolved = validate::resolve(
        &spec(
            "analysis: {interval: 30s, metrics: [\
             {name: a, templateRef: {name: error-rate}, args: {job: web}},\
             {name: b, query: 'sum(rate(x[2m] offset 1m))', totalQuery: 'sum(increase(x[30s]))', minSamples: 7},\
             {name: c, query: 'up{w=\"{{ workload }}\"}', compare: {method: Difference, maxDifference: 1, minSamples: 9}}]}",
        ),
        &observed_with_template(),
    )
    .expect("valid");
    let by = |name: &str| {
        resolved
            .metrics
            .iter()
            .find(|m| m.name == name)
            .expect("metric")
    };
    assert_eq!(
        by("a").window,
        Duration::from_secs(30),
        "{{ interval }} is 30s"
    );
    assert_eq!(
        by("b").window,
        Duration::from_secs(180),
        "range plus offset"
    );
    assert_eq!(
        by("c").window,
        Duration::ZERO,
        "an instant query reads no range"
    );
    assert_eq!(by("a").min_samples, 50, "the default");
    assert_eq!(by("b").min_samples, 7, "the metric's own");
    assert_eq!(by("c").min_samples, 9, "the comparison's");
}

#[test]
fn every_bound_the_schema_states_is_checked_again_with_its_field_path() {
    for (fragment, field, words) in CASES {
        let mut observed = observed_with_template();
        if fragment.contains("policyRef") {
            observed.policy = PolicyLookup::Missing {
                name: "web-standard".into(),
            };
        }
        let errors = validate::resolve(&spec(fragment), &observed)
            .expect_err(&format!("{fragment} should be refused"));
        assert!(
            errors
                .iter()
                .any(|e| e.field == *field && e.reason.contains(words)),
            "{fragment}: expected {field} ({words}), got {errors:?}"
        );
    }
}

#[test]
fn a_minimal_spec_gets_every_default() {
    let resolved = validate::resolve(&spec("{}"), &Dereferenced::default()).expect("valid");
    assert_eq!(resolved.interval, Duration::from_secs(60));
    assert_eq!(resolved.threshold, 3);
    assert_eq!(resolved.progress_deadline, Duration::from_secs(600));
    assert_eq!(resolved.unknown_deadline, Duration::from_secs(300));
    assert_eq!(resolved.on_unknown_deadline, UnknownOutcome::Rollback);
    assert_eq!(
        resolved.strategy,
        Strategy::Canary {
            step_weights: vec![10, 20, 30, 40, 50]
        }
    );
    assert_eq!(resolved.service.name, "checkout");
    assert!(matches!(resolved.router, Router::GatewayApi { .. }));
    assert!(!resolved.manual_promotion);
}

#[test]
fn the_canary_overrides_its_policy_field_by_field_inside_analysis() {
    let policy: RolloutSpec = serde_saphyr::from_str(
        "service: {port: 80}\nrouter: {nginx: {ingress: {name: web}}}\nmanualPromotion: true\n\
         analysis: {interval: 2m, threshold: 5, metrics: [{name: latency, query: q, max: 0.5}]}\n",
    )
    .expect("policy");
    let mut observed = Dereferenced {
        policy: PolicyLookup::Found(Box::new(policy)),
        ..Dereferenced::default()
    };
    observed.templates.clear();
    let canary = spec("policyRef: {name: web}\nrouter: null\nanalysis: {threshold: 2}");
    let resolved = validate::resolve(&canary, &observed).expect("valid");
    assert_eq!(resolved.threshold, 2, "the Canary's own field wins");
    assert_eq!(
        resolved.interval,
        Duration::from_secs(120),
        "the policy fills the rest"
    );
    assert_eq!(resolved.metrics.len(), 1);
    assert!(matches!(resolved.router, Router::Nginx { .. }));
    assert_eq!(
        resolved.service.port, 8080,
        "a top-level field set in the Canary wins"
    );
    assert!(resolved.manual_promotion);
}

#[test]
fn a_template_gives_the_query_defaults_and_argument_values() {
    let canary = spec(
        "analysis: {metrics: [{name: errors, templateRef: {name: error-rate}, args: {job: checkout}, max: 0.02}]}",
    );
    let resolved = validate::resolve(&canary, &observed_with_template()).expect("valid");
    let metric = &resolved.metrics[0];
    assert!(
        metric.query.contains("{{ args.job }}"),
        "substitution is the controller's"
    );
    assert_eq!(metric.args.get("job").map(String::as_str), Some("checkout"));
    assert_eq!(metric.args.get("codes").map(String::as_str), Some("5.."));
    assert_eq!(
        metric.max,
        Some(0.02),
        "the metric's limit overrides the template's"
    );
    assert_eq!(
        metric.on_no_data,
        OnNoData::Pass,
        "the template's default applies"
    );
    assert_eq!(metric.interval, Duration::from_secs(60));
}

#[test]
fn hooks_get_a_timeout_of_at_most_half_the_interval() {
    let canary = spec(
        "analysis: {interval: 10s}\nhooks: [{name: load, type: rollout, url: 'http://load.test/'}]",
    );
    let resolved = validate::resolve(&canary, &Dereferenced::default()).expect("valid");
    assert_eq!(
        resolved.hooks[0].timeout.map(|d| d.as_std()),
        Some(Duration::from_secs(5))
    );
}

#[test]
fn notifications_come_from_the_policy_unless_the_canary_sets_its_own() {
    let policy: RolloutSpec = serde_saphyr::from_str(
        "notifications: [{name: team, urlSecretRef: {name: slack}, format: slack, events: [RolledBack]}]",
    )
    .expect("policy");
    let observed = Dereferenced {
        policy: PolicyLookup::Found(Box::new(policy)),
        ..Dereferenced::default()
    };
    let inherited = spec("policyRef: {name: web-standard}");
    let resolved = validate::resolve(&inherited, &observed).expect("valid");
    assert_eq!(resolved.notifications.len(), 1);
    assert_eq!(resolved.notifications[0].name, "team");
    let own = spec(
        "policyRef: {name: web-standard}\nnotifications: [{name: audit, url: 'http://audit.test/'}]",
    );
    let resolved = validate::resolve(&own, &observed).expect("valid");
    assert_eq!(
        resolved
            .notifications
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["audit"]
    );
}

#[test]
fn a_policy_and_a_template_are_checked_on_their_own() {
    let policy: RolloutSpec =
        serde_saphyr::from_str("strategy: {canary: {stepWeights: [50, 20]}}").expect("policy");
    let errors = validate::rollout(&policy, "spec");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.strategy.canary.stepWeights[1]");
    let template: TemplateSpec =
        serde_saphyr::from_str("query: q\nmin: 3\nmax: 1\ncompare: {method: TwoProportion}")
            .expect("template");
    let fields: Vec<String> = validate::template(&template, "spec")
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, vec!["spec.min", "spec.totalQuery"]);
}
